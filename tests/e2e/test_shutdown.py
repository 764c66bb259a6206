"""Graceful shutdown: SIGTERM -> every gateway client gets `bye` reason shutdown with a
numeric retry_after, then the connection closes, and the process exits 0.

Contract: PROTOCOL.md push table (`bye`), plus the lead's run contract (SIGTERM).
"""

import time

import pytest

from harness.users import befriend, login, new_user

pytestmark = pytest.mark.timeout(60)


def test_sigterm_sends_bye_and_exits_zero(server_factory):
    srv = server_factory({"limits": {"shutdown_grace": 3.0, "retry_after": 5.0}}, name="term")
    a, b = new_user(srv, "sa"), new_user(srv, "sb")
    befriend(a, b)
    conns = [a.connect(device="one"), a.connect(device="two", mode="line"), b.connect()]
    try:
        ack = conns[0].send_msg("before shutdown", to=b.name)
        conns[2].wait_push("msg", mid=ack["mid"])
        for c in conns:
            c.sync_point()
        t0 = time.monotonic()
        srv.terminate()
        for c in conns:
            bye = c.wait_push("bye", timeout=10)
            assert bye["reason"] == "shutdown", bye
            ra = bye.get("retry_after")
            assert isinstance(ra, (int, float)) and not isinstance(ra, bool) and ra >= 0, bye
            c.expect_close(10)
        rc = srv.wait(20)
        assert rc == 0, f"exit code {rc}; log tail:\n{srv.tail()}"
        assert time.monotonic() - t0 < 15
    finally:
        for c in conns:
            c.close()
    # what was acked before the shutdown is there after a restart
    srv.start()
    tb = login(srv, b.name)["token"]
    with srv.gateway() as g:
        g.auth(tb)
        assert [m["mid"] for m in g.sync(0)["msgs"]] == [ack["mid"]]


def test_sigterm_with_no_clients_exits_zero(server_factory):
    srv = server_factory({"limits": {"shutdown_grace": 3.0}}, name="term0")
    srv.terminate()
    assert srv.wait(20) == 0, srv.tail()


def test_sigterm_with_idle_api_connection(server_factory):
    """An open API connection does not keep the process from exiting."""
    srv = server_factory({"limits": {"shutdown_grace": 2.0}}, name="term1")
    u = new_user(srv, "ti")
    api = srv.api()
    try:
        api.call("profile", token=u.token)
        srv.terminate()
        assert srv.wait(20) == 0, srv.tail()
    finally:
        api.close()
