"""The distributed deployment's daemons: gateway, forwarder and API, over Redis + MySQL.

    imsrv gateway --id ID --port N     long connections; sends go to the ingress stream
    imsrv forwarder --id ID            ingress -> store (one transaction per batch) -> acks, pushes
    imsrv api --port N                 short connections (accounts, contacts, groups, notify)

Each process runs the same business core (imsrv.core) as the embedded server; only the
hub (RedisHub instead of LocalHub) and the path of a send (Redis stream + forwarder
instead of an in-process queue) differ.  The caller monkey-patches gevent first.
"""
import itertools
import os
import signal
import time

import gevent
import redis
from gevent.event import Event

from .. import codec, jsonlib, logs
from ..backends import open_store, redis_limits
from ..backends.redis_hub import RedisHub, SessionRef
from ..core.app import BACKEND_ERRORS, App
from ..backends.base import CommitUnknown
from ..core.messaging import Messaging, OutcomeUnknown, SendRequest
from ..protocol.errors import ImError, Internal, Unavailable
from .api import ApiServer
from .connection import jittered, listen
from .gateway import Gateway

GROUP = "forwarders"
# The daemons' store when database_url is empty: the local MySQL/MariaDB, database imsrv.
DEFAULT_DATABASE_URL = "mysql://root@127.0.0.1:3306/imsrv"
RETRY = 1.0  # seconds between reconnection attempts to Redis
# seconds between two checks of this gateway's routes against its live sessions (a detach
# that failed while Redis was unreachable leaves a route behind)
RECONCILE_EVERY = 30.0


class Undecided(Exception):
    """A forwarder cannot tell whether (some of) a batch's sends are stored: it answers
    none of them and leaves the entries pending, to be claimed and looked at again (their
    dedup records then say).  Gateways never answer `unavailable` for a send they have no
    answer for: see GatewayProcess.forward."""


def _never_sent(exc):
    """True when a redis-py error says the command never left this process: the
    connection could not even be made (``Error 111 connecting to ...``)."""
    return isinstance(exc, redis.ConnectionError) and " connecting to " in str(exc)


def _offload(fn, *args):
    return gevent.get_hub().threadpool.apply(fn, args)


def connect_redis(url):
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5,
                                socket_keepalive=True, health_check_interval=10)


def _result_to_wire(result):
    if isinstance(result, ImError):
        return {"error": result.code, "message": result.message, **result.extra}
    return result


def _result_from_wire(r):
    if "error" in r:
        err = ImError(r.get("message", ""))
        err.code = r["error"]
        err.extra = {k: v for k, v in r.items() if k not in ("error", "message")}
        return err
    return r


class Daemon:
    """Shared start/stop plumbing: store, Redis, hub, App, SIGTERM."""

    service = "daemon"

    def __init__(self, cfg, gateway_id=None):
        self.cfg = cfg
        url = cfg.server.database_url or DEFAULT_DATABASE_URL
        self.store = open_store(url)
        self.redis = connect_redis(cfg.cluster.redis_url)
        self.hub = RedisHub(self.redis, cfg.cluster.redis_prefix, gateway=gateway_id,
                            load_ttl=5 * cfg.cluster.load_report_every)
        self.app = App(cfg, self.store, self.hub, offload=_offload)
        redis_limits.install(self.app, self.redis, cfg.cluster.redis_prefix)  # shared by all processes
        self.stopped = Event()

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
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, lambda: gevent.spawn(self.shutdown))
        self.start()
        self.stopped.wait()

    def close(self):
        try:
            self.store.close()
        finally:
            self.redis.close()
        self.stopped.set()


# ====================================================================== gateway
class _Waiting:
    """One forward() call: its requests, the ingress entry it added (its JSON and id), and
    the Event its ack sets."""

    __slots__ = ("reqs", "payload", "entry_id", "started", "done")

    def __init__(self, reqs, payload):
        self.reqs = reqs
        self.payload = payload
        self.entry_id = None
        self.started = time.monotonic()
        self.done = Event()


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
        self.waiting = {}  # ingress key -> _Waiting (a forward() call waiting for its ack)
        self.keys = itertools.count(1)
        self.boot = f"{os.getpid()}.{int(time.time() * 1000)}"
        self.app.forward = self.forward
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

    # -- sends: ingress stream out, acks back on our channel
    def forward(self, reqs):
        """Hand ``reqs`` (the consecutive sends of one read of one connection) to the
        forwarders as ONE ingress entry, and wait for its ack.

        One entry, not one per send: forwarders read the stream concurrently, so separate
        entries could be split between two forwarders and stored in either order, breaking
        the send order of pipelined sends (guarantee 5).  One entry is stored by one
        forwarder, in one batch, in order."""
        key = f"{self.boot}.{next(self.keys)}"
        sends = []
        for req in reqs:
            item = {"s": req.sender, "d": req.session.device, "n": req.session.generation, "b": req.body_json}
            if req.to is not None:
                item["to"] = req.to
            if req.group is not None:
                item["gr"] = req.group
            if req.cmid is not None:
                item["c"] = req.cmid
            sends.append(item)
        w = _Waiting(reqs, jsonlib.dumps({"g": self.id, "k": key, "l": sends}))
        self.waiting[key] = w
        outcome = None
        try:
            w.entry_id = self.redis.xadd(self.hub.keys.ingress, {"m": w.payload})
            if not w.done.wait(timeout=self.cfg.cluster.send_timeout):
                outcome = OutcomeUnknown(f"no forwarder answered within {self.cfg.cluster.send_timeout:g}s")
        except redis.RedisError as exc:
            logs.warning("ingress_unavailable", gateway=self.id, error=repr(exc))
            if _never_sent(exc):
                outcome = Unavailable("the message queue (Redis) is unavailable; nothing was stored")
            else:   # the XADD may have reached Redis: a forwarder may store it yet
                outcome = OutcomeUnknown(f"adding to the ingress stream failed: {exc!r}")
        finally:
            self.waiting.pop(key, None)
            for req in reqs:
                if req.result is None:
                    req.result = outcome or OutcomeUnknown("no answer")

    def _ack(self, msg):
        w = self.waiting.pop(msg["k"], None)
        if w is None:
            return  # we gave up on it already (or restarted), or a copy was acked first
        results = msg["r"]
        for req, r in zip(w.reqs, results if isinstance(results, list) else [results]):
            req.result = _result_from_wire(r)
            if not isinstance(req.result, ImError) and req.session is not None and "seq" in req.result:
                req.session.own(req.result["seq"])
        w.done.set()

    def _readd_waiting(self):
        """After our subscription was cut: the acks of the sends we wait for may have been
        published meanwhile (lost), or their ingress entries lost with Redis.  Add each one
        that is no longer in the stream again, so it is answered now instead of at
        send_timeout.  Safe: the copy carries the same key, so a forwarder stores each send
        once (cmid, or the implicit dedup key made from the key) and answers a send stored
        already with its first ack.  Only while a forwarder can still store the copy before
        we give up (the copy is fresh for entry_ttl more seconds)."""
        cl = self.cfg.cluster
        latest = time.monotonic() - max(0.0, cl.send_timeout - cl.entry_ttl)
        readded = 0
        for w in list(self.waiting.values()):
            if w.entry_id is None or w.started < latest or w.done.is_set():
                continue
            try:
                if self.redis.xrange(self.hub.keys.ingress, w.entry_id, w.entry_id):
                    continue  # still queued (or pending in a forwarder): its ack will come
                w.entry_id = self.redis.xadd(self.hub.keys.ingress, {"m": w.payload})
                readded += 1
            except redis.RedisError as exc:
                logs.warning("sends_not_readded", gateway=self.id, error=repr(exc))
                return
        if readded:
            logs.info("sends_readded", gateway=self.id, entries=readded)

    # -- our channel: pushes, kicks, acks
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
                    if raw.get("type") != "message":
                        continue
                    msg = jsonlib.loads(raw["data"])
                    t = msg.get("t")
                    if t == "ack":
                        self._ack(msg)
                    elif t == "catchup":
                        for user in msg["u"]:
                            for s in self.hub.local.sessions(user):
                                gevent.spawn(self._catch_up, s)
                    else:
                        self.hub.deliver(msg)
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
        self._readd_waiting()
        self._reinstate()

    def _reinstate(self):
        """Our sessions back in the routing table (Redis lost it, or we were reaped as
        dead), their presence re-announced, and every session pushed what it missed."""
        try:
            self.hub.reannounce_local()
            gone = self.hub.forget_stale_routes()
            for user in list(self.hub.local.by_user) + gone:
                self.app.presence.changed(user)
        except BACKEND_ERRORS as exc:
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
            except BACKEND_ERRORS as exc:
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
                except BACKEND_ERRORS as exc:
                    logs.warning("presence_not_announced", user=user, error=repr(exc))

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


# ====================================================================== forwarder
class ForwarderProcess(Daemon):
    service = "forwarder"

    def __init__(self, cfg, forwarder_id):
        super().__init__(cfg)
        self.id = forwarder_id
        self.stopping = False
        self.last_claim = 0.0
        self.batches = self.messages = 0

    def start(self):
        self.migrate()
        self._ensure_group()
        self.loop = gevent.spawn(self._loop)
        logs.info("ready", service="forwarder", id=self.id, pid=os.getpid())

    def _ensure_group(self):
        while True:
            try:
                self.redis.xgroup_create(self.hub.keys.ingress, GROUP, id="0", mkstream=True)
                return
            except redis.ResponseError as exc:
                if "BUSYGROUP" in str(exc):
                    return
                raise
            except redis.RedisError as exc:
                logs.warning("redis_unavailable", service="forwarder", error=repr(exc))
                gevent.sleep(RETRY)

    def _loop(self):
        cl = self.cfg.cluster
        while not self.stopping:
            try:
                entries = []
                now = time.monotonic()
                if now - self.last_claim >= cl.claim_idle / 2:
                    # take over what a dead forwarder read but never finished
                    self.last_claim = now
                    res = self.redis.xautoclaim(self.hub.keys.ingress, GROUP, self.id,
                                                int(cl.claim_idle * 1000), "0-0", count=cl.forwarder_batch)
                    claimed = [e for e in res[1] if e and e[1]]
                    if claimed:
                        logs.info("claimed", forwarder=self.id, entries=len(claimed))
                    entries.extend(claimed)
                taken_over = bool(entries)
                if not entries:
                    res = self.redis.xreadgroup(GROUP, self.id, {self.hub.keys.ingress: ">"},
                                                count=cl.forwarder_batch, block=1000)
                    for _, items in res or []:
                        entries.extend(items)
                if entries:
                    self._process(entries, taken_over)
            except Undecided as exc:
                # nothing answered, nothing acknowledged in the stream: after claim_idle
                # these entries are claimed (by us or another forwarder) and decided then
                logs.warning("batch_undecided", forwarder=self.id, error=str(exc))
                gevent.sleep(RETRY)
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis came back empty
                    logs.warning("ingress_group_lost", forwarder=self.id)
                    self._ensure_group()
                else:
                    logs.error("redis_error", forwarder=self.id, error=repr(exc))
                    gevent.sleep(RETRY)
            except redis.RedisError as exc:
                logs.warning("redis_unavailable", forwarder=self.id, error=repr(exc))
                gevent.sleep(RETRY)
        self.stopped_loop = True

    def _process(self, entries, taken_over=False):
        cl = self.cfg.cluster
        t = self.redis.time()
        now_ms = t[0] * 1000 + t[1] // 1000
        live, late = [], []
        oldest_age_ms = None   # age of the oldest live entry: it sets the commit deadline
        acks = []   # (gateway, key, [SendRequest], one ack per send (old entry format))
        for entry_id, fields in entries:
            m = jsonlib.loads(fields["m"])
            if "l" in m:   # one entry per forward() call: its sends, in order
                # implicit dedup keys from the gateway's key, not the entry id: the same
                # for a copy the gateway adds again after losing its subscription
                sends = [(item, f"{m['g']}.{m['k']}.{i}") for i, item in enumerate(m["l"])]
            else:          # one send per entry (gateways of an earlier version)
                sends = [(m, entry_id)]
            reqs = []
            for item, implicit in sends:
                req = SendRequest(item["s"], jsonlib.loads(item["b"]), item["b"], to=item.get("to"),
                                  group=item.get("gr"), cmid=item.get("c"),
                                  session=SessionRef(m["g"], item["d"], item["n"]))
                req.implicit = implicit
                reqs.append(req)
            acks.append((m["g"], m["k"], reqs, "l" not in m))
            age = now_ms - int(entry_id.split("-", 1)[0])
            if age > cl.entry_ttl * 1000:
                late.extend(reqs)
            else:
                live.extend(reqs)
                oldest_age_ms = age if oldest_age_ms is None else max(oldest_age_ms, age)
        if live:
            # Commit only while every entry of the batch is younger than entry_ttl: its
            # gateway answers `unavailable` at send_timeout (> entry_ttl) after adding it,
            # and `unavailable` must mean nothing was stored (a store that hangs past that
            # rolls back instead).  The gap send_timeout - entry_ttl covers the COMMIT.
            self._store(live, time.monotonic() + (cl.entry_ttl * 1000 - oldest_age_ms) / 1000.0)
        for req in late:
            # the gateway gave up waiting (or is about to): store nothing new, but a send
            # that an earlier forwarder stored (before dying, or in a COMMIT whose outcome
            # it never learnt) is still acknowledged.  If the lookup fails we cannot say
            # which: the entries stay pending and are looked at again later.
            try:
                # settled: waits for a forwarder still inside the COMMIT of this send
                prev = self.store.get_dedup(req.sender, Messaging.dedup_key(req), settled=True)
            except BACKEND_ERRORS as exc:
                raise Undecided(f"dedup lookup failed: {exc}") from exc
            req.result = ({"op": "ack", "mid": prev["mid"], "seq": prev["seq"], "ts": prev["ts"]} if prev
                          else Unavailable("the send waited too long for a forwarder; nothing was stored"))
        per_gateway = {}
        for gw, key, reqs, single in acks:
            results = [_result_to_wire(req.result) for req in reqs]
            per_gateway.setdefault(gw, []).append({"t": "ack", "k": key, "r": results[0] if single else results})
        self.hub.publish_many(per_gateway)
        if taken_over:
            self._catch_up_recipients(live + late)
        ids = [e[0] for e in entries]
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(self.hub.keys.ingress, GROUP, *ids)
        pipe.xdel(self.hub.keys.ingress, *ids)
        pipe.execute()
        self.batches += 1
        self.messages += len(live) + len(late)

    def _catch_up_recipients(self, reqs):
        """Sends taken over from a forwarder that died: it may have stored them and died
        before publishing their pushes (we only found the dedup record and acked).  Have
        the recipients' sessions catch up from their inboxes (after the acks, so that the
        sending device has skipped its own seq already)."""
        users = []
        for req in reqs:
            if isinstance(req.result, ImError) or req.result is None:
                continue
            if req.group is not None:
                try:
                    users.extend(self.store.list_members(req.group))
                except Exception as exc:
                    logs.warning("catch_up_not_sent", forwarder=self.id, group=req.group, error=repr(exc))
            else:
                users.extend((req.sender, req.to))
        self.hub.catch_up(users)

    def _store(self, reqs, deadline=None):
        """process_batch, answering what it could not: a store failure before the commit
        (``unavailable``, nothing stored) or a bug (``internal``) must not end the loop."""
        try:
            self.app.messaging.process_batch(reqs, deadline)
        except redis.RedisError:
            raise   # acks/pushes not sent: the entries stay pending and are claimed again
        except CommitUnknown as exc:
            raise Undecided(str(exc)) from exc
        except BACKEND_ERRORS as exc:
            logs.warning("store_unavailable", forwarder=self.id, error=repr(exc))
            err = Unavailable(f"message store unavailable: {exc}")
            for req in reqs:
                if req.result is None:
                    req.result = err
        except Exception as exc:
            logs.exception("internal_error", exc, service="forwarder", forwarder=self.id, batch=len(reqs))
            err = Internal("internal error storing the message")
            for req in reqs:
                if req.result is None:
                    req.result = err

    def shutdown(self):
        if self.stopped.is_set():
            return
        logs.info("shutdown", service="forwarder", id=self.id, batches=self.batches, messages=self.messages)
        self.stopping = True
        self.loop.join(timeout=self.cfg.limits.shutdown_grace)
        self.close()


# ====================================================================== api
class ApiProcess(Daemon):
    service = "api"

    def __init__(self, cfg, port):
        sock = listen(cfg.server.host, port, "API", "--port N or server.api_port")
        try:
            super().__init__(cfg)
        except BaseException:
            sock.close()
            raise
        # notify stores its system messages directly (seqs come from the store, so this
        # is as safe as a forwarder doing it) and pushes through the hub
        self.app.forward = self.app.messaging.process_batch
        self.app.gateway_choice = self.gateway_choice
        self.api = ApiServer(self.app, cfg, sock)
        # address -> [time of its last load report, logins we named it for since]
        self.handed = {}

    def gateway_choice(self):
        """The least-loaded live gateway, counting the logins this API process sent to it
        since its last load report: a burst of logins between two reports (every
        load_report_every seconds) is spread over the gateways instead of all naming the
        one that was least loaded at the last report."""
        live = self.hub.live_gateways()
        if not live:
            raise Unavailable("no gateway is running")
        best = None
        for addr, conns, stamp in live:
            seen = self.handed.get(addr)
            if seen is None or seen[0] != stamp:   # a new report: it counts those logins
                seen = self.handed[addr] = [stamp, 0]
            if best is None or conns + seen[1] < best[0]:
                best = (conns + seen[1], addr)
        self.handed[best[1]][1] += 1
        return {"gateway": best[1], "gateways": sorted(a for a, _, _ in live)}

    def start(self):
        self.migrate()
        self.api.start()
        logs.info("ready", service="api", api="%s:%d" % self.api.address[:2], pid=os.getpid())

    def shutdown(self):
        if self.stopped.is_set():
            return
        logs.info("shutdown", service="api")
        self.api.shutdown()
        deadline = time.monotonic() + self.cfg.limits.shutdown_grace
        while self.api.conns and time.monotonic() < deadline:
            gevent.sleep(0.05)
        self.close()
