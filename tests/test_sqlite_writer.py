"""The SQLite store's writer thread (imsrv/backends/sqlite.py): the calls of a write
transaction that wait (the COMMIT's fsync; the BEGIN when another connection holds the
write lock) run on a thread of their own, reads on a connection of their own, so a write
waiting for the disk or a lock never blocks the event loop.

1. The whole SQLite half of tests/test_store.py again, with the writer thread (servers
   have it because they are gevent-patched; the test process is not, so there it is off):
   its tests are imported here and run with ``writer_thread`` on.
2. What the thread changes: which connection and thread each statement runs on (every
   COMMIT on the writer thread, every write inside a transaction, none on the reader),
   reads that never see an uncommitted write, greenlets that keep running while a write
   waits ~1 s for a lock held by another connection, a greenlet killed while it waits,
   close() after the queued writes, and the default (patched process -> writer thread;
   ``:memory:`` never).

The end-to-end counterpart (a ping answered while `imsrv serve` waits to commit) is
tests/e2e/test_sqlite_commit.py.
"""
import _thread
import sqlite3
import subprocess
import sys
import textwrap
import time

import gevent
import pytest

import test_store
from imsrv import runtime
from imsrv.backends import open_store
from imsrv.backends.base import Store, StoreError
from imsrv.backends.sqlite import SqliteStore
from test_store import *  # noqa: F401,F403 (the store tests and their fixtures, run again here)
from test_store import check_sqlite_plans, msg, run_the_whole_interface

# 1. -------------------------------------------------------------------------------------
# test_store's MySQL-only tests are not repeated; its query-plan test traces one connection
# (the reader): its writer-thread version is test_every_statement_uses_an_index_on_both_connections.
for _name in [n for n in dir(test_store) if n.startswith("test_")]:
    if "mysql" in _name or _name == "test_sqlite_every_query_uses_an_index":
        del globals()[_name]


@pytest.fixture(autouse=True)
def writer_thread_by_default(monkeypatch):
    """Stores opened without ``writer_thread`` get one, as in a patched server process."""
    monkeypatch.setattr(runtime, "patched", lambda: True)


@pytest.fixture
def backend(tmp_path):   # test_store's, SQLite only
    b = test_store.Backend("sqlite", tmp_path)
    yield b
    b.close()


def test_the_imported_tests_use_the_writer_thread(store, tmp_path):
    assert store.writer_thread and store._writer is not None
    assert SqliteStore(str(tmp_path / "x.db")).writer_thread


# 2. -------------------------------------------------------------------------------------
@pytest.fixture
def threaded(tmp_path):
    s = SqliteStore(str(tmp_path / "w.db"), writer_thread=True)
    s.migrate()
    yield s
    s.close()


def traced(s):
    """Trace both connections -> [(connection, OS thread id, sql)] as they run."""
    seen = []
    for label, conn in (("reader", s._conn), ("writer", s._writer_conn)):
        conn.set_trace_callback(
            lambda sql, label=label: seen.append((label, _thread.get_ident(), sql)))
    return seen


WRITE_VERBS = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")


def test_every_commit_runs_on_the_writer_thread_and_every_read_on_the_reader(threaded):
    seen = traced(threaded)
    run_the_whole_interface(threaded)
    me = _thread.get_ident()
    writer_threads = set()
    in_transaction = False
    commits = 0
    for label, thread, sql in seen:
        verb = sql.split(None, 1)[0].upper()
        if label == "reader":
            assert thread == me and verb not in WRITE_VERBS + ("BEGIN", "COMMIT"), sql
            continue
        if verb == "COMMIT":
            assert in_transaction and thread != me, sql
            writer_threads.add(thread)
            in_transaction = False
            commits += 1
        elif verb == "BEGIN":
            assert not in_transaction, sql
            in_transaction = True
        elif verb in WRITE_VERBS:
            assert in_transaction, sql       # no write commits on its own (autocommit)
    assert len(writer_threads) == 1 and commits >= 19   # one per write method at least


def test_the_check_above_covers_the_whole_store_interface(threaded):
    """A Store method added later must be added to run_the_whole_interface (test_store.py),
    so that the test above checks where its statements run (and the plan check, how)."""
    called = set()

    class Recorder:
        def __getattr__(self, name):
            called.add(name)
            return getattr(threaded, name)

    run_the_whole_interface(Recorder())
    interface = {name for cls in Store.__mro__ for name, value in vars(cls).items()
                 if callable(value) and not name.startswith("_")}
    # count_users: a read that walks the users' key on purpose (tests/test_store_admin.py)
    skipped = {"close", "count_users"}
    assert interface - skipped <= called, sorted(interface - skipped - called)


def test_every_statement_uses_an_index_on_both_connections(tmp_path):
    """test_store's query-plan test, tracing the writer's connection too."""
    s = SqliteStore(str(tmp_path / "plan.db"), writer_thread=True)
    s.migrate()
    s.store_messages([msg(f"u{i}", f"v{i}", cmid=f"c{i}") for i in range(200)])
    with s.autocommit("analyze") as cur:
        cur.execute("ANALYZE")
    seen = traced(s)
    run_the_whole_interface(s)
    check_sqlite_plans(s, [sql for _, _, sql in seen])


def test_a_read_never_sees_a_write_before_its_commit(threaded):
    """A greenlet holds a write transaction open: the reader sees nothing of it; once
    the transaction committed it sees all of it."""
    inside, release = gevent.event.Event(), gevent.event.Event()

    def held_write():
        with threaded.transaction("held") as cur:
            cur.execute("INSERT INTO users (user, pw_hash, name, text, created)"
                        " VALUES ('zed', 'h', 'Z', '', 1)")
            inside.set()
            release.wait()

    writer = gevent.spawn(held_write)
    assert inside.wait(10)
    assert threaded.get_user("zed") is None          # uncommitted: not visible
    assert threaded.existing_users(["zed"]) == set()
    later = gevent.spawn(threaded.create_user, "amy", "h", "A", 2)   # waits its turn
    gevent.sleep(0.05)   # an absence check: the second write is still waiting
    assert not later.ready() and threaded.get_user("amy") is None
    release.set()
    writer.get(timeout=10)
    later.get(timeout=10)
    assert threaded.get_user("zed")["name"] == "Z"   # committed: visible
    assert threaded.get_user("amy")["name"] == "A"


def test_a_greenlet_killed_while_its_write_waits_leaves_the_store_consistent(tmp_path):
    """Killed while its BEGIN waits on the writer thread for another connection's lock:
    the kill completes once that call returned (never two threads on one connection),
    the write is rolled back, and the store goes on working."""
    path = str(tmp_path / "kill.db")
    s = SqliteStore(path, writer_thread=True)
    s.migrate()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        victim = gevent.spawn(s.create_user, "victim", "h", "V", 1)
        gevent.sleep(0.2)              # pacing: let it reach the busy wait
        assert not victim.ready()
        gevent.spawn_later(0.3, other.execute, "ROLLBACK")
        started = time.monotonic()
        victim.kill(block=True, timeout=10)
        assert victim.dead and time.monotonic() - started >= 0.25   # waited for the call
        s.create_user("after", "h", "A", 2)
        assert s.get_user("after")["name"] == "A"
        assert s.get_user("victim") is None
    finally:
        other.close()
        s.close()


def test_greenlets_run_while_a_write_waits_for_a_lock(tmp_path):
    """Another connection holds the write lock for ~1 s: the store's write waits in
    SQLite's busy handler on the writer thread, and meanwhile the event loop keeps
    running: a ticker greenlet is never late by more than 200 ms and reads answer."""
    path = str(tmp_path / "lock.db")
    s = SqliteStore(path, writer_thread=True)
    s.migrate()
    s.store_messages([msg("alice", "bob")])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    gaps, reads = [], []
    done = gevent.event.Event()

    def ticker():
        last = time.monotonic()
        while not done.is_set():
            gevent.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            reads.append(s.head("bob"))

    def unlock_later():
        gevent.sleep(1.2)
        other.execute("ROLLBACK")

    tick = gevent.spawn(ticker)
    unlock = gevent.spawn(unlock_later)
    started = time.monotonic()
    res = s.store_messages([msg("alice", "bob", cmid="late")])   # waits for the lock
    waited = time.monotonic() - started
    done.set()
    gevent.joinall([tick, unlock], raise_error=True)
    other.close()
    try:
        assert waited >= 1.0, waited      # it really waited for the lock
        assert res[0]["seqs"] == {"alice": 2, "bob": 2}
        assert len(gaps) > 50 and max(gaps) < 0.2, (len(gaps), max(gaps))
        assert set(reads) <= {1, 2} and reads[0] == 1
    finally:
        s.close()


def test_close_finishes_the_queued_writes_first(threaded):
    results = []

    def send(i):
        results.append(threaded.store_messages([msg("alice", "bob", cmid=f"q{i}")]))

    senders = [gevent.spawn(send, i) for i in range(20)]
    gevent.sleep(0)             # all 20 queued on the writer
    threaded.close()
    gevent.joinall(senders, raise_error=True)
    assert sorted(r[0]["seqs"]["bob"] for r in results) == list(range(1, 21))
    with pytest.raises(StoreError, match="closed"):
        threaded.store_messages([msg("alice", "bob")])
    with pytest.raises(StoreError, match="closed"):
        threaded.head("bob")


def test_writes_keep_call_order_and_seqs_gapless_under_greenlets(threaded):
    order = []

    def sender(n):
        for i in range(30):
            res = threaded.store_messages([msg(f"s{n}", "hub", cmid=f"{n}-{i}")])
            order.append((n, i, res[0]["seqs"]["hub"]))

    gevent.joinall([gevent.spawn(sender, n) for n in range(5)], raise_error=True)
    inbox = threaded.inbox_since("hub", 0, 1000)
    assert [m["seq"] for m in inbox] == list(range(1, 151))
    for n in range(5):
        mine = [m["cmid"] for m in inbox if m["from"] == f"s{n}"]
        assert mine == [f"{n}-{i}" for i in range(30)]


def test_the_default_follows_the_process_being_patched(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from imsrv import runtime
        if sys.argv[1] == "patched":
            runtime.patch()
        from imsrv.backends import open_store
        s = open_store(f"sqlite:///{tmp_path}/{{sys.argv[1]}}.db")
        m = open_store("sqlite:///:memory:")
        s.migrate()
        s.create_user("alice", "h", "A", 1)
        print(s.writer_thread, m.writer_thread, s.get_user("alice")["name"])
        s.close()
        m.close()
    """)
    for mode, expected in (("patched", "True False A"), ("plain", "False False A")):
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected


def test_memory_and_explicit_off_have_one_connection(tmp_path):
    m = open_store("sqlite:///:memory:", writer_thread=True)
    off = SqliteStore(str(tmp_path / "off.db"), writer_thread=False)
    try:
        for s in (m, off):
            assert not s.writer_thread and s._writer is None
            assert s._writer_conn is s._conn
    finally:
        m.close()
        off.close()


@pytest.mark.parametrize("in_place_wait", [10.0, 0.0])
def test_a_call_on_the_writer_thread_returns_or_raises_either_way(threaded, in_place_wait):
    """in_place_wait 10 s: the loop thread waits in place (the call is quick); 0: the
    greenlet waits alone.  Either way the value comes back, the exception is raised, and
    the call ran on the writer thread."""
    threaded.in_place_wait = in_place_wait

    def fails():
        raise sqlite3.OperationalError("disk I/O error")

    assert threaded._off_loop(_thread.get_ident) != _thread.get_ident()
    assert threaded._off_loop(sum, (1, 2)) == 3
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        threaded._off_loop(fails)
    threaded.create_user("alice", "h", "A", 1)
    assert threaded.get_user("alice")["name"] == "A"


def test_the_loop_waits_in_place_at_most_in_place_wait(threaded):
    """A call that takes 0.5 s on the writer thread: other greenlets run again after
    in_place_wait, long before it ends."""
    threaded.in_place_wait = 0.05
    ran = []
    ticker = gevent.spawn(lambda: ran.append(time.monotonic()))
    started = time.monotonic()
    threaded._off_loop(time.sleep, 0.5)
    ticker.join()
    assert ran and ran[0] - started < 0.3, ran[0] - started
    assert time.monotonic() - started >= 0.5


# 5. -------------------------------------------------------------------------------------
def test_checkpoints_run_on_the_checkpointer_thread_never_in_a_commit(tmp_path):
    """With a writer thread no connection checkpoints by itself (wal_autocheckpoint 0 on
    every connection): the checkpointer thread's PASSIVE checkpoints, one round after a
    commit, copy the WAL into the database file; none runs while nothing was committed."""
    s = SqliteStore(str(tmp_path / "ck.db"), writer_thread=True, checkpoint_interval=0.05)
    try:
        s.migrate()
        for conn in (s._conn, s._writer_conn, s._checkpointer.conn):
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        checkpoints_run = []
        s._checkpointer.conn.set_trace_callback(checkpoints_run.append)
        s.store_messages([msg("alice", "bob", cmid=f"c{i}") for i in range(50)])
        assert s._checkpointer.dirty
        deadline = time.monotonic() + 10
        while s._checkpointer.dirty and time.monotonic() < deadline:
            gevent.sleep(0.01)   # polling a flag another OS thread clears, with a deadline
        assert not s._checkpointer.dirty, "no checkpoint within 10 s of a commit"
        # the round that cleared the flag runs its checkpoint right after: wait for it too
        while not s._checkpointer.checkpoints and time.monotonic() < deadline:
            gevent.sleep(0.01)
        assert checkpoints_run == ["PRAGMA wal_checkpoint(PASSIVE)"]
        assert s._checkpointer.checkpoints == 1
        busy, frames, copied = s._checkpointer.checkpoint()
        assert busy == 0 and frames == copied   # everything was copied already
        done = s._checkpointer.checkpoints
        gevent.sleep(0.2)   # four rounds with nothing committed: the duration under test
        assert s._checkpointer.checkpoints == done
    finally:
        s.close()
    assert s._checkpointer is None
