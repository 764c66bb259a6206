"""Gateway sessions: multi-device, replaced sessions, line mode on the same port, auth and
idle timeouts, pipelined requests (split from test_gateway.py).

Contract: PROTOCOL.md "Gateway ops (port 7000)" and "Delivery guarantees" 6 and 7.
"""

import time

import pytest

from harness.servers import running_server
from harness.users import PASSWORD, login, new_user, unique_name

pytestmark = pytest.mark.timeout(60)


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
    config = {"limits": {"auth_timeout": 0.5, "idle_timeout": 1.0}}
    with running_server("embedded", tmp_path_factory.mktemp("timeouts"), config, name="timeouts") as srv:
        yield srv


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
            plan.append((ga.send_request("send", to=unique_name("ghost"), body=k), "not_found"))
            plan.append((ga.send_request("ping"), "pong"))
            plan.append((ga.send_request("status", status="online"), "ok"))
        replies = ga.read_replies([rid for rid, _ in plan], 15)
        assert [r.get("code", r["op"]) for r in replies] == [op for _, op in plan]
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
