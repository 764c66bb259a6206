"""``imsrv gateway``: a gateway of the distributed deployment.

Holds long connections (imsrv/servers/gateway.py, the same as the embedded server's), on
its TCP port and on its WebSocket port (web_port.py: /ws and the web chat page, like the
embedded server's; ``--ws-port``, by default ``server.websocket_port + 10*index``, 0 = none);
its sends go to the forwarders through the ingress stream (ingress.py).  Subscribed to
its own channel (pushes, kicks, acks, catch-ups: imsrv/protocol/cluster.py), it reports
its load for login, reaps dead gateways' routes, and puts its own routes back after Redis
lost them.
"""
import os
import time

import gevent
import redis
from gevent.event import Event

from .. import codec, logs
from ..protocol import cluster
from ..web.app import make_app
from ..web.relay_key import RedisRelayKey
from .connection import jittered
from .listener import listen_all
from .daemon import RETRY, Daemon
from .gateway import Gateway
from .ingress import IngressSendPath
from .web_port import WebPort, local_address

# seconds between two checks of this gateway's routes against its live sessions (a detach
# that failed while Redis was unreachable leaves a route behind)
RECONCILE_EVERY = 30.0


class GatewayProcess(Daemon):
    service = "gateway"

    def __init__(self, cfg, gateway_id, port, ws_port=0):
        """``port``: the TCP gateway's; ``ws_port``: the WebSocket port's (0: none)."""
        # bound before the store and Redis are touched: a busy port says so and nothing else
        specs = [(cfg.server.host, port, f"gateway {gateway_id}",
                  "--port N, or server.gateway_port (gateway --index I listens on gateway_port + 10*I)")]
        if ws_port:
            specs.append((cfg.server.host, ws_port, f"WebSocket port of gateway {gateway_id}",
                          "--ws-port N (0 turns it off), or server.websocket_port (gateway --index I "
                          "listens on websocket_port + 10*I)"))
        socks = listen_all(specs)
        try:
            super().__init__(cfg, gateway_id)
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        self.id = gateway_id
        self.ingress = IngressSendPath(self.redis, self.hub.keys.ingress, gateway_id, cfg.cluster)
        self.app = self.build_app(send_path=self.ingress)
        self.gateway = Gateway(self.app, cfg, socks[0])
        self.websocket = None
        if ws_port:
            # the web page's POST /api goes to the API of this machine (server.api_port)
            # with the deployment's relay key (read from Redis at start), for the browser's address
            api = local_address((cfg.server.host, cfg.server.api_port))
            self.relay_key = RedisRelayKey(self.redis, cfg.cluster.redis_prefix, min_interval=0)
            self.websocket = WebPort(self.app, cfg, socks[1], make_app(cfg, api, self.relay_key))
        self.subscribed = Event()
        self.withdrawn = False  # shutting down: no more load reports (login must not name us)
        self.reported = False   # a load report went through once
        self.last_reconcile = time.monotonic()

    def _public(self, listener):
        host, port = listener.address[:2]
        public = self.cfg.cluster.public_host
        if not public:
            public = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        return f"{public}:{port}"

    @property
    def public_address(self):
        return self._public(self.gateway)

    @property
    def public_websocket(self):
        """Our WebSocket port's "host:port" as login hands it out (None: we have none)."""
        return self._public(self.websocket) if self.websocket is not None else None

    def _listeners(self):
        return [g for g in (self.gateway, self.websocket) if g is not None]

    def connection_count(self):
        """Our clients, TCP and WebSocket (the load report's count)."""
        return sum(g.connection_count() for g in self._listeners())

    def _report_load(self):
        return self.hub.report_load(self.public_address, self.connection_count(), self.public_websocket)

    def start(self):
        self.migrate()
        self._forget_previous_run()
        if self.websocket is not None:
            self.relay_key.load(RETRY)
        for g in self._listeners():
            g.start()
        gevent.spawn(self._subscriber)
        gevent.spawn(self._load_reporter)
        self.subscribed.wait()
        logs.info("ready", service="gateway", id=self.id, gateway=self.public_address,
                  websocket=self.public_websocket or "off", codec=codec.IMPLEMENTATION, pid=os.getpid())

    def _forget_previous_run(self):
        """A crashed run of this gateway left its sessions in the routing table (they never
        detached): remove them and announce whoever is offline now."""
        try:
            for user in self.hub.forget_previous_run():
                self.app.presence.changed(user)
        except Exception as exc:  # Redis or the store down: start anyway
            logs.warning("previous_run_not_forgotten", gateway=self.id, error=repr(exc))

    # -- our channel: pushes, kicks, acks, catch-ups
    def _subscriber(self):
        first = True
        channel = self.hub.keys.channel(self.id)
        while not self.stopped.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(channel)
                # wait for the subscription to be confirmed before anything relies on it
                while pubsub.get_message(timeout=1.0) is None and not pubsub.subscribed:
                    pass
                if not first:
                    self._recover()
                first = False
                self.subscribed.set()
                logs.info("subscribed", gateway=self.id, channel=channel)
                for raw in pubsub.listen():
                    if raw.get("type") == "message":
                        self._on_channel_payload(raw["data"])
            except (redis.RedisError, OSError) as exc:
                # Redis restarted or cut us off (client-output-buffer-limit): pushes may be
                # lost; resubscribe, then make every client catch up from its inbox.
                logs.warning("subscription_lost", gateway=self.id, error=repr(exc))
                self.subscribed.clear()   # (/healthz: 503 until subscribed again)
                gevent.sleep(RETRY)
            finally:
                try:
                    pubsub.close()
                except Exception:
                    pass

    def _on_channel_payload(self, data):
        """One PUBLISH on our channel: the messages it carries, in order."""
        try:
            msgs = cluster.decode(data)
        except ValueError as exc:   # a bug (or a foreign publisher): never end the subscription
            logs.error("channel_message_unreadable", gateway=self.id, error=repr(exc), data=str(data)[:200])
            return
        for msg in msgs:
            self._on_channel_message(msg)

    def _on_channel_message(self, msg):
        try:
            kind = msg["type"]
            if kind == cluster.ACK:
                self.ingress.on_ack(msg)
            elif kind == cluster.CATCH_UP:
                for user in msg["users"]:
                    for s in self.hub.local.sessions(user):
                        gevent.spawn(self._catch_up, s)
            else:   # pushes and kicks
                self.hub.deliver(msg)
        except Exception as exc:   # a bug: one message must not end the subscription
            logs.exception("internal_error", exc, service="gateway", gateway=self.id, message=str(msg)[:200])

    def _recover(self):
        """After our subscription was cut (Redis restarted, or it dropped us as a slow
        subscriber): pushes and acks may have been lost."""
        try:
            # at once, not at the next report: a Redis that came back empty knows no live
            # gateway, and login would answer `unavailable` (no gateway is running) meanwhile
            if not self.withdrawn:
                self._report_load()
        except redis.RedisError as exc:
            logs.warning("load_report_failed", gateway=self.id, error=repr(exc))
        self.ingress.readd_waiting()
        self._reinstate()

    def _reinstate(self):
        """Our sessions back in the routing table (Redis lost it, or we were reaped as
        dead), their presence re-announced, and every session pushed what it missed."""
        try:
            self.hub.reannounce_local()
            gone = self.hub.forget_stale_routes()
            for user in list(self.hub.local.by_user) + gone:
                self.app.presence.changed(user)
        except self.app.backend_errors as exc:
            logs.warning("routes_not_restored", gateway=self.id, error=repr(exc))
        for s in [s for d in self.hub.local.by_user.values() for s in d.values()]:
            self._catch_up(s)

    def _catch_up(self, s):
        """Push session ``s`` what it missed, from the inbox; if that fails, close it so
        that the client reconnects and syncs (guarantee 3)."""
        try:
            s.catch_up()
        except Exception as exc:
            logs.warning("catch_up_failed", user=s.user, error=repr(exc))
            s.conn.close_with({"op": "bye", "reason": "overloaded",
                               "retry_after": jittered(self.cfg.limits.retry_after)})

    # -- load reports, dead gateways
    def _load_reporter(self):
        while not self.stopped.is_set():
            if self.withdrawn:
                # shutting down: a report now would make us "live" again for LOAD_TTL
                # seconds after withdraw(), and login would send clients to a gateway that
                # is saying bye to everyone (found by test_stopping_a_gateway_says_bye)
                return
            try:
                if self._report_load() and self.reported:
                    # we were not in the live set: reaped as dead while frozen (or Redis
                    # lost its state): our routes may be gone, put them back
                    logs.warning("gateway_reinstated", gateway=self.id)
                    self._reinstate()
                self.reported = True
                self._reap_dead()
                if time.monotonic() - self.last_reconcile >= RECONCILE_EVERY:
                    self.last_reconcile = time.monotonic()
                    for user in self.hub.forget_stale_routes():
                        self.app.presence.changed(user)
            except self.app.backend_errors as exc:
                logs.warning("load_report_failed", gateway=self.id, error=repr(exc))
            except Exception as exc:  # a bug must not stop the reports (we would be reaped)
                logs.exception("internal_error", exc, service="gateway", gateway=self.id)
            gevent.sleep(self.cfg.cluster.load_report_every)

    def _reap_dead(self):
        """Remove the routes of gateways that died and were not restarted (presence:
        their users must not stay online forever); announce who went offline."""
        for gw in self.hub.dead_gateways(self.cfg.cluster.gateway_dead_after):
            for user in self.hub.reap_gateway(gw):
                try:
                    self.app.presence.changed(user)
                except self.app.backend_errors as exc:
                    logs.warning("presence_not_announced", user=user, error=repr(exc))

    def own_problem(self):
        """/healthz (imsrv/servers/daemon.py): a gateway off its channel misses pushes."""
        if not self.subscribed.is_set():
            return f"not subscribed to its channel {self.hub.keys.channel(self.id)}"
        return None

    # -- stop
    def shutdown(self):
        if self.stopped.is_set():
            return
        logs.info("shutdown", service="gateway", id=self.id, connections=self.connection_count())
        self.withdrawn = True   # before withdraw(): the load reporter must not re-add us
        self._withdraw()
        listeners = self._listeners()
        for g in listeners:
            g.shutdown(self.cfg.limits.retry_after)
        deadline = time.monotonic() + self.cfg.limits.shutdown_grace
        while any(g.conns for g in listeners) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        for g in listeners:
            for conn in list(g.conns):
                conn.abort()
        # again at the end: a load report that was already on its way to Redis when the
        # first withdraw() ran may have landed after it
        self._withdraw()
        self.close()

    def _withdraw(self):
        try:
            self.hub.withdraw()
        except redis.RedisError:
            pass
