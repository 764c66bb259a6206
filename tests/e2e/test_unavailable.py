"""`unavailable` on the wire, embedded server: "a backend (database, Redis) is down; retry
later; nothing was changed" (PROTOCOL.md error table), with SQLite failing FOR REAL.

How the failure is made real: the test opens the server's own database file with sqlite3
and takes the write lock (BEGIN IMMEDIATE) for the whole outage; the server's writers wait
its busy_timeout (5 s, imsrv/backends/sqlite.py) and then fail with "database is locked".
That the lock holds is checked from a third connection before the requests are made; that
the server saw the store fail is checked in its log (backend_unavailable for the API op,
store_unavailable for the send, both naming "database is locked"); that the refused
requests were valid, by making exactly the same requests again once the lock is released:
they succeed, and only then does anything change.  (The distributed deployment's
counterpart, a stopped MariaDB, is tests/dist/test_unavailable.py.)
"""

import sqlite3

import pytest

from harness.procs import wait_until
from harness.users import befriend, new_user

pytestmark = pytest.mark.timeout(90)

BUSY = 5.0   # the SQLite store's busy_timeout, seconds: a locked write fails after it


class WriteLock:
    """The write lock of an SQLite database, held by a connection of ours (another
    process's lock as far as the server is concerned)."""

    def __init__(self, path):
        self.path = str(path)
        self.conn = None

    def __enter__(self):
        self.conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        self.conn.execute("BEGIN IMMEDIATE")
        # proof that it holds: any other writer is refused (at once, with no busy wait)
        probe = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                probe.execute("BEGIN IMMEDIATE")
        finally:
            probe.close()
        return self

    def __exit__(self, *exc):
        self.conn.execute("ROLLBACK")   # we wrote nothing: nothing of ours lands either
        self.conn.close()


def log_lines(srv, event):
    return [ln for ln in srv.log_text().splitlines() if f" event={event} " in ln]


def test_a_locked_store_answers_unavailable_and_changes_nothing(server_factory):
    srv = server_factory(name="sqlite_locked")
    a, b = new_user(srv, "ua"), new_user(srv, "ub")
    befriend(a, b)
    timeout = BUSY + 10
    with a.connect() as ga, b.connect() as gb:
        first = ga.send_msg("before", to=b.name, cmid="u-0")
        assert gb.wait_push("msg", mid=first["mid"])["body"] == "before"
        with WriteLock(srv.data_dir / "imsrv.db"):
            with srv.api(timeout=timeout) as api:
                # an API write (each refused write waits BUSY seconds for the lock: one API
                # op and one send are enough; other connections are served meanwhile)
                rep = api.error("set_profile", "unavailable", token=a.token, name="Changed", timeout=timeout)
                assert "retry" in rep["message"], rep
                # the connection stays usable (a read does not need the write lock)
                assert api.call("profile", token=a.token)["name"] == a.name
            # a gateway send: refused, the session stays
            ga.error("send", "unavailable", to=b.name, body="during", cmid="u-1", timeout=timeout)
            ga.sync_point()
        # the server saw its store fail (the lines are read from its stderr by a thread of
        # ours: wait for them, then check there is exactly one of each)
        for event in ("backend_unavailable", "store_unavailable"):
            found = wait_until(lambda: log_lines(srv, event), timeout=10, what=f"event={event} in the log")
            assert len(found) == 1 and "database is locked" in found[0], found

        # nothing was changed...
        assert a.call("profile")["name"] == a.name
        msgs, head = gb.sync_all(0)
        assert [m["body"] for m in msgs] == ["before"] and head == 1, msgs
        assert [p["body"] for p in gb.take_pushes("msg")] == []
        assert ga.sync(0)["head"] == 1
        # ...and the same requests, now that the store works, do change it
        a.call("set_profile", name="Changed")
        again = ga.send_msg("during", to=b.name, cmid="u-1")
        assert gb.wait_push("msg", mid=again["mid"])["seq"] == 2
    assert a.call("profile")["name"] == "Changed"
