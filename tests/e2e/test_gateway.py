"""Gateway ops and pushes: auth, ping, send/ack/msg, sync, presence, status, typing, read
(sessions, line mode, timeouts and pipelining: test_gateway_sessions.py).

Contract: PROTOCOL.md "Gateway ops (port 7000)" and "Delivery guarantees".
"""

import pytest

from harness.servers import ADMIN_KEY
from harness.users import befriend, make_group, new_user, unique_name

pytestmark = pytest.mark.timeout(60)


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ---------------------------------------------------------------- auth, ping

def test_auth_ok_with_user_and_head(server):
    u = new_user(server, "au")
    with server.gateway() as g:
        rep = g.call("auth", token=u.token)
        assert rep["user"] == u.name
        assert rep["head"] == 0  # no inbox entries yet
        assert rep["max_frame"] == 65536  # the server's limits.max_frame, for the SDK
    with server.api() as c:
        for i in range(3):
            c.call("notify", admin_key=ADMIN_KEY, to=u.name, body=i)
    with server.gateway() as g:
        rep = g.call("auth", token=u.token, device="second")
        assert rep["user"] == u.name and rep["head"] == 3


def test_ping_pong(server):
    u = new_user(server, "pp")
    with u.connect() as g:
        for _ in range(3):
            rep = g.call("ping", expect="pong")
            assert rep["id"] is not None


def test_auth_twice_on_one_connection(server):
    """A second auth on an authenticated connection is a bad_request (docs/PROTOCOL.md,
    auth), and it does not break the session: not closed (only framing errors close), still
    the same user and device, still pushed to."""
    u, v = new_user(server, "a2"), new_user(server, "a2")
    befriend(u, v)
    with u.connect(device="first") as g, v.connect() as gv:
        rep = g.request("auth", token=v.token, device="other")
        assert rep["op"] == "error" and rep["code"] == "bad_request", rep
        assert "already authenticated" in rep["message"], rep
        ack = gv.send_msg("still yours?", to=u.name)
        assert g.wait_push("msg", mid=ack["mid"])["to"] == u.name
        assert g.call("presence", expect="presence", users=[u.name])["statuses"] == {u.name: "online"}


# ---------------------------------------------------------------- send / ack / msg

def test_send_ack_and_recipient_push(pair):
    a, b = pair
    with a.connect() as ga, b.connect() as gb:
        ack = ga.send_msg({"text": "hello"}, to=b.name, cmid="cm-1")
        assert ack["op"] == "ack"
        assert "mid" in ack and isinstance(ack["seq"], int) and is_number(ack["ts"])
        assert ack["seq"] == 1  # the sender's own inbox seq of this message
        push = gb.wait_push("msg")
        assert push["seq"] == 1 and isinstance(push["seq"], int)
        assert push["mid"] == ack["mid"]
        assert push["from"] == a.name and push["to"] == b.name
        assert push["body"] == {"text": "hello"}
        assert is_number(push["ts"])
        assert push["cmid"] == "cm-1"
        # without cmid: no cmid on the push
        ack2 = ga.send_msg("plain", to=b.name)
        push2 = gb.wait_push("msg")
        assert push2["mid"] == ack2["mid"] and push2["seq"] == 2
        assert push2.get("cmid") is None
        assert ack2["seq"] == 2 and ack2["mid"] != ack["mid"]


def test_sender_other_device_gets_push_sending_device_only_ack(pair):
    a, b = pair
    with a.connect(device="phone") as phone, a.connect(device="laptop") as laptop, b.connect() as gb:
        ack = phone.send_msg("from phone", to=b.name, cmid="x1")
        mine = laptop.wait_push("msg")
        assert mine["mid"] == ack["mid"] and mine["seq"] == ack["seq"]
        assert mine["from"] == a.name and mine["to"] == b.name and mine["body"] == "from phone"
        assert mine.get("cmid") == "x1"
        gb.wait_push("msg", mid=ack["mid"])
        phone.sync_point()
        assert not [p for p in phone.all_pushes if p["op"] == "msg"], phone.all_pushes
        # and the other way round
        ack2 = laptop.send_msg("from laptop", to=b.name)
        assert phone.wait_push("msg")["mid"] == ack2["mid"]
        laptop.sync_point()
        assert [p["mid"] for p in laptop.all_pushes if p["op"] == "msg"] == [ack["mid"]]


def test_recipient_all_devices_get_push(pair):
    a, b = pair
    with a.connect() as ga, b.connect(device="d1") as b1, b.connect(device="d2") as b2:
        ack = ga.send_msg("both", to=b.name)
        p1 = b1.wait_push("msg")
        p2 = b2.wait_push("msg")
        assert p1["mid"] == p2["mid"] == ack["mid"]
        assert p1["seq"] == p2["seq"]


def test_pushes_in_seq_order(pair):
    a, b = pair
    with a.connect() as ga, b.connect() as gb:
        ids = [ga.send_request("send", to=b.name, body=i) for i in range(30)]
        acks = ga.read_replies(ids)
        assert all(x["op"] == "ack" for x in acks), acks
        pushes = gb.wait_pushes("msg", 30)
        assert [p["seq"] for p in pushes] == list(range(1, 31))
        assert [p["body"] for p in pushes] == list(range(30))


def test_send_to_non_friend_forbidden_nothing_stored(server):
    a = new_user(server, "nf")
    b = new_user(server, "nf")
    with a.connect() as ga, b.connect() as gb:
        ga.error("send", "forbidden", to=b.name, body="hi")
        assert ga.sync(0)["msgs"] == []
        assert gb.sync(0)["msgs"] == []


def test_send_to_unknown_user(server):
    """"not_found | no such user": never forbidden (who does not exist is nobody's friend,
    but the exact answer is that there is no such user); nothing is stored."""
    a = new_user(server, "nu")
    ghost = unique_name("ghost")
    with a.connect() as ga:
        rep = ga.error("send", "not_found", to=ghost, body="x", cmid="g1")
        assert ghost in rep["message"], rep
        ga.error("typing", "not_found", to=ghost)   # typing has a reply only when refused
        assert ga.sync(0)["msgs"] == [] and ga.sync(0)["head"] == 0


def test_send_user_name_lowercased(pair):
    a, b = pair
    with a.connect() as ga, b.connect() as gb:
        ack = ga.send_msg("caps", to=b.name.upper())
        assert gb.wait_push("msg")["mid"] == ack["mid"]


# ---------------------------------------------------------------- sync

def test_offline_messages_by_sync(pair):
    a, b = pair
    with a.connect() as ga:
        acks = [ga.send_msg(f"m{i}", to=b.name) for i in range(5)]
    with b.connect() as gb:
        assert gb.head == 5
        rep = gb.sync(0)
        assert rep["head"] == 5 and rep["more"] is False
        msgs = rep["msgs"]
        assert [m["seq"] for m in msgs] == [1, 2, 3, 4, 5]
        assert [m["mid"] for m in msgs] == [x["mid"] for x in acks]
        assert [m["body"] for m in msgs] == [f"m{i}" for i in range(5)]
        for m in msgs:
            assert m["from"] == a.name and m["to"] == b.name and is_number(m["ts"])


def test_sync_paging(server):
    u = new_user(server, "sp")
    with server.api() as c:
        for i in range(7):
            c.send_request("notify", admin_key=ADMIN_KEY, to=u.name, body=i)
        for _ in range(7):
            assert c.read_frame()["op"] == "ok"
    with u.connect() as g:
        r = g.sync(0, limit=3)
        assert [m["seq"] for m in r["msgs"]] == [1, 2, 3] and r["more"] is True and r["head"] == 7
        r = g.sync(3, limit=3)
        assert [m["seq"] for m in r["msgs"]] == [4, 5, 6] and r["more"] is True and r["head"] == 7
        r = g.sync(6, limit=3)
        assert [m["seq"] for m in r["msgs"]] == [7] and r["more"] is False and r["head"] == 7
        r = g.sync(7)
        assert r["msgs"] == [] and r["more"] is False and r["head"] == 7
        r = g.sync(100)
        assert r["msgs"] == [] and r["more"] is False and r["head"] == 7
        r = g.sync(2, limit=2)
        assert [m["body"] for m in r["msgs"]] == [2, 3] and r["more"] is True
        r = g.sync(4)
        assert [m["seq"] for m in r["msgs"]] == [5, 6, 7] and r["more"] is False


def test_sync_default_limit_100(server):
    u = new_user(server, "sd")
    with server.api() as c:
        for i in range(105):
            c.send_request("notify", admin_key=ADMIN_KEY, to=u.name, body=i)
        for _ in range(105):
            assert c.read_frame(10)["op"] == "ok"
    with u.connect() as g:
        r = g.sync(0)
        assert [m["seq"] for m in r["msgs"]] == list(range(1, 101))
        assert r["more"] is True and r["head"] == 105
        r = g.sync(100)
        assert [m["seq"] for m in r["msgs"]] == list(range(101, 106)) and r["more"] is False
        r = g.sync(0, limit=1000)
        assert len(r["msgs"]) == 105 and r["more"] is False


# ---------------------------------------------------------------- presence and status

def test_presence_op_friends_only(server, pair):
    a, b = pair
    stranger = new_user(server, "st")
    with a.connect() as ga:
        rep = ga.call("presence", expect="presence", users=[b.name])
        assert rep["statuses"] == {b.name: "offline"}
        with b.connect() as gb:
            gb.call("status", status="busy")
            assert ga.call("presence", expect="presence", users=[b.name])["statuses"] == {b.name: "busy"}
        ga.error("presence", "forbidden", users=[stranger.name])
        ga.sync_point()
    c = new_user(server, "pc")
    befriend(a, c)
    with a.connect() as ga, c.connect() as gc:
        gc.call("status", status="away")
        rep = ga.call("presence", expect="presence", users=[b.name, c.name])
        assert rep["statuses"] == {b.name: "offline", c.name: "away"}


def test_presence_pushed_on_connect_and_disconnect(pair):
    a, b = pair
    with a.connect() as ga:
        gb = b.connect()
        p = ga.wait_push("presence", user=b.name)
        assert p["status"] == "online"
        gb.close()
        p = ga.wait_push("presence", user=b.name)
        assert p["status"] == "offline"


def test_status_changes_pushed_to_online_friends(server, pair):
    a, b = pair
    stranger = new_user(server, "sx")
    with a.connect() as ga, b.connect() as gb, stranger.connect() as gs:
        gb.call("status", status="busy", text="in a meeting")
        p = ga.wait_push("presence", user=b.name, status="busy")
        assert p.get("text") == "in a meeting"
        gb.call("status", status="away")
        ga.wait_push("presence", user=b.name, status="away")
        gb.call("status", status="online")
        ga.wait_push("presence", user=b.name, status="online")
        gs.sync_point()
        assert not [p for p in gs.all_pushes if p["op"] == "presence"], gs.all_pushes


def test_combined_presence_over_devices(pair):
    a, b = pair
    with a.connect() as ga:
        d1 = b.connect(device="d1")
        ga.wait_push("presence", user=b.name, status="online")
        d2 = b.connect(device="d2")
        d1.close()
        # still online through d2: no offline push may come for d1's close
        assert ga.call("presence", expect="presence", users=[b.name])["statuses"][b.name] == "online"
        d2.call("status", status="away")
        ga.wait_push("presence", user=b.name, status="away")
        d2.close()
        # offline can only be computed once d1 is gone too, so d1's close was handled
        # before it; a marker (b back online) comes after anything either close pushed
        ga.wait_push("presence", user=b.name, status="offline")
        with b.connect(device="d3"):
            ga.wait_push("presence", user=b.name, status="online")
        seen = [p["status"] for p in ga.all_pushes if p["op"] == "presence" and p["user"] == b.name]
        assert seen == ["online", "away", "offline", "online"], seen


# ---------------------------------------------------------------- typing, read

def test_typing_forwarded_without_reply(pair):
    a, b = pair
    with a.connect() as ga, b.connect() as gb:
        ga.send_request("typing", to=b.name)
        p = gb.wait_push("typing")
        assert p["from"] == a.name
        ga.sync_point()
        assert ga.strays == [], ga.strays
        # to an offline peer: silently nothing
        gb.close()
        ga.send_request("typing", to=b.name)
        ga.sync_point()
        assert ga.strays == []


def test_read_sends_receipt(pair):
    a, b = pair
    with a.connect() as ga, b.connect() as gb:
        acks = [ga.send_msg(f"r{i}", to=b.name) for i in range(3)]
        pushes = gb.wait_pushes("msg", 3)
        last = pushes[-1]
        gb.call("read", seq=last["seq"], **{"with": a.name})
        r = ga.wait_push("receipt")
        assert r["from"] == b.name
        assert r["seq"] == last["seq"]
        assert r["mid"] == acks[-1]["mid"]
        assert r.get("with") in (a.name, b.name), r


def test_group_read_receipt(server):
    owner = new_user(server, "gr")
    m1 = new_user(server, "gr")
    befriend(owner, m1)
    gid = make_group(owner, [m1])
    with owner.connect() as go, m1.connect() as g1:
        ack = go.send_msg("read me", group=gid)
        push = g1.wait_push("msg")
        g1.call("read", group=gid, seq=push["seq"])
        r = go.wait_push("receipt")
        assert r["from"] == m1.name and r["group"] == gid
        assert r["seq"] == push["seq"] and r["mid"] == ack["mid"]
