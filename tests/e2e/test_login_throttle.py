"""Failed-login throttling that cannot lock the owner out (defect 9), and the security log
(defect 8), on both deployments.

Clients connect from different loopback addresses (127.0.0.x: Linux routes all of
127/8 to lo), so the server sees a guesser and the owner as two addresses.  The server of
this module has small limits: 3 failures per (user, address) and 8 per address within 60
s, 5 per user from all addresses within 900 s.

Contract: PROTOCOL.md error table (rate_limited, unauthorized); the scheme is the
server's (imsrv.core.ratelimit.LoginThrottle, [limits] in sample.toml).
"""

import hashlib
import re
import socket

import pytest

from harness.procs import wait_until
from harness.servers import ADMIN_KEY, running_server
from harness.users import PASSWORD, befriend, login, new_user, register, unique_name

pytestmark = pytest.mark.timeout(90)

LIMITS = {"limits": {
    "login_user_attempts": 3, "login_addr_attempts": 8, "login_window": 60.0,
    "login_user_global_attempts": 5, "login_user_global_window": 900.0,
    "user_send_rate": 1.0, "user_send_burst": 3,
}, "accounts": {"token_ttl": 6}}
WRONG = "wrong-password-1"


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def throttled(request, tmp_path_factory):
    with running_server(request.param, tmp_path_factory.mktemp("throttled"), LIMITS, name="throttled") as srv:
        yield srv


def api_from(srv, source):
    """An API connection whose source address is ``source`` (a 127.0.0.x)."""
    c = srv.api()
    c.sock.close()
    c.sock = socket.create_connection(srv.api_addr, timeout=5, source_address=(source, 0))
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def assert_rate_limited(rep):
    assert rep["op"] == "error" and rep["code"] == "rate_limited", rep
    assert isinstance(rep.get("retry_after"), int) and rep["retry_after"] >= 1, rep


def fail(srv, source, user, times, password=WRONG):
    with api_from(srv, source) as c:
        for _ in range(times):
            c.error("login", "unauthorized", user=user, password=password)


def try_login(srv, source, user, password=PASSWORD):
    with api_from(srv, source) as c:
        return c.request("login", user=user, password=password)


# ---------------------------------------------------------------- throttling

def test_a_guesser_is_throttled_and_the_owner_is_not(throttled):
    victim, other = unique_name("tv"), unique_name("to")
    register(throttled, victim)
    register(throttled, other)
    fail(throttled, "127.0.0.2", victim, 3)
    assert_rate_limited(try_login(throttled, "127.0.0.2", victim, WRONG))
    assert_rate_limited(try_login(throttled, "127.0.0.2", victim))   # even the right password
    # the owner, from their own address, logs in at once (this was refused: defect 9)
    assert try_login(throttled, "127.0.0.1", victim)["op"] == "ok"
    # and the guesser's address still works for other users
    assert try_login(throttled, "127.0.0.2", other)["op"] == "ok"


def test_the_global_user_limit_spares_an_address_with_no_failures(throttled):
    victim = unique_name("tg")
    register(throttled, victim)
    fail(throttled, "127.0.0.3", victim, 2)
    fail(throttled, "127.0.0.4", victim, 2)
    fail(throttled, "127.0.0.5", victim, 1)     # 5 for the user: the global limit
    for addr in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):
        assert_rate_limited(try_login(throttled, addr, victim))
    assert try_login(throttled, "127.0.0.6", victim)["op"] == "ok"


def test_an_address_spraying_names_is_throttled(throttled):
    names = [unique_name("ts") for _ in range(8)]
    fail_from = "127.0.0.7"
    with api_from(throttled, fail_from) as c:
        for n in names:
            c.error("login", "unauthorized", user=n, password=WRONG)
    owner = unique_name("tso")
    register(throttled, owner)
    assert_rate_limited(try_login(throttled, fail_from, owner))
    assert try_login(throttled, "127.0.0.1", owner)["op"] == "ok"


def test_wrong_current_passwords_count_as_failed_logins(throttled):
    u = new_user(throttled, "tc")
    with api_from(throttled, "127.0.0.8") as c:
        for op in ("delete_account", "change_password", "delete_account"):
            rep = c.error(op, "unauthorized", token=u.token, password=WRONG, new_password="new-password-1")
            assert rep["message"] == "wrong password", rep
        assert_rate_limited(c.request("change_password", token=u.token, password=PASSWORD,
                                      new_password="new-password-1"))
        assert_rate_limited(c.request("login", user=u.name, password=PASSWORD))
    assert try_login(throttled, "127.0.0.1", u.name)["op"] == "ok"


# ---------------------------------------------------------------- the security log

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def events(srv, event):
    """The log lines of ``event`` (every process of the deployment), as dicts."""
    out = []
    for line in srv.log_text().splitlines():
        if f" event={event} " in line + " ":
            out.append({k: v.strip('"') for k, v in _FIELD.findall(line)})
    return out


def logged(srv, event, **match):
    """Wait for a line of ``event`` whose fields include ``match``; -> its fields."""
    def find():
        for e in events(srv, event):
            if all(e.get(k) == str(v) for k, v in match.items()):
                return e
        return None
    return wait_until(find, timeout=10, interval=0.1, what=f"event={event} {match} in the log")


def test_security_events_are_logged_without_secrets(throttled):
    srv = throttled
    a, b = new_user(srv, "la"), new_user(srv, "lb")
    tokens = [a.token, b.token]
    secrets = [PASSWORD, WRONG, "next-password-7"]
    logged(srv, "register", user=a.name)
    logged(srv, "login", user=a.name, addr="127.0.0.1")
    # failed logins, with the address; then throttling
    fail(srv, "127.0.0.9", a.name, 3)
    assert_rate_limited(try_login(srv, "127.0.0.9", a.name, WRONG))
    logged(srv, "login_failed", user=a.name, addr="127.0.0.9", reason="wrong_password")
    logged(srv, "rate_limited", op="login", user=a.name, addr="127.0.0.9", limit="user_addr")
    # send rate limiting (burst 3); fresh tokens: they live 6 s here
    for u in (a, b):
        u.token = login(srv, u.name)["token"]
        tokens.append(u.token)
    befriend(a, b)
    with a.connect() as g:
        replies = [g.request("send", to=b.name, body=i) for i in range(6)]
    assert any(r["op"] == "error" and r["code"] == "rate_limited" for r in replies), replies
    logged(srv, "rate_limited", op="send", user=a.name)
    # admin notify: who, how many recipients
    with srv.api() as c:
        c.call("notify", admin_key=ADMIN_KEY, to=[a.name, b.name], body={"text": "maintenance"})
        c.error("notify", "unauthorized", admin_key="not-the-key", to=a.name, body=1)
    logged(srv, "notify", by="admin_key", recipients=2, result="ok")
    logged(srv, "notify_refused")
    # password change, logout, token expiry, account deletion
    t1 = login(srv, a.name, device="first")["token"]
    t2 = login(srv, a.name, device="second")["token"]
    tokens += [t1, t2]
    with srv.api() as c:
        c.call("change_password", token=t1, password=PASSWORD, new_password=secrets[2])
        c.call("logout", token=t1)
    logged(srv, "password_changed", user=a.name)
    logged(srv, "logout", user=a.name)
    t3 = login(srv, b.name, device="expiring")["token"]
    tokens.append(t3)

    def expired():
        with srv.api() as c:
            return c.request("profile", token=t3)["op"] == "error"
    wait_until(expired, timeout=15, interval=0.2, what="token to expire")
    logged(srv, "token_expired", user=b.name, device="expiring")
    t4 = login(srv, a.name, secrets[2])["token"]
    tokens.append(t4)
    with srv.api() as c:
        c.call("delete_account", token=t4, password=secrets[2])
    logged(srv, "account_deleted", user=a.name)
    # never a password, a token or a whole token hash
    text = srv.log_text()
    for s in secrets + tokens + [hashlib.sha256(t.encode()).hexdigest() for t in tokens]:
        assert s not in text, f"the server log shows a secret: {s[:12]}..."
