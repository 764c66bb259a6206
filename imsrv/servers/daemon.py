"""What the distributed deployment's daemons share: the store, Redis, the Redis hub, the
core built for them, start and stop.  The daemons, one module each:

    imsrv gateway --id ID --port N   gateway_daemon.py    long connections; sends go to
                                                          the ingress stream (ingress.py)
    imsrv forwarder --id ID          forwarder_daemon.py  ingress -> store (one transaction
                                                          per batch) -> acks, pushes
    imsrv api --port N               api_daemon.py        short connections (accounts,
                                                          contacts, groups, notify)

Each runs the same business core (imsrv.core) as the embedded server; only the hub
(RedisHub instead of LocalHub), the limits (shared in Redis) and the send path (the Redis
ingress stream and a forwarder instead of an in-process queue) differ.  What they say to
each other is imsrv/protocol/cluster.py.  The ``imsrv`` command monkey-patches gevent
first (imsrv.runtime); a daemon asserts it when it starts.

Each serves ``GET /healthz`` and ``GET /metrics`` on its ``server.metrics_port``
(imsrv/servers/metrics.py; the command derives each daemon's port), from before its
``start`` (``503 starting`` while it waits for the database) until it has shut down
(``503 shutting down`` meanwhile).  Healthy (:meth:`Daemon.problem`): started, not
stopping, its own condition (:meth:`Daemon.own_problem`), Redis answers a PING and the
store a read.
"""
import signal

import gevent
import redis
from gevent.event import Event

from .. import logs, runtime
from ..backends import open_store
from ..backends.redis_hub import RedisHub
from ..backends.redis_limits import shared_limits
from ..core.app import App
from ..metrics import ProcessMetrics
from .connection import offload, schedule
from .listener import Listener
from .metrics import PROBE_TIMEOUT, MetricsServer, add_core_parts, metrics_socket, probe, store_probe

# The daemons' store when database_url is empty: the local MySQL/MariaDB, database imsrv.
DEFAULT_DATABASE_URL = "mysql://root@127.0.0.1:3306/imsrv"
RETRY = 1.0  # seconds between reconnection attempts to Redis or the store


def connect_redis(url, timeout=None):
    """``timeout``: seconds a command may wait for Redis (None: no limit; the health and
    metrics probes' client has one)."""
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=timeout or 5,
                                socket_timeout=timeout, socket_keepalive=True, health_check_interval=10)


class Daemon:
    """Shared start/stop plumbing: store, Redis, hub, SIGTERM.  A subclass builds its core
    with :meth:`build_app` (giving it its send path and gateway choice) and defines
    ``start`` and ``shutdown``."""

    service = "daemon"

    def __init__(self, cfg, gateway_id=None):
        self.cfg = cfg
        # bound before the store and Redis are touched, like the service's own port
        what = f"{self.service} {gateway_id} metrics" if gateway_id else f"{self.service} metrics"
        metrics_sock = metrics_socket(cfg, what)
        try:
            url = cfg.server.database_url or DEFAULT_DATABASE_URL
            self.store = open_store(url)
            self.redis = connect_redis(cfg.cluster.redis_url)
        except BaseException:
            if metrics_sock is not None:
                metrics_sock.close()
            raise
        self.hub = RedisHub(self.redis, cfg.cluster.redis_prefix, gateway=gateway_id,
                            load_ttl=5 * cfg.cluster.load_report_every)
        self.stopped = Event()
        self.started = False        # start() returned
        self.shutting_down = False  # SIGTERM / SIGINT came
        self.metrics = ProcessMetrics(self.service)
        self.metrics_server = None
        self._metrics_sock = metrics_sock
        # probes of /healthz and the scrape-time reads of /metrics: a client of their own
        # whose commands time out (the daemon's may wait forever on a frozen Redis)
        self.probe_redis = connect_redis(cfg.cluster.redis_url, timeout=PROBE_TIMEOUT)

    def build_app(self, send_path=None, choose_gateway=None):
        """The core of this daemon: limits shared by every process (in Redis)."""
        cfg = self.cfg
        return App(cfg, self.store, self.hub, send_path=send_path, choose_gateway=choose_gateway,
                   limits=shared_limits(self.redis, cfg.cluster.redis_prefix, cfg.limits),
                   schedule=schedule, offload=offload)

    def migrate(self):
        """Wait for the database, then make sure the schema is current (idempotent)."""
        while True:
            try:
                self.store.migrate()
                return
            except Exception as exc:
                logs.warning("store_unavailable", service=self.service, error=repr(exc))
                gevent.sleep(RETRY)

    def serve_forever(self):
        runtime.assert_patched(f"imsrv {self.service}")
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, lambda: gevent.spawn(self._stop))
        self._serve_metrics()   # /healthz says "starting" until start() returns
        self.start()
        self.started = True
        self.stopped.wait()

    def _stop(self):
        self.shutting_down = True
        self.shutdown()

    # -- /healthz and /metrics
    def listeners(self):
        """{name: Listener} of this daemon (its ``gateway``, ``websocket``, ``api``)."""
        return {name: lst for name in ("gateway", "websocket", "api")
                if isinstance(lst := getattr(self, name, None), Listener)}

    def metric_parts(self):
        """Add this daemon's own parts to ``self.metrics`` (a subclass's)."""

    def _serve_metrics(self):
        add_core_parts(self.metrics, getattr(self, "app", None), self.hub, self.listeners(),
                       getattr(self, "hooks", None), self.probe_redis)
        self.metric_parts()
        if self._metrics_sock is not None:
            self.metrics_server = MetricsServer(self._metrics_sock, self.metrics, self.problem)
            self.metrics_server.start()

    def problem(self):
        """What keeps this daemon from its job (the 503 of /healthz), or None."""
        if self.shutting_down or self.stopped.is_set():
            return "shutting down"
        if not self.started:
            return "starting (waiting for the store and Redis)"
        return (self.own_problem() or probe("redis", self.probe_redis.ping)
                or store_probe(self.store))

    def own_problem(self):
        """A subclass's own condition of health (None: fine)."""
        return None

    def start(self):
        raise NotImplementedError

    def shutdown(self):
        raise NotImplementedError

    def close(self):
        try:
            self.store.close()
        finally:
            self.redis.close()
            self.probe_redis.close()
        self.stopped.set()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        elif self._metrics_sock is not None:
            self._metrics_sock.close()
