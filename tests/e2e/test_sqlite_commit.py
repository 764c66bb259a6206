"""The embedded server never blocks its event loop on an SQLite write: while a send's
write transaction waits (here ~1.5 s, for another process's lock), the other connections
are answered at once (pings in < 200 ms, an API read), and the send is acked only after
its COMMIT.

How the wait is made real: this test process opens the server's database file with
sqlite3 and holds the write lock (BEGIN IMMEDIATE, tests/e2e/test_unavailable.py's
WriteLock) for 1.5 s, less than the store's busy_timeout (5 s): the server's write waits
in SQLite's busy handler, then commits.  That it really waited is shown by its ack, which
arrives only after the lock is released.  Before the writer thread
(imsrv/backends/sqlite.py) the whole process stood still in that busy handler: the pings
were answered only after the lock was gone.
"""
import time

import pytest

from harness.users import befriend, new_user

from .test_unavailable import WriteLock

pytestmark = pytest.mark.timeout(60)

HOLD = 1.5          # seconds the lock is held (the store's busy_timeout is 5 s)
PING_BOUND = 0.2    # seconds: a ping answered later than this was stalled


def test_embedded_ping_answered_while_a_send_waits_to_commit(server_factory):
    srv = server_factory(name="sqlite_commit")
    a, b, c = new_user(srv, "wa"), new_user(srv, "wb"), new_user(srv, "wc")
    befriend(a, b)
    with a.connect() as ga, b.connect() as gb, c.connect() as gc, srv.api() as api:
        first = ga.send_msg("before", to=b.name, cmid="w-0")
        assert gb.wait_push("msg", mid=first["mid"])["body"] == "before"
        with WriteLock(srv.data_dir / "imsrv.db"):
            locked_at = time.monotonic()
            rid = ga.send_request("send", to=b.name, body="during", cmid="w-1")
            pings = gc.ping_times(until=locked_at + HOLD)   # about 20 over the hold
            t0 = time.monotonic()
            assert api.call("profile", token=c.token)["name"] == c.name   # a read: no lock needed
            api_read = time.monotonic() - t0
            released_at = time.monotonic()
        ack = ga.read_reply(rid, timeout=10)
        acked_at = time.monotonic()
        assert ack["op"] == "ack", ack
        # it really waited for the lock: acked only after the release
        assert acked_at >= released_at
        assert len(pings) >= 10 and max(pings) < PING_BOUND, pings
        assert api_read < PING_BOUND, api_read
        push = gb.wait_push("msg", mid=ack["mid"])
        assert push["body"] == "during"
        # stored once, in order, gapless
        msgs, head = gb.sync_all()
        assert [m["seq"] for m in msgs] == list(range(1, head + 1))
        assert [m["body"] for m in msgs if m["from"] == a.name] == ["before", "during"]
