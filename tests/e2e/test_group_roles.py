"""Protocol v1.1 "Groups with roles", on both deployments: roles in group_members, group_info,
group_update, group_set_role, group_kick, group_mute, group_transfer, group_dissolve, the
owner's leave rule, groups.max_members, and the group_event entries every change writes to
the members' inboxes (with their seqs, pushed live and found by sync).

Every refused request is checked for its exact error code and to change nothing: the
group's info and members are the same after it, and no inbox involved got an entry.

Decisions where the contract is silent (tested here, listed in imsrv/core/groups.py):
a dissolved group can still be read (group_info, group_members, history) and left, every
other op on it is forbidden; the user an op names must exist and be a member (not_found);
set_role to the role a member has is conflict; mute / update that change nothing answer ok
and post nothing; an admin may kick and mute members only; the recipients of an event are
the members after the change, plus the subject who left or was kicked.
"""
import time

import pytest

from harness.servers import DEPLOYMENTS, running_server
from harness.users import PASSWORD, make_group, new_user, unique_name

pytestmark = pytest.mark.timeout(120)

NOGROUP = "g" + "0" * 16


def now_ms():
    return int(time.time() * 1000)


class Cast:
    """A group of owner, admin, m1, m2 (members) and an outsider, each with a gateway
    connection open from before the group's first change."""

    def __init__(self, server, name="roles"):
        self.server = server
        self.owner, self.admin, self.m1, self.m2, self.outsider = (
            new_user(server, p) for p in ("own", "adm", "mea", "meb", "out"))
        self.all = [self.owner, self.admin, self.m1, self.m2, self.outsider]
        self.conns = {u.name: u.connect(device="live") for u in self.all}
        self.seen = {u.name: self.conns[u.name].head for u in self.all}
        self.gid = make_group(self.owner, [self.admin, self.m1, self.m2], name=name)
        self.owner.call("group_set_role", group=self.gid, user=self.admin.name, role="admin")
        members = self.members()
        self.expect_events({u: [{"event": "created", "by": self.owner.name, "name": name},
                                {"event": "role", "by": self.owner.name, "user": self.admin.name, "role": "admin"}]
                            for u in members}, actor=None)

    def close(self):
        for c in self.conns.values():
            c.close()

    def members(self):
        return [u for u in self.all if u.name in set(self.owner_view()["members"])]

    def owner_view(self, who=None):
        return (who or self.owner).call("group_members", group=self.gid)

    def state(self, who=None):
        who = who or self.owner
        with who.api() as c:
            replies = (c.call("group_info", token=who.token, group=self.gid),
                       c.call("group_members", token=who.token, group=self.gid))
        for r in replies:
            del r["id"]
        return replies

    def new_entries(self, user):
        """``user``'s inbox entries since the last look (sync on its live connection)."""
        conn = self.conns[user.name]
        msgs, head = conn.sync_all(self.seen[user.name])
        assert [m["seq"] for m in msgs] == list(range(self.seen[user.name] + 1, head + 1)), msgs
        self.seen[user.name] = head
        return msgs

    def expect_events(self, expected, actor):
        """``expected``: {User: [event body, ...]}; everyone else of the cast gets nothing
        new.  Each event is a group_event entry of the group from ``actor`` (None: the body's
        "by"), found by sync with the next seqs, and pushed live as a `msg`.  Ordinary
        messages in between are passed over."""
        for u in self.all:
            want = expected.get(u, [])
            got = [m for m in self.new_entries(u) if m.get("kind") is not None]   # messages aside
            assert [m["body"] for m in got] == want, (u, got)
            for m in got:
                assert m["kind"] == "group_event" and m["group"] == self.gid, m
                assert m["from"] == (actor or m["body"]["by"]), m
                assert "to" not in m and isinstance(m["mid"], int) and isinstance(m["ts"], int), m
            conn = self.conns[u.name]
            for m in got:   # the live push of each, with the same seq and mid
                push = conn.wait_push("msg", seq=m["seq"])
                assert push["mid"] == m["mid"] and push["body"] == m["body"], push
                assert push["kind"] == "group_event" and push["group"] == self.gid, push

    def settle(self):
        """Pass over everything in the inboxes so far."""
        for u in self.all:
            self.new_entries(u)

    def refused(self, who, op, code, viewer=None, **fields):
        """``who`` asks ``op`` and gets error ``code``; nothing changed (the group as
        ``viewer``, default the owner, sees it; the inboxes)."""
        before = self.state(viewer)
        with who.api() as c:
            rep = c.error(op, code, token=who.token, **fields)
        assert self.state(viewer) == before
        self.expect_events({}, actor=None)
        return rep


@pytest.fixture
def cast(server):
    c = Cast(server)
    yield c
    c.close()


# ---------------------------------------------------------------- reads
def test_group_members_and_group_info_show_roles(cast):
    info, members = cast.state(cast.m1)
    assert info == {"op": "ok", "group": cast.gid, "name": "roles", "notice": "", "owner": cast.owner.name,
                    "size": 4, "max_members": 500, "muted_all": 0, "dissolved": 0}, info
    assert members == {"op": "ok", "members": sorted([cast.owner.name, cast.admin.name, cast.m1.name, cast.m2.name]),
                       "roles": {cast.owner.name: "owner", cast.admin.name: "admin", cast.m1.name: "member",
                                 cast.m2.name: "member"},
                       "muted": {}}, members
    with cast.outsider.api() as c:
        for op in ("group_info", "group_members"):
            c.error(op, "forbidden", token=cast.outsider.token, group=cast.gid)
            rep = c.error(op, "not_found", token=cast.outsider.token, group=NOGROUP)
            assert NOGROUP in rep["message"]


def test_every_v11_op_on_an_unknown_group_is_not_found_and_for_an_outsider_forbidden(cast):
    ops = [("group_info", {}), ("group_update", {"name": "x"}),
           ("group_set_role", {"user": cast.m1.name, "role": "admin"}),
           ("group_kick", {"user": cast.m1.name}), ("group_mute", {"user": cast.m1.name, "until": 0}),
           ("group_mute", {"until": 0}), ("group_transfer", {"user": cast.m1.name}), ("group_dissolve", {})]
    for op, fields in ops:
        rep = cast.refused(cast.owner, op, "not_found", group=NOGROUP, **fields)
        assert NOGROUP in rep["message"], rep
        rep = cast.refused(cast.outsider, op, "forbidden", group=cast.gid, **fields)
        assert "not a member" in rep["message"], rep


# ---------------------------------------------------------------- group_update
def test_group_update_by_owner_and_admins(cast):
    o, a = cast.owner.name, cast.admin.name
    cast.owner.call("group_update", group=cast.gid, name="Renamed")
    cast.admin.call("group_update", group=cast.gid, notice="n" * 1024)
    cast.admin.call("group_update", group=cast.gid, name="Both", notice="")
    everyone = cast.members()
    cast.expect_events({u: [{"event": "updated", "by": o, "name": "Renamed"},
                            {"event": "updated", "by": a, "notice": "n" * 1024},
                            {"event": "updated", "by": a, "name": "Both", "notice": ""}] for u in everyone},
                       actor=None)
    info, _ = cast.state(cast.m2)
    assert (info["name"], info["notice"]) == ("Both", "")
    assert {g["group"]: g["name"] for g in cast.m1.call("groups")["groups"]}[cast.gid] == "Both"
    # the same again changes nothing: ok, and no event
    cast.owner.call("group_update", group=cast.gid, name="Both")
    cast.expect_events({}, actor=None)


def test_group_update_refusals(cast):
    rep = cast.refused(cast.m1, "group_update", "forbidden", group=cast.gid, name="mine")
    assert "owner or an admin" in rep["message"], rep
    rep = cast.refused(cast.owner, "group_update", "bad_request", group=cast.gid, notice="n" * 1025)
    assert "notice" in rep["message"]
    rep = cast.refused(cast.owner, "group_update", "bad_request", group=cast.gid)
    assert "name" in rep["message"] and "notice" in rep["message"]
    cast.refused(cast.owner, "group_update", "bad_request", group=cast.gid, name="")
    cast.refused(cast.owner, "group_update", "bad_request", group=cast.gid, name="x" * 65)
    cast.refused(cast.owner, "group_update", "bad_request", group=cast.gid, notice=5)


# ---------------------------------------------------------------- group_set_role
def test_group_set_role(cast):
    o = cast.owner.name
    cast.owner.call("group_set_role", group=cast.gid, user=cast.m1.name, role="admin")
    cast.owner.call("group_set_role", group=cast.gid, user=cast.admin.name, role="member")
    cast.expect_events({u: [{"event": "role", "by": o, "user": cast.m1.name, "role": "admin"},
                            {"event": "role", "by": o, "user": cast.admin.name, "role": "member"}]
                        for u in cast.members()}, actor=None)
    roles = cast.state()[1]["roles"]
    assert (roles[cast.m1.name], roles[cast.admin.name], roles[o]) == ("admin", "member", "owner")


def test_group_set_role_refusals(cast):
    g = cast.gid
    rep = cast.refused(cast.admin, "group_set_role", "forbidden", group=g, user=cast.m1.name, role="admin")
    assert "only the owner" in rep["message"], rep
    cast.refused(cast.m1, "group_set_role", "forbidden", group=g, user=cast.m2.name, role="admin")
    rep = cast.refused(cast.owner, "group_set_role", "forbidden", group=g, user=cast.owner.name, role="member")
    assert "group_transfer" in rep["message"], rep
    rep = cast.refused(cast.owner, "group_set_role", "conflict", group=g, user=cast.admin.name, role="admin")
    assert "already" in rep["message"], rep
    cast.refused(cast.owner, "group_set_role", "conflict", group=g, user=cast.m1.name, role="member")
    rep = cast.refused(cast.owner, "group_set_role", "bad_request", group=g, user=cast.m1.name, role="owner")
    assert "role" in rep["message"], rep
    ghost = unique_name("ghost")
    rep = cast.refused(cast.owner, "group_set_role", "not_found", group=g, user=ghost, role="admin")
    assert ghost in rep["message"]
    rep = cast.refused(cast.owner, "group_set_role", "not_found", group=g, user=cast.outsider.name, role="admin")
    assert "not a member" in rep["message"], rep


# ---------------------------------------------------------------- group_kick
def test_group_kick_by_owner_and_admin(cast):
    o, a = cast.owner.name, cast.admin.name
    everyone = cast.members()
    cast.admin.call("group_kick", group=cast.gid, user=cast.m1.name)
    # every member, the kicked one included, gets the event
    cast.expect_events({u: [{"event": "kicked", "by": a, "user": cast.m1.name}] for u in everyone}, actor=None)
    cast.owner.call("group_kick", group=cast.gid, user=cast.admin.name)   # the owner may kick an admin
    cast.expect_events({u: [{"event": "kicked", "by": o, "user": a}] for u in everyone if u is not cast.m1},
                       actor=None)
    info, members = cast.state()
    assert members["members"] == sorted([o, cast.m2.name]) and info["size"] == 2
    # the kicked are outsiders now: no reads, no sends, nothing more in their inboxes
    for kicked in (cast.m1, cast.admin):
        with kicked.api() as c:
            c.error("group_members", "forbidden", token=kicked.token, group=cast.gid)
            c.error("history", "forbidden", token=kicked.token, group=cast.gid)
        cast.conns[kicked.name].error("send", "forbidden", group=cast.gid, body="still here?")
        assert cast.gid not in {g["group"] for g in kicked.call("groups")["groups"]}
    cast.conns[o].send_msg("after", group=cast.gid)
    assert [m["body"] for m in cast.new_entries(cast.m2)] == ["after"]
    assert cast.new_entries(cast.m1) == [] and cast.new_entries(cast.admin) == []


def test_group_kick_refusals(cast):
    g = cast.gid
    cast.owner.call("group_set_role", group=g, user=cast.m2.name, role="admin")
    cast.settle()
    rep = cast.refused(cast.admin, "group_kick", "forbidden", group=g, user=cast.m2.name)
    assert "members only" in rep["message"], rep
    rep = cast.refused(cast.admin, "group_kick", "forbidden", group=g, user=cast.owner.name)
    assert "owner" in rep["message"], rep
    cast.refused(cast.admin, "group_kick", "forbidden", group=g, user=cast.admin.name)   # itself: an admin
    cast.refused(cast.owner, "group_kick", "forbidden", group=g, user=cast.owner.name)
    rep = cast.refused(cast.m1, "group_kick", "forbidden", group=g, user=cast.m2.name)
    assert "owner or an admin" in rep["message"], rep
    cast.refused(cast.m1, "group_kick", "forbidden", group=g, user=cast.m1.name)
    cast.refused(cast.owner, "group_kick", "not_found", group=g, user=cast.outsider.name)
    cast.refused(cast.owner, "group_kick", "not_found", group=g, user=unique_name("ghost"))


# ---------------------------------------------------------------- group_mute
def test_group_mute_a_member_and_everyone(cast):
    o, a = cast.owner.name, cast.admin.name
    until = now_ms() + 600_000
    everyone = cast.members()
    cast.admin.call("group_mute", group=cast.gid, user=cast.m1.name, until=until)
    cast.owner.call("group_mute", group=cast.gid, user=cast.admin.name, until=until + 1)   # owner: an admin too
    cast.expect_events({u: [{"event": "muted", "by": a, "user": cast.m1.name, "until": until},
                            {"event": "muted", "by": o, "user": a, "until": until + 1}] for u in everyone},
                       actor=None)
    assert cast.state(cast.m2)[1]["muted"] == {cast.m1.name: until, a: until + 1}
    msg = cast.conns[cast.m1.name].error("send", "forbidden", group=cast.gid, body="muted?")
    assert "muted" in msg["message"], msg
    cast.conns[cast.m2.name].send_msg("m2 speaks", group=cast.gid)
    # the same mute again: ok, no event; 0 unmutes
    cast.admin.call("group_mute", group=cast.gid, user=cast.m1.name, until=until)
    cast.admin.call("group_mute", group=cast.gid, user=cast.m1.name, until=0)
    cast.owner.call("group_mute", group=cast.gid, user=a, until=1)   # a time past: unmuted too
    cast.expect_events({u: [{"event": "unmuted", "by": a, "user": cast.m1.name},
                            {"event": "unmuted", "by": o, "user": a}] for u in everyone}, actor=None)
    assert cast.state()[1]["muted"] == {}
    cast.conns[cast.m1.name].send_msg("m1 speaks", group=cast.gid)

    # everyone but the owner and admins
    cast.admin.call("group_mute", group=cast.gid, until=until)
    cast.expect_events({u: [{"event": "muted", "by": a, "until": until}] for u in everyone}, actor=None)
    info, members = cast.state()
    # group_members names every member the mute of everyone silences, not the owner and admins
    silenced = {u for u, role in members["roles"].items() if role == "member"}
    assert {cast.m1.name, cast.m2.name} <= silenced
    assert info["muted_all"] == until and members["muted"] == dict.fromkeys(silenced, until), members
    for m in (cast.m1, cast.m2):
        cast.conns[m.name].error("send", "forbidden", group=cast.gid, body="all muted?")
    cast.conns[a].send_msg("an admin speaks", group=cast.gid)
    cast.conns[o].send_msg("the owner speaks", group=cast.gid)
    cast.owner.call("group_mute", group=cast.gid, until=0)
    cast.expect_events({u: [{"event": "unmuted", "by": o}] for u in everyone}, actor=None)
    assert cast.state()[0]["muted_all"] == 0
    cast.conns[cast.m2.name].send_msg("back", group=cast.gid)
    texts = [m["body"] for m in cast.m1.call("history", group=cast.gid)["msgs"] if m.get("kind") is None]
    assert texts == ["back", "the owner speaks", "an admin speaks", "m1 speaks", "m2 speaks"], texts


def test_group_mute_forever(cast):
    o = cast.owner.name
    everyone = cast.members()
    cast.owner.call("group_mute", group=cast.gid, user=cast.m1.name, until=-1)
    cast.owner.call("group_mute", group=cast.gid, until=-1)
    cast.expect_events({u: [{"event": "muted", "by": o, "user": cast.m1.name, "until": -1},
                            {"event": "muted", "by": o, "until": -1}] for u in everyone}, actor=None)
    info, members = cast.state()
    silenced = {u for u, role in members["roles"].items() if role == "member"}
    assert members["muted"] == dict.fromkeys(silenced, -1) and info["muted_all"] == -1, members
    cast.conns[cast.m1.name].error("send", "forbidden", group=cast.gid, body="forever?")
    cast.conns[cast.m2.name].error("send", "forbidden", group=cast.gid, body="all, forever?")
    cast.owner.call("group_mute", group=cast.gid, until=0)
    cast.conns[cast.m2.name].send_msg("back", group=cast.gid)
    cast.conns[cast.m1.name].error("send", "forbidden", group=cast.gid, body="still me?")
    # each member's end is the later of their own mute and the mute of everyone
    until = now_ms() + 600_000
    cast.owner.call("group_mute", group=cast.gid, until=until)
    muted = cast.state()[1]["muted"]
    assert muted[cast.m1.name] == -1 and muted[cast.m2.name] == until, muted


def test_group_mute_refusals(cast):
    g, until = cast.gid, now_ms() + 600_000
    cast.owner.call("group_set_role", group=g, user=cast.m2.name, role="admin")
    cast.settle()
    rep = cast.refused(cast.admin, "group_mute", "forbidden", group=g, user=cast.m2.name, until=until)
    assert "members only" in rep["message"], rep
    rep = cast.refused(cast.admin, "group_mute", "forbidden", group=g, user=cast.owner.name, until=until)
    assert "owner" in rep["message"], rep
    cast.refused(cast.owner, "group_mute", "forbidden", group=g, user=cast.owner.name, until=until)
    cast.refused(cast.m1, "group_mute", "forbidden", group=g, user=cast.m2.name, until=until)
    cast.refused(cast.m1, "group_mute", "forbidden", group=g, until=until)
    cast.refused(cast.owner, "group_mute", "not_found", group=g, user=cast.outsider.name, until=until)
    cast.refused(cast.owner, "group_mute", "not_found", group=g, user=unique_name("ghost"), until=until)
    for bad in (-2, "soon", 1.5):
        rep = cast.refused(cast.owner, "group_mute", "bad_request", group=g, user=cast.m1.name, until=bad)
        assert "until" in rep["message"], rep
    cast.refused(cast.owner, "group_mute", "bad_request", group=g, user=cast.m1.name)


# ---------------------------------------------------------------- group_transfer, leave
def test_group_transfer_and_the_owners_leave_rule(cast):
    o = cast.owner.name
    rep = cast.refused(cast.owner, "group_leave", "forbidden", group=cast.gid)
    assert "group_transfer" in rep["message"] and "group_dissolve" in rep["message"], rep
    everyone = cast.members()
    cast.owner.call("group_transfer", group=cast.gid, user=cast.m1.name)
    cast.expect_events({u: [{"event": "transferred", "by": o, "user": cast.m1.name}] for u in everyone},
                       actor=None)
    info, members = cast.state()
    assert info["owner"] == cast.m1.name
    assert members["roles"] == {o: "admin", cast.admin.name: "admin", cast.m1.name: "owner", cast.m2.name: "member"}
    # the old owner, an admin now, may not do the owner's things any more, and may leave
    cast.refused(cast.owner, "group_transfer", "forbidden", group=cast.gid, user=cast.m2.name)
    cast.refused(cast.owner, "group_dissolve", "forbidden", group=cast.gid)
    cast.refused(cast.m1, "group_leave", "forbidden", group=cast.gid)
    cast.owner.call("group_leave", group=cast.gid)
    cast.expect_events({u: [{"event": "left", "by": o, "user": o}] for u in everyone}, actor=None)
    assert cast.owner.name not in cast.state(cast.m1)[1]["members"]
    # a member leaves: the event reaches the remaining members and the leaver
    cast.m2.call("group_leave", group=cast.gid)
    cast.expect_events({u: [{"event": "left", "by": cast.m2.name, "user": cast.m2.name}]
                        for u in (cast.admin, cast.m1, cast.m2)}, actor=None)


def test_group_transfer_refusals(cast):
    g = cast.gid
    rep = cast.refused(cast.admin, "group_transfer", "forbidden", group=g, user=cast.m1.name)
    assert "only the owner" in rep["message"], rep
    cast.refused(cast.m1, "group_transfer", "forbidden", group=g, user=cast.m1.name)
    cast.refused(cast.owner, "group_transfer", "not_found", group=g, user=cast.outsider.name)
    cast.refused(cast.owner, "group_transfer", "not_found", group=g, user=unique_name("ghost"))
    rep = cast.refused(cast.owner, "group_transfer", "bad_request", group=g, user=cast.owner.name)
    assert "user" in rep["message"], rep


# ---------------------------------------------------------------- group_dissolve
def test_group_dissolve(cast):
    o = cast.owner.name
    cast.conns[cast.m1.name].send_msg("before", group=cast.gid)
    cast.refused(cast.admin, "group_dissolve", "forbidden", group=cast.gid)
    cast.refused(cast.m1, "group_dissolve", "forbidden", group=cast.gid)
    everyone = cast.members()
    cast.owner.call("group_dissolve", group=cast.gid)
    cast.expect_events({u: [{"event": "dissolved", "by": o}] for u in everyone}, actor=None)
    # no more sends, not even the owner's
    for u in everyone:
        rep = cast.conns[u.name].error("send", "forbidden", group=cast.gid, body="anyone?")
        assert "dissolved" in rep["message"], rep
    # the former members still read it
    info, members = cast.state(cast.m2)
    assert info["dissolved"] > 0 and info["owner"] == o and info["size"] == 4
    assert len(members["members"]) == 4
    hist = [m["body"] for m in cast.m2.call("history", group=cast.gid)["msgs"] if m.get("kind") is None]
    assert hist == ["before"], hist
    # every change is refused
    g, m1 = cast.gid, cast.m1.name
    for who, op, fields in (
            (cast.owner, "group_update", {"name": "x"}), (cast.owner, "group_set_role", {"user": m1, "role": "admin"}),
            (cast.owner, "group_kick", {"user": m1}), (cast.admin, "group_mute", {"user": m1, "until": 0}),
            (cast.owner, "group_mute", {"until": 0}), (cast.owner, "group_transfer", {"user": m1}),
            (cast.owner, "group_dissolve", {}), (cast.m1, "group_invite", {"users": [cast.outsider.name]})):
        rep = cast.refused(who, op, "forbidden", group=g, **fields)
        assert "dissolved" in rep["message"], (op, rep)
    # but anyone may leave it now, the owner too (only the leaver is told)
    cast.owner.call("group_leave", group=g)
    cast.expect_events({cast.owner: [{"event": "left", "by": o, "user": o}]}, actor=None)
    assert g not in {x["group"] for x in cast.owner.call("groups")["groups"]}
    cast.refused(cast.owner, "group_info", "forbidden", viewer=cast.m2, group=g)
    cast.refused(cast.owner, "history", "forbidden", viewer=cast.m2, group=g)


# ---------------------------------------------------------------- v1 ops write events too
def test_invite_writes_an_event_per_invited_user_to_every_member(cast, server):
    x, y = new_user(server, "inx"), new_user(server, "iny")
    everyone = cast.members()
    cast.m1.call("group_invite", group=cast.gid, users=[x.name, y.name])   # any member may invite
    with x.connect() as gx:
        msgs, head = gx.sync_all(0)
    bodies = [{"event": "invited", "by": cast.m1.name, "user": x.name},
              {"event": "invited", "by": cast.m1.name, "user": y.name}]
    assert [m["body"] for m in msgs] == bodies and head == 2
    assert all(m["kind"] == "group_event" and m["from"] == cast.m1.name for m in msgs)
    cast.expect_events({u: bodies for u in everyone}, actor=None)
    # already members: conflict, nothing changed
    cast.refused(cast.m1, "group_invite", "conflict", group=cast.gid, users=[x.name, cast.m2.name])


def test_leave_by_a_member_and_a_non_member(cast):
    cast.refused(cast.outsider, "group_leave", "forbidden", group=cast.gid)
    cast.refused(cast.outsider, "group_leave", "not_found", group=NOGROUP)
    everyone = cast.members()
    cast.admin.call("group_leave", group=cast.gid)
    cast.expect_events({u: [{"event": "left", "by": cast.admin.name, "user": cast.admin.name}] for u in everyone},
                       actor=None)


def test_delete_account_passes_the_group_to_the_oldest_admin(cast):
    """delete_account of the owner: the group passes to its admin (not the oldest member),
    and the members are told: left, then transferred."""
    o = cast.owner.name
    everyone = [u for u in cast.members() if u is not cast.owner]
    cast.conns.pop(o).close()
    cast.all.remove(cast.owner)
    cast.owner.call("delete_account", password=PASSWORD)
    cast.expect_events({u: [{"event": "left", "by": o, "user": o},
                            {"event": "transferred", "by": o, "user": cast.admin.name}] for u in everyone},
                       actor=None)
    info, members = cast.state(cast.admin)
    assert info["owner"] == cast.admin.name and members["roles"][cast.admin.name] == "owner"
    assert o not in members["members"]


# ---------------------------------------------------------------- groups.max_members
@pytest.fixture(scope="module", params=DEPLOYMENTS)
def small_groups(request, tmp_path_factory):
    config = {"groups": {"max_members": 3}}
    with running_server(request.param, tmp_path_factory.mktemp("smallgroups"), config, name="smallgroups") as srv:
        yield srv


def test_max_members(small_groups):
    srv = small_groups
    owner, a, b, c, d = (new_user(srv, p) for p in ("mxo", "mxa", "mxb", "mxc", "mxd"))
    with srv.api() as api:
        rep = api.error("group_create", "forbidden", token=owner.token, name="big",
                        members=[a.name, b.name, c.name])
        assert rep["message"].startswith("group is full"), rep
        assert api.call("groups", token=owner.token)["groups"] == []
        gid = api.call("group_create", token=owner.token, name="small", members=[a.name])["group"]
        assert api.call("group_info", token=owner.token, group=gid)["max_members"] == 3
        # two more do not fit: the whole invite is refused, nobody added
        rep = api.error("group_invite", "forbidden", token=a.token, group=gid, users=[b.name, c.name])
        assert rep["message"].startswith("group is full"), rep
        assert sorted(api.call("group_members", token=owner.token, group=gid)["members"]) == \
            sorted([owner.name, a.name])
        api.call("group_invite", token=a.token, group=gid, users=[b.name])
        rep = api.error("group_invite", "forbidden", token=owner.token, group=gid, users=[d.name])
        assert rep["message"].startswith("group is full"), rep
        # already-members only: conflict, as before (nothing to add)
        api.error("group_invite", "conflict", token=owner.token, group=gid, users=[b.name])
        # a leave makes room
        api.call("group_leave", token=b.token, group=gid)
        api.call("group_invite", token=owner.token, group=gid, users=[d.name])
        assert api.call("group_info", token=owner.token, group=gid)["size"] == 3
    with c.connect() as gc, d.connect() as gd:
        assert gc.sync(0)["msgs"] == []
        assert [m["body"]["event"] for m in gd.sync_all(0)[0]] == ["invited"]
