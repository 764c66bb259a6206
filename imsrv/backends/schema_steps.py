"""The steps a schema migration is made of (imsrv.backends.schema lists the migrations):
a table, an added column or index, a data statement; each renders its SQL through the
dialect (imsrv.backends.sql_dialect) and, where it must look before it acts, applies
itself on a cursor so that a migration half-done (MySQL commits DDL at once) can run
again."""


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
    """CREATE [UNIQUE] INDEX on an existing table, skipped when the index exists (MySQL has
    no CREATE INDEX IF NOT EXISTS).  ``unique``: the rows must already be unique on
    ``columns`` (a step before makes them so), else the step fails with DuplicateKey."""

    def __init__(self, table, name, columns, unique=False):
        self.table, self.name, self.columns, self.unique = table, name, columns, unique

    def apply(self, cur, dialect):
        cur.execute(dialect.render(dialect.index_exists_sql), (self.table, self.name))
        if cur.fetchone() is None:
            kind = "UNIQUE INDEX" if self.unique else "INDEX"
            cur.execute(f"CREATE {kind} {self.name} ON {self.table} ({', '.join(self.columns)})")


class Sql:
    """One data statement (an UPDATE) with no parameters, the same text in every dialect.
    ``if_table``: run only while that table exists, so that a migration run again after
    its DROP TABLE was committed (MySQL commits DDL at once) skips what read the dropped
    table.  Like every step, it must leave the same rows when run twice."""

    def __init__(self, sql, if_table=None):
        self.sql = sql
        self.if_table = if_table

    def apply(self, cur, dialect):
        if self.if_table is None or _table_exists(cur, dialect, self.if_table):
            cur.execute(self.sql)


# steps that need a cursor (they look before they act): their own apply(cur, dialect)
_CURSOR_STEPS = (AddColumn, AddIndex, Sql)


class Migration:
    """``steps``: Table objects, SQL strings, callables(dialect) -> list of SQL strings, or
    AddColumn / AddIndex / Sql (which look before they act)."""

    def __init__(self, version, description, steps):
        self.version = version
        self.description = description
        self.steps = steps

    def render(self, dialect):
        """The SQL of the plain steps (AddColumn / AddIndex / Sql need a cursor: see apply)."""
        out = []
        for step in self.steps:
            if isinstance(step, Table):
                out.extend(step.render(dialect))
            elif isinstance(step, _CURSOR_STEPS):
                continue
            elif callable(step):
                out.extend(step(dialect))
            else:
                out.append(step)
        return out

    def apply(self, cur, dialect):
        for step in self.steps:
            if isinstance(step, _CURSOR_STEPS):
                step.apply(cur, dialect)
            else:
                for stmt in Migration(self.version, self.description, [step]).render(dialect):
                    cur.execute(stmt)


def _table_exists(cur, dialect, name):
    cur.execute(dialect.render(dialect.table_exists_sql), (name,))
    return cur.fetchone() is not None
