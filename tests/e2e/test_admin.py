"""The admin ops (contract v1.1 "Operations"): admin_users, admin_ban, admin_unban,
admin_kick, admin_stats, each with ``admin_key``, on both deployments (in the distributed
one the API process holds no session: kicks travel through Redis to the gateway holding
each one, devices and online users come from the routing table, connections from the
gateways' load reports).

What this server decided where the contract is silent is in docs/PROTOCOL.md section 13
and imsrv/core/admin.py; the tests below pin it: a ban revokes the user's tokens and kicks
(reason admin), a login with the right password is refused with the reason while it is in
effect, it runs out at ``until``; a kick leaves the tokens working; unknown users are
not_found; ``devices`` are the device names of the live sessions; wrong keys (admin ops
and ``notify`` together) are throttled per caller address like failed logins
(imsrv/core/adminkey.py), on a server of small limits of this module's own.
"""
import socket
import time

import pytest

from harness.procs import wait_until
from harness.servers import ADMIN_KEY, DEPLOYMENTS, running_server
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


# ---------------------------------------------------------------- wrong keys throttled

#: small limits: 3 wrong keys per address, 5 failed logins or wrong keys per address,
#: within KEY_WINDOW s (the login throttle's login_user_attempts, login_addr_attempts,
#: login_window); the global window out of reach.  Each test has an address of its own.
KEY_WINDOW = 6.0
KEY_LIMITS = {"limits": {"login_user_attempts": 3, "login_addr_attempts": 5, "login_window": KEY_WINDOW,
                         "login_user_global_attempts": 1000}}


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def key_throttled(request, tmp_path_factory):
    """A server of this module's own with KEY_LIMITS."""
    with running_server(request.param, tmp_path_factory.mktemp(f"adminkey-{request.param}"), KEY_LIMITS,
                        name="adminkey") as srv:
        yield srv


def api_from(srv, source):
    """An API connection whose source address is ``source`` (a 127.0.0.x: Linux routes
    all of 127/8 to lo), so the server sees another caller address."""
    c = srv.api()
    c.sock.close()
    c.sock = socket.create_connection(srv.api_addr, timeout=5, source_address=(source, 0))
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def logged_once(srv, text):
    """Wait for the log line containing ``text`` (every process of the deployment); there
    is just one."""
    wait_until(lambda: srv.count(text), timeout=10, interval=0.1, what=f"{text!r} in the log")
    assert srv.count(text) == 1, srv.tail()


def assert_key_throttled(rep, source):
    assert rep["op"] == "error" and rep["code"] == "rate_limited", rep
    assert rep["message"] == f"too many wrong admin keys from address {source}", rep
    assert isinstance(rep.get("retry_after"), int) and 1 <= rep["retry_after"] <= KEY_WINDOW, rep


def test_wrong_admin_keys_are_throttled_per_address_until_the_window_passes(key_throttled):
    """3 wrong keys from one address, over admin ops and notify (one count): then every
    admin op and notify from that address is refused rate_limited (retry_after), even with
    the right key, and not counted; another address is not affected; once the window has
    passed the right key works again from the first one.  New connections for each guess
    change nothing (the count is the address's)."""
    srv, guesser = key_throttled, "127.0.0.2"
    target = new_user(srv, "adthr")
    for op, fields in (("admin_stats", {}), ("notify", {"to": target.name, "body": "x"}),
                       ("admin_kick", OPS["admin_kick"])):
        with api_from(srv, guesser) as c:
            rep = c.error(op, "unauthorized", admin_key="guess-" + op, **fields)
            assert rep["message"] == "wrong admin_key", rep
    with api_from(srv, guesser) as c:
        for op, fields in dict(OPS, notify={"to": target.name, "body": "x"}).items():
            assert_key_throttled(c.request(op, admin_key=ADMIN_KEY, **fields), guesser)
        assert_key_throttled(c.request("admin_stats", admin_key="another-guess"), guesser)
    # the operator's address: served (and notify delivered)
    with api_from(srv, "127.0.0.1") as c:
        assert c.call("admin_stats", admin_key=ADMIN_KEY)["users"] >= 1
        assert c.call("notify", admin_key=ADMIN_KEY, to=target.name, body="from the operator")["seqs"]
    logged_once(srv, "event=notify_refused op=notify addr=127.0.0.2")
    logged_once(srv, "event=admin_refused op=admin_kick addr=127.0.0.2")
    logged_once(srv, "event=rate_limited op=notify addr=127.0.0.2 limit=admin_key_addr")

    def served_again():   # a refused attempt is not counted: asking again does not extend it
        with api_from(srv, guesser) as c:
            rep = c.request("admin_stats", admin_key=ADMIN_KEY)
        if rep["op"] == "error":
            assert_key_throttled(rep, guesser)
            return None
        return rep
    assert wait_until(served_again, timeout=KEY_WINDOW + 10, interval=0.2,
                      what="the guesser's address served again after the window")["op"] == "ok"


def test_failed_logins_and_wrong_keys_share_the_address_window(key_throttled):
    """The address window (login_addr_attempts, 5 here) counts failed logins and wrong
    keys together: 4 failed logins (for 4 names) and 1 wrong key from an address make 5;
    the right key is then refused too, with the address limit's message, and so is a login."""
    srv, source = key_throttled, "127.0.0.3"
    with api_from(srv, source) as c:
        for _ in range(4):
            c.error("login", "unauthorized", user=unique_name("adnobody"), password="wrong-password-1")
        c.error("admin_users", "unauthorized", admin_key="guess")
        rep = c.error("admin_users", "rate_limited", admin_key=ADMIN_KEY)
        assert rep["message"] == f"too many failed logins and wrong admin keys from address {source}", rep
        c.error("login", "rate_limited", user=unique_name("adnobody"), password=PASSWORD)
    logged_once(srv, "event=rate_limited op=admin_users addr=127.0.0.3 limit=addr")


def test_admin_key_throttle_in_process():
    """The contract on the core's own clock (imsrv/core/adminkey.py): counted only when
    wrong, checked before the key is compared, per address, over when the window ends; a
    server with no key refuses without counting."""
    from imsrv import config
    from imsrv.backends import open_store
    from imsrv.backends.memory import LocalHub
    from imsrv.core.app import App

    class Clock:
        t = 1000.0

        def __call__(self):
            return self.t

    clock = Clock()
    cfg = config.load(env={"IMSRV_ADMIN_KEY": "the-right-key"})
    cfg.limits.login_user_attempts, cfg.limits.login_window = 2, 30.0
    store = open_store("sqlite:///:memory:")
    store.migrate()
    try:
        app = App(cfg, store, LocalHub(), monotonic=clock)

        def stats(key, addr="10.0.0.1"):
            return app.api_request({"op": "admin_stats", "id": 1, "admin_key": key}, addr)

        assert stats("the-right-key")["op"] == "ok"
        assert stats("wrong")["code"] == "unauthorized"
        assert stats("the-right-key")["op"] == "ok"      # a right key clears nothing...
        assert stats("")["code"] == "unauthorized"       # ...the 2nd wrong one: throttled now
        clock.t += 10
        for key in ("the-right-key", "wrong"):
            rep = stats(key)
            assert (rep["code"], rep["retry_after"]) == ("rate_limited", 20), rep
        rep = app.api_request({"op": "notify", "id": 2, "admin_key": "the-right-key", "to": "bob", "body": 1},
                              "10.0.0.1")
        assert rep["code"] == "rate_limited", rep
        assert stats("the-right-key", addr="10.0.0.2")["op"] == "ok"
        clock.t += 20                                    # the window (from the 1st failure) is over
        assert stats("the-right-key")["op"] == "ok"
        assert stats("wrong")["code"] == "unauthorized"  # a new window: 1 of 2
        assert stats("the-right-key")["op"] == "ok"
    finally:
        store.close()
    # no key configured: unauthorized however often, never rate_limited
    cfg = config.load(env={})
    store = open_store("sqlite:///:memory:")
    store.migrate()
    try:
        app = App(cfg, store, LocalHub(), monotonic=clock)
        for _ in range(cfg.limits.login_user_attempts + 2):
            rep = app.api_request({"op": "admin_stats", "id": 1, "admin_key": "x"}, "10.0.0.1")
            assert rep["code"] == "unauthorized", rep
    finally:
        store.close()
