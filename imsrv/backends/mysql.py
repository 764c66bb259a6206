"""The MySQL / MariaDB engine (PyMySQL): the durable store of the distributed deployment.

URL and settings (``mysql://user:password@host:port/dbname?pool_size=8&...``): see
:mod:`imsrv.backends.mysql_url`.  Create the database with :func:`initdb` (``imsrv
initdb``).

Design:

- **Pool.** A bounded pool of PyMySQL connections, for threads and greenlets alike:
  :mod:`imsrv.backends.mysql_pool`.
- **Failures.** Each store method takes a connection, runs (writes in one transaction),
  and gives it back.  A connection that failed at the connection level (OperationalError
  or InterfaceError other than deadlock/lock wait, or anything non-SQL raised mid-call
  such as a gevent Timeout) is closed, never reused; the error becomes StoreError naming
  ``host:port/db`` (the servers answer ``unavailable``); the next call connects afresh.
  An idle connection the server has closed is replaced before reuse (the pool checks),
  so calls after a server restart succeed at once.
- **Messages.** store_messages, get_dedups and the multi-row INSERT of messages are this
  engine's own: :mod:`imsrv.backends.mysql_messages`.
- **Binding.** Parameters are bound into the statement text by
  :class:`~imsrv.backends.mysql_cursor.FastCursor` (PyMySQL's escaping, fewer calls).
- **Collation.** Tables are created utf8mb4 with an exact binary collation, preferring a
  NO PAD one (``utf8mb4_nopad_bin`` on MariaDB, ``utf8mb4_0900_bin`` on MySQL 8) so that
  case, accents and trailing spaces all count (``"bob"`` and ``"bob "`` are two cmids);
  ``utf8mb4_bin`` (PAD SPACE) where neither exists.
- **Migrations** run under ``GET_LOCK`` (held on a connection of its own), so several
  processes starting at once migrate once.  MySQL commits DDL implicitly; every
  statement of a migration is idempotent (``IF NOT EXISTS``).
"""
import copy
import random
import re
import time
from contextlib import contextmanager

import pymysql
from pymysql import err as pymysql_err

from . import schema
from .base import OutcomeUnknown, DeadlinePassed, StoreError
from .mysql_cursor import FastCursor
from .mysql_messages import MysqlMessages
from .mysql_pool import Pool, close_quietly
from .mysql_url import parse_url, resolve_settings
from .sql import SqlStore
from .sql_dialect import MYSQL

# Server errors after which the transaction was rolled back and the connection is fine:
# run the transaction again.
ER_LOCK_WAIT_TIMEOUT = 1205
ER_LOCK_DEADLOCK = 1213
RETRYABLE = (ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK)
ER_BAD_DB = 1049  # unknown database
# Errors raised by PyMySQL when the server answered with an error packet: the protocol is
# in step, the connection can be reused after a rollback.
_CLEAN_ERRORS = (pymysql_err.IntegrityError, pymysql_err.ProgrammingError,
                 pymysql_err.DataError, pymysql_err.NotSupportedError)

# Preferred table collations, best first (exact, and NO PAD where the server has one).
COLLATIONS = ("utf8mb4_nopad_bin", "utf8mb4_0900_bin", "utf8mb4_bin")


# ----------------------------------------------------------------------------- the store
class MysqlStore(MysqlMessages, SqlStore):
    """Durable store in a MySQL or MariaDB database, through a pool of PyMySQL
    connections.  Nothing connects until the first call (normally ``migrate()``)."""

    driver_error = pymysql_err.Error

    def __init__(self, url, **options):
        cfg = parse_url(url)
        settings = resolve_settings(cfg.pop("options"), dict(options))
        self.host, self.port = cfg["host"], cfg["port"]
        self.user, self.database = cfg["user"], cfg["database"]
        self._password = cfg["password"]
        self.settings = settings
        self.address = f"{self.host}:{self.port}/{self.database}"
        # store.url names the server and database but never the password
        super().__init__(f"mysql://{self.user}@{self.address}", copy.copy(MYSQL))
        self.pool = Pool(self._connect, settings["pool_size"], settings["pool_timeout"])
        self.retries = settings["retries"]
        self._mid_strategy = None  # tests may force "returning", "multirow" or "single"
        self._collation = None     # chosen at the first connection (see _connect)

    # ------------------------------------------------------------------ connections
    def _connect_args(self, database=True):
        settings = self.settings
        args = dict(host=self.host, port=self.port, user=self.user, password=self._password,
                    charset="utf8mb4", autocommit=True, cursorclass=FastCursor,
                    connect_timeout=settings["connect_timeout"], read_timeout=settings["read_timeout"],
                    write_timeout=settings["write_timeout"],
                    # strict: a value too long for its column is an error, never cut
                    init_command=("SET SESSION sql_mode = 'STRICT_ALL_TABLES,"
                                  "NO_ENGINE_SUBSTITUTION', SESSION innodb_lock_wait_timeout"
                                  f" = {settings['lock_wait_timeout']:d}"))
        if settings["unix_socket"]:
            args["unix_socket"] = settings["unix_socket"]
        if database:
            args["database"] = self.database
        return args

    def _connect(self):
        conn = pymysql.connect(**self._connect_args())
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION(), @@innodb_autoinc_lock_mode,"
                            " @@auto_increment_increment, @@max_allowed_packet")
                version, lock_mode, increment, max_packet = cur.fetchone()
                if self._collation is None:
                    # once per store, before any DDL can be rendered (DDL needs a connection)
                    self._collation = _best_collation(cur)
                    self.dialect.table_options = (" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
                                                  f" COLLATE={self._collation}")
        except BaseException:
            close_quietly(conn)
            raise
        # What the mids of a multi-row insert can be learnt from (see module doc).
        if int(lock_mode) in (0, 1):
            conn.imsrv_mids = "multirow"
        elif _mariadb_at_least(version, (10, 5)):
            conn.imsrv_mids = "returning"
        else:
            conn.imsrv_mids = "single"
        conn.imsrv_increment = int(increment)
        # statement text budget: escaping may double a character, utf8mb4 takes up to 4
        conn.imsrv_chunk_chars = max(64 * 1024, int(max_packet) // 8)
        return conn

    def _checkout(self, what):
        if self.pool.closed:
            raise StoreError(f"{what}: {self.url}: the store is closed")
        try:
            return self.pool.get()
        except self.driver_error as exc:
            hint = " (create it with `imsrv initdb`)" if _code(exc) == ER_BAD_DB else ""
            raise StoreError(f"{what}: {self.url}: cannot connect:"
                             f" {type(exc).__name__}: {exc}{hint}") from exc
        except (OSError, TimeoutError) as exc:
            raise StoreError(f"{what}: {self.url}: {type(exc).__name__}: {exc}") from exc

    def _reusable(self, exc):
        if isinstance(exc, _CLEAN_ERRORS):
            return True
        return isinstance(exc, pymysql_err.OperationalError) and _code(exc) in RETRYABLE

    def _release_after_error(self, conn, exc):
        """Roll back and pool a connection whose server reported an error; close one that
        failed at the connection level (or mid-protocol)."""
        if isinstance(exc, DeadlinePassed) or (isinstance(exc, self.driver_error) and self._reusable(exc)):
            try:
                conn.rollback()
            except BaseException:
                self.pool.discard(conn)
                return
            self.pool.put(conn)
        else:
            self.pool.discard(conn)

    @contextmanager
    def _session(self, what, begin):
        """A pooled connection's cursor for one ``with`` block; see transaction()."""
        conn = self._checkout(what)
        cur = conn.cursor()
        try:
            if begin:
                cur.execute("START TRANSACTION")
            yield cur
            if begin:
                try:
                    conn.commit()
                except self.driver_error as exc:
                    # the COMMIT may have reached the server and been applied before the
                    # connection failed: nobody can say "nothing was stored" now
                    raise OutcomeUnknown(f"{what}: {self.url}: COMMIT outcome unknown:"
                                        f" {type(exc).__name__}: {exc}") from exc
        except BaseException as exc:
            try:
                cur.close()
            except Exception:
                pass
            self._release_after_error(conn, exc)
            if isinstance(exc, self.driver_error):
                raise self._error(exc, what) from exc
            raise
        cur.close()
        self.pool.put(conn)

    def transaction(self, what):
        """``with store.transaction("what") as cur:`` one write transaction on a pooled
        connection: committed on success; on any exception rolled back (a server error:
        the connection goes back to the pool) or closed (anything else, the connection may
        be mid-reply).  Driver errors become StoreError / DuplicateKey naming
        ``host:port/db``."""
        return self._session(what, True)

    def autocommit(self, what):
        """``with store.autocommit("what") as cur:`` statements each committed on its own,
        on a pooled connection, with the same error handling as transaction()."""
        return self._session(what, False)

    def _retrying(self, fn):
        """Run ``fn()`` (a whole transaction or one autocommit statement) again when the
        server rolled it back for a deadlock or a lock wait timeout."""
        attempt = 0
        while True:
            try:
                return fn()
            except StoreError as exc:
                cause = exc.__cause__
                if isinstance(exc, OutcomeUnknown):
                    raise   # maybe applied: running it again could store it twice
                if not (isinstance(cause, pymysql_err.OperationalError) and _code(cause) in RETRYABLE):
                    raise
                attempt += 1
                if attempt > self.retries:
                    raise StoreError(f"{exc} (gave up after {attempt} attempts)") from cause
                # jittered exponential backoff: 5-10 ms, 10-20 ms, ...
                time.sleep(0.005 * (2 ** (attempt - 1)) * (1 + random.random()))

    def _run(self, what, sql, params=(), fetch=None):
        return self._retrying(lambda: SqlStore._run(self, what, sql, params, fetch))

    # ------------------------------------------------------------------ lifecycle
    def migrate(self):
        """Create or upgrade the schema (see :mod:`imsrv.backends.schema`) under a named
        lock, so concurrent processes migrate one after the other.  -> the version."""
        version = self.schema_version()
        if version == schema.LATEST_VERSION:
            return version  # the usual case: nothing to do, no DDL, no lock
        lock = f"imsrv.migrate.{self.database}"[:64]
        try:
            conn = pymysql.connect(**self._connect_args())
        except self.driver_error as exc:
            raise StoreError(f"migrate: {self.url}: cannot connect:"
                             f" {type(exc).__name__}: {exc}") from exc
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT GET_LOCK(%s, %s)", (lock, 60))
                if cur.fetchone()[0] != 1:
                    raise StoreError(f"migrate: {self.url}: another process held the"
                                     f" migration lock {lock!r} for 60 s")
            return schema.migrate(self)
        except self.driver_error as exc:
            raise self._error(exc, "migrate") from exc
        finally:
            close_quietly(conn, polite=True)  # releases the lock with the session

    def close(self):
        self.pool.close()

    # ------------------------------------------------------------------ writes with retries
    def make_friends(self, a, b, ts):
        return self._retrying(lambda: SqlStore.make_friends(self, a, b, ts))

    def remove_friends(self, a, b):
        return self._retrying(lambda: SqlStore.remove_friends(self, a, b))

    def add_block(self, a, b, ts):
        return self._retrying(lambda: SqlStore.add_block(self, a, b, ts))

    def create_group(self, group, name, owner, members, ts, events=None):
        return self._retrying(lambda: SqlStore.create_group(self, group, name, owner,
                                                            members, ts, events))

    def add_members(self, group, users, ts):
        return self._retrying(lambda: SqlStore.add_members(self, group, users, ts))

    def set_password(self, user, old_hash, new_hash, keep_token_hash=None):
        return self._retrying(lambda: SqlStore.set_password(self, user, old_hash, new_hash,
                                                            keep_token_hash))

    def delete_user(self, user, old_hash, ts, group_events=None):
        return self._retrying(lambda: SqlStore.delete_user(self, user, old_hash, ts, group_events))


def _best_collation(cur):
    """The first of COLLATIONS the server has."""
    cur.execute("SELECT collation_name FROM information_schema.collations"
                " WHERE character_set_name = 'utf8mb4'")
    available = {r[0] for r in cur.fetchall()}
    return next((c for c in COLLATIONS if c in available), "utf8mb4_bin")


def _code(exc):
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else None


def _mariadb_at_least(version, wanted):
    """True for a MariaDB VERSION() string >= wanted (a tuple)."""
    if "mariadb" not in str(version).lower():
        return False
    nums = re.findall(r"\d+", str(version))[:len(wanted)]
    return tuple(int(n) for n in nums) >= wanted


# ----------------------------------------------------------------------------- initdb
def initdb(url, **options):
    """Create the database named by ``url`` if it is missing (utf8mb4, exact collation)
    and migrate it to the current schema.  Idempotent.  Raises StoreError (server down,
    no privilege...) or ValueError (bad URL).

    -> a summary such as ``"schema version 1 at mysql://root@127.0.0.1:3306/imsrv"``."""
    store = MysqlStore(url, **options)
    try:
        try:
            conn = pymysql.connect(**store._connect_args(database=False))
        except pymysql_err.Error as exc:
            raise StoreError(f"initdb: {store.url}: cannot connect:"
                             f" {type(exc).__name__}: {exc}") from exc
        try:
            with conn.cursor() as cur:
                collation = _best_collation(cur)
                # an identifier cannot be a parameter: the name was checked by parse_url
                # against [A-Za-z0-9_$-], so the backquoted name is exact
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{store.database}`"
                            f" CHARACTER SET utf8mb4 COLLATE {collation}")
        except pymysql_err.Error as exc:
            raise StoreError(f"initdb: {store.url}: {type(exc).__name__}: {exc}") from exc
        finally:
            close_quietly(conn, polite=True)
        version = store.migrate()
        return f"schema version {version} at {store.url}"
    finally:
        store.close()
