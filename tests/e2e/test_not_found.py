"""A user or group that does not exist: `not_found` ("no such user, group or request"),
never `forbidden`, on every op that names one, for a name nobody ever had and for a
deleted account alike; login of either is `unauthorized` ("wrong credentials"), with the
same message as a wrong password.  Nothing is stored or changed by any of the refusals.

Contract: PROTOCOL.md error table (not_found, unauthorized); docs/PROTOCOL.md
delete_account ("login gets unauthorized, and profile, friend_request, group_invite,
notify and a send to them get not_found").
"""

import pytest

from harness.servers import ADMIN_KEY
from harness.users import PASSWORD, befriend, make_group, new_user, unique_name

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def cast(server):
    """alice (friend of bob, owner of a group with bob), and ``gone``: a friend of alice
    and member of the group, whose account is deleted."""
    alice, bob, gone = (new_user(server, p) for p in ("nfa", "nfb", "nfg"))
    befriend(alice, bob)
    befriend(alice, gone)
    gid = make_group(alice, [bob, gone], name="nf")
    gone.call("delete_account", password=PASSWORD)
    return alice, bob, gone.name, gid


@pytest.fixture(params=["never-existed", "deleted"])
def missing(request, cast):
    return unique_name("ghost") if request.param == "never-existed" else cast[2]


def test_gateway_ops_naming_a_missing_user_are_not_found(cast, missing):
    alice, bob, _, _ = cast
    with alice.connect(device=unique_name("d")) as ga:
        head = ga.head
        for cmid in (None, unique_name("c")):
            fields = {} if cmid is None else {"cmid": cmid}
            rep = ga.error("send", "not_found", to=missing, body="anyone there?", **fields)
            assert missing in rep["message"], rep
        ga.error("typing", "not_found", to=missing)
        # the one exception (docs/PROTOCOL.md contact rules): presence is for friends only
        ga.error("presence", "forbidden", users=[missing])
        # pipelined with good sends: each gets its own answer, in order
        rids = [ga.send_request("send", to=bob.name, body=1),
                ga.send_request("send", to=missing, body=2),
                ga.send_request("send", to=bob.name, body=3)]
        replies = ga.read_replies(rids)
        assert [r.get("code", r["op"]) for r in replies] == ["ack", "not_found", "ack"], replies
        msgs, new_head = ga.sync_all(head)
        # only the two good sends were stored (in alice's own inbox: her copies)
        assert [m["body"] for m in msgs] == [1, 3] and new_head == head + 2, msgs


def test_api_ops_naming_a_missing_user_are_not_found(server, cast, missing):
    alice, bob, _, gid = cast
    with server.api() as c:
        groups_before = c.call("groups", token=alice.token)["groups"]
        c.error("profile", "not_found", token=alice.token, user=missing)
        c.error("friend_request", "not_found", token=alice.token, to=missing)
        c.error("friend_accept", "not_found", token=alice.token, user=missing)
        c.error("friend_reject", "not_found", token=alice.token, user=missing)
        c.error("friend_remove", "not_found", token=alice.token, user=missing)
        c.error("block", "not_found", token=alice.token, user=missing)
        c.error("unblock", "not_found", token=alice.token, user=missing)
        c.error("group_create", "not_found", token=alice.token, name="x", members=[bob.name, missing])
        c.error("group_invite", "not_found", token=alice.token, group=gid, users=[missing])
        rep = c.error("notify", "not_found", admin_key=ADMIN_KEY, to=[bob.name, missing], body="x")
        assert missing in rep["message"], rep
        # nothing changed: no group made, nobody added, no notify stored for bob either
        assert c.call("groups", token=alice.token)["groups"] == groups_before
        members = c.call("group_members", token=alice.token, group=gid)["members"]
        assert sorted(members) == sorted([alice.name, bob.name]), members
        assert c.call("history", token=bob.token, **{"with": "system"})["msgs"] == []
        assert c.call("friend_requests", token=alice.token)["requests"] == []


def test_history_with_a_user(server, cast):
    """history `with` a name nobody ever had: not_found; with a deleted account: their
    messages stay readable (docs/PROTOCOL.md delete_account), an empty history here."""
    alice, _, gone, _ = cast
    with server.api() as c:
        c.error("history", "not_found", token=alice.token, **{"with": unique_name("ghost")})
        assert c.call("history", token=alice.token, **{"with": gone})["msgs"] == []


@pytest.mark.parametrize("how", ["never-existed", "deleted"])
def test_login_of_a_missing_user_is_unauthorized(server, cast, how):
    name = unique_name("ghost") if how == "never-existed" else cast[2]
    with server.api() as c:
        rep = c.error("login", "unauthorized", user=name, password=PASSWORD)
        wrong = c.error("login", "unauthorized", user=cast[1].name, password="not-" + PASSWORD)
        assert rep["message"] == wrong["message"] == "wrong user name or password", (rep, wrong)


def test_group_ops_naming_a_missing_group_are_not_found(server, cast):
    alice, bob, _, _ = cast
    nogroup = "g" + "0" * 16
    with server.api() as c:
        for op, fields in (("group_members", {}), ("group_leave", {}), ("group_invite", {"users": [bob.name]}),
                           ("history", {})):
            rep = c.error(op, "not_found", token=alice.token, group=nogroup, **fields)
            assert nogroup in rep["message"], rep
    with alice.connect(device=unique_name("d")) as ga:
        head = ga.head
        ga.error("send", "not_found", group=nogroup, body="x")
        assert ga.sync(head)["msgs"] == []
