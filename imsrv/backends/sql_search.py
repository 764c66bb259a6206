"""The search index in SQL, mixed into :class:`~imsrv.backends.sql.SqlStore` (it uses its
``_run``, ``_in``, ``transaction``, ``autocommit`` and ``dialect``).  What a document holds
and what matches is the core's (:mod:`imsrv.core.search_text`); the store keeps documents
and finds the ones that hold tokens.

- **SQLite**: the FTS5 table ``search_fts(doc)``, rowid = the message's mid, ``ascii``
  tokenizer (documents are ASCII tokens), ``detail=none`` (no positions: a query is an AND
  of tokens, never a phrase) and ``columnsize=0`` (no ranking).  One statement answers a
  query: FTS5 walks its posting lists newest first, skipping, and the join keeps the
  candidates that are in the user's inbox.
- **MySQL / MariaDB**: an inverted index in plain InnoDB tables, ``search_docs`` and
  ``search_post``: :mod:`imsrv.backends.mysql_search`.

``search_state(name, value)``: ``indexed`` = the mid up to which every stored message has
been looked at by the indexer (see :class:`imsrv.core.search.SearchIndexer`).
"""
from . import mysql_search
from .sql_dialect import IN_CHUNK, chunks

# what the indexer reads of a message (search_sources)
_SOURCE_COLS = "mid, conv, kind, ref, body, edited_body, recalled"
_STATE = "indexed"


def _source(row):
    mid, conv, kind, ref, body, edited_body, recalled = row
    return {"mid": mid, "conv": conv, "kind": kind, "ref": ref, "body": body,
            "edited_body": edited_body, "recalled": recalled}


def _history_record(row):
    """A row of history's columns -> history's record (imsrv/backends/sql_messages.py)."""
    from .sql_messages import _record

    rec = _record(row)
    rec["recalled"], rec["edited"], rec["edited_body"] = row[-3:]
    return rec


class SearchSql:
    def _fts5(self):
        return self.dialect.name == "sqlite"

    # ------------------------------------------------------------------ the indexer's side
    def search_position(self):
        row = self._run("search_position", "SELECT value FROM search_state WHERE name = ?",
                        (_STATE,), "one")
        return row[0] if row else 0

    def search_sources(self, after=None, limit=None, mids=None):
        if mids is None:
            rows = self._run("search_sources",
                             f"SELECT {_SOURCE_COLS} FROM messages m WHERE m.mid > ? ORDER BY m.mid LIMIT ?",
                             (after, limit), "all")
            return [_source(r) for r in rows]
        out = []
        for part in chunks(sorted(set(mids)), IN_CHUNK):
            out.extend(_source(r) for r in self._run(
                "search_sources", f"SELECT {_SOURCE_COLS} FROM messages m WHERE m.mid IN ({self._in(len(part))})"
                " ORDER BY m.mid", part, "all"))
        return out

    def search_apply(self, docs, drop, position):
        docs = sorted(docs.items())
        drop = sorted(set(drop) - {mid for mid, _ in docs})
        what = f"search_apply ({len(docs)} documents, {len(drop)} dropped, position {position})"
        state = self.dialect.render(self.dialect.upsert("search_state", ("name", "value"), ("name",), ("value",)))

        def apply():
            with self.transaction(what) as cur:
                if self._fts5():
                    if docs:
                        cur.executemany("INSERT OR REPLACE INTO search_fts (rowid, doc) VALUES (?, ?)", docs)
                    if drop:
                        cur.executemany("DELETE FROM search_fts WHERE rowid = ?", [(m,) for m in drop])
                else:
                    mysql_search.apply_docs(cur, docs, drop)
                cur.execute(state, (_STATE, position))

        retrying = getattr(self, "_retrying", None)
        return retrying(apply) if retrying else apply()

    # ------------------------------------------------------------------ queries
    def inbox_group_convs(self, user):
        # the group part of the index (user, conv, mid): conv keys "g:..." sort between
        # "g:" and "g;" (";" follows ":")
        rows = self._run(f"inbox_group_convs {user!r}",
                         "SELECT DISTINCT conv FROM inbox WHERE user = ? AND conv >= ? AND conv < ?",
                         (user, "g:", "g;"), "all")
        return [r[0] for r in rows]

    def search(self, user, tokens, scope, conv=None, before=None, limit=20):
        if self._fts5():
            recs = self._fts5_search(user, tokens, scope, conv, before, limit)
        else:
            recs = mysql_search.MysqlSearch(self, self._search_mids, self._search_records).search(
                user, tokens, scope, conv, before, limit)
        if recs:
            reactions = self._reactions([r["mid"] for r in recs])
            for rec in recs:
                rec["reactions"] = reactions.get(rec["mid"])
        return recs

    def _fts5_search(self, user, tokens, scope, conv, before, limit):
        from .sql_messages import _HISTORY_COLS

        # CROSS JOIN: SQLite keeps this join order (FTS5 walks newest first, LIMIT stops it)
        sql = (f"SELECT {_HISTORY_COLS} FROM search_fts CROSS JOIN messages m ON m.mid = search_fts.rowid"
               " CROSS JOIN inbox i ON i.user = ? AND i.conv = m.conv AND i.mid = m.mid"
               " WHERE search_fts MATCH ? AND m.kind IS NULL AND m.recalled = 0")
        params = [user, " AND ".join(tokens + ["(" + " OR ".join(scope) + ")"])]
        if conv is not None:
            sql += " AND m.conv = ?"
            params.append(conv)
        if before is not None:
            sql += " AND search_fts.rowid < ?"
            params.append(before)
        sql += " ORDER BY search_fts.rowid DESC LIMIT ?"
        params.append(limit)
        return [_history_record(r) for r in self._run(f"search {user!r}", sql, params, "all")]

    def _search_mids(self, cur, user, mids, conv):
        """Those of the messages ``mids`` that are ordinary, not recalled, in ``user``'s
        inbox (and in ``conv`` if given), newest first."""
        sql = ("SELECT STRAIGHT_JOIN m.mid FROM messages m"
               " JOIN inbox i ON i.user = ? AND i.conv = m.conv AND i.mid = m.mid"
               f" WHERE m.mid IN ({self._in(len(mids))}) AND m.kind IS NULL AND m.recalled = 0")
        params = [user] + list(mids)
        if conv is not None:
            sql += " AND m.conv = ?"
            params.append(conv)
        cur.execute(self.dialect.render(sql + " ORDER BY m.mid DESC"), params)
        return [r[0] for r in cur.fetchall()]

    def _search_records(self, cur, user, mids):
        """History records of ``user``'s inbox entries of the messages ``mids``, newest first."""
        from .sql_messages import _HISTORY_COLS

        cur.execute(self.dialect.render(
            f"SELECT STRAIGHT_JOIN {_HISTORY_COLS} FROM messages m JOIN inbox i ON i.user = ? AND i.conv = m.conv"
            f" AND i.mid = m.mid WHERE m.mid IN ({self._in(len(mids))}) ORDER BY m.mid DESC"), [user] + list(mids))
        return [_history_record(row) for row in cur.fetchall()]
