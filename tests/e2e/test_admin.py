"""The admin ops (contract v1.1 "Operations"): admin_users, admin_ban, admin_unban,
admin_kick, admin_stats, each with ``admin_key``, on both deployments (in the distributed
one the API process holds no session: kicks travel through Redis to the gateway holding
each one, devices and online users come from the routing table, connections from the
gateways' load reports).

What this server decided where the contract is silent is in docs/PROTOCOL.md section 13
and imsrv/core/admin.py; the tests below pin it: a ban revokes the user's tokens and kicks
(reason admin), a login with the right password is refused with the reason while it is in
effect, it runs out at ``until``; a kick leaves the tokens working; unknown users are
not_found; ``devices`` are the device names of the live sessions.
"""
import time

import pytest

from harness.procs import wait_until
from harness.servers import ADMIN_KEY
from harness.users import PASSWORD, User, login, new_user, register, unique_name

pytestmark = pytest.mark.timeout(60)

OPS = {   # each op with valid fields but the key
    "admin_users": {},
    "admin_ban": {"user": "someone", "until": -1, "reason": "x"},
    "admin_unban": {"user": "someone"},
    "admin_kick": {"user": "someone"},
    "admin_stats": {},
}


def now_ms():
    return int(time.time() * 1000)


def admin(server, op, expect="ok", **fields):
    with server.api() as c:
        return c.call(op, expect, admin_key=ADMIN_KEY, **fields)


def admin_error(server, op, code, **fields):
    with server.api() as c:
        return c.error(op, code, admin_key=ADMIN_KEY, **fields)


def kicked_admin(g):
    """The connection gets `kicked` reason admin, then is closed."""
    push = g.wait_push("kicked")
    assert push["reason"] == "admin", push
    g.expect_close(5)


def still_open(g):
    g.sync_point()
    assert not [p for p in g.all_pushes + g.pushes if p["op"] == "kicked"], g.all_pushes


# ---------------------------------------------------------------- keys and fields

def test_every_admin_op_needs_the_admin_key(server):
    with server.api() as c:
        for op, fields in OPS.items():
            rep = c.error(op, "unauthorized", admin_key="wrong-key", **fields)
            assert rep["message"] == "wrong admin_key", rep
            c.error(op, "unauthorized", admin_key="", **fields)
            rep = c.error(op, "bad_request", **fields)
            assert "admin_key" in rep["message"], rep
            c.error(op, "bad_request", admin_key=7, **fields)
    # a user's token is no admin key
    u = new_user(server, "adk")
    with server.api() as c:
        c.error("admin_stats", "bad_request", token=u.token)


def test_admin_field_errors_and_unknown_users(server):
    gone = new_user(server, "adgone")
    gone.call("delete_account", password=PASSWORD)
    missing = unique_name("adnone")
    for field in ("user", "until", "reason"):
        fields = dict(OPS["admin_ban"], user=gone.name)
        del fields[field]
        rep = admin_error(server, "admin_ban", "bad_request", **fields)
        assert repr(field) in rep["message"], rep
    for until in (0, now_ms() - 1000, -2, "soon", 1.5):
        rep = admin_error(server, "admin_ban", "bad_request", user=gone.name, until=until, reason="x")
        assert "'until'" in rep["message"], rep
    for reason in ("", "   ", "r" * 257, 5):
        rep = admin_error(server, "admin_ban", "bad_request", user=gone.name, until=-1, reason=reason)
        assert "'reason'" in rep["message"], rep
    for limit in (0, 1001, "10"):
        rep = admin_error(server, "admin_users", "bad_request", limit=limit)
        assert "'limit'" in rep["message"], rep
    for q in ("a*", "a b", "x" * 33, ""):
        rep = admin_error(server, "admin_users", "bad_request", q=q)
        assert "'q'" in rep["message"], rep
    admin_error(server, "admin_kick", "bad_request", user=gone.name, device="")
    admin_error(server, "admin_users", "bad_request", after="Not A Name")
    # unknown and deleted users: not_found
    for user in (missing, gone.name):
        admin_error(server, "admin_ban", "not_found", user=user, until=-1, reason="x")
        admin_error(server, "admin_unban", "not_found", user=user)
        admin_error(server, "admin_kick", "not_found", user=user)
    assert admin(server, "admin_users", q=gone.name)["users"] == []


# ---------------------------------------------------------------- ban

def test_ban_kicks_revokes_tokens_and_refuses_login_with_the_reason(server):
    u = new_user(server, "adban")
    other = login(server, u.name, device="laptop")["token"]
    g1 = u.connect(device="phone")
    g2 = u.connect(token=other, device="laptop")   # the other gateway (distributed)
    bystander = new_user(server, "adby")
    gb = bystander.connect()
    try:
        until = now_ms() + 3_600_000
        rep = admin(server, "admin_ban", user=u.name, until=until, reason="spamming links")
        assert rep["kicked"] == 2, rep
        for g in (g1, g2):
            kicked_admin(g)
        still_open(gb)
        with server.api() as c:
            # the old tokens call nothing
            for token in (u.token, other):
                c.error("profile", "unauthorized", token=token)
            # the right password: refused with the reason; a wrong one says nothing of the ban
            rep = c.error("login", "unauthorized", user=u.name, password=PASSWORD)
            assert "spamming links" in rep["message"] and rep["reason"] == "spamming links", rep
            assert rep["banned_until"] == until, rep
            rep = c.error("login", "unauthorized", user=u.name, password="not-the-password")
            assert rep["message"] == "wrong user name or password" and "reason" not in rep, rep
        for token in (u.token, other):
            with server.gateway() as g:
                g.error("auth", "unauthorized", token=token)
        listed = admin(server, "admin_users", q=u.name)["users"]
        assert listed == [{"user": u.name, "name": u.name, "online": False, "devices": [],
                           "banned_until": until, "ban_reason": "spamming links"}], listed
        # unban: login works again (the revoked tokens stay revoked)
        assert set(admin(server, "admin_unban", user=u.name)) == {"op", "id"}   # no fields
        assert admin(server, "admin_users", q=u.name)["users"][0]["banned_until"] == 0
        token = login(server, u.name)["token"]
        with u.connect(token=token) as g:
            still_open(g)
        with server.api() as c:
            c.error("profile", "unauthorized", token=u.token)
        admin(server, "admin_unban", user=u.name)   # not banned: nothing to do, still ok
    finally:
        for g in (g1, g2, gb):
            g.close()


def test_ban_for_ever_with_no_session(server):
    u = new_user(server, "adfe")
    assert admin(server, "admin_ban", user=u.name, until=-1, reason="for good")["kicked"] == 0
    with server.api() as c:
        rep = c.error("login", "unauthorized", user=u.name, password=PASSWORD)
        assert rep["banned_until"] == -1 and "for ever" in rep["message"], rep
        # given again, the new ban replaces the first
        c.call("admin_ban", admin_key=ADMIN_KEY, user=u.name, until=-1, reason="second thoughts")
        assert c.error("login", "unauthorized", user=u.name, password=PASSWORD)["reason"] == "second thoughts"


def test_a_ban_runs_out_at_its_until(server):
    u = new_user(server, "adrun")
    until = now_ms() + 1500   # the ban's length: short, so the test waits little
    admin(server, "admin_ban", user=u.name, until=until, reason="cool down")
    with server.api() as c:
        assert c.error("login", "unauthorized", user=u.name, password=PASSWORD)["reason"] == "cool down"

    def logged_in():
        with server.api() as c:
            rep = c.request("login", user=u.name, password=PASSWORD)
        assert rep["op"] == "ok" or rep.get("reason") == "cool down", rep
        return rep["op"] == "ok" and rep

    rep = wait_until(logged_in, timeout=15, interval=0.2, what="the ban to run out")
    assert now_ms() >= until
    with u.connect(token=rep["token"]) as g:
        still_open(g)
    assert admin(server, "admin_users", q=u.name)["users"][0]["banned_until"] == 0


# ---------------------------------------------------------------- kick

def test_kick_one_device_then_all(server):
    u = new_user(server, "adkick")
    phone, laptop, tablet = (u.connect(device=d) for d in ("phone", "laptop", "tablet"))
    try:
        assert admin(server, "admin_kick", user=u.name, device="phone")["kicked"] == 1
        kicked_admin(phone)
        still_open(laptop)
        still_open(tablet)
        assert admin(server, "admin_kick", user=u.name, device="nothing-here")["kicked"] == 0
        # a kick is no ban: the token still works
        phone = u.connect(device="phone")
        still_open(phone)
        assert admin(server, "admin_kick", user=u.name)["kicked"] == 3
        for g in (phone, laptop, tablet):
            kicked_admin(g)
        # (distributed: a route goes once its gateway has detached the closed session)
        wait_until(lambda: admin(server, "admin_users", q=u.name)["users"][0]["online"] is False,
                   what="the kicked sessions to be gone")
        assert admin(server, "admin_kick", user=u.name)["kicked"] == 0
    finally:
        for g in (phone, laptop, tablet):
            g.close()


# ---------------------------------------------------------------- users and stats

def test_users_by_prefix_with_online_devices_and_pages(server):
    base = unique_name("au")
    names = [base + s for s in ("c", "a", "b")]
    with server.api() as c:
        for n in names:
            register(server, n, display=n.upper(), api=c)
    users = {n: login(server, n)["token"] for n in names}
    a = User(server, names[1], PASSWORD, users[names[1]])
    conns = [a.connect(device="phone"), a.connect(device="laptop")]
    try:
        listed = admin(server, "admin_users", q=base.upper())["users"]   # the prefix is lower-cased
        assert [u["user"] for u in listed] == sorted(names), listed
        by_name = {u["user"]: u for u in listed}
        assert by_name[names[1]] == {"user": names[1], "name": names[1].upper(), "online": True,
                                     "devices": ["laptop", "phone"], "banned_until": 0}
        assert by_name[names[0]]["online"] is False and by_name[names[0]]["devices"] == []
        rep = admin(server, "admin_users", q=base, limit=2)
        assert [u["user"] for u in rep["users"]] == sorted(names)[:2] and rep["more"] is True, rep
        rep = admin(server, "admin_users", q=base, limit=2, after=rep["users"][-1]["user"])
        assert [u["user"] for u in rep["users"]] == sorted(names)[2:] and rep["more"] is False, rep
        rep = admin(server, "admin_users", q=base, limit=3)
        assert len(rep["users"]) == 3 and rep["more"] is False, rep
        everyone = admin(server, "admin_users", limit=1000)["users"]   # no q: from the first name
        assert everyone == sorted(everyone, key=lambda u: u["user"]) and len(everyone) >= 3
    finally:
        for g in conns:
            g.close()
    wait_until(lambda: admin(server, "admin_users", q=names[1])["users"][0]["devices"] == [],
               what="the sessions to be gone from admin_users")


def test_stats_count_users_sessions_connections_and_messages(server):
    before = admin(server, "admin_stats")
    assert set(before) >= {"users", "online_users", "connections", "messages_last_minute"}, before
    a = new_user(server, "adsa")
    b = new_user(server, "adsb")
    after = admin(server, "admin_stats")
    assert after["users"] == before["users"] + 2, (before, after)
    with server.api() as c:
        c.call("friend_request", token=a.token, to=b.name)
        c.call("friend_accept", token=b.token, user=a.name)
    ga, gb = a.connect(device="one"), b.connect(device="two")
    try:
        for i in range(3):
            ga.send_msg({"text": f"count me {i}"}, to=b.name)
        gb.wait_pushes("msg", 3)
        stats = admin(server, "admin_stats")
        assert stats["online_users"] >= 2 and stats["messages_last_minute"] >= 3, stats
        listed = {u["user"]: u["online"] for u in admin(server, "admin_users", q=a.name[:-3])["users"]}
        assert listed.get(a.name) is True

        def connections_reported():   # distributed: each gateway's load report, every few seconds
            conns = admin(server, "admin_stats")["connections"]
            return set(server.gateway_addresses) <= set(conns) and sum(conns.values()) >= 2 and conns

        conns = wait_until(connections_reported, timeout=20, what="both connections in admin_stats")
        assert all(isinstance(n, int) and n >= 0 for n in conns.values()), conns
        if server.deployment == "embedded" and getattr(server, "ws_port", None):
            assert f"{server.host}:{server.ws_port}" in conns, conns
    finally:
        ga.close()
        gb.close()


def test_admin_ops_are_refused_when_no_admin_key_is_configured():
    """In process (the harness gives every server a key): an empty server.admin_key refuses
    every admin op, whatever key is given."""
    from imsrv import config
    from imsrv.backends import open_store
    from imsrv.backends.memory import LocalHub
    from imsrv.core.app import App

    cfg = config.load(env={})
    store = open_store("sqlite:///:memory:")
    store.migrate()
    try:
        app = App(cfg, store, LocalHub())
        for op, fields in OPS.items():
            for key in ("", "anything"):
                rep = app.api_request({"op": op, "id": 1, "admin_key": key, **fields}, "127.0.0.1:1")
                assert rep["code"] == "unauthorized" and "no admin_key is configured" in rep["message"], rep
    finally:
        store.close()
