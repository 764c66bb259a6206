"""The durable store, through the Store interface.

Every test that takes the ``store`` fixture runs against each engine in ENGINES: SQLite (a
file in tmp_path) and MySQL/MariaDB (the session's ``mysql_url`` database from
tests/conftest.py: the shared local server, or a private one started for the tests; its
rows are deleted before each test, its tables dropped when a test wants a database never
migrated).  Tests that need to reopen the same database use ``backend.open()``.
Engine-specific behaviour (SQLite pragmas, files, query plans; MySQL pool, reconnects,
collation, initdb, EXPLAIN plans, a private server stopped and restarted) is tested at the
end.
"""
import json
import os
import random
import re
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager

import pytest

import services
from imsrv.backends import mysql as mysql_engine
from imsrv.backends import mysql_messages
from imsrv.backends import open_store
from imsrv.backends import schema
from imsrv.backends.base import DeadlinePassed, DuplicateKey, Store, StoreError
from imsrv.backends.sqlite import SqliteStore

ENGINES = ["sqlite", "mysql"]
ALL_TABLES = ["schema_version", "users", "user_seq", "tokens", "friend_requests", "friends",
              "blocks", "groups_", "group_members", "messages", "inbox", "reactions", "conversations",
              "search_docs", "search_post", "search_state", "hook_queue",
              "group_event_queue"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mysql_reset(admin, drop=False):
    """Empty the test database cheaply through the store ``admin``: DELETE every row when
    it holds exactly the current schema (schema_version is kept), else (or if ``drop``)
    DROP every table in it."""
    with admin.autocommit("reset: list tables") as cur:
        cur.execute("SELECT table_name FROM information_schema.tables"
                    " WHERE table_schema = DATABASE()")
        tables = {r[0] for r in cur.fetchall()}
    if (not drop and tables == set(ALL_TABLES)
            and admin.schema_version() == schema.LATEST_VERSION):
        with admin.transaction("reset: delete rows") as cur:
            for t in ALL_TABLES[1:]:
                cur.execute(f"DELETE FROM {t}")
    elif tables:
        with admin.autocommit("reset: drop tables") as cur:
            cur.execute("DROP TABLE IF EXISTS " + ", ".join(sorted(tables)))


@pytest.fixture(scope="module")
def mysql_admin(mysql_url):
    """A store on the session's test database kept open for resets (connecting to the
    shared server takes ~30 ms)."""
    s = open_store(mysql_url, pool_size=1)
    yield s
    s.close()


class Backend:
    """Opens stores on one database for one test; closes them all at the end."""

    def __init__(self, engine, tmp_path, mysql_url=None, mysql_admin=None):
        self.engine = engine
        self.stores = []
        self.admin = mysql_admin
        if engine == "sqlite":
            self.url = f"sqlite:///{tmp_path / 'db' / 'imsrv.db'}"
        else:
            self.url = mysql_url

    def open(self, migrate=True, **options):
        if self.engine == "mysql" and not self.stores:
            # the first store of the test: a clean database (never migrated if asked so)
            mysql_reset(self.admin, drop=not migrate)
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
    if request.param == "mysql":
        b = Backend("mysql", tmp_path, request.getfixturevalue("mysql_url"),
                    request.getfixturevalue("mysql_admin"))
    else:
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


def test_failed_migration_is_not_recorded(backend):
    """A migration that fails is not recorded (it runs again next time); in SQLite, whose
    DDL is transactional, its half-done statements are rolled back too.  MySQL commits
    each DDL statement, so there the table of the first statement stays behind."""
    s = backend.open()
    bad = schema.Migration(schema.LATEST_VERSION + 1, "test: broken", [
        "CREATE TABLE zz_half (a INTEGER)",
        "THIS IS NOT SQL",
    ])
    with pytest.raises(StoreError, match="broken"):
        schema.migrate(s, schema.MIGRATIONS + [bad])
    assert s.schema_version() == schema.LATEST_VERSION
    with s.autocommit("check") as cur:
        if backend.engine == "sqlite":
            cur.execute("SELECT name FROM sqlite_master WHERE name = 'zz_half'")
            assert cur.fetchone() is None
        else:
            cur.execute("SHOW TABLES LIKE 'zz_half'")
            assert cur.fetchone() is not None
            cur.execute("DROP TABLE zz_half")


def test_migration_3_folds_the_dedup_table_into_messages(backend):
    """Version 3 on a version-2 database: sender_seq from the dedup record, else from the
    sender's inbox row, else 0; a (sender, cmid) stored twice (resent after its record was
    purged) keeps its cmid on the newest message only; the dedup table is dropped, and the
    dedup lookups and store_messages work on the result.  A version 3 that did not get
    recorded (MySQL commits DDL at once) runs again cleanly."""
    s = backend.open(migrate=False)
    schema.migrate(s, schema.MIGRATIONS[:2])
    assert s.schema_version() == 2
    r = s.dialect.render
    mids, seqs = [], {}

    def old_send(sender, to, cmid, ts, recipients, record=True):
        """One send as version 2's store_messages wrote it; ``record`` False: its dedup
        record purged since (dedup_ttl)."""
        conv = "u:%s:%s" % tuple(sorted((sender, to)))
        with s.transaction("v2 send") as cur:
            cur.execute(r("INSERT INTO messages (sender, to_user, grp, conv, body, ts, cmid)"
                          " VALUES (?, ?, ?, ?, ?, ?, ?)"), (sender, to, None, conv, '"b"', ts, cmid))
            mid = cur.lastrowid
            for user in recipients:
                seqs[user] = seqs.get(user, 0) + 1
                cur.execute(r("INSERT INTO inbox (user, seq, mid, conv) VALUES (?, ?, ?, ?)"),
                            (user, seqs[user], mid, conv))
            if cmid is not None and record:
                cur.execute(r("INSERT INTO dedup (sender, cmid, mid, seq, ts) VALUES (?, ?, ?, ?, ?)"),
                            (sender, cmid, mid, seqs.get(sender, 0), ts))
        mids.append(mid)

    old_send("alice", "bob", '"a1"', 100, ["alice", "bob"])                  # 0: a record
    old_send("alice", "bob", '"dup"', 200, ["alice", "bob"], record=False)   # 1: purged,
    old_send("alice", "bob", '"dup"', 300, ["alice", "bob"])                 # 2: resent
    old_send("bob", "alice", None, 400, ["bob", "alice"])                    # 3: no cmid
    old_send("system", "carol", None, 450, ["carol"])                        # 4: a notify
    old_send("carol", "alice", '"c1"', 500, ["carol", "alice"], record=False)  # 5
    old_send("dave", "bob", '"d1"', 600, ["dave", "bob"])                    # 6
    for ts in (700, 710, 720):                                               # 7, 8, 9
        old_send("erin", "bob", "!gw:k:0", ts, ["erin", "bob"], record=False)
    old_send("frank", "bob", '"f1"', 800, ["bob"])                           # 10: no copy
    with s.transaction("v2 counters; dave deleted (his inbox rows gone)") as cur:
        for user, seq in seqs.items():
            cur.execute(r("INSERT INTO user_seq (user, last_seq) VALUES (?, ?)"), (user, seq))
        cur.execute(r("DELETE FROM inbox WHERE user = ?"), ("dave",))

    def check():
        assert s.schema_version() == schema.LATEST_VERSION >= 3
        with s.autocommit("check") as cur:
            cur.execute(r(s.dialect.table_exists_sql), ("dedup",))
            assert cur.fetchone() is None
            cur.execute("SELECT mid, sender_seq, cmid FROM messages ORDER BY mid")
            rows = [tuple(row) for row in cur.fetchall()]
        assert rows == [
            (mids[0], 1, '"a1"'), (mids[1], 2, None), (mids[2], 3, '"dup"'), (mids[3], 4, None),
            (mids[4], 0, None), (mids[5], 2, '"c1"'), (mids[6], 1, '"d1"'),
            (mids[7], 1, None), (mids[8], 2, None), (mids[9], 3, "!gw:k:0"), (mids[10], 0, '"f1"')]
        assert s.get_dedup("alice", '"a1"') == {"mid": mids[0], "seq": 1, "ts": 100}
        assert s.get_dedup("alice", '"dup"', settled=True) == {"mid": mids[2], "seq": 3, "ts": 300}
        assert s.get_dedup("bob", '"dup"') is None
        assert s.get_dedups([("carol", '"c1"'), ("dave", '"d1"'), ("erin", "!gw:k:0"),
                             ("frank", '"f1"'), ("frank", '"nope"')]) == {
            ("carol", '"c1"'): {"mid": mids[5], "seq": 2, "ts": 500},
            ("dave", '"d1"'): {"mid": mids[6], "seq": 1, "ts": 600},
            ("erin", "!gw:k:0"): {"mid": mids[9], "seq": 3, "ts": 720},
            ("frank", '"f1"'): {"mid": mids[10], "seq": 0, "ts": 800}}
        # the older copy of a resend is still in the inboxes, its cmid gone
        assert [(m["mid"], m["cmid"]) for m in s.inbox_since("alice", 1, 2)] == [
            (mids[1], None), (mids[2], '"dup"')]

    s.migrate()
    check()
    with pytest.raises(DuplicateKey):
        s.store_messages([msg("bob", "alice", cmid='"new"'), msg("alice", "bob", cmid='"dup"')])
    [res] = s.store_messages([msg("alice", "bob", cmid='"a2"')])
    assert res["seqs"] == {"alice": 6, "bob": 10}
    assert s.get_dedup("alice", '"a2"') == {"mid": res["mid"], "seq": 6, "ts": 1000}
    with s.transaction("forget v3 (and any later version)") as cur:
        cur.execute(r("DELETE FROM messages WHERE mid = ?"), (res["mid"],))
        cur.execute(r("DELETE FROM schema_version WHERE version >= ?"), (3,))
    s.migrate()
    check()
    assert count_rows(s, "schema_version") == len(schema.MIGRATIONS)


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
                                       "text": "", "created": 1000, "deleted": 0, "avatar": None}
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


def test_head_if_token(store):
    """The head and the token check of an auth in one read: the head (0 for an empty
    inbox) while the token exists, None once it is gone."""
    h = "d" * 64
    store.add_token(h, "alice", "phone", 5000)
    assert store.head_if_token("alice", h) == 0
    store.store_messages([msg("bob", "alice"), msg("bob", "alice")])
    assert store.head_if_token("alice", h) == 2 == store.head("alice")
    assert store.head_if_token("alice", "e" * 64) is None
    store.delete_token(h)
    assert store.head_if_token("alice", h) is None


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
    assert store.list_friends("alice") == [{"user": "bob", "name": "Bob", "remark": None}]
    assert store.list_friends("bob") == [{"user": "alice", "name": "Alice", "remark": None}]


def test_list_friends_sorted_and_remove(store):
    for u in ("alice", "zed", "bob", "mike"):
        store.create_user(u, "h", u.upper(), 1)
    for u in ("zed", "bob", "mike"):
        store.make_friends("alice", u, 5)
    store.make_friends("bob", "mike", 5)
    assert store.list_friends("alice") == [{"user": "bob", "name": "BOB", "remark": None},
                                           {"user": "mike", "name": "MIKE", "remark": None},
                                           {"user": "zed", "name": "ZED", "remark": None}]
    assert [f["user"] for f in store.list_friends("mike")] == ["alice", "bob"]
    assert store.list_friends("nobody") == []
    assert store.remove_friends("mike", "alice") is True
    assert store.remove_friends("alice", "mike") is False
    assert not store.are_friends("alice", "mike") and not store.are_friends("mike", "alice")
    assert [f["user"] for f in store.list_friends("alice")] == ["bob", "zed"]
    assert [f["user"] for f in store.list_friends("mike")] == ["bob"]
    # a friend whose name changes is listed with the new name
    store.set_profile("zed", name="Zed!")
    assert store.list_friends("alice")[-1] == {"user": "zed", "name": "Zed!", "remark": None}


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
                "body": '{"t":"hi"}', "ts": 5000, "cmid": "c1", "kind": None, "ref": None, "reply_to": None,
                "mentions": None}
    assert store.inbox_since("bob", 0, 10) == [dict(expected, seq=1)]
    assert store.inbox_since("alice", 0, 10) == [dict(expected, seq=1)]
    assert store.get_dedup("alice", "c1") == {"mid": r["mid"], "seq": 1, "ts": 5000}
    assert store.get_dedup("bob", "c1") is None
    assert store.get_dedup("alice", "c2") is None


def test_store_messages_empty_batch(store):
    assert store.store_messages([]) == []


def test_deadline_passed_at_commit_rolls_back(store):
    """store_messages with a deadline behind it stores nothing (the forwarder's senders
    were answered unavailable), and the store keeps working."""
    store.store_messages([msg("alice", "bob", cmid="c0")])
    with pytest.raises(DeadlinePassed):
        store.store_messages([msg("alice", "bob", cmid="c1"), msg("carol", "bob")],
                             deadline=time.monotonic() - 1)
    assert store.head("bob") == 1 and store.head("carol") == 0
    assert store.get_dedup("alice", "c1") is None
    assert count_rows(store, "messages") == 1
    [r] = store.store_messages([msg("alice", "bob", cmid="c1")], deadline=time.monotonic() + 60)
    assert r["seqs"] == {"alice": 2, "bob": 2}


def test_settled_dedup_read_waits_for_an_open_writer(backend):
    """get_dedup(settled=True) is what a forwarder asks before answering `unavailable` for
    a send another forwarder may be committing: in MySQL it waits for that transaction
    (None would be a lie while its COMMIT is in flight).  SQLite has one writer at a time
    (the embedded server), so there it is a plain read."""
    s = backend.open()
    s.store_messages([msg("alice", "bob", cmid="c0")])
    assert s.get_dedup("alice", "c0", settled=True)["seq"] == 1
    if backend.engine == "sqlite":
        assert s.get_dedup("alice", "c1", settled=True) is None
        return
    writer = backend.open()
    got = []
    with writer.transaction("a forwarder's batch, not committed yet") as cur:
        # the message row is the dedup record (schema version 3)
        cur.execute("INSERT INTO messages (sender, to_user, grp, conv, body, ts, cmid, sender_seq)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    ("alice", "bob", None, "u:alice:bob", '"x"', 5000, "c1", 7))
        mid = cur.lastrowid
        reader = threading.Thread(target=lambda: got.append(s.get_dedup("alice", "c1", settled=True)))
        reader.start()
        reader.join(0.5)   # an absence check: the read must still be waiting
        assert reader.is_alive() and not got
    reader.join(10)        # the COMMIT (end of the with block) lets it through
    assert got == [{"mid": mid, "seq": 7, "ts": 5000}]
    assert s.get_dedup("alice", "c2", settled=True) is None


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


# ---------------------------------------------------------------- entries with a kind (v1.1)
def change(kind, sender, to, ref, ts, body="null", cmid=None, reaction=None, recipients=None):
    """A recall / edit / reaction store item about message ``ref`` of the 1:1 conversation
    of ``sender`` and ``to``."""
    item = msg(sender, to, body=body, ts=ts, cmid=cmid, recipients=recipients)
    item.update(kind=kind, ref=ref)
    if reaction is not None:
        item["reaction"] = reaction
    return item


def test_entries_with_a_kind_and_the_state_they_change(store):
    first = msg("alice", "bob", body='"hi"')
    first.update(mentions=None, reply_to=None, kind=None, ref=None)
    [m] = store.store_messages([first, msg("alice", "carol")])[:1]
    mid = m["mid"]
    reply = msg("bob", "alice", body='"re"', ts=1001)
    reply.update(reply_to=mid, mentions=["alice"])
    got = store.store_messages([
        reply,
        change("edit", "alice", "bob", mid, 1002, body='"hello"'),
        change("reaction", "bob", "alice", mid, 1003, body='{"emoji":"+1","on":true}', reaction=("+1", True)),
        change("reaction", "alice", "bob", mid, 1004, body='{"emoji":"+1","on":true}', reaction=("+1", True)),
        change("reaction", "bob", "alice", mid, 1005, body='{"emoji":"+1","on":true}', reaction=("+1", True)),
        change("reaction", "bob", "alice", mid, 1006, body='{"emoji":"x","on":true}', reaction=("x", True)),
        change("reaction", "alice", "bob", mid, 1007, body='{"emoji":"x","on":true}', reaction=("x", True)),
        change("reaction", "bob", "alice", mid, 1008, body='{"emoji":"x","on":false}', reaction=("x", False)),
    ])
    recs = store.inbox_since("bob", 1, 100)
    assert [(r["kind"], r["ref"]) for r in recs] == [(None, None), ("edit", mid)] + [("reaction", mid)] * 6
    assert (recs[0]["reply_to"], json.loads(recs[0]["mentions"])) == (mid, ["alice"])
    assert recs[1]["body"] == '"hello"' and recs[0]["mid"] == got[0]["mid"]
    h = store.history("bob", "u:alice:bob", None, 10)
    assert [r["mid"] for r in h] == [got[0]["mid"], mid]     # no change entries
    assert (h[1]["body"], h[1]["edited"], h[1]["edited_body"], h[1]["recalled"]) == ('"hi"', 1002, '"hello"', 0)
    # +1: bob first (his second "on" kept his first reaction), then alice; x: alice only
    assert h[1]["reactions"] == {"+1": ["bob", "alice"], "x": ["alice"]}
    # reactions of one millisecond, in two batches: listed in the order they were stored
    # (the entries' mids), not by name
    for who, other in (("bob", "alice"), ("alice", "bob")):
        store.store_messages([change("reaction", who, other, mid, 1009, body='{"emoji":"y","on":true}',
                                     reaction=("y", True))])
    assert store.history("bob", "u:alice:bob", None, 10)[1]["reactions"]["y"] == ["bob", "alice"]
    assert h[0]["reactions"] is None and h[0]["reply_to"] == mid and h[0]["kind"] is None
    store.store_messages([change("recall", "alice", "bob", mid, 1010, cmid="r")])
    h = store.history("alice", "u:alice:bob", None, 10)
    assert h[1]["recalled"] == 1010 and h[1]["reactions"] is None
    assert store.get_dedup("alice", "r")["seq"] == store.head("alice")


def test_a_failed_batch_changes_no_state(store):
    [m] = store.store_messages([msg("alice", "bob", cmid="c")])
    with pytest.raises(DuplicateKey):
        store.store_messages([change("recall", "alice", "bob", m["mid"], 1001),
                              change("reaction", "bob", "alice", m["mid"], 1002, reaction=("+1", True)),
                              msg("alice", "bob", cmid="c")])
    [h] = store.history("bob", "u:alice:bob", None, 10)
    assert (h["recalled"], h["edited"], h["reactions"]) == (0, 0, None)
    assert store.head("bob") == 1


def test_held_messages_only_from_the_users_inbox(store):
    one, grp = store.store_messages([msg("alice", "bob"), msg("carol", group="g", recipients=["carol", "bob"])])
    store.store_messages([change("recall", "alice", "bob", one["mid"], 1001)])
    held = store.held_messages([("bob", one["mid"]), ("carol", one["mid"]), ("bob", grp["mid"]),
                                ("alice", grp["mid"]), ("bob", 10 ** 9), ("bob", one["mid"])])
    assert set(held) == {("bob", one["mid"]), ("bob", grp["mid"])}
    assert held[("bob", one["mid"])] == {"mid": one["mid"], "from": "alice", "to": "bob", "group": None,
                                         "conv": "u:alice:bob", "ts": 1000, "kind": None, "recalled": 1001,
                                         "edited": 0}
    assert held[("bob", grp["mid"])]["group"] == "g" and held[("bob", grp["mid"])]["conv"] == "g:g"
    assert store.held_messages([]) == {}


def test_group_states(store):
    store.create_group("g1", "G", "alice", ["alice", "bob", "carol"], 1)
    store.create_group("g2", "H", "bob", ["bob"], 1)
    states = store.group_states(["g1", "g2", "nope"])
    assert set(states) == {"g1", "g2"}
    g1 = states["g1"]
    assert (g1["owner"], g1["muted_all"], g1["dissolved"], g1["list"]) == ("alice", 0, 0, ["alice", "bob", "carol"])
    assert g1["members"] == {"alice": ("owner", 0), "bob": ("member", 0), "carol": ("member", 0)}
    with store.transaction("test: mute") as cur:
        cur.execute(store.dialect.render("UPDATE group_members SET muted_until = ? WHERE grp = ? AND user = ?"),
                    (-1, "g1", "bob"))
        cur.execute(store.dialect.render("UPDATE groups_ SET muted_all = ?, dissolved = ? WHERE grp = ?"),
                    (5, 6, "g1"))
    g1 = store.group_states(["g1"])["g1"]
    assert (g1["members"]["bob"], g1["muted_all"], g1["dissolved"]) == (("member", -1), 5, 6)


def test_head_and_oldest(store):
    assert store.head_and_oldest("bob") == (0, 0)
    store.store_messages([msg("alice", "bob"), msg("alice", "bob")])
    assert store.head_and_oldest("bob") == (2, 1)


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
        # 10000 pages; 0 (off) with a writer thread, whose checkpointer thread checkpoints
        expected = 0 if sqlite_store.writer_thread else 10000
        assert cur.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == expected


@pytest.mark.parametrize("mode,value", [("NORMAL", 1), ("full", 2), ("OFF", 0), ("EXTRA", 3)])
def test_sqlite_synchronous_option(tmp_path, mode, value):
    s = open_store(f"sqlite:///{tmp_path}/x.db", synchronous=mode, busy_timeout=250,
                   wal_autocheckpoint=77)
    try:
        assert s.synchronous == mode.upper()
        with s.autocommit("pragma") as cur:
            assert cur.execute("PRAGMA synchronous").fetchone()[0] == value
            assert cur.execute("PRAGMA busy_timeout").fetchone()[0] == 250
            assert cur.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == (0 if s.writer_thread else 77)
    finally:
        s.close()


def test_sqlite_bad_options(tmp_path):
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore(str(tmp_path / "x.db"), synchronous="FULL; DROP TABLE users")
    with pytest.raises(ValueError, match="busy_timeout"):
        SqliteStore(str(tmp_path / "x.db"), busy_timeout=-1)
    with pytest.raises(ValueError, match="wal_autocheckpoint must be >= 0, not -5"):
        SqliteStore(str(tmp_path / "x.db"), wal_autocheckpoint=-5)
    with pytest.raises(ValueError, match="checkpoint_interval must be > 0 seconds, not 0.0"):
        SqliteStore(str(tmp_path / "x.db"), checkpoint_interval=0)
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


def run_the_whole_interface(s):
    """Call every method of the store interface once (the plan check here, the writer
    thread's trace in tests/test_sqlite_writer.py)."""
    s.create_user("alice", "h", "A", 1)
    s.create_user("bob", "h", "B", 1)
    s.get_user("alice")
    s.existing_users(["alice", "bob"])
    s.set_profile("alice", name="B", text="t")
    s.add_token("a" * 64, "alice", "d", 5)
    s.add_token("b" * 64, "alice", "d", 5, pw_hash="h")
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
    s.relations([("alice", "bob")])
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
    s.get_dedups([("alice", "x"), ("bob", "y")])
    s.head("alice")
    s.head_if_token("alice", "b" * 64)
    s.inbox_since("alice", 0, 10)
    s.history("alice", "u:alice:bob", None, 10)
    s.history("alice", "u:alice:bob", 10 ** 6, 10)
    run_the_groups_interface(s)
    run_the_entries_interface(s)
    run_the_conversations_interface(s)
    run_the_search_interface(s)
    s.add_login_token("t-admin", "alice", "d", 10 ** 12, "h", 1)      # the admin ops' methods
    s.ban_user("alice", -1, "spam")
    s.get_ban("alice", 1)
    s.unban_user("alice", 1)
    s.list_users("a", None, 10, 1)
    s.count_messages_since(0)   # count_users walks the users on purpose: test_store_admin.py
    s.set_password("bob", "h", "h2")
    s.delete_user("bob", "h2", 6)
    s.migrate()
    s.schema_version()


def run_the_groups_interface(s):
    """The v1.1 groups-with-roles part of the interface (on group g1 of alice and bob)."""
    s.group_info("g1")
    s.invite_members("g1", ["carol"], 5, max_members=10)
    s.get_members("g1", ["alice", "carol"])
    s.list_member_details("g1")
    s.set_member_role("g1", "carol", "admin")
    s.mute_member("g1", "carol", 10 ** 13, ("admin", "member"))
    s.set_muted_all("g1", -1)
    s.set_muted_all("g1", 0)
    s.update_group("g1", name="G2", notice="n")
    s.transfer_group("g1", "alice", "carol")
    s.transfer_group("g1", "carol", "alice")
    s.remove_member("g1", "carol")
    s.create_group("g2", "G", "alice", ["alice"], 5)
    s.dissolve_group("g2", "alice", 6)
    # the group event outbox: the writes with their queue row (one transaction each)
    ev = ("alice", None, [{"event": "x", "by": "alice"}])
    s.create_group("g3", "G", "alice", ["alice", "bob"], 7, events=ev)
    s.invite_members("g3", ["carol"], 8, max_members=10, events=ev)
    s.set_member_role("g3", "carol", "admin", events=ev)
    s.mute_member("g3", "carol", -1, ("admin",), events=ev)
    s.set_muted_all("g3", -1, events=ev)
    s.update_group("g3", notice="n", events=ev)
    s.remove_member("g3", "carol", roles=("admin",), events=ev)
    s.transfer_group("g3", "alice", "bob", events=ev)
    s.dissolve_group("g3", "bob", 9, events=ev)
    s.create_user("gina", "h", "G", 1)
    s.create_group("g4", "G", "alice", ["alice", "gina"], 9)
    assert s.delete_user("gina", "h", 10, group_events=lambda grp, heir: ev[2])["events"]
    s.delete_group_events([r["id"] for r in s.take_group_events(100)])


def run_the_conversations_interface(s):
    """The v1.1 conversations part of the interface (after messages between alice and bob)."""
    conv = "u:alice:bob"
    s.list_conversations("bob")
    s.list_conversations("bob", before_ts=10 ** 13, limit=5)
    s.get_conversation("bob", conv)
    s.mark_read("bob", conv, s.head("bob"), peer="alice")
    s.set_muted("bob", conv, "alice", None, -1)
    s.muted_conversations([("bob", conv), ("alice", conv)], 0)
    s.unread_totals(["alice", "bob"])


def run_the_entries_interface(s):
    """The v1.1 entries' part of the interface: the send path's lookups, the state changes,
    sync's oldest and a history with reactions."""
    mid = s.inbox_since("alice", 0, 1)[0]["mid"]
    s.held_messages([("alice", mid), ("bob", mid)])
    s.group_states(["g1", "g0"])
    s.head_and_oldest("alice")
    s.store_messages([change("edit", "alice", "bob", mid, 7, body='"e"'),
                      change("reaction", "bob", "alice", mid, 8, reaction=("+1", True)),
                      change("reaction", "alice", "bob", mid, 8, reaction=("x", True)),
                      change("reaction", "alice", "bob", mid, 9, reaction=("x", False))])
    s.history("bob", "u:alice:bob", None, 10)   # with the reactions of the message
    s.store_messages([change("recall", "alice", "bob", mid, 10)])


def run_the_search_interface(s):
    """Remarks, avatars, the search index and the retention purge (test_store_search.py
    tests what they do)."""
    s.make_friends("alice", "bob", 9)
    s.set_remark("alice", "bob", "r")
    s.set_profile("alice", avatar="https://h/a.png")
    s.store_messages([msg("bob", group="g1", recipients=["alice", "bob"], body='{"text": "hello"}')])
    s.search_position()
    rows = s.search_sources(after=0, limit=100)
    s.search_sources(mids=[rows[0]["mid"], rows[-1]["mid"]])
    doc = "wabcdefghij waaaaaaaaaa pbbbbbbbbbb cgggggggggg"
    s.search_apply({r["mid"]: doc for r in rows}, [rows[0]["mid"]], rows[-1]["mid"])
    s.search_apply({rows[-1]["mid"]: "wabcdefghij pbbbbbbbbbb"}, [], rows[-1]["mid"])   # a replacement
    s.inbox_group_convs("alice")
    s.search("alice", ["wabcdefghij"], ["pbbbbbbbbbb"])
    s.search("alice", ["wabcdefghij", "waaaaaaaaaa"], ["pbbbbbbbbbb", "cgggggggggg"], before=10 ** 6, limit=5)
    s.search("alice", ["wabcdefghij"], ["cgggggggggg"], conv="g:g1")
    s.purge_messages(10 ** 15, 2)


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
        run_the_whole_interface(s)
    finally:
        s._conn.set_trace_callback(None)
    check_sqlite_plans(s, statements)


# the dedup lookups (get_dedup, get_dedups): the only reads of messages by its own columns
DEDUP_LOOKUP = "FROM messages WHERE"


def check_sqlite_plans(s, statements, least=31, dedup_least=2):
    """EXPLAIN QUERY PLAN every SELECT, UPDATE, DELETE and INSERT of ``statements`` on
    SQLite store ``s`` (then closed): no full table scan, no sort outside an index; the
    dedup lookups search the unique index messages_dedup.  At least ``least`` statements
    and ``dedup_least`` dedup lookups must have been checked."""
    checked = dedup_lookups = 0
    with s.autocommit("explain") as cur:
        for sql in statements:
            if not isinstance(sql, str):  # executemany builds bytes
                sql = bytes(sql).decode()
            head = sql.split(None, 1)[0].upper()
            if head not in ("SELECT", "UPDATE", "DELETE", "INSERT") or "'main'." in sql:
                continue   # ('main'.: FTS5's own statements on its shadow tables)
            plan = [r[-1] for r in cur.execute("EXPLAIN QUERY PLAN " + sql).fetchall()]
            checked += 1
            for step in plan:
                if step.startswith("SCAN") and "sqlite_master" not in sql:
                    # a scan is only acceptable over the constant VALUES list of an INSERT,
                    # or a virtual table's (FTS5) own index with a constraint ("INDEX 0:<",
                    # "INDEX 192:M1", not a bare "INDEX 0:")
                    assert ("CONSTANT ROW" in step or head == "INSERT"
                            or re.search(r"VIRTUAL TABLE INDEX \d+:\S", step)), (sql, plan)
                # the one sort: a user's conversations by activity (no index on it, on
                # purpose: schema version 4)
                assert "TEMP B-TREE" not in step or "ORDER BY c.last_ts" in sql, (sql, plan)
            if DEDUP_LOOKUP in sql and "cmid" in sql:   # (other reads of messages by mid too)
                searches = [step for step in plan if step.startswith("SEARCH")]
                assert searches and all("USING INDEX messages_dedup (sender=? AND cmid=?)" in step
                                        for step in searches), (sql, plan)
                dedup_lookups += 1
    s.close()
    assert checked >= least and dedup_lookups >= dedup_least, statements


# ============================================================================ MySQL engine


@pytest.fixture
def mysql_backend(tmp_path, mysql_url, mysql_admin):
    b = Backend("mysql", tmp_path, mysql_url, mysql_admin)
    yield b
    b.close()


@pytest.fixture
def mysql_store(mysql_backend):
    return mysql_backend.open()


def server_of(url):
    return url.rsplit("/", 1)[0]


def test_mysql_urls_and_options():
    # nothing connects until the first call, so any address will do here
    s = open_store("mysql://imsrv:s%40cr%3At@db.example/im_db")
    assert isinstance(s, mysql_engine.MysqlStore)
    assert (s.host, s.port, s.user, s._password, s.database) == (
        "db.example", 3306, "imsrv", "s@cr:t", "im_db")
    assert s.url == "mysql://imsrv@db.example:3306/im_db"  # no password, port spelled out
    assert s.settings["pool_size"] == 8 and s.settings["connect_timeout"] == 5.0
    assert s.settings["read_timeout"] == s.settings["write_timeout"] == 30.0
    s = open_store("MySQL+PyMySQL://bob@10.0.0.7:3307/x?charset=utf8mb4&pool_size=3"
                   "&read_timeout=2.5", pool_size=4)
    assert (s.host, s.port, s._password, s.settings["read_timeout"]) == (
        "10.0.0.7", 3307, "", 2.5)
    assert s.settings["pool_size"] == 4  # keyword arguments win over the URL
    s = open_store("mysql://u:p@[::1]:3310/d%2Dx")
    assert (s.host, s.port, s.database) == ("::1", 3310, "d-x")
    for bad in ["mysql://u:s3cret@h/", "mysql://u:s3cret@/db", "mysql://u:s3cret@h:99999/db",
                "mysql://u:s3cret@h/db?pool=3", "mysql://u:s3cret@h/db?charset=latin1",
                "mysql://u:s3cret@h/db?pool_size=0", "mysql://u:s3cret@h/db?read_timeout=soon",
                "mysql://u:s3cret@h/db`; DROP DATABASE x"]:
        with pytest.raises(ValueError) as info:
            open_store(bad)
        assert "s3cret" not in str(info.value), bad
    with pytest.raises(TypeError, match="no_such_option"):
        open_store("mysql://u@h/db", no_such_option=1)
    with pytest.raises(ValueError) as info:
        open_store("mysql://bob:s3cret@db.example:3306/im?bogus=1")
    assert "s3cret" not in str(info.value) and "db.example" in str(info.value)


def test_mysql_unreachable_server_is_a_quick_store_error():
    port = services.free_port()  # nothing listens there
    s = open_store(f"mysql://root:pw@127.0.0.1:{port}/imsrv", connect_timeout=2)
    t0 = time.monotonic()
    for call in (lambda: s.get_user("alice"), lambda: s.store_messages([msg("a", "b")]),
                 s.migrate):
        with pytest.raises(StoreError, match=f"127.0.0.1:{port}/imsrv") as info:
            call()
        assert "pw" not in str(info.value)
        assert not isinstance(info.value, DuplicateKey)
    with pytest.raises(StoreError, match=f"127.0.0.1:{port}/imsrv"):
        mysql_engine.initdb(f"mysql://root@127.0.0.1:{port}/imsrv")
    assert time.monotonic() - t0 < 5
    assert s.pool.idle() == 0
    s.close()


def test_mysql_utf8mb4_and_exact_names(mysql_store):
    s = mysql_store
    emoji_user, name = "🦄zoë", "Zoë 🦄 \U0001F9D1\u200D\U0001F680 𝕏"
    s.create_user(emoji_user, "h", name, 1)
    assert s.get_user(emoji_user)["name"] == name
    # exact: case, accents and trailing spaces make different keys
    for u in ("bob", "Bob", "BOB", "zoe", "zoé", "zoe "):
        s.create_user(u, "h", u, 1)
    assert s.get_user("bob")["name"] == "bob" and s.get_user("Bob")["name"] == "Bob"
    assert s.get_user("zoe ")["name"] == "zoe " and s.get_user("zoe")["name"] == "zoe"
    assert s.existing_users(["BOB", "zoé", "Zoé", "zoe  "]) == {"BOB", "zoé"}
    body = json.dumps({"text": "🎉 \U0001F600 \U00010348"}, ensure_ascii=False)
    res = s.store_messages([msg(emoji_user, "bob", body=body, cmid="x"),
                            msg(emoji_user, "bob", body=body, cmid="x "),
                            msg(emoji_user, "bob", body=body, cmid="X")])
    assert [m["body"] for m in s.inbox_since("bob", 0, 10)] == [body] * 3
    assert s.get_dedup(emoji_user, "x ")["mid"] == res[1]["mid"]
    s.create_group("g🦄", "Ünïcode 🦄", emoji_user, [emoji_user, "bob"], 1)
    assert s.list_groups("bob") == [{"group": "g🦄", "name": "Ünïcode 🦄"}]
    # binary order (code points), as in SQLite
    for u in ("b", "B", "é", "🦄", "a"):
        s.make_friends("me", u, 1)
    assert [f["user"] for f in s.list_friends("me")] == ["B", "a", "b", "é", "🦄"]
    with s.autocommit("charset") as cur:
        cur.execute("SELECT @@character_set_connection, @@character_set_results")
        assert cur.fetchone() == ("utf8mb4", "utf8mb4")
        cur.execute("SELECT table_name, column_name, character_set_name, collation_name"
                    " FROM information_schema.columns WHERE table_schema = DATABASE()"
                    " AND character_set_name IS NOT NULL")
        cols = cur.fetchall()
        cur.execute("SELECT table_name, engine, table_collation FROM information_schema.tables"
                    " WHERE table_schema = DATABASE()")
        tables = cur.fetchall()
    assert len(cols) > 20
    for table, column, charset, collation in cols:
        assert charset == "utf8mb4" and collation in mysql_engine.COLLATIONS, (table, column)
    assert {t[0] for t in tables} == set(ALL_TABLES)
    assert {(t[1], t[2]) for t in tables} == {("InnoDB", cols[0][3])}
    # strict mode: too long is an error, never a silent cut; NOT NULL is no duplicate
    with pytest.raises(StoreError, match="too long") as info:
        s.create_user("x" * 65, "h", "X", 1)
    assert not isinstance(info.value, DuplicateKey)
    assert s.get_user("x" * 64) is None
    with pytest.raises(StoreError) as info:
        s.create_user("nullpw", None, "N", 1)
    assert not isinstance(info.value, DuplicateKey)


def test_mysql_pool_replaces_a_killed_connection(mysql_store, mysql_admin):
    s = mysql_store
    s.create_user("alice", "h", "A", 1)

    def conn_id():
        with s.autocommit("id") as cur:
            cur.execute("SELECT CONNECTION_ID()")
            return cur.fetchone()[0]

    first = conn_id()
    assert conn_id() == first  # reused
    opened = s.pool.opened
    [idle] = s.pool._idle
    with mysql_admin.autocommit("kill") as cur:
        cur.execute("KILL %s", (first,))
    # wait for the server's FIN: the idle connection's socket becomes readable (EOF)
    assert select.select([idle._sock], [], [], 10)[0], "the killed connection saw no EOF"
    # the idle connection is found dead before use (its socket reads EOF): the next call
    # just works, on a new connection
    assert s.get_user("alice")["name"] == "A"
    assert s.pool.opened == opened + 1
    second = conn_id()
    assert second != first
    # killed in the middle of a transaction: StoreError, nothing committed, connection
    # discarded, the next call reconnects
    with pytest.raises(StoreError, match=r"127\.0\.0\.1|localhost|:\d+/"):
        with s.transaction("doomed") as cur:
            cur.execute("INSERT INTO users (user, pw_hash, name, text, created)"
                        " VALUES ('bob', 'h', 'B', '', 1)")
            with mysql_admin.autocommit("kill") as admin_cur:
                admin_cur.execute("KILL %s", (second,))
            cur.execute("SELECT 1")
    assert s.get_user("bob") is None
    assert s.get_user("alice")["name"] == "A"
    assert conn_id() not in (first, second)


def test_mysql_error_inside_transaction_rolls_back_and_pool_survives(mysql_store):
    s = mysql_store
    with pytest.raises(RuntimeError):
        with s.transaction("app error") as cur:
            cur.execute("INSERT INTO users (user, pw_hash, name, text, created)"
                        " VALUES ('bob', 'h', 'B', '', 1)")
            raise RuntimeError("boom")
    assert s.get_user("bob") is None
    s.create_group("g", "G", "a", ["a"], 1)
    with pytest.raises(DuplicateKey):
        s.create_group("g", "G", "a", ["a"], 1)
    with pytest.raises(StoreError, match="doesn't exist"):
        s._run("bad table", "SELECT * FROM no_such_table")
    assert s.list_members("g") == ["a"]
    assert s.pool.idle() >= 1


def test_mysql_pool_is_bounded_and_shared_by_threads(mysql_backend):
    s = mysql_backend.open(pool_size=2, pool_timeout=5)
    errors, t0 = [], time.monotonic()

    def sleeper():
        try:
            with s.autocommit("sleep") as cur:
                cur.execute("SELECT SLEEP(0.25)")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sleeper) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    assert errors == []
    assert s.pool.opened <= 2 and s.pool.idle() <= 2
    assert 0.7 < elapsed < 5  # 6 sleeps of 0.25 s, two at a time
    # all connections busy for longer than pool_timeout: StoreError, not a hang
    t = mysql_backend.open(pool_size=1, pool_timeout=0.3)
    held, release = threading.Event(), threading.Event()

    def hold():
        with t.autocommit("hold"):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)  # the one connection is checked out
    with pytest.raises(StoreError, match="busy"):
        t.get_user("alice")
    release.set()
    holder.join()
    assert t.get_user("alice") is None


def test_mysql_lock_wait_timeout_is_retried(mysql_backend):
    s = mysql_backend.open(lock_wait_timeout=1, retries=3)
    s.store_messages([msg("alice", "bob")])
    other = mysql_backend.open()

    def hold_bob(seconds, locked):
        with other.transaction("hold bob") as cur:
            cur.execute("SELECT last_seq FROM user_seq WHERE user = %s FOR UPDATE", ("bob",))
            locked.set()
            time.sleep(seconds)  # the fault's duration: hold the lock past lock_wait_timeout

    locked = threading.Event()
    holder = threading.Thread(target=hold_bob, args=(1.3, locked))
    holder.start()
    assert locked.wait(5)
    t0 = time.monotonic()
    res = s.store_messages([msg("alice", "bob", cmid="c2")])  # waits, times out, retries
    assert time.monotonic() - t0 >= 1.0
    holder.join()
    assert res[0]["seqs"] == {"alice": 2, "bob": 2}
    # no retries left: a lock wait timeout becomes StoreError and nothing is stored
    impatient = mysql_backend.open(lock_wait_timeout=1, retries=0)
    locked = threading.Event()
    holder = threading.Thread(target=hold_bob, args=(1.3, locked))
    holder.start()
    assert locked.wait(5)
    with pytest.raises(StoreError, match="gave up after 1 attempts") as info:
        impatient.store_messages([msg("alice", "bob", cmid="c3")])
    assert "1205" in str(info.value)
    holder.join()
    assert s.head("bob") == 2 and s.get_dedup("alice", "c3") is None


def test_mysql_batches_of_other_users_do_not_wait_for_each_other(mysql_backend):
    """Two forwarders' batches that share no users never wait for each other's counters,
    even when each covers half of a small user_seq table (a locking read of that many rows
    is run as a scan that locks every row: the forwarders then took turns)."""
    s = mysql_backend.open(lock_wait_timeout=1, retries=0)
    users = [f"u{i:02d}" for i in range(40)]
    s.store_messages([msg(u, u, recipients=[u]) for u in users])   # every counter row exists
    other = mysql_backend.open()
    locked, release = threading.Event(), threading.Event()

    def hold_half():
        half = users[0::2]
        try:
            with other.transaction("hold half") as cur:
                assert other._take_seqs(cur, half, dict.fromkeys(half, 1)) == dict.fromkeys(half, 1)
                locked.set()
                release.wait(10)
                raise LookupError("roll back")
        except LookupError:
            pass

    holder = threading.Thread(target=hold_half)
    holder.start()
    try:
        assert locked.wait(5)
        t0 = time.monotonic()
        res = s.store_messages([msg(u, u, recipients=[u], cmid="c") for u in users[1::2]])
        assert time.monotonic() - t0 < 1.0
        assert [r["seqs"] for r in res] == [{u: 2} for u in users[1::2]]
    finally:
        release.set()
        holder.join()
    assert s.head("u00") == 1 and s.head("u01") == 2   # the holder rolled back


def test_mysql_cursor_binds_what_pymysql_binds(mysql_store):
    """FastCursor's literals read back as the values bound, in one statement and split
    over several (max_stmt_length), str, int, None and other types alike."""
    from imsrv.backends.mysql_cursor import FastCursor

    texts = ["plain", 'dq"', "sq'", "bs\\", "nl\n cr\r", "nul\x00", "sub\x1a", "", "é€🦄",
             "'; DROP TABLE users; --", "\\'", json.dumps({"t": 'a"b\\c'})]
    rows = [(i, t, -(10 ** 15) if i % 2 else None) for i, t in enumerate(texts)]
    with mysql_store.autocommit("cursor") as cur:
        assert isinstance(cur, FastCursor)
        cur.execute("CREATE TEMPORARY TABLE bind_check (id INT PRIMARY KEY, t TEXT, n BIGINT)")
        for max_len in (1024000, 80):
            cur.max_stmt_length = max_len
            assert cur.executemany("INSERT INTO bind_check (id, t, n) VALUES (%s, %s, %s)", rows) == len(rows)
            cur.execute("SELECT id, t, n FROM bind_check ORDER BY id")
            assert [tuple(r) for r in cur.fetchall()] == rows
            cur.execute("DELETE FROM bind_check")
        cur.execute("SELECT %s, %s, %s", (1.5, True, b"\x00'"))
        assert cur.fetchone() == (1.5, 1, b"\x00'")


@pytest.mark.parametrize("strategy", ["multirow", "returning", "single"])
def test_mysql_mid_strategies(mysql_store, monkeypatch, strategy):
    s = mysql_store
    s._mid_strategy = strategy
    monkeypatch.setattr(mysql_messages, "_MAX_ROWS_PER_INSERT", 3)  # several INSERTs
    s.store_messages([msg("zed", "amy")])
    batch = [msg(f"u{i % 3}", "bob", body=json.dumps({"n": i}), cmid=f"c{i}")
             for i in range(8)]
    res = s.store_messages(batch)
    mids = [r["mid"] for r in res]
    assert mids == sorted(mids) and len(set(mids)) == 8
    by_mid = {m["mid"]: m for m in s.inbox_since("bob", 0, 100)}
    for item, r in zip(batch, res):
        rec = by_mid[r["mid"]]
        assert (rec["body"], rec["from"], rec["cmid"]) == (item["body"], item["sender"],
                                                         item["cmid"])
        assert s.get_dedup(item["sender"], item["cmid"]) == {
            "mid": r["mid"], "seq": r["seqs"][item["sender"]], "ts": 1000}
    # a stored (sender, cmid) inside a multi-row INSERT fails the whole batch
    with pytest.raises(DuplicateKey):
        s.store_messages([msg("u9", "bob", cmid="n1"), msg("u1", "bob", cmid="c4"),
                          msg("u9", "bob", cmid="n2")])
    assert s.get_dedup("u9", "n1") is None and s.head("bob") == 8 and s.head("u9") == 0
    # rows of 8 and of 12 columns (v1.1 fields) in the same statements
    mixed = [msg("u1", "bob", body=json.dumps({"m": i})) for i in range(7)]
    for i in (1, 5):
        mixed[i].update(reply_to=res[0]["mid"], mentions=["bob"])
    mixed[3].update(kind="edit", ref=res[0]["mid"])
    got = s.store_messages(mixed)
    recs = {m["mid"]: m for m in s.inbox_since("bob", 8, 100)}
    assert [recs[r["mid"]]["body"] for r in got] == [item["body"] for item in mixed]
    assert [(recs[r["mid"]]["reply_to"], recs[r["mid"]]["kind"]) for r in got] == [
        (None, None), (res[0]["mid"], None), (None, None), (None, "edit"), (None, None),
        (res[0]["mid"], None), (None, None)]
    assert recs[got[5]["mid"]]["mentions"] == '["bob"]'
    assert s.history("bob", "u:bob:u0", None, 10)[-1]["edited_body"] == json.dumps({"m": 3})


def test_mysql_autoinc_assumption_holds(mysql_store):
    """The multi-row strategy relies on innodb_autoinc_lock_mode 0/1 (consecutive values
    per statement); this server must either guarantee that or use another strategy."""
    with mysql_store.autocommit("vars") as cur:
        cur.execute("SELECT @@innodb_autoinc_lock_mode, VERSION()")
        mode, version = cur.fetchone()
        conn = cur.connection
    expected = ("multirow" if mode in (0, 1) else
                "returning" if mysql_engine._mariadb_at_least(version, (10, 5)) else "single")
    assert conn.imsrv_mids == expected


def test_mysql_concurrent_writers_keep_seqs_gapless(mysql_backend):
    """Threads sharing one pooled store and another store, writing at once to shared
    inboxes and to users who get their first message concurrently."""
    shared = mysql_backend.open(pool_size=4)
    second = mysql_backend.open(pool_size=2)
    errors, rounds, writers = [], 25, 6

    def writer(n):
        s = shared if n % 2 else second
        try:
            for i in range(rounds):
                s.store_messages([msg(f"w{n}", "hub", cmid=f"{n}-{i}"),
                                  msg(f"w{n}", "hub2", recipients=["hub2"]),
                                  msg(f"w{n}", f"fresh{i}", recipients=[f"fresh{i}"])])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    total = writers * rounds
    for user, count in (("hub", total), ("hub2", total), ("w0", rounds),
                        ("fresh0", writers), ("fresh24", writers)):
        assert [m["seq"] for m in shared.inbox_since(user, 0, 1000)] == list(
            range(1, count + 1)), user
        assert shared.head(user) == count
    hub = shared.inbox_since("hub", 0, 1000)
    for n in range(writers):
        assert [m["cmid"] for m in hub if m["from"] == f"w{n}"] == [
            f"{n}-{i}" for i in range(rounds)]
    assert shared.pool.opened <= 4 and second.pool.opened <= 2


def test_mysql_concurrent_migrations(mysql_backend):
    mysql_backend.open(migrate=False)  # drops every table
    stores = [mysql_backend.open(migrate=False) for _ in range(4)]
    results, errors = [], []

    def run(s):
        try:
            results.append(s.migrate())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [schema.LATEST_VERSION] * 4
    assert count_rows(stores[0], "schema_version") == len(schema.MIGRATIONS)


def test_mysql_initdb_idempotent(mysql_url):
    server = server_of(mysql_url)
    name = services.random_name()
    url = f"{server}/{name}"
    try:
        summary = mysql_engine.initdb(url)
        assert summary == (f"schema version {schema.LATEST_VERSION} at "
                           f"{open_store(url).url}")
        assert mysql_engine.initdb(url) == summary
        s = open_store(url)
        try:
            assert s.schema_version() == schema.LATEST_VERSION
            s.create_user("alice", "h", "A", 1)
            assert mysql_engine.initdb(url) == summary
            assert s.get_user("alice")["name"] == "A"  # nothing recreated
            with s.autocommit("db charset") as cur:
                cur.execute("SELECT default_character_set_name, default_collation_name"
                            " FROM information_schema.schemata WHERE schema_name = %s",
                            (name,))
                charset, collation = cur.fetchone()
            assert charset == "utf8mb4" and collation in mysql_engine.COLLATIONS
        finally:
            s.close()
    finally:
        services.mysql_drop_database(server, name)
    with pytest.raises(ValueError, match="no database"):
        mysql_engine.initdb(server)


@contextmanager
def recorded_mysql_statements(monkeypatch):
    """``with recorded_mysql_statements(monkeypatch) as statements:`` every statement
    PyMySQL sends meanwhile, as sent (parameters bound), is appended to ``statements``."""
    import pymysql.cursors

    statements = []
    original = pymysql.cursors.Cursor.execute

    def recording(self, query, args=None):
        statements.append(self.mogrify(query, args))
        return original(self, query, args)

    monkeypatch.setattr(pymysql.cursors.Cursor, "execute", recording)
    try:
        yield statements
    finally:
        monkeypatch.undo()


def check_mysql_plans(admin, statements, only=None):
    """EXPLAIN (on store ``admin``) every SELECT, UPDATE and DELETE of ``statements`` whose
    text contains ``only`` (None: all): no full table or index scan, no filesort, no
    temporary table.  -> [(sql, plan)] of those checked (plan: EXPLAIN's rows as dicts)."""
    checked = []
    with admin.autocommit("explain") as cur:
        for sql in statements:
            if not isinstance(sql, str):  # executemany builds bytes
                sql = bytes(sql).decode()
            head = sql.split(None, 1)[0].upper()
            if head not in ("SELECT", "UPDATE", "DELETE") or "information_schema" in sql:
                continue
            if only is not None and only not in sql:
                continue
            cur.execute("EXPLAIN " + sql)
            names = [d[0].lower() for d in cur.description]
            plan = [dict(zip(names, row)) for row in cur.fetchall()]
            checked.append((sql, plan))
            for step in plan:
                extra = step.get("extra") or ""
                if step.get("table") is None or str(step["table"]).startswith("<derived"):
                    continue  # no table read ("Select tables optimized away", ...), or the
                    #           rows of a derived table, whose own SELECT is checked (its step)
                assert step["type"] not in ("ALL", "index"), (sql, plan)
                assert "filesort" not in extra and "temporary" not in extra, (sql, plan)
    return checked


def test_mysql_every_query_uses_an_index(mysql_store, mysql_admin, monkeypatch):
    """Run the whole interface recording the SQL sent, then EXPLAIN every SELECT, UPDATE
    and DELETE: no full table or index scan, no filesort, no temporary table; the dedup
    lookups read the unique index messages_dedup."""
    s = mysql_store
    # statistics that look like a real database
    s.store_messages([msg(f"u{i}", f"v{i}", cmid=f"c{i}") for i in range(300)])
    # an inbox of realistic length for the reads below (with 3 rows the planner rightly
    # prefers a covering index and sorting 3 rows to a range read of the primary key)
    s.store_messages([msg("alice", "bob" if i % 2 else f"v{i}") for i in range(100)])
    for i in range(300):
        s.create_user(f"u{i}", "h", "U", 1)
        s.add_token(f"{i:064x}", f"u{i}", "d", 1000 + i)
        s.put_request(f"u{i}", f"v{i % 50}", "m", i)
        s.add_block(f"u{i}", f"v{i % 50}", i)
    s.create_group("g0", "G", "u0", [f"u{i}" for i in range(300)], 1)
    for i in range(0, 300, 3):
        s.make_friends(f"u{i}", f"v{i % 40}", 1)
        s.create_group(f"g{i + 1}", "G", "u0", [f"u{i}", "alice"], 1)
    with s.autocommit("analyze") as cur:
        cur.execute("ANALYZE TABLE " + ", ".join(ALL_TABLES))
        cur.fetchall()
    with recorded_mysql_statements(monkeypatch) as statements:
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
        s.get_group("g1")
        s.add_members("g1", ["carol"], 5)
        s.is_member("g1", "carol")
        s.list_members("g1")
        s.list_groups("alice")
        s.remove_member("g1", "carol")
        s.store_messages([msg("alice", "bob", cmid="x"), msg("bob", "alice"),
                          msg("alice", "newcomer")])
        s.store_messages([msg("alice", "bob")])
        s.get_dedup("alice", "x")
        s.get_dedups([("alice", "x"), ("bob", "y")])
        s.head("alice")
        s.head_if_token("alice", "a" * 64)
        s.inbox_since("alice", 0, 10)
        s.history("alice", "u:alice:bob", None, 10)
        s.history("alice", "u:alice:bob", 10 ** 6, 10)
        run_the_entries_interface(s)
        run_the_search_interface(s)
        s.schema_version()
    checked = check_mysql_plans(mysql_admin, statements)
    dedup_lookups = 0
    for sql, plan in checked:
        if DEDUP_LOOKUP in sql and "cmid" in sql:   # (other reads of messages by mid too)
            assert [step["key"] for step in plan] == ["messages_dedup"], (sql, plan)
            dedup_lookups += 1
    assert len(checked) > 25 and dedup_lookups >= 2


def test_mysql_store_under_gevent(mysql_backend):
    """gevent.monkey.patch_all() (as the distributed processes do): greenlets share the
    pool cooperatively, and a greenlet interrupted mid-query loses its connection, not
    the pool."""
    pytest.importorskip("gevent")
    mysql_backend.open()  # a clean, migrated database
    script = textwrap.dedent('''
        from gevent import monkey
        monkey.patch_all()
        import json, sys, time
        import gevent
        from imsrv.backends import open_store

        s = open_store(sys.argv[1], pool_size=3)
        s.migrate()

        def worker(i):
            with s.autocommit("sleep") as cur:
                cur.execute("SELECT SLEEP(0.2)")
            s.store_messages([{"sender": "g%d" % i, "to": "hub", "group": None,
                               "conv": "u:g%d:hub" % i, "body": "1", "ts": 1,
                               "cmid": "c%d" % i, "recipients": ["g%d" % i, "hub"]}])

        t0 = time.monotonic()
        gevent.joinall([gevent.spawn(worker, i) for i in range(12)], raise_error=True)
        elapsed = time.monotonic() - t0
        opened = s.pool.opened
        try:
            with gevent.Timeout(0.2):
                with s.autocommit("interrupted") as cur:
                    cur.execute("SELECT SLEEP(2)")
            interrupted = False
        except gevent.Timeout:
            interrupted = True
        head = s.head("hub")
        print(json.dumps({"elapsed": elapsed, "opened": opened, "head": head,
                          "interrupted": interrupted, "opened_after": s.pool.opened,
                          "seqs": [m["seq"] for m in s.inbox_since("hub", 0, 100)]}))
        s.close()
    ''')
    out = subprocess.run([sys.executable, "-c", script, mysql_backend.url],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # 12 greenlets sleeping 0.2 s on 3 connections: 4 rounds, cooperative (not 2.4 s)
    assert 0.75 < got["elapsed"] < 2.0, got
    assert got["opened"] <= 3 and got["head"] == 12 and got["seqs"] == list(range(1, 13))
    # the interrupted connection was discarded; the next call opened a fresh one or
    # reused an idle one, and worked
    assert got["interrupted"] is True


def test_mysql_private_server_stopped_and_restarted(tmp_path):
    """A private MariaDB is killed, stopped and paused under an open store: calls fail
    with StoreError within the timeouts; once the server is back the same store works."""
    server = services.need(lambda: services.private_mariadb(tmp_path / "mariadb"),
                           "a private MariaDB (mariadbd binaries)")
    t_start = time.monotonic()
    with server:
        url = server.url + "/imsrv"
        assert "schema version" in mysql_engine.initdb(url)
        s = open_store(url, pool_size=2, connect_timeout=2, read_timeout=3,
                       write_timeout=3)
        try:
            assert s.store_messages([msg("alice", "bob", cmid="c1")])[0]["seqs"] == {
                "alice": 1, "bob": 1}
            where = f"127.0.0.1:{server.port}/imsrv"

            # 1. SIGKILL (a crash) while the store is idle
            server.kill()
            t0 = time.monotonic()
            with pytest.raises(StoreError, match=where):
                s.head("alice")
            with pytest.raises(StoreError, match=where):
                s.store_messages([msg("alice", "bob", cmid="lost")])
            assert time.monotonic() - t0 < 5
            server.start()
            assert s.head("alice") == 1  # the committed batch survived the crash
            assert s.store_messages([msg("alice", "bob")])[0]["seqs"] == {"alice": 2,
                                                                         "bob": 2}

            # 2. SIGTERM while a call is waiting for the server
            failures = []

            def long_call():
                try:
                    s._run("long", "SELECT SLEEP(20)")
                except StoreError as exc:
                    failures.append(exc)

            caller = threading.Thread(target=long_call)
            caller.start()
            # wait until the server is running the call (the pool's other connection asks)
            probe = ("SELECT COUNT(*) FROM information_schema.processlist"
                     " WHERE info = 'SELECT SLEEP(20)'")
            deadline = time.monotonic() + 10
            while s._run("probe", probe, fetch="one")[0] != 1:
                assert time.monotonic() < deadline, "the long call never reached the server"
                time.sleep(0.02)  # poll interval of this bounded wait
            t0 = time.monotonic()
            server.stop(signal.SIGTERM)
            caller.join(10)
            assert not caller.is_alive() and len(failures) == 1, failures
            assert time.monotonic() - t0 < 10
            with pytest.raises(StoreError, match=where):
                s.get_user("alice")
            server.start()
            assert s.get_dedup("alice", "c1")["seq"] == 1
            assert s.get_dedup("alice", "lost") is None

            # 3. paused (SIGSTOP): no answer at all; read_timeout bounds the call
            server.pause()
            try:
                t0 = time.monotonic()
                with pytest.raises(StoreError, match=where):
                    s.head("bob")
                assert time.monotonic() - t0 < 3 + 2
            finally:
                server.resume()
            assert s.head("bob") == 2
            assert s.store_messages([msg("bob", "alice")])[0]["seqs"] == {"bob": 3,
                                                                         "alice": 3}
        finally:
            s.close()
    assert not server.running()
    assert time.monotonic() - t_start < 60


# ---------------------------------------------------------------- batched lookups
def test_get_dedups_answers_a_batch_of_keys(store):
    [r1, r2] = store.store_messages([msg("alice", "bob", cmid='"c1"'), msg("carol", "bob", cmid='"c1"')])
    keys = [("alice", '"c1"'), ("carol", '"c1"'), ("alice", '"nope"'), ("dave", '"c1"')]
    found = store.get_dedups(keys + [("alice", '"c1"')])
    assert found == {("alice", '"c1"'): {"mid": r1["mid"], "seq": r1["seqs"]["alice"], "ts": 1000},
                     ("carol", '"c1"'): {"mid": r2["mid"], "seq": r2["seqs"]["carol"], "ts": 1000}}
    many = [("alice", f'"x{i}"') for i in range(450)] + [("alice", '"c1"')]  # over one chunk
    assert list(store.get_dedups(many)) == [("alice", '"c1"')]
    assert store.get_dedups([]) == {}


def test_relations_match_are_friends_and_blocked_either(store):
    for u in ("alice", "bob", "carol", "dave"):
        store.create_user(u, "h", u, 1)
    store.make_friends("alice", "bob", 1)
    store.make_friends("alice", "carol", 1)
    store.add_block("carol", "alice", 2)
    store.add_block("dave", "bob", 2)
    pairs = [(a, b) for a in ("alice", "bob", "carol", "dave") for b in ("alice", "bob", "carol", "dave") if a != b]
    rel = store.relations(pairs * 2)
    assert set(rel) == set(pairs)
    for a, b in pairs:
        assert rel[(a, b)] == (store.are_friends(a, b), store.blocked_either(a, b)), (a, b)
    assert store.relations([]) == {}
