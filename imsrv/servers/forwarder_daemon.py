"""``imsrv forwarder``: a forwarder of the distributed deployment.

Reads the ingress stream in batches (consumer group ``forwarders``; a dead forwarder's
unfinished entries are claimed after ``cluster.claim_idle``), stores each batch in one
store transaction through the core (:meth:`Messaging.process_batch`), then publishes the
pushes to the gateways of the recipients and the acks to the gateways that added the
entries (one PUBLISH per gateway; the messages: imsrv/protocol/cluster.py), and after
them, in the same pipeline, acknowledges the entries in the stream: a forwarder that dies
mid-batch leaves them to another.  Redis round trips per batch: the read (with Redis's
clock), the recipients' routes, that pipeline.

/metrics (imsrv/servers/metrics.py): each batch's size and seconds (read to stream
acknowledged) in ``stats``; the ingress stream's length, pending entries and the age of
the oldest, read from Redis at scrape time.  /healthz: unhealthy when the loop ended.
"""
import os
import time

import gevent
import redis

from .. import logs
from ..backends.base import OutcomeUnknown
from ..metrics import BatchStats, gauge
from ..backends.redis_hub import SessionRef
from ..core.messaging import SendRequest
from ..protocol import cluster
from ..protocol.errors import ImError, Internal, Unavailable
from .daemon import RETRY, Daemon
from .hook_queue import stream_hooks

GROUP = "forwarders"   # the ingress stream's consumer group


def _ms(redis_time):
    """Redis TIME (seconds, microseconds) -> milliseconds."""
    return redis_time[0] * 1000 + redis_time[1] // 1000


class ForwarderProcess(Daemon):
    service = "forwarder"

    def __init__(self, cfg, forwarder_id):
        super().__init__(cfg)
        self.app = self.build_app()
        self.id = forwarder_id
        self.stopping = False
        self.last_claim = 0.0
        self.batches = self.messages = 0
        self.stats = BatchStats()
        self.loop = None
        # the after_send / offline streams (None: both off): the rows of each batch go in
        # the pipeline that acknowledges its entries; delivered under a lease
        self.hooks = stream_hooks(cfg, self.store, self.redis, self.hub, consumer=forwarder_id)
        self.app.messaging.hook_sink = self.hooks

    def start(self):
        self.migrate()
        self._ensure_group()
        self.loop = gevent.spawn(self._loop)
        if self.hooks is not None:
            self.hooks.start()
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
        while not self.stopping:
            try:
                entries, now_ms, taken_over = self._read()
                if entries:
                    self._process(entries, now_ms, taken_over)
            except OutcomeUnknown as exc:
                # nothing answered, nothing acknowledged in the stream: after claim_idle
                # these entries are claimed (by us or another forwarder) and decided then
                self.app.dispatcher.counts.backend_error(exc)
                logs.warning("batch_undecided", forwarder=self.id, error=str(exc))
                gevent.sleep(RETRY)
            except redis.ResponseError as exc:
                self.app.dispatcher.counts.backend_error(exc)
                if "NOGROUP" in str(exc):  # Redis came back empty
                    logs.warning("ingress_group_lost", forwarder=self.id)
                    self._ensure_group()
                else:
                    logs.error("redis_error", forwarder=self.id, error=repr(exc))
                    gevent.sleep(RETRY)
            except redis.RedisError as exc:
                self.app.dispatcher.counts.backend_error(exc)
                logs.warning("redis_unavailable", forwarder=self.id, error=repr(exc))
                gevent.sleep(RETRY)
            except Exception as exc:   # a bug: the entries stay pending; keep the loop alive
                logs.exception("internal_error", exc, service="forwarder", forwarder=self.id)
                gevent.sleep(RETRY)

    def _read(self):
        """The next batch -> (entries, Redis's clock in ms when they were read, taken over
        from a dead forwarder?).  Redis's clock comes in the same round trip as the read,
        except after a read that had to wait."""
        cl = self.cfg.cluster
        ingress = self.hub.keys.ingress
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        now = time.monotonic()
        claiming = now - self.last_claim >= cl.claim_idle / 2
        if claiming:
            # take over what a dead forwarder read but never finished
            self.last_claim = now
            pipe.xautoclaim(ingress, GROUP, self.id, int(cl.claim_idle * 1000), "0-0", count=cl.forwarder_batch)
        else:
            pipe.xreadgroup(GROUP, self.id, {ingress: ">"}, count=cl.forwarder_batch)
        t, res = pipe.execute()
        if claiming:
            entries = [e for e in res[1] if e and e[1]]
            if entries:
                logs.info("claimed", forwarder=self.id, entries=len(entries))
                return entries, _ms(t), True
            return [], _ms(t), False   # (read new entries on the next turn)
        entries = [e for _, items in res or [] for e in items]
        if not entries:
            res = self.redis.xreadgroup(GROUP, self.id, {ingress: ">"}, count=cl.forwarder_batch, block=1000)
            entries = [e for _, items in res or [] for e in items]
            if entries:
                t = self.redis.time()
        return entries, _ms(t), False

    @staticmethod
    def _requests(gateway, key, sender, device, generation, sends):
        """The sends of one ingress entry (recalls, edits and reactions included) -> their
        SendRequests."""
        session = SessionRef(gateway, device, generation)
        raw_body = cluster.raw_body
        reqs = []
        for index, send in enumerate(sends):
            body_json, to, group, cmid = send[:4]
            req = SendRequest(sender, raw_body(body_json), body_json, to=to, group=group, cmid=cmid,
                              session=session, **cluster.send_extras(send))
            if cmid is None:
                # the implicit dedup key from the gateway's forward key, not the entry id:
                # the same for a copy the gateway adds again after losing its subscription
                req.implicit = f"{gateway}.{key}.{index}"
            reqs.append(req)
        return reqs

    def _decode(self, entries):
        """-> [(entry id, gateway, forward key, [SendRequest])]; an entry that cannot be
        read (not this version's layout) is logged and removed from the stream."""
        decoded, unreadable = [], []
        for entry_id, fields in entries:
            try:
                gateway, key, sender, device, generation, sends = cluster.decode_ingress_entry(fields)
                decoded.append((entry_id, gateway, key, self._requests(gateway, key, sender, device, generation,
                                                                        sends)))
            except (KeyError, TypeError, ValueError) as exc:
                logs.warning("ingress_entry_unreadable", forwarder=self.id, entry=entry_id, error=repr(exc))
                unreadable.append(entry_id)
        if unreadable:
            self._remove(unreadable)
        return decoded

    def _process(self, entries, now_ms, taken_over=False):
        started = time.perf_counter()
        cl = self.cfg.cluster
        live, late = [], []
        oldest_age_ms = None   # age of the oldest live entry: it sets the commit deadline
        decoded = self._decode(entries)
        for entry_id, _gateway, _key, reqs in decoded:
            age = now_ms - int(entry_id.split("-", 1)[0])
            if age > cl.entry_ttl * 1000:
                late.extend(reqs)
            else:
                live.extend(reqs)
                oldest_age_ms = age if oldest_age_ms is None else max(oldest_age_ms, age)
        with self.hub.collect() as pushes:
            if live:
                # Commit only while every entry of the batch is younger than entry_ttl: its
                # gateway gives up at send_timeout (> entry_ttl) after adding it, and a send
                # must not be stored after its sender was told it got no answer (a store
                # that hangs past that rolls back instead).  The gap send_timeout -
                # entry_ttl covers the COMMIT.
                self._store(live, time.monotonic() + (cl.entry_ttl * 1000 - oldest_age_ms) / 1000.0)
        if late:
            # their gateways gave up waiting (or are about to): only a send stored before
            # is acked (core: Messaging.answer_late); OutcomeUnknown if the lookup fails
            self.app.messaging.answer_late(late)
        acks = {}
        for _entry_id, gateway, key, reqs in decoded:
            acks.setdefault(gateway, []).append(cluster.ack_message(key, reqs))
        entry_ids = [entry_id for entry_id, _, _, _ in decoded]
        if taken_over:
            self.hub.send(pushes, acks)
            self._catch_up_recipients(live + late)
            self._remove(entry_ids)
        else:
            # the pushes, the acks, then the entries acknowledged: one round trip
            self.hub.send(pushes, acks, then=lambda pipe: self._remove_in(pipe, entry_ids))
        self.batches += 1
        self.messages += len(live) + len(late)
        self.stats.observe(len(live) + len(late), time.perf_counter() - started)

    def _remove(self, entry_ids):
        """Done with these entries: acknowledged in the group and deleted from the stream."""
        if entry_ids:
            pipe = self.redis.pipeline(transaction=False)
            self._remove_in(pipe, entry_ids)
            pipe.execute()

    def _remove_in(self, pipe, entry_ids):
        if entry_ids:
            pipe.xack(self.hub.keys.ingress, GROUP, *entry_ids)
            pipe.xdel(self.hub.keys.ingress, *entry_ids)

    def _catch_up_recipients(self, reqs):
        """Sends taken over from a forwarder that died: it may have stored them and died
        before publishing their pushes (we only found the dedup record and acked).  Have
        the recipients' sessions catch up from their inboxes (after the acks, so that the
        sending device has skipped its own seq already)."""
        try:
            users = self.app.messaging.catch_up_users(reqs)
        except Exception as exc:   # the store down (or a bug): the entries are answered already
            # the senders (acked) and, for 1:1 sends, their peers still catch up
            logs.warning("catch_up_incomplete", forwarder=self.id, error=repr(exc))
            users = list(dict.fromkeys(u for req in reqs if not isinstance(req.result, ImError)
                                       and req.result is not None for u in (req.sender, req.to) if u))
        self.hub.catch_up(users)

    def _store(self, reqs, deadline=None):
        """process_batch, answering what it could not: a store failure before the commit
        (``unavailable``, nothing stored) or a bug (``internal``) must not end the loop."""
        try:
            self.app.messaging.process_batch(reqs, deadline)
        except (redis.RedisError, OutcomeUnknown):
            # Redis: acks/pushes not sent; outcome unknown: stored or not.  Either way the
            # entries stay pending and are claimed (and decided) again
            raise
        except self.app.backend_errors as exc:
            self.app.dispatcher.counts.backend_error(exc)
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

    # -- /healthz and /metrics
    def own_problem(self):
        if self.loop is None or self.loop.dead:
            return "the forwarder loop is not running"
        return None

    def metric_parts(self):
        self.metrics.add("store_batches", self.stats.families)
        self.metrics.add("ingress", self._ingress_families)

    def _ingress_families(self):
        """The forwarders' lag, from Redis now: the ingress stream's entries (processed ones
        are deleted: its length is the backlog), those read but not acknowledged, and the
        age of the oldest of those (by Redis's clock)."""
        key = self.hub.keys.ingress
        pipe = self.probe_redis.pipeline(transaction=False)
        pipe.time()
        pipe.xlen(key)
        pipe.xpending(key, GROUP)
        try:
            now, length, pending = pipe.execute()
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            now, length, pending = self.probe_redis.time(), 0, {"pending": 0, "min": None}
        oldest = pending.get("min")
        age = max(0.0, (_ms(now) - int(oldest.split("-", 1)[0])) / 1000.0) if oldest else 0.0
        yield gauge("imsrv_ingress_length", "Entries in the ingress stream (not yet processed)", length)
        yield gauge("imsrv_ingress_pending", "Ingress entries read by a forwarder, not yet acknowledged",
                    pending.get("pending", 0))
        yield gauge("imsrv_ingress_oldest_pending_seconds", "Age of the oldest pending ingress entry (0: none)",
                    age)

    def shutdown(self):
        if self.stopped.is_set():
            return
        logs.info("shutdown", service="forwarder", id=self.id, batches=self.batches, messages=self.messages)
        self.stopping = True
        if self.loop is not None:
            self.loop.join(timeout=self.cfg.limits.shutdown_grace)
        if self.hooks is not None:
            self.hooks.stop()
        self.close()
