"""The search index of the MySQL / MariaDB store: an inverted index in plain InnoDB
b-trees, used by :class:`~imsrv.backends.sql_search.SearchSql` when the dialect is MySQL.

Why not InnoDB FULLTEXT: it reads the whole posting list of every term of a query (no
skipping, no order by document), so a query with a word found in most messages took
~200 ms (p50) to ~760 ms (p99) over 1,000,000 messages (bench/RESULTS.md, 2026-12-06,
issue 13), and MariaDB has no CJK parser anyway.  Here:

- ``search_docs(mid PK, doc)``: each message's document (what its postings are made of,
  to delete them when the document is replaced or dropped);
- ``search_post(token, mid)``, primary key (token, mid): one row per token of a document.
  A token (``w``/``c``/``p`` and 10 base-32 digits, imsrv/core/search_text.py) is stored
  as a BIGINT: its type in bits 50-51, its 50-bit hash below.

A query walks one posting list newest first and probes the others by primary key
(STRAIGHT_JOIN: the walked list is the first table, read backwards from ``before``, so
LIMIT stops it early, and the probes go rarest list first): the list of the rarest word
when it has at most ``RARE`` postings and fewer than the scope, else the scope's (each
scope token's list walked the same way, the walks merged); bounded counts of the lists
(one statement) tell.  The candidates' records are then read with the user's inbox row of
each (inbox_conv), which makes the scope exact; the candidates of a word that leads are
first kept to the scope's postings (most are not the user's, and the scope's lists are
short runs of the primary key, where the candidates' message rows lie all over their
table).  More candidates are read until ``limit`` are found or the walk ends, then the
records of those are read.
"""
from .sql_dialect import IN_CHUNK, PAIR_CHUNK, chunks

RARE = 2000              # a word with at most this many postings may lead the query
COUNT_CAP = 20000        # postings counted at most per token (to choose the lead)
WORD_PAGE = 500          # candidates read at a time when a rare word leads
_TYPES = {"w": 1, "c": 2, "p": 3}


def token_int(token):
    """A document token as stored in search_post.token."""
    return (_TYPES[token[0]] << 50) | int(token[1:], 32)


def postings(doc):
    return {token_int(t) for t in doc.split()}


def apply_docs(cur, docs, drop):
    """search_apply's writes (inside its transaction): replace/insert ``docs`` ({mid: doc},
    sorted items) and delete the documents of ``drop``, with their postings."""
    mids = sorted([mid for mid, _ in docs] + list(drop))
    old = {}
    if mids and mids[-1] - mids[0] < 4 * len(mids):
        # a batch of new messages: one short range of the key (usually holding nothing)
        cur.execute("SELECT mid, doc FROM search_docs WHERE mid BETWEEN %s AND %s", (mids[0], mids[-1]))
        wanted = set(mids)
        old.update((mid, doc) for mid, doc in cur.fetchall() if mid in wanted)
    else:
        for part in chunks(mids, IN_CHUNK):
            cur.execute("SELECT mid, doc FROM search_docs WHERE mid IN (" + ", ".join(["%s"] * len(part)) + ")",
                        part)
            old.update(cur.fetchall())
    gone, new = [], []
    for mid, doc in docs:
        before = postings(old[mid]) if mid in old else set()
        after = postings(doc)
        gone.extend((t, mid) for t in before - after)
        new.extend((t, mid) for t in after - before)
    for mid in drop:
        if mid in old:
            gone.extend((t, mid) for t in postings(old[mid]))
    delete_postings(cur, gone)
    for part in chunks(sorted(new), IN_CHUNK * 4):
        cur.execute("INSERT IGNORE INTO search_post (token, mid) VALUES " + ", ".join(["(%s, %s)"] * len(part)),
                    [v for pair in part for v in pair])
    for part in chunks(docs, IN_CHUNK):
        cur.execute("INSERT INTO search_docs (mid, doc) VALUES " + ", ".join(["(%s, %s)"] * len(part))
                    + " ON DUPLICATE KEY UPDATE doc = VALUES(doc)", [v for pair in part for v in pair])
    dropped = sorted(m for m in drop if m in old)
    for part in chunks(dropped, IN_CHUNK):
        cur.execute("DELETE FROM search_docs WHERE mid IN (" + ", ".join(["%s"] * len(part)) + ")", part)


def delete_postings(cur, pairs):
    """Delete search_post rows (token, mid): an OR of primary-key equalities (each a range
    of one row), PAIR_CHUNK a statement."""
    for part in chunks(sorted(pairs), PAIR_CHUNK):
        cur.execute("DELETE FROM search_post WHERE " + " OR ".join(["(token = %s AND mid = %s)"] * len(part)),
                    [v for pair in part for v in pair])


def purge_docs(cur, top):
    """The retention purge's part: every document with mid <= top, and its postings."""
    cur.execute("SELECT mid, doc FROM search_docs WHERE mid <= %s", (top,))
    rows = cur.fetchall()
    delete_postings(cur, [(t, mid) for mid, doc in rows for t in postings(doc)])
    cur.execute("DELETE FROM search_docs WHERE mid <= %s", (top,))


class MysqlSearch:
    """Store.search on the inverted index (see the module doc)."""

    def __init__(self, store, in_inbox, records):
        self.store = store
        self.in_inbox = in_inbox   # (cur, user, mids, conv) -> those a user's search may show, newest first
        self.records = records     # (cur, user, mids) -> their history records, newest first

    def search(self, user, tokens, scope, conv, before, limit):
        words = [token_int(t) for t in tokens]
        scope = [token_int(t) for t in scope]
        with self.store.autocommit(f"search {user!r}") as cur:
            counts = self._counts(cur, words + scope)
            if min(counts[w] for w in words) == 0:
                return []
            # probe the rarest lists first: the join stops at the first that misses
            words.sort(key=lambda w: counts[w])
            rarest = words[0]
            if counts[rarest] <= RARE and counts[rarest] < sum(counts[t] for t in scope):
                lead, others, page = [rarest], words[1:], WORD_PAGE
            else:
                lead, others, page = scope, words, limit + 10
            found = []
            while len(found) < limit:
                mids = self._walk(cur, lead, others, before, page)
                ours = self._in_scope(cur, mids, scope) if lead is not scope else mids
                if ours:
                    found.extend(self.in_inbox(cur, user, ours, conv))
                if len(mids) < page:
                    break
                before = mids[-1]
            return self.records(cur, user, found[:limit]) if found else []

    @staticmethod
    def _counts(cur, tokens):
        """{token: its postings, counted up to COUNT_CAP} in one statement."""
        tokens = list(dict.fromkeys(tokens))
        sql = " UNION ALL ".join(
            ["SELECT %s, COUNT(*) FROM (SELECT 1 FROM search_post WHERE token = %s LIMIT %s) x"] * len(tokens))
        cur.execute(sql, [v for t in tokens for v in (t, t, COUNT_CAP)])
        return {t: n for t, n in cur.fetchall()}

    @staticmethod
    def _in_scope(cur, mids, scope):
        """Those of ``mids`` (newest first) in one of the ``scope`` lists: the scope's
        postings between the lowest and highest of them (short runs of the primary key:
        a scope's lists are as long as the user's share of the messages), not the
        candidates' rows, which lie all over the messages table."""
        if not mids:
            return []
        cur.execute("SELECT mid FROM search_post WHERE token IN (" + ", ".join(["%s"] * len(scope))
                    + ") AND mid BETWEEN %s AND %s", list(scope) + [mids[-1], mids[0]])
        ours = {r[0] for r in cur.fetchall()}
        return [m for m in mids if m in ours]

    @staticmethod
    def _walk(cur, lead, others, before, page):
        """Up to ``page`` mids < ``before`` (None: no bound) in any of the ``lead`` lists
        and in every one of the ``others``, newest first."""
        joins = "".join(f" JOIN search_post o{i} ON o{i}.token = %s AND o{i}.mid = l.mid"
                        for i in range(len(others)))
        one = (f"SELECT STRAIGHT_JOIN l.mid FROM search_post l{joins} WHERE l.token = %s"
               + ("" if before is None else " AND l.mid < %s") + " ORDER BY l.mid DESC LIMIT %s")
        params = []
        for t in lead:
            params.extend(others)
            params.append(t)
            if before is not None:
                params.append(before)
            params.append(page)
        if len(lead) == 1:
            cur.execute(one, params)
            return [r[0] for r in cur.fetchall()]
        # each list's walk, merged here (at most page mids of each)
        cur.execute(" UNION ALL ".join(f"({one})" for _ in lead), params)
        return sorted((r[0] for r in cur.fetchall()), reverse=True)[:page]
