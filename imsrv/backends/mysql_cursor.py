"""The cursor class of the MySQL / MariaDB store (:mod:`imsrv.backends.mysql`): PyMySQL's
Cursor with a faster way of binding parameters into the statement text.

PyMySQL binds client-side: every parameter becomes an SQL literal through
``Connection.escape`` (a type lookup, then ``str.translate`` over every string), and a
multi-row ``executemany`` encodes and appends row by row.  A batch of sends binds some
twenty parameters per message (the messages, inbox and counter rows), which made
binding a third of a forwarder's CPU.  :func:`literals` turns the parameter types the
store uses (``str``, ``int``, ``None``) into the same literal text in one loop: a string
that holds none of the characters PyMySQL escapes other than ``"`` (which needs no escape
inside ``'...'``) is only quoted; any other string, and every other type, goes through
PyMySQL's own escaping.  The connections run with a sql_mode without
NO_BACKSLASH_ESCAPES (imsrv/backends/mysql.py), the mode both forms are written for.
"""
from pymysql import cursors, err
from pymysql.converters import escape_string


def literals(values, escape):
    """``values`` (a sequence) -> a tuple of their SQL literals; ``escape`` is the
    connection's (for the types not handled here)."""
    out = []
    for v in values:
        kind = type(v)
        if kind is str:
            if "\\" in v or "'" in v or "\n" in v or "\r" in v or "\x00" in v or "\x1a" in v:
                out.append("'" + escape_string(v) + "'")
            else:
                out.append("'" + v + "'")
        elif kind is int:
            out.append(str(v))
        elif v is None:
            out.append("NULL")
        else:
            out.append(escape(v))
    return tuple(out)


class FastCursor(cursors.Cursor):
    """PyMySQL's Cursor, binding list/tuple parameters through :func:`literals`; a
    multi-row ``executemany`` joins the rows once per statement (each statement at most
    ``max_stmt_length`` bytes, as PyMySQL's)."""

    def _mogrify(self, query, args):
        if type(args) is tuple or type(args) is list:
            try:
                return query % literals(args, self._get_db().escape)
            except TypeError as exc:
                raise err.ProgrammingError(str(exc)) from None
        return super()._mogrify(query, args)

    def _do_execute_many(self, prefix, values, postfix, args, max_stmt_length, encoding):
        args = args if type(args) is list or type(args) is tuple else list(args)
        if type(args[0]) is not tuple and type(args[0]) is not list:   # named parameters
            return super()._do_execute_many(prefix, values, postfix, args, max_stmt_length, encoding)
        escape = self._get_db().escape
        budget = max_stmt_length - len(prefix.encode(encoding)) - len(postfix.encode(encoding))
        count = 0
        rows, size = [], 0
        for arg in args:
            try:
                row = values % literals(arg, escape)
            except TypeError as exc:
                raise err.ProgrammingError(str(exc)) from None
            n = (len(row) if row.isascii() else len(row.encode(encoding))) + 1
            if rows and size + n > budget:
                count += self.execute(prefix + ",".join(rows) + postfix)
                rows, size = [], 0
            rows.append(row)
            size += n
        count += self.execute(prefix + ",".join(rows) + postfix)
        self.rowcount = count
        return count
