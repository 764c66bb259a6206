"""The group event outbox end to end in one process, on both engines (the core's App on a
real SQLite / MariaDB store): a group change whose post fails (the send path raises) still
answers ok and leaves its queue row; the redelivery (GroupEvents.redeliver, and the
Maintenance loop that runs it) later stores every event exactly once in every recipient's
inbox, also when a row is posted twice or was stored before the post failed."""
import json

import gevent
import pytest

from imsrv import config
from imsrv.backends.base import StoreError
from imsrv.backends.memory import LocalHub
from imsrv.core.app import App
from imsrv.servers.maintenance import Maintenance

from test_store import backend, count_rows, mysql_admin, store  # noqa: F401

from harness.procs import wait_until

USERS = ("alice", "bob", "carol", "dave")


@pytest.fixture
def app(store):
    cfg = config.load(env={}, overrides={("accounts", "argon2_time_cost"): 1,
                                         ("accounts", "argon2_memory_cost"): 8192})
    a = App(cfg, store, LocalHub())
    for n in USERS:
        a.accounts.register(n, "password1")
    return a


def group_events(app, user):
    """The group_event entries of ``user``'s inbox, in seq order: (group, event, subject)."""
    return [(r["group"], json.loads(r["body"])["event"], json.loads(r["body"]).get("user"))
            for r in app.store.inbox_since(user, 0, 1000) if r["kind"] == "group_event"]


class Broken:
    """A send path that is down (raises), or (``after_storing``) stores and then fails, as
    a forwarder whose reply was lost."""

    def __init__(self, real, after_storing=False):
        self.real, self.after_storing, self.calls = real, after_storing, 0

    def __call__(self, reqs):
        self.calls += 1
        if self.after_storing:
            self.real(reqs)
        raise StoreError("the send path is down")


def changes(app):
    """A few changes of one group -> (group, {user: the group_event entries expected})."""
    groups = app.groups
    g = groups.create("alice", "G", ["bob", "carol"])["group"]
    assert groups.invite("alice", g, ["dave"]) == {}
    assert groups.set_role("alice", g, "bob", "admin") == {}
    assert groups.kick("bob", g, "carol") == {}
    assert groups.update("alice", g, notice="hello") == {}
    assert groups.leave("dave", g) == {}
    created, invited, role = (g, "created", None), (g, "invited", "dave"), (g, "role", "bob")
    kicked, updated, left = (g, "kicked", "carol"), (g, "updated", None), (g, "left", "dave")
    return g, {"alice": [created, invited, role, kicked, updated, left],
               "bob": [created, invited, role, kicked, updated, left],
               "carol": [created, invited, role, kicked],
               "dave": [invited, role, kicked, updated, left]}


@pytest.mark.parametrize("after_storing", [False, True], ids=["down", "stored-then-failed"])
def test_events_of_a_failed_post_are_redelivered_exactly_once(app, after_storing):
    events = app.groups.events
    real = events.forward
    events.forward = Broken(real, after_storing)
    g, expected = changes(app)       # every op answered ok although its post failed
    assert events.forward.calls == 6
    queued = app.store.take_group_events(100)
    assert [r["bodies"][0]["event"] for r in queued] == ["created", "invited", "role", "kicked", "updated", "left"]
    for u in USERS:
        assert group_events(app, u) == (expected[u] if after_storing else [])
    # the group's state is the one the changes made
    assert app.groups.members("alice", g)["roles"] == {"alice": "owner", "bob": "admin"}

    events.forward = real
    assert events.redeliver() == 0                     # too young: left to their op's post
    assert count_rows(app.store, "group_event_queue") == 6
    assert events.redeliver(limit=2, min_age=0) == 2   # a batch at a time, oldest first
    assert [r["id"] for r in app.store.take_group_events(100)] == [r["id"] for r in queued[2:]]
    assert events.redeliver(min_age=0) == 4
    assert count_rows(app.store, "group_event_queue") == 0
    for u in USERS:
        assert group_events(app, u) == expected[u], u
    heads = {u: app.store.head(u) for u in USERS}
    # a row posted again (its delete lost, two posts overlapping): nothing stored twice
    for row in queued:
        assert events.post_row(row)
    assert {u: app.store.head(u) for u in USERS} == heads
    for u in USERS:
        assert group_events(app, u) == expected[u], u


def test_a_post_that_works_deletes_its_row_and_stores_once(app):
    _, expected = changes(app)
    assert count_rows(app.store, "group_event_queue") == 0
    for u in USERS:
        assert group_events(app, u) == expected[u]


def test_account_deletion_queues_its_events(app):
    events = app.groups.events
    g = app.groups.create("alice", "G", ["bob", "carol"])["group"]
    real = events.forward
    events.forward = Broken(real)
    app.api_delete_account(type("Caller", (), {"user": "alice", "addr": "-"})(), {"password": "password1"})
    assert [r["bodies"] for r in app.store.take_group_events(10)] == [
        [{"event": "left", "by": "alice", "user": "alice"}, {"event": "transferred", "by": "alice", "user": "bob"}]]
    events.forward = real
    assert events.redeliver(min_age=0) == 1
    for u in ("bob", "carol"):
        assert group_events(app, u) == [(g, "created", None), (g, "left", "alice"), (g, "transferred", "bob")]


def test_the_maintenance_loop_redelivers(app, monkeypatch):
    """The deployment's loop (embedded always; distributed under the maintenance lease):
    rows left by failed posts are delivered once the send path is back."""
    monkeypatch.setattr("imsrv.servers.maintenance.REDELIVER_EVERY", 0.05)
    events = app.groups.events
    real = events.forward
    events.forward = Broken(real)
    _, expected = changes(app)
    events.min_age = 0.2
    maintenance = Maintenance(app.store, app.cfg, group_events=events)
    maintenance.start()
    try:
        gevent.sleep(0.3)   # rounds that fail (the send path still down): the rows stay
        assert count_rows(app.store, "group_event_queue") == 6
        events.forward = real
        wait_until(lambda: count_rows(app.store, "group_event_queue") == 0, timeout=10)
    finally:
        maintenance.stop()
    for u in USERS:
        assert group_events(app, u) == expected[u]
