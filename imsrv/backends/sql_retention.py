"""The retention purge in SQL, mixed into :class:`~imsrv.backends.sql.SqlStore` (it uses
its ``transaction``, ``dialect`` and, on MySQL, ``_retrying``).

Messages are purged oldest mid first: mids are handed out in time order, so the oldest
messages are the lowest mids, read by the primary key without an index on ts.  A batch
deletes, in one transaction, a run of the lowest mids whose ts is before the cutoff with
what hangs on them: their inbox rows (every user's rows of that conversation up to the
batch's last mid in it: the ``inbox_conv`` index (user, conv, mid), ranges), reactions
and search documents with their postings (ranges of mids: everything below a purged mid
is purged).  The
users of a conversation: both users of a 1:1 key; for a group, those with a
``conversations`` row for it (index ``conversations_conv``, schema version 5) and its
members.  Seqs are untouched: ``user_seq`` keeps each user's highest seq, so a purged seq
is never handed out again.
"""
from . import mysql_search
from .sql_dialect import IN_CHUNK, chunks

#: a batch stops once it holds this many inbox rows per message of purge_batch (a group
#: message has one per member)
INBOX_ROWS_PER_MESSAGE = 10


class RetentionSql:
    def purge_messages(self, cutoff, limit):
        what = f"purge_messages (ts < {cutoff}, batch {limit})"

        def attempt():
            with self.transaction(what) as cur:
                return self._purge_batch(cur, cutoff, limit)

        retrying = getattr(self, "_retrying", None)
        return retrying(attempt) if retrying else attempt()

    def _purge_batch(self, cur, cutoff, limit):
        r = self.dialect.render
        cur.execute(r("SELECT m.mid, m.conv, m.ts FROM messages m WHERE m.mid > ? ORDER BY m.mid LIMIT ?"), (0, limit))
        rows = cur.fetchall()
        users_of = {}   # conv -> its users
        last = {}       # conv -> the batch's last mid in it
        mids = []
        budget = max(1, limit) * INBOX_ROWS_PER_MESSAGE
        for mid, conv, ts in rows:
            if ts >= cutoff:
                break    # mids follow time: the rest is newer
            users = users_of.get(conv)
            if users is None:
                users = users_of[conv] = self._conv_users(cur, conv)
            if mids and budget < len(users):
                break
            budget -= len(users)
            mids.append(mid)
            last[conv] = mid
        if not mids:
            return {"messages": 0, "inbox": 0, "last_mid": None}
        top = mids[-1]
        ranges = sorted((u, conv, mid) for conv, mid in last.items() for u in users_of[conv])
        self._drop_unread(cur, ranges)
        cur.executemany(r("DELETE FROM inbox WHERE user = ? AND conv = ? AND mid <= ?"), ranges)
        inbox = cur.rowcount
        cur.execute(r("DELETE FROM reactions WHERE mid <= ?"), (top,))
        if self.dialect.name == "sqlite":
            cur.execute("DELETE FROM search_fts WHERE rowid <= ?", (top,))
        else:
            mysql_search.purge_docs(cur, top)
        for part in chunks(mids, IN_CHUNK):
            cur.execute(r(f"DELETE FROM messages WHERE mid IN ({self._in(len(part))})"), part)
        return {"messages": len(mids), "inbox": inbox, "last_mid": top}

    def _drop_unread(self, cur, ranges):
        """Before the inbox rows of ``ranges`` [(user, conv, up to mid)] are deleted: each
        conversation's ``unread`` loses the ones it counted (ordinary messages from others
        above the read position), and ``mentioned`` is cleared when none is left."""
        r = self.dialect.render
        count = r("SELECT COUNT(*) FROM inbox i JOIN conversations c ON c.user = i.user AND c.conv = i.conv"
                  " JOIN messages m ON m.mid = i.mid WHERE i.user = ? AND i.conv = ? AND i.mid <= ?"
                  " AND i.seq > c.read_seq AND m.kind IS NULL AND m.sender <> i.user")
        drops = []
        for user, conv, upto in ranges:
            cur.execute(count, (user, conv, upto))
            n = cur.fetchone()[0]
            if n:
                drops.append((n, n, user, conv))
        if drops:
            # mentioned first: MySQL assigns left to right (SQLite from the old row)
            cur.executemany(r("UPDATE conversations SET mentioned = CASE WHEN unread <= ? THEN 0 ELSE mentioned END,"
                              " unread = unread - ? WHERE user = ? AND conv = ?"), drops)

    def _conv_users(self, cur, conv):
        if conv.startswith("u:"):
            _, a, b = conv.split(":", 2)
            return [a] if a == b else [a, b]
        cur.execute(self.dialect.render(
            "SELECT user FROM conversations WHERE conv = ?"
            " UNION ALL SELECT user FROM group_members WHERE grp = ?"), (conv, conv[2:]))
        return sorted({r[0] for r in cur.fetchall()})
