"""The SQL layer shared by every durable-store engine (SQLite, MySQL/MariaDB).

:class:`SqlStore` implements the whole :class:`~imsrv.backends.base.Store` interface with
portable SQL.  Every statement is parameterised: values are never formatted into SQL text,
only identifiers and placeholders that this package writes itself.  The few differences
between databases live in a :class:`~imsrv.backends.sql_dialect.Dialect`
(:mod:`imsrv.backends.sql_dialect`).  By job:

- this module: the transaction machinery (``transaction``, ``autocommit``, ``_run``, the
  translation of driver errors), the lifecycle, users and tokens;
- :mod:`imsrv.backends.sql_contacts`: friend requests, friends, blocks;
- :mod:`imsrv.backends.sql_groups`: groups, members and their roles;
- :mod:`imsrv.backends.sql_messages`: messages, inboxes, seq counters, dedup records;
- :mod:`imsrv.backends.sql_conversations`: the conversations rows (unread counts, read
  positions, muting), kept by the send batch;
- :mod:`imsrv.backends.sql_accounts`: the account-safety writes (set_password,
  delete_user);
- :mod:`imsrv.backends.sql_search`: the search index; :mod:`imsrv.backends.sql_retention`:
  the retention purge.

An engine subclass (see :mod:`imsrv.backends.sqlite`) opens the connection, sets
``self._conn``, ``self.driver_error`` (the DB-API ``Error`` base class of its driver) and
may override :meth:`SqlStore._insert_messages` with something faster; every statement
takes its connection from :meth:`SqlStore._connection`.  The MySQL engine
(:mod:`imsrv.backends.mysql`) has a pool instead of ``self._conn``: it overrides
``transaction``, ``autocommit`` and ``close``, and reuses ``_write_batch`` in its own
store_messages.  Reads and single-statement writes run in autocommit mode (each statement
is its own transaction); methods that write more than one statement run in one explicit
transaction.
"""
from contextlib import contextmanager

from . import schema
from .base import DuplicateKey, Store, StoreError
from .sql_accounts import AccountSafetySql
from .sql_contacts import ContactsSql
from .sql_conversations import ConversationsSql
from .sql_dialect import IN_CHUNK, chunks
from .sql_groups import GroupsSql
from .sql_messages import MessagesSql
from .sql_retention import RetentionSql
from .sql_search import SearchSql



class SqlStore(ContactsSql, GroupsSql, MessagesSql, ConversationsSql, AccountSafetySql, SearchSql, RetentionSql,
               Store):
    """:class:`Store` over a DB-API connection.  Engines subclass it (see module doc)."""

    dialect = None
    driver_error = Exception  # the driver's DB-API Error base class (set by the engine)

    def __init__(self, url, dialect):
        self.url = url
        self.dialect = dialect
        self._conn = None
        # statements built once per store (their text only depends on the dialect)
        self._prepare_contacts_sql(dialect)
        self._prepare_messages_sql(dialect)

    def __repr__(self):
        return f"<{type(self).__name__} {self.url}>"

    # ------------------------------------------------------------------ plumbing
    def _error(self, exc, what):
        """Translate a driver exception into DuplicateKey / StoreError."""
        if self.dialect.is_duplicate(exc):
            return DuplicateKey(f"{what}: already exists ({exc})")
        return StoreError(f"{what}: {self.url}: {type(exc).__name__}: {exc}")

    def _connection(self):
        """The DB-API connection this thread's statements use (None once closed)."""
        return self._conn

    def _rollback_quietly(self, conn):
        try:
            conn.rollback()
        except Exception:  # the connection may be gone; the original error matters more
            pass

    @contextmanager
    def transaction(self, what):
        """``with store.transaction("what") as cur:`` one write transaction.

        Commits on success; rolls back on any exception, turning driver errors into
        StoreError/DuplicateKey whose message starts with ``what``.  Its two calls that
        can wait, the BEGIN (for another connection's lock) and the COMMIT (for the disk),
        are :meth:`_begin` and :meth:`_commit`."""
        with self._write_connection(what) as conn:
            cur = conn.cursor()
            try:
                self._begin(cur)
                yield cur
                self._commit(conn)
            except self.driver_error as exc:
                self._rollback_quietly(conn)
                raise self._error(exc, what) from exc
            except BaseException:
                self._rollback_quietly(conn)
                raise
            finally:
                cur.close()

    @contextmanager
    def _write_connection(self, what):
        """The connection one write transaction runs on, for the transaction's duration
        (the SQLite engine's writer connection, one transaction at a time)."""
        conn = self._connection()
        if conn is None:
            raise StoreError(f"{what}: {self.url}: the store is closed")
        yield conn

    def _begin(self, cur):
        """Start the write transaction (may wait for another connection's lock)."""
        cur.execute(self.dialect.begin)

    def _commit(self, conn):
        """Commit it (waits for the disk).  The SQLite engine does it on a thread of its
        own, and its BEGIN there too when it has to wait."""
        conn.commit()

    @contextmanager
    def autocommit(self, what):
        """``with store.autocommit("what") as cur:`` statements outside an explicit
        transaction (each one atomic on its own), with the same error translation."""
        conn = self._connection()
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
            return self._execute(cur, sql, params, fetch)

    def _execute(self, cur, sql, params, fetch):
        """Run one statement on ``cur`` -> its rowcount (fetch None), or its rows ("all"),
        or its first row ("one")."""
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
                        "SELECT user, pw_hash, name, text, created, deleted, avatar FROM users WHERE user = ?",
                        (user,), "one")
        if row is None:
            return None
        return {"user": row[0], "pw_hash": row[1], "name": row[2], "text": row[3],
                "created": row[4], "deleted": row[5], "avatar": row[6]}

    def existing_users(self, users):
        users = list(dict.fromkeys(users))
        found = set()
        for part in chunks(users, IN_CHUNK):
            rows = self._run("existing_users",
                             f"SELECT user FROM users WHERE user IN ({self._in(len(part))})"
                             " AND deleted = 0", part, "all")
            found.update(r[0] for r in rows)
        return found

    def set_profile(self, user, name=None, text=None, avatar=None):
        sets, params = [], []
        if name is not None:
            sets.append("name = ?")
            params.append(name)
        if text is not None:
            sets.append("text = ?")
            params.append(text)
        if avatar is not None:
            sets.append("avatar = ?")
            params.append(avatar or None)   # "": no avatar (NULL)
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
