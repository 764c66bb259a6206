"""Unit tests of the groups core (imsrv/core/groups.py, group_events.py): no sockets, SQLite
in memory, the App's in-process send path.  What the end-to-end suite cannot easily reach:
an event post that fails (the change stands, ok, logged), a store write that loses a race
(answered from a fresh read), the mute ends, and delete_account's events."""
import io
import json

import pytest

from imsrv import config, logs
from imsrv.backends import open_store
from imsrv.backends.base import StoreError
from imsrv.backends.memory import LocalHub
from imsrv.core.app import App
from imsrv.core.groups import effective_until
from imsrv.protocol.errors import Conflict, Forbidden, NotFound, Unavailable


@pytest.fixture
def app():
    cfg = config.load(env={}, overrides={("accounts", "argon2_time_cost"): 1,
                                         ("accounts", "argon2_memory_cost"): 8192,
                                         ("groups", "max_members"): 4})
    store = open_store("sqlite:///:memory:")
    store.migrate()
    a = App(cfg, store, LocalHub())
    for n in ("alice", "bob", "carol", "dave", "erin"):
        a.accounts.register(n, "password1")
    yield a
    store.close()


@pytest.fixture
def log(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(logs, "_stream", out)
    return out


def bodies(app, user):
    return [json.loads(r["body"]) for r in app.store.inbox_since(user, 0, 1000)]


def test_events_in_every_members_inbox_in_order(app):
    g = app.groups.create("alice", "team", ["bob"])["group"]
    app.groups.invite("bob", g, ["carol", "dave"])
    app.groups.set_role("alice", g, "bob", "admin")
    app.groups.kick("bob", g, "dave")
    assert bodies(app, "dave") == [{"event": "invited", "by": "bob", "user": "carol"},
                                   {"event": "invited", "by": "bob", "user": "dave"},
                                   {"event": "role", "by": "alice", "user": "bob", "role": "admin"},
                                   {"event": "kicked", "by": "bob", "user": "dave"}]
    assert bodies(app, "alice")[0] == {"event": "created", "by": "alice", "name": "team"}
    assert bodies(app, "alice")[1:] == bodies(app, "dave")
    assert app.store.head("erin") == 0


@pytest.mark.parametrize("how", ["raises", "unavailable"])
def test_a_failed_event_post_leaves_the_change_and_answers_ok(app, log, how):
    g = app.groups.create("alice", "team", ["bob", "carol"])["group"]
    head = app.store.head("bob")

    def broken(reqs):
        if how == "raises":
            raise StoreError("lost connection to MySQL server")
        for r in reqs:
            r.result = Unavailable("message store unavailable")

    app.groups.events.forward = broken
    assert app.groups.kick("alice", g, "carol") == {}
    assert app.store.list_members(g) == ["alice", "bob"]
    assert app.store.head("bob") == head
    line = [x for x in log.getvalue().splitlines() if "event=group_event_failed" in x]
    assert len(line) == 1 and f"group={g}" in line[0] and "events=kicked" in line[0], log.getvalue()
    assert "recipients=3" in line[0] and ("lost connection" in line[0] or "unavailable" in line[0])
    # the events stay queued (imsrv/core/group_events.py redeliver; tests/test_group_events_outbox.py)
    assert [r["bodies"][0]["event"] for r in app.store.take_group_events(10)] == ["kicked"]


def test_a_write_that_lost_a_race_is_answered_from_a_fresh_read(app, monkeypatch):
    g = app.groups.create("alice", "team", ["bob", "carol"])["group"]
    app.groups.set_role("alice", g, "bob", "admin")
    real = app.store.remove_member

    def promoted_meanwhile(group, user, roles=None, events=None):
        app.store.set_member_role(group, user, "admin")   # carol made an admin just before
        return real(group, user, roles, events=events)

    monkeypatch.setattr(app.store, "remove_member", promoted_meanwhile)
    with pytest.raises(Forbidden) as e:
        app.groups.kick("bob", g, "carol")
    assert "members only" in e.value.message
    assert app.store.list_members(g) == ["alice", "bob", "carol"]
    monkeypatch.undo()

    real_transfer = app.store.transfer_group

    def gone_meanwhile(group, old, new, events=None):
        app.store.remove_member(group, new)
        return real_transfer(group, old, new, events=events)

    monkeypatch.setattr(app.store, "transfer_group", gone_meanwhile)
    with pytest.raises(NotFound):
        app.groups.transfer("alice", g, "carol")
    assert app.store.get_group(g)["owner"] == "alice"
    monkeypatch.undo()

    monkeypatch.setattr(app.store, "set_member_role", lambda *a, events=None: (False, None))   # set by another owner call
    with pytest.raises(Conflict):
        app.groups.set_role("alice", g, "bob", "member")


def test_invite_past_max_members_adds_nobody(app):
    g = app.groups.create("alice", "team", ["bob"])["group"]
    with pytest.raises(Forbidden) as e:
        app.groups.invite("alice", g, ["carol", "dave", "erin"])
    assert e.value.message.startswith("group is full")
    assert app.store.list_members(g) == ["alice", "bob"]
    app.groups.invite("alice", g, ["carol", "dave"])
    with pytest.raises(Forbidden):
        app.groups.create("erin", "big", ["alice", "bob", "carol", "dave"])
    assert app.groups.list("erin") == {"groups": []}


def test_mute_ends():
    assert effective_until(0, 1000) == 0
    assert effective_until(999, 1000) == 0 and effective_until(1000, 1000) == 0
    assert effective_until(1001, 1000) == 1001
    assert effective_until(-1, 1000) == -1


def test_delete_account_tells_the_members(app, log):
    g = app.groups.create("alice", "team", ["bob", "carol"])["group"]
    app.groups.set_role("alice", g, "carol", "admin")
    dead = app.groups.create("bob", "dead", ["alice"])["group"]
    app.groups.dissolve("bob", dead)
    t = app.accounts.login("alice", "password1", "d", "10.0.0.1")["token"]
    rep = app.api_request({"op": "delete_account", "token": t, "password": "password1"}, "10.0.0.1")
    assert rep == {"op": "ok"}
    assert bodies(app, "bob")[-2:] == [{"event": "left", "by": "alice", "user": "alice"},
                                       {"event": "transferred", "by": "alice", "user": "carol"}]
    assert app.groups.info("carol", g)["owner"] == "carol"
    # the dissolved group is not told
    assert [b["event"] for b in bodies(app, "bob")] == ["created", "role", "created", "dissolved", "left",
                                                       "transferred"]
    assert "group_event_failed" not in log.getvalue()
