"""API accounts: register, login, logout, profile, set_profile, names, passwords, token ttl.

Contract: PROTOCOL.md "API ops (port 7001)" and the "Names:" paragraph.
"""

import random
import string

import pytest

from harness.procs import wait_until
from harness.users import PASSWORD, login, new_user, register, unique_name

pytestmark = pytest.mark.timeout(60)

STATUSES = {"online", "away", "busy", "offline"}


# ---------------------------------------------------------------- register

def test_register_returns_user(server):
    name = unique_name("reg")
    assert register(server, name)["user"] == name


def test_register_with_display_name(server):
    name = unique_name("reg")
    register(server, name, display="Régine Ünicode")
    rep = login(server, name)
    with server.api() as c:
        prof = c.call("profile", token=rep["token"])
    assert prof["user"] == name and prof["name"] == "Régine Ünicode"


def test_register_lowercases_user_name(server):
    name = unique_name("mix")
    mixed = name.upper()
    rep = register(server, mixed)
    assert rep["user"] == name
    # login is case-insensitive through the same lower-casing
    assert login(server, mixed)["user"] == name
    with server.api() as c:
        c.error("register", "conflict", user=name, password=PASSWORD)


def test_register_taken_name_is_conflict(server):
    name = unique_name("dup")
    register(server, name)
    with server.api() as c:
        c.error("register", "conflict", user=name, password="another-password")
    # the original password is unchanged
    assert login(server, name)["user"] == name


VALID_NAMES = [
    lambda: "_" + "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(2)),
    lambda: unique_name("v").ljust(32, "z")[:32],
    lambda: "9" + unique_name("a.b-c_")[0:20],
]


@pytest.mark.parametrize("make", VALID_NAMES, ids=["3-chars", "32-chars", "digit-dot-dash"])
def test_valid_name_edges(server, make):
    with server.api() as c:
        for _ in range(30):  # the 3-character space is small; retry on a name taken by an earlier run
            name = make()
            rep = c.request("register", user=name, password=PASSWORD)
            if rep["op"] == "ok":
                assert rep["user"] == name
                return
            assert rep["code"] == "conflict", rep
        pytest.fail("could not find a free name")


INVALID_NAMES = [
    "ab",                    # too short
    "a" * 33,                # too long
    ".abc",                  # must start with [a-z0-9_]
    "-abc",
    "ab c",
    "abc!",
    "ab/c",
    "ábc",
    "abc\n",
    "",
    "用户名字",
]


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names_are_bad_request(server, name):
    with server.api() as c:
        rep = c.error("register", "bad_request", user=name, password=PASSWORD)
        assert "user" in rep["message"].lower()


@pytest.mark.parametrize("length", [8, 128])
def test_password_length_edges_ok(server, length):
    name = unique_name("pw")
    pw = ("p4ss" * 40)[:length]
    register(server, name, pw)
    assert login(server, name, pw)["user"] == name


def test_password_counts_characters_not_bytes(server):
    name = unique_name("pwu")
    pw = "é" * 128  # 128 characters, 256 UTF-8 bytes
    register(server, name, pw)
    assert login(server, name, pw)["user"] == name
    name2 = unique_name("pwu")
    register(server, name2, "ü" * 8)
    assert login(server, name2, "ü" * 8)["user"] == name2


@pytest.mark.parametrize("length", [0, 7, 129, 1000])
def test_password_length_out_of_range_is_bad_request(server, length):
    with server.api() as c:
        rep = c.error("register", "bad_request", user=unique_name("pw"), password="x" * length)
        assert "password" in rep["message"].lower()


def test_display_name_limit(server):
    with server.api() as c:
        c.call("register", user=unique_name("dn"), password=PASSWORD, name="n" * 64)
        rep = c.error("register", "bad_request", user=unique_name("dn"), password=PASSWORD, name="n" * 65)
        assert "name" in rep["message"].lower()


# ---------------------------------------------------------------- login

def test_login_reply_fields(server):
    name = unique_name("lg")
    register(server, name)
    rep = login(server, name)
    assert isinstance(rep["token"], str) and rep["token"]
    assert rep["user"] == name
    assert isinstance(rep["expires_in"], (int, float)) and not isinstance(rep["expires_in"], bool)
    assert rep["expires_in"] == 604800  # default accounts.token_ttl: a new token's whole life
    gw = rep["gateway"]
    assert isinstance(gw, str)
    host, _, port = gw.rpartition(":")
    assert host and int(port) in getattr(server, "gateway_ports", [server.gateway_port]), gw
    assert isinstance(rep["gateways"], list) and gw in rep["gateways"], rep


def test_login_gateway_address_is_usable(server):
    """A client connects to the gateway login names and authenticates there."""
    from harness.wire import Client

    u = new_user(server, "lgw")
    host, _, port = u.login_reply["gateway"].rpartition(":")
    host = host.strip("[]")
    with Client(host, int(port)) as g:
        rep = g.auth(u.token)
        assert rep["user"] == u.name


def test_each_login_gives_a_working_token(server):
    u = new_user(server, "tk")
    t2 = login(server, u.name, device="phone")["token"]
    t3 = login(server, u.name, device="tablet")["token"]
    with server.api() as c:
        for tok in (u.token, t2, t3):
            assert c.call("profile", token=tok)["user"] == u.name


def test_login_wrong_password_is_unauthorized(server):
    u = new_user(server, "wp")
    with server.api() as c:
        c.error("login", "unauthorized", user=u.name, password="wrong-password-1")


def test_login_unknown_user(server):
    """Unknown user at login: "unauthorized | wrong credentials", never not_found, and the
    same message as a wrong password (login does not tell which names exist)."""
    u = new_user(server, "wk")
    with server.api() as c:
        rep = c.error("login", "unauthorized", user=unique_name("ghost"), password=PASSWORD)
        wrong = c.error("login", "unauthorized", user=u.name, password="wrong-password-1")
        assert rep["message"] == wrong["message"] == "wrong user name or password", (rep, wrong)


# ---------------------------------------------------------------- logout

def test_logout_kicks_live_sessions_and_token_stops_working(server):
    u = new_user(server, "lo")
    other = login(server, u.name, device="other")["token"]
    g1 = u.connect(device="d1")
    g2 = u.connect(device="d2")  # same token, second device
    g3 = u.connect(token=other, device="d3")  # another token
    try:
        with server.api() as c:
            c.call("logout", token=u.token)
        for g in (g1, g2):
            kicked = g.wait_push("kicked")
            assert kicked["reason"] == "logout", kicked
            g.expect_close(5)
        # the session opened with the other token is untouched
        g3.sync_point()
        assert not [p for p in g3.all_pushes if p["op"] == "kicked"]
        with server.api() as c:
            c.error("profile", "unauthorized", token=u.token)
            c.error("friends", "unauthorized", token=u.token)
            assert c.call("profile", token=other)["user"] == u.name
        with server.gateway() as g:
            g.error("auth", "unauthorized", token=u.token)
    finally:
        for g in (g1, g2, g3):
            g.close()


def test_logout_with_bad_token_is_unauthorized(server):
    with server.api() as c:
        c.error("logout", "unauthorized", token="not-a-token")


def test_logout_twice(server):
    u = new_user(server, "lo2")
    with server.api() as c:
        c.call("logout", token=u.token)
        c.error("logout", "unauthorized", token=u.token)


# ---------------------------------------------------------------- profile / set_profile

def test_profile_fields(server):
    u = new_user(server, "pf", display="Pat")
    with server.api() as c:
        prof = c.call("profile", token=u.token)
    assert prof["user"] == u.name and prof["name"] == "Pat"
    assert prof["status"] in STATUSES
    assert isinstance(prof["text"], str)


def test_profile_of_other_user_and_status(server):
    a = new_user(server, "pa")
    b = new_user(server, "pb")
    with server.api() as c:
        prof = c.call("profile", token=a.token, user=b.name)
        assert prof["user"] == b.name and prof["status"] in STATUSES


def test_profile_user_is_lowercased(server):
    a = new_user(server, "pl")
    b = new_user(server, "pl")
    assert a.call("profile", user=b.name.upper())["user"] == b.name


def test_profile_unknown_user_is_not_found(server):
    a = new_user(server, "pn")
    with server.api() as c:
        c.error("profile", "not_found", token=a.token, user=unique_name("ghost"))


def test_set_profile(server):
    a = new_user(server, "sp")
    b = new_user(server, "sp")
    a.call("set_profile", name="Ann Example", text="hello there")
    prof = b.call("profile", user=a.name)
    assert prof["name"] == "Ann Example" and prof["text"] == "hello there"
    a.call("set_profile", text="only text")
    prof = a.call("profile")
    assert prof["name"] == "Ann Example" and prof["text"] == "only text"
    a.call("set_profile")  # nothing to change is fine
    a.call("set_profile", name="N" * 64, text="t" * 4096)
    prof = a.call("profile")
    assert prof["name"] == "N" * 64 and prof["text"] == "t" * 4096


def test_set_profile_limits(server):
    a = new_user(server, "spl")
    with server.api() as c:
        rep = c.error("set_profile", "bad_request", token=a.token, name="N" * 65)
        assert "name" in rep["message"].lower()
        rep = c.error("set_profile", "bad_request", token=a.token, text="t" * 4097)
        assert "text" in rep["message"].lower()
        # a rejected request changes nothing
        prof = c.call("profile", token=a.token)
        assert prof["name"] != "N" * 65 and prof["text"] != "t" * 4097


# ---------------------------------------------------------------- token expiry

@pytest.mark.timeout(60)
def test_token_expires(server_factory):
    srv = server_factory({"accounts": {"token_ttl": 1}}, name="ttl")
    name = unique_name("ttl")
    register(srv, name)
    rep = login(srv, name)
    assert rep["expires_in"] == 1, rep
    tok = rep["token"]

    def expired():
        with srv.api() as c:
            r = c.request("profile", token=tok)
        if r["op"] == "ok":
            return False
        assert r["code"] == "unauthorized", r
        return True

    wait_until(expired, timeout=15, interval=0.2, what="token to expire")
    with srv.gateway() as g:
        g.error("auth", "unauthorized", token=tok)
    # a fresh login works again
    assert login(srv, name)["token"]


def test_limits_count_characters_not_bytes(server):
    """Display names and texts are at most 64 and 4096 *characters*."""
    a = new_user(server, "mb")
    a.call("set_profile", name="é" * 64, text="漢" * 4096)
    prof = a.call("profile")
    assert prof["name"] == "é" * 64 and prof["text"] == "漢" * 4096
    a.call("set_profile", name="😀" * 64)
    assert a.call("profile")["name"] == "😀" * 64
    with a.api() as c:
        c.error("set_profile", "bad_request", token=a.token, name="é" * 65)
        c.error("set_profile", "bad_request", token=a.token, text="漢" * 4097)
