"""The versioned schema of the durable store.

``MIGRATIONS`` is an ordered list; version 1 is the whole initial schema.  A later change
appends a migration (never edits an applied one).  Each migration is rendered for a
:class:`~imsrv.backends.sql_dialect.Dialect` and applied in its own transaction together
with the row that records it in ``schema_version``, so :func:`migrate` is idempotent and a crash
leaves the database at the previous version.  (SQLite DDL is transactional; MySQL commits
DDL implicitly, which is why every statement is also written ``IF NOT EXISTS``.)

Tables, and the queries each index serves (every query of the Store interface uses one):

- ``users(user PK, pw_hash, name, text, created)``
- ``user_seq(user PK, last_seq)``: the highest inbox seq handed out per user, the durable
  counter seqs come from.  Kept apart from ``users`` so that any inbox (``system``, a
  user created by another process a moment ago) gets a counter on its first message.
- ``tokens(token_hash PK, user, device, expires)``; index user (logout everywhere),
  index expires (purge_tokens)
- ``friend_requests(frm, to_user, message, ts)`` PK (frm, to_user); index
  (to_user, ts, frm) (list_requests, oldest first)
- ``friends(user, friend, ts)`` PK (user, friend), both directions stored
- ``blocks(user, blocked, ts)`` PK (user, blocked)
- ``groups_(grp PK, name, owner, created)`` (``groups`` is reserved in MySQL 8)
- ``group_members(grp, user, joined)`` PK (grp, user); index (user, grp) (list_groups)
- ``messages(mid auto-increment PK, sender, to_user, grp, conv, body, ts, cmid)``
- ``inbox(user, seq, mid, conv)`` PK (user, seq) (inbox_since); index (user, conv, mid)
  (history, newest first)
- ``dedup(sender, cmid, mid, seq, ts)`` PK (sender, cmid); index ts (purge_dedup)

Version 2 (account deletion): ``users.deleted`` (0, or when the account was deleted: the
row stays so the name stays taken); index ``blocks_blocked`` (blocked, user) and index
``groups_owner`` (owner), so delete_user finds the blocks of a user and the groups they own
without a scan.
"""
import time


class Table:
    """A table definition.  ``columns`` are ``"name {TYPE} constraints"`` templates whose
    {TYPE} is one of the dialect's abstract types; ``primary_key`` is a tuple of column
    names, or None when a SERIAL column is the key; ``indexes`` maps index names to
    column tuples."""

    def __init__(self, name, columns, primary_key=None, indexes=None):
        self.name = name
        self.columns = columns
        self.primary_key = primary_key
        self.indexes = indexes or {}

    def render(self, dialect):
        parts = [c.format(**dialect.types) for c in self.columns]
        if self.primary_key:
            parts.append(f"PRIMARY KEY ({', '.join(self.primary_key)})")
        if dialect.inline_indexes:
            parts.extend(f"INDEX {name} ({', '.join(cols)})"
                         for name, cols in self.indexes.items())
        body = ",\n    ".join(parts)
        suffix = dialect.table_options
        if dialect.without_rowid and self.primary_key:
            suffix += " WITHOUT ROWID"
        stmts = [f"CREATE TABLE IF NOT EXISTS {self.name} (\n    {body}\n){suffix}"]
        if not dialect.inline_indexes:
            stmts.extend(f"CREATE INDEX IF NOT EXISTS {name} ON {self.name} ({', '.join(cols)})"
                         for name, cols in self.indexes.items())
        return stmts


class AddColumn:
    """ALTER TABLE ... ADD COLUMN, skipped when the column exists (MySQL commits DDL at
    once, so a migration that failed half-way must be able to run again)."""

    def __init__(self, table, column):
        self.table = table
        self.column = column          # "name {TYPE} constraints", like Table columns
        self.name = column.split()[0]

    def apply(self, cur, dialect):
        cur.execute(dialect.render(dialect.column_exists_sql), (self.table, self.name))
        if cur.fetchone() is None:
            cur.execute(f"ALTER TABLE {self.table} ADD COLUMN {self.column.format(**dialect.types)}")


class AddIndex:
    """CREATE INDEX on an existing table, skipped when the index exists (MySQL has no
    CREATE INDEX IF NOT EXISTS)."""

    def __init__(self, table, name, columns):
        self.table, self.name, self.columns = table, name, columns

    def apply(self, cur, dialect):
        cur.execute(dialect.render(dialect.index_exists_sql), (self.table, self.name))
        if cur.fetchone() is None:
            cur.execute(f"CREATE INDEX {self.name} ON {self.table} ({', '.join(self.columns)})")


class Migration:
    """``steps``: Table objects, SQL strings, callables(dialect) -> list of SQL strings, or
    AddColumn / AddIndex (which look before they alter)."""

    def __init__(self, version, description, steps):
        self.version = version
        self.description = description
        self.steps = steps

    def render(self, dialect):
        """The SQL of the plain steps (AddColumn / AddIndex need a cursor: see apply)."""
        out = []
        for step in self.steps:
            if isinstance(step, Table):
                out.extend(step.render(dialect))
            elif isinstance(step, (AddColumn, AddIndex)):
                continue
            elif callable(step):
                out.extend(step(dialect))
            else:
                out.append(step)
        return out

    def apply(self, cur, dialect):
        for step in self.steps:
            if isinstance(step, (AddColumn, AddIndex)):
                step.apply(cur, dialect)
            else:
                for stmt in Migration(self.version, self.description, [step]).render(dialect):
                    cur.execute(stmt)


VERSION_TABLE = Table("schema_version", [
    "version {INT} NOT NULL",
    "applied {INT} NOT NULL",
], primary_key=("version",))


MIGRATIONS = [
    Migration(1, "initial schema", [
        Table("users", [
            "user {USER} NOT NULL",
            "pw_hash {TEXT} NOT NULL",
            "name {TEXT}",
            "text {TEXT} NOT NULL",
            "created {INT} NOT NULL",
        ], primary_key=("user",)),
        Table("user_seq", [
            "user {USER} NOT NULL",
            "last_seq {INT} NOT NULL",
        ], primary_key=("user",)),
        Table("tokens", [
            "token_hash {HASH} NOT NULL",
            "user {USER} NOT NULL",
            "device {SHORT} NOT NULL",
            "expires {INT} NOT NULL",
        ], primary_key=("token_hash",), indexes={
            "tokens_user": ("user",),
            "tokens_expires": ("expires",),
        }),
        Table("friend_requests", [
            "frm {USER} NOT NULL",
            "to_user {USER} NOT NULL",
            "message {TEXT}",
            "ts {INT} NOT NULL",
        ], primary_key=("frm", "to_user"), indexes={
            "friend_requests_to": ("to_user", "ts", "frm"),
        }),
        Table("friends", [
            "user {USER} NOT NULL",
            "friend {USER} NOT NULL",
            "ts {INT} NOT NULL",
        ], primary_key=("user", "friend")),
        Table("blocks", [
            "user {USER} NOT NULL",
            "blocked {USER} NOT NULL",
            "ts {INT} NOT NULL",
        ], primary_key=("user", "blocked")),
        Table("groups_", [
            "grp {GROUP} NOT NULL",
            "name {TEXT}",
            "owner {USER} NOT NULL",
            "created {INT} NOT NULL",
        ], primary_key=("grp",)),
        Table("group_members", [
            "grp {GROUP} NOT NULL",
            "user {USER} NOT NULL",
            "joined {INT} NOT NULL",
        ], primary_key=("grp", "user"), indexes={
            "group_members_user": ("user", "grp"),
        }),
        Table("messages", [
            "mid {SERIAL}",
            "sender {USER} NOT NULL",
            "to_user {USER}",
            "grp {GROUP}",
            "conv {CONV} NOT NULL",
            "body {BODY} NOT NULL",
            "ts {INT} NOT NULL",
            "cmid {CMID}",
        ]),
        Table("inbox", [
            "user {USER} NOT NULL",
            "seq {INT} NOT NULL",
            "mid {INT} NOT NULL",
            "conv {CONV} NOT NULL",
        ], primary_key=("user", "seq"), indexes={
            "inbox_conv": ("user", "conv", "mid"),
        }),
        Table("dedup", [
            "sender {USER} NOT NULL",
            "cmid {CMID} NOT NULL",
            "mid {INT} NOT NULL",
            "seq {INT} NOT NULL",
            "ts {INT} NOT NULL",
        ], primary_key=("sender", "cmid"), indexes={
            "dedup_ts": ("ts",),
        }),
    ]),
    Migration(2, "account deletion: users.deleted; indexes for blocks of and groups owned by a user", [
        AddColumn("users", "deleted {INT} NOT NULL DEFAULT 0"),
        AddIndex("blocks", "blocks_blocked", ("blocked", "user")),
        AddIndex("groups_", "groups_owner", ("owner",)),
    ]),
]

LATEST_VERSION = MIGRATIONS[-1].version


def _table_exists(cur, dialect, name):
    cur.execute(dialect.render(dialect.table_exists_sql), (name,))
    return cur.fetchone() is not None


def _max_version(cur, dialect):
    if not _table_exists(cur, dialect, VERSION_TABLE.name):
        return 0
    cur.execute("SELECT MAX(version) FROM schema_version")
    row = cur.fetchone()
    return (row[0] if row else None) or 0


def current_version(store):
    """The highest applied migration, 0 for an empty database."""
    with store.autocommit("schema_version") as cur:
        return _max_version(cur, store.dialect)


def migrate(store, migrations=None):
    """Apply the migrations the database lacks, each in its own transaction.

    Safe to run concurrently from several processes on SQLite (BEGIN IMMEDIATE serialises
    them and the version is re-read under the lock).  Raises StoreError if the database was
    migrated by a newer imsrv than this one.  -> the version the database is now at."""
    from .base import StoreError

    migrations = MIGRATIONS if migrations is None else migrations
    latest = migrations[-1].version
    dialect = store.dialect
    with store.transaction("migrate: schema_version table") as cur:
        for stmt in VERSION_TABLE.render(dialect):
            cur.execute(stmt)
        version = _max_version(cur, dialect)
    if version > latest:
        raise StoreError(f"{store.url}: database schema version {version} is newer than "
                         f"this imsrv supports ({latest}); upgrade imsrv")
    for m in migrations:
        if m.version <= version:
            continue
        with store.transaction(f"migrate to version {m.version} ({m.description})") as cur:
            version = _max_version(cur, dialect)  # another process may have done it
            if m.version <= version:
                continue
            m.apply(cur, dialect)
            cur.execute(dialect.render(
                "INSERT INTO schema_version (version, applied) VALUES (?, ?)"),
                (m.version, int(time.time() * 1000)))
            version = m.version
    return version
