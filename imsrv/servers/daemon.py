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
from .connection import offload, schedule

# The daemons' store when database_url is empty: the local MySQL/MariaDB, database imsrv.
DEFAULT_DATABASE_URL = "mysql://root@127.0.0.1:3306/imsrv"
RETRY = 1.0  # seconds between reconnection attempts to Redis or the store


def connect_redis(url):
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5,
                                socket_keepalive=True, health_check_interval=10)


class Daemon:
    """Shared start/stop plumbing: store, Redis, hub, SIGTERM.  A subclass builds its core
    with :meth:`build_app` (giving it its send path and gateway choice) and defines
    ``start`` and ``shutdown``."""

    service = "daemon"

    def __init__(self, cfg, gateway_id=None):
        self.cfg = cfg
        url = cfg.server.database_url or DEFAULT_DATABASE_URL
        self.store = open_store(url)
        self.redis = connect_redis(cfg.cluster.redis_url)
        self.hub = RedisHub(self.redis, cfg.cluster.redis_prefix, gateway=gateway_id,
                            load_ttl=5 * cfg.cluster.load_report_every)
        self.stopped = Event()

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
            gevent.signal_handler(sig, lambda: gevent.spawn(self.shutdown))
        self.start()
        self.stopped.wait()

    def start(self):
        raise NotImplementedError

    def shutdown(self):
        raise NotImplementedError

    def close(self):
        try:
            self.store.close()
        finally:
            self.redis.close()
        self.stopped.set()
