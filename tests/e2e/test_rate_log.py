"""A connection refused by its request bucket (`rate_limited`) is logged once per interval
(connection.RATE_LOG_EVERY, 10 s) with the count refused, not once per frame; on both
deployments (distributed: the gateway-0 and the API daemon's own logs)."""
import re

import pytest

from harness.procs import wait_until
from harness.servers import running_server
from harness.users import new_user

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def strict_server(request, tmp_path_factory):
    config = {"limits": {"conn_rate": 0.5, "conn_burst": 3}}
    with running_server(request.param, tmp_path_factory.mktemp("ratelog"), config, name="ratelog") as srv:
        yield srv


@pytest.mark.parametrize("where", ["gateway", "api"])
def test_rate_limited_is_logged_once_per_interval(strict_server, where):
    srv = strict_server
    dist = srv.deployment == "distributed"

    def gateway(user):
        g = srv.gateway(index=0) if dist else srv.gateway()
        g.auth(user.token)
        return g

    def log():
        """The log of the one process that serves the connection: a line it wrote before the
        marker's is in it once the marker's is (one pipe, one file, in order)."""
        return srv.log("gateway-0" if where == "gateway" else "api") if dist else srv.log_text()

    u = new_user(srv, "rl")
    c = gateway(u) if where == "gateway" else srv.api()
    with c:
        op, fields = ("ping", {}) if where == "gateway" else ("profile", {"token": u.token})
        rids = [c.send_request(op, **fields) for _ in range(30)]
        replies = c.read_replies(rids)
        refused = [r for r in replies if r["op"] == "error" and r["code"] == "rate_limited"]
        assert len(refused) >= 20, replies
        port = c.sock.getsockname()[1]
    # a marker logged after the burst by the same process: once it is in the log, so is
    # every line before it
    marker = new_user(srv, "mark")
    if where == "gateway":
        gateway(marker).close()   # logs event=online user=<marker>
    wait_until(lambda: f"user={marker.name}" in log(), what="the marker in the log")
    lines = [ln for ln in log().splitlines()
             if "event=rate_limited" in ln and re.search(rf"addr=127\.0\.0\.1:{port}\b", ln)]
    assert len(lines) == 1, lines
    assert f"service={where}" in lines[0] and "refused=1" in lines[0], lines
