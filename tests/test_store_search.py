"""The search index and the retention purge of the store (schema version 5), on both
engines: documents written by the background indexer (imsrv.core.search.SearchIndexer),
candidates limited to the user's inbox, edits and recalls, purges in batches that take
inbox rows, reactions and documents with them and never reuse a seq; and the plans of
their statements."""
import json
import time

import pytest

from harness.procs import wait_until

from imsrv.backends import mysql_search
from imsrv.core import search_text as st
from imsrv.core.search import Search, SearchIndexer
from imsrv.protocol.errors import BadRequest
from imsrv.servers.maintenance import Maintenance, RedisLease

from test_store import backend, count_rows, msg, mysql_admin, store  # noqa: F401 (fixtures)


class NoPolicy:
    def require_exists(self, *a, **k):
        pass

    def require_member(self, *a):
        pass


class NoFit:
    def _fit(self, msgs):
        return msgs


def text(sender, to=None, group=None, recipients=None, ts=1000, words="", body=None):
    item = msg(sender, to=to, group=group, recipients=recipients, ts=ts,
               body=json.dumps(body if body is not None else {"text": words}, ensure_ascii=False))
    return item


def search(store, user, q, **args):
    """The core's search op below its socket -> [(mid, body)]."""
    out = Search(store, NoPolicy(), NoFit()).search(user, dict(q=q, **args))["msgs"]
    return [(m["mid"], m["body"]) for m in out]


def mids(store, user, q, **args):
    return [mid for mid, _ in search(store, user, q, **args)]


def index(store):
    ix = SearchIndexer(store, batch=1000)
    while ix.step() == ix.batch:
        pass
    return ix


def sql(store, statement, params=()):
    with store.transaction("test") as cur:
        cur.execute(store.dialect.render(statement), params)


# ============================================================================ search
def test_search_finds_the_users_messages_newest_first(store):
    r = store.store_messages([
        text("alice", "bob", words="Hello Bob, lunch today?"),
        text("bob", "alice", words="hello alice! LUNCH at noon"),
        text("carol", "dave", words="hello dave lunch"),            # not alice's
        text("alice", "carol", words="lunch hello", body="lunch hello"),   # a string body
        text("alice", "bob", body={"text": 5, "lunch": "hello"}),   # no text
        text("alice", "bob", words="今天天气很好 lunch"),
    ])
    m = [x["mid"] for x in r]
    index(store)
    assert mids(store, "alice", "hello") == [m[3], m[1], m[0]]
    assert mids(store, "alice", "LUNCH HELLO") == [m[3], m[1], m[0]]
    assert mids(store, "alice", "lunch") == [m[5], m[3], m[1], m[0]]
    assert mids(store, "alice", "lun") == []                 # whole words
    assert mids(store, "alice", "天气") == [m[5]]
    assert mids(store, "alice", "天气 lunch") == [m[5]]
    assert mids(store, "dave", "hello") == [m[2]]
    assert mids(store, "erin", "hello") == []
    # the items are history's: body and fields of the message
    (mid, body), = search(store, "bob", "noon")
    assert mid == m[1] and body == {"text": "hello alice! LUNCH at noon"}
    with pytest.raises(BadRequest, match="'q'"):
        search(store, "alice", "?!")
    with pytest.raises(BadRequest, match="at most one"):
        search(store, "alice", "hello", group="g", **{"with": "bob"})


def test_search_with_a_user_or_group_and_paging(store):
    items = []
    for i in range(30):
        items.append(text("alice", "bob", ts=1000 + i, words=f"ping {i}"))
        items.append(text("alice", "carol", ts=1000 + i, words=f"ping {i}"))
        items.append(text("bob", group="g1", recipients=["alice", "bob", "carol"], ts=1000 + i,
                          words=f"ping {i}"))
    r = store.store_messages(items)
    index(store)
    by = lambda k: [x["mid"] for i, x in enumerate(r) if i % 3 == k][::-1]  # noqa: E731
    ab, ac, g1 = by(0), by(1), by(2)
    assert mids(store, "alice", "ping", limit=100) == sorted(ab + ac + g1, reverse=True)
    assert mids(store, "alice", "ping") == sorted(ab + ac + g1, reverse=True)[:20]   # default limit
    assert mids(store, "alice", "ping", limit=100, **{"with": "bob"}) == ab
    assert mids(store, "bob", "ping", limit=100, **{"with": "alice"}) == ab
    assert mids(store, "alice", "ping", limit=100, group="g1") == g1
    assert mids(store, "alice", "ping", limit=100, **{"with": "dave"}) == []
    # paging with before (a mid)
    page1 = mids(store, "alice", "ping", limit=7, group="g1")
    page2 = mids(store, "alice", "ping", limit=7, group="g1", before=page1[-1])
    assert page1 + page2 == g1[:14]
    assert set(mids(store, "alice", "ping 7", limit=100)) == {ab[22], ac[22], g1[22]}


def test_group_messages_only_from_the_users_own_inbox(store):
    """A member who joined later (no inbox rows for the earlier messages) does not find
    them, with or without ``group``; a former member still finds what they received."""
    r1 = store.store_messages([text("alice", group="g", recipients=["alice", "bob"], words="before join")])
    r2 = store.store_messages([text("alice", group="g", recipients=["alice", "bob", "carol"],
                                    words="after join")])
    index(store)
    assert mids(store, "carol", "join") == [r2[0]["mid"]]
    assert mids(store, "carol", "join", group="g") == [r2[0]["mid"]]
    assert mids(store, "bob", "join") == [r2[0]["mid"], r1[0]["mid"]]
    assert store.inbox_group_convs("carol") == ["g:g"]
    assert store.inbox_group_convs("dave") == []


def test_recalled_and_kind_entries_are_not_found_and_edits_by_latest_body(store):
    r = store.store_messages([
        text("alice", "bob", words="original words"),
        text("alice", "bob", words="recall me"),
        text("alice", "bob", words="plain"),
    ])
    m = [x["mid"] for x in r]
    index(store)
    # a recall, an edit and a reaction (store_messages writes their state with the entry)
    entries = []
    for kind, ref, body in (("recall", m[1], "null"), ("edit", m[0], json.dumps({"text": "brand new words"})),
                            ("reaction", m[2], json.dumps({"emoji": "x", "on": True}))):
        item = text("alice", "bob")
        item.update(kind=kind, ref=ref, body=body, reaction=("x", True))
        entries.append(item)
    store.store_messages(entries)
    # before the indexer ran: the state is checked at once
    assert mids(store, "alice", "recall") == []
    assert mids(store, "alice", "original") == []
    assert mids(store, "alice", "brand") == []                # not indexed yet
    index(store)
    (mid, body), = search(store, "alice", "words")
    assert mid == m[0] and body == {"text": "brand new words"}
    assert mids(store, "alice", "brand new") == [m[0]]
    assert mids(store, "alice", "plain") == [m[2]]
    with store.autocommit("count") as cur:
        cur.execute("SELECT COUNT(*) FROM " + ("search_fts" if store.dialect.name == "sqlite" else "search_docs"))
        assert cur.fetchone()[0] == 2                        # the recalled one's is dropped


def test_search_apply_replaces_drops_and_keeps_the_position(store):
    assert store.search_position() == 0
    store.search_apply({5: "waaaaaaaaaa", 6: "wbbbbbbbbbb"}, [], 6)
    store.search_apply({5: "wcccccccccc"}, [6, 7], 9)
    assert store.search_position() == 9
    assert store.search_sources(after=0, limit=5) == []
    r = store.store_messages([text("alice", "bob", words="x")])
    src, = store.search_sources(after=0, limit=5)
    assert src == {"mid": r[0]["mid"], "conv": "u:alice:bob", "kind": None, "ref": None,
                   "body": json.dumps({"text": "x"}), "edited_body": None, "recalled": 0}
    assert store.search_sources(mids=[r[0]["mid"], 999999]) == [src]


# ============================================================================ retention
def test_purge_deletes_old_messages_with_their_rows_in_batches(store):
    old = store.store_messages([
        text("alice", "bob", ts=100, words="old one"),
        text("bob", group="g", recipients=["alice", "bob", "carol"], ts=101, words="old group"),
        text("alice", "alice", ts=102, words="old self"),
    ])
    store.create_group("g", "G", "bob", ["bob", "alice"], 1)      # carol has left
    new = store.store_messages([
        text("alice", "bob", ts=500, words="new one"),
        text("bob", group="g", recipients=["alice", "bob"], ts=501, words="new group"),
    ])
    sql(store, "INSERT INTO reactions (mid, emoji, user, ts) VALUES (?, ?, ?, ?)", (old[0]["mid"], "x", "bob", 1))
    sql(store, "INSERT INTO reactions (mid, emoji, user, ts) VALUES (?, ?, ?, ?)", (new[0]["mid"], "x", "bob", 1))
    index(store)
    heads = {u: store.head(u) for u in ("alice", "bob", "carol")}
    assert store.purge_messages(400, 2) == {"messages": 2, "inbox": 5, "last_mid": old[1]["mid"]}
    assert store.purge_messages(400, 2) == {"messages": 1, "inbox": 1, "last_mid": old[2]["mid"]}
    assert store.purge_messages(400, 2) == {"messages": 0, "inbox": 0, "last_mid": None}
    assert count_rows(store, "messages") == 2
    assert count_rows(store, "reactions") == 1
    # carol, no longer a member, lost her row of the group message too (her conversation row)
    assert store.inbox_since("carol", 0, 10) == []
    assert [r["mid"] for r in store.inbox_since("alice", 0, 10)] == [new[0]["mid"], new[1]["mid"]]
    assert [r["mid"] for r in store.history("bob", "g:g", None, 10)] == [new[1]["mid"]]
    assert mids(store, "alice", "old") == [] and len(mids(store, "alice", "new")) == 2
    # seqs are never reused
    assert {u: store.head(u) for u in heads} == heads
    again = store.store_messages([text("alice", "bob", ts=600, words="again")])
    assert again[0]["seqs"] == {"alice": heads["alice"] + 1, "bob": heads["bob"] + 1}


def test_purge_stops_at_the_first_newer_message_and_bounds_inbox_rows(store):
    members = [f"m{i:02d}" for i in range(30)]
    store.store_messages([text("m00", group="big", recipients=members, ts=100 + i, words="x")
                          for i in range(3)])
    store.store_messages([text("alice", "bob", ts=900, words="new")])
    store.store_messages([text("alice", "bob", ts=100, words="older but later")])
    # purge_batch 2: at most 20 inbox rows, but always one message
    assert store.purge_messages(400, 2)["messages"] == 1
    assert store.purge_messages(400, 100)["messages"] == 2
    assert store.purge_messages(400, 100)["messages"] == 0     # stopped at ts 900
    assert count_rows(store, "messages") == 2
    assert count_rows(store, "inbox") == 4


def test_purged_documents_stay_gone_when_the_indexer_wrote_them_late(store):
    """The indexer read a message, the purge deleted it, then the indexer wrote its
    document: the next purge batch deletes that document (documents go by mid range)."""
    r = store.store_messages([text("alice", "bob", ts=100, words="a"), text("alice", "bob", ts=101, words="b")])
    ix = SearchIndexer(store)
    rows = store.search_sources(after=0, limit=10)
    store.purge_messages(150, 1)
    store.search_apply({row["mid"]: st.index_doc("a", row["conv"]) for row in rows}, [], r[1]["mid"])
    store.purge_messages(150, 1)
    with store.autocommit("count") as cur:
        cur.execute("SELECT COUNT(*) FROM " + ("search_fts" if store.dialect.name == "sqlite" else "search_docs"))
        assert cur.fetchone()[0] == 0
    assert ix.step() == 0


# ============================================================================ plans
def _plan_sqlite(store, statement, params):
    with store.autocommit("plan") as cur:
        cur.execute("EXPLAIN QUERY PLAN " + statement, params)
        return " | ".join(r[-1] for r in cur.fetchall())


def _plan_mysql(store, statement, params):
    with store.autocommit("plan") as cur:
        cur.execute("EXPLAIN " + store.dialect.render(statement), params)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


def test_search_and_purge_statements_use_their_indexes(backend, store):
    store.store_messages([text("alice", "bob", words="hello"),
                          text("bob", group="g", recipients=["alice", "bob"], words="hello")])
    index(store)
    tok = st.word_token("hello")
    scope = [st.participant_token("alice"), st.conv_token("g:g")]
    if backend.engine == "sqlite":
        plan = _plan_sqlite(store, "SELECT m.mid FROM search_fts JOIN messages m ON m.mid = search_fts.rowid"
                            " JOIN inbox i ON i.user = ? AND i.conv = m.conv AND i.mid = m.mid"
                            " WHERE search_fts MATCH ? AND m.kind IS NULL AND m.recalled = 0 AND search_fts.rowid < ?"
                            " ORDER BY search_fts.rowid DESC LIMIT 20",
                            ("alice", f"{tok} AND ({' OR '.join(scope)})", 10**9))
        assert "SCAN search_fts VIRTUAL TABLE" in plan and "TEMP B-TREE" not in plan, plan
        assert "SEARCH m USING INTEGER PRIMARY KEY" in plan and "inbox_conv" in plan, plan
        plan = _plan_sqlite(store, "SELECT DISTINCT conv FROM inbox WHERE user = ? AND conv >= ? AND conv < ?",
                            ("alice", "g:", "g;"))
        assert "inbox_conv" in plan, plan
        plan = _plan_sqlite(store, "DELETE FROM inbox WHERE user = ? AND conv = ? AND mid <= ?", ("a", "g:g", 5))
        assert "inbox_conv" in plan, plan
        plan = _plan_sqlite(store, "SELECT user FROM conversations WHERE conv = ?"
                            " UNION ALL SELECT user FROM group_members WHERE grp = ?", ("g:g", "g"))
        assert "conversations_conv" in plan, plan
    else:
        w, o = mysql_search.token_int(tok), mysql_search.token_int(st.word_token("other"))
        sc = [mysql_search.token_int(t) for t in scope]
        # a posting list walked backwards from before, the others probed by key
        rows = _plan_mysql(store, "SELECT STRAIGHT_JOIN l.mid FROM search_post l JOIN search_post o0"
                           " ON o0.token = ? AND o0.mid = l.mid WHERE l.token = ? AND l.mid < ?"
                           " ORDER BY l.mid DESC LIMIT 20", (o, w, 10**9))
        assert rows[0]["table"] == "l" and rows[0]["key"] == "PRIMARY", rows
        assert "filesort" not in (rows[0]["Extra"] or ""), rows
        assert rows[1]["table"] == "o0" and rows[1]["type"] == "eq_ref", rows
        # the candidates' records: by primary key, with the user's inbox row
        rows = _plan_mysql(store, "SELECT m.mid FROM messages m"
                           " JOIN inbox i ON i.user = ? AND i.conv = m.conv AND i.mid = m.mid"
                           " WHERE m.mid IN (?, ?) AND m.kind IS NULL AND m.recalled = 0", ("alice", 1, 2))
        by = {r["table"]: r for r in rows}
        assert by["m"]["key"] == "PRIMARY" and by["i"]["key"] in ("inbox_conv", "PRIMARY"), rows
        # deleting postings (edits, recalls, purges): ranges of one row
        with store.transaction("many postings") as cur:
            cur.execute("INSERT INTO search_post (token, mid) VALUES " + ", ".join(["(%s, %s)"] * 2000),
                        [v for i in range(2000) for v in (i % 50, i)])
        rows = _plan_mysql(store, "DELETE FROM search_post WHERE (token = ? AND mid = ?) OR (token = ? AND mid = ?)",
                           (sc[0], 1, sc[1], 2))
        assert rows[0]["key"] == "PRIMARY" and rows[0]["type"] == "range", rows
        rows = _plan_mysql(store, "SELECT user FROM conversations WHERE conv = ?", ("g:g",))
        assert rows[0]["key"] == "conversations_conv", rows
        rows = _plan_mysql(store, "SELECT DISTINCT conv FROM inbox WHERE user = ? AND conv >= ? AND conv < ?",
                           ("alice", "g:", "g;"))
        assert rows[0]["key"] in ("inbox_conv", "PRIMARY"), rows


# ============================================================================ the jobs' loop parts
class Cfg:
    class retention:
        days = 1.0
        purge_batch = 2
        purge_interval = 3600.0


def test_purge_retention_deletes_everything_older_in_batches(store):
    now = int(time.time() * 1000)
    store.store_messages([text("alice", "bob", ts=now - 3 * 86_400_000 + i, words="old") for i in range(5)])
    new = store.store_messages([text("alice", "bob", ts=now, words="new")])
    m = Maintenance(store, Cfg)
    assert m.purge_retention() == 5
    assert [r["mid"] for r in store.inbox_since("bob", 0, 10)] == [new[0]["mid"]]
    assert m.purge_retention() == 0


def test_a_lease_is_held_by_one_at_a_time(redis_url):
    import redis as redislib

    r = redislib.Redis.from_url(str(redis_url), decode_responses=True)
    key = redis_url.prefix + "maintenance"
    t = [0.0]
    first = RedisLease(r, key, ttl=0.5, clock=lambda: t[0])
    second = RedisLease(r, key, ttl=0.5, clock=lambda: t[0])
    assert first.held() and not second.held()
    t[0] += 0.3                     # past a third of the ttl: first renews it
    assert first.held() and not second.held()
    assert r.pttl(key) > 300
    r.pexpire(key, 1)               # first stopped renewing (paused, dead): it expires
    wait_until(lambda: r.get(key) is None, timeout=5, what="the lease to expire")
    t[0] += 0.3
    assert second.held()
    assert not first.held()         # its renewal finds another token
