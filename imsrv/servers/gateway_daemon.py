"""``imsrv gateway``: a gateway of the distributed deployment.

Holds long connections (imsrv/servers/gateway.py, the same as the embedded server's);
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
from .connection import jittered
from .listener import listen
from .daemon import RETRY, Daemon
from .gateway import Gateway
from .ingress import IngressSendPath

# seconds between two checks of this gateway's routes against its live sessions (a detach
# that failed while Redis was unreachable leaves a route behind)
RECONCILE_EVERY = 30.0


class GatewayProcess(Daemon):
    service = "gateway"

    def __init__(self, cfg, gateway_id, port):
        # bound before the store and Redis are touched: a busy port says so and nothing else
        sock = listen(cfg.server.host, port, f"gateway {gateway_id}",
                      "--port N, or server.gateway_port (gateway --index I listens on gateway_port + 10*I)")
        try:
            super().__init__(cfg, gateway_id)
        except BaseException:
            sock.close()
            raise
        self.id = gateway_id
        self.ingress = IngressSendPath(self.redis, self.hub.keys.ingress, gateway_id, cfg.cluster)
        self.app = self.build_app(send_path=self.ingress)
        self.gateway = Gateway(self.app, cfg, sock)
        self.subscribed = Event()
        self.withdrawn = False  # shutting down: no more load reports (login must not name us)
        self.reported = False   # a load report went through once
        self.last_reconcile = time.monotonic()

    @property
    def public_address(self):
        host, port = self.gateway.address[:2]
        public = self.cfg.cluster.public_host
        if not public:
            public = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        return f"{public}:{port}"

    def start(self):
        self.migrate()
        self._forget_previous_run()
        self.gateway.start()
        gevent.spawn(self._subscriber)
        gevent.spawn(self._load_reporter)
        self.subscribed.wait()
        logs.info("ready", service="gateway", id=self.id, gateway=self.public_address,
                  codec=codec.IMPLEMENTATION, pid=os.getpid())

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
                self.hub.report_load(self.public_address, self.gateway.connection_count())
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
                if self.hub.report_load(self.public_address, self.gateway.connection_count()) \
                        and self.reported:
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

    # -- stop
    def shutdown(self):
        if self.stopped.is_set():
            return
        logs.info("shutdown", service="gateway", id=self.id, connections=self.gateway.connection_count())
        self.withdrawn = True   # before withdraw(): the load reporter must not re-add us
        self._withdraw()
        self.gateway.shutdown(self.cfg.limits.retry_after)
        deadline = time.monotonic() + self.cfg.limits.shutdown_grace
        while self.gateway.conns and time.monotonic() < deadline:
            gevent.sleep(0.05)
        for conn in list(self.gateway.conns):
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
