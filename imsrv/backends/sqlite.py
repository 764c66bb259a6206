"""The SQLite engine: the durable store of the embedded server (``imsrv serve``) and tests.

**Threads.**  sqlite3 is C code doing its own file I/O: while a call waits for the disk
(a COMMIT's fsync) or for another connection's lock (the busy handler), it blocks the OS
thread that made it, and gevent cannot switch greenlets.  On the event-loop thread of a
server that would stall every connection.  So a store opened with ``writer_thread`` (the
default in a gevent-patched process, see :mod:`imsrv.runtime`: in every server) has:

- a **writer thread** (a gevent ThreadPool of one) for the calls of a write transaction
  that wait: every ``COMMIT`` (the fsync; a WAL checkpoint, when due, follows it there),
  and the ``BEGIN IMMEDIATE`` when another connection holds the write lock (the busy
  handler's wait; when nobody does, the BEGIN is tried in place without waiting).  The
  loop thread sleeps for up to ``in_place_wait`` (10 ms) on such a call, then lets the
  other greenlets run while the caller's greenlet alone waits: a slow disk or another
  process's lock holds any connection up for 10 ms at most, not for the whole wait.  One
  thread hop per transaction, and a batch of sends is one transaction;
- a **writer connection** for the write transactions, one at a time (a lock), whose other
  statements run on the caller's thread: they only touch SQLite's page cache, and running
  them on the writer thread would make the two threads hand the GIL to each other at every
  statement (measured: a 200-message batch took 5x longer with a busy loop).  Every write
  is a transaction, single statements too (``_run``), so none commits on the loop;
- a **reader connection** for every read, on the caller's thread.  WAL mode: a read never
  waits for the writer and sees exactly what was committed before it started, so a write
  is visible to the next read once its call returned, never before its COMMIT.

Without ``writer_thread`` (an unpatched process: tools, tests; always for ``:memory:``,
which has no fsync and cannot be shared by two connections) there is one connection and
everything runs on the caller's thread.  ``autocommit()`` used directly (tests, tools)
runs on the reader connection.

Between processes (or several stores on one file) SQLite's own locking applies: every
write transaction starts with ``BEGIN IMMEDIATE`` and so holds the write lock from its
first read, and ``busy_timeout`` makes a second writer wait for it instead of failing at
once.

Settings (keyword arguments of :class:`SqliteStore`, also accepted by ``open_store``):

- ``synchronous`` (default ``"FULL"``): SQLite's ``PRAGMA synchronous``.  FULL fsyncs the
  WAL on every commit, so an acked message survives a power cut; NORMAL (fsync only at
  checkpoints) survives a crash of the process but may lose the last commits on power loss.
  One of OFF, NORMAL, FULL, EXTRA.
- ``busy_timeout`` (default 5000): milliseconds a statement waits for another connection's
  lock before failing with StoreError.
- ``writer_thread`` (default None: True if gevent has patched the process): the waiting
  calls of the writes on a thread of their own, as above.
- ``checkpoint_interval`` (default 1.0): with ``writer_thread``, seconds between two WAL
  checkpoints on the checkpointer thread (:mod:`imsrv.backends.sqlite_checkpointer`; only
  when something was committed), so that no COMMIT waits for a checkpoint; the connections
  then have SQLite's automatic checkpoints off.
- ``wal_autocheckpoint`` (default 10000): without ``writer_thread``, pages (4 KiB each)
  the WAL may hold before a commit also checkpoints it into the database file (SQLite's
  ``PRAGMA wal_autocheckpoint``; 0 = never, SQLite's own default is 1000).  A checkpoint writes
  every page changed since the last one once, so a larger WAL writes a hot page (an inbox
  or counter page changed by every batch) once instead of several times: measured with
  ``bench/bench_store.py``'s batches of 16 sends, 80,000 sends with synchronous=FULL,
  10000 stored ~40 % more sends/s than 1000.  The cost is disk: the WAL file grows to
  about 40 MiB between checkpoints (it is not shrunk after one).
"""
import os
import re
import sqlite3
from contextlib import contextmanager

from gevent.lock import Semaphore
from gevent.monkey import get_original
from gevent.threadpool import ThreadPool

from .. import runtime
from .base import StoreError
from .sqlite_checkpointer import Checkpointer
from .sql import SqlStore
from .sql_dialect import SQLITE

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

# Messages are inserted one statement each, taking cursor.lastrowid (the portable
# SqlStore._insert_messages).  A multi-row INSERT ... RETURNING mid (SQLite >= 3.35) was
# measured as no faster: the cost of a batch is in the b-tree inserts and the commit, and
# sqlite3 statements do not cross a network.

# an OS-level lock even when gevent has patched _thread: waiting on it sleeps the thread
_allocate_lock = get_original("_thread", "allocate_lock")

_READ = re.compile(r"\s*SELECT\b", re.IGNORECASE)   # a statement of _run that only reads


def _is_busy(exc):
    """True for SQLITE_BUSY: another connection holds the lock."""
    name = getattr(exc, "sqlite_errorname", None)   # Python >= 3.11
    if name:
        return name.startswith("SQLITE_BUSY")
    return str(exc).startswith("database is locked")


class SqliteStore(SqlStore):
    """Durable store in one SQLite file (or ``":memory:"``)."""

    driver_error = sqlite3.Error

    #: seconds the loop thread waits in place (asleep) for a call on the writer thread
    #: before it lets the other greenlets run: the longest any connection waits for a
    #: write.  A commit that only needs the CPU (a few ms for a batch of a few hundred
    #: sends on a disk with a write cache) runs with the loop thread out of its way, as
    #: fast as in place; waiting on the greenlet alone, it shared the CPU with the loop
    #: and a 2-core bench/loadgen.py run (load generator on the same cores) lost ~15 %.
    in_place_wait = 0.010

    def __init__(self, path, synchronous="FULL", busy_timeout=5000, url=None, writer_thread=None,
                 wal_autocheckpoint=10000, checkpoint_interval=1.0):
        super().__init__(url or f"sqlite:///{path}", SQLITE)
        sync = str(synchronous).upper()
        if sync not in SYNCHRONOUS_MODES:
            raise ValueError(f"{self.url}: synchronous must be one of "
                             f"{', '.join(SYNCHRONOUS_MODES)}, not {synchronous!r}")
        busy_timeout = int(busy_timeout)
        if busy_timeout < 0:
            raise ValueError(f"{self.url}: busy_timeout must be >= 0, not {busy_timeout}")
        wal_autocheckpoint = int(wal_autocheckpoint)
        if wal_autocheckpoint < 0:
            raise ValueError(f"{self.url}: wal_autocheckpoint must be >= 0, "
                             f"not {wal_autocheckpoint}")
        checkpoint_interval = float(checkpoint_interval)
        if not checkpoint_interval > 0:
            raise ValueError(f"{self.url}: checkpoint_interval must be > 0 seconds, "
                             f"not {checkpoint_interval}")
        self.path = path
        self.synchronous = sync
        self.busy_timeout = busy_timeout
        memory = path == ":memory:"
        if writer_thread is None:
            writer_thread = runtime.patched()
        self.writer_thread = bool(writer_thread) and not memory
        # with a checkpointer thread, no connection checkpoints by itself
        self.wal_autocheckpoint = 0 if self.writer_thread else wal_autocheckpoint
        self._writer = None         # the writer thread: a ThreadPool of one
        self._checkpointer = None   # the checkpointer thread (with writer_thread)
        self._writer_conn = None    # the write transactions' connection (= _conn without)
        self._write_lock = None     # one write transaction at a time on _writer_conn
        if not memory:
            parent = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                raise self._error(exc, f"create directory {parent!r}") from exc
        self._conn = self._open(memory)
        if not self.writer_thread:
            self._writer_conn = self._conn
            return
        try:
            # used by the caller's thread and the writer thread, never by both at once
            self._writer_conn = self._open(memory, check_same_thread=False)
            # used by the checkpointer thread only (and closed here once it ended)
            checkpoint_conn = self._open(memory, check_same_thread=False)
        except BaseException:
            for conn in (self._conn, self._writer_conn):
                if conn is not None:
                    conn.close()
            self._conn = self._writer_conn = None
            raise
        self._write_lock = Semaphore()
        self._writer = ThreadPool(1)
        self._checkpointer = Checkpointer(checkpoint_conn, checkpoint_interval, self.url)

    def _open(self, memory, check_same_thread=True):
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout / 1000.0,
                                   isolation_level=None, check_same_thread=check_same_thread)
        except sqlite3.Error as exc:
            raise self._error(exc, "open") from exc
        try:
            # PRAGMA values cannot be bound; all are validated in __init__.
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout}")
            if not memory:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise sqlite3.OperationalError(f"cannot enable WAL (journal_mode={mode})")
                conn.execute(f"PRAGMA wal_autocheckpoint = {self.wal_autocheckpoint}")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except sqlite3.Error as exc:
            conn.close()
            raise self._error(exc, "open") from exc
        return conn

    def _error(self, exc, what):
        if isinstance(exc, OSError):
            return StoreError(f"{what}: {self.url}: {exc}")
        return super()._error(exc, what)

    # ------------------------------------------------------------------ the writer thread
    @contextmanager
    def _write_connection(self, what):
        if self._writer is None:
            with super()._write_connection(what) as conn:
                yield conn
            return
        with self._write_lock:
            conn = self._writer_conn
            if conn is None:
                raise StoreError(f"{what}: {self.url}: the store is closed")
            yield conn

    def _begin(self, cur):
        """BEGIN IMMEDIATE without waiting, in place (nobody else holds the write lock: the
        usual case); when another connection holds it, on the writer thread, waiting for
        it in SQLite's busy handler for up to busy_timeout."""
        if self._writer is None:
            return super()._begin(cur)
        cur.execute("PRAGMA busy_timeout = 0")
        try:
            cur.execute(self.dialect.begin)
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
        finally:
            cur.execute(f"PRAGMA busy_timeout = {self.busy_timeout}")
        self._off_loop(cur.execute, self.dialect.begin)

    def _commit(self, conn):
        """COMMIT (the fsync; a WAL checkpoint when one is due) on the writer thread."""
        if self._writer is None:
            return super()._commit(conn)
        self._off_loop(conn.commit)
        self._checkpointer.committed()

    def _off_loop(self, fn, *args):
        """``fn(*args)`` on the writer thread.  The calling thread first waits for it in
        place for up to ``in_place_wait`` seconds (an OS lock: the loop thread sleeps and
        leaves the CPU to the call); a call still running then (the disk or a lock is
        slow) is waited for by the greenlet alone, and the loop goes on.  If that greenlet
        is killed meanwhile, the call is still waited for: the connection is never used by
        two threads at once."""
        done = _allocate_lock()
        done.acquire()
        outcome = []

        def call():
            try:
                outcome.append((True, fn(*args)))
            except BaseException as exc:
                outcome.append((False, exc))
            finally:
                done.release()

        finished = self._writer.spawn(call)
        if not done.acquire(timeout=self.in_place_wait):
            try:
                finished.get()
            except BaseException:
                while not finished.ready():
                    try:
                        finished.wait()
                    except BaseException:   # killed again: the first exception is raised below
                        pass
                raise
        ok, value = outcome[0]
        if ok:
            return value
        raise value

    def _run(self, what, sql, params=(), fetch=None):
        """A read in autocommit mode on the reader connection; with a writer thread, a
        single-statement write is a transaction (its COMMIT on the writer thread)."""
        if self._writer is None or _READ.match(sql):
            return super()._run(what, sql, params, fetch)
        with self.transaction(what) as cur:
            return self._execute(cur, sql, params, fetch)

    def close(self):
        """Close the reader, then (after the write transaction in progress, if any) stop
        the checkpointer and close its connection and the writer connection on the writer
        thread: the last connection to close checkpoints the WAL, off the loop too."""
        conn, self._conn = self._conn, None
        try:
            if conn is not None and conn is not self._writer_conn:
                conn.close()
            if self._writer is None:
                writer, self._writer_conn = self._writer_conn, None
                if writer is not None:
                    writer.close()
                return
            with self._write_lock:
                writer, self._writer_conn = self._writer_conn, None
                if writer is not None:
                    try:
                        checkpointer, self._checkpointer = self._checkpointer, None
                        self._off_loop(checkpointer.stop)
                        self._off_loop(checkpointer.conn.close)
                        self._off_loop(writer.close)
                    finally:
                        pool, self._writer = self._writer, None
                        pool.kill()
        except self.driver_error as exc:
            raise self._error(exc, "close") from exc
