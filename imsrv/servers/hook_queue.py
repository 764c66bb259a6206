"""Delivery of the queued hooks (after_send, offline; imsrv/core/hooks.py), on greenlets,
and their wiring into the two deployments.

A :class:`Delivery` per hook that is on: it takes the oldest rows of its queue (up to
``hooks.batch`` objects), makes the POST bodies (offline: decides who gets a notification
now: no online device, conversation not muted; the badge), POSTs them one after the other,
each until a 2xx (waits between tries: core.hooks.retry_wait), and only then removes the
rows.  So a hook's objects go out in queue order, at least once: a process that dies, or
stops, before the removal leaves the rows to be sent again.  It never touches the send
path: acks are given before the rows are even read.

- Embedded (:class:`EmbeddedHooks`): the queue is the store's ``hook_queue`` table, the rows
  written in the send batch's transaction (imsrv/backends/sql_hooks.py), so they survive a
  restart; Messaging's ``hook_sink`` only wakes the deliveries.
- Distributed (:class:`StreamHooks`, in every forwarder): Redis streams
  (imsrv/backends/redis_hooks.py).  As Messaging's ``hook_sink`` it collects the rows of a
  forwarder batch (and the mids of sends found stored already, whose rows are made again
  from the store) for the forwarder to add in the pipeline that acknowledges the ingress
  entries; its deliveries run only while this forwarder holds the hook's lease.  The API
  daemon's entries (group events, notify) take the table first: imsrv/servers/hook_mover.py.
"""
import os
import time
from contextlib import contextmanager

import gevent
import redis.exceptions
from gevent.event import Event

from .. import logs
from ..backends.base import OutcomeUnknown, StoreError
from ..backends.redis_hooks import HookStreams, StreamSource, online_users
from ..backends.sql_hooks import SqlHookQueue, stored_entries
from ..core import hooks as H
from .hook_client import HookClient

RETRY = 1.0        # seconds before a queue that failed (store, Redis down) is read again
#: distributed after_send: seconds the delivery waits after taking rows for rows queued
#: meanwhile by another forwarder (its store batch committed before the rows taken, its
#: queueing came after), so that each conversation's events go out in mid order
SETTLE = 0.2
IDLE_WAIT = 1.0    # seconds a delivery waits for new rows before it looks again
LOG_EVERY = 10.0   # at most one failure line per hook every LOG_EVERY seconds
_BACKEND_ERRORS = (StoreError, OSError, redis.exceptions.RedisError)


class SqlSource:
    """The embedded queue of one hook: rows of the ``hook_queue`` table; ``wake`` is set
    when a batch was stored."""

    def __init__(self, queue, hook, wake):
        self.queue, self.hook, self.wake = queue, hook, wake

    def take(self, limit):
        self.wake.clear()
        rows = self.queue.take(self.hook, limit)
        if not rows:
            self.wake.wait(IDLE_WAIT)
        return rows

    def done(self, keys):
        self.queue.delete(keys)

    def holding(self):
        return True

    def interrupt(self):
        self.wake.set()


class LeasedSource:
    """A hook's Redis stream, delivered only while this process holds its lease; a
    greenlet renews it every third of its time (:meth:`keep`)."""

    def __init__(self, stream):
        self.stream = stream
        self.lease_s = stream.lease_ms / 1000.0

    def take(self, limit):
        s = self.stream
        if not s.leader:
            if not s.acquire():
                gevent.sleep(self.lease_s / 3)
                return []
            s.ensure_group()
            logs.info("hook_lease_taken", hook=s.hook, consumer=s.consumer)
        return s.take(limit, int(IDLE_WAIT * 1000))

    def take_new(self, limit):
        """Up to ``limit`` rows queued since the last take (no waiting; none unless held)."""
        return self.stream.take_new(limit) if self.stream.leader else []

    def done(self, keys):
        self.stream.done(keys)

    def holding(self):
        return self.stream.leader

    def keep(self, stopped):
        """Renew the lease while held, until ``stopped`` is set (a greenlet)."""
        while not stopped.wait(self.lease_s / 3):
            if self.stream.leader:
                try:
                    if not self.stream.renew():
                        logs.warning("hook_lease_lost", hook=self.stream.hook, consumer=self.stream.consumer)
                except Exception as exc:   # Redis down: stop delivering until we hold it again
                    self.stream.leader = False
                    logs.warning("hook_lease_lost", hook=self.stream.hook, consumer=self.stream.consumer,
                                 error=repr(exc))


class Delivery:
    """The delivery greenlet of ``hook`` (after_send or offline) from ``source``;
    ``online(users)`` -> the set of those with a live session, ``store``: the muted
    conversations and unread totals (offline)."""

    def __init__(self, hook, settings, source, post, store=None, online=None, clock=time.time):
        self.hook = hook
        self.url = settings.urls[hook]
        self.settings = settings
        self.source = source
        self.post = post
        self.store = store
        self.online = online
        self.clock = clock
        self.stopped = Event()
        self.greenlets = []
        self.delivered = 0     # objects (events, notifications) POSTed and taken
        self._last_log = None

    def start(self):
        self.greenlets = [gevent.spawn(self._loop)]
        if isinstance(self.source, LeasedSource):
            self.greenlets.append(gevent.spawn(self.source.keep, self.stopped))

    def stop(self, timeout=2.0):
        """Stop after the POST in flight (rows not yet removed are sent again later)."""
        self.stopped.set()
        interrupt = getattr(self.source, "interrupt", None)
        if interrupt is not None:
            interrupt()   # no waiting for new rows
        gevent.joinall(self.greenlets, timeout=timeout)
        gevent.killall([g for g in self.greenlets if not g.dead], block=False)
        release = getattr(getattr(self.source, "stream", None), "release", None)
        if release is not None:
            try:
                release()
            except Exception:   # Redis down: the lease expires by itself
                pass

    def _loop(self):
        while not self.stopped.is_set():
            try:
                self._round()
            except _BACKEND_ERRORS as exc:
                self._log_failure("hook_queue_unavailable", error=repr(exc))
                self.stopped.wait(RETRY)
            except Exception as exc:   # a bug: the rows stay queued; keep the loop alive
                logs.exception("internal_error", exc, service="hooks", hook=self.hook)
                self.stopped.wait(RETRY)

    def _round(self):
        rows = self.source.take(self.settings.batch)
        if not rows or self.stopped.is_set():
            return
        if self.hook == H.AFTER_SEND and isinstance(self.source, LeasedSource):
            # several forwarders queue: a row with lower mids may come a moment later
            if self.stopped.wait(SETTLE):
                return
            taken = {key for key, _, _ in rows}
            rows = H.in_mid_order(rows + [r for r in self.source.take_new(self.settings.batch)
                                          if r[0] not in taken])
        rows = H.take_prefix(rows, self.settings.batch)
        payloads = [p for _, _, p in rows]
        if self.hook == H.AFTER_SEND:
            bodies, count = [H.events_body(payloads)], sum(n for _, n, _ in rows)
        else:
            notes = self._notifications(H.candidates(payloads))
            bodies, count = H.notification_bodies(notes, self.settings.batch), len(notes)
        for body in bodies:
            if not self._post(body):
                return   # stopping, or the lease went to another process: rows stay queued
        self.source.done([key for key, _, _ in rows])
        self.delivered += count
        logs.debug("hook_delivered", hook=self.hook, objects=count, posts=len(bodies))

    def _notifications(self, cands):
        users = list(dict.fromkeys(u for c in cands for u in c["seqs"]))
        online = self.online(users)
        offline = [(u, conv) for u, conv in H.notify_pairs(cands) if u not in online]
        if not offline:
            return []
        muted = self.store.muted_conversations(offline, int(self.clock() * 1000))
        badges = self.store.unread_totals(list(dict.fromkeys(u for u, _ in offline)))
        return H.notifications(cands, online, muted, badges)

    def _post(self, body):
        """POST ``body`` until a 2xx -> True; False when told to stop (or the lease is
        lost) before that."""
        s = self.settings
        failures = 0
        while True:
            try:
                status, _ = self.post(self.url, body, H.headers(s.secret, body), max(H.BATCH_TIMEOUT, s.timeout))
                error = None if 200 <= status < 300 else f"HTTP status {status}"
            except H.HookFailure as exc:
                error = str(exc)
            if error is None:
                if failures:
                    logs.info("hook_recovered", hook=self.hook, url=self.url, failures=failures)
                return True
            failures += 1
            self._log_failure("hook_failed", url=self.url, failures=failures, error=error)
            if self.stopped.wait(H.retry_wait(failures, s.retry_max)) or not self.source.holding():
                return False

    def _log_failure(self, event, **fields):
        now = time.monotonic()
        if self._last_log is None or now - self._last_log >= LOG_EVERY:
            self._last_log = now
            logs.warning(event, hook=self.hook, **fields)


# ---------------------------------------------------------------- embedded
class _Deliveries:
    """What both deployments' queued hooks do with their deliveries (``self.deliveries``)."""

    def start(self):
        for d in self.deliveries:
            d.start()

    def stop(self, timeout=2.0):
        for d in self.deliveries:
            d.stop(timeout)


class EmbeddedHooks(_Deliveries):
    """The queued hooks of the embedded server over ``store`` (SQLite) and the LocalHub
    ``hub``: set ``messaging.hook_sink`` to it (None when no queued hook is on: see
    :func:`embedded_hooks`)."""

    def __init__(self, settings, store, hub, post=None):
        self.queue = SqlHookQueue(store, H.HookRows(settings).rows)
        store.hook_rows = self.queue.write   # rows in the send batch's transaction
        post = post or HookClient().post
        self.wakes = []
        self.deliveries = []
        for hook in settings.queued:
            wake = Event()
            self.wakes.append(wake)
            self.deliveries.append(Delivery(hook, settings, SqlSource(self.queue, hook, wake), post, store,
                                            online=lambda users: {u for u in users if hub.is_online(u)}))

    def stored(self, items, results):
        """A send batch committed (its rows with it): wake the deliveries."""
        for wake in self.wakes:
            wake.set()

    def stored_before(self, mid):
        """A send found stored already: its rows were written with it."""


def embedded_hooks(cfg, store, hub):
    """EmbeddedHooks of ``cfg`` or None (no after_send / offline hook)."""
    settings = H.HookSettings(cfg.hooks)
    return EmbeddedHooks(settings, store, hub) if settings.queued else None


# ---------------------------------------------------------------- distributed
class StreamHooks(_Deliveries):
    """The queued hooks of a process of the distributed deployment (Redis ``redis``,
    prefix ``prefix``): Messaging's ``hook_sink``; with ``consumer`` (a forwarder id) also
    the deliveries, under a lease of ``lease_s`` seconds."""

    def __init__(self, settings, store, redis, prefix, hub=None, consumer=None, lease_s=10.0, post=None):
        self.rows = H.HookRows(settings).rows
        self.store = store
        self.streams = HookStreams(redis, prefix)
        self._collected = None   # [rows, mids found stored] while collecting
        self.deliveries = []
        if consumer is not None:
            post = post or HookClient().post
            token = f"{consumer}.{os.getpid()}"   # a restarted forwarder waits for its old lease
            for hook in settings.queued:
                stream = StreamSource(redis, prefix, hook, consumer, lease_s, token)
                self.deliveries.append(Delivery(hook, settings, LeasedSource(stream), post, store,
                                                online=lambda users: online_users(hub, users)))

    # -- Messaging's hook_sink
    def stored(self, items, results):
        rows = self.rows(items, results)
        if self._collected is not None:
            self._collected[0].extend(rows)
        else:
            self._add_now(rows, None)

    def stored_before(self, mid):
        if self._collected is not None:
            self._collected[1].append(mid)
        else:
            self._add_now(None, mid)

    def _add_now(self, rows, mid):
        """Outside :meth:`batch` (the forwarder wraps every batch in it; this is for a
        caller that does not): added at once; a failure is logged, never raised (the
        entries are stored and answered already)."""
        try:
            if rows is None:
                rows = self.rows(*stored_entries(self.store, [mid]))
            self.streams.add_now(rows)
        except _BACKEND_ERRORS as exc:
            logs.warning("hook_rows_lost", rows=len(rows or ()), mid=mid, error=repr(exc))

    # -- the forwarder's batch
    @contextmanager
    def batch(self):
        """``with hooks.batch() as rows:`` the rows of what is stored inside are collected
        in ``rows`` (for :meth:`add` in the pipeline that acknowledges the ingress
        entries), not added at once; with them, on leaving, those of the sends found stored
        already, read again from the store (first: they are the older ones).  Leaving
        raises OutcomeUnknown when those cannot be read: the batch must stay pending."""
        self._collected = [[], []]
        out = []
        try:
            yield out
        finally:
            rows, mids = self._collected
            self._collected = None
        if mids:
            try:
                rows = self.rows(*stored_entries(self.store, mids)) + rows
            except StoreError as exc:
                raise OutcomeUnknown(f"hook rows of sends stored before: {exc}") from exc
        out.extend(rows)

    def add(self, pipe, rows):
        self.streams.add(pipe, rows)



def stream_hooks(cfg, store, redis, hub=None, consumer=None):
    """StreamHooks of ``cfg`` or None (no after_send / offline hook): with ``consumer``
    (a forwarder's id) and ``hub`` (its RedisHub) it also delivers, under a lease of twice
    ``cluster.claim_idle`` (at least 1 s)."""
    settings = H.HookSettings(cfg.hooks)
    if not settings.queued:
        return None
    return StreamHooks(settings, store, redis, cfg.cluster.redis_prefix, hub, consumer,
                       lease_s=max(1.0, 2 * cfg.cluster.claim_idle))
