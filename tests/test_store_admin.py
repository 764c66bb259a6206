"""The store's admin methods (schema version 7), on both engines: bans (ban_user,
unban_user, get_ban, the login's add_login_token that a ban refuses), list_users,
count_users, count_messages_since, and migration 7 on a database at version 6."""
from imsrv.backends import schema, sql_accounts
from imsrv.backends.sqlite import SqliteStore

from test_store import (backend, check_mysql_plans, check_sqlite_plans, count_rows, msg,  # noqa: F401 (fixtures)
                        mysql_admin, mysql_backend, mysql_store, recorded_mysql_statements, store)

NOW = 1_000_000


def people(store, *names):
    for i, n in enumerate(names):
        store.create_user(n, f"hash-{n}", n.title(), 100 + i)


def test_ban_revokes_every_token_and_refuses_login_tokens_while_in_effect(store):
    people(store, "alice", "bob")
    for h in ("1", "2"):
        store.add_token(h * 64, "alice", "d" + h, NOW * 10)
    store.add_token("9" * 64, "bob", "d", NOW * 10)
    assert store.get_ban("alice", NOW) is None
    assert store.ban_user("alice", NOW + 5000, "spam") == 2
    assert store.get_token("1" * 64) is None and store.get_token("2" * 64) is None
    assert store.get_token("9" * 64)["user"] == "bob"   # nobody else's
    assert store.get_ban("alice", NOW) == {"until": NOW + 5000, "reason": "spam"}
    # no login token while the ban is in effect; bob's logins are not affected
    assert store.add_login_token("3" * 64, "alice", "d", NOW * 10, "hash-alice", NOW) is False
    assert store.get_token("3" * 64) is None
    assert store.add_login_token("8" * 64, "bob", "d", NOW * 10, "hash-bob", NOW) is True
    # the ban runs out at its until: nothing to clean up, the login works again
    assert store.get_ban("alice", NOW + 5000) is None
    assert store.add_login_token("4" * 64, "alice", "d", NOW * 10, "hash-alice", NOW + 5000) is True
    assert store.get_token("4" * 64)["user"] == "alice"


def test_add_login_token_keeps_the_password_guard(store):
    people(store, "alice")
    assert store.add_login_token("1" * 64, "alice", "d", NOW * 10, "stale-hash", NOW) is False
    assert store.add_login_token("2" * 64, "nobody", "d", NOW * 10, "hash-alice", NOW) is False
    assert store.add_login_token("3" * 64, "alice", "d", NOW * 10, "hash-alice", NOW) is True
    assert store.get_token("1" * 64) is None and store.get_token("3" * 64)["device"] == "d"


def test_ban_for_ever_given_again_and_unban(store):
    people(store, "alice")
    assert store.ban_user("alice", -1, "abuse") == 0
    assert store.ban_user("alice", -1, "abuse") == 0       # the same ban again: still found
    assert store.get_ban("alice", NOW * 1000) == {"until": -1, "reason": "abuse"}
    assert store.add_login_token("1" * 64, "alice", "d", NOW * 10, "hash-alice", NOW) is False
    assert store.unban_user("alice", NOW) is True
    assert store.get_ban("alice", NOW) is None
    assert store.unban_user("alice", NOW) is False          # nothing to lift
    assert store.add_login_token("1" * 64, "alice", "d", NOW * 10, "hash-alice", NOW) is True
    # a ban that ran out is no ban to lift
    store.ban_user("alice", NOW - 1, "old")
    assert store.unban_user("alice", NOW) is False


def test_ban_and_unban_of_unknown_or_deleted_users_change_nothing(store):
    people(store, "alice", "bob")
    assert store.ban_user("nobody", -1, "x") is None
    assert store.unban_user("nobody", NOW) is None
    store.add_token("b" * 64, "bob", "d", NOW * 10)
    assert store.delete_user("bob", "hash-bob", 500) is not None
    assert store.ban_user("bob", -1, "x") is None
    assert store.unban_user("bob", NOW) is None
    assert store.get_ban("bob", NOW) is None
    assert store.get_ban("nobody", NOW) is None


def test_list_users_by_prefix_in_name_order_with_bans_in_effect(store):
    people(store, "al_x", "alice", "alicia", "bob", "al-y", "alb", "carol")
    store.delete_user("carol", "hash-carol", 500)
    store.ban_user("alicia", NOW + 10, "spam")
    store.ban_user("bob", NOW - 10, "ran out")
    every = store.list_users(now=NOW)
    assert [u["user"] for u in every] == ["al-y", "al_x", "alb", "alice", "alicia", "bob"]   # no carol
    assert every[0] == {"user": "al-y", "name": "Al-Y", "banned_until": 0, "ban_reason": None}
    by_name = {u["user"]: u for u in every}
    assert by_name["alicia"]["banned_until"] == NOW + 10 and by_name["alicia"]["ban_reason"] == "spam"
    assert by_name["bob"]["banned_until"] == 0 and by_name["bob"]["ban_reason"] is None
    # "_" is a name character here, not a LIKE wildcard
    assert [u["user"] for u in store.list_users("al_", now=NOW)] == ["al_x"]
    assert [u["user"] for u in store.list_users("ali", now=NOW)] == ["alice", "alicia"]
    assert [u["user"] for u in store.list_users("alicia", now=NOW)] == ["alicia"]
    assert store.list_users("zed", now=NOW) == []
    # pages: limit, then after
    page = store.list_users("al", limit=2, now=NOW)
    assert [u["user"] for u in page] == ["al-y", "al_x"]
    page = store.list_users("al", after="al_x", limit=2, now=NOW)
    assert [u["user"] for u in page] == ["alb", "alice"]
    assert [u["user"] for u in store.list_users(after="alicia", now=NOW)] == ["bob"]


def test_count_users_leaves_deleted_accounts_out(store):
    assert store.count_users() == 0
    people(store, "alice", "bob", "carol")
    store.delete_user("bob", "hash-bob", 500)
    assert store.count_users() == 2


def test_count_messages_since(store):
    people(store, "alice", "bob")
    assert store.count_messages_since(0) == 0
    # ts grows with mid, as the send path stores them; one batch shares a ts
    for ts in (1000, 2000, 2000, 3000, 5000, 5000, 5000, 9000):
        store.store_messages([msg("alice", "bob", ts=ts)])
    store.store_messages([msg("bob", "alice", ts=9500), msg("alice", "bob", ts=9500)])
    assert store.count_messages_since(0) == 10
    assert store.count_messages_since(1000) == 10
    assert store.count_messages_since(1001) == 9
    assert store.count_messages_since(2000) == 9
    assert store.count_messages_since(2001) == 7
    assert store.count_messages_since(4000) == 6
    assert store.count_messages_since(5001) == 3
    assert store.count_messages_since(9500) == 2
    assert store.count_messages_since(9501) == 0
    # the oldest messages purged (retention): the search starts at the first mid left
    with store.transaction("purge the oldest") as cur:
        cur.execute("DELETE FROM inbox WHERE mid IN (SELECT mid FROM messages WHERE ts < 3000)")
        cur.execute("DELETE FROM messages WHERE ts < 3000")
    assert store.count_messages_since(0) == 7
    assert store.count_messages_since(5000) == 6


def test_count_messages_since_above_the_exact_range_takes_the_mid_difference(store, monkeypatch):
    people(store, "alice", "bob")
    store.store_messages([msg("alice", "bob", ts=1000 + i) for i in range(30)])
    assert store.count_messages_since(1010) == 20
    monkeypatch.setattr(sql_accounts, "EXACT_COUNT_UP_TO", 5)
    assert store.count_messages_since(1010) == 20
    assert store.count_messages_since(1028) == 2   # counted exactly again: within the range


def test_migration_7_adds_the_ban_columns_to_existing_users(backend):
    s = backend.open(migrate=False)
    schema.migrate(s, schema.MIGRATIONS[:6])
    assert s.schema_version() == 6
    s.create_user("alice", "hash-alice", "Alice", 1)
    s.migrate()
    assert s.schema_version() == schema.LATEST_VERSION >= 7
    assert s.get_ban("alice", NOW) is None
    assert [u["banned_until"] for u in s.list_users(now=NOW)] == [0]
    assert s.ban_user("alice", -1, "x") == 0
    assert count_rows(s, "users") == 1


# ---------------------------------------------------------------- query plans

def run_the_admin_interface(s):
    """Every admin method but count_users and a listing without prefix and after: those
    walk the users' primary key on purpose (admin_stats' count keeps no counter on the
    register path; a listing from the first name stops at its LIMIT)."""
    s.create_user("alice", "hash-alice", "Alice", 1)
    s.add_login_token("a" * 64, "alice", "d", NOW * 10, "hash-alice", NOW)
    s.get_ban("alice", NOW)
    s.ban_user("alice", -1, "x")
    s.unban_user("alice", NOW)
    s.list_users("al", now=NOW)
    s.list_users("al", after="alice", limit=5, now=NOW)
    s.list_users(after="alice", limit=5, now=NOW)
    s.count_messages_since(1050)


def test_sqlite_admin_queries_use_an_index(tmp_path):
    s = SqliteStore(str(tmp_path / "plan.db"))
    s.migrate()
    people(s, *(f"u{i:03d}" for i in range(200)))
    s.store_messages([msg(f"u{i:03d}", f"u{i + 1:03d}", ts=1000 + i) for i in range(100)])
    with s.autocommit("analyze") as cur:
        cur.execute("ANALYZE")
    statements = []
    s._conn.set_trace_callback(statements.append)
    try:
        run_the_admin_interface(s)
    finally:
        s._conn.set_trace_callback(None)
    check_sqlite_plans(s, statements, least=12, dedup_least=0)


def test_mysql_admin_queries_use_an_index(mysql_store, monkeypatch):
    s = mysql_store
    people(s, *(f"u{i:03d}" for i in range(300)))
    s.store_messages([msg(f"u{i:03d}", f"u{i + 1:03d}", ts=1000 + i) for i in range(100)])
    with s.autocommit("analyze") as cur:
        cur.execute("ANALYZE TABLE users, messages, tokens")
        cur.fetchall()
    with recorded_mysql_statements(monkeypatch) as statements:
        run_the_admin_interface(s)
    checked = check_mysql_plans(s, statements)
    assert len(checked) >= 12, checked
