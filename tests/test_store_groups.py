"""The store's groups (imsrv/backends/sql_groups.py), on both engines: roles, guarded
writes (invite under max_members, kick by role, set_role, mutes, transfer, dissolve),
delete_user passing an owned group to its oldest admin, else its oldest member, concurrent
invites never passing max_members, and every group statement on an index."""
import threading

from imsrv.backends import open_store
from imsrv.backends.sqlite import SqliteStore

from test_store import (ALL_TABLES, backend, check_mysql_plans, check_sqlite_plans, msg,  # noqa: F401
                        mysql_admin, mysql_backend, mysql_store, recorded_mysql_statements, store)


def people(store, *names):
    for i, n in enumerate(names):
        store.create_user(n, f"hash-{n}", n.title(), 100 + i)


def roles(store, group):
    return {m["user"]: m["role"] for m in store.list_member_details(group)}


def test_create_group_writes_the_owners_role_and_defaults(store):
    people(store, "alice", "bob", "carol")
    store.create_group("g1", "Team", "alice", ["bob", "alice", "carol", "bob"], 10)
    assert roles(store, "g1") == {"alice": "owner", "bob": "member", "carol": "member"}
    assert store.list_member_details("g1") == [
        {"user": u, "role": r, "muted_until": 0} for u, r in
        (("alice", "owner"), ("bob", "member"), ("carol", "member"))]
    assert store.group_info("g1") == {"group": "g1", "name": "Team", "owner": "alice", "created": 10,
                                      "notice": "", "muted_all": 0, "dissolved": 0, "size": 3}
    assert store.group_info("nope") is None
    assert store.get_members("g1", ["alice", "dave", "carol"]) == {
        "alice": {"role": "owner", "muted_until": 0, "joined": 10},
        "carol": {"role": "member", "muted_until": 0, "joined": 10}}
    assert store.get_members("g1", []) == {} and store.get_members("nope", ["alice"]) == {}
    # the owner given outside members is still a member (and the owner)
    store.create_group("g2", "Solo", "bob", [], 11)
    assert roles(store, "g2") == {"bob": "owner"}


def test_invite_members_up_to_max_members_or_nobody(store):
    store.create_group("g1", "G", "alice", ["alice", "bob"], 10)
    # over the cap: None, and nobody of the invite was added
    assert store.invite_members("g1", ["carol", "dave", "erin"], 20, max_members=4) is None
    assert store.list_members("g1") == ["alice", "bob"]
    # members already in do not count twice; duplicates are one
    assert store.invite_members("g1", ["bob", "carol", "carol", "dave"], 20, max_members=4) == ["carol", "dave"]
    assert roles(store, "g1") == {"alice": "owner", "bob": "member", "carol": "member", "dave": "member"}
    assert store.get_members("g1", ["carol"])["carol"]["joined"] == 20
    assert store.invite_members("g1", ["erin"], 30, max_members=4) is None      # full
    assert store.invite_members("g1", ["bob", "dave"], 30, max_members=4) == []  # nobody new: not "full"
    assert store.invite_members("g1", ["erin"], 30) == ["erin"]                 # no cap
    assert store.invite_members("nope", ["erin"], 30, max_members=10) == []     # no such group
    assert store.list_members("nope") == []
    assert store.group_info("g1")["size"] == 5


def test_remove_member_only_of_the_given_roles(store):
    store.create_group("g1", "G", "alice", ["alice", "bob", "carol"], 10)
    store.set_member_role("g1", "bob", "admin")
    assert store.remove_member("g1", "alice", roles=("admin", "member")) is False   # the owner stays
    assert store.remove_member("g1", "bob", roles=("member",)) is False             # an admin stays
    assert store.remove_member("g1", "bob", roles=("admin", "member")) is True
    assert store.remove_member("g1", "bob", roles=("admin", "member")) is False     # gone already
    assert store.remove_member("g1", "carol") is True                                # no guard
    assert store.list_members("g1") == ["alice"]


def test_set_member_role_never_touches_the_owner_and_reports_a_change(store):
    store.create_group("g1", "G", "alice", ["alice", "bob"], 10)
    assert store.set_member_role("g1", "bob", "admin") is True
    assert store.set_member_role("g1", "bob", "admin") is False     # already
    assert store.set_member_role("g1", "alice", "member") is False  # the owner's row
    assert store.set_member_role("g1", "carol", "admin") is False   # not a member
    assert roles(store, "g1") == {"alice": "owner", "bob": "admin"}
    assert store.set_member_role("g1", "bob", "member") is True
    assert roles(store, "g1")["bob"] == "member"


def test_mutes(store):
    store.create_group("g1", "G", "alice", ["alice", "bob", "carol"], 10)
    store.set_member_role("g1", "carol", "admin")
    assert store.mute_member("g1", "bob", 5000, ("member",)) is True
    assert store.mute_member("g1", "bob", 5000, ("member",)) is False          # already so
    assert store.mute_member("g1", "carol", 5000, ("member",)) is False        # an admin: not for this actor
    assert store.mute_member("g1", "alice", 5000, ("admin", "member")) is False  # the owner never
    assert store.mute_member("g1", "carol", -1, ("admin", "member")) is True
    assert store.mute_member("g1", "dave", 5000, ("admin", "member")) is False   # not a member
    assert {m["user"]: m["muted_until"] for m in store.list_member_details("g1")} == {
        "alice": 0, "bob": 5000, "carol": -1}
    assert store.mute_member("g1", "bob", 0, ("member",)) is True
    assert store.get_members("g1", ["bob"])["bob"]["muted_until"] == 0
    assert store.set_muted_all("g1", 9000) is True
    assert store.set_muted_all("g1", 9000) is False
    assert store.group_info("g1")["muted_all"] == 9000
    assert store.set_muted_all("g1", 0) is True
    assert store.group_info("g1")["muted_all"] == 0


def test_update_group(store):
    store.create_group("g1", "G", "alice", ["alice"], 10)
    store.update_group("g1", name="Team ✨")
    assert store.group_info("g1")["name"] == "Team ✨" and store.group_info("g1")["notice"] == ""
    store.update_group("g1", notice="n" * 1024)
    info = store.group_info("g1")
    assert info["name"] == "Team ✨" and info["notice"] == "n" * 1024
    store.update_group("g1", name="B", notice="")
    info = store.group_info("g1")
    assert (info["name"], info["notice"]) == ("B", "")
    store.update_group("g1")   # nothing given: nothing changes
    assert store.get_group("g1")["name"] == "B"


def test_transfer_group(store):
    store.create_group("g1", "G", "alice", ["alice", "bob", "carol"], 10)
    assert store.transfer_group("g1", "bob", "carol") is False     # bob is not the owner
    assert store.transfer_group("g1", "alice", "dave") is False    # not a member
    assert store.transfer_group("g1", "alice", "alice") is False
    assert store.transfer_group("nope", "alice", "bob") is False
    assert roles(store, "g1") == {"alice": "owner", "bob": "member", "carol": "member"}
    assert store.transfer_group("g1", "alice", "bob") is True
    assert roles(store, "g1") == {"alice": "admin", "bob": "owner", "carol": "member"}
    assert store.get_group("g1")["owner"] == "bob"
    assert store.transfer_group("g1", "alice", "carol") is False   # not the owner any more
    assert store.dissolve_group("g1", "bob", 50) is True
    assert store.transfer_group("g1", "bob", "carol") is False     # dissolved
    assert store.get_group("g1")["owner"] == "bob"


def test_dissolve_group_keeps_the_former_members(store):
    store.create_group("g1", "G", "alice", ["alice", "bob"], 10)
    assert store.dissolve_group("g1", "bob", 50) is False   # only by its owner
    assert store.dissolve_group("g1", "alice", 50) is True
    assert store.dissolve_group("g1", "alice", 60) is False  # once
    assert store.group_info("g1")["dissolved"] == 50
    assert store.list_members("g1") == ["alice", "bob"]
    assert store.list_groups("bob") == [{"group": "g1", "name": "G"}]
    assert store.dissolve_group("nope", "alice", 50) is False


def test_delete_user_passes_owned_groups_to_the_oldest_admin_else_the_oldest_member(store):
    people(store, "alice", "bob", "carol", "dave", "erin")
    store.create_group("g1", "G1", "alice", ["alice", "bob"], 10)
    store.add_members("g1", ["carol"], 20)
    store.add_members("g1", ["dave"], 30)
    store.set_member_role("g1", "dave", "admin")        # the newest, but the only admin
    store.create_group("g2", "G2", "alice", ["alice", "carol", "bob"], 10)   # no admin: the first name
    store.create_group("g3", "G3", "alice", ["alice"], 10)                    # alone
    store.create_group("g4", "G4", "bob", ["bob", "alice"], 10)               # not hers
    store.add_members("g4", ["erin"], 40)
    store.create_group("g5", "G5", "alice", ["alice", "erin"], 10)
    store.add_members("g5", ["carol"], 20)
    store.add_members("g5", ["bob"], 30)
    store.set_member_role("g5", "bob", "admin")
    store.set_member_role("g5", "carol", "admin")      # two admins: the oldest
    out = store.delete_user("alice", "hash-alice", 1000)
    assert out["groups"] == {"g1": "dave", "g2": "bob", "g3": None, "g5": "carol"}
    assert roles(store, "g1") == {"bob": "member", "carol": "member", "dave": "owner"}
    assert roles(store, "g2") == {"bob": "owner", "carol": "member"}
    assert roles(store, "g4") == {"bob": "owner", "erin": "member"}
    assert roles(store, "g5") == {"bob": "admin", "carol": "owner", "erin": "member"}
    assert [store.get_group(g)["owner"] for g in ("g1", "g2", "g3", "g4", "g5")] == \
        ["dave", "bob", "alice", "bob", "carol"]
    assert store.list_members("g3") == []


def test_concurrent_invites_never_pass_max_members(backend):
    """Eight writers, each on a store of its own, invite different users into one group of
    cap 20 at once: exactly the ones that fit are added, each invite all or nothing."""
    first = backend.open()
    first.create_group("g1", "G", "owner", ["owner"], 1)
    writers = 8
    results = [None] * writers
    barrier = threading.Barrier(writers)

    def invite(i):
        s = open_store(backend.url)   # in its thread: a SQLite connection stays in the thread that made it
        try:
            barrier.wait()
            results[i] = s.invite_members("g1", [f"u{i}_{k}" for k in range(4)], 2, max_members=20)
        finally:
            s.close()

    threads = [threading.Thread(target=invite, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    added = [r for r in results if r is not None]
    assert len(added) == 4 and all(len(r) == 4 for r in added), results   # 1 + 4 * 4 = 17 <= 20
    members = first.list_members("g1")
    assert len(members) == 17 and sorted(members) == sorted(["owner"] + [u for r in added for u in r])


def run_the_group_interface(s):
    """Every group method of the store, once (the plan checks below)."""
    s.create_group("g1", "G", "alice", ["alice", "bob"], 4)
    s.get_group("g1")
    s.group_info("g1")
    s.get_members("g1", ["alice", "bob"])
    s.is_member("g1", "bob")
    s.list_members("g1")
    s.list_member_details("g1")
    s.list_groups("alice")
    s.add_members("g1", ["carol"], 5)
    s.invite_members("g1", ["dave", "erin"], 5, max_members=500)
    s.set_member_role("g1", "carol", "admin")
    s.mute_member("g1", "dave", 9000, ("admin", "member"))
    s.set_muted_all("g1", 9000)
    s.update_group("g1", name="H", notice="n")
    s.remove_member("g1", "erin", roles=("member",))
    s.remove_member("g1", "dave")
    s.transfer_group("g1", "alice", "bob")
    s.dissolve_group("g1", "bob", 6)
    s.create_group("g2", "G2", "erin", ["erin", "dave"], 7)
    s.create_user("erin", "h", "E", 1)
    s.delete_user("erin", "h", 8)     # passes g2 to dave
    # the group event outbox (tests/test_store_group_events.py): the writes with their row
    ev = ("dave", None, [{"event": "x", "by": "dave"}])
    s.invite_members("g2", ["frank"], 9, max_members=500, events=ev)
    s.set_member_role("g2", "frank", "admin", events=ev)
    s.mute_member("g2", "frank", 9000, ("admin",), events=ev)
    s.set_muted_all("g2", 9000, events=ev)
    s.update_group("g2", name="H2", events=ev)
    s.remove_member("g2", "frank", roles=("admin",), events=ev)
    s.dissolve_group("g2", "dave", 10, events=ev)
    s.create_user("gina", "h", "G", 1)
    s.create_group("g3", "G3", "gina", ["gina", "dave"], 11)
    assert s.delete_user("gina", "h", 12, group_events=lambda grp, heir: ev[2])["events"]
    s.delete_group_events([r["id"] for r in s.take_group_events(100)])


def test_sqlite_group_queries_use_an_index(tmp_path):
    s = SqliteStore(str(tmp_path / "plan.db"))
    s.migrate()
    for i in range(50):   # statistics that look like a real database
        s.create_group(f"gx{i}", "G", f"u{i}", [f"u{i}"] + [f"v{k}" for k in range(i % 7)], 1)
    s.store_messages([msg(f"u{i}", f"v{i}") for i in range(50)])
    with s.autocommit("analyze") as cur:
        cur.execute("ANALYZE")
    statements = []
    s._conn.set_trace_callback(statements.append)
    try:
        run_the_group_interface(s)
    finally:
        s._conn.set_trace_callback(None)
    # only the group methods' statements: the whole interface's, tests/test_store.py
    check_sqlite_plans(s, statements, least=25, dedup_least=0)


def test_mysql_group_queries_use_an_index(mysql_store, mysql_admin, monkeypatch):
    """EXPLAIN every SELECT, UPDATE and DELETE of the group methods: no full table or index
    scan, no filesort, no temporary table."""
    s = mysql_store
    for i in range(300):
        s.create_group(f"gx{i}", "G", f"u{i}", [f"u{i}"] + [f"v{k}" for k in range(i % 7)], 1)
    with s.autocommit("analyze") as cur:
        cur.execute("ANALYZE TABLE " + ", ".join(ALL_TABLES))
        cur.fetchall()
    with recorded_mysql_statements(monkeypatch) as statements:
        run_the_group_interface(s)
    # only the group statements (delete_user's others: tests/test_store.py)
    checked = len(check_mysql_plans(mysql_admin, statements, only="group"))
    assert checked >= 20, statements
