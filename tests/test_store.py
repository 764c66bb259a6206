"""The durable store, through the Store interface.

Every test that takes the ``store`` fixture runs against each engine in ENGINES.  SQLite
(a file in tmp_path) always runs; a MySQL engine joins when IMSRV_TEST_MYSQL_URL names a
scratch database (its tables are dropped before each test).  Tests that need to reopen the
same database use ``backend.open()``.  SQLite-only behaviour (pragmas, files, URLs, query
plans) is tested at the end.
"""
import json
import os
import random
import sqlite3
import threading

import pytest

from imsrv.backends import open_store
from imsrv.backends import schema
from imsrv.backends.base import DuplicateKey, Store, StoreError
from imsrv.backends.sqlite import SqliteStore

MYSQL_URL = os.environ.get("IMSRV_TEST_MYSQL_URL")
ENGINES = ["sqlite"] + (["mysql"] if MYSQL_URL else [])
ALL_TABLES = ["schema_version", "users", "user_seq", "tokens", "friend_requests", "friends",
              "blocks", "groups_", "group_members", "messages", "inbox", "dedup"]


class Backend:
    """Opens stores on one database for one test; closes them all at the end."""

    def __init__(self, engine, tmp_path):
        self.engine = engine
        self.stores = []
        if engine == "sqlite":
            self.url = f"sqlite:///{tmp_path / 'db' / 'imsrv.db'}"
        else:
            self.url = MYSQL_URL
            self._drop_all()

    def _drop_all(self):
        try:
            s = open_store(self.url)
        except NotImplementedError as exc:
            pytest.skip(str(exc))
        with s.transaction("drop") as cur:
            for t in ALL_TABLES:
                cur.execute(f"DROP TABLE IF EXISTS {t}")
        s.close()

    def open(self, migrate=True, **options):
        s = open_store(self.url, **options)
        self.stores.append(s)
        if migrate:
            s.migrate()
        return s

    def close(self):
        for s in self.stores:
            s.close()


@pytest.fixture(params=ENGINES)
def backend(request, tmp_path):
    b = Backend(request.param, tmp_path)
    yield b
    b.close()


@pytest.fixture
def store(backend):
    return backend.open()


def msg(sender, to=None, group=None, recipients=None, body=None, ts=1000, cmid=None):
    """A store_messages item; 1:1 by default (sender keeps a copy)."""
    if group is not None:
        conv = f"g:{group}"
        assert recipients is not None
    else:
        a, b = sorted((sender, to))
        conv = f"u:{a}:{b}"
        if recipients is None:
            recipients = [sender, to]
    if body is None:
        body = json.dumps({"text": f"{sender}->{to or group}"})
    return {"sender": sender, "to": to, "group": group, "conv": conv, "body": body,
            "ts": ts, "cmid": cmid, "recipients": list(recipients)}


def count_rows(store, table):
    with store.autocommit("count") as cur:
        cur.execute(f"SELECT COUNT(*) FROM {table}")
        return cur.fetchone()[0]


# ============================================================================ lifecycle
def test_is_a_store(store):
    assert isinstance(store, Store)
    assert store.url


def test_migrate_idempotent_and_versioned(backend):
    s = backend.open(migrate=False)
    assert s.schema_version() == 0
    s.migrate()
    assert s.schema_version() == schema.LATEST_VERSION >= 1
    s.create_user("alice", "h", "Alice", 1)
    s.migrate()
    s.migrate()
    assert s.schema_version() == schema.LATEST_VERSION
    assert s.get_user("alice")["name"] == "Alice"  # nothing recreated
    assert count_rows(s, "schema_version") == len(schema.MIGRATIONS)
    # a second store on the same database sees it migrated and migrating again is a no-op
    t = backend.open()
    assert t.schema_version() == schema.LATEST_VERSION
    assert t.get_user("alice") is not None


def test_migrate_applies_only_missing_versions(backend):
    s = backend.open(migrate=False)
    schema.migrate(s, schema.MIGRATIONS[:1])
    assert s.schema_version() == 1
    extra = schema.Migration(schema.LATEST_VERSION + 1, "test: add a table", [
        schema.Table("zz_test", ["k {USER} NOT NULL", "v {INT} NOT NULL"],
                     primary_key=("k",), indexes={"zz_test_v": ("v",)}),
    ])
    try:
        assert schema.migrate(s, schema.MIGRATIONS + [extra]) == extra.version
        assert s.schema_version() == extra.version
        assert schema.migrate(s, schema.MIGRATIONS + [extra]) == extra.version
        # this imsrv (which does not know the extra version) refuses a newer database
        with pytest.raises(StoreError, match="newer"):
            s.migrate()
    finally:
        with s.transaction("cleanup") as cur:
            cur.execute("DROP TABLE IF EXISTS zz_test")
            cur.execute(s.dialect.render("DELETE FROM schema_version WHERE version = ?"),
                        (extra.version,))
    assert s.schema_version() == schema.LATEST_VERSION


def test_failed_migration_rolls_back(backend):
    if backend.engine != "sqlite":
        pytest.skip("MySQL DDL is not transactional")
    s = backend.open()
    bad = schema.Migration(schema.LATEST_VERSION + 1, "test: broken", [
        "CREATE TABLE zz_half (a INTEGER)",
        "THIS IS NOT SQL",
    ])
    with pytest.raises(StoreError, match="broken"):
        schema.migrate(s, schema.MIGRATIONS + [bad])
    assert s.schema_version() == schema.LATEST_VERSION
    with s.autocommit("check") as cur:
        cur.execute("SELECT name FROM sqlite_master WHERE name = 'zz_half'")
        assert cur.fetchone() is None


def test_closed_store_raises_store_error(backend):
    s = backend.open()
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.get_user("alice")
    with pytest.raises(StoreError, match="closed"):
        s.store_messages([msg("alice", "bob")])


# ============================================================================ users
def test_users(store):
    assert store.get_user("alice") is None
    store.create_user("alice", "hash-a", "Alice", 1000)
    assert store.get_user("alice") == {"user": "alice", "pw_hash": "hash-a", "name": "Alice",
                                       "text": "", "created": 1000}
    with pytest.raises(DuplicateKey):
        store.create_user("alice", "other", "Other", 2000)
    assert store.get_user("alice")["pw_hash"] == "hash-a"
    # DuplicateKey is a StoreError, for callers that only care about "failed"
    with pytest.raises(StoreError):
        store.create_user("alice", "other", "Other", 2000)


def test_existing_users(store):
    for u in ("alice", "bob", "carol"):
        store.create_user(u, "h", u.title(), 1)
    assert store.existing_users([]) == set()
    assert store.existing_users(["alice", "zed", "carol", "alice"]) == {"alice", "carol"}
    assert store.existing_users(iter(["bob"])) == {"bob"}
    # more names than one IN list holds
    many = [f"u{i:05d}" for i in range(1234)] + ["bob"]
    assert store.existing_users(many) == {"bob"}


def test_set_profile(store):
    store.create_user("alice", "h", "Alice", 1)
    store.set_profile("alice", text="hello")
    assert store.get_user("alice")["name"] == "Alice"
    assert store.get_user("alice")["text"] == "hello"
    store.set_profile("alice", name="Al")
    assert (store.get_user("alice")["name"], store.get_user("alice")["text"]) == ("Al", "hello")
    store.set_profile("alice", name="A", text="")
    assert (store.get_user("alice")["name"], store.get_user("alice")["text"]) == ("A", "")
    store.set_profile("alice")  # nothing to change
    store.set_profile("nobody", name="X")  # no such user: nothing happens
    assert store.get_user("nobody") is None


def test_unicode_names_and_texts(store):
    name = "Zoë 张伟 🦄"
    text = "Ünïcödé ✓ \U0001F600 עברית\nsecond line\ttab 'quote' \"dq\" ; DROP TABLE users; --"
    store.create_user("zoe", "h", name, 1)
    store.set_profile("zoe", text=text)
    u = store.get_user("zoe")
    assert (u["name"], u["text"]) == (name, text)
    store.put_request("zoe", "bob", "👋 salut ça va ?", 2)
    assert store.get_request("zoe", "bob")["message"] == "👋 salut ça va ?"


# ============================================================================ tokens
def test_tokens(store):
    h1, h2, h3 = "a" * 64, "b" * 64, "c" * 64
    assert store.get_token(h1) is None
    store.add_token(h1, "alice", "phone", 5000)
    store.add_token(h2, "alice", "laptop", 6000)
    store.add_token(h3, "bob", "default", 7000)
    assert store.get_token(h1) == {"user": "alice", "device": "phone", "expires": 5000}
    with pytest.raises(DuplicateKey):
        store.add_token(h1, "bob", "x", 1)
    assert store.delete_token(h1) is True
    assert store.delete_token(h1) is False
    assert store.get_token(h1) is None
    assert store.get_token(h2)["device"] == "laptop"


def test_purge_tokens(store):
    for i, exp in enumerate([100, 200, 300, 400]):
        store.add_token(f"{i:064x}", "alice", "d", exp)
    assert store.purge_tokens(50) == 0
    assert store.purge_tokens(200) == 2  # expires <= now
    assert store.get_token(f"{1:064x}") is None
    assert store.get_token(f"{2:064x}") is not None
    assert store.purge_tokens(200) == 0
    assert store.purge_tokens(10 ** 12) == 2


# ============================================================================ friend requests
def test_requests(store):
    assert store.get_request("alice", "bob") is None
    assert store.list_requests("bob") == []
    store.put_request("alice", "bob", "hi bob", 100)
    store.put_request("carol", "bob", None, 50)
    store.put_request("dave", "bob", "yo", 150)
    store.put_request("bob", "alice", "reverse", 120)
    assert store.get_request("alice", "bob") == {"from": "alice", "to": "bob",
                                                 "message": "hi bob", "ts": 100}
    assert store.list_requests("bob") == [
        {"from": "carol", "message": None, "ts": 50},
        {"from": "alice", "message": "hi bob", "ts": 100},
        {"from": "dave", "message": "yo", "ts": 150},
    ]
    assert store.list_requests("alice") == [{"from": "bob", "message": "reverse", "ts": 120}]
    # insert or replace
    store.put_request("alice", "bob", "hi again", 200)
    assert store.get_request("alice", "bob")["message"] == "hi again"
    assert [r["from"] for r in store.list_requests("bob")] == ["carol", "dave", "alice"]
    assert store.delete_request("alice", "bob") is True
    assert store.delete_request("alice", "bob") is False
    assert store.get_request("alice", "bob") is None
    assert store.get_request("bob", "alice") is not None


def test_requests_same_ts_ordered_by_sender(store):
    for u in ("dave", "bob", "carol"):
        store.put_request(u, "alice", None, 7)
    assert [r["from"] for r in store.list_requests("alice")] == ["bob", "carol", "dave"]


# ============================================================================ friends
def test_make_friends_deletes_requests_both_ways(store):
    store.create_user("alice", "h", "Alice", 1)
    store.create_user("bob", "h", "Bob", 1)
    store.put_request("alice", "bob", "hi", 10)
    store.put_request("bob", "alice", "hi", 11)
    store.put_request("carol", "bob", "hi", 12)
    assert not store.are_friends("alice", "bob")
    store.make_friends("alice", "bob", 20)
    assert store.are_friends("alice", "bob") and store.are_friends("bob", "alice")
    assert store.get_request("alice", "bob") is None
    assert store.get_request("bob", "alice") is None
    assert store.get_request("carol", "bob") is not None  # unrelated request stays
    # idempotent
    store.make_friends("bob", "alice", 30)
    store.make_friends("alice", "bob", 40)
    assert store.list_friends("alice") == [{"user": "bob", "name": "Bob"}]
    assert store.list_friends("bob") == [{"user": "alice", "name": "Alice"}]


def test_list_friends_sorted_and_remove(store):
    for u in ("alice", "zed", "bob", "mike"):
        store.create_user(u, "h", u.upper(), 1)
    for u in ("zed", "bob", "mike"):
        store.make_friends("alice", u, 5)
    store.make_friends("bob", "mike", 5)
    assert store.list_friends("alice") == [{"user": "bob", "name": "BOB"},
                                           {"user": "mike", "name": "MIKE"},
                                           {"user": "zed", "name": "ZED"}]
    assert [f["user"] for f in store.list_friends("mike")] == ["alice", "bob"]
    assert store.list_friends("nobody") == []
    assert store.remove_friends("mike", "alice") is True
    assert store.remove_friends("alice", "mike") is False
    assert not store.are_friends("alice", "mike") and not store.are_friends("mike", "alice")
    assert [f["user"] for f in store.list_friends("alice")] == ["bob", "zed"]
    assert [f["user"] for f in store.list_friends("mike")] == ["bob"]
    # a friend whose name changes is listed with the new name
    store.set_profile("zed", name="Zed!")
    assert store.list_friends("alice")[-1] == {"user": "zed", "name": "Zed!"}


# ============================================================================ blocks
def test_blocks(store):
    store.put_request("alice", "bob", "hi", 1)
    store.put_request("bob", "alice", "hi", 2)
    store.put_request("alice", "carol", "hi", 3)
    assert not store.blocked_either("alice", "bob")
    store.add_block("bob", "alice", 10)
    store.add_block("bob", "alice", 20)  # idempotent
    assert store.blocked_either("alice", "bob") and store.blocked_either("bob", "alice")
    assert store.get_request("alice", "bob") is None
    assert store.get_request("bob", "alice") is None
    assert store.get_request("alice", "carol") is not None
    store.add_block("bob", "zed", 11)
    store.add_block("bob", "carol", 12)
    assert store.list_blocked("bob") == ["alice", "carol", "zed"]
    assert store.list_blocked("alice") == []
    assert not store.blocked_either("alice", "carol")
    assert store.remove_block("alice", "bob") is False  # directed
    assert store.remove_block("bob", "alice") is True
    assert store.remove_block("bob", "alice") is False
    assert not store.blocked_either("alice", "bob")
    # both directions at once
    store.add_block("alice", "bob", 30)
    store.add_block("bob", "alice", 30)
    assert store.remove_block("alice", "bob") is True
    assert store.blocked_either("alice", "bob")


# ============================================================================ groups
def test_groups(store):
    for u in ("alice", "bob", "carol", "dave"):
        store.create_user(u, "h", u, 1)
    assert store.get_group("g1") is None
    store.create_group("g1", "Team ✨", "alice", ["alice", "bob", "alice"], 100)
    assert store.get_group("g1") == {"group": "g1", "name": "Team ✨", "owner": "alice",
                                     "created": 100}
    with pytest.raises(DuplicateKey):
        store.create_group("g1", "again", "bob", ["bob"], 200)
    assert store.get_group("g1")["owner"] == "alice"
    assert store.list_members("g1") == ["alice", "bob"]  # a failed create changed nothing
    assert store.is_member("g1", "bob") and not store.is_member("g1", "carol")
    assert store.add_members("g1", ["dave", "bob", "carol", "dave"], 300) == ["dave", "carol"]
    assert store.add_members("g1", ["bob"], 400) == []
    assert store.add_members("g1", [], 400) == []
    assert store.list_members("g1") == ["alice", "bob", "carol", "dave"]
    assert store.remove_member("g1", "bob") is True
    assert store.remove_member("g1", "bob") is False
    assert store.list_members("g1") == ["alice", "carol", "dave"]
    assert store.list_members("nope") == []


def test_list_groups_sorted_by_id(store):
    store.create_group("gz", "Zeta", "alice", ["alice", "bob"], 1)
    store.create_group("ga", "Alpha", "bob", ["bob", "alice"], 2)
    store.create_group("gm", "Mu", "carol", ["carol"], 3)
    assert store.list_groups("alice") == [{"group": "ga", "name": "Alpha"},
                                          {"group": "gz", "name": "Zeta"}]
    assert store.list_groups("carol") == [{"group": "gm", "name": "Mu"}]
    assert store.list_groups("nobody") == []
    store.remove_member("gz", "alice")
    assert store.list_groups("alice") == [{"group": "ga", "name": "Alpha"}]


# ============================================================================ messages
def test_store_one_message(store):
    assert store.head("alice") == 0 and store.head("bob") == 0
    [r] = store.store_messages([msg("alice", "bob", ts=5000, cmid="c1", body='{"t":"hi"}')])
    assert r["ts"] == 5000 and isinstance(r["mid"], int)
    assert r["seqs"] == {"alice": 1, "bob": 1}
    assert store.head("alice") == 1 and store.head("bob") == 1
    expected = {"mid": r["mid"], "from": "alice", "to": "bob", "group": None,
                "body": '{"t":"hi"}', "ts": 5000, "cmid": "c1"}
    assert store.inbox_since("bob", 0, 10) == [dict(expected, seq=1)]
    assert store.inbox_since("alice", 0, 10) == [dict(expected, seq=1)]
    assert store.get_dedup("alice", "c1") == {"mid": r["mid"], "seq": 1, "ts": 5000}
    assert store.get_dedup("bob", "c1") is None
    assert store.get_dedup("alice", "c2") is None


def test_store_messages_empty_batch(store):
    assert store.store_messages([]) == []


def test_recipients_without_counter_or_account(store):
    # neither user exists nor ever had a message; "system" keeps no copy
    store.store_messages([msg("alice", "bob")])
    res = store.store_messages([msg("system", "carol", recipients=["carol", "bob"], cmid="n1")])
    assert res[0]["seqs"] == {"carol": 1, "bob": 2}
    assert store.head("system") == 0
    assert store.inbox_since("system", 0, 10) == []
    assert [m["from"] for m in store.inbox_since("carol", 0, 10)] == ["system"]
    # the sender is not a recipient: its dedup seq is 0
    assert store.get_dedup("system", "n1") == {"mid": res[0]["mid"], "seq": 0, "ts": 1000}


def test_batch_seqs_follow_batch_order(store):
    store.store_messages([msg("bob", "alice")])  # alice at 1, bob at 1
    batch = [
        msg("alice", "bob", body='"1"'),
        msg("carol", "alice", body='"2"'),
        msg("alice", group="g", recipients=["alice", "bob", "carol"], body='"3"'),
        msg("bob", "alice", body='"4"', cmid="b4"),
    ]
    res = store.store_messages(batch)
    assert [r["seqs"] for r in res] == [
        {"alice": 2, "bob": 2},
        {"carol": 1, "alice": 3},
        {"alice": 4, "bob": 3, "carol": 2},
        {"bob": 4, "alice": 5},
    ]
    mids = [r["mid"] for r in res]
    assert mids == sorted(mids) and len(set(mids)) == 4
    inbox = store.inbox_since("alice", 1, 100)
    assert [(m["seq"], m["mid"], m["body"]) for m in inbox] == [
        (2, mids[0], '"1"'), (3, mids[1], '"2"'), (4, mids[2], '"3"'), (5, mids[3], '"4"')]
    assert inbox[2]["group"] == "g" and inbox[2]["to"] is None
    assert store.get_dedup("bob", "b4") == {"mid": mids[3], "seq": 4, "ts": 1000}
    assert [r["ts"] for r in res] == [1000] * 4


def test_gapless_seqs_many_batches_many_users(store):
    rng = random.Random(1234)
    users = [f"user{i:02d}" for i in range(25)]
    model = {u: [] for u in users}  # expected inbox (body per seq)
    n = 0
    for batch_no in range(60):
        batch = []
        for _ in range(rng.choice([1, 1, 2, 5, 16, 40])):
            n += 1
            sender = rng.choice(users)
            body = json.dumps({"n": n})
            if rng.random() < 0.3:
                members = rng.sample(users, rng.randint(2, 8))
                if sender not in members:
                    members.append(sender)
                item = msg(sender, group=f"g{rng.randint(1, 3)}", recipients=members, body=body,
                           ts=n, cmid=f"c{n}")
            else:
                to = rng.choice([u for u in users if u != sender])
                keep = rng.random() < 0.9
                item = msg(sender, to, recipients=[sender, to] if keep else [to], body=body,
                           ts=n, cmid=f"c{n}" if rng.random() < 0.7 else None)
            batch.append(item)
        res = store.store_messages(batch)
        assert len(res) == len(batch)
        for item, r in zip(batch, res):
            assert set(r["seqs"]) == set(item["recipients"])
            for u in item["recipients"]:
                model[u].append(item["body"])
                assert r["seqs"][u] == len(model[u])
    for u in users:
        inbox = store.inbox_since(u, 0, 10 ** 6)
        assert [m["seq"] for m in inbox] == list(range(1, len(model[u]) + 1))
        assert [m["body"] for m in inbox] == model[u]
        assert store.head(u) == len(model[u])
        # the same message object (mid) is shared by every inbox it went to
        assert len({m["mid"] for m in inbox}) == len(inbox)
    assert count_rows(store, "messages") == n


def test_batch_failure_stores_nothing(store):
    store.store_messages([msg("alice", "bob", cmid="first")])
    heads = {u: store.head(u) for u in ("alice", "bob", "carol")}
    n_messages = count_rows(store, "messages")
    batch = [
        msg("alice", "carol", cmid="x1"),
        msg("bob", "carol", cmid="y1"),
        msg("alice", "bob", cmid="x1"),  # same (sender, cmid) as the first item
    ]
    with pytest.raises(DuplicateKey):
        store.store_messages(batch)
    assert {u: store.head(u) for u in heads} == heads
    assert store.inbox_since("carol", 0, 10) == []
    assert len(store.inbox_since("bob", 0, 10)) == 1
    assert store.get_dedup("alice", "x1") is None
    assert store.get_dedup("bob", "y1") is None
    assert count_rows(store, "messages") == n_messages
    # a cmid stored by an earlier batch fails a later batch the same way
    with pytest.raises(StoreError):
        store.store_messages([msg("carol", "bob", cmid="z"), msg("alice", "bob", cmid="first")])
    assert {u: store.head(u) for u in heads} == heads
    # the store is still usable and the seqs continue with no gap
    res = store.store_messages([msg("alice", "carol", cmid="x1")])
    assert res[0]["seqs"] == {"alice": heads["alice"] + 1, "carol": 1}
    assert store.get_dedup("alice", "x1")["mid"] == res[0]["mid"]


def test_same_cmid_different_senders(store):
    res = store.store_messages([msg("alice", "bob", cmid="c"), msg("bob", "alice", cmid="c")])
    assert store.get_dedup("alice", "c")["mid"] == res[0]["mid"]
    assert store.get_dedup("bob", "c") == {"mid": res[1]["mid"], "seq": 2, "ts": 1000}


def test_reopen_keeps_everything(backend):
    s = backend.open()
    s.create_user("alice", "h", "Alice", 1)
    s.add_token("t" * 64, "alice", "phone", 99)
    s.make_friends("alice", "bob", 2)
    s.create_group("g1", "G", "alice", ["alice", "bob"], 3)
    first = s.store_messages([msg("alice", "bob", cmid=f"c{i}") for i in range(5)])
    s.close()

    t = backend.open()
    assert t.schema_version() == schema.LATEST_VERSION
    assert t.get_user("alice")["name"] == "Alice"
    assert t.get_token("t" * 64)["user"] == "alice"
    assert t.are_friends("bob", "alice")
    assert t.list_members("g1") == ["alice", "bob"]
    assert t.head("alice") == 5 and t.head("bob") == 5
    assert t.get_dedup("alice", "c3")["mid"] == first[3]["mid"]
    res = t.store_messages([msg("bob", "alice"), msg("alice", group="g1",
                                                     recipients=["alice", "bob"])])
    assert res[0]["seqs"] == {"bob": 6, "alice": 6}
    assert res[1]["seqs"] == {"alice": 7, "bob": 7}
    assert res[0]["mid"] > first[-1]["mid"]
    assert [m["seq"] for m in t.inbox_since("bob", 0, 100)] == list(range(1, 8))


def test_mids_never_reused(store):
    # AUTOINCREMENT semantics: a mid stays unique even if the newest rows are deleted
    r1 = store.store_messages([msg("alice", "bob")])
    with store.transaction("delete") as cur:
        cur.execute(store.dialect.render("DELETE FROM messages WHERE mid = ?"), (r1[0]["mid"],))
    r2 = store.store_messages([msg("alice", "bob")])
    assert r2[0]["mid"] > r1[0]["mid"]


def test_unicode_and_large_bodies(store):
    bodies = [
        json.dumps({"text": "héllo wörld — 你好 — 🎉🦄 \U0001F9D1\u200D\U0001F680"},
                   ensure_ascii=False),
        json.dumps("\u0000 nul and \\ backslash and ' \" quotes"),
        json.dumps({"text": "x" * (16 * 1024 - 20)}),
        json.dumps({"text": "🦄" * 4000}, ensure_ascii=False),  # 16000 astral characters
        '"?"', '"%s %(x)s"',
    ]
    res = store.store_messages([msg("zoë", "bob", body=b, cmid=f"ü{i}") for i, b in
                                enumerate(bodies)])
    got = store.inbox_since("bob", 0, 100)
    assert [m["body"] for m in got] == bodies
    assert [m["from"] for m in got] == ["zoë"] * len(bodies)
    assert store.get_dedup("zoë", "ü2")["mid"] == res[2]["mid"]
    assert [m["body"] for m in store.history("zoë", "u:bob:zoë", None, 100)] == bodies[::-1]


def test_inbox_since_paging(store):
    for i in range(1, 26):
        store.store_messages([msg("alice", "bob", body=str(i))])
    store.store_messages([msg("carol", "dave")])  # another inbox, not seen below
    assert store.inbox_since("bob", 0, 0) == []
    pages, since = [], 0
    while True:
        page = store.inbox_since("bob", since, 10)
        if not page:
            break
        assert len(page) <= 10
        pages.append([m["seq"] for m in page])
        since = page[-1]["seq"]
    assert pages == [list(range(1, 11)), list(range(11, 21)), list(range(21, 26))]
    assert [m["body"] for m in store.inbox_since("bob", 20, 100)] == [str(i) for i in
                                                                        range(21, 26)]
    assert store.inbox_since("bob", 25, 10) == []
    assert store.inbox_since("bob", 1000, 10) == []
    assert store.inbox_since("nobody", 0, 10) == []


def test_history_newest_first(store):
    conv = "u:alice:bob"
    mids = []
    store.store_messages([msg("zed", "bob")])  # bob's seqs run one ahead of alice's
    for i in range(12):
        item = msg("alice", "bob", body=str(i)) if i % 2 else msg("bob", "alice", body=str(i))
        mids.append(store.store_messages([item])[0]["mid"])
        # interleave other conversations of both users
        store.store_messages([msg("alice", "carol"), msg("bob", group="g", recipients=["bob"])])
    h = store.history("alice", conv, None, 5)
    assert [m["mid"] for m in h] == mids[::-1][:5]
    assert [m["body"] for m in h] == ["11", "10", "9", "8", "7"]
    assert all(m["to"] in ("alice", "bob") and m["group"] is None for m in h)
    # the seqs are those of the reader's inbox
    for m in h:
        assert store.inbox_since("alice", m["seq"] - 1, 1)[0]["mid"] == m["mid"]
    h2 = store.history("alice", conv, h[-1]["mid"], 5)
    assert [m["mid"] for m in h2] == mids[::-1][5:10]
    h3 = store.history("alice", conv, h2[-1]["mid"], 5)
    assert [m["mid"] for m in h3] == mids[::-1][10:]
    assert store.history("alice", conv, mids[0], 5) == []
    assert store.history("alice", conv, mids[0] + 1, 5)[0]["mid"] == mids[0]
    # bob's history of the same conversation has the same messages with bob's seqs
    hb = store.history("bob", conv, None, 100)
    assert [m["mid"] for m in hb] == mids[::-1]
    assert [m["seq"] for m in hb] == [m["seq"] + 1 for m in store.history("alice", conv, None,
                                                                          100)]
    for m in hb:
        assert store.inbox_since("bob", m["seq"] - 1, 1)[0]["mid"] == m["mid"]
    assert [m["body"] for m in store.history("bob", "g:g", None, 3)] == [
        json.dumps({"text": "bob->g"})] * 3
    assert store.history("carol", conv, None, 10) == []
    assert store.history("alice", "u:alice:zed", None, 10) == []


def test_history_of_a_group_only_from_joined_inbox(store):
    store.store_messages([msg("alice", group="g", recipients=["alice", "bob"], body='"a"')])
    store.store_messages([msg("alice", group="g", recipients=["alice", "bob", "carol"],
                              body='"b"')])
    assert [m["body"] for m in store.history("carol", "g:g", None, 10)] == ['"b"']
    assert [m["body"] for m in store.history("bob", "g:g", None, 10)] == ['"b"', '"a"']


def test_purge_dedup(store):
    for ts in (100, 200, 300):
        store.store_messages([msg("alice", "bob", cmid=f"c{ts}", ts=ts)])
    assert store.purge_dedup(100) == 0
    assert store.purge_dedup(201) == 2  # older than before_ts
    assert store.get_dedup("alice", "c100") is None
    assert store.get_dedup("alice", "c200") is None
    assert store.get_dedup("alice", "c300")["seq"] == 3
    # messages and inboxes are untouched; the cmid may be used again
    assert store.head("bob") == 3 and len(store.inbox_since("alice", 0, 10)) == 3
    store.store_messages([msg("alice", "bob", cmid="c100", ts=400)])
    assert store.get_dedup("alice", "c100")["seq"] == 4


# ============================================================================ SQLite engine
@pytest.fixture
def sqlite_store(tmp_path):
    s = SqliteStore(str(tmp_path / "a" / "b" / "imsrv.db"))
    s.migrate()
    yield s
    s.close()


def test_sqlite_creates_parent_dirs_and_uses_wal(tmp_path, sqlite_store):
    assert (tmp_path / "a" / "b" / "imsrv.db").is_file()
    with sqlite_store.autocommit("pragma") as cur:
        assert cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert cur.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert cur.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


@pytest.mark.parametrize("mode,value", [("NORMAL", 1), ("full", 2), ("OFF", 0), ("EXTRA", 3)])
def test_sqlite_synchronous_option(tmp_path, mode, value):
    s = open_store(f"sqlite:///{tmp_path}/x.db", synchronous=mode, busy_timeout=250)
    try:
        assert s.synchronous == mode.upper()
        with s.autocommit("pragma") as cur:
            assert cur.execute("PRAGMA synchronous").fetchone()[0] == value
            assert cur.execute("PRAGMA busy_timeout").fetchone()[0] == 250
    finally:
        s.close()


def test_sqlite_bad_options(tmp_path):
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore(str(tmp_path / "x.db"), synchronous="FULL; DROP TABLE users")
    with pytest.raises(ValueError, match="busy_timeout"):
        SqliteStore(str(tmp_path / "x.db"), busy_timeout=-1)
    with pytest.raises(TypeError):
        open_store(f"sqlite:///{tmp_path}/x.db", no_such_option=1)


def test_sqlite_memory():
    s = open_store("sqlite:///:memory:")
    try:
        s.migrate()
        assert s.schema_version() == schema.LATEST_VERSION
        s.create_user("alice", "h", "A", 1)
        assert s.store_messages([msg("alice", "bob")])[0]["seqs"] == {"alice": 1, "bob": 1}
        assert s.get_user("alice")["name"] == "A"
    finally:
        s.close()
    # each in-memory store is private
    t = open_store("sqlite:///:memory:")
    try:
        assert t.schema_version() == 0
    finally:
        t.close()


def test_open_store_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = open_store("sqlite:///rel/dir/r.db")
    s.migrate()
    s.close()
    assert (tmp_path / "rel" / "dir" / "r.db").is_file()
    assert s.url == "sqlite:///rel/dir/r.db"
    absolute = tmp_path / "abs" / "a.db"
    s = open_store(f"sqlite:///{absolute}")  # str(absolute) starts with "/": four slashes
    s.migrate()
    s.close()
    assert absolute.is_file()
    s = open_store(f"SQLite:///{absolute}")
    assert s.schema_version() == schema.LATEST_VERSION
    s.close()


@pytest.mark.parametrize("url", ["postgres://u@h/db", "redis://localhost", "/tmp/x.db",
                                 "imsrv.db", "", "sqlite://", "sqlite:///", "sqlite://host/x.db",
                                 "sqlite:x.db"])
def test_open_store_bad_urls(url):
    with pytest.raises(ValueError) as info:
        open_store(url)
    assert repr(url) in str(info.value) or url == ""


def test_open_store_bad_url_hides_password():
    with pytest.raises(ValueError) as info:
        open_store("postgres://bob:s3cret@db.example:5432/im")
    assert "s3cret" not in str(info.value)
    assert "db.example" in str(info.value)


def test_open_store_mysql_not_yet():
    with pytest.raises(NotImplementedError, match="distributed deployment"):
        open_store("mysql://imsrv:pw@127.0.0.1:3306/imsrv")


def test_sqlite_errors_become_store_errors(tmp_path, sqlite_store):
    # another connection holds the write lock longer than busy_timeout
    path = str(tmp_path / "a" / "b" / "imsrv.db")
    impatient = SqliteStore(path, busy_timeout=50)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="store_messages") as info:
            impatient.store_messages([msg("alice", "bob")])
        assert not isinstance(info.value, DuplicateKey)
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        with pytest.raises(StoreError, match="create_user 'alice'"):
            impatient.create_user("alice", "h", "A", 1)
        other.execute("ROLLBACK")
        # the lock is gone: the same store works, nothing half-done is left
        assert impatient.store_messages([msg("alice", "bob")])[0]["seqs"] == {"alice": 1,
                                                                             "bob": 1}
        assert impatient.get_user("alice") is None
    finally:
        other.close()
        impatient.close()


def test_sqlite_cannot_create_directory(tmp_path):
    (tmp_path / "plainfile").write_text("not a directory")
    with pytest.raises(StoreError, match="plainfile"):
        SqliteStore(str(tmp_path / "plainfile" / "sub" / "x.db"))


def test_sqlite_unmigrated_store_raises_store_error(tmp_path):
    s = SqliteStore(str(tmp_path / "empty.db"))
    try:
        with pytest.raises(StoreError, match="no such table"):
            s.get_user("alice")
    finally:
        s.close()


def test_sqlite_unique_violation_vs_other_integrity_errors(sqlite_store):
    with pytest.raises(StoreError) as info:
        sqlite_store.create_user("alice", None, "A", 1)  # NOT NULL, not a duplicate
    assert not isinstance(info.value, DuplicateKey)


def test_sqlite_concurrent_writers_keep_seqs_gapless(tmp_path):
    """Several stores (as if several processes) on one file, writing at once."""
    path = str(tmp_path / "shared.db")
    first = SqliteStore(path)
    first.migrate()
    errors = []

    def writer(n):
        s = SqliteStore(path, synchronous="NORMAL", busy_timeout=30000)
        try:
            for i in range(40):
                s.store_messages([msg(f"w{n}", "hub", cmid=f"{n}-{i}"),
                                  msg(f"w{n}", "hub2", recipients=["hub2"])])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        for user, count in (("hub", 160), ("hub2", 160), ("w0", 40), ("w3", 40)):
            assert [m["seq"] for m in first.inbox_since(user, 0, 1000)] == list(
                range(1, count + 1))
            assert first.head(user) == count
        hub = first.inbox_since("hub", 0, 1000)
        for n in range(4):  # per-sender order kept in the recipient's inbox
            mine = [m["cmid"] for m in hub if m["from"] == f"w{n}"]
            assert mine == [f"{n}-{i}" for i in range(40)]
    finally:
        first.close()


def test_sqlite_every_query_uses_an_index(tmp_path):
    """Run the whole interface with SQL tracing, then EXPLAIN QUERY PLAN every statement:
    no full table scan and no sort outside an index."""
    s = SqliteStore(str(tmp_path / "plan.db"))
    s.migrate()
    # give the planner statistics that look like a real database
    s.store_messages([msg(f"u{i}", f"v{i}", cmid=f"c{i}") for i in range(200)])
    with s.autocommit("analyze") as cur:
        cur.execute("ANALYZE")
    statements = []
    s._conn.set_trace_callback(statements.append)
    try:
        s.create_user("alice", "h", "A", 1)
        s.get_user("alice")
        s.existing_users(["alice", "bob"])
        s.set_profile("alice", name="B", text="t")
        s.add_token("a" * 64, "alice", "d", 5)
        s.get_token("a" * 64)
        s.delete_token("a" * 64)
        s.purge_tokens(10)
        s.put_request("bob", "alice", "m", 1)
        s.get_request("bob", "alice")
        s.list_requests("alice")
        s.delete_request("bob", "alice")
        s.make_friends("alice", "bob", 2)
        s.are_friends("alice", "bob")
        s.list_friends("alice")
        s.remove_friends("alice", "bob")
        s.add_block("alice", "bob", 3)
        s.blocked_either("alice", "bob")
        s.list_blocked("alice")
        s.remove_block("alice", "bob")
        s.create_group("g1", "G", "alice", ["alice", "bob"], 4)
        s.get_group("g1")
        s.add_members("g1", ["carol"], 5)
        s.is_member("g1", "carol")
        s.list_members("g1")
        s.list_groups("alice")
        s.remove_member("g1", "carol")
        s.store_messages([msg("alice", "bob", cmid="x"), msg("bob", "alice")])
        s.store_messages([msg("alice", "bob")])
        s.get_dedup("alice", "x")
        s.purge_dedup(0)
        s.head("alice")
        s.inbox_since("alice", 0, 10)
        s.history("alice", "u:alice:bob", None, 10)
        s.history("alice", "u:alice:bob", 10 ** 6, 10)
        s.schema_version()
    finally:
        s._conn.set_trace_callback(None)
    checked = 0
    with s.autocommit("explain") as cur:
        for sql in statements:
            head = sql.split(None, 1)[0].upper()
            if head not in ("SELECT", "UPDATE", "DELETE", "INSERT"):
                continue
            plan = [r[-1] for r in cur.execute("EXPLAIN QUERY PLAN " + sql).fetchall()]
            checked += 1
            for step in plan:
                if step.startswith("SCAN") and "sqlite_master" not in sql:
                    # a scan is only acceptable over the constant VALUES list of an INSERT
                    assert "CONSTANT ROW" in step or head == "INSERT", (sql, plan)
                assert "TEMP B-TREE" not in step, (sql, plan)
    s.close()
    assert checked > 30
