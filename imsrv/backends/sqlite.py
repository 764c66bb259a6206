"""The SQLite engine: the durable store of the embedded server (``imsrv serve``) and tests.

One connection per store.  The embedded server is one gevent process and sqlite3 calls
never yield to the hub, so every store method runs to completion inside one greenlet:
there is no interleaving to guard against inside the process.  Between processes (or
several stores on one file) SQLite's own locking applies: every write transaction starts
with ``BEGIN IMMEDIATE`` and so holds the write lock from its first read, and
``busy_timeout`` makes a second writer wait for it instead of failing at once.

Settings (keyword arguments of :class:`SqliteStore`, also accepted by ``open_store``):

- ``synchronous`` (default ``"FULL"``): SQLite's ``PRAGMA synchronous``.  FULL fsyncs the
  WAL on every commit, so an acked message survives a power cut; NORMAL (fsync only at
  checkpoints) survives a crash of the process but may lose the last commits on power loss.
  One of OFF, NORMAL, FULL, EXTRA.
- ``busy_timeout`` (default 5000): milliseconds a statement waits for another connection's
  lock before failing with StoreError.
"""
import os
import sqlite3

from .sql import SQLITE, SqlStore

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

# Multi-row INSERT ... RETURNING needs SQLite 3.35 (2021-03).
HAVE_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
# Rows per multi-row INSERT of messages (7 variables each; SQLite >= 3.32 allows 32766).
MESSAGE_CHUNK = 128


class SqliteStore(SqlStore):
    """Durable store in one SQLite file (or ``":memory:"``)."""

    driver_error = sqlite3.Error

    def __init__(self, path, synchronous="FULL", busy_timeout=5000, url=None):
        super().__init__(url or f"sqlite:///{path}", SQLITE)
        sync = str(synchronous).upper()
        if sync not in SYNCHRONOUS_MODES:
            raise ValueError(f"{self.url}: synchronous must be one of "
                             f"{', '.join(SYNCHRONOUS_MODES)}, not {synchronous!r}")
        busy_timeout = int(busy_timeout)
        if busy_timeout < 0:
            raise ValueError(f"{self.url}: busy_timeout must be >= 0, not {busy_timeout}")
        self.path = path
        self.synchronous = sync
        self.busy_timeout = busy_timeout
        memory = path == ":memory:" or path.startswith("file::memory:")
        if not memory:
            parent = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                raise self._error(exc, f"create directory {parent!r}") from exc
        try:
            conn = sqlite3.connect(path, timeout=busy_timeout / 1000.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._error(exc, "open") from exc
        self._conn = conn
        try:
            # PRAGMA values cannot be bound; both are validated above.
            conn.execute(f"PRAGMA busy_timeout = {busy_timeout}")
            if not memory:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise sqlite3.OperationalError(f"cannot enable WAL (journal_mode={mode})")
            conn.execute(f"PRAGMA synchronous = {sync}")
        except sqlite3.Error as exc:
            conn.close()
            self._conn = None
            raise self._error(exc, "open") from exc

    def _error(self, exc, what):
        if isinstance(exc, OSError):
            from .base import StoreError
            return StoreError(f"{what}: {self.url}: {exc}")
        return super()._error(exc, what)

    def _insert_messages(self, cur, rows):
        if not HAVE_RETURNING or len(rows) == 1:
            return super()._insert_messages(cur, rows)
        mids = []
        for part in [rows[i:i + MESSAGE_CHUNK] for i in range(0, len(rows), MESSAGE_CHUNK)]:
            values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(part))
            cur.execute("INSERT INTO messages (sender, to_user, grp, conv, body, ts, cmid)"
                        f" VALUES {values} RETURNING mid", [v for row in part for v in row])
            # RETURNING yields rows in no guaranteed order, but the rows of a multi-row
            # VALUES are inserted in order and AUTOINCREMENT (under our write lock) gives
            # each a larger mid than the one before: sorted mids are in VALUES order.
            mids.extend(sorted(r[0] for r in cur.fetchall()))
        return mids
