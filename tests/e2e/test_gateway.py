"""Gateway ops and pushes: auth, ping, send/ack/msg, sync, presence, status, typing, read,
multi-device, replaced, timeouts, line mode.

Contract: PROTOCOL.md "Gateway ops (port 7000)" and "Delivery guarantees".
"""

import time

import pytest

from .support import ADMIN_KEY, PASSWORD, befriend, login, make_group, new_user, unique_name

pytestmark = pytest.mark.timeout(60)


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@pytest.fixture
def pair(server):
    a = new_user(server, "ga")
    b = new_user(server, "gb")
    befriend(a, b)
    return a, b


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
    """A second auth frame on an authenticated connection must not break the session."""
    u = new_user(server, "a2")
    with u.connect() as g:
        rep = g.request("auth", token=u.token)
        assert rep["op"] in ("ok", "error"), rep
        # whatever the answer, the server did not close for it (only framing errors close)
        g.sync_point()


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
    a = new_user(server, "nu")
    with a.connect() as ga:
        rep = ga.request("send", to=unique_name("ghost"), body="x")
        # "no such user" (not_found); "nobody else" of the contact rules (forbidden) tolerated
        assert rep["op"] == "error" and rep["code"] in ("not_found", "forbidden"), rep
        ga.sync_point()


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
        # still online through d2: no offline push may come (only time can tell absence)
        ga.drain(0.5)
        assert ga.call("presence", expect="presence", users=[b.name])["statuses"][b.name] == "online"
        d2.call("status", status="away")
        ga.wait_push("presence", user=b.name, status="away")
        d2.close()
        ga.wait_push("presence", user=b.name, status="offline")
        seen = [p["status"] for p in ga.all_pushes if p["op"] == "presence" and p["user"] == b.name]
        assert seen == ["online", "away", "offline"], seen


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


# ---------------------------------------------------------------- replaced

def test_same_device_replaced(pair):
    a, b = pair
    with b.connect() as gb:
        old = a.connect(device="phone")
        gb.wait_push("presence", user=a.name, status="online")
        new = a.connect(device="phone")
        try:
            k = old.wait_push("kicked")
            assert k["reason"] == "replaced"
            old.expect_close(5)
            # the new session is alive and receives pushes
            new.sync_point()
            ack = gb.send_msg("to the new one", to=a.name)
            assert new.wait_push("msg")["mid"] == ack["mid"]
            # replacement is not a status change: friends see no offline
            gb.drain(0.3)
            assert not [p for p in gb.all_pushes if p["op"] == "presence" and p["status"] == "offline"]
            assert gb.call("presence", expect="presence", users=[a.name])["statuses"][a.name] == "online"
            assert not [p for p in new.all_pushes if p["op"] == "kicked"]
        finally:
            old.close()
            new.close()


def test_replaced_old_session_cannot_kick_new(pair):
    """No stale kicks: the replaced session's close does not end the new one."""
    a, b = pair
    first = a.connect(device="d")
    second = a.connect(device="d")
    first.wait_push("kicked", reason="replaced")
    first.close()
    third = a.connect(device="other")
    try:
        with b.connect() as gb:
            ack = gb.send_msg("still here?", to=a.name)
            assert second.wait_push("msg")["mid"] == ack["mid"]
            assert third.wait_push("msg")["mid"] == ack["mid"]
            second.sync_point()
    finally:
        second.close()
        third.close()


def test_different_devices_coexist(pair):
    a, b = pair
    g1 = a.connect(device="one")
    g2 = a.connect(device="two")
    g3 = a.connect()  # default device
    try:
        for g in (g1, g2, g3):
            g.sync_point()
            assert not [p for p in g.all_pushes if p["op"] == "kicked"]
    finally:
        for g in (g1, g2, g3):
            g.close()


def test_default_device_name(server):
    """login's device defaults to "default": auth without a device and auth with
    device "default" are the same (user, device) pair."""
    u = new_user(server, "dd")  # logged in without a device
    first = u.connect()
    try:
        with u.connect(device="default") as second:
            assert first.wait_push("kicked")["reason"] == "replaced"
            first.expect_close(5)
            second.sync_point()
    finally:
        first.close()


def test_login_device_is_the_session_device(server):
    """login's device names the device of sessions authenticated with that token."""
    u = new_user(server, "ld")
    t_phone = login(server, u.name, device="phone")["token"]
    t_tab = login(server, u.name, device="tablet")["token"]
    phone = u.connect(token=t_phone)
    tab = u.connect(token=t_tab)
    try:
        phone.sync_point()
        tab.sync_point()
        assert not [p for p in phone.all_pushes + tab.all_pushes if p["op"] == "kicked"]
        t_phone2 = login(server, u.name, device="phone")["token"]
        phone2 = u.connect(token=t_phone2)
        with phone2:
            assert phone.wait_push("kicked")["reason"] == "replaced"
            tab.sync_point()
            assert not [p for p in tab.all_pushes if p["op"] == "kicked"]
    finally:
        phone.close()
        tab.close()


# ---------------------------------------------------------------- line mode on the same port

def test_whole_chat_in_line_mode(server):
    a_name, b_name = unique_name("la"), unique_name("lb")
    with server.api(mode="line") as c:
        c.call("register", user=a_name, password=PASSWORD)
        c.call("register", user=b_name, password=PASSWORD)
        ta = c.call("login", user=a_name, password=PASSWORD)["token"]
        tb = c.call("login", user=b_name, password=PASSWORD)["token"]
        c.call("friend_request", token=ta, to=b_name, message="line")
        assert [r["from"] for r in c.call("friend_requests", token=tb)["requests"]] == [a_name]
        c.call("friend_accept", token=tb, user=a_name)
        assert [f["user"] for f in c.call("friends", token=ta)["friends"]] == [b_name]
    with server.gateway(mode="line") as ga, server.gateway(mode="line") as gb:
        ga.auth(ta)
        gb.auth(tb)
        ga.wait_push("presence", user=b_name, status="online")
        ga.send_request("typing", to=b_name)
        assert gb.wait_push("typing")["from"] == a_name
        ack = ga.send_msg({"text": "hi over lines\nwith a newline inside"}, to=b_name, cmid="L1")
        push = gb.wait_push("msg")
        assert push["body"] == {"text": "hi over lines\nwith a newline inside"} and push["mid"] == ack["mid"]
        back = gb.send_msg("hello back", to=a_name)
        assert ga.wait_push("msg")["mid"] == back["mid"]
        gb.call("read", seq=push["seq"], **{"with": a_name})
        assert ga.wait_push("receipt")["from"] == b_name
        r = gb.sync(0)
        assert [m["mid"] for m in r["msgs"]] == [ack["mid"], back["mid"]]
        assert ga.call("ping", expect="pong")
    with server.api(mode="line") as c:
        hist = c.call("history", token=ta, **{"with": b_name})["msgs"]
        assert [m["mid"] for m in hist] == [back["mid"], ack["mid"]]


def test_binary_and_line_clients_talk(pair):
    a, b = pair
    with a.connect(mode="binary") as ga, b.connect(mode="line") as gb:
        ack = ga.send_msg("bin->line", to=b.name)
        assert gb.wait_push("msg")["mid"] == ack["mid"]
        ack = gb.send_msg("line->bin", to=a.name)
        assert ga.wait_push("msg")["mid"] == ack["mid"]


# ---------------------------------------------------------------- timeouts (dedicated server)

@pytest.fixture(scope="module")
def quick_server(tmp_path_factory):
    from .conftest import _stop, dedicated_server

    srv = dedicated_server(tmp_path_factory, "timeouts", {"limits": {"auth_timeout": 0.5, "idle_timeout": 1.0}})
    yield srv
    _stop(srv)


def _time_to_close(conn, limit):
    t0 = time.monotonic()
    conn.expect_close(limit)
    return time.monotonic() - t0


def test_auth_timeout_closes(quick_server):
    with quick_server.gateway() as g:
        elapsed = _time_to_close(g, 5)
    assert 0.3 <= elapsed <= 4.0, elapsed


def test_auth_timeout_partial_frame(quick_server):
    with quick_server.gateway() as g:
        g.send_raw(b"\x00\x00")  # half a header, then silence
        elapsed = _time_to_close(g, 5)
    assert elapsed <= 4.0


def test_auth_timeout_partial_line(quick_server):
    with quick_server.gateway(mode="line") as g:
        g.send_raw(b'{"op":"au')  # an unfinished line
        elapsed = _time_to_close(g, 5)
    assert elapsed <= 4.0


def test_idle_timeout_closes(quick_server):
    u = new_user(quick_server, "idle")
    with u.connect() as g:
        elapsed = _time_to_close(g, 6)
    assert 0.6 <= elapsed <= 5.0, elapsed


def test_heartbeats_keep_alive_then_idle_closes(quick_server):
    u = new_user(quick_server, "hb")
    with u.connect() as g:
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            g.call("ping", expect="pong")  # any frame counts
            time.sleep(0.25)  # pacing of the heartbeats themselves, not synchronisation
        g.call("sync", expect="sync", since=0)
        elapsed = _time_to_close(g, 6)
    assert 0.6 <= elapsed <= 5.0, elapsed


def test_pipelined_mixed_ops_replies_in_order(pair):
    """send (asynchronous store), sync, ping, errors, status: replies in request order."""
    a, b = pair
    with a.connect() as ga:
        plan = []
        for k in range(10):
            plan.append((ga.send_request("send", to=b.name, body=k), "ack"))
            plan.append((ga.send_request("sync", since=0, limit=1), "sync"))
            plan.append((ga.send_request("send", to=unique_name("ghost"), body=k), "error"))
            plan.append((ga.send_request("ping"), "pong"))
            plan.append((ga.send_request("status", status="online"), "ok"))
        replies = ga.read_replies([rid for rid, _ in plan], 15)
        assert [r["op"] for r in replies] == [op for _, op in plan]
        acks = [r for r in replies if r["op"] == "ack"]
        assert [x["seq"] for x in acks] == list(range(1, 11))


@pytest.mark.parametrize("mode", ["binary", "line"])
def test_requests_in_the_same_write_as_auth(pair, mode):
    """auth, send, ping written in one go (one read on the server, as `nc` with a pasted
    block does): every request after auth is served, in order."""
    a, b = pair
    with a.server.gateway(mode) as ga, b.connect() as gb:
        ga.send_raw(ga.encode({"op": "auth", "id": 1, "token": a.token})
                    + ga.encode({"op": "send", "id": 2, "to": b.name, "body": "hi", "cmid": "w1"})
                    + ga.encode({"op": "ping", "id": 3}))
        auth, ack, pong = ga.read_replies([1, 2, 3])
        assert (auth["op"], ack["op"], pong["op"]) == ("ok", "ack", "pong"), (auth, ack, pong)
        assert gb.wait_push("msg", cmid="w1")["mid"] == ack["mid"]
