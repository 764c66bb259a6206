"""`imsrv serve`: API, gateway and forwarder in one gevent process on SQLite."""
import os
import shutil
import signal
import time

import gevent
from gevent.event import Event

from .. import codec, logs, runtime
from ..backends import open_store
from ..backends.memory import LocalHub
from ..core.app import App
from ..web.app import make_app
from ..web.relay_key import RelayKey
from .api import ApiServer
from .connection import offload, schedule
from .listener import listen_all
from .gateway import Gateway
from .hook_queue import embedded_hooks
from .local_forwarder import LocalForwarder
from .maintenance import Maintenance
from .metrics import embedded_metrics, metrics_spec
from .web_port import WebPort, local_address


def _makedirs(path):
    """os.makedirs(path); -> the topmost directory it created (None if path existed)."""
    path = os.path.abspath(path)
    top = None
    probe = path
    while not os.path.exists(probe):
        top = probe
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    os.makedirs(path, exist_ok=True)
    return top


class EmbeddedServer:
    """Raises ListenError (nothing made: ports are bound before the data directory and the
    store) or the store's error (a data directory made for it is removed again)."""

    def __init__(self, cfg):
        self.cfg = cfg
        srv = cfg.server
        host = srv.host
        specs = [(host, srv.gateway_port, "gateway", "--gateway-port N or server.gateway_port"),
                 (host, srv.api_port, "API", "--api-port N or server.api_port")]
        if srv.websocket_port:
            specs.append((host, srv.websocket_port, "WebSocket gateway",
                          "--ws-port N (0 turns it off) or server.websocket_port"))
        if srv.metrics_port:   # /healthz and /metrics: the last socket
            specs.append(metrics_spec(cfg, "metrics"))
        socks = listen_all(specs)
        made = None
        try:
            url = cfg.database_url
            if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
                made = _makedirs(srv.data_dir)
            self.store = open_store(url)
            self.store.migrate()
        except BaseException:
            for sock in socks:
                sock.close()
            if made:
                shutil.rmtree(made, ignore_errors=True)
            raise
        self.hub = LocalHub()
        self.forwarder = LocalForwarder()
        self.app = App(cfg, self.store, self.hub, send_path=self.forwarder, choose_gateway=self.advertised_gateway,
                       schedule=schedule, offload=offload)
        self.gateway = Gateway(self.app, cfg, socks[0])
        # the key of our POST /api relay (random per process): the API believes the
        # browser's address it relays only with it (imsrv/web/relay_key.py)
        relay_key = RelayKey()
        self.api = ApiServer(self.app, cfg, socks[1], relay_key=relay_key)
        self.websocket = None
        if srv.websocket_port:
            # the WebSocket port: /ws, and the web chat page (its POST /api goes to our API)
            self.websocket = WebPort(self.app, cfg, socks[2],
                                     make_app(cfg, local_address(self.api.address), relay_key))
        self.stopped = Event()
        # the search indexer, the retention purge, the purge of expired tokens and the
        # redelivery of queued group events
        self.maintenance = Maintenance(self.store, cfg, loop_is_the_load=True,
                                       group_events=self.app.groups.events)
        # the after_send / offline queues (None: both off): rows in the send batches'
        # transactions, delivered by greenlets of their own
        self.hooks = embedded_hooks(cfg, self.store, self.hub)
        self.app.messaging.hook_sink = self.hooks
        self.app.admin.connections = self.connection_counts   # admin_stats (imsrv/core/admin.py)
        self.metrics_server = embedded_metrics(self, socks[-1] if srv.metrics_port else None)

    def advertised_gateway(self):
        """The gateway a login names: the advertised address, else ours."""
        addr = self.cfg.server.advertise
        if not addr:
            host, port = self.gateway.address[:2]
            if host in ("0.0.0.0", "", "::"):
                host = "127.0.0.1"
            addr = f"{host}:{port}"
        # the WebSocket port: on the advertised host (decided by this server; docs/PROTOCOL.md)
        ws = None
        if self.websocket is not None:
            ws = f"{addr.rpartition(':')[0]}:{self.websocket.address[1]}"
        return {"gateway": addr, "gateways": [addr], "websocket": ws, "websockets": [ws] if ws else []}

    def connection_counts(self):
        """admin_stats' connections: {"host:port": open connections} of the gateway and
        WebSocket listeners."""
        return {"%s:%d" % g.address[:2]: g.connection_count() for g in (self.gateway, self.websocket)
                if g is not None}

    def start(self):
        self.forwarder.start(self.app.messaging.process_batch)
        self.gateway.start()
        self.api.start()
        ws = "off"
        if self.websocket is not None:
            self.websocket.start()
            ws = "%s:%d" % self.websocket.address[:2]
        self.maintenance.start()
        if self.hooks is not None:
            self.hooks.start()
        if self.metrics_server is not None:
            self.metrics_server.start()
        logs.info("ready", api="%s:%d" % self.api.address[:2], gateway="%s:%d" % self.gateway.address[:2],
                  websocket=ws,
                  store=self.store.url, codec=codec.IMPLEMENTATION, json=codec.JSON_BACKEND, pid=os.getpid())

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
        self.maintenance.stop()
        if self.hooks is not None:
            self.hooks.stop()
        self.store.close()
        logs.info("stopped", batches=self.forwarder.batches, messages=self.forwarder.messages)
        self.stopped.set()
        if self.metrics_server is not None:
            self.metrics_server.stop()

    def serve_forever(self):
        runtime.assert_patched("imsrv serve")
        # handlers first: a SIGTERM right after `ready` must still be a graceful stop
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, lambda: gevent.spawn(self.shutdown))
        self.start()
        self.stopped.wait()
