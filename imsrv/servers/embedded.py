"""`imsrv serve`: API, gateway and forwarder in one gevent process on SQLite."""
import os
import signal
import time

import gevent
from gevent.event import Event

from .. import codec, logs
from ..backends import open_store
from ..backends.memory import LocalHub
from ..core.app import App
from .api import ApiServer
from .forwarder import LocalForwarder
from .gateway import Gateway
from .websocket import connection_class as ws_connection_class

PURGE_EVERY = 3600.0  # seconds between purges of expired tokens and dedup records


def _offload(fn, *args):
    return gevent.get_hub().threadpool.apply(fn, args)


class EmbeddedServer:
    def __init__(self, cfg):
        self.cfg = cfg
        url = cfg.database_url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            os.makedirs(cfg.server.data_dir, exist_ok=True)
        self.store = open_store(url)
        self.store.migrate()
        self.hub = LocalHub()
        self.app = App(cfg, self.store, self.hub, offload=_offload)
        self.forwarder = LocalForwarder(self.app.messaging)
        self.app.forward = self.forwarder.forward
        self.app.gateway_choice = self.gateway_choice
        host = cfg.server.host
        self.gateway = Gateway(self.app, cfg, (host, cfg.server.gateway_port))
        self.api = ApiServer(self.app, cfg, (host, cfg.server.api_port))
        self.websocket = None
        if cfg.server.websocket_port:
            self.websocket = Gateway(self.app, cfg, (host, cfg.server.websocket_port),
                                     connection_class=ws_connection_class(cfg), name="websocket")
        self.stopped = Event()
        self._purger = None

    def gateway_choice(self):
        addr = self.cfg.server.advertise
        if not addr:
            host, port = self.gateway.address[:2]
            if host in ("0.0.0.0", "", "::"):
                host = "127.0.0.1"
            addr = f"{host}:{port}"
        return {"gateway": addr, "gateways": [addr]}

    def start(self):
        self.forwarder.start()
        self.gateway.start()
        self.api.start()
        ws = "off"
        if self.websocket is not None:
            self.websocket.start()
            ws = "%s:%d" % self.websocket.address[:2]
        self._purger = gevent.spawn(self._purge_loop)
        logs.info("ready", api="%s:%d" % self.api.address[:2], gateway="%s:%d" % self.gateway.address[:2],
                  websocket=ws,
                  store=self.store.url, codec=codec.IMPLEMENTATION, json=codec.JSON_BACKEND, pid=os.getpid())

    def _purge_loop(self):
        while True:
            now = int(time.time() * 1000)
            try:
                tokens = self.store.purge_tokens(now)
                dedup = self.store.purge_dedup(now - self.cfg.accounts.dedup_ttl * 1000)
                logs.debug("purge", tokens=tokens, dedup=dedup)
            except Exception as exc:
                logs.warning("purge_failed", error=repr(exc))
            gevent.sleep(PURGE_EVERY)

    def shutdown(self):
        """Graceful: stop accepting, bye every gateway client, drain, flush, close the store."""
        if self.stopped.is_set():
            return
        grace = self.cfg.limits.shutdown_grace
        logs.info("shutdown", connections=self.gateway.connection_count(), grace=grace)
        gateways = [g for g in (self.gateway, self.websocket) if g is not None]
        for g in gateways:
            g.shutdown(self.cfg.limits.retry_after)
        self.api.shutdown()
        servers = gateways + [self.api]
        deadline = time.monotonic() + grace
        while any(s.conns for s in servers) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        for s in servers:
            for conn in list(s.conns):
                conn.abort()
        self.forwarder.stop(timeout=max(1.0, deadline - time.monotonic()))
        if self._purger is not None:
            self._purger.kill()
        self.store.close()
        logs.info("stopped", batches=self.forwarder.batches, messages=self.forwarder.messages)
        self.stopped.set()

    def serve_forever(self):
        # handlers first: a SIGTERM right after `ready` must still be a graceful stop
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, lambda: gevent.spawn(self.shutdown))
        self.start()
        self.stopped.wait()
