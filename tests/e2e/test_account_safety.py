"""Account safety (contract v1.1): change_password, delete_account; login with a short
wrong password (defect 10); login's max_frame.  Both deployments: in the distributed one
the API process is not a gateway, and the user's sessions sit on both gateways, so the
kicks travel through Redis.

Contract: PROTOCOL.md "Profiles, remarks, search, retention (API)" (change_password,
delete_account) and "API ops".
"""

import pytest

from harness.users import PASSWORD, befriend, login, make_group, new_user, register, unique_name

pytestmark = pytest.mark.timeout(60)

NEW_PASSWORD = "battery-staple-42"


def kicked_logout(g):
    """The connection gets `kicked` reason logout, then is closed."""
    push = g.wait_push("kicked")
    assert push["reason"] == "logout", push
    g.expect_close(5)


# ---------------------------------------------------------------- change_password

def test_change_password_revokes_every_other_token_and_kicks_its_sessions(server):
    u = new_user(server, "cp")
    other = login(server, u.name, device="laptop")["token"]
    keep1 = u.connect(device="phone")          # the calling token: stays
    keep2 = u.connect(device="tablet")         # same token, the other gateway (distributed)
    gone1 = u.connect(token=other, device="laptop")
    gone2 = u.connect(token=other, device="desk")
    try:
        with server.api() as c:
            c.call("change_password", token=u.token, password=PASSWORD, new_password=NEW_PASSWORD)
        for g in (gone1, gone2):
            kicked_logout(g)
        for g in (keep1, keep2):
            g.sync_point()
            assert not [p for p in g.all_pushes if p["op"] == "kicked"], g.all_pushes
        with server.api() as c:
            c.error("profile", "unauthorized", token=other)
            assert c.call("profile", token=u.token)["user"] == u.name
            rep = c.error("login", "unauthorized", user=u.name, password=PASSWORD)
            assert rep["message"] == "wrong user name or password", rep
            assert c.call("login", user=u.name, password=NEW_PASSWORD)["user"] == u.name
        with server.gateway() as g:
            g.error("auth", "unauthorized", token=other)
    finally:
        for g in (keep1, keep2, gone1, gone2):
            g.close()


def test_change_password_errors_change_nothing(server):
    u = new_user(server, "cpe")
    with server.api() as c:
        rep = c.error("change_password", "unauthorized", token=u.token, password="not-my-password",
                      new_password=NEW_PASSWORD)
        assert rep["message"] == "wrong password", rep
        rep = c.error("change_password", "unauthorized", token=u.token, password="abc",
                      new_password=NEW_PASSWORD)
        assert rep["message"] == "wrong password", rep
        for bad in ("short", "x" * 129):
            rep = c.error("change_password", "bad_request", token=u.token, password=PASSWORD,
                          new_password=bad)
            assert "new_password" in rep["message"], rep
        rep = c.error("change_password", "bad_request", token=u.token, new_password=NEW_PASSWORD)
        assert "password" in rep["message"], rep
        c.error("change_password", "unauthorized", token="not-a-token", password=PASSWORD,
                new_password=NEW_PASSWORD)
        # nothing changed: the old password and the token still work
        assert c.call("profile", token=u.token)["user"] == u.name
        assert c.call("login", user=u.name, password=PASSWORD)["user"] == u.name


# ---------------------------------------------------------------- delete_account

def test_delete_account_kicks_and_removes_the_user_everywhere(server):
    alice, bob, carol, dave = (new_user(server, p) for p in ("da", "db", "dc", "dd"))
    befriend(alice, bob)
    alice.call("friend_request", to=carol.name)     # sent, pending
    dave.call("friend_request", to=alice.name)      # received, pending
    bob.call("block", user=dave.name)
    carol.call("block", user=alice.name)
    gid = make_group(alice, [bob, carol], name="alice's")
    ga1, ga2 = alice.connect(device="one"), alice.connect(device="two")
    gb = bob.connect()
    try:
        sent = ga1.send_msg({"text": "before I go"}, to=bob.name)
        assert gb.wait_push("msg", mid=sent["mid"])["from"] == alice.name
        with server.api() as c:
            rep = c.error("delete_account", "unauthorized", token=alice.token, password="not-her-password")
            assert rep["message"] == "wrong password", rep
            c.call("delete_account", token=alice.token, password=PASSWORD)
        for g in (ga1, ga2):
            kicked_logout(g)
        gb.wait_push("presence", user=alice.name, status="offline")
        with server.api() as c:
            c.error("profile", "unauthorized", token=alice.token)
            assert c.call("friends", token=bob.token)["friends"] == []
            assert c.call("friend_requests", token=carol.token)["requests"] == []
            members = c.call("group_members", token=bob.token, group=gid)["members"]
            assert sorted(members) == sorted([bob.name, carol.name]), members
            # the name stays reserved, and nobody can find or reach it
            c.error("register", "conflict", user=alice.name, password=PASSWORD)
            rep = c.error("login", "unauthorized", user=alice.name, password=PASSWORD)
            assert rep["message"] == "wrong user name or password", rep
            c.error("profile", "not_found", token=bob.token, user=alice.name)
            c.error("friend_request", "not_found", token=bob.token, to=alice.name)
            # what was delivered stays in bob's inbox and history
            hist = c.call("history", token=bob.token, **{"with": alice.name})["msgs"]
            assert [m["mid"] for m in hist] == [sent["mid"]], hist
            # dave still has his own data
            assert c.call("profile", token=dave.token)["user"] == dave.name
        rep = gb.send_msg("anyone?", to=alice.name, expect=None)
        assert rep["op"] == "error" and rep["code"] == "not_found", rep
        ack = gb.send_msg("still a group", group=gid)
        msgs, _ = gb.sync_all(0)
        assert sent["mid"] in [m["mid"] for m in msgs] and ack["mid"] in [m["mid"] for m in msgs]
        with server.gateway() as g:
            g.error("auth", "unauthorized", token=alice.token)
    finally:
        for g in (ga1, ga2, gb):
            g.close()


def test_deleted_owner_passes_the_group_to_its_oldest_member(server):
    owner, first, second = (new_user(server, p) for p in ("go", "gf", "gs"))
    gid = make_group(owner, [first], name="heirs")
    first.call("group_invite", group=gid, users=[second.name])   # joins later
    lone = make_group(owner, [], name="alone")
    owner.call("delete_account", password=PASSWORD)
    assert sorted(first.call("group_members", group=gid)["members"]) == sorted([first.name, second.name])
    # the emptied group is no one's any more; nobody is left to see it
    assert first.request("group_members", group=lone)["code"] == "forbidden"
    assert [g["group"] for g in first.call("groups")["groups"]] == [gid]


# ---------------------------------------------------------------- login

@pytest.mark.parametrize("password", ["a", "abc", "1234567", "x" * 129, "y" * 1024])
def test_login_with_any_wrong_password_is_unauthorized(server, password):
    """Defect 10: a short wrong password was answered with the registration rule."""
    name = unique_name("sp")
    register(server, name)
    with server.api() as c:
        rep = c.error("login", "unauthorized", user=name, password=password)
        assert rep["message"] == "wrong user name or password", rep
        rep = c.error("login", "unauthorized", user=unique_name("ghost"), password=password)
        assert rep["message"] == "wrong user name or password", rep


def test_login_password_over_1024_characters_is_bad_request(server):
    with server.api() as c:
        rep = c.error("login", "bad_request", user=unique_name("lp"), password="z" * 1025)
        assert "password" in rep["message"], rep


def test_login_reply_carries_max_frame(server):
    name = unique_name("mf")
    register(server, name)
    rep = login(server, name)
    assert rep["max_frame"] == 65536 and type(rep["max_frame"]) is int, rep
