"""The SQL layer shared by every durable-store engine (SQLite, MySQL/MariaDB).

:class:`SqlStore` implements the whole :class:`~imsrv.backends.base.Store` interface with
portable SQL.  Every statement is parameterised: values are never formatted into SQL text,
only identifiers and placeholders that this module writes itself.  The few differences
between databases live in a :class:`Dialect`:

- the placeholder style (``?`` for sqlite3, ``%s`` for PyMySQL),
- how a write transaction starts (``BEGIN IMMEDIATE`` takes SQLite's write lock at once, so
  two processes cannot both read a counter and then collide; MySQL uses
  ``START TRANSACTION`` plus ``SELECT ... FOR UPDATE`` on the rows it is about to bump),
- insert-or-ignore and upsert,
- column types (MySQL needs ``VARCHAR(n)`` for indexed text, ``utf8mb4`` and a binary
  collation so that comparisons and ordering are the same as SQLite's),
- how a unique-key violation is recognised in a driver exception.

An engine subclass (see :mod:`imsrv.backends.sqlite`) opens the connection, sets
``self._conn``, ``self.driver_error`` (the DB-API ``Error`` base class of its driver) and
may override :meth:`SqlStore._insert_messages` with something faster.  The MySQL engine
(:mod:`imsrv.backends.mysql`) has a pool instead of ``self._conn``: it overrides
``transaction``, ``autocommit`` and ``close``, and reuses ``_write_batch`` in its own
store_messages.  Reads and
single-statement writes run in autocommit mode (each statement is its own transaction);
methods that write more than one statement run in one explicit transaction.  The
account-safety methods (set_password, delete_user) are in :mod:`imsrv.backends.sql_accounts`.
"""
from contextlib import contextmanager

from . import schema
from .base import DuplicateKey, Store, StoreError, check_deadline
from .sql_accounts import AccountSafetySql

# Largest number of values bound in one "IN (...)" list or multi-row statement.  SQLite
# allows 32766 variables per statement (999 before 3.32), MySQL has no small limit; 500
# keeps statements short and the statement cache useful.
IN_CHUNK = 500
PAIR_CHUNK = 200  # (a, b) pairs per OR-of-equalities statement


def _chunks(seq, size):
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


# ----------------------------------------------------------------------------- dialects
def _sqlite_is_duplicate(exc):
    name = getattr(exc, "sqlite_errorname", None)  # Python >= 3.11
    if name:
        return name in ("SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE")
    return str(exc).startswith("UNIQUE constraint failed")


def _mysql_is_duplicate(exc):
    # ER_DUP_ENTRY; PyMySQL puts the server error number in args[0].
    return bool(exc.args) and exc.args[0] == 1062


class Dialect:
    """What differs between the SQL databases imsrv runs on.

    ``types`` maps the abstract column types used by :mod:`imsrv.backends.schema` to SQL:
    USER (a user name), GROUP (a group id), CONV (a conversation key), HASH (a hex sha256),
    CMID (a client message id), SHORT (a short non-indexed string such as a device name),
    TEXT (up to a few KiB: display names, profile texts, request messages), BODY (a message
    body, up to 16 KiB of JSON), INT (a 64-bit integer), SERIAL (an auto-increment 64-bit
    primary key, the whole column definition).
    """

    def __init__(self, name, *, placeholder, begin, for_update, lock_shared, types, table_options,
                 without_rowid, inline_indexes, insert_ignore, upsert_style, is_duplicate,
                 table_exists_sql, column_exists_sql, index_exists_sql):
        self.name = name
        self.placeholder = placeholder
        self.begin = begin
        self.for_update = for_update
        self.lock_shared = lock_shared   # suffix of a read that waits for writers of its rows
        self.types = types
        self.table_options = table_options
        self.without_rowid = without_rowid
        self.inline_indexes = inline_indexes
        self.insert_ignore_prefix = insert_ignore
        self.upsert_style = upsert_style
        self.is_duplicate = is_duplicate
        self.table_exists_sql = table_exists_sql
        self.column_exists_sql = column_exists_sql   # params (table, column)
        self.index_exists_sql = index_exists_sql     # params (table, index)
        self._rendered = {}

    def __repr__(self):
        return f"<Dialect {self.name}>"

    def render(self, sql):
        """Turn SQL written with ``?`` placeholders into this dialect's placeholder style.

        The SQL text is always this package's own (no literals containing ``?`` or ``%``),
        so a plain replacement is exact.  Cached: the same text gives the same string, which
        keeps the drivers' statement caches warm."""
        out = self._rendered.get(sql)
        if out is None:
            out = sql if self.placeholder == "?" else sql.replace("?", self.placeholder)
            if len(self._rendered) < 2048:  # IN lists of many sizes must not grow this forever
                self._rendered[sql] = out
        return out

    def insert_ignore(self, table, columns):
        """INSERT of one row that silently does nothing if it hits the primary key."""
        cols = ", ".join(columns)
        marks = ", ".join("?" * len(columns))
        if self.insert_ignore_prefix:
            return f"{self.insert_ignore_prefix} {table} ({cols}) VALUES ({marks})"
        return f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING"

    def upsert(self, table, columns, key, update):
        """INSERT of one row that, if the primary key ``key`` exists, updates ``update``."""
        cols = ", ".join(columns)
        marks = ", ".join("?" * len(columns))
        head = f"INSERT INTO {table} ({cols}) VALUES ({marks})"
        if self.upsert_style == "on_conflict":
            sets = ", ".join(f"{c} = excluded.{c}" for c in update)
            return f"{head} ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}"
        # MySQL / MariaDB.  VALUES(col) is deprecated in MySQL 8.0.20+ in favour of a row
        # alias, but it is the form both MySQL 5.7/8.x and MariaDB accept.
        sets = ", ".join(f"{c} = VALUES({c})" for c in update)
        return f"{head} ON DUPLICATE KEY UPDATE {sets}"


SQLITE = Dialect(
    "sqlite",
    placeholder="?",
    begin="BEGIN IMMEDIATE",
    for_update="",
    lock_shared="",          # one writer at a time: a committed read is already settled
    types={
        "USER": "TEXT", "GROUP": "TEXT", "CONV": "TEXT", "HASH": "TEXT", "CMID": "TEXT",
        "SHORT": "TEXT", "TEXT": "TEXT", "BODY": "TEXT", "INT": "INTEGER",
        # AUTOINCREMENT: a mid is never reused, even after the newest messages are deleted.
        "SERIAL": "INTEGER PRIMARY KEY AUTOINCREMENT",
    },
    table_options="",
    without_rowid=True,      # tables keyed by text are clustered on their key, as in InnoDB
    inline_indexes=False,    # CREATE INDEX IF NOT EXISTS after the table
    insert_ignore=None,      # ON CONFLICT DO NOTHING (SQLite >= 3.24)
    upsert_style="on_conflict",
    is_duplicate=_sqlite_is_duplicate,
    table_exists_sql="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
    column_exists_sql="SELECT 1 FROM pragma_table_info(?) WHERE name = ?",
    index_exists_sql="SELECT 1 FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND name = ?",
)

# MySQL / MariaDB (PyMySQL), used by imsrv.backends.mysql.  Each MysqlStore works on a copy
# whose table_options name the best exact collation the server has (see that module).
MYSQL = Dialect(
    "mysql",
    placeholder="%s",
    begin="START TRANSACTION",
    for_update=" FOR UPDATE",
    lock_shared=" LOCK IN SHARE MODE",   # MySQL 5.7+/8 and MariaDB all accept this spelling
    types={
        # user names are <= 32 characters, group ids are server-assigned and short; a
        # conversation key is "u:<a>:<b>" or "g:<group>".  utf8mb4 index keys: 4 bytes/char.
        "USER": "VARCHAR(64)", "GROUP": "VARCHAR(64)", "CONV": "VARCHAR(160)",
        "HASH": "CHAR(64)", "CMID": "VARCHAR(128)", "SHORT": "VARCHAR(255)",
        "TEXT": "TEXT", "BODY": "MEDIUMTEXT", "INT": "BIGINT",
        "SERIAL": "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
    },
    # utf8mb4_bin: exact, case-sensitive comparison and byte ordering, like SQLite's BINARY.
    table_options=" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    without_rowid=False,
    inline_indexes=True,     # MySQL has no CREATE INDEX IF NOT EXISTS
    # INSERT IGNORE also downgrades other errors to warnings; the store always binds every
    # NOT NULL column, so the only error it can hide here is the duplicate key.
    insert_ignore="INSERT IGNORE INTO",
    upsert_style="on_duplicate_key",
    is_duplicate=_mysql_is_duplicate,
    table_exists_sql=("SELECT 1 FROM information_schema.tables"
                      " WHERE table_schema = DATABASE() AND table_name = ?"),
    column_exists_sql=("SELECT 1 FROM information_schema.columns"
                       " WHERE table_schema = DATABASE() AND table_name = ? AND column_name = ?"),
    index_exists_sql=("SELECT 1 FROM information_schema.statistics"
                      " WHERE table_schema = DATABASE() AND table_name = ? AND index_name = ?"
                      " LIMIT 1"),
)


# ----------------------------------------------------------------------------- the store
_MSG_COLS = "i.seq, m.mid, m.sender, m.to_user, m.grp, m.body, m.ts, m.cmid"


def _record(row):
    seq, mid, sender, to, grp, body, ts, cmid = row
    return {"seq": seq, "mid": mid, "from": sender, "to": to, "group": grp,
            "body": body, "ts": ts, "cmid": cmid}


class SqlStore(AccountSafetySql, Store):
    """:class:`Store` over a DB-API connection.  Engines subclass it (see module doc)."""

    dialect = None
    driver_error = Exception  # the driver's DB-API Error base class (set by the engine)

    def __init__(self, url, dialect):
        self.url = url
        self.dialect = dialect
        self._conn = None
        d = dialect
        # statements built once per store (their text only depends on the dialect)
        self._sql_request_put = d.render(d.upsert(
            "friend_requests", ("frm", "to_user", "message", "ts"), ("frm", "to_user"),
            ("message", "ts")))
        self._sql_friend_add = d.render(d.insert_ignore("friends", ("user", "friend", "ts")))
        self._sql_block_add = d.render(d.insert_ignore("blocks", ("user", "blocked", "ts")))
        self._sql_member_add = d.render(
            d.insert_ignore("group_members", ("grp", "user", "joined")))
        self._sql_seq_put = d.render(d.upsert(
            "user_seq", ("user", "last_seq"), ("user",), ("last_seq",)))
        self._sql_msg_insert = d.render(
            "INSERT INTO messages (sender, to_user, grp, conv, body, ts, cmid)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)")
        self._sql_inbox_insert = d.render(
            "INSERT INTO inbox (user, seq, mid, conv) VALUES (?, ?, ?, ?)")
        self._sql_dedup_insert = d.render(
            "INSERT INTO dedup (sender, cmid, mid, seq, ts) VALUES (?, ?, ?, ?, ?)")

    def __repr__(self):
        return f"<{type(self).__name__} {self.url}>"

    # ------------------------------------------------------------------ plumbing
    def _error(self, exc, what):
        """Translate a driver exception into DuplicateKey / StoreError."""
        if self.dialect.is_duplicate(exc):
            return DuplicateKey(f"{what}: already exists ({exc})")
        return StoreError(f"{what}: {self.url}: {type(exc).__name__}: {exc}")

    def _rollback_quietly(self):
        try:
            self._conn.rollback()
        except Exception:  # the connection may be gone; the original error matters more
            pass

    @contextmanager
    def transaction(self, what):
        """``with store.transaction("what") as cur:`` one write transaction.

        Commits on success; rolls back on any exception, turning driver errors into
        StoreError/DuplicateKey whose message starts with ``what``."""
        conn = self._conn
        if conn is None:
            raise StoreError(f"{what}: {self.url}: the store is closed")
        cur = conn.cursor()
        try:
            cur.execute(self.dialect.begin)
            yield cur
            conn.commit()
        except self.driver_error as exc:
            self._rollback_quietly()
            raise self._error(exc, what) from exc
        except BaseException:
            self._rollback_quietly()
            raise
        finally:
            cur.close()

    @contextmanager
    def autocommit(self, what):
        """``with store.autocommit("what") as cur:`` statements outside an explicit
        transaction (each one atomic on its own), with the same error translation."""
        conn = self._conn
        if conn is None:
            raise StoreError(f"{what}: {self.url}: the store is closed")
        cur = conn.cursor()
        try:
            yield cur
        except self.driver_error as exc:
            raise self._error(exc, what) from exc
        finally:
            cur.close()

    def _run(self, what, sql, params=(), fetch=None):
        """One statement in autocommit mode.  fetch: None -> rowcount, "one", "all"."""
        with self.autocommit(what) as cur:
            cur.execute(self.dialect.render(sql), params)
            if fetch == "all":
                return cur.fetchall()
            if fetch == "one":
                return cur.fetchone()
            return cur.rowcount

    def _in(self, n):
        return ", ".join("?" * n)

    # ------------------------------------------------------------------ lifecycle
    def migrate(self):
        schema.migrate(self)

    def schema_version(self):
        return schema.current_version(self)

    def close(self):
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except self.driver_error as exc:
                raise self._error(exc, "close") from exc

    # ------------------------------------------------------------------ users
    def create_user(self, user, pw_hash, name, ts):
        self._run(f"create_user {user!r}",
                  "INSERT INTO users (user, pw_hash, name, text, created)"
                  " VALUES (?, ?, ?, ?, ?)", (user, pw_hash, name, "", ts))

    def get_user(self, user):
        row = self._run(f"get_user {user!r}",
                        "SELECT user, pw_hash, name, text, created, deleted FROM users WHERE user = ?",
                        (user,), "one")
        if row is None:
            return None
        return {"user": row[0], "pw_hash": row[1], "name": row[2], "text": row[3],
                "created": row[4], "deleted": row[5]}

    def existing_users(self, users):
        users = list(dict.fromkeys(users))
        found = set()
        for part in _chunks(users, IN_CHUNK):
            rows = self._run("existing_users",
                             f"SELECT user FROM users WHERE user IN ({self._in(len(part))})"
                             " AND deleted = 0", part, "all")
            found.update(r[0] for r in rows)
        return found

    def set_profile(self, user, name=None, text=None):
        sets, params = [], []
        if name is not None:
            sets.append("name = ?")
            params.append(name)
        if text is not None:
            sets.append("text = ?")
            params.append(text)
        if not sets:
            return
        params.append(user)
        self._run(f"set_profile {user!r}",
                  f"UPDATE users SET {', '.join(sets)} WHERE user = ?", params)

    # ------------------------------------------------------------------ tokens
    def add_token(self, token_hash, user, device, expires, pw_hash=None):
        if pw_hash is None:
            return self._run(f"add_token for {user!r}",
                             "INSERT INTO tokens (token_hash, user, device, expires)"
                             " VALUES (?, ?, ?, ?)", (token_hash, user, device, expires)) > 0
        # one statement: the check and the insert are atomic (MySQL: the users row is read
        # with a share lock, so a set_password / delete_user in flight is waited for)
        return self._run(f"add_token for {user!r}",
                         "INSERT INTO tokens (token_hash, user, device, expires)"
                         " SELECT ?, ?, ?, ? FROM users WHERE user = ? AND pw_hash = ?"
                         " AND deleted = 0" + self.dialect.lock_shared,
                         (token_hash, user, device, expires, user, pw_hash)) > 0

    def get_token(self, token_hash):
        row = self._run("get_token",
                        "SELECT user, device, expires FROM tokens WHERE token_hash = ?",
                        (token_hash,), "one")
        if row is None:
            return None
        return {"user": row[0], "device": row[1], "expires": row[2]}

    def delete_token(self, token_hash):
        return self._run("delete_token", "DELETE FROM tokens WHERE token_hash = ?",
                         (token_hash,)) > 0

    def purge_tokens(self, now):
        return self._run("purge_tokens", "DELETE FROM tokens WHERE expires <= ?", (now,))

    # ------------------------------------------------------------------ friend requests
    def put_request(self, frm, to, message, ts):
        self._run(f"put_request {frm!r} -> {to!r}", self._sql_request_put,
                  (frm, to, message, ts))

    def get_request(self, frm, to):
        row = self._run(f"get_request {frm!r} -> {to!r}",
                        "SELECT message, ts FROM friend_requests"
                        " WHERE frm = ? AND to_user = ?", (frm, to), "one")
        if row is None:
            return None
        return {"from": frm, "to": to, "message": row[0], "ts": row[1]}

    def delete_request(self, frm, to):
        return self._run(f"delete_request {frm!r} -> {to!r}",
                         "DELETE FROM friend_requests WHERE frm = ? AND to_user = ?",
                         (frm, to)) > 0

    def list_requests(self, to):
        rows = self._run(f"list_requests to {to!r}",
                         "SELECT frm, message, ts FROM friend_requests WHERE to_user = ?"
                         " ORDER BY ts, frm", (to,), "all")
        return [{"from": r[0], "message": r[1], "ts": r[2]} for r in rows]

    def _delete_requests_both_ways(self, cur, a, b):
        sql = self.dialect.render("DELETE FROM friend_requests WHERE frm = ? AND to_user = ?")
        cur.execute(sql, (a, b))
        cur.execute(sql, (b, a))

    # ------------------------------------------------------------------ friends
    def make_friends(self, a, b, ts):
        with self.transaction(f"make_friends {a!r} {b!r}") as cur:
            self._delete_requests_both_ways(cur, a, b)
            cur.execute(self._sql_friend_add, (a, b, ts))
            cur.execute(self._sql_friend_add, (b, a, ts))

    def remove_friends(self, a, b):
        sql = self.dialect.render("DELETE FROM friends WHERE user = ? AND friend = ?")
        with self.transaction(f"remove_friends {a!r} {b!r}") as cur:
            cur.execute(sql, (a, b))
            n = cur.rowcount
            cur.execute(sql, (b, a))
            n += cur.rowcount
        return n > 0

    def are_friends(self, a, b):
        return self._run(f"are_friends {a!r} {b!r}",
                         "SELECT 1 FROM friends WHERE user = ? AND friend = ?",
                         (a, b), "one") is not None

    def list_friends(self, user):
        # LEFT JOIN: a friend whose account row is missing is still listed (name None).
        rows = self._run(f"list_friends {user!r}",
                         "SELECT f.friend, u.name FROM friends f"
                         " LEFT JOIN users u ON u.user = f.friend"
                         " WHERE f.user = ? ORDER BY f.friend", (user,), "all")
        return [{"user": r[0], "name": r[1]} for r in rows]

    # ------------------------------------------------------------------ blocks
    def add_block(self, a, b, ts):
        with self.transaction(f"add_block {a!r} {b!r}") as cur:
            cur.execute(self._sql_block_add, (a, b, ts))
            self._delete_requests_both_ways(cur, a, b)

    def remove_block(self, a, b):
        return self._run(f"remove_block {a!r} {b!r}",
                         "DELETE FROM blocks WHERE user = ? AND blocked = ?", (a, b)) > 0

    def blocked_either(self, a, b):
        # Two primary-key probes (a UNION ALL keeps both on the index in every engine).
        rows = self._run(f"blocked_either {a!r} {b!r}",
                         "SELECT 1 FROM blocks WHERE user = ? AND blocked = ?"
                         " UNION ALL SELECT 1 FROM blocks WHERE user = ? AND blocked = ?",
                         (a, b, b, a), "all")
        return bool(rows)

    def list_blocked(self, user):
        rows = self._run(f"list_blocked {user!r}",
                         "SELECT blocked FROM blocks WHERE user = ? ORDER BY blocked",
                         (user,), "all")
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ groups
    def create_group(self, group, name, owner, members, ts):
        with self.transaction(f"create_group {group!r}") as cur:
            cur.execute(self.dialect.render(
                "INSERT INTO groups_ (grp, name, owner, created) VALUES (?, ?, ?, ?)"),
                (group, name, owner, ts))
            cur.executemany(self._sql_member_add,
                            [(group, u, ts) for u in dict.fromkeys(members)])

    def get_group(self, group):
        row = self._run(f"get_group {group!r}",
                        "SELECT name, owner, created FROM groups_ WHERE grp = ?",
                        (group,), "one")
        if row is None:
            return None
        return {"group": group, "name": row[0], "owner": row[1], "created": row[2]}

    def add_members(self, group, users, ts):
        added = []
        with self.transaction(f"add_members {group!r}") as cur:
            for u in dict.fromkeys(users):
                cur.execute(self._sql_member_add, (group, u, ts))
                if cur.rowcount > 0:
                    added.append(u)
        return added

    def remove_member(self, group, user):
        return self._run(f"remove_member {group!r} {user!r}",
                         "DELETE FROM group_members WHERE grp = ? AND user = ?",
                         (group, user)) > 0

    def is_member(self, group, user):
        return self._run(f"is_member {group!r} {user!r}",
                         "SELECT 1 FROM group_members WHERE grp = ? AND user = ?",
                         (group, user), "one") is not None

    def list_members(self, group):
        rows = self._run(f"list_members {group!r}",
                         "SELECT user FROM group_members WHERE grp = ? ORDER BY user",
                         (group,), "all")
        return [r[0] for r in rows]

    def list_groups(self, user):
        rows = self._run(f"list_groups {user!r}",
                         "SELECT g.grp, g.name FROM group_members m"
                         " JOIN groups_ g ON g.grp = m.grp"
                         " WHERE m.user = ? ORDER BY m.grp", (user,), "all")
        return [{"group": r[0], "name": r[1]} for r in rows]

    # ------------------------------------------------------------------ messages and inboxes
    def _insert_messages(self, cur, rows):
        """Insert message rows (sender, to_user, grp, conv, body, ts, cmid) in order and
        return their mids in the same order.  Portable version: one INSERT per message and
        the driver's lastrowid (sqlite3 and PyMySQL both provide it)."""
        mids = []
        sql = self._sql_msg_insert
        for row in rows:
            cur.execute(sql, row)
            mids.append(cur.lastrowid)
        return mids

    def store_messages(self, batch, deadline=None):
        if not batch:
            return []
        users = list(dict.fromkeys(u for item in batch for u in item["recipients"]))
        what = self._batch_what(batch)
        with self.transaction(what) as cur:
            # 1. the durable counters of every recipient, locked for the transaction
            #    (BEGIN IMMEDIATE in SQLite; the MySQL engine overrides store_messages to
            #    create missing counter rows first and lock them FOR UPDATE).  No row = 0.
            last = self._read_counters(cur, users)
            # 2 and 3.
            return self._write_batch(cur, batch, users, last, deadline, what)

    @staticmethod
    def _batch_what(batch):
        n_recipients = sum(len(item["recipients"]) for item in batch)
        return f"store_messages ({len(batch)} messages, {n_recipients} inbox entries)"

    def _read_counters(self, cur, users):
        """-> {user: highest seq} for every user (0 if no counter row), read with the
        dialect's locking suffix (FOR UPDATE in MySQL), in the order of ``users``."""
        last = dict.fromkeys(users, 0)
        for part in _chunks(users, IN_CHUNK):
            cur.execute(self.dialect.render(
                f"SELECT user, last_seq FROM user_seq WHERE user IN ({self._in(len(part))})"
                + self.dialect.for_update), part)
            for user, seq in cur.fetchall():
                last[user] = seq
        return last

    def _write_batch(self, cur, batch, users, last, deadline=None, what="store_messages"):
        """Steps 2 and 3 of store_messages inside its transaction: insert the messages,
        hand out the seqs (``last`` is updated in place), write inbox, counter and dedup
        rows, then check ``deadline`` (the caller's COMMIT follows).  -> the
        store_messages result."""
        # 2. the messages, in batch order
        mids = self._insert_messages(cur, [
            (item["sender"], item.get("to"), item.get("group"), item["conv"],
             item["body"], item["ts"], item.get("cmid")) for item in batch])
        # 3. seqs, inbox rows, dedup rows
        inbox, dedup, results = [], [], []
        for item, mid in zip(batch, mids):
            seqs = {}
            conv = item["conv"]
            for user in item["recipients"]:
                seq = last[user] + 1
                last[user] = seq
                seqs[user] = seq
                inbox.append((user, seq, mid, conv))
            cmid = item.get("cmid")
            if cmid is not None:
                sender = item["sender"]
                dedup.append((sender, cmid, mid, seqs.get(sender, 0), item["ts"]))
            results.append({"mid": mid, "ts": item["ts"], "seqs": seqs})
        if inbox:
            cur.executemany(self._sql_inbox_insert, inbox)
            cur.executemany(self._sql_seq_put, [(u, last[u]) for u in users])
        if dedup:
            # a plain INSERT: a (sender, cmid) already stored fails the whole batch
            cur.executemany(self._sql_dedup_insert, dedup)
        check_deadline(deadline, what)
        return results

    def get_dedup(self, sender, cmid, settled=False):
        row = self._run(f"get_dedup {sender!r}",
                        "SELECT mid, seq, ts FROM dedup WHERE sender = ? AND cmid = ?"
                        + (self.dialect.lock_shared if settled else ""),
                        (sender, cmid), "one")
        if row is None:
            return None
        return {"mid": row[0], "seq": row[1], "ts": row[2]}

    def get_dedups(self, keys):
        keys = list(dict.fromkeys(keys))
        found = {}
        for part in _chunks(keys, PAIR_CHUNK):
            # an OR of primary-key equalities: each engine answers it with index probes
            where = " OR ".join(["(sender = ? AND cmid = ?)"] * len(part))
            params = [v for pair in part for v in pair]
            for sender, cmid, mid, seq, ts in self._run(
                    "get_dedups", f"SELECT sender, cmid, mid, seq, ts FROM dedup WHERE {where}", params, "all"):
                found[(sender, cmid)] = {"mid": mid, "seq": seq, "ts": ts}
        return found

    def relations(self, pairs):
        pairs = list(dict.fromkeys(pairs))
        friends, blocked = set(), set()
        for part in _chunks(pairs, PAIR_CHUNK):
            params = [v for pair in part for v in pair]
            where = " OR ".join(["(user = ? AND friend = ?)"] * len(part))
            friends.update(tuple(r) for r in self._run(
                "relations", f"SELECT user, friend FROM friends WHERE {where}", params, "all"))
            both = part + [(b, a) for a, b in part]
            where = " OR ".join(["(user = ? AND blocked = ?)"] * len(both))
            blocked.update(tuple(r) for r in self._run(
                "relations", f"SELECT user, blocked FROM blocks WHERE {where}",
                [v for pair in both for v in pair], "all"))
        return {(a, b): ((a, b) in friends, (a, b) in blocked or (b, a) in blocked) for a, b in pairs}

    def purge_dedup(self, before_ts):
        return self._run("purge_dedup", "DELETE FROM dedup WHERE ts < ?", (before_ts,))

    def head(self, user):
        row = self._run(f"head {user!r}", "SELECT last_seq FROM user_seq WHERE user = ?",
                        (user,), "one")
        return row[0] if row else 0

    def inbox_since(self, user, since, limit):
        rows = self._run(f"inbox_since {user!r}",
                         f"SELECT {_MSG_COLS} FROM inbox i JOIN messages m ON m.mid = i.mid"
                         " WHERE i.user = ? AND i.seq > ? ORDER BY i.seq LIMIT ?",
                         (user, since, limit), "all")
        return [_record(r) for r in rows]

    def history(self, user, conv, before_mid, limit):
        if before_mid is None:
            sql = (f"SELECT {_MSG_COLS} FROM inbox i JOIN messages m ON m.mid = i.mid"
                   " WHERE i.user = ? AND i.conv = ? ORDER BY i.mid DESC LIMIT ?")
            params = (user, conv, limit)
        else:
            sql = (f"SELECT {_MSG_COLS} FROM inbox i JOIN messages m ON m.mid = i.mid"
                   " WHERE i.user = ? AND i.conv = ? AND i.mid < ?"
                   " ORDER BY i.mid DESC LIMIT ?")
            params = (user, conv, before_mid, limit)
        return [_record(r) for r in self._run(f"history {user!r} {conv!r}", sql, params,
                                              "all")]
