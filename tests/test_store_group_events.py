"""The group event outbox in the store (imsrv/backends/sql_groups.py, schema version 8), on
both engines: each group write given ``events`` writes one ``group_event_queue`` row in its
own transaction (the recipients read there), none when the change does not apply, and none
when the change rolls back; take / delete of the rows."""
import pytest

from imsrv.backends.base import DuplicateKey

from test_store import backend, count_rows, mysql_admin, store  # noqa: F401


def body(what, **kw):
    return dict({"event": what, "by": "alice"}, **kw)


def rows(store):
    return store.take_group_events(100)


def test_each_write_queues_its_events_with_the_members_after_the_change(store):
    _, row = store.create_group("g1", "G", "alice", ["bob", "carol"], 10, events=("alice", None, [body("created")]))
    assert row["recipients"] == ["alice", "bob", "carol"] and row["bodies"] == [body("created")]
    assert row["group"] == "g1" and row["actor"] == "alice" and row["ts"] > 0
    assert rows(store) == [row]

    added, row2 = store.invite_members("g1", ["dave", "bob", "erin"], 20, max_members=10,
                                       events=("alice", None, lambda new: [body("invited", user=u) for u in new]))
    assert added == ["dave", "erin"]
    assert row2["recipients"] == ["alice", "bob", "carol", "dave", "erin"]
    assert row2["bodies"] == [body("invited", user="dave"), body("invited", user="erin")]
    assert row2["id"] > row["id"]

    done, row3 = store.set_member_role("g1", "bob", "admin", events=("alice", None, [body("role")]))
    assert done and row3["recipients"] == ["alice", "bob", "carol", "dave", "erin"]
    done, row4 = store.mute_member("g1", "carol", -1, ("member",), events=("alice", None, [body("muted")]))
    assert done and row4 is not None
    done, row5 = store.set_muted_all("g1", -1, events=("alice", None, [body("muted")]))
    assert done and row5 is not None
    _, row5b = store.update_group("g1", name="H", events=("alice", None, [body("updated")]))
    assert row5b["recipients"] == ["alice", "bob", "carol", "dave", "erin"]
    # kick / leave: the members after the change and the one removed (the members before)
    done, row6 = store.remove_member("g1", "carol", roles=("member",), events=("alice", None, [body("kicked")]))
    assert done and row6["recipients"] == ["alice", "bob", "dave", "erin", "carol"]
    # recipients given: those
    done, row7 = store.remove_member("g1", "erin", events=("erin", ["erin"], [body("left")]))
    assert done and row7["recipients"] == ["erin"]
    done, row8 = store.transfer_group("g1", "alice", "bob", events=("alice", None, [body("transferred")]))
    assert done and row8["recipients"] == ["alice", "bob", "dave"]
    done, row9 = store.dissolve_group("g1", "bob", 30, events=("bob", None, [body("dissolved")]))
    assert done and row9["recipients"] == ["alice", "bob", "dave"]
    assert [r["id"] for r in rows(store)] == [r["id"] for r in (row, row2, row3, row4, row5, row5b, row6, row7,
                                                                 row8, row9)]
    # account deletion (delete_user with group_events): a row per live group the user was
    # in, in the deletion's transaction, for the members that remain (g1 is dissolved)
    store.create_user("dave", "h", "D", 1)
    store.create_group("g2", "G2", "dave", ["dave", "alice", "bob"], 31)
    out = store.delete_user("dave", "h", 32, group_events=lambda grp, heir: [body("left"), body(f"to {heir}")])
    assert [(r["group"], r["actor"], r["recipients"], r["bodies"]) for r in out["events"]] == [
        ("g2", "dave", ["alice", "bob"], [body("left"), body("to alice")])]
    assert out["groups"] == {"g2": "alice"}
    # take is oldest first and bounded; delete
    assert [r["id"] for r in store.take_group_events(2)] == [row["id"], row2["id"]]
    assert store.delete_group_events([row["id"], row2["id"], 10 ** 9]) == 2
    assert store.take_group_events(1)[0]["id"] == row3["id"]
    assert store.delete_group_events([]) == 0


def test_a_change_that_does_not_apply_queues_nothing(store):
    store.create_group("g1", "G", "alice", ["bob"], 10)
    assert count_rows(store, "group_event_queue") == 0    # no events given: no row
    ev = ("alice", None, [body("x")])
    assert store.set_member_role("g1", "bob", "member", events=ev) == (False, None)   # already so
    assert store.set_member_role("g1", "alice", "admin", events=ev) == (False, None)  # the owner
    assert store.mute_member("g1", "bob", 0, ("member",), events=ev) == (False, None)
    assert store.mute_member("g1", "bob", -1, ("admin",), events=ev) == (False, None)
    assert store.set_muted_all("g1", 0, events=ev) == (False, None)
    assert store.remove_member("g1", "alice", roles=("member",), events=ev) == (False, None)
    assert store.remove_member("g1", "zed", events=ev) == (False, None)
    assert store.transfer_group("g1", "bob", "alice", events=ev) == (False, None)
    assert store.transfer_group("nope", "alice", "bob", events=ev) == (False, None)
    assert store.dissolve_group("g1", "bob", 5, events=ev) == (False, None)
    assert store.update_group("nope", name="x", events=ev) == (None, None)
    assert store.update_group("g1", events=ev) == (None, None)
    assert store.invite_members("g1", ["bob"], 20, events=("alice", None, lambda new: [body("invited")] * len(new))) \
        == ([], None)
    assert store.invite_members("g1", ["carol", "dave"], 20, max_members=3, events=ev) == (None, None)
    assert store.invite_members("nope", ["carol"], 20, events=ev) == ([], None)
    assert count_rows(store, "group_event_queue") == 0
    # without events the methods answer as they always did
    assert store.set_member_role("g1", "bob", "admin") is True
    assert store.invite_members("g1", ["carol"], 20) == ["carol"]
    assert store.remove_member("g1", "carol") is True and store.update_group("g1", notice="n") is None
    assert count_rows(store, "group_event_queue") == 0


def test_a_change_that_rolls_back_leaves_no_row(store):
    store.create_group("g1", "G", "alice", ["bob"], 10)
    # the group id is taken: the create fails, and no row is written
    with pytest.raises(DuplicateKey):
        store.create_group("g1", "G", "carol", ["dave"], 11, events=("carol", None, [body("created")]))
    assert count_rows(store, "group_event_queue") == 0

    # a failure after the row was inserted rolls both back: the members added and the row
    class Boom(Exception):
        pass

    def bodies(added):
        raise Boom()

    with pytest.raises(Boom):
        store.invite_members("g1", ["carol"], 20, events=("alice", None, bodies))
    assert store.list_members("g1") == ["alice", "bob"]
    assert count_rows(store, "group_event_queue") == 0

    real = store._queue_events

    def queue_then_fail(cur, *a, **kw):
        real(cur, *a, **kw)          # the row is written in the transaction...
        raise Boom()                 # ... which then fails

    store._queue_events = queue_then_fail
    try:
        for change in (lambda: store.set_member_role("g1", "bob", "admin", events=("alice", None, [body("r")])),
                       lambda: store.remove_member("g1", "bob", events=("alice", None, [body("k")])),
                       lambda: store.transfer_group("g1", "alice", "bob", events=("alice", None, [body("t")])),
                       lambda: store.dissolve_group("g1", "alice", 5, events=("alice", None, [body("d")])),
                       lambda: store.update_group("g1", name="H", events=("alice", None, [body("u")]))):
            with pytest.raises(Boom):
                change()
    finally:
        del store._queue_events
    assert count_rows(store, "group_event_queue") == 0
    info = store.group_info("g1")
    assert (info["name"], info["owner"], info["dissolved"], info["size"]) == ("G", "alice", 0, 2)
    assert {m["user"]: m["role"] for m in store.list_member_details("g1")} == {"alice": "owner", "bob": "member"}
