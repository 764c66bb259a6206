"""Protocol v1.1 profiles and remarks, on both deployments: set_profile's avatar (an http or
https URL of at most 512 characters, "" clears it) and profile's avatar (null when unset);
set_remark (a friend's private remark of at most 64 characters, "" clears it) and the
remark of `friends` items.  Every refusal is checked exactly and changes nothing.

Contract: PROTOCOL.md v1.1 "Profiles, remarks, search, retention (API)".
"""
import pytest

from harness.users import befriend, new_user, unique_name

pytestmark = pytest.mark.timeout(60)

URL = "https://cdn.example.com/avatars/a.png?size=128#x"


def friends(user):
    return {f["user"]: f for f in user.call("friends")["friends"]}


# ============================================================================ avatar
def test_avatar_is_null_until_set_then_shown_to_everyone(server):
    a = new_user(server, "av")
    b = new_user(server, "av")
    prof = a.call("profile")
    assert "avatar" in prof and prof["avatar"] is None
    a.call("set_profile", avatar=URL)
    assert a.call("profile")["avatar"] == URL
    assert b.call("profile", user=a.name)["avatar"] == URL      # not a friend: still shown
    a.call("set_profile", avatar="http://h/x")
    assert a.call("profile")["avatar"] == "http://h/x"
    # the other fields are left as they were, and vice versa
    a.call("set_profile", name="Ann")
    prof = a.call("profile")
    assert prof["avatar"] == "http://h/x" and prof["name"] == "Ann"
    a.call("set_profile", avatar="HTTPS://H.example/" + "x" * (512 - 18))
    assert len(a.call("profile")["avatar"]) == 512
    # "" clears it
    a.call("set_profile", avatar="")
    assert a.call("profile")["avatar"] is None
    a.call("set_profile", avatar=None)                          # null: left as is
    assert a.call("profile")["avatar"] is None


@pytest.mark.parametrize("avatar, why", [
    ("ftp://h/x.png", "not an http or https URL"),
    ("cdn.example.com/a.png", "not an http or https URL"),
    ("https://", "not an http or https URL"),
    ("https://h/a b.png", "not an http or https URL"),
    ("javascript:alert(1)", "not an http or https URL"),
    ("https://h/" + "x" * 503, "longer than 512"),
    (5, "must be a string"),
    (["https://h/x"], "must be a string"),
])
def test_bad_avatar_is_refused_and_changes_nothing(server, avatar, why):
    a = new_user(server, "avb")
    a.call("set_profile", avatar=URL, name="Before")
    with server.api() as c:
        rep = c.error("set_profile", "bad_request", token=a.token, avatar=avatar, name="After")
    assert "'avatar'" in rep["message"] and why in rep["message"], rep
    prof = a.call("profile")
    assert prof["avatar"] == URL and prof["name"] == "Before"


def test_set_profile_needs_a_token(server):
    with server.api() as c:
        c.error("set_profile", "unauthorized", token="nope", avatar=URL)


# ============================================================================ remarks
def test_remark_is_private_and_cleared(server):
    a = new_user(server, "rm")
    b = new_user(server, "rm")
    befriend(a, b)
    assert friends(a)[b.name]["remark"] is None and friends(b)[a.name]["remark"] is None
    a.call("set_remark", user=b.name, remark="Bob from work")
    assert friends(a)[b.name]["remark"] == "Bob from work"
    assert friends(b)[a.name]["remark"] is None                  # private to a
    a.call("set_remark", user=b.name.upper(), remark="Bob from work")   # the same again: fine
    a.call("set_remark", user=b.name, remark="r" * 64)
    assert friends(a)[b.name]["remark"] == "r" * 64
    b.call("set_remark", user=a.name, remark="ann")
    assert friends(a)[b.name]["remark"] == "r" * 64 and friends(b)[a.name]["remark"] == "ann"
    a.call("set_remark", user=b.name, remark="")
    assert friends(a)[b.name]["remark"] is None
    # a remark lives with the friendship: removed, then friends again, it is gone
    a.call("set_remark", user=b.name, remark="x")
    a.call("friend_remove", user=b.name)
    befriend(b, a)
    assert friends(a)[b.name]["remark"] is None


def test_remark_errors_change_nothing(server):
    a = new_user(server, "rme")
    b = new_user(server, "rme")
    stranger = new_user(server, "rme")
    befriend(a, b)
    a.call("set_remark", user=b.name, remark="kept")
    with server.api() as c:
        t = a.token
        rep = c.error("set_remark", "forbidden", token=t, user=stranger.name, remark="x")
        assert stranger.name in rep["message"] and "friend" in rep["message"], rep
        rep = c.error("set_remark", "not_found", token=t, user=unique_name("ghost"), remark="x")
        assert "no such user" in rep["message"], rep
        rep = c.error("set_remark", "bad_request", token=t, user=a.name, remark="x")
        assert "'user'" in rep["message"], rep
        rep = c.error("set_remark", "bad_request", token=t, user=b.name, remark="r" * 65)
        assert "'remark'" in rep["message"] and "64" in rep["message"], rep
        rep = c.error("set_remark", "bad_request", token=t, user=b.name)
        assert "'remark'" in rep["message"] and "missing" in rep["message"], rep
        rep = c.error("set_remark", "bad_request", token=t, remark="x")
        assert "'user'" in rep["message"], rep
        rep = c.error("set_remark", "bad_request", token=t, user=b.name, remark=7)
        assert "'remark'" in rep["message"], rep
        rep = c.error("set_remark", "bad_request", token=t, user="B@D", remark="x")
        assert "'user'" in rep["message"], rep
        c.error("set_remark", "unauthorized", token="nope", user=b.name, remark="x")
    assert friends(a)[b.name]["remark"] == "kept"
    assert stranger.name not in friends(a)


def test_remark_on_a_blocked_friend_and_after_their_account_is_deleted(server):
    a = new_user(server, "rmd")
    b = new_user(server, "rmd")
    befriend(a, b)
    a.call("block", user=b.name)            # still friends (block cuts messages, not the list)
    a.call("set_remark", user=b.name, remark="blocked one")
    assert friends(a)[b.name]["remark"] == "blocked one"
    b.call("delete_account", password=b.password)
    with server.api() as c:
        c.error("set_remark", "not_found", token=a.token, user=b.name, remark="x")
    assert b.name not in friends(a)
