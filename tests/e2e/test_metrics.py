"""Health and metrics of every process (Operations v1.1: ``GET /healthz``, ``GET /metrics``
on ``server.metrics_port``; imsrv/servers/metrics.py, imsrv/metrics.py).

On both deployments: every process (the embedded server; each gateway, forwarder and the
API of the supervisord set) answers /healthz ``200 ok`` and a /metrics that
prometheus_client's parser reads, every name prefixed ``imsrv_``; counters move under real
traffic (sends, acks, pushes, auths, errors by code and op, store batches) and the
connections gauge counts open gateway connections.  503 cases: an embedded server
draining after SIGTERM (its one connection held busy by a before_send hook that does not
answer yet: the listening socket of this test), and a distributed set whose private Redis
is SIGKILLed (every daemon says so; /metrics still answers and counts the failed part), and
all healthy again once Redis is back.
"""
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from gevent import socket as gsocket
from prometheus_client.parser import text_string_to_metric_families

import imsrv.metrics
import services
from harness.procs import REPO_ROOT, free_ports, wait_until
from harness.users import befriend, new_user
from imsrv import config
from imsrv.servers.listener import listen
from imsrv.servers.metrics import MAX_CONNECTIONS, REMEDY, MetricsServer, daemon_metrics_port

pytestmark = pytest.mark.timeout(180)


# ---------------------------------------------------------------------- HTTP helpers
def http_get(address, path, method="GET"):
    """-> (status, body text) of one request to ``address`` ("host:port")."""
    req = urllib.request.Request(f"http://{address}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode("utf-8")


def healthz(address):
    return http_get(address, "/healthz")


def scrape(address):
    """The samples of one /metrics: {(sample name, frozenset(labels)): value}, and the
    family names."""
    status, text = http_get(address, "/metrics")
    assert status == 200, (address, status, text)
    samples, names = {}, set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, names


def total(scrapes, name, **labels):
    """The sum of sample ``name`` over ``scrapes`` (a list of scrape() samples), over the
    samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for samples in scrapes for (n, lbl), v in samples.items() if n == name and want <= lbl)


def scrape_all(server):
    return [scrape(addr)[0] for addr in server.metrics_addresses.values()]


#: the families imsrv/metrics.py documents (its docstring's table)
DOCUMENTED = set(re.findall(r"\b(imsrv_\w+)", imsrv.metrics.__doc__))


def documented(name):
    """A family (or a sample) name of ours: in imsrv/metrics.py's table, or prometheus_client's
    process collector (imsrv_process_*)."""
    base = re.sub(r"_(bucket|sum|count|created)$", "", name)
    return name.startswith("imsrv_process_") or bool({name, base, name + "_total", base + "_total"} & DOCUMENTED)


# ---------------------------------------------------------------------- both deployments
def test_every_process_is_healthy_and_scraped(server):
    addresses = server.metrics_addresses
    if server.deployment == "embedded":
        assert list(addresses) == ["embedded"]
    else:
        assert sorted(addresses) == sorted(server.programs), addresses
    services_seen = set()
    for program, addr in addresses.items():
        assert healthz(addr) == (200, "ok\n"), program
        samples, names = scrape(addr)
        assert names and all(n.startswith("imsrv_") for n in names), (program, sorted(names))
        assert all(documented(n) for n in names), (program, sorted(n for n in names if not documented(n)))
        [info] = [lbl for (n, lbl), _ in samples.items() if n == "imsrv_info"]
        services_seen.add(dict(info)["service"])
        assert total([samples], "imsrv_process_resident_memory_bytes") > 0, program
        role = program.partition("-")[0]
        if role in ("embedded", "gateway"):
            assert ("imsrv_connections", frozenset({("listener", "gateway")})) in samples, program
        if role in ("embedded", "forwarder"):
            assert "imsrv_store_batch_seconds" in names and "imsrv_store_batch_size" in names, program
        if role == "forwarder":
            for gauge in ("imsrv_ingress_length", "imsrv_ingress_pending", "imsrv_ingress_oldest_pending_seconds"):
                assert gauge in names, (program, gauge)
        if role == "embedded":
            assert "imsrv_forwarder_queue" in names
    expected = {"embedded"} if server.deployment == "embedded" else {"gateway", "forwarder", "api"}
    assert services_seen == expected
    addr = next(iter(addresses.values()))
    assert http_get(addr, "/nothing")[0] == 404
    assert http_get(addr, "/metrics", method="POST")[0] == 405
    assert http_get(addr, "/healthz", method="HEAD")[0] == 200


def test_counters_move_under_traffic(server):
    a, b = new_user(server, "ma"), new_user(server, "mb")
    befriend(a, b)
    before = scrape_all(server)
    with a.connect() as ga, b.connect() as gb:
        # open gateway connections are counted (both deployments: summed over the gateways)
        wait_until(lambda: total(scrape_all(server), "imsrv_connections", listener="gateway") >= 2,
                   what="the connections gauge to count our two connections")
        for i in range(3):
            ga.send_msg({"text": f"metrics {i}"}, to=b.name)
        for _ in range(3):
            gb.wait_push("msg", **{"from": a.name})
        ga.error("send", "bad_request", to=b.name)                 # no body
        ga.error("no_such_op", "unknown_op")                        # counted under op "other"
        with server.api() as api:
            api.error("login", "unauthorized", user=a.name, password="wrong-password-1")
        bad = server.gateway()
        try:
            bad.error("auth", "unauthorized", token="not-a-token")
        finally:
            bad.close()

        def moved():
            after = scrape_all(server)
            delta = {}
            for name, labels in [("imsrv_requests_total", {"service": "gateway", "op": "send"}),
                                 ("imsrv_sends_total", {"op": "send"}),
                                 ("imsrv_acks_total", {}),
                                 ("imsrv_pushes_total", {}),
                                 ("imsrv_auths_total", {"result": "ok"}),
                                 ("imsrv_auths_total", {"result": "failed"}),
                                 ("imsrv_errors_total", {"code": "bad_request", "op": "send"}),
                                 ("imsrv_errors_total", {"code": "unknown_op", "op": "other"}),
                                 ("imsrv_errors_total", {"code": "unauthorized", "op": "login"}),
                                 ("imsrv_errors_total", {"code": "unauthorized", "op": "auth"}),
                                 ("imsrv_store_batch_size_sum", {}),
                                 ("imsrv_store_batch_seconds_count", {})]:
                key = name + "".join(f",{k}={v}" for k, v in labels.items())
                delta[key] = total(after, name, **labels) - total(before, name, **labels)
            return delta

        def as_expected():
            d = moved()
            ok = (d["imsrv_requests_total,service=gateway,op=send"] == 4      # 3 sent + the bad one
                  and d["imsrv_sends_total,op=send"] == 4 and d["imsrv_acks_total"] == 3
                  and d["imsrv_pushes_total"] >= 3
                  and d["imsrv_auths_total,result=ok"] == 2 and d["imsrv_auths_total,result=failed"] == 1
                  and d["imsrv_errors_total,code=bad_request,op=send"] == 1
                  and d["imsrv_errors_total,code=unknown_op,op=other"] == 1
                  and d["imsrv_errors_total,code=unauthorized,op=login"] == 1
                  and d["imsrv_errors_total,code=unauthorized,op=auth"] == 1
                  and d["imsrv_store_batch_size_sum"] >= 3 and d["imsrv_store_batch_seconds_count"] >= 1)
            return ok or print("deltas so far:", d)

        wait_until(as_expected, timeout=15, interval=0.2, what="the counters to move by our traffic")
    # closed: the gauge comes down again
    was = total(before, "imsrv_connections", listener="gateway")
    wait_until(lambda: total(scrape_all(server), "imsrv_connections", listener="gateway") <= was,
               what="the connections gauge to drop back")


def test_the_sample_dashboard_and_scrape_config_match():
    """docs/metrics: the dashboard's queries name metrics that exist; the scrape config's
    targets are the ports supervisord.conf's daemons listen on by default."""
    dashboard = json.loads((REPO_ROOT / "docs" / "metrics" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    used = {n for e in exprs for n in re.findall(r"\b(imsrv_\w+)", e)}
    assert used and all(documented(n) for n in used), sorted(n for n in used if not documented(n))
    cfg = config.load(env={})
    expected = {f"127.0.0.1:{cfg.server.metrics_port}"}
    expected |= {f"127.0.0.1:{daemon_metrics_port(cfg, role, i)}" for role, n in
                 (("gateway", 2), ("forwarder", 2), ("api", 1)) for i in range(n)}
    scrape_config = (REPO_ROOT / "docs" / "metrics" / "prometheus.yml").read_text()
    targets = {t for line in scrape_config.splitlines() if "targets:" in line and not line.lstrip().startswith("#")
               for t in re.findall(r'"([\d.]+:\d+)"', line)}
    assert targets == expected


# ---------------------------------------------------------------------- 503
class StalledHook:
    """A listening socket as the before_send hook: the server's POST connects (the kernel
    completes the handshake) and then waits for an answer that comes when we close."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.url = "http://127.0.0.1:%d/before_send" % self.sock.getsockname()[1]
        self.conns = []

    def accept(self, timeout=10):
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        self.conns.append(conn)
        return conn

    def close(self):
        for c in self.conns:
            c.close()
        self.sock.close()


def test_embedded_says_503_while_it_shuts_down(server_factory):
    """SIGTERM with a connection still busy (its send waits for the before_send hook): the
    server drains, and meanwhile /healthz answers 503 ``shutting down`` (and /metrics still
    works); it exits once the hook fails open and the send is answered."""
    hook = StalledHook()
    try:
        srv = server_factory({"hooks": {"before_send": hook.url, "timeout": 20.0, "secret": "metrics-test"},
                              "limits": {"shutdown_grace": 20.0}}, name="drain")
        [addr] = srv.metrics_addresses.values()
        a, b = new_user(srv, "da"), new_user(srv, "db")
        befriend(a, b)
        with a.connect() as ga:
            rid = ga.send_request("send", to=b.name, body={"text": "held by the hook"})
            hook.accept()                      # the server waits for the hook's answer now
            assert healthz(addr) == (200, "ok\n")
            srv.terminate()
            wait_until(lambda: healthz(addr) == (503, "shutting down\n"), what="/healthz to say shutting down")
            scrape(addr)                       # still served while draining
            hook.close()                       # the hook fails (fail_open): the send goes through
            assert ga.read_reply(rid, timeout=20)["op"] == "ack"
        assert srv.wait(30) == 0
    finally:
        hook.close()


def test_distributed_says_503_without_redis(deployment_factory):
    """The set's private Redis SIGKILLed: every daemon's /healthz says 503 with the reason
    (a gateway loses its channel subscription, the others cannot PING Redis), the
    forwarders' /metrics still answer and count the part they could not read (the ingress
    lag); Redis started again (empty): all 200 again."""
    priv = services.need(services.private_redis, "a private redis-server")
    priv.start()
    try:
        dep = deployment_factory(redis=priv.url)
        addresses = dep.metrics_addresses
        for program, addr in addresses.items():
            assert healthz(addr) == (200, "ok\n"), program
        priv.kill()

        def all_unhealthy():
            answers = {p: healthz(a) for p, a in addresses.items()}
            return answers if all(status == 503 for status, _ in answers.values()) else None

        answers = wait_until(all_unhealthy, timeout=20, what="every daemon to say 503")
        for program, (_, reason) in answers.items():
            assert "redis unreachable" in reason or "not subscribed" in reason, (program, reason)
        samples, _ = scrape(addresses["forwarder-0"])
        assert total([samples], "imsrv_scrape_errors_total", part="ingress") >= 1
        priv.start()
        wait_until(lambda: all(healthz(a) == (200, "ok\n") for a in addresses.values()), timeout=30,
                   what="every daemon to be healthy again")
    finally:
        priv.stop()


# --------------------------------------------- the port's own bounds, on a server in this process
# (gevent sockets on both sides: the test's waits run the server's greenlets)


@pytest.fixture
def bounded_metrics():
    """make(**bounds) -> a started MetricsServer of this process (always healthy) on a
    free port, with MetricsServer's keyword bounds; stopped after the test."""
    made = []

    def make(**bounds):
        srv = MetricsServer(listen("127.0.0.1", 0, "metrics", REMEDY), imsrv.metrics.ProcessMetrics("test"),
                            lambda: None, **bounds)
        srv.start()
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop()


def _connect(srv):
    return gsocket.create_connection(srv.address[:2], timeout=10)


def _closed_after(sock):
    """Seconds until the server closes ``sock`` (what it sends first is read and
    dropped); the socket's own timeout bounds the wait."""
    started = time.monotonic()
    while sock.recv(65536):
        pass
    return time.monotonic() - started


def _healthz(sock):
    """One keep-alive GET /healthz on ``sock`` -> the head and body of its answer."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: metrics\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got or not got.endswith(b"ok\n"):
        data = sock.recv(65536)
        assert data, got
        got += data
    return got


def test_idle_metrics_connections_are_closed(bounded_metrics):
    """A connection that sends nothing, and a kept-alive one after its answer, are closed
    by the server after idle_timeout (0.3 s here; IDLE_TIMEOUT, 10 s, by default);
    /healthz answers meanwhile.  The pool is MAX_CONNECTIONS by default."""
    assert bounded_metrics().server.pool.size == MAX_CONNECTIONS
    srv = bounded_metrics(idle_timeout=0.3)
    idle, kept = _connect(srv), _connect(srv)
    try:
        assert _healthz(kept).startswith(b"HTTP/1.1 200 ")
        assert 0.2 <= _closed_after(idle) < 5
        assert _closed_after(kept) < 5
        fresh = _connect(srv)
        try:
            assert _healthz(fresh).startswith(b"HTTP/1.1 200 ")
        finally:
            fresh.close()
    finally:
        idle.close()
        kept.close()


def test_a_dribbled_metrics_request_is_cut_at_its_deadline(bounded_metrics):
    """A request sent one byte per 0.1 s (each read far under idle_timeout, 2 s here) is
    cut when request_timeout (0.6 s here; REQUEST_TIMEOUT, 30 s, by default) passes."""
    srv = bounded_metrics(idle_timeout=2.0, request_timeout=0.6)
    request = b"GET /healthz HTTP/1.1\r\nHost: metrics\r\nX-Slow: " + b"x" * 100 + b"\r\n\r\n"
    sock = _connect(srv)
    started = time.monotonic()
    try:
        sent = 0
        while sent < len(request):
            try:
                sock.sendall(request[sent:sent + 1])
            except OSError:   # reset: cut already
                break
            sent += 1
            sock.settimeout(0.1)   # the dribble's pace; a close ends the wait
            try:
                if not sock.recv(65536):
                    break
            except socket.timeout:
                continue
            except OSError:
                break
        took = time.monotonic() - started
        assert sent < len(request) and 0.5 <= took < 2.0, (sent, took)
    finally:
        sock.close()


def test_metrics_connections_beyond_the_pool_wait(bounded_metrics):
    """max_connections (1 here) connections are served at once: with one idle connection
    holding the pool, a /healthz on a second is answered once the idle one is closed
    (idle_timeout, 0.5 s), not refused."""
    srv = bounded_metrics(idle_timeout=0.5, max_connections=1)
    idle = _connect(srv)
    try:
        started = time.monotonic()
        second = _connect(srv)   # waits in the listen queue
        try:
            assert _healthz(second).startswith(b"HTTP/1.1 200 ")
            assert time.monotonic() - started >= 0.45
        finally:
            second.close()
        assert _closed_after(idle) < 1
    finally:
        idle.close()


def test_a_busy_metrics_port_is_named(tmp_path):
    """Like the other ports: exit 1, one line naming it and how to move it, nothing made."""
    gw, api, metrics = free_ports(3)
    busy = socket.socket()
    busy.bind(("127.0.0.1", metrics))
    busy.listen(1)
    try:
        out = subprocess.run([sys.executable, "-m", "imsrv.cli.main", "serve", "--data", str(tmp_path / "new"),
                              "--gateway-port", str(gw), "--api-port", str(api), "--ws-port", "0",
                              "--metrics-port", str(metrics)],
                             cwd=str(tmp_path), env=_env(), capture_output=True, text=True, timeout=60)
    finally:
        busy.close()
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"imsrv: cannot listen on 127.0.0.1:{metrics} (metrics): address already in use; choose another with"
        " --metrics-port N (0 turns it off) or server.metrics_port"), out.stderr
    assert not (tmp_path / "new").exists()


def _env():
    import os
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMSRV_") or k in ("IMSRV_PUREPYTHON",)}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env
