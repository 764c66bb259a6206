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

from .base import StoreError
from .sql import SQLITE, SqlStore

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

# Messages are inserted one statement each, taking cursor.lastrowid (the portable
# SqlStore._insert_messages).  A multi-row INSERT ... RETURNING mid (SQLite >= 3.35) was
# measured as no faster: the cost of a batch is in the b-tree inserts and the commit, and
# sqlite3 statements do not cross a network.


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
        memory = path == ":memory:"
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
            return StoreError(f"{what}: {self.url}: {exc}")
        return super()._error(exc, what)
