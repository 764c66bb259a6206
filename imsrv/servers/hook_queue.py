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
- Distributed (:class:`StreamHooks`, in every forwarder and the API daemon): the rows are
  written the same way, into MariaDB's ``hook_queue`` table in the transaction of the batch
  they are about (the transactional outbox: a process that dies after its commit leaves
  them there, nothing is made again).  Each hook is delivered by the one forwarder holding
  its lease in Redis, from the hook's Redis stream (imsrv/backends/redis_hooks.py), which
  that forwarder fills from the table (:class:`LeasedSource`: rows moved in table order,
  then deleted).  Two batches with entries of one conversation lock the same seq counters,
  so the second writes its rows after the first committed: table order is each
  conversation's order, and one mover keeps it in the stream.
"""
import os
import time

import gevent
import redis.exceptions
from gevent.event import Event

from .. import logs
from ..backends.base import StoreError
from ..backends.redis_hooks import HookStreams, StreamSource, online_users, stream_key
from ..backends.sql_hooks import SqlHookQueue
from ..core import hooks as H
from .hook_client import HookClient

RETRY = 1.0        # seconds before a queue that failed (store, Redis down) is read again
IDLE_WAIT = 1.0    # seconds a delivery waits for new rows before it looks again
#: distributed: seconds the lease holder waits on its stream before it looks at the table
#: again (the rows of other processes' batches reach the stream through the table)
MOVE_POLL = 0.1
MOVE_BATCH = 1000  # rows moved from the table to the stream per round at most
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
    """A hook's Redis stream, delivered only while this process holds its lease (a
    greenlet renews it every third of its time: :meth:`keep`), and filled by the holder
    from the ``hook_queue`` table (SqlHookQueue ``queue``) of every process's batches."""

    def __init__(self, stream, queue=None, streams=None):
        self.stream = stream
        self.queue = queue
        self.streams = streams
        self.lease_s = stream.lease_ms / 1000.0

    def take(self, limit):
        s = self.stream
        if not s.leader:
            if not s.acquire():
                gevent.sleep(self.lease_s / 3)
                return []
            s.ensure_group()
            logs.info("hook_lease_taken", hook=s.hook, consumer=s.consumer)
        self.move()
        return s.take(limit, int(MOVE_POLL * 1000))

    def move(self):
        """The table's rows of our hook, oldest first, added to the stream, then deleted
        from the table -> how many.  A holder that dies in between leaves them to be moved
        again by the next one (at least once)."""
        if self.queue is None:
            return 0
        rows = self.queue.take(self.stream.hook, MOVE_BATCH)
        if rows:
            self.streams.add_now([(self.stream.hook, n, payload) for _, n, payload in rows])
            self.queue.delete([key for key, _, _ in rows])
        return len(rows)

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

    def lengths(self, redis=None):
        """/metrics: {hook: rows queued, not yet posted} (a COUNT of the table)."""
        return {d.hook: self.queue.count(d.hook) for d in self.deliveries}


def embedded_hooks(cfg, store, hub):
    """EmbeddedHooks of ``cfg`` or None (no after_send / offline hook)."""
    settings = H.HookSettings(cfg.hooks)
    return EmbeddedHooks(settings, store, hub) if settings.queued else None


# ---------------------------------------------------------------- distributed
class StreamHooks(_Deliveries):
    """The queued hooks of a process of the distributed deployment that stores entries
    (a forwarder, the API daemon) over ``store`` (MariaDB) and Redis ``redis`` (prefix
    ``prefix``): Messaging's ``hook_sink``, the rows written into the ``hook_queue`` table
    in each batch's transaction; with ``consumer`` (a forwarder id) also the deliveries,
    each under a lease of ``lease_s`` seconds, from the hook's stream that the lease
    holder fills from the table."""

    def __init__(self, settings, store, redis, prefix, hub=None, consumer=None, lease_s=10.0, post=None):
        self.queue = SqlHookQueue(store, H.HookRows(settings).rows)
        store.hook_rows = self.queue.write   # rows in the send batch's transaction
        self.hooks, self.redis, self.prefix = tuple(settings.queued), redis, prefix   # (lengths)
        self.deliveries = []
        if consumer is not None:
            post = post or HookClient().post
            streams = HookStreams(redis, prefix)
            token = f"{consumer}.{os.getpid()}"   # a restarted forwarder waits for its old lease
            for hook in settings.queued:
                stream = StreamSource(redis, prefix, hook, consumer, lease_s, token)
                self.deliveries.append(Delivery(hook, settings, LeasedSource(stream, self.queue, streams), post,
                                                store, online=lambda users: online_users(hub, users)))

    # -- Messaging's hook_sink: the rows are in the batch's transaction already
    def stored(self, items, results):
        """A batch committed, its rows with it: the lease holder moves them."""

    def stored_before(self, mid):
        """A send found stored already: its rows were written with it."""

    def lengths(self, redis=None):
        """/metrics: {hook: rows queued, not yet posted}, the deployment's: in the table
        (not moved yet) and in the hook's stream; ``redis``: the client to ask (default
        ours)."""
        pipe = (redis or self.redis).pipeline(transaction=False)
        for hook in self.hooks:
            pipe.xlen(stream_key(self.prefix, hook))
        return {hook: self.queue.count(hook) + n for hook, n in zip(self.hooks, pipe.execute())}


def stream_hooks(cfg, store, redis, hub=None, consumer=None):
    """StreamHooks of ``cfg`` or None (no after_send / offline hook): with ``consumer``
    (a forwarder's id) and ``hub`` (its RedisHub) it also delivers, under a lease of twice
    ``cluster.claim_idle`` (at least 1 s)."""
    settings = H.HookSettings(cfg.hooks)
    if not settings.queued:
        return None
    return StreamHooks(settings, store, redis, cfg.cluster.redis_prefix, hub, consumer,
                       lease_s=max(1.0, 2 * cfg.cluster.claim_idle))
