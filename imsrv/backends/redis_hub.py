"""Redis state and bus for the distributed deployment: sessions and routing, presence,
the ingress stream that forwarders share, one pub/sub channel per gateway.  The gateway
registry (load reports, the live gateways, the routes of dead gateways and stale routes
removed) is imsrv/backends/redis_gateways.py's :class:`GatewayRegistry`, which
:class:`RedisHub` inherits; the key layout of both is this one.

Key layout (``P`` = the configured prefix; ``{u}`` = a Redis Cluster hash tag on the
user name, so a user's keys live in one slot and the Lua scripts touch one slot only):

    P:sess:{u}      hash  device -> JSON [gateway, generation, status, text, token_hash]
    P:gen:{u}       int   generation counter of u's sessions (never goes back)
    P:ann:{u}       str   JSON [status, text] last announced to u's friends
    P:gw:<id>       channel  pushes, kicks and acks for gateway <id>
    P:gwsess:<id>   set   JSON [user, device] of the sessions gateway <id> registered (so a
                          restarted gateway can remove the routes its crashed run left)
    P:gateways      zset  gateway id -> expiry (unix seconds) of its last load report
    P:reap:<id>     str   lock: one process removes the routes of a gateway that died
    P:gwinfo        hash  gateway id -> JSON [address, connections, report time, WebSocket
                          address or null]
    P:ingress       stream   sends waiting for a forwarder (consumer group "forwarders")

What goes through the channels and the ingress stream (pushes, kicks, catch-ups, acks,
ingress entries) is defined in imsrv/protocol/cluster.py; the Lua scripts that update the
routing table atomically are in imsrv/backends/redis_scripts.py.
"""
import contextlib

import redis.exceptions

from .. import jsonlib, logs
from ..protocol import cluster
from .memory import LocalHub, combine
from .redis_gateways import LOAD_TTL, GatewayRegistry
from .redis_scripts import ATTACH, DETACH, FORGET, REANNOUNCE, UPDATE


class Keys:
    def __init__(self, prefix):
        p = prefix
        self.prefix = p
        self.gateways = f"{p}:gateways"
        self.gwinfo = f"{p}:gwinfo"
        self.ingress = f"{p}:ingress"

    def sess(self, user):
        return f"{self.prefix}:sess:{{{user}}}"

    def gen(self, user):
        return f"{self.prefix}:gen:{{{user}}}"

    def ann(self, user):
        return f"{self.prefix}:ann:{{{user}}}"

    def channel(self, gateway):
        return f"{self.prefix}:gw:{gateway}"

    def gwsess(self, gateway):
        return f"{self.prefix}:gwsess:{gateway}"


def _member(session):
    return jsonlib.dumps([session.user, session.device]).decode()


def _entry(gateway, gen, session):
    return jsonlib.dumps([gateway, gen, session.status, session.text, session.token_hash]).decode()


class _Remote:
    """A session on some gateway, as the routing table knows it."""

    __slots__ = ("gateway", "generation", "status", "text", "token_hash")

    def __init__(self, raw):
        self.gateway, self.generation, self.status, self.text, self.token_hash = jsonlib.loads(raw)


class SessionRef:
    """Stands for the sending session inside a forwarder: (device, generation) on a gateway."""

    __slots__ = ("gateway", "device", "generation")

    def __init__(self, gateway, device, generation):
        self.gateway, self.device, self.generation = gateway, device, generation


class RedisHub(GatewayRegistry):
    """The hub interface of :class:`LocalHub`, over Redis.  ``gateway`` is this process's
    gateway id (None in forwarder and API processes, which hold no sessions).  The gateway
    registry's methods (report_load, withdraw, live_gateways, dead_gateways, reap_gateway,
    forget_stale_routes, forget_previous_run) are :class:`GatewayRegistry`'s."""

    #: redis-py's errors mean "Redis is down": answered `unavailable` (imsrv.backends.base)
    unavailable_errors = (redis.exceptions.RedisError,)

    def __init__(self, redis, prefix="imsrv", gateway=None, load_ttl=LOAD_TTL):
        self.r = redis
        self.keys = Keys(prefix)
        self.gateway = gateway
        self.load_ttl = load_ttl  # seconds a load report keeps this gateway "live"
        self.local = LocalHub()   # sessions held by this process (gateways only)
        self._attach = redis.register_script(ATTACH)
        self._detach = redis.register_script(DETACH)
        self._update = redis.register_script(UPDATE)
        self._reannounce = redis.register_script(REANNOUNCE)
        self._forget = redis.register_script(FORGET)
        self._pending = None      # pushes collected inside batch()
        self._attaching = set()   # (user, device) between their route and their local entry
        self.pushes = 0           # objects pushed to local sessions (imsrv_pushes_total)

    # ------------------------------------------------------------------ sessions
    def attach(self, session):
        entry = _entry(self.gateway, "GEN", session)
        k = self.keys
        pending = (session.user, session.device)
        self._attaching.add(pending)   # forget_stale_routes() must not take it for stale
        try:
            gen, old, count = self._attach(keys=[k.sess(session.user), k.gen(session.user)],
                                           args=[session.device, entry])
            session.generation = int(gen)
            self.r.sadd(k.gwsess(self.gateway), _member(session))
            prev = self.local.by_user.get(session.user, {}).get(session.device)
            self.local.by_user.setdefault(session.user, {})[session.device] = session
        finally:
            self._attaching.discard(pending)
        if prev is not None and prev is not session:
            prev.kick("replaced")
        elif old:
            o = _Remote(old)
            if o.gateway != self.gateway:
                self._publish(o.gateway, cluster.kick_message(session.user, session.device, o.generation,
                                                              "replaced"))
        return int(count) == 1

    def detach(self, session):
        devices = self.local.by_user.get(session.user)
        if devices and devices.get(session.device) is session:
            del devices[session.device]
            if not devices:
                del self.local.by_user[session.user]
            self.r.srem(self.keys.gwsess(self.gateway), _member(session))
        left = self._detach(keys=[self.keys.sess(session.user)], args=[session.device, session.generation])
        return int(left) == 0

    def update(self, session):
        """Store a session's new status/text in the routing table."""
        self._update(keys=[self.keys.sess(session.user)],
                     args=[session.device, session.generation, _entry(self.gateway, session.generation, session)])

    def sessions(self, user):
        return self.local.sessions(user)

    def routes(self, user):
        return {dev: _Remote(raw) for dev, raw in self.r.hgetall(self.keys.sess(user)).items()}

    def is_online(self, user):
        return bool(self.r.exists(self.keys.sess(user)))

    def presence(self, user):
        routes = self.routes(user)
        if not routes:
            return "offline", None
        return combine(routes.values())

    def swap_announced(self, user, status, text):
        raw = self.r.set(self.keys.ann(user), jsonlib.dumps([status, text]), get=True)
        if status == "offline":
            self.r.delete(self.keys.ann(user))
        return tuple(jsonlib.loads(raw)) if raw else ("offline", None)

    def kick_token(self, token_hash, reason, user=None):
        if user is None:
            return self.local.kick_token(token_hash, reason)
        for dev, route in self.routes(user).items():
            if route.token_hash == token_hash:
                self._publish(route.gateway, cluster.kick_message(user, dev, route.generation, reason))

    def kick_user(self, user, reason, keep_token_hash=None, device=None):
        """Kick every session of ``user``, on whichever gateway, except those opened with the
        token whose hash is ``keep_token_hash``; only the session of ``device`` if given
        (admin_kick): a kick message (device and generation, so a newer session of the
        device is never hit) to each gateway holding one.  -> sessions kicked."""
        per_gateway = {}
        for dev, route in self.routes(user).items():
            if device is not None and dev != device:
                continue
            if keep_token_hash is None or route.token_hash != keep_token_hash:
                per_gateway.setdefault(route.gateway, []).append(
                    cluster.kick_message(user, dev, route.generation, reason))
        if per_gateway:
            self.send((), per_gateway)
        return sum(len(m) for m in per_gateway.values())

    # ------------------------------------------------------------------ admin (imsrv/core/admin.py)
    def devices(self, users):
        """-> {user: sorted device names of their sessions, on whichever gateway} for each
        of ``users`` (one pipelined HKEYS per user)."""
        pipe = self.r.pipeline(transaction=False)
        for u in users:
            pipe.hkeys(self.keys.sess(u))
        return {u: sorted(devs) for u, devs in zip(users, pipe.execute())}

    def online_users(self):
        """-> how many users have a session on some gateway: the distinct users of the
        gateways' session sets (P:gwsess:<id>, read with SSCAN).  O(sessions), for
        admin_stats: nothing on the hot path keeps a count."""
        users = set()
        for gateway in self.r.zrange(self.keys.gateways, 0, -1):
            for raw in self.r.sscan_iter(self.keys.gwsess(gateway), count=1000):
                users.add(jsonlib.loads(raw)[0])
        return len(users)

    def gateway_connections(self):
        """-> {gateway address: open connections (TCP and WebSocket)} of the live gateways,
        from their load reports (at most load_report_every seconds old)."""
        return {g[0]: g[1] for g in self.live_gateways()}

    # ------------------------------------------------------------------ delivery
    @contextlib.contextmanager
    def batch(self):
        """Collect pushes; route them with one pipelined lookup; one PUBLISH per gateway."""
        if self._pending is not None:
            yield
            return
        with self.collect() as pushes:
            try:
                yield
            finally:   # pushes made before an error are of stored messages: send them
                self.send(pushes)

    @contextlib.contextmanager
    def collect(self):
        """``with hub.collect() as pushes:`` the pushes made inside (batch() included) are
        collected in ``pushes``, not sent: the caller sends them with :meth:`send`."""
        outer, self._pending = self._pending, []
        try:
            yield self._pending
        finally:
            self._pending = outer

    def push(self, user, obj, skip=None):
        item = (user, obj, skip)
        if self._pending is not None:
            self._pending.append(item)
        else:
            self.send([item])
        return 1

    def send(self, pushes, messages=None, then=None):
        """Publish ``pushes`` (push() items) to the gateways of their users' sessions, and
        ``messages`` ({gateway: [channel message, ...]}): one routing lookup (pipelined),
        then one pipeline holding one PUBLISH per gateway and whatever ``then(pipe)`` adds
        after them (the forwarder acknowledges its stream entries there)."""
        per_gateway = self._deliveries(pushes) if pushes else {}
        for gw, msgs in (messages or {}).items():
            per_gateway.setdefault(gw, []).extend(msgs)
        if not per_gateway and then is None:
            return
        pipe = self.r.pipeline(transaction=False)
        for gw, msgs in per_gateway.items():
            pipe.publish(self.keys.channel(gw), cluster.encode(msgs))
        if then is not None:
            then(pipe)
        pipe.execute()

    def _deliveries(self, items):
        """push() items -> {gateway: [push message]}, from the users' routes.  The sending
        session (an item's ``skip``) is left out: the ack of its send skips the seq there
        (imsrv/servers/ingress.py); only its user's other sessions get the push."""
        users = list(dict.fromkeys(u for u, _, _ in items))
        pipe = self.r.pipeline(transaction=False)
        for u in users:
            pipe.hgetall(self.keys.sess(u))
        routes = {}   # user -> [(device, gateway, generation)]
        for user, devices in zip(users, pipe.execute()):
            routes[user] = [(dev, *jsonlib.loads(raw)[:2]) for dev, raw in devices.items()]
        per_gateway = {}
        for user, obj, skip in items:
            user_routes = routes[user]
            if skip is None:
                delivery = [user, obj, None, None]
                gateways = {gw for _, gw, _ in user_routes} if len(user_routes) > 1 else \
                    [gw for _, gw, _ in user_routes]
            else:
                dev, gen = skip.device, skip.generation
                delivery = [user, obj, dev, gen]
                gateways = {gw for d, gw, g in user_routes if d != dev or g != gen}
            for gw in gateways:
                deliveries = per_gateway.get(gw)
                if deliveries is None:
                    deliveries = per_gateway[gw] = []
                deliveries.append(delivery)
        return {gw: [cluster.push_message(deliveries)] for gw, deliveries in per_gateway.items()}

    def catch_up(self, users):
        """Ask the gateways holding sessions of ``users`` to push them, from the inbox,
        whatever they have not been pushed (pushes of a send that a forwarder stored but
        died before publishing).  One PUBLISH per gateway (a catch-up message)."""
        users = list(dict.fromkeys(users))
        if not users:
            return
        pipe = self.r.pipeline(transaction=False)
        for u in users:
            pipe.hgetall(self.keys.sess(u))
        per_gateway = {}
        for user, routes in zip(users, pipe.execute()):
            for raw in routes.values():
                per_gateway.setdefault(jsonlib.loads(raw)[0], set()).add(user)
        if per_gateway:
            self.send((), {gw: [cluster.catch_up_message(sorted(us))] for gw, us in per_gateway.items()})

    def _publish(self, gateway, msg):
        self.r.publish(self.keys.channel(gateway), cluster.encode([msg]))

    # ------------------------------------------------------------------ on a gateway
    def deliver(self, msg):
        """Apply a push or a kick (a message from this gateway's channel) to the local
        sessions."""
        kind = msg["type"]
        if kind == cluster.PUSH:
            for user, obj, skip_device, skip_generation in msg["deliveries"]:
                for s in self.local.sessions(user):
                    if s.device != skip_device or s.generation != skip_generation:
                        s.push(obj)   # (the sending session skips the seq on its ack)
                        self.pushes += 1
        elif kind == cluster.KICK:
            s = self.local.by_user.get(msg["user"], {}).get(msg["device"])
            if s is not None and s.generation == msg["generation"]:
                s.kick(msg["reason"])

    def reannounce_local(self):
        """After Redis lost its state: put this gateway's sessions back in the routing table,
        each with the generation it has.  A session whose device has a newer session by now
        (on another gateway: it reconnected while Redis was empty, so nothing told us) is
        stale: it is kicked ("replaced"), never put back over the newer one (guarantee 7)."""
        stale = 0
        for devices in list(self.local.by_user.values()):
            for s in list(devices.values()):
                if s.generation == 0:
                    continue  # still authenticating: attach() registers it
                ok, other = self._reannounce(
                    keys=[self.keys.sess(s.user), self.keys.gen(s.user)],
                    args=[s.device, _entry(self.gateway, s.generation, s), "%d" % s.generation, self.gateway])
                if not int(ok):
                    stale += 1
                    s.kick("replaced")
                    continue
                self.r.sadd(self.keys.gwsess(self.gateway), _member(s))
                if other:
                    o = _Remote(other)   # an older session of the device elsewhere
                    if o.gateway != self.gateway:
                        self._publish(o.gateway, cluster.kick_message(s.user, s.device, o.generation,
                                                                      "replaced"))
        logs.info("routes_restored", gateway=self.gateway, sessions=self.local.online_count(), stale=stale)
