"""The store's account-safety methods (schema version 2), on both engines: guarded
add_token, set_password, delete_user, and the migration from version 1."""
import pytest

from imsrv.backends import schema

from test_store import backend, count_rows, msg, mysql_admin, store  # noqa: F401 (fixtures)


def people(store, *names):
    for i, n in enumerate(names):
        store.create_user(n, f"hash-{n}", n.title(), 100 + i)


def test_add_token_with_a_password_hash_only_while_it_is_current(store):
    people(store, "alice")
    assert store.add_token("a" * 64, "alice", "d", 5000, pw_hash="hash-alice") is True
    assert store.add_token("b" * 64, "alice", "d", 5000, pw_hash="stale-hash") is False
    assert store.add_token("c" * 64, "nobody", "d", 5000, pw_hash="hash-alice") is False
    assert store.get_token("a" * 64)["user"] == "alice"
    assert store.get_token("b" * 64) is None and store.get_token("c" * 64) is None
    assert store.add_token("d" * 64, "bob", "d", 5000) is True  # unguarded: as before


def test_set_password_revokes_every_other_token(store):
    people(store, "alice", "bob")
    for h in ("1", "2", "3"):
        store.add_token(h * 64, "alice", "d" + h, 5000)
    store.add_token("9" * 64, "bob", "d", 5000)
    assert store.set_password("alice", "wrong-old", "new", "1" * 64) is None
    assert store.get_user("alice")["pw_hash"] == "hash-alice"
    assert store.set_password("alice", "hash-alice", "hash-new", "1" * 64) == 2
    assert store.get_user("alice")["pw_hash"] == "hash-new"
    assert store.get_token("1" * 64)["user"] == "alice"
    assert store.get_token("2" * 64) is None and store.get_token("3" * 64) is None
    assert store.get_token("9" * 64)["user"] == "bob"
    # the old hash no longer counts: a second change with it changes nothing
    assert store.set_password("alice", "hash-alice", "hash-x", None) is None
    # no token kept: all go
    assert store.set_password("alice", "hash-new", "hash-3", None) == 1
    assert store.get_token("1" * 64) is None


def test_delete_user_removes_them_from_everything_and_keeps_the_name(store):
    people(store, "alice", "bob", "carol", "dave")
    store.add_token("a" * 64, "alice", "d", 5000)
    store.add_token("b" * 64, "bob", "d", 5000)
    store.make_friends("alice", "bob", 1)
    store.make_friends("alice", "carol", 1)
    store.make_friends("bob", "carol", 1)
    store.put_request("alice", "dave", "hi", 2)
    store.put_request("dave", "alice", "yo", 2)   # both ways: no friends yet
    store.delete_request("alice", "dave")
    store.put_request("carol", "alice", "?", 3)
    store.add_block("alice", "dave", 4)
    store.add_block("dave", "bob", 4)
    store.put_request("alice", "dave", "again", 5)   # (a block deleted the others)
    store.add_block("carol", "alice", 5)
    store.create_group("g1", "G1", "alice", ["alice"], 10)
    store.add_members("g1", ["carol"], 11)
    store.add_members("g1", ["bob"], 12)
    store.create_group("g2", "G2", "alice", ["alice"], 10)   # alice alone
    store.create_group("g3", "G3", "bob", ["bob", "alice"], 10)
    store.create_group("g4", "G4", "alice", ["alice", "dave", "bob"], 20)  # joined together
    store.set_profile("alice", avatar="https://example.org/a.png")
    sent = store.store_messages([msg("alice", "bob"), msg("bob", "alice"),
                                 msg("alice", group="g1", recipients=["alice", "bob", "carol"])])

    assert store.delete_user("alice", "wrong-hash", 999) is None
    assert store.existing_users(["alice"]) == {"alice"}
    out = store.delete_user("alice", "hash-alice", 1000)
    assert out == {"friends": ["bob", "carol"], "groups": {"g1": "carol", "g2": None, "g4": "bob"},
                   "tokens": 1}
    assert store.delete_user("alice", "hash-alice", 1001) is None   # once

    row = store.get_user("alice")
    assert row["deleted"] == 1000 and row["pw_hash"] not in ("hash-alice", "") and row["text"] == ""
    assert row["name"] is None and row["avatar"] is None
    assert store.existing_users(["alice", "bob"]) == {"bob"}
    assert store.get_token("a" * 64) is None and store.get_token("b" * 64)["user"] == "bob"
    assert [f["user"] for f in store.list_friends("bob")] == ["carol"]
    assert [f["user"] for f in store.list_friends("carol")] == ["bob"]
    assert not store.are_friends("bob", "alice") and not store.are_friends("alice", "bob")
    assert store.list_requests("dave") == [] and store.list_requests("alice") == []
    assert not store.blocked_either("alice", "dave") and not store.blocked_either("carol", "alice")
    assert store.blocked_either("dave", "bob")
    assert store.list_members("g1") == ["bob", "carol"] and store.get_group("g1")["owner"] == "carol"
    assert store.list_members("g2") == [] and store.get_group("g2") is not None
    assert store.list_members("g3") == ["bob"] and store.get_group("g3")["owner"] == "bob"
    assert store.get_group("g4")["owner"] == "bob"   # same join time: the first name
    assert store.list_groups("alice") == []
    # delivered messages stay with the others; alice's own inbox is gone
    assert [r["mid"] for r in store.inbox_since("bob", 0, 10)] == [r["mid"] for r in sent]
    assert store.inbox_since("alice", 0, 10) == []
    assert store.list_conversations("alice") == [] and len(store.list_conversations("bob")) == 2
    assert store.add_token("e" * 64, "alice", "d", 5000, pw_hash=row["pw_hash"]) is False


def test_migration_from_version_1_keeps_users_live(backend):
    s = backend.open(migrate=False)
    schema.migrate(s, schema.MIGRATIONS[:1])
    assert s.schema_version() == 1
    with s.autocommit("v1 user") as cur:
        cur.execute(s.dialect.render("INSERT INTO users (user, pw_hash, name, text, created)"
                                     " VALUES (?, ?, ?, ?, ?)"), ("old", "h", "Old", "", 1))
    s.migrate()
    assert s.schema_version() == schema.LATEST_VERSION >= 2
    assert s.get_user("old")["deleted"] == 0 and s.existing_users(["old"]) == {"old"}
    # a version 2 (and the later ones) that did not get recorded (MySQL commits DDL at
    # once) runs again cleanly
    with s.transaction("forget v2") as cur:
        cur.execute(s.dialect.render("DELETE FROM schema_version WHERE version >= ?"), (2,))
    s.migrate()
    assert s.schema_version() == schema.LATEST_VERSION
    assert count_rows(s, "schema_version") == len(schema.MIGRATIONS)
