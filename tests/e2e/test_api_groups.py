"""API groups, history and admin notify.

Contract: PROTOCOL.md API ops table (group_*, groups, history, notify) and "Contact rules".
"""

import time

import pytest

from harness.servers import ADMIN_KEY
from harness.users import befriend, make_group, new_user, unique_name

pytestmark = pytest.mark.timeout(60)


def members_of(user, gid):
    rep = user.call("group_members", group=gid)
    assert isinstance(rep["members"], list)
    assert len(rep["members"]) == len(set(rep["members"])), rep
    return set(rep["members"])


def groups_of(user):
    rep = user.call("groups")
    return {g["group"]: g["name"] for g in rep["groups"]}


@pytest.fixture
def trio(server):
    """owner, m1, m2: owner is friends with both; m1 and m2 are not friends."""
    owner, m1, m2 = (new_user(server, p) for p in ("own", "mem", "mem"))
    befriend(owner, m1)
    befriend(owner, m2)
    return owner, m1, m2


# ---------------------------------------------------------------- groups

def test_group_create_members_and_groups(trio):
    owner, m1, m2 = trio
    gid = make_group(owner, [m1, m2], name="Book club")
    for u in trio:
        assert members_of(u, gid) == {owner.name, m1.name, m2.name}
        assert groups_of(u).get(gid) == "Book club"


def test_group_create_without_members(server):
    u = new_user(server, "solo")
    gid = u.call("group_create", name="just me")["group"]
    assert isinstance(gid, str) and gid
    assert members_of(u, gid) == {u.name}
    assert groups_of(u) == {gid: "just me"}


def test_group_ids_are_distinct(server):
    u = new_user(server, "gid")
    gids = {u.call("group_create", name="same name")["group"] for _ in range(3)}
    assert len(gids) == 3
    assert set(groups_of(u)) == gids


def test_group_name_limit(server):
    u = new_user(server, "gnl")
    u.call("group_create", name="g" * 64)
    with u.api() as c:
        rep = c.error("group_create", "bad_request", token=u.token, name="g" * 65)
        assert "name" in rep["message"].lower()


def test_group_create_with_unknown_member_is_not_found(server):
    u = new_user(server, "gun")
    with u.api() as c:
        c.error("group_create", "not_found", token=u.token, name="g", members=[unique_name("ghost")])
    assert groups_of(u) == {}


def test_group_invite_by_member(server, trio):
    owner, m1, m2 = trio
    newbie = new_user(server, "newb")
    befriend(m1, newbie)
    gid = make_group(owner, [m1, m2])
    m1.call("group_invite", group=gid, users=[newbie.name])
    assert members_of(owner, gid) == {owner.name, m1.name, m2.name, newbie.name}
    assert gid in groups_of(newbie)
    # and the newcomer receives group messages from now on
    with newbie.connect() as gn, owner.connect() as go:
        go.send_msg("welcome", group=gid)
        push = gn.wait_push("msg")
        assert push["group"] == gid and push["from"] == owner.name and push["body"] == "welcome"


def test_group_invite_by_non_member_is_forbidden(server, trio):
    owner, m1, m2 = trio
    outsider = new_user(server, "out")
    target = new_user(server, "tgt")
    befriend(outsider, target)
    gid = make_group(owner, [m1])
    with outsider.api() as c:
        c.error("group_invite", "forbidden", token=outsider.token, group=gid, users=[target.name])
        # m2 is a friend of the owner, but the outsider is still not a member
        c.error("group_invite", "forbidden", token=outsider.token, group=gid, users=[outsider.name])
    assert members_of(owner, gid) == {owner.name, m1.name}


def test_group_invite_existing_member_is_conflict(trio):
    owner, m1, m2 = trio
    gid = make_group(owner, [m1])
    with owner.api() as c:
        c.error("group_invite", "conflict", token=owner.token, group=gid, users=[m1.name])


def test_group_invite_unknown_group_or_user_is_not_found(trio):
    owner, m1, m2 = trio
    gid = make_group(owner, [m1])
    with owner.api() as c:
        c.error("group_invite", "not_found", token=owner.token, group="no-such-group-" + unique_name(), users=[m2.name])
        c.error("group_invite", "not_found", token=owner.token, group=gid, users=[unique_name("ghost")])
    assert members_of(owner, gid) == {owner.name, m1.name}


def test_group_members_only_for_members(server, trio):
    owner, m1, m2 = trio
    gid = make_group(owner, [m1])
    with m2.api() as c:
        c.error("group_members", "forbidden", token=m2.token, group=gid)
        c.error("group_members", "not_found", token=m2.token, group="no-such-group-" + unique_name())


def test_group_leave(trio):
    owner, m1, m2 = trio
    gid = make_group(owner, [m1, m2])
    m2.call("group_leave", group=gid)
    assert members_of(owner, gid) == {owner.name, m1.name}
    assert gid not in groups_of(m2)
    with m2.api() as c:
        c.error("group_members", "forbidden", token=m2.token, group=gid)
    with owner.connect() as go, m1.connect() as g1, m2.connect() as g2:
        g2.error("send", "forbidden", group=gid, body="I left")
        go.send_msg("after leave", group=gid)
        g1.wait_push("msg", body="after leave")
        g2.sync_point()
        assert not [p for p in g2.all_pushes if p["op"] == "msg"]


def test_group_non_friends_can_message_the_group(trio):
    """m1 and m2 are not friends, but a group member may send to the group."""
    owner, m1, m2 = trio
    gid = make_group(owner, [m1, m2])
    with owner.connect() as go, m1.connect() as g1, m2.connect() as g2:
        ack = g1.send_msg({"text": "hi all"}, group=gid)
        for g in (go, g2):
            push = g.wait_push("msg")
            assert push["group"] == gid and push["from"] == m1.name
            assert push["body"] == {"text": "hi all"} and push["mid"] == ack["mid"]
        # direct messages between the non-friends are still forbidden
        g1.error("send", "forbidden", to=m2.name, body="dm")


def test_group_send_by_non_member_is_forbidden(server, trio):
    owner, m1, m2 = trio
    gid = make_group(owner, [m1])
    with m2.connect() as g2:
        g2.error("send", "forbidden", group=gid, body="let me in")
        g2.error("send", "not_found", group="no-such-group-" + unique_name(), body="x")


def test_group_fan_out_to_all_members_and_devices(server):
    owner = new_user(server, "fan")
    members = [new_user(server, "fm") for _ in range(5)]
    for m in members:
        befriend(owner, m)
    gid = make_group(owner, members)
    conns = [m.connect() for m in members]
    own1 = owner.connect(device="one")
    own2 = owner.connect(device="two")
    try:
        acks = [own1.send_msg(f"g{i}", group=gid, cmid=f"c{i}") for i in range(5)]
        for c in conns + [own2]:
            got = c.wait_pushes("msg", 5)
            assert [p["body"] for p in got] == [f"g{i}" for i in range(5)]
            assert [p["mid"] for p in got] == [a["mid"] for a in acks]
            assert all(p["group"] == gid and p["from"] == owner.name for p in got)
            assert [p.get("cmid") for p in got] == [f"c{i}" for i in range(5)]
            seqs = [p["seq"] for p in got]
            assert seqs == sorted(seqs) and len(set(seqs)) == 5
        # the owner's other device gets the owner's own inbox seqs (the ack seqs)
        assert [p["seq"] for p in own2.all_pushes if p["op"] == "msg"] == [a["seq"] for a in acks]
        own1.sync_point()
        assert not [p for p in own1.all_pushes if p["op"] == "msg"]
    finally:
        for c in conns + [own1, own2]:
            c.close()


# ---------------------------------------------------------------- history

def test_history_paging_newest_first(server, alice, bob):
    befriend(alice, bob)
    with alice.connect() as ga, bob.connect() as gb:
        acks = []
        for i in range(7):
            sender, to = (ga, bob.name) if i % 2 == 0 else (gb, alice.name)
            acks.append(sender.send_msg(f"h{i}", to=to))
    mids = [a["mid"] for a in acks]
    full = alice.call("history", **{"with": bob.name})["msgs"]
    assert [m["body"] for m in full] == [f"h{i}" for i in reversed(range(7))]
    assert [m["mid"] for m in full] == list(reversed(mids))
    for m in full:
        assert m["from"] in (alice.name, bob.name) and "ts" in m
    # the other side sees the same conversation
    assert [m["mid"] for m in bob.call("history", **{"with": alice.name})["msgs"]] == list(reversed(mids))

    page1 = alice.call("history", limit=3, **{"with": bob.name})["msgs"]
    assert [m["body"] for m in page1] == ["h6", "h5", "h4"]
    page2 = alice.call("history", limit=3, before=page1[-1]["mid"], **{"with": bob.name})["msgs"]
    assert [m["body"] for m in page2] == ["h3", "h2", "h1"]
    page3 = alice.call("history", limit=3, before=page2[-1]["mid"], **{"with": bob.name})["msgs"]
    assert [m["body"] for m in page3] == ["h0"]
    page4 = alice.call("history", limit=3, before=page3[-1]["mid"], **{"with": bob.name})["msgs"]
    assert page4 == []


def test_history_default_limit_50(server, alice, bob):
    befriend(alice, bob)
    with alice.connect() as ga:
        ids = [ga.send_request("send", to=bob.name, body=i) for i in range(55)]
        assert all(r["op"] == "ack" for r in ga.read_replies(ids, 15))
    msgs = alice.call("history", **{"with": bob.name})["msgs"]
    assert [m["body"] for m in msgs] == list(range(54, 4, -1))
    msgs = alice.call("history", limit=200, **{"with": bob.name})["msgs"]
    assert len(msgs) == 55


def test_history_limit_over_200(server, alice, bob):
    """`limit` max 200: over it is out of range, bad_request naming `limit` (not a clamp);
    200 itself gives exactly 200 of a conversation of 201 (so the maximum is not cut
    lower either)."""
    befriend(alice, bob)
    # 201 messages: 100 from each (a send burst, limits.user_send_burst), then one more
    with alice.connect() as ga, bob.connect() as gb:
        ids_a = [ga.send_request("send", to=bob.name, body=f"a{i}") for i in range(100)]
        ids_b = [gb.send_request("send", to=alice.name, body=f"b{i}") for i in range(100)]
        assert all(r["op"] == "ack" for r in ga.read_replies(ids_a, 20) + gb.read_replies(ids_b, 20))
        for _ in range(5):   # the burst may not have refilled by one token yet
            rep = ga.send_msg("last", to=bob.name, cmid="last", expect=None)
            if rep.get("code") != "rate_limited":
                break
            time.sleep(rep["retry_after"])   # as the server asks
        assert rep["op"] == "ack", rep
    with alice.api() as c:
        for limit in (201, 1000, 2 ** 40):
            rep = c.error("history", "bad_request", token=alice.token, limit=limit, **{"with": bob.name})
            assert "limit" in rep["message"], rep
        msgs = c.call("history", token=alice.token, limit=200, **{"with": bob.name})["msgs"]
        assert len(msgs) == 200, len(msgs)
        mids = [m["mid"] for m in msgs]
        assert mids == sorted(mids, reverse=True) and len(set(mids)) == 200
        rest = c.call("history", token=alice.token, limit=200, before=mids[-1], **{"with": bob.name})["msgs"]
        assert len(rest) == 1, rest


@pytest.mark.parametrize("limit", [0, -1])
def test_history_limit_out_of_range(alice, bob, limit):
    befriend(alice, bob)
    with alice.api() as c:
        rep = c.error("history", "bad_request", token=alice.token, limit=limit, **{"with": bob.name})
        assert "limit" in rep["message"].lower()


def test_history_group(trio):
    owner, m1, m2 = trio
    gid = make_group(owner, [m1])
    with owner.connect() as go, m1.connect() as g1:
        go.send_msg("one", group=gid)
        g1.send_msg("two", group=gid)
        go.send_msg("three", group=gid)
    for u in (owner, m1):
        # v1.1: the group's "created" group_event entry is in its history too
        msgs = [m for m in u.call("history", group=gid)["msgs"] if m.get("kind") is None]
        assert [m["body"] for m in msgs] == ["three", "two", "one"]
        assert all(m.get("group") == gid for m in msgs)
    page = m1.call("history", group=gid, limit=1, before=msgs[0]["mid"])["msgs"]
    assert [m["body"] for m in page] == ["two"]
    with m2.api() as c:
        c.error("history", "forbidden", token=m2.token, group=gid)


def test_history_is_per_conversation(server, alice, bob, carol):
    befriend(alice, bob)
    befriend(alice, carol)
    with alice.connect() as ga:
        ga.send_msg("to bob", to=bob.name)
        ga.send_msg("to carol", to=carol.name)
    assert [m["body"] for m in alice.call("history", **{"with": bob.name})["msgs"]] == ["to bob"]
    assert [m["body"] for m in alice.call("history", **{"with": carol.name})["msgs"]] == ["to carol"]


# ---------------------------------------------------------------- notify

def test_notify_one_user(server, alice):
    with alice.connect() as ga:
        with server.api() as c:
            rep = c.call("notify", admin_key=ADMIN_KEY, to=alice.name, body={"kind": "maintenance"})
        assert set(rep["seqs"]) == {alice.name}
        seq = rep["seqs"][alice.name]
        assert isinstance(seq, int)
        push = ga.wait_push("msg")
        assert push["from"] == "system" and push["body"] == {"kind": "maintenance"}
        assert push["seq"] == seq
        msgs, head = ga.sync_all(0)
        assert [m["seq"] for m in msgs] == [seq] and head == seq
        assert msgs[0]["from"] == "system"


def test_notify_list_returns_seqs(server):
    users = [new_user(server, "nt") for _ in range(3)]
    conns = [u.connect() for u in users]
    try:
        with server.api() as c:
            rep = c.call("notify", admin_key=ADMIN_KEY, to=[u.name for u in users], body="hello all")
        assert set(rep["seqs"]) == {u.name for u in users}
        for u, g in zip(users, conns):
            push = g.wait_push("msg")
            assert push["from"] == "system" and push["body"] == "hello all"
            assert push["seq"] == rep["seqs"][u.name]
    finally:
        for g in conns:
            g.close()


def test_notify_offline_user_gets_it_by_sync(server, alice):
    with server.api() as c:
        seq1 = c.call("notify", admin_key=ADMIN_KEY, to=alice.name, body=1)["seqs"][alice.name]
        seq2 = c.call("notify", admin_key=ADMIN_KEY, to=[alice.name], body=2)["seqs"][alice.name]
    assert seq2 == seq1 + 1
    with alice.connect() as ga:
        assert ga.head == seq2
        msgs, head = ga.sync_all(0)
        assert [(m["seq"], m["body"], m["from"]) for m in msgs] == [(seq1, 1, "system"), (seq2, 2, "system")]


def test_notify_bad_admin_key(server, alice):
    """A wrong admin_key is wrong credentials: unauthorized ("no valid token / ... wrong
    credentials"); notify carries no token, so the caller is not authenticated at all."""
    with server.api() as c:
        c.error("notify", "unauthorized", admin_key="wrong-key", to=alice.name, body="x")
        # an empty (or very long) key is a wrong one too: the contract gives keys no length
        c.error("notify", "unauthorized", admin_key="", to=alice.name, body="x")
        c.error("notify", "unauthorized", admin_key="k" * 1000, to=alice.name, body="x")
        c.error("notify", "unauthorized", admin_key=alice.token, to=alice.name, body="x")
        c.error("notify", "bad_request", admin_key=5, to=alice.name, body="x")  # not a string
    with alice.connect() as ga:
        assert ga.sync(0)["msgs"] == []


def test_notify_unknown_user_is_not_found(server, alice):
    with server.api() as c:
        c.error("notify", "not_found", admin_key=ADMIN_KEY, to=unique_name("ghost"), body="x")


def test_notify_missing_admin_key_is_bad_request(server, alice):
    with server.api() as c:
        rep = c.error("notify", "bad_request", to=alice.name, body="x")
        assert "admin_key" in rep["message"]
