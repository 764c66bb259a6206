"""The gateway registry of the Redis hub (:class:`GatewayRegistry`, which
:class:`~imsrv.backends.redis_hub.RedisHub` inherits): which gateways are live, from
their load reports (``P:gateways``, ``P:gwinfo``), and the removal of routes no live
session backs: every route of a gateway that died (one process reaps it: ``P:reap:<id>``),
and those of this gateway whose detach failed or that its previous run left behind (read
from ``P:gwsess:<id>``, removed with the FORGET script of imsrv/backends/redis_scripts.py).
The key layout is imsrv/backends/redis_hub.py's.  Putting this gateway's routes back after
Redis lost them (``reannounce_local``) writes routes as ``attach`` does: RedisHub's.

:class:`GatewayRegistry` holds no state of its own; it uses the host's ``r`` (the Redis
client), ``keys``, ``gateway`` (this process's gateway id, None outside gateways),
``load_ttl``, ``local`` (the LocalHub of this process's sessions), ``_attaching`` (the
(user, device) pairs attach() is routing: not stale) and ``_forget`` (the FORGET script,
registered in ``RedisHub.__init__`` with the other scripts).
"""
import time

from .. import jsonlib, logs

LOAD_TTL = 10  # default seconds a gateway's load report counts as "live"
NO_GEN_LIMIT = "%d" % (1 << 62)  # FORGET bound above any generation: every route of a gateway


class GatewayRegistry:
    def report_load(self, address, connections, websocket=None):
        """Report this gateway live: its ``address`` ("host:port" clients connect to), its
        ``connections`` (TCP and WebSocket) and its WebSocket port's "host:port" (None: it
        has none).  -> True when this gateway was not in the live set (first report, Redis
        lost its state, or another process reaped us as dead: our routes may be gone)."""
        now = time.time()
        pipe = self.r.pipeline(transaction=False)
        pipe.zadd(self.keys.gateways, {self.gateway: now + self.load_ttl})
        # the report's time goes with it: the API counts the logins it hands out between
        # two reports of a gateway (see imsrv/servers/api_daemon.py LeastLoadedGateway)
        pipe.hset(self.keys.gwinfo, self.gateway, jsonlib.dumps([address, connections, now, websocket]))
        added, _ = pipe.execute()
        return bool(added)

    def dead_gateways(self, dead_after):
        """Ids of gateways whose last load report expired more than ``dead_after`` seconds
        ago (crashed and not restarted, or their machine is gone)."""
        return [g for g in self.r.zrangebyscore(self.keys.gateways, "-inf", time.time() - dead_after)
                if g != self.gateway]

    def reap_gateway(self, gateway):
        """Remove every route of a dead ``gateway`` and its load report, so its users do not
        stay online forever.  One process does it (a lock key, kept for a minute).
        -> users with no session left (announce them offline).  Should the gateway be alive
        after all (it was frozen), its next report_load() returns True and it puts its
        routes back (reannounce_local)."""
        if not self.r.set(f"{self.keys.prefix}:reap:{gateway}", self.gateway or "-", nx=True, ex=60):
            return []
        key = self.keys.gwsess(gateway)
        members = list(self.r.smembers(key))
        offline = self._forget_routes(gateway, members, NO_GEN_LIMIT)
        pipe = self.r.pipeline(transaction=False)
        pipe.delete(key)
        pipe.zrem(self.keys.gateways, gateway)
        pipe.hdel(self.keys.gwinfo, gateway)
        pipe.execute()
        logs.warning("gateway_reaped", gateway=gateway, by=self.gateway or "-", sessions=len(members),
                     offline=len(offline))
        return offline

    def withdraw(self):
        pipe = self.r.pipeline(transaction=False)
        pipe.zrem(self.keys.gateways, self.gateway)
        pipe.hdel(self.keys.gwinfo, self.gateway)
        pipe.execute()

    def live_gateways(self):
        """[(address, connections, report time, WebSocket address or None)] of gateways
        whose load report has not expired, least loaded first."""
        ids = self.r.zrangebyscore(self.keys.gateways, time.time(), "+inf")
        if not ids:
            return []
        infos = self.r.hmget(self.keys.gwinfo, ids)
        out = [tuple(jsonlib.loads(i)) for i in infos if i]
        return sorted(out, key=lambda a: (a[1], a[0]))

    def _forget_routes(self, gateway, members, before_gen):
        """Remove the route of each gwsess member (JSON [user, device]) that still names
        ``gateway`` with a generation below ``before_gen``.  -> users left with no session."""
        offline = []
        for raw in members:
            user, device = jsonlib.loads(raw)
            if int(self._forget(keys=[self.keys.sess(user)], args=[device, gateway, before_gen])) == 0:
                offline.append(user)
        return offline

    def forget_stale_routes(self):
        """Routes of this gateway that no local session backs any more (their detach failed
        while Redis was unreachable): remove them, so their users do not stay online.
        -> users with no session left (announce them offline)."""
        key = self.keys.gwsess(self.gateway)
        stale = []
        for raw in self.r.smembers(key):
            user, device = jsonlib.loads(raw)
            if device not in self.local.by_user.get(user, {}) and (user, device) not in self._attaching:
                stale.append(raw)
        offline = self._forget_routes(self.gateway, stale, NO_GEN_LIMIT)
        if stale:
            self.r.srem(key, *stale)
            logs.warning("stale_routes_forgotten", gateway=self.gateway, sessions=len(stale), offline=len(offline))
        return offline

    def forget_previous_run(self):
        """On a gateway's start, before it accepts anyone: remove the routes its previous run
        left behind (it crashed, or was SIGKILLed: its sessions never detached), so their
        users do not stay online forever.  -> users with no session left (announce them
        offline)."""
        key = self.keys.gwsess(self.gateway)
        t = self.r.time()
        now = int(t[0]) * 1000000 + int(t[1])
        members = list(self.r.smembers(key))
        offline = self._forget_routes(self.gateway, members, "%d" % now)
        if members:
            self.r.srem(key, *members)
            logs.info("previous_run_forgotten", gateway=self.gateway, sessions=len(members), offline=len(offline))
        return offline
