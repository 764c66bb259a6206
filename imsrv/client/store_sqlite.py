"""The SQLite engine of the client store (:class:`SQLiteStore`; the API and the other
engine are in :mod:`imsrv.client.store`).

Tables: ``account`` (the cursor of each (user, device)), ``message`` (every inbox entry
delivered: its seq, mid, conversation, whether it is a change entry, and the message as
JSON in its current state), ``outbox`` (unacked requests in order) and ``meta``.

A file made by an earlier version of the SDK lacks the message columns ``mid`` and
``change`` and the outbox columns ``op`` and ``extra``: opening it adds them (their values
for the rows already there come from the stored JSON: every old outbox entry is a send).
"""
import os
import sqlite3
import threading
import time

from .entries import apply_change, is_change
from .store import BaseStore, OutboxEntry, StoreError, _dumps, _loads, conversation_of

_SCHEMA = """
CREATE TABLE IF NOT EXISTS account (
    user TEXT NOT NULL, device TEXT NOT NULL, cursor INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, device));
CREATE TABLE IF NOT EXISTS message (
    user TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,
    kind TEXT NOT NULL, conv TEXT NOT NULL, data TEXT NOT NULL,
    mid INTEGER, change INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, device, seq));
CREATE INDEX IF NOT EXISTS message_conv ON message (user, device, kind, conv, seq);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, user TEXT NOT NULL, device TEXT NOT NULL,
    cmid TEXT NOT NULL, to_user TEXT, grp TEXT, body TEXT NOT NULL, created INTEGER NOT NULL,
    op TEXT NOT NULL DEFAULT 'send', extra TEXT);
CREATE INDEX IF NOT EXISTS outbox_account ON outbox (user, device, id);
CREATE TABLE IF NOT EXISTS meta (
    user TEXT NOT NULL, device TEXT NOT NULL, key TEXT NOT NULL, value TEXT,
    PRIMARY KEY (user, device, key));
"""

#: columns added since the first version of the file: table -> [(column, definition, backfill SQL)]
_ADDED = {
    "message": [
        ("mid", "INTEGER", "UPDATE message SET mid = json_extract(data, '$.mid')"),
        ("change", "INTEGER NOT NULL DEFAULT 0",
         "UPDATE message SET change = 1 WHERE json_extract(data, '$.kind') IN ('recall', 'edit', 'reaction')"),
    ],
    "outbox": [("op", "TEXT NOT NULL DEFAULT 'send'", None), ("extra", "TEXT", None)],
}
_INDEXES = "CREATE INDEX IF NOT EXISTS message_mid ON message (user, device, mid);"


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
            self._add_columns()
            self.db.executescript(_INDEXES)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the client store {self.path}: {exc}") from None
        self._lock = threading.Lock()

    def _add_columns(self):
        """Bring a file of an earlier SDK version up to the current tables (see module doc)."""
        for table, columns in _ADDED.items():
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            for name, definition, backfill in columns:
                if name in have:
                    continue
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
                    if backfill:
                        self.db.execute(backfill)
                    self.db.execute("COMMIT")
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise

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
        change = is_change(msg)
        me = (self.user, self.device)
        with self._lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT OR REPLACE INTO message (user, device, seq, kind, conv, data, mid, change)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           me + (msg["seq"], kind, str(conv), _dumps(msg), msg.get("mid"), int(change)))
                db.execute("UPDATE account SET cursor = MAX(cursor, ?) WHERE user = ? AND device = ?",
                           (msg["seq"],) + me)
                if change and msg.get("ref") is not None:
                    rows = db.execute("SELECT seq, data FROM message WHERE user = ? AND device = ? AND mid = ?"
                                      " AND change = 0", me + (msg["ref"],)).fetchall()
                    for seq, data in rows:
                        db.execute("UPDATE message SET data = ? WHERE user = ? AND device = ? AND seq = ?",
                                   (_dumps(apply_change(_loads(data), msg)),) + me + (seq,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def messages(self, user=None, group=None, before_seq=None, limit=50):
        self._require_bound()
        sql = "SELECT data FROM message WHERE user = ? AND device = ? AND change = 0"
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

    def message(self, mid):
        self._require_bound()
        rows = self._query("SELECT data FROM message WHERE user = ? AND device = ? AND mid = ? AND change = 0"
                           " ORDER BY seq LIMIT 1", (self.user, self.device, mid))
        return _loads(rows[0][0]) if rows else None

    def outbox(self):
        self._require_bound()
        rows = self._query(
            "SELECT id, cmid, to_user, grp, body, created, op, extra FROM outbox WHERE user = ? AND device = ?"
            " ORDER BY id", (self.user, self.device))
        return [OutboxEntry(r[0], _loads(r[1]), r[2], r[3], _loads(r[4]), r[5], r[6] or "send",
                            _loads(r[7]) if r[7] else None) for r in rows]

    def outbox_add(self, cmid, to, group, body, op="send", extra=None):
        self._require_bound()
        body_json = _dumps(body)
        extra_json = _dumps(extra) if extra else None
        created = int(time.time() * 1000)
        cur = self._tx([(
            "INSERT INTO outbox (user, device, cmid, to_user, grp, body, created, op, extra)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.user, self.device, _dumps(cmid), to, group, body_json, created, op, extra_json))])
        return OutboxEntry(cur.lastrowid, cmid, to, group, _loads(body_json), created, op,
                           _loads(extra_json) if extra_json else None)

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
