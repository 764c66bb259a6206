"""A connection refused by its request bucket (`rate_limited`) is logged once per interval
(connection.RATE_LOG_EVERY, 10 s) with the count refused, not once per frame."""
import re

import pytest

from .support import new_user, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    from .conftest import _stop, dedicated_server

    srv = dedicated_server(tmp_path_factory, "ratelog", {"limits": {"conn_rate": 0.5, "conn_burst": 3}})
    yield srv
    _stop(srv)


@pytest.mark.parametrize("where", ["gateway", "api"])
def test_rate_limited_is_logged_once_per_interval(strict_server, where):
    u = new_user(strict_server, "rl")
    c = u.connect() if where == "gateway" else strict_server.api()
    with c:
        op, fields = ("ping", {}) if where == "gateway" else ("profile", {"token": u.token})
        rids = [c.send_request(op, **fields) for _ in range(30)]
        replies = c.read_replies(rids)
        refused = [r for r in replies if r["op"] == "error" and r["code"] == "rate_limited"]
        assert len(refused) >= 20, replies
        port = c.sock.getsockname()[1]
    # a marker logged after the burst: once it is in the log, so is every line before it
    marker = new_user(strict_server, "mark")
    wait_until(lambda: f"user={marker.name}" in strict_server.log_text(), what="the marker login in the log")
    lines = [ln for ln in strict_server.log_text().splitlines()
             if "event=rate_limited" in ln and re.search(rf"addr=127\.0\.0\.1:{port}\b", ln)]
    assert len(lines) == 1, lines
    assert f"service={where}" in lines[0] and "refused=1" in lines[0], lines
