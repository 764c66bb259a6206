"""Every process's HTTP port for operations, ``server.metrics_port`` (0: none), served by
gevent.pywsgi:

- ``GET /healthz``: ``200`` ``ok`` when the process can do its job, else ``503`` and one
  line saying why (``starting``, ``shutting down``, ``store unreachable: ...``,
  ``redis unreachable: ...``, ``not subscribed to its channel ...``); the process's
  ``problem()`` decides, at most once a second (:data:`HEALTH_EVERY`; requests meanwhile get
  the last answer), each backend probe bounded by :data:`PROBE_TIMEOUT`;
- ``GET /metrics``: the Prometheus text format of its :class:`imsrv.metrics.ProcessMetrics`
  (prometheus_client's WSGI app: OpenMetrics and gzip when the scraper asks);
- anything else: ``404``; a method other than GET/HEAD: ``405``.

Ports: the embedded server's is ``server.metrics_port`` itself (7090); a daemon of the
distributed deployment derives its own from it (:func:`daemon_metrics_port`), so one
setting serves the whole supervisord set.

Connections (HTTP/1.1 keep-alive as gevent.pywsgi does it) are bounded three ways, so
that idle or slow clients cannot pile up sockets and greenlets:

- each wait for the client (a read, a write) within :data:`IDLE_TIMEOUT` s: an idle
  kept-alive connection is closed after that long (no log line: scrapers do it);
- each request, from the wait for its first line to the last byte of its answer, within
  :data:`REQUEST_TIMEOUT` s (a client that sends its request one byte per
  ``IDLE_TIMEOUT - epsilon``): the socket is shut and closed (``metrics_request_timeout``
  logged);
- at most :data:`MAX_CONNECTIONS` connections are served at once (a gevent Pool); more
  wait in the listen queue until one ends, they are not refused.
"""
import socket
import time

import gevent
from gevent.lock import Semaphore
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer
from prometheus_client import make_wsgi_app

from .. import logs
from ..metrics import ProcessMetrics, core_families, gauge, hook_families, hub_families, listener_families
from .listener import Listener, listen

HEALTH_EVERY = 1.0    # seconds a /healthz answer is reused
PROBE_TIMEOUT = 2.0   # seconds a backend probe (Redis PING, a store read) may take
#: a daemon's metrics port: server.metrics_port + ROLE_OFFSET[role] + 10 * index.  The
#: last digit (2, 3, 4) never meets the ports the set listens on by default (gateways
#: 7000 + 10 N, API 7001, WebSocket 7080 + 10 N), however many processes there are
ROLE_OFFSET = {"gateway": 2, "forwarder": 3, "api": 4}
REMEDY = "--metrics-port N (0 turns it off) or server.metrics_port"
#: seconds each wait for a metrics client may take (read or write); an idle kept-alive
#: connection is closed after it.  Prometheus scrapes every 15 s by default and reconnects
#: at no cost; an answer is built in well under a second (a health probe: PROBE_TIMEOUT)
IDLE_TIMEOUT = 10.0
#: seconds one request may take in all, from the wait for its request line to its answer
#: written: the bound a per-wait timeout alone cannot give (a client dribbling bytes)
REQUEST_TIMEOUT = 30.0
#: connections served at once: a few scrapers and health checkers use one each; 64 leaves
#: room for several of them and an operator's curl, while idle or slow clients cannot
#: hold more than 64 sockets and greenlets (each for at most REQUEST_TIMEOUT s)
MAX_CONNECTIONS = 64


def daemon_metrics_port(cfg, role, index=0, explicit=None):
    """The metrics port of daemon ``role`` number ``index`` (0: none): ``explicit`` (its
    --metrics-port) if given, else derived from ``server.metrics_port`` (0 stays 0)."""
    if explicit is not None:
        return explicit
    base = cfg.server.metrics_port
    return base + ROLE_OFFSET[role] + 10 * index if base else 0


def metrics_spec(cfg, what):
    """listen()'s arguments for ``server.metrics_port`` (listener.listen_all)."""
    return (cfg.server.host, cfg.server.metrics_port, what, REMEDY)


def metrics_socket(cfg, what):
    """The bound socket of ``server.metrics_port`` (None when 0), or ListenError naming
    ``what`` (e.g. "gateway gw0 metrics")."""
    return listen(*metrics_spec(cfg, what)) if cfg.server.metrics_port else None


def embedded_metrics(server, sock):
    """The MetricsServer of the embedded server ``server`` (imsrv/servers/embedded.py) on
    ``sock`` (None: no metrics port -> None)."""
    if sock is None:
        return None
    metrics = ProcessMetrics("embedded")
    listeners = {name: lst for name in ("gateway", "websocket", "api")
                 if isinstance(lst := getattr(server, name, None), Listener)}
    add_core_parts(metrics, server.app, server.hub, listeners, server.hooks)
    add_local_forwarder_parts(metrics, server.forwarder)
    return MetricsServer(sock, metrics, lambda: embedded_problem(server))


def embedded_problem(server):
    """/healthz of the embedded server: not shutting down, its forwarder running, its
    store answering."""
    if server.stopped.is_set() or server.gateway.draining:
        return "shutting down"
    loop = server.forwarder.greenlet
    if loop is None or loop.dead:
        return "the message forwarder is not running"
    return store_probe(server.store)


def add_core_parts(metrics, app, hub, listeners, hooks, redis=None):
    """The parts both deployments' processes have: their listeners ({name: Listener}), the
    core's dispatcher, the hub's pushes, the queued hooks (None: off; their lengths asked
    of ``redis`` in the distributed deployment)."""
    if listeners:
        metrics.add("listeners", lambda: listener_families(listeners))
    if app is not None:
        metrics.add("core", lambda: core_families(app))
    if hub is not None:
        metrics.add("hub", lambda: hub_families(hub))
    if hooks is not None and hasattr(hooks, "lengths"):
        metrics.add("hooks", lambda: hook_families(hooks, redis))


def add_local_forwarder_parts(metrics, forwarder):
    """The embedded send path: its batches and its queue."""
    metrics.add("store_batches", forwarder.stats.families)
    metrics.add("forwarder_queue", lambda: [gauge("imsrv_forwarder_queue", "Send requests waiting for the forwarder",
                                                  forwarder.queued())])


def _peer(addr):
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)


class _Handler(WSGIHandler):
    """gevent's WSGI handler with the bounds of the module docstring: the socket's timeout
    (``server.idle_timeout``) set first, a watchdog per request (``server.request_timeout``)
    that shuts the socket, and a client gone, or timed out, closed without a traceback."""

    def handle(self):
        self.socket.settimeout(self.server.idle_timeout)
        try:
            super().handle()
        except OSError:   # an error answer written to a client gone or cut by the watchdog
            pass

    def handle_one_request(self):
        watchdog = gevent.get_hub().loop.timer(self.server.request_timeout)
        watchdog.start(self._cut)
        try:
            return super().handle_one_request()
        finally:
            watchdog.close()

    def _cut(self):
        """The request's time is up: shut the socket (a blocked read sees the end, a
        blocked write fails; pywsgi then closes it)."""
        sock = getattr(self, "socket", None)
        if sock is None:
            return
        logs.info("metrics_request_timeout", addr=_peer(self.client_address), after=self.server.request_timeout)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _handle_client_error(self, ex):
        if isinstance(ex, (socket.timeout, ConnectionError)):   # headers not sent in time, or reset
            logs.info("metrics_request_timeout" if isinstance(ex, socket.timeout) else "metrics_http_error",
                      addr=_peer(self.client_address), error=ex.__class__.__name__)
            return None   # closed without an answer
        return super()._handle_client_error(ex)


class _Server(WSGIServer):
    """gevent's WSGIServer with _Handler, its bounds (seconds) and its Pool."""

    handler_class = _Handler

    def __init__(self, sock, app, idle_timeout, request_timeout, max_connections):
        super().__init__(sock, app, log=None, error_log=logs.EventStream("metrics_http_error"),
                         spawn=Pool(max_connections))
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout


class MetricsServer:
    """``GET /healthz`` and ``GET /metrics`` of one process on ``sock`` (a bound socket,
    :func:`metrics_socket`).  ``problem()`` -> None when healthy, else the reason (one
    line); it may block on backend probes (see :func:`probe`).  ``idle_timeout``,
    ``request_timeout`` (seconds) and ``max_connections``: the bounds of the module
    docstring, by default IDLE_TIMEOUT, REQUEST_TIMEOUT and MAX_CONNECTIONS."""

    def __init__(self, sock, metrics, problem, idle_timeout=IDLE_TIMEOUT, request_timeout=REQUEST_TIMEOUT,
                 max_connections=MAX_CONNECTIONS):
        self.metrics = metrics
        self.problem = problem
        self._exposition = make_wsgi_app(metrics.registry)
        self._lock = Semaphore()
        self._last = (None, None)   # (monotonic time, reason or None) of the last check
        self.server = _Server(sock, self._app, idle_timeout, request_timeout, max_connections)

    @property
    def address(self):
        return self.server.address

    def start(self):
        self.server.start()
        logs.info("metrics", service=self.metrics.service, address="%s:%d" % self.address[:2])

    def stop(self, timeout=1.0):
        self.server.stop(timeout=timeout)

    def health(self):
        """-> None (healthy) or the reason; checked at most once per HEALTH_EVERY, one
        check at a time (concurrent requests wait for it and share its answer)."""
        with self._lock:
            at, reason = self._last
            now = time.monotonic()
            if at is None or now - at >= HEALTH_EVERY:
                try:
                    reason = self.problem()
                except Exception as exc:   # a bug in a check: unhealthy, and say so
                    logs.exception("internal_error", exc, service="metrics", op="healthz")
                    reason = f"health check failed: {exc!r}"
                self._last = (time.monotonic(), reason)
            return reason

    def _app(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path not in ("/healthz", "/metrics"):
            return _plain(start_response, "404 Not Found", "not found: try /healthz or /metrics\n")
        if method not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed", "only GET and HEAD\n", [("Allow", "GET, HEAD")])
        if path == "/metrics":
            return self._exposition(environ, start_response)
        reason = self.health()
        if reason is None:
            return _plain(start_response, "200 OK", "ok\n")
        return _plain(start_response, "503 Service Unavailable", " ".join(reason.split()) + "\n")


def _plain(start_response, status, text, headers=()):
    body = text.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store"), *headers])
    return [body]


def probe(what, fn):
    """Run a backend probe ``fn()`` bounded by PROBE_TIMEOUT -> None, or the reason
    ("``what`` unreachable: ...") when it raised or took too long."""
    try:
        with gevent.Timeout(PROBE_TIMEOUT):
            fn()
        return None
    except gevent.Timeout:
        return f"{what} unreachable: no answer within {PROBE_TIMEOUT:g} s"
    except Exception as exc:
        return f"{what} unreachable: {exc!r}"[:300]


def store_probe(store):
    """A read that reaches the store's database (its schema version)."""
    return probe("store", store.schema_version)
