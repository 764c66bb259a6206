"""rate_limited with retry_after: per-user sends, per-connection requests, failed logins
per user and per address; rejected requests change nothing; other clients unaffected.
On both deployments: in the distributed one the per-user send bucket and the failed-login
windows are shared in Redis (imsrv/backends/redis_limits.py), the per-connection buckets
and max_connections are each gateway's / the API daemon's own.

Contract: PROTOCOL.md error table (rate_limited) and "Delivery guarantees" 8.
"""

import time

import pytest

from harness.servers import DEPLOYMENTS, make_server, running_server, start_server, stop_server
from harness.users import befriend, login, new_user, register, unique_name
from harness.wire import Closed

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def limited(request, tmp_path_factory):
    config = {"limits": {
        "user_send_rate": 1.0, "user_send_burst": 5,
        "conn_rate": 5.0, "conn_burst": 40,
        "login_user_attempts": 3, "login_addr_attempts": 1000, "login_window": 60.0,
    }}
    with running_server(request.param, tmp_path_factory.mktemp("limited"), config, name="limited") as srv:
        yield srv


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def addr_limited(request, tmp_path_factory):
    config = {"limits": {"login_user_attempts": 1000, "login_addr_attempts": 4, "login_window": 60.0}}
    with running_server(request.param, tmp_path_factory.mktemp("addrlimited"), config, name="addrlimited") as srv:
        yield srv


def gateway0(srv):
    """A connection to the (first) gateway: max_connections is per gateway process."""
    return srv.gateway(index=0) if srv.deployment == "distributed" else srv.gateway()


def assert_rate_limited(rep):
    assert rep["op"] == "error" and rep["code"] == "rate_limited", rep
    ra = rep.get("retry_after")
    assert isinstance(ra, (int, float)) and not isinstance(ra, bool) and ra > 0, rep


def test_user_send_flood(limited):
    a, b, c, d = (new_user(limited, p) for p in ("fa", "fb", "fc", "fd"))
    befriend(a, b)
    befriend(c, d)
    with a.connect() as ga, b.connect() as gb, c.connect() as gc, d.connect() as gd:
        ids = [ga.send_request("send", to=b.name, body=k, cmid=f"f{k}") for k in range(20)]
        replies = [ga.read_reply(rid) for rid in ids]
        acked = [r for r in replies if r["op"] == "ack"]
        limited_replies = [r for r in replies if r["op"] == "error"]
        assert 5 <= len(acked) <= 8, replies  # burst 5 (+ a little refill at 1/s)
        assert limited_replies, replies
        for r in limited_replies:
            assert_rate_limited(r)
        # a rate-limited send changed nothing: only the acked messages are stored
        msgs, head = gb.sync_all(0)
        assert sorted(m["mid"] for m in msgs) == sorted(r["mid"] for r in acked)
        assert head == len(acked)
        # the flooder's connection stays usable
        ga.sync_point()
        # another user on the same server is unaffected
        ack = gc.send_msg("unaffected", to=d.name)
        assert gd.wait_push("msg")["mid"] == ack["mid"]


def test_user_send_limit_is_per_user_across_connections(limited):
    a, b = new_user(limited, "pu"), new_user(limited, "pu")
    befriend(a, b)
    with a.connect(device="x") as g1, a.connect(device="y") as g2:
        ids1 = [g1.send_request("send", to=b.name, body=k) for k in range(5)]
        ids2 = [g2.send_request("send", to=b.name, body=k) for k in range(5)]
        replies = [g1.read_reply(i) for i in ids1] + [g2.read_reply(i) for i in ids2]
        assert [r["op"] for r in replies].count("ack") <= 7, replies
        for r in replies:
            if r["op"] == "error":
                assert_rate_limited(r)


def test_connection_request_flood(limited):
    u = new_user(limited, "cf")
    with u.connect() as g:
        ids = [g.send_request("ping") for _ in range(100)]
        replies = [g.read_reply(rid) for rid in ids]
        ok = [r for r in replies if r["op"] == "pong"]
        errs = [r for r in replies if r["op"] != "pong"]
        assert 30 <= len(ok) <= 50, len(ok)  # burst 40 (auth took one) + refill 5/s
        assert errs
        for r in errs:
            assert_rate_limited(r)
    # a fresh connection has its own bucket
    with u.connect(device="fresh") as g2:
        g2.sync_point()


def test_api_connection_request_flood(limited):
    u = new_user(limited, "af")
    with limited.api() as c:
        ids = [c.send_request("profile", token=u.token) for _ in range(100)]
        replies = [c.read_reply(rid) for rid in ids]
        errs = [r for r in replies if r["op"] == "error"]
        assert errs and len(errs) <= 70
        for r in errs:
            assert_rate_limited(r)


def test_login_attempts_per_user(limited):
    victim = unique_name("lv")
    bystander = unique_name("lb")
    register(limited, victim)
    register(limited, bystander)
    with limited.api() as c:
        for _ in range(3):
            c.error("login", "unauthorized", user=victim, password="wrong-password")
    with limited.api() as c:
        assert_rate_limited(c.request("login", user=victim, password="wrong-password"))
    # the per-user limit does not touch other users
    assert login(limited, bystander)["user"] == bystander


def test_login_attempts_per_address(addr_limited):
    names = [unique_name("la") for _ in range(6)]
    for n in names:
        register(addr_limited, n)
    u = new_user(addr_limited, "lo")   # logged in before the address is throttled
    with addr_limited.api() as c:
        for n in names[:4]:
            c.error("login", "unauthorized", user=n, password="wrong-password")
        assert_rate_limited(c.request("login", user=names[4], password="wrong-password"))
    # the server stays up, and only login is throttled: the address's other requests are
    # answered as ever (a bogus token: unauthorized; a good one: ok)
    with addr_limited.api() as c:
        c.error("profile", "unauthorized", token="x")
        assert c.call("profile", token=u.token)["user"] == u.name


def connect0(srv, user):
    c = gateway0(srv)
    try:
        c.auth(user.token)
    except BaseException:
        c.close()
        raise
    return c


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_max_connections_bye_overloaded(tmp_path_factory, deployment):
    """Over max_connections a gateway client is told `bye` overloaded with retry_after and
    closed; the existing sessions are unaffected and a freed slot can be used again."""
    srv = start_server(make_server(deployment, tmp_path_factory.mktemp("full"), {"limits": {"max_connections": 3}},
                                   name="full"))
    try:
        users = [new_user(srv, "mc") for _ in range(4)]
        conns = [connect0(srv, u) for u in users[:3]]
        try:
            with gateway0(srv) as extra:
                # send nothing: the bye must come anyway (and no unread data of ours can turn
                # the server's close into a reset that would discard the bye)
                frames = extra.expect_close(5)
                byes = [f for f in frames if f["op"] == "bye"]
                assert byes and byes[0]["reason"] == "overloaded", frames
                ra = byes[0].get("retry_after")
                assert isinstance(ra, (int, float)) and not isinstance(ra, bool) and ra >= 0, byes
                assert not [f for f in frames if f["op"] == "ok"], frames
            for c in conns:
                c.sync_point()
            conns.pop().close()
            # the slot is free again (the server notices the close asynchronously: retry, bounded)
            deadline = time.monotonic() + 5
            while True:
                try:
                    c = connect0(srv, users[3])
                    conns.append(c)
                    break
                except (Closed, AssertionError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            for c in conns:
                c.close()
    finally:
        stop_server(srv)
