"""API relationship chain: friend requests, friends, remove, block/unblock.

Contract: PROTOCOL.md API ops table, "Contact rules", and the friend_request /
friend_added / presence pushes.
"""

import pytest

from harness.procs import wait_until
from harness.users import befriend, new_user, unique_name

pytestmark = pytest.mark.timeout(60)


def friend_names(user):
    rep = user.call("friends")
    assert isinstance(rep["friends"], list)
    return {f["user"]: f for f in rep["friends"]}


def request_froms(user):
    rep = user.call("friend_requests")
    assert isinstance(rep["requests"], list)
    return {r["from"]: r for r in rep["requests"]}


def test_friend_request_listed_and_pushed(alice, bob):
    with bob.connect() as gb:
        alice.call("friend_request", to=bob.name, message="hi bob")
        push = gb.wait_push("friend_request")
        assert push["from"] == alice.name and push["message"] == "hi bob", push
    reqs = request_froms(bob)
    assert alice.name in reqs
    r = reqs[alice.name]
    assert r["message"] == "hi bob"
    assert isinstance(r["ts"], (int, float)) and not isinstance(r["ts"], bool)
    # not friends yet
    assert bob.name not in friend_names(alice)
    assert alice.name not in friend_names(bob)


def test_friend_request_without_message(alice, bob):
    alice.call("friend_request", to=bob.name)
    assert alice.name in request_froms(bob)


def test_friend_accept(alice, bob):
    alice.call("friend_request", to=bob.name)
    with alice.connect() as ga:
        bob.call("friend_accept", user=alice.name)
        push = ga.wait_push("friend_added")
        assert push["user"] == bob.name, push
    assert bob.name in friend_names(alice)
    assert alice.name in friend_names(bob)
    assert alice.name not in request_froms(bob)


def test_mutual_request_makes_friends_at_once(alice, bob):
    alice.call("friend_request", to=bob.name)
    with alice.connect() as ga:
        bob.call("friend_request", to=alice.name)
        push = ga.wait_push("friend_added")
        assert push["user"] == bob.name, push
    assert bob.name in friend_names(alice)
    assert alice.name in friend_names(bob)
    assert bob.name not in request_froms(alice)
    assert alice.name not in request_froms(bob)


def test_friend_reject(alice, bob):
    alice.call("friend_request", to=bob.name, message="please")
    bob.call("friend_reject", user=alice.name)
    assert alice.name not in request_froms(bob)
    assert bob.name not in friend_names(alice)
    with alice.connect() as ga:
        ga.error("send", "forbidden", to=bob.name, body="still not friends")
    # asking again is possible
    alice.call("friend_request", to=bob.name, message="again")
    assert request_froms(bob)[alice.name]["message"] == "again"


def test_accept_or_reject_without_request_is_not_found(alice, bob):
    with alice.api() as c:
        c.error("friend_accept", "not_found", token=alice.token, user=bob.name)
        c.error("friend_reject", "not_found", token=alice.token, user=bob.name)


def test_friend_request_to_unknown_user_is_not_found(alice):
    with alice.api() as c:
        c.error("friend_request", "not_found", token=alice.token, to=unique_name("ghost"))


def test_friend_request_to_friend_is_conflict(alice, bob):
    befriend(alice, bob)
    with alice.api() as c:
        c.error("friend_request", "conflict", token=alice.token, to=bob.name)
        c.error("friend_request", "conflict", token=bob.token, to=alice.name)


def test_friend_request_message_limit(alice, bob):
    with alice.api() as c:
        rep = c.error("friend_request", "bad_request", token=alice.token, to=bob.name, message="m" * 4097)
        assert "message" in rep["message"].lower()
    assert alice.name not in request_froms(bob)


def test_friends_list_with_status(server, alice, bob, carol):
    befriend(alice, bob)
    befriend(alice, carol)
    fr = friend_names(alice)
    assert set(fr) == {bob.name, carol.name}
    for f in fr.values():
        assert f["status"] == "offline" and "name" in f
    def status_of(name):
        return friend_names(alice)[name]["status"]

    with bob.connect() as gb:
        wait_until(lambda: status_of(bob.name) == "online", 5, what="bob online in friends")
        assert status_of(carol.name) == "offline"
        gb.call("status", status="busy")
        assert status_of(bob.name) == "busy"
        gb.call("status", status="away", text="lunch")
        assert status_of(bob.name) == "away"
    # the server notices the close asynchronously: poll, bounded
    wait_until(lambda: status_of(bob.name) == "offline", 5, what="bob offline in friends")


def test_friends_list_carries_display_name(server):
    a = new_user(server, "fn", display="Ada")
    b = new_user(server, "fn", display="Bea")
    befriend(a, b)
    assert friend_names(a)[b.name]["name"] == "Bea"
    assert friend_names(b)[a.name]["name"] == "Ada"


def test_friend_remove(alice, bob):
    befriend(alice, bob)
    alice.call("friend_remove", user=bob.name)
    assert bob.name not in friend_names(alice)
    assert alice.name not in friend_names(bob)
    with alice.connect() as ga, bob.connect() as gb:
        ga.error("send", "forbidden", to=bob.name, body="x")
        gb.error("send", "forbidden", to=alice.name, body="x")
        ga.error("presence", "forbidden", users=[bob.name])
    # they can become friends again
    befriend(bob, alice)
    assert bob.name in friend_names(alice)


# ---------------------------------------------------------------- block

def test_block_cuts_messages_both_ways(alice, bob):
    befriend(alice, bob)
    with alice.connect() as ga, bob.connect() as gb:
        ga.send_msg("before", to=bob.name)
        gb.wait_push("msg", body="before")
        alice.call("block", user=bob.name)
        ga.error("send", "forbidden", to=bob.name, body="from blocker")
        gb.error("send", "forbidden", to=alice.name, body="from blocked")
        ga.sync_point()
        gb.sync_point()
        assert not [p for p in ga.all_pushes if p["op"] == "msg"]
        assert [p["body"] for p in gb.all_pushes if p["op"] == "msg"] == ["before"]
        # nothing was stored for the rejected sends
        msgs, _ = ga.sync_all(0)
        assert [m["body"] for m in msgs] == ["before"]
        msgs, _ = gb.sync_all(0)
        assert [m["body"] for m in msgs] == ["before"]


def test_block_cuts_friend_requests_both_ways(alice, bob):
    alice.call("block", user=bob.name)
    with alice.api() as c:
        c.error("friend_request", "forbidden", token=bob.token, to=alice.name)
        c.error("friend_request", "forbidden", token=alice.token, to=bob.name)
    assert bob.name not in request_froms(alice)
    assert alice.name not in request_froms(bob)


def test_block_cuts_presence_both_ways(server, alice, bob):
    befriend(alice, bob)
    carol = new_user(server, "carol")
    dave = new_user(server, "dave")
    befriend(alice, carol)
    befriend(bob, dave)
    alice.call("block", user=bob.name)
    with alice.connect() as ga, dave.connect() as gd:
        # bob coming online / changing status must not reach alice, and vice versa
        with bob.connect() as gb:
            gd.wait_push("presence", user=bob.name, status="online")
            gb.call("status", status="busy", text="secret")
            gd.wait_push("presence", user=bob.name, status="busy")
            with carol.connect():
                ga.wait_push("presence", user=carol.name, status="online")
            ga.call("status", status="away")
            # alice's marker: carol's presence arrived after bob's events were emitted
            ga.sync_point()
            assert not [p for p in ga.all_pushes if p["op"] == "presence" and p["user"] == bob.name]
            gb.sync_point()
            assert not [p for p in gb.all_pushes if p["op"] == "presence" and p["user"] == alice.name]
            # the presence op does not reveal the real status either way
            for conn, peer in ((ga, bob.name), (gb, alice.name)):
                rep = conn.request("presence", users=[peer])
                if rep["op"] == "error":
                    assert rep["code"] == "forbidden", rep
                else:
                    assert rep["op"] == "presence" and rep["statuses"].get(peer, "offline") == "offline", rep


def test_unblock_restores(alice, bob):
    befriend(alice, bob)
    alice.call("block", user=bob.name)
    alice.call("unblock", user=bob.name)
    rep = bob.request("friend_request", to=alice.name)
    if rep["op"] == "ok":  # the block ended the friendship: become friends again
        alice.call("friend_accept", user=bob.name)
    else:
        assert rep["code"] == "conflict", rep  # still friends
    with alice.connect() as ga, bob.connect() as gb:
        gb.send_msg("after unblock", to=alice.name)
        assert ga.wait_push("msg")["body"] == "after unblock"
        ga.send_msg("reply", to=bob.name)
        assert gb.wait_push("msg")["body"] == "reply"


def test_block_unknown_user_is_not_found(alice):
    with alice.api() as c:
        c.error("block", "not_found", token=alice.token, user=unique_name("ghost"))


def test_block_by_the_blocked_side_too(alice, bob):
    """Either side's block stops messages."""
    befriend(alice, bob)
    bob.call("block", user=alice.name)
    with alice.connect() as ga:
        ga.error("send", "forbidden", to=bob.name, body="x")
