"""`unavailable` on the wire, distributed deployment: "a backend (database, Redis) is down;
retry later; nothing was changed" (PROTOCOL.md error table), with MariaDB down FOR REAL.

How the failure is made real: the deployment runs on a private MariaDB of its own
(tests/services.py PrivateMariaDB), which the test either stops (SIGTERM, by pid: refused
connections) or pauses (SIGSTOP: connections open, nothing answered; the store's socket
timeouts, set short in the deployment's database URL, turn the silence into an error), and
checks is unreachable (a fresh connection and SELECT 1 fails) before any request is made.
The server's side is checked in its logs (the API's backend_unavailable naming the MariaDB
address, the forwarder's store_unavailable).  Then MariaDB is started again on the same
data directory (or resumed): nothing the refused requests asked for is there, and exactly
the same requests now succeed (so they were refused for the outage, not for being wrong).
"""
import re

import pytest

import services
from harness.procs import wait_until
from harness.users import befriend, login, new_user

pytestmark = pytest.mark.timeout(120)


def lines(dep, program, event):
    return [ln for ln in dep.log(program).splitlines() if f" event={event} " in ln]


#: the store's socket timeouts (imsrv/backends/mysql.py; defaults 5 / 30 / 30 s): a paused
#: MariaDB fails a call after 2 s instead of 30 (a send: before cluster.send_timeout, 30 s,
#: so the forwarder answers it `unavailable` rather than the gateway closing at the timeout)
STORE_TIMEOUTS = "?connect_timeout=2&read_timeout=2&write_timeout=2"


@pytest.fixture
def private_deployment(tmp_path):
    """-> start(mysql_server) -> a started Deployment on that server, with STORE_TIMEOUTS in
    its database URL (deployment_factory builds the URL itself, without options)."""
    from harness.servers import LIVE, Deployment

    made = []

    def start(mysql_server):
        redis = services.need(services.ensure_redis, "a Redis server")
        dep = Deployment(tmp_path / "dist", mysql_server, redis, name="unavailable")
        dep.database_url += STORE_TIMEOUTS   # what the daemons get as IMSRV_DATABASE_URL
        made.append(dep)
        LIVE.append(dep)
        return dep.start()

    yield start
    for dep in made:
        try:
            dep.kill()
        finally:
            LIVE.remove(dep)


@pytest.mark.parametrize("how", ["stop", "pause"])
def test_mariadb_down_answers_unavailable_and_changes_nothing(private_deployment, how):
    priv = services.need(services.private_mariadb, "a private MariaDB server")
    priv.start()
    dep = None
    try:
        dep = private_deployment(priv.url)
        a, b, c = new_user(dep, "ua"), new_user(dep, "ub"), new_user(dep, "uc")
        befriend(a, b)
        ga, gb = a.connect(), b.connect()
        try:
            first = ga.send_msg("before", to=b.name, cmid="u-0")
            assert gb.wait_push("msg", mid=first["mid"])["body"] == "before"

            if how == "stop":
                priv.stop()
                assert not priv.running()
            else:
                priv.pause()   # returns once every thread of it is stopped
            assert not services.mysql_ping(priv.url, timeout=1.0)

            with dep.api(timeout=15) as api:
                # API ops: a read (even the token lookup needs the store), writes, a login
                api.error("profile", "unavailable", token=a.token)
                api.error("set_profile", "unavailable", token=a.token, name="Changed")
                api.error("friend_request", "unavailable", token=a.token, to=c.name)
                rep = api.error("login", "unavailable", user=a.name, password=a.password)
                assert "retry" in rep["message"], rep
            # a send on a live session: refused, the session stays
            ga.error("send", "unavailable", to=b.name, body="during", cmid="u-1", timeout=15)
            ga.sync_point()
            # a new session: its auth is refused and the connection closed
            with dep.gateway() as g:
                g.error("auth", "unavailable", token=c.token, timeout=15)
                assert g.expect_close(5) == []
            # the API saw the store fail, for the reason the outage gives
            cause = "Connection refused" if how == "stop" else "timed out"
            api_log = wait_until(lambda: len(lines(dep, "api", "backend_unavailable")) >= 4 and
                                 lines(dep, "api", "backend_unavailable"), timeout=10,
                                 what="the API's 4 backend_unavailable lines (supervisord copies logs)")
            assert len(api_log) == 4, api_log
            assert all(re.search(rf"127\.0\.0\.1:{priv.port}/", ln) and cause in ln for ln in api_log), api_log
            wait_until(lambda: [ln for p in ("forwarder-0", "forwarder-1")
                                for ln in lines(dep, p, "store_unavailable") if "op=send" in ln],
                       timeout=10, what="the forwarder's store_unavailable line (supervisord copies logs)")

            if how == "stop":
                priv.start()   # the same data directory and port
            else:
                priv.resume()
            # nothing was changed...
            assert a.call("profile")["name"] == a.name
            assert c.call("friend_requests")["requests"] == []
            msgs, head = gb.sync_all(0)
            assert [m["body"] for m in msgs] == ["before"] and head == 1, msgs
            assert ga.sync(0)["head"] == 1
            # ...and the same requests, now that the store is back, do change it
            a.call("set_profile", name="Changed")
            a.call("friend_request", to=c.name)
            again = ga.send_msg("during", to=b.name, cmid="u-1", timeout=15)
            assert gb.wait_push("msg", mid=again["mid"])["seq"] == 2
            assert login(dep, a.name)["user"] == a.name
            with dep.gateway() as g:
                assert g.call("auth", token=c.token)["user"] == c.name
        finally:
            ga.close()
            gb.close()
        assert a.call("profile")["name"] == "Changed"
        assert [r["from"] for r in c.call("friend_requests")["requests"]] == [a.name]
    finally:
        if dep is not None:
            priv.resume()
            dep.kill()   # while its MariaDB runs: the database is dropped
        priv.cleanup()
