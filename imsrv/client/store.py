"""Data layer of the client SDK: the local store of one (user, device).

It holds what a client must not forget across reconnects and restarts of its process:

* the inbox **cursor**: the highest inbox seq delivered to the application (sync resumes
  after it, and anything at or below it is a duplicate);
* the **received messages** (a local cache, for scrollback without the server);
* the **outbox**: sends not acked yet, with their cmids, in the order they were made
  (resent with the same cmid after a reconnect, so the server stores each once);
* small key/value **meta** data (last gateway, ...).

Two engines with one API: :class:`MemoryStore` (lives as long as the object) and
:class:`SQLiteStore` (a file; survives the process).  One store (file) can hold several
(user, device) accounts: :meth:`bind` picks the one the other methods act on.
:func:`open_store` turns ``None`` / ``":memory:"`` / a path / a store into a store.

Durability: SQLiteStore commits each change before returning, in WAL mode with
``synchronous=NORMAL`` by default: safe against a crash of the process (the guarantee the
SDK relies on); pass ``synchronous="FULL"`` to also survive a power loss, at the cost of
an fsync per delivered message.
"""
import os
import sqlite3
import threading
import time

from .. import jsonlib


def _dumps(obj):
    return jsonlib.dumps(obj).decode("utf-8")


def _loads(text):
    return jsonlib.loads(text)


def conversation_of(msg, me):
    """-> ("group", gid) or ("user", peer) for a message as seen by ``me``."""
    if msg.get("group") is not None:
        return "group", msg["group"]
    sender = msg.get("from")
    return "user", (msg.get("to") if sender == me else sender)


class OutboxEntry:
    """One unacked send.  ``id`` orders the outbox; ``hold_until`` (monotonic seconds,
    memory only) delays a resend after ``rate_limited``/``unavailable``; ``size`` caches
    the send frame's size (memory only, filled by the client)."""

    __slots__ = ("id", "cmid", "to", "group", "body", "created", "hold_until", "size")

    def __init__(self, id, cmid, to, group, body, created):
        self.id = id
        self.cmid = cmid
        self.to = to
        self.group = group
        self.body = body
        self.created = created
        self.hold_until = 0.0
        self.size = None

    def fields(self):
        """The ``send`` request fields (without op/id)."""
        out = {"body": self.body, "cmid": self.cmid}
        if self.group is not None:
            out["group"] = self.group
        else:
            out["to"] = self.to
        return out

    def __repr__(self):
        dest = f"group={self.group!r}" if self.group is not None else f"to={self.to!r}"
        return f"<OutboxEntry #{self.id} cmid={self.cmid!r} {dest}>"


class StoreError(Exception):
    pass


class BaseStore:
    """The store API.  Call :meth:`bind` first."""

    user = None
    device = None

    def bind(self, user, device):
        raise NotImplementedError

    def _require_bound(self):
        if self.user is None:
            raise StoreError("store not bound to a (user, device): call bind() (Client.login does)")

    # cursor and received messages
    def cursor(self):
        raise NotImplementedError

    def set_cursor(self, seq):
        raise NotImplementedError

    def delivered(self, msg):
        """Keep ``msg`` and move the cursor to its seq, atomically."""
        raise NotImplementedError

    def messages(self, user=None, group=None, before_seq=None, limit=50):
        """Received messages of one conversation (or all), newest first."""
        raise NotImplementedError

    # outbox
    def outbox(self):
        """-> [OutboxEntry] oldest first."""
        raise NotImplementedError

    def outbox_add(self, cmid, to, group, body):
        raise NotImplementedError

    def outbox_remove(self, entry_id):
        raise NotImplementedError

    # meta
    def get_meta(self, key, default=None):
        raise NotImplementedError

    def set_meta(self, key, value):
        raise NotImplementedError

    def close(self):
        pass


class _Account:
    def __init__(self):
        self.cursor = 0
        self.messages = {}   # seq -> msg
        self.outbox = {}     # id -> OutboxEntry
        self.meta = {}


class MemoryStore(BaseStore):
    """Everything in memory: survives reconnects (and a new Client given the same store
    object), not the process.  Keeps the last ``max_messages`` received messages."""

    def __init__(self, max_messages=10000):
        self.max_messages = max_messages
        self._accounts = {}
        self._acc = None
        self._next_id = 1
        self.path = ":memory:"

    def bind(self, user, device):
        self.user, self.device = user, device
        self._acc = self._accounts.setdefault((user, device), _Account())

    def cursor(self):
        self._require_bound()
        return self._acc.cursor

    def set_cursor(self, seq):
        self._require_bound()
        self._acc.cursor = int(seq)

    def delivered(self, msg):
        self._require_bound()
        messages = self._acc.messages
        messages[msg["seq"]] = dict(msg)
        if msg["seq"] > self._acc.cursor:
            self._acc.cursor = msg["seq"]
        while len(messages) > self.max_messages:
            del messages[next(iter(messages))]  # inserted in seq order

    def messages(self, user=None, group=None, before_seq=None, limit=50):
        self._require_bound()
        out = []
        for seq in sorted(self._acc.messages, reverse=True):
            if before_seq is not None and seq >= before_seq:
                continue
            m = self._acc.messages[seq]
            kind, key = conversation_of(m, self.user)
            if group is not None and (kind != "group" or key != group):
                continue
            if user is not None and (kind != "user" or key != user):
                continue
            out.append(dict(m))
            if len(out) >= limit:
                break
        return out

    def outbox(self):
        self._require_bound()
        return [self._acc.outbox[i] for i in sorted(self._acc.outbox)]

    def outbox_add(self, cmid, to, group, body):
        self._require_bound()
        _dumps(body)  # same failure as the SQLite store for a body that is not JSON
        entry = OutboxEntry(self._next_id, cmid, to, group, body, int(time.time() * 1000))
        self._next_id += 1
        self._acc.outbox[entry.id] = entry
        return entry

    def outbox_remove(self, entry_id):
        self._require_bound()
        self._acc.outbox.pop(entry_id, None)

    def get_meta(self, key, default=None):
        self._require_bound()
        return self._acc.meta.get(key, default)

    def set_meta(self, key, value):
        self._require_bound()
        self._acc.meta[key] = value


_SCHEMA = """
CREATE TABLE IF NOT EXISTS account (
    user TEXT NOT NULL, device TEXT NOT NULL, cursor INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, device));
CREATE TABLE IF NOT EXISTS message (
    user TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,
    kind TEXT NOT NULL, conv TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (user, device, seq));
CREATE INDEX IF NOT EXISTS message_conv ON message (user, device, kind, conv, seq);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, user TEXT NOT NULL, device TEXT NOT NULL,
    cmid TEXT NOT NULL, to_user TEXT, grp TEXT, body TEXT NOT NULL, created INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_account ON outbox (user, device, id);
CREATE TABLE IF NOT EXISTS meta (
    user TEXT NOT NULL, device TEXT NOT NULL, key TEXT NOT NULL, value TEXT,
    PRIMARY KEY (user, device, key));
"""


class SQLiteStore(BaseStore):
    """A SQLite file (created with its directory if missing).  Use it from one thread at a
    time (the client's); it may be created in another."""

    def __init__(self, path, synchronous="NORMAL", timeout=10.0):
        self.path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        try:
            self.db = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False,
                                      isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={synchronous}")
            self.db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the client store {self.path}: {exc}") from None
        self._lock = threading.Lock()

    def __repr__(self):
        return f"<SQLiteStore {self.path} {self.user}/{self.device}>"

    def _tx(self, statements):
        """Run [(sql, params)] in one transaction."""
        with self._lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                cur = None
                for sql, params in statements:
                    cur = db.execute(sql, params)
                db.execute("COMMIT")
                return cur
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _query(self, sql, params):
        with self._lock:
            return self.db.execute(sql, params).fetchall()

    def bind(self, user, device):
        self.user, self.device = user, device
        self._tx([("INSERT OR IGNORE INTO account (user, device, cursor) VALUES (?, ?, 0)", (user, device))])

    def cursor(self):
        self._require_bound()
        rows = self._query("SELECT cursor FROM account WHERE user = ? AND device = ?", (self.user, self.device))
        return rows[0][0] if rows else 0

    def set_cursor(self, seq):
        self._require_bound()
        self._tx([("UPDATE account SET cursor = ? WHERE user = ? AND device = ?", (int(seq), self.user, self.device))])

    def delivered(self, msg):
        self._require_bound()
        kind, conv = conversation_of(msg, self.user)
        self._tx([
            ("INSERT OR REPLACE INTO message (user, device, seq, kind, conv, data) VALUES (?, ?, ?, ?, ?, ?)",
             (self.user, self.device, msg["seq"], kind, str(conv), _dumps(msg))),
            ("UPDATE account SET cursor = MAX(cursor, ?) WHERE user = ? AND device = ?",
             (msg["seq"], self.user, self.device)),
        ])

    def messages(self, user=None, group=None, before_seq=None, limit=50):
        self._require_bound()
        sql = "SELECT data FROM message WHERE user = ? AND device = ?"
        params = [self.user, self.device]
        if group is not None:
            sql += " AND kind = 'group' AND conv = ?"
            params.append(group)
        elif user is not None:
            sql += " AND kind = 'user' AND conv = ?"
            params.append(user)
        if before_seq is not None:
            sql += " AND seq < ?"
            params.append(int(before_seq))
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(int(limit))
        return [_loads(r[0]) for r in self._query(sql, params)]

    def outbox(self):
        self._require_bound()
        rows = self._query(
            "SELECT id, cmid, to_user, grp, body, created FROM outbox WHERE user = ? AND device = ? ORDER BY id",
            (self.user, self.device))
        return [OutboxEntry(r[0], _loads(r[1]), r[2], r[3], _loads(r[4]), r[5]) for r in rows]

    def outbox_add(self, cmid, to, group, body):
        self._require_bound()
        body_json = _dumps(body)
        created = int(time.time() * 1000)
        cur = self._tx([(
            "INSERT INTO outbox (user, device, cmid, to_user, grp, body, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self.user, self.device, _dumps(cmid), to, group, body_json, created))])
        return OutboxEntry(cur.lastrowid, cmid, to, group, _loads(body_json), created)

    def outbox_remove(self, entry_id):
        self._require_bound()
        self._tx([("DELETE FROM outbox WHERE id = ? AND user = ? AND device = ?", (entry_id, self.user, self.device))])

    def get_meta(self, key, default=None):
        self._require_bound()
        rows = self._query("SELECT value FROM meta WHERE user = ? AND device = ? AND key = ?",
                           (self.user, self.device, key))
        return _loads(rows[0][0]) if rows else default

    def set_meta(self, key, value):
        self._require_bound()
        self._tx([("INSERT OR REPLACE INTO meta (user, device, key, value) VALUES (?, ?, ?, ?)",
                   (self.user, self.device, key, _dumps(value)))])

    def close(self):
        with self._lock:
            try:
                self.db.close()
            except sqlite3.Error:
                pass


def open_store(spec=None, **kwargs):
    """None or ":memory:" -> MemoryStore; a path -> SQLiteStore; a store -> itself."""
    if spec is None or spec == ":memory:":
        return MemoryStore()
    if isinstance(spec, BaseStore):
        return spec
    if isinstance(spec, (str, bytes, os.PathLike)):
        return SQLiteStore(spec, **kwargs)
    raise TypeError(f"store must be None, ':memory:', a path or a store object, not {spec!r}")
