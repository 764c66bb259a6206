"""Oversized messages (issue 9, defect 1): refused before they are sent, dropped from the
outbox when the server refuses them, and never a reason to reconnect for ever."""
import gevent
import pytest

from imsrv.client import Client, MessageTooLarge, SQLiteStore
from imsrv.client.limits import DEFAULT_MAX_FRAME, MAX_BODY_BYTES

from .conftest import befriend
from harness.procs import wait_until
from harness.users import PASSWORD

pytestmark = pytest.mark.timeout(60)


def record(client, *types):
    got = []
    for t in types:
        client.on(t, lambda data, t=t: got.append((t, data)))
    return got


def states(events):
    return [d["state"] for t, d in events if t == "state"]


def test_body_over_16k_is_refused_before_it_is_sent(server, make_client):
    a, b = make_client(server), make_client(server)
    befriend(a, b)
    events = record(a, "state", "send_failed")
    got = []
    b.on("message", got.append)
    for text in ("x" * 66000, "é" * 8200):       # a pasted line; 16,400 bytes as UTF-8
        with pytest.raises(MessageTooLarge) as e:
            a.send(b.user, {"text": text})
        assert e.value.what == "body" and e.value.limit == MAX_BODY_BYTES and e.value.size > MAX_BODY_BYTES
        assert "too large" in str(e.value)
    with pytest.raises(MessageTooLarge):
        a.send(b.user, {"text": "y" * 70000}, wait=False)  # refused at once, not by the handle
    assert a.pending_sends() == [] and a.online
    # exactly at the limit is fine: {"text":"..."} is 11 bytes around the text
    at_limit = "z" * (MAX_BODY_BYTES - 11)
    a.send(b.user, {"text": at_limit})
    a.send(b.user, {"text": "small"})
    wait_until(lambda: len(got) == 2, what="bob got both")
    assert [m["body"]["text"] for m in got] == [at_limit, "small"]
    # the connection never dropped, nothing was reported as failed
    assert "offline" not in states(events) and not [e for e in events if e[0] == "send_failed"]


def test_max_frame_is_learned_from_the_server(config_server, make_client):
    srv = config_server({"limits": {"max_frame": 8192}}, name="smallframe")
    a, b = make_client(srv), make_client(srv)
    befriend(a, b)
    assert a.max_frame == 8192              # the gateway's auth reply (and login's) say so
    events = record(a, "state", "send_failed")
    with pytest.raises(MessageTooLarge) as e:
        a.send(b.user, {"text": "x" * 10000})  # under 16 KiB, over this server's frame limit
    assert e.value.what == "frame" and e.value.limit == 8192
    assert a.pending_sends() == [] and a.online and "offline" not in states(events)
    assert a.send(b.user, {"text": "fits"})["seq"] > 0


def test_a_frame_the_server_refuses_is_dropped_not_resent(config_server, make_client):
    """A server that did not announce its max_frame: the client finds out when the server
    closes the connection with too_large; it drops that entry, reports it, learns the
    bound, and the next connection works (no reconnect loop)."""
    srv = config_server({"limits": {"max_frame": 8192}}, name="unannounced")
    a = make_client(srv, backoff_base=0.05, backoff_max=0.5)
    b = make_client(srv)
    befriend(a, b)
    events = record(a, "state", "send_failed")
    got = []
    b.on("message", got.append)
    a.max_frame = DEFAULT_MAX_FRAME          # as if the server had not said
    a._link.conn.max_send = None
    first = a.send(b.user, {"text": "before"}, wait=False)
    big = a.send(b.user, {"text": "x" * 10000}, wait=False)
    with pytest.raises(MessageTooLarge) as e:
        big.get(10)
    assert e.value.what == "frame" and e.value.size > 10000
    failed = wait_until(lambda: [d for t, d in events if t == "send_failed"], what="send_failed")
    assert failed[0]["code"] == "too_large" and failed[0]["cmid"] == big.cmid and failed[0]["to"] == b.user
    first.get(10)
    wait_until(lambda: a.online and a.pending_sends() == [], what="back online, outbox empty")
    assert a.send(b.user, {"text": "after"})["seq"] > 0
    wait_until(lambda: [m["body"]["text"] for m in got] == ["before", "after"], what="bob got the rest")
    assert a.max_frame < 10000
    assert states(events).count("online") <= 2  # one reconnect, not a loop


def test_an_oversized_entry_left_by_an_old_run_does_not_wedge_startup(server, make_client, tmp_path):
    a, b = make_client(server), make_client(server)
    befriend(a, b)
    path = str(tmp_path / "old-run.db")
    # an older client queued a 70 KB message (and one normal one after it) and died
    old = SQLiteStore(path)
    old.bind(a.user, "phone")
    old.outbox_add("old-big", b.user, None, {"text": "x" * 70000})
    old.outbox_add("old-ok", b.user, None, {"text": "queued earlier"})
    old.close()
    got = []
    b.on("message", got.append)
    c = Client(server.api_address, device="phone", store=path, timeout=5)
    try:
        events = record(c, "send_failed", "state")
        c.login(a.user, PASSWORD)            # online within the timeout, not wedged
        failed = wait_until(lambda: [d for t, d in events if t == "send_failed"], what="send_failed")
        assert failed[0]["cmid"] == "old-big" and failed[0]["code"] == "too_large"
        wait_until(lambda: [m["body"]["text"] for m in got] == ["queued earlier"], what="the normal entry")
        wait_until(lambda: c.pending_sends() == [], what="outbox empty")
        assert "offline" not in states(events)
    finally:
        c.close()
    reopened = SQLiteStore(path)
    reopened.bind(a.user, "phone")
    assert reopened.outbox() == []
    reopened.close()


def test_the_link_gives_up_when_the_server_keeps_refusing_frames(server, make_client):
    """Something the client cannot drop keeps making the server close: the link stops
    (state failed) with the server's reason instead of reconnecting for ever."""
    a = make_client(server, backoff_base=0.01, backoff_max=0.05)
    events = record(a, "state")
    payload = {"users": ["u" * 20] * 4000}   # a presence request of ~100 KB

    def too_big(conn):
        conn.max_send = None                 # bypass the client's own check
        try:
            conn.request_async("presence", **payload)
        except Exception:
            pass

    def on_state(data):
        if data["state"] == "online":
            gevent.spawn(too_big, a._link.conn)
    a.on("state", on_state)
    too_big(a._link.conn)
    wait_until(lambda: a.stopped, timeout=20, what="the link gave up")
    assert "failed" in states(events)
    err = a.stop_error()
    assert getattr(err, "code", None) == "too_large", err
