"""``imsrv api``: an API daemon of the distributed deployment (short connections: accounts,
contacts, groups, history, notify).  Stateless: as many as needed.

It also runs the deployment's background jobs (imsrv/servers/maintenance.py: the search
indexer, the retention purge, the purge of expired tokens, the redelivery of queued group
events) under a Redis lease
(``P:maintenance``), so that with several API daemons one at a time does them.

Its core stores ``notify``'s system messages itself (the default send path: seqs come
from the store, so this is as safe as a forwarder doing it) and pushes them through the
Redis hub; a login names the least-loaded live gateway (:class:`LeastLoadedGateway`).
"""
import os
import time

import gevent

from .. import logs
from ..protocol.errors import Unavailable
from ..web.relay_key import RedisRelayKey
from .api import ApiServer
from .hook_queue import stream_hooks
from .listener import listen
from .maintenance import Maintenance, RedisLease
from .daemon import RETRY, Daemon

#: messages per search-index pass here: each pass is a transaction of the database the
#: forwarders commit to (few large ones), not time on a loop that serves sends
API_INDEX_BATCH = 2000


class LeastLoadedGateway:
    """The gateway a login names (imsrv.core.interfaces.ChooseGateway): the least-loaded
    live gateway, counting the logins this API process sent to it since its last load
    report: a burst of logins between two reports (every load_report_every seconds) is
    spread over the gateways instead of all naming the one that was least loaded at the
    last report.  -> ``gateway`` and ``gateways`` (every live one), ``websocket`` (the
    WebSocket port of the gateway named; None when it has none) and ``websockets`` (those of
    every live gateway)."""

    def __init__(self, hub):
        self.hub = hub
        self.handed = {}  # address -> [time of its last load report, logins we named it for since]

    def __call__(self):
        live = self.hub.live_gateways()
        if not live:
            raise Unavailable("no gateway is running")
        best = None
        for addr, conns, stamp, ws in live:
            seen = self.handed.get(addr)
            if seen is None or seen[0] != stamp:   # a new report: it counts those logins
                seen = self.handed[addr] = [stamp, 0]
            if best is None or conns + seen[1] < best[0]:
                best = (conns + seen[1], addr, ws)
        self.handed[best[1]][1] += 1
        return {"gateway": best[1], "gateways": sorted(a for a, _, _, _ in live),
                "websocket": best[2], "websockets": sorted(w for _, _, _, w in live if w)}


class ApiProcess(Daemon):
    service = "api"

    def __init__(self, cfg, port):
        sock = listen(cfg.server.host, port, "API", "--port N or server.api_port")
        try:
            super().__init__(cfg)
        except BaseException:
            sock.close()
            raise
        self.app = self.build_app(choose_gateway=LeastLoadedGateway(self.hub))
        # the gateways' POST /api relays name the browser's address with this key (Redis)
        self.relay_key = RedisRelayKey(self.redis, cfg.cluster.redis_prefix)
        self.api = ApiServer(self.app, cfg, sock, relay_key=self.relay_key)
        # group_event and notify entries are stored here: their after_send / offline rows
        # are written with them into the hook_queue table (a forwarder moves and delivers them)
        self.hooks = stream_hooks(cfg, self.store, self.redis)
        self.app.messaging.hook_sink = self.hooks
        # the indexer's work is mostly the database's, which the forwarders share
        self.maintenance = Maintenance(self.store, cfg, index_share=0.25, index_batch=API_INDEX_BATCH,
                                       lease=RedisLease(self.redis, f"{cfg.cluster.redis_prefix}:maintenance"),
                                       group_events=self.app.groups.events)

    def start(self):
        self.migrate()
        self.relay_key.load(RETRY)
        self.api.start()
        self.maintenance.start()
        logs.info("ready", service="api", api="%s:%d" % self.api.address[:2], pid=os.getpid())

    def shutdown(self):
        if self.stopped.is_set():
            return
        logs.info("shutdown", service="api")
        self.api.shutdown()
        self.maintenance.stop()
        deadline = time.monotonic() + self.cfg.limits.shutdown_grace
        while self.api.conns and time.monotonic() < deadline:
            gevent.sleep(0.05)
        self.close()
