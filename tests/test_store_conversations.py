"""The store's conversations rows (schema version 4), on both engines: kept by
store_messages in the batch's transaction, mark_read, set_muted / muted_conversations,
unread_totals, the listing and its paging, and their consistency with the inbox under
concurrent batches."""
import json
import threading

import pytest

from imsrv.backends import schema
from imsrv.backends.sqlite import SqliteStore

from test_store import backend, count_rows, msg, mysql_admin, store  # noqa: F401 (fixtures)


def gmsg(sender, group, members, ts=1000, mentions=None, kind=None, ref=None):
    item = msg(sender, group=group, recipients=members, ts=ts)
    item.update(kind=kind, mentions=mentions, ref=ref)
    if kind == "recall":
        item["body"] = "null"
    return item


def kind_entry(sender, to, kind, ref, ts=1000):
    item = msg(sender, to, ts=ts)
    item.update(kind=kind, ref=ref, body='{"emoji":"+1","on":true}' if kind == "reaction" else "null")
    if kind == "reaction":
        item["reaction"] = ("+1", True)
    return item


def conv(store, user, key):
    return store.get_conversation(user, key)


def inbox_unread(store, user, key):
    """The contract's unread count, counted over the inbox."""
    with store.autocommit("count") as cur:
        cur.execute(store.dialect.render(
            "SELECT COUNT(*) FROM inbox i JOIN messages m ON m.mid = i.mid"
            " LEFT JOIN conversations c ON c.user = i.user AND c.conv = i.conv"
            " WHERE i.user = ? AND i.conv = ? AND m.kind IS NULL AND m.sender <> i.user"
            " AND i.seq > COALESCE(c.read_seq, 0)"), (user, key))
        return cur.fetchone()[0]


AB = "u:alice:bob"


def test_a_batch_writes_one_row_per_user_and_conversation(store):
    r = store.store_messages([msg("alice", "bob", ts=100), msg("alice", "bob", ts=101),
                              msg("bob", "alice", ts=102), msg("alice", "carol", ts=103)])
    b = conv(store, "bob", AB)
    assert b["with"] == "alice" and b["group"] is None
    assert b["unread"] == 2 and b["read_seq"] == 0 and b["muted_until"] == 0 and b["mentioned"] is False
    assert b["ts"] == 102 and b["last"]["mid"] == r[2]["mid"] and b["last"]["seq"] == r[2]["seqs"]["bob"]
    a = conv(store, "alice", AB)
    assert a["with"] == "bob" and a["unread"] == 1 and a["last"]["mid"] == r[2]["mid"]
    assert a["last"]["seq"] == r[2]["seqs"]["alice"]
    assert conv(store, "carol", "u:alice:carol")["unread"] == 1
    assert conv(store, "alice", "u:alice:carol")["unread"] == 0
    assert count_rows(store, "conversations") == 4
    # a second batch adds to the rows
    r2 = store.store_messages([msg("alice", "bob", ts=200)])
    b = conv(store, "bob", AB)
    assert b["unread"] == 3 and b["last"]["mid"] == r2[0]["mid"] and b["ts"] == 200


def test_notes_to_self_and_system_notices(store):
    store.store_messages([msg("alice", "alice", recipients=["alice"]),
                          msg("system", "alice", recipients=["alice"])])
    me = conv(store, "alice", "u:alice:alice")
    assert me["with"] == "alice" and me["unread"] == 0
    sysc = conv(store, "alice", "u:alice:system")
    assert sysc["with"] == "system" and sysc["unread"] == 1


def test_group_rows_and_mentions(store):
    members = ["alice", "bob", "carol"]
    store.store_messages([gmsg("alice", "g1", members, ts=10, mentions=["bob"])])
    assert conv(store, "bob", "g:g1")["mentioned"] is True
    assert conv(store, "carol", "g:g1")["mentioned"] is False
    assert conv(store, "alice", "g:g1")["unread"] == 0
    g = conv(store, "carol", "g:g1")
    assert g["group"] == "g1" and g["with"] is None and g["unread"] == 1
    store.store_messages([gmsg("bob", "g1", members, ts=11, mentions=["all"]),
                          gmsg("carol", "g1", members, ts=12)])
    for user, unread in (("alice", 2), ("bob", 2), ("carol", 2)):
        row = conv(store, user, "g:g1")
        assert row["unread"] == unread and row["mentioned"] is True, (user, row)
    assert conv(store, "bob", "g:g1")["ts"] == 12


def test_big_group_rows_as_a_set_and_as_rows_agree(store):
    """A group of 40 (over USERS_UPSERT_MIN: SQLite writes the recipients that share a row's
    values by one statement a set) next to a group of 3 (a row each), in one batch and in
    the next: counts, mentions, last and the sender's own row agree with the inbox."""
    from imsrv.backends.sql_conversations import USERS_UPSERT_MIN
    big = [f"m{i:02d}" for i in range(40)]
    assert len(big) > USERS_UPSERT_MIN
    small = ["m00", "m01", "x"]
    r = store.store_messages([gmsg("m00", "big", big, ts=20, mentions=["m05"]),
                              gmsg("m01", "small", small, ts=21),
                              gmsg("m01", "big", big, ts=22)])
    store.store_messages([gmsg("m02", "big", big, ts=23)])
    for user in big:
        row = conv(store, user, "g:big")
        mine = {"m00": 1, "m01": 1, "m02": 1}.get(user, 0)
        assert row["unread"] == 3 - mine == inbox_unread(store, user, "g:big"), (user, row)
        assert row["mentioned"] is (user == "m05"), (user, row)
        assert row["group"] == "big" and row["with"] is None and row["ts"] == 23, (user, row)
    assert conv(store, "m01", "g:small")["unread"] == 0
    assert conv(store, "x", "g:small")["last"]["mid"] == r[1]["mid"]
    assert conv(store, "x", "g:big") is None


def test_entries_with_a_kind(store):
    """recall/edit/reaction entries touch no row; a group_event is activity, not unread."""
    r = store.store_messages([msg("alice", "bob", ts=100)])
    before = conv(store, "bob", AB)
    mid = r[0]["mid"]
    store.store_messages([kind_entry("bob", "alice", "reaction", mid, ts=200),
                          kind_entry("alice", "bob", "edit", mid, ts=201)])
    after = conv(store, "bob", AB)
    assert after["last"]["edited"] == 201 and after["last"]["edited_body"] == "null"
    del after["last"]["edited"], after["last"]["edited_body"], before["last"]["edited"], before["last"]["edited_body"]
    assert after == before and before["last"]["mid"] == mid
    store.store_messages([kind_entry("alice", "bob", "recall", mid, ts=202)])
    assert conv(store, "bob", AB)["last"]["recalled"] == 202 and conv(store, "bob", AB)["unread"] == 1
    assert conv(store, "alice", AB)["ts"] == 100
    ev = store.store_messages([gmsg("alice", "g2", ["alice", "bob"], ts=300, kind="group_event")])
    g = conv(store, "bob", "g:g2")
    assert g["unread"] == 0 and g["ts"] == 300 and g["last"]["mid"] == ev[0]["mid"]


def test_mark_read(store):
    r = store.store_messages([msg("alice", "bob", ts=t) for t in (1, 2, 3)]
                             + [msg("bob", "alice", ts=4), msg("alice", "bob", ts=5)])
    seqs = [x["seqs"]["bob"] for x in r]
    assert conv(store, "bob", AB)["unread"] == 4
    # no such entry / another conversation: nothing changes
    assert store.mark_read("bob", AB, seqs[-1] + 1, "alice") is None
    other = store.store_messages([msg("carol", "bob", ts=6)])[0]["seqs"]["bob"]
    out = store.mark_read("bob", AB, other, "alice")
    assert out["conv"] == "u:bob:carol" and out["moved"] is False
    assert conv(store, "bob", AB)["read_seq"] == 0
    # forward: the count is what is above
    out = store.mark_read("bob", AB, seqs[1], "alice")
    assert out == {"conv": AB, "mid": r[1]["mid"], "moved": True, "read_seq": seqs[1], "unread": 2,
                   "mentioned": False}
    row = conv(store, "bob", AB)
    assert row["read_seq"] == seqs[1] and row["unread"] == 2 == inbox_unread(store, "bob", AB)
    # never backwards
    out = store.mark_read("bob", AB, seqs[0], "alice")
    assert out["moved"] is False and conv(store, "bob", AB)["read_seq"] == seqs[1]
    assert store.mark_read("bob", AB, seqs[1], "alice")["moved"] is False
    # bob's own message (seqs[3]) is not counted
    store.mark_read("bob", AB, seqs[3], "alice")
    assert conv(store, "bob", AB)["unread"] == 1
    store.mark_read("bob", AB, seqs[4], "alice")
    assert conv(store, "bob", AB)["unread"] == 0
    # new messages count above the position
    store.store_messages([msg("alice", "bob", ts=7)])
    assert conv(store, "bob", AB)["unread"] == 1 == inbox_unread(store, "bob", AB)


def test_mark_read_recounts_kinds_and_mentions(store):
    members = ["alice", "bob", "carol"]
    r = store.store_messages([gmsg("alice", "g1", members, ts=1),
                              gmsg("alice", "g1", members, ts=2, mentions=["bob"]),
                              gmsg("carol", "g1", members, ts=3, mentions=["carol"]),
                              gmsg("alice", "g1", members, ts=4, kind="group_event")])
    s = [x["seqs"]["bob"] for x in r]
    assert conv(store, "bob", "g:g1")["unread"] == 3
    assert store.mark_read("bob", "g:g1", s[0])["mentioned"] is True
    row = conv(store, "bob", "g:g1")
    assert row["unread"] == 2 and row["mentioned"] is True
    # read past the mention: it is gone (carol's names carol, not bob)
    out = store.mark_read("bob", "g:g1", s[1])
    assert out["unread"] == 1 and out["mentioned"] is False
    assert conv(store, "bob", "g:g1")["mentioned"] is False
    # a recalled message still counts until read; the recall entry itself never does
    rr = store.store_messages([gmsg("alice", "g1", members, ts=5)])
    store.store_messages([gmsg("alice", "g1", members, ts=6, kind="recall", ref=rr[0]["mid"])])
    assert conv(store, "bob", "g:g1")["unread"] == 2
    store.mark_read("bob", "g:g1", s[2])
    assert conv(store, "bob", "g:g1")["unread"] == 1 == inbox_unread(store, "bob", "g:g1")
    store.mark_read("bob", "g:g1", rr[0]["seqs"]["bob"])
    assert conv(store, "bob", "g:g1")["unread"] == 0


def test_mute(store):
    store.set_muted("bob", AB, "alice", None, -1)   # before any message: a row, not listed
    assert store.list_conversations("bob") == []
    assert store.muted_conversations([("bob", AB), ("alice", AB)], now=5000) == {("bob", AB)}
    store.store_messages([msg("alice", "bob", ts=100)])
    row = conv(store, "bob", AB)
    assert row["muted_until"] == -1 and row["unread"] == 1
    store.set_muted("bob", AB, "alice", None, 6000)
    assert store.muted_conversations([("bob", AB)], now=5999) == {("bob", AB)}
    assert store.muted_conversations([("bob", AB)], now=6000) == set()
    store.set_muted("bob", AB, "alice", None, 0)
    assert conv(store, "bob", AB)["muted_until"] == 0
    assert store.muted_conversations([("bob", AB)], now=0) == set()
    assert store.muted_conversations([], now=0) == set()
    many = [(f"u{i}", f"u:u{i}:x") for i in range(450)]
    for user, key in many[::50]:
        store.set_muted(user, key, "x", None, -1)
    assert store.muted_conversations(many, now=1) == set(many[::50])


def test_unread_totals(store):
    store.store_messages([msg("alice", "bob"), msg("carol", "bob"), msg("carol", "bob"),
                          gmsg("alice", "g1", ["alice", "bob"])])
    assert store.unread_totals(["bob", "alice", "nobody"]) == {"bob": 4, "alice": 0, "nobody": 0}


def test_list_most_recent_first_and_paging(store):
    # bob's conversations with u0..u5 at ts 10, 20, 30, 30, 30, 40
    for i, ts in enumerate((10, 20, 30, 30, 30, 40)):
        store.store_messages([msg(f"u{i}", "bob", ts=ts)])
    store.set_muted("bob", "u:bob:zz", "zz", None, -1)   # no entry: never listed
    rows = store.list_conversations("bob")
    assert [r["with"] for r in rows] == ["u5", "u4", "u3", "u2", "u1", "u0"]
    assert [r["ts"] for r in rows] == [40, 30, 30, 30, 20, 10]
    assert rows[0]["last"]["from"] == "u5" and rows[0]["last"]["body"] == json.dumps({"text": "u5->bob"})
    # a page never ends inside a run of equal ts
    page = store.list_conversations("bob", limit=2)
    assert [r["with"] for r in page] == ["u5"]
    page = store.list_conversations("bob", before_ts=40, limit=2)
    assert [r["with"] for r in page] == ["u4", "u3", "u2"]       # the run comes whole
    page = store.list_conversations("bob", before_ts=30, limit=2)
    assert [r["with"] for r in page] == ["u1", "u0"]
    assert store.list_conversations("bob", before_ts=10) == []
    assert [r["with"] for r in store.list_conversations("bob", limit=4)] == ["u5", "u4", "u3", "u2"]
    assert [r["with"] for r in store.list_conversations("bob", limit=5)] == ["u5", "u4", "u3", "u2", "u1"]
    assert store.list_conversations("nobody") == []


def test_last_shows_the_latest_entry_of_the_users_inbox(store):
    """last's seq is the reader's; a message no longer stored (retention) leaves last null."""
    r = store.store_messages([msg("alice", "bob", ts=1)])
    a, b = conv(store, "alice", AB), conv(store, "bob", AB)
    assert a["last"]["seq"] == r[0]["seqs"]["alice"] and b["last"]["seq"] == r[0]["seqs"]["bob"]
    assert a["last"]["mid"] == b["last"]["mid"] == r[0]["mid"]
    with store.transaction("purge") as cur:
        cur.execute(store.dialect.render("DELETE FROM inbox WHERE mid = ?"), (r[0]["mid"],))
        cur.execute(store.dialect.render("DELETE FROM messages WHERE mid = ?"), (r[0]["mid"],))
    rows = store.list_conversations("bob")
    assert len(rows) == 1 and rows[0]["last"] is None and rows[0]["ts"] == 1


def test_a_failed_batch_writes_no_row(store):
    store.store_messages([msg("alice", "bob", cmid="c1")])
    with pytest.raises(Exception):
        store.store_messages([msg("carol", "bob"), msg("alice", "bob", cmid="c1")])
    assert conv(store, "bob", "u:bob:carol") is None
    assert conv(store, "bob", AB)["unread"] == 1


def test_concurrent_batches_and_reads_keep_the_counts_exact(backend):
    """Several writers (one store each: connections of their own) send to bob in 1:1 and in
    a group while bob marks read; afterwards every row equals a count over the inbox."""
    s = backend.open()   # the first open resets a MySQL database: before the threads
    members = ["bob", "s0", "s1", "s2"]
    errors = []

    def sender(i):
        try:
            mine = backend.open()   # in the thread: a SQLite connection is bound to its thread
            try:
                for n in range(30):
                    batch = [msg(f"s{i}", "bob", ts=1000 + n),
                             gmsg(f"s{i}", "g1", members, ts=1000 + n, mentions=["bob"] if n % 7 == 0 else None)]
                    mine.store_messages(batch)
            finally:
                mine.close()
        except Exception as exc:  # reported below
            errors.append(exc)

    def reader():
        try:
            mine = backend.open()
            try:
                for n in range(40):
                    head = mine.head("bob")
                    for rec in mine.inbox_since("bob", max(0, head - 3), 3):
                        peer = None if rec["group"] else rec["from"]
                        key = f"g:{rec['group']}" if rec["group"] else "u:%s:%s" % tuple(sorted((peer, "bob")))
                        mine.mark_read("bob", key, rec["seq"], peer, rec["group"])
            finally:
                mine.close()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(3)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    keys = ["g:g1"] + [f"u:bob:s{i}" for i in range(3)]
    for key in keys:
        row = conv(s, "bob", key)
        assert row["unread"] == inbox_unread(s, "bob", key), (key, row)
    for i in range(3):
        row = conv(s, f"s{i}", "g:g1")
        assert row["unread"] == inbox_unread(s, f"s{i}", "g:g1") == 60
    assert s.unread_totals(["bob"])["bob"] == sum(conv(s, "bob", k)["unread"] for k in keys)


def test_migration_4_fills_the_conversations_of_an_older_database(backend):
    """Version 4 on a version-3 database: one row per (user, conv) of the inbox, its
    latest entry as last, everything before the upgrade read (unread 0)."""
    s = backend.open(migrate=False)
    schema.migrate(s, schema.MIGRATIONS[:3])
    r = s.dialect.render
    with s.transaction("v3 sends") as cur:
        for mid_ts, (sender, to, grp, conv_key, users) in enumerate([
                ("alice", "bob", None, AB, ["alice", "bob"]),
                ("bob", "alice", None, AB, ["alice", "bob"]),
                ("system", "carol", None, "u:carol:system", ["carol"]),
                ("alice", None, "g1", "g:g1", ["alice", "carol"])], start=1):
            cur.execute(r("INSERT INTO messages (sender, to_user, grp, conv, body, ts, cmid, sender_seq)"
                          " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"), (sender, to, grp, conv_key, '"b"', mid_ts * 10, None, 0))
            mid = cur.lastrowid
            for user in users:
                cur.execute(r("SELECT COUNT(*) FROM inbox WHERE user = ?"), (user,))
                cur.execute(r("INSERT INTO inbox (user, seq, mid, conv) VALUES (?, ?, ?, ?)"),
                            (user, cur.fetchone()[0] + 1, mid, conv_key))
        cur.execute(r("INSERT INTO user_seq (user, last_seq) SELECT user, MAX(seq) FROM inbox GROUP BY user"))
    s.migrate()
    assert s.schema_version() == schema.LATEST_VERSION
    a = conv(s, "alice", AB)
    assert a["with"] == "bob" and a["ts"] == 20 and a["unread"] == 0 and a["read_seq"] == 2
    assert a["last"]["from"] == "bob"
    b = conv(s, "bob", AB)
    assert b["with"] == "alice" and b["read_seq"] == 2 and b["last"]["seq"] == 2
    c = conv(s, "carol", "u:carol:system")
    assert c["with"] == "system" and c["read_seq"] == 1
    g = conv(s, "carol", "g:g1")
    assert g["group"] == "g1" and g["with"] is None and g["read_seq"] == 2 and g["ts"] == 40
    assert count_rows(s, "conversations") == 5
    # new messages count from there
    s.store_messages([msg("alice", "bob", ts=50)])
    assert conv(s, "bob", AB)["unread"] == 1


def test_sqlite_conversation_queries_use_indexes(tmp_path):
    s = SqliteStore(str(tmp_path / "plan.db"))
    s.migrate()
    s.store_messages([msg(f"u{i}", "bob", ts=i) for i in range(200)]
                     + [gmsg("alice", "g1", ["alice", "bob"], ts=300)])
    with s.autocommit("analyze") as cur:
        cur.execute("ANALYZE")
    statements = []
    s._conn.set_trace_callback(statements.append)
    try:
        s.store_messages([msg("u1", "bob", ts=400)])
        s.list_conversations("bob", limit=2)
        s.list_conversations("bob", before_ts=300, limit=2)
        s.list_conversations("bob", before_ts=100, limit=1)
        s.get_conversation("bob", AB)
        seq = s.head("bob")
        s.mark_read("bob", "u:bob:u1", seq, "u1")
        s.set_muted("bob", AB, "alice", None, -1)
        s.muted_conversations([("bob", AB), ("alice", AB)], 0)
        s.unread_totals(["bob", "alice"])
    finally:
        s._conn.set_trace_callback(None)
    checked = 0
    with s.autocommit("explain") as cur:
        for sql in statements:
            if not isinstance(sql, str):
                sql = bytes(sql).decode()
            if "conversations" not in sql or sql.split(None, 1)[0].upper() not in ("SELECT", "UPDATE", "INSERT"):
                continue
            plan = [r[-1] for r in cur.execute("EXPLAIN QUERY PLAN " + sql).fetchall()]
            checked += 1
            for step in plan:
                assert not step.startswith("SCAN") or "CONSTANT ROW" in step or sql.startswith("INSERT"), (sql, plan)
                # the listing sorts the user's rows by activity (no index on it, on purpose:
                # schema version 4); nothing else sorts
                assert "TEMP B-TREE" not in step or "ORDER BY c.last_ts" in sql, (sql, plan)
    s.close()
    assert checked >= 8


def test_mark_read_of_a_conversation_without_a_row_creates_it(store):
    """An entry written without its row (none since version 4; a row deleted by hand): the
    read position still sticks, last from the latest entry."""
    r = store.store_messages([msg("alice", "bob", ts=10), msg("alice", "bob", ts=20)])
    with store.transaction("drop the row") as cur:
        cur.execute(store.dialect.render("DELETE FROM conversations WHERE user = ?"), ("bob",))
    out = store.mark_read("bob", AB, r[0]["seqs"]["bob"], "alice")
    assert out["moved"] is True and out["unread"] == 1
    row = conv(store, "bob", AB)
    assert row["with"] == "alice" and row["read_seq"] == r[0]["seqs"]["bob"] and row["unread"] == 1
    assert row["ts"] == 20 and row["last"]["mid"] == r[1]["mid"]


def test_the_reply_is_cut_to_a_frame_without_splitting_a_ts_run():
    """imsrv.core.conversations: a listing cut to max_reply_bytes ends before a run of equal
    ts that does not fit whole (the next page, before = the last ts, starts with it), and
    keeps at least one item."""
    from imsrv.core.conversations import Conversations

    conv = Conversations(store=None, policy=None, messaging=None, max_reply_bytes=128 + 400)
    items = [{"with": f"u{i}", "ts": ts, "pad": "x" * 80} for i, ts in enumerate((50, 40, 30, 30, 30, 20))]
    assert [i["with"] for i in conv._fit(items)] == ["u0", "u1"]       # u2..u4 (ts 30) do not all fit
    big = Conversations(None, None, None, max_reply_bytes=128 + 10_000)
    assert big._fit(items) == items
    tiny = Conversations(None, None, None, max_reply_bytes=128 + 10)
    assert tiny._fit(items) == items[:1]
    same = [{"with": f"u{i}", "ts": 7, "pad": "x" * 80} for i in range(6)]
    assert conv._fit(same) == same[:3]                                  # a run that is all it has


def test_retention_purge_takes_the_purged_entries_out_of_unread(store):
    """unread counts what is IN the inbox above the read position: the purge of old
    messages lowers it (and clears mentioned when nothing unread is left), in its own
    transaction; what was read or sent by the user does not count."""
    store.store_messages([msg("alice", "bob", ts=10), msg("alice", "bob", ts=20), msg("bob", "alice", ts=30)])
    store.mark_read("bob", AB, 1, "alice")                       # bob read the first
    store.store_messages([gmsg("alice", "g1", ["alice", "bob"], ts=40, mentions=["bob"])])
    store.store_messages([msg("alice", "bob", ts=100)])
    assert conv(store, "bob", AB)["unread"] == 2 and conv(store, "bob", "g:g1")["mentioned"]
    while store.purge_messages(50, 10)["messages"]:
        pass
    assert conv(store, "bob", AB)["unread"] == 1 == inbox_unread(store, "bob", AB)   # the ts=100 one
    assert conv(store, "alice", AB)["unread"] == 0 == inbox_unread(store, "alice", AB)
    g = conv(store, "bob", "g:g1")
    assert (g["unread"], g["mentioned"]) == (0, False)
