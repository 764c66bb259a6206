"""SQL dialects: what differs between the databases the SQL store runs on.

A :class:`Dialect` holds the placeholder style, how a write transaction starts and how its
rows are locked, insert-or-ignore and upsert, the column types of
:mod:`imsrv.backends.schema` and how a duplicate key is recognised in a driver error.
:data:`SQLITE` and :data:`MYSQL` are the two instances.  Also the sizes of the statements
the store builds (``IN (...)`` lists, OR-of-pairs) and :func:`chunks` to cut lists to them.
"""

# Largest number of values bound in one "IN (...)" list or multi-row statement.  SQLite
# allows 32766 variables per statement (999 before 3.32), MySQL has no small limit; 500
# keeps statements short and the statement cache useful.
IN_CHUNK = 500
PAIR_CHUNK = 200  # (a, b) pairs per OR-of-equalities statement


def chunks(seq, size):
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

