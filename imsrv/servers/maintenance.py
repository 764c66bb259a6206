"""The background jobs of a deployment, on greenlets: the search indexer
(:class:`imsrv.core.search.SearchIndexer`), the retention purge (``[retention]``: days,
purge_interval, purge_batch; Store.purge_messages), the purge of expired tokens and the
redelivery of group events (the ``group_event_queue`` rows a failed post left:
:meth:`imsrv.core.group_events.GroupEvents.redeliver`, every ``REDELIVER_EVERY`` seconds,
rows older than ``REDELIVER_AFTER``, at most ``REDELIVER_BATCH`` a round).

The embedded server runs one :class:`Maintenance`.  In the distributed deployment the API
daemon runs it under a :class:`RedisLease`: whichever API daemon holds the lease does the
work (every job is idempotent, so the moment two overlap, when a paused holder's lease
expired under it, costs nothing but time), and another takes over within ``LEASE_TTL``
seconds of the holder's end.  The jobs never touch the send path: each store call is one
short transaction (a batch of documents, a batch of purged messages), and the loops yield
between them.
"""
import time
import uuid

import gevent

from .. import logs
from ..core.group_events import REDELIVER_EVERY
from ..core.search import INDEX_BATCH, INDEX_INTERVAL, SearchIndexer

TOKENS_EVERY = 3600.0   # seconds between purges of expired tokens
INDEX_SHARE = 0.1       # default share of the time the search indexer takes at most, catching up
RETRY = 1.0             # seconds before a job runs again after a failure
LOOP_BUSY = 0.002       # seconds other greenlets ran when let: the loop has other work
LEASE_TTL = 10.0        # seconds a lease outlives its holder's last renewal
DAY_MS = 86_400_000

# renew the lease only while it is still ours
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class RedisLease:
    """A lease in Redis key ``key``: held by at most one process at a time (SET NX PX, a
    random token; renewed by a script that checks the token).  :meth:`held` takes or
    renews it when a third of its time has passed since the last renewal."""

    def __init__(self, redis, key, ttl=LEASE_TTL, clock=time.monotonic):
        self.redis = redis
        self.key = key
        self.ttl = ttl
        self.clock = clock
        self.token = uuid.uuid4().hex
        self.renewed = None     # clock() of the last successful take or renewal
        self.owner = False      # what held() last answered (logged on change)

    def held(self):
        now = self.clock()
        if self.renewed is not None and now - self.renewed < self.ttl / 3:
            return True
        ms = int(self.ttl * 1000)
        try:
            ok = bool(self.redis.set(self.key, self.token, nx=True, px=ms)
                      or self.redis.eval(_RENEW, 1, self.key, self.token, ms))
        except Exception as exc:   # Redis down: nobody can be sure of the lease
            logs.warning("lease_unavailable", key=self.key, error=repr(exc))
            ok = False
        self.renewed = now if ok else None
        if ok != self.owner:
            logs.info("lease", key=self.key, held=ok)
            self.owner = ok
        return ok


class Maintenance:
    """``store``, ``cfg`` (its ``retention`` section); ``lease``: None (run always) or a
    RedisLease; ``index_share``: while the indexer has a backlog, the share of the time it
    may take (it sleeps between batches for the rest): the embedded server's sends run on
    the same loop, so there it is small, and the index lags a burst of sends instead of
    slowing it down.  ``loop_is_the_load``: the share applies only while other greenlets
    of this process want the loop (they ran for LOOP_BUSY or more when the indexer let
    them, after a batch): true for the embedded server, whose sends all run on its loop,
    so that an idle server catches up at full speed; false where the load the indexer
    competes with is elsewhere (the API daemon: the database the forwarders write to).
    ``index_batch``: messages per indexer pass, one transaction (embedded: small, each
    pass holds the loop; the API daemon: large, each pass is a commit in the database the
    forwarders commit to).  ``group_events``: the App's GroupEvents (``app.groups.events``),
    whose queued rows are redelivered; None: no redelivery."""

    def __init__(self, store, cfg, lease=None, index_share=INDEX_SHARE, loop_is_the_load=False,
                 index_batch=INDEX_BATCH, group_events=None):
        self.store = store
        self.cfg = cfg
        self.lease = lease
        self.index_share = index_share
        self.loop_is_the_load = loop_is_the_load
        self.indexer = SearchIndexer(store, batch=index_batch)
        self.group_events = group_events
        self.greenlets = []

    def start(self):
        self.greenlets = [gevent.spawn(self._index_loop), gevent.spawn(self._purge_loop)]
        if self.group_events is not None:
            self.greenlets.append(gevent.spawn(self._group_event_loop))

    def stop(self):
        gevent.killall(self.greenlets)
        self.greenlets = []

    def _may_run(self):
        return self.lease is None or self.lease.held()

    # ------------------------------------------------------------------ search index
    def _index_loop(self):
        while True:
            delay = INDEX_INTERVAL
            if self._may_run():
                try:
                    start = time.monotonic()
                    if self.indexer.step() >= self.indexer.batch:
                        # a backlog: the next batch soon, but the indexer takes at most
                        # index_share of the time (sends first; it catches up when they ease)
                        took = time.monotonic() - start
                        share = self.index_share
                        delay = took * (1 - share) / share
                        if self.loop_is_the_load:
                            before = time.monotonic()
                            gevent.sleep(0)     # whatever else is ready runs now
                            if time.monotonic() - before < LOOP_BUSY:
                                delay = 0       # nobody else wanted the loop: go on
                except Exception as exc:
                    logs.warning("search_index_failed", error=repr(exc))
                    self.indexer.reset()   # the position again from the store
                    delay = RETRY
            else:
                self.indexer.reset()   # someone else moves it meanwhile
            gevent.sleep(delay)

    # ------------------------------------------------------------------ group events
    def _group_event_loop(self):
        """Redeliver the queued group events a failed post left (a round a batch; another
        batch at once while a round fills one, sends going first between them)."""
        while True:
            delay = REDELIVER_EVERY
            if self._may_run():
                try:
                    if self.group_events.redeliver() >= self.group_events.batch:
                        delay = 0
                except Exception as exc:   # the store down: the next round tries again
                    logs.warning("group_event_redeliver_failed", error=repr(exc))
            gevent.sleep(delay)

    # ------------------------------------------------------------------ purges
    def _purge_loop(self):
        tokens_due = 0.0
        while True:
            delay = self.cfg.retention.purge_interval
            if self._may_run():
                try:
                    if time.monotonic() >= tokens_due:
                        tokens = self.store.purge_tokens(int(time.time() * 1000))
                        logs.debug("purge", tokens=tokens)
                        tokens_due = time.monotonic() + TOKENS_EVERY
                    if self.cfg.retention.days > 0:
                        self.purge_retention()
                except Exception as exc:
                    logs.warning("purge_failed", error=repr(exc))
                    delay = min(delay, RETRY)
            gevent.sleep(delay)

    def purge_retention(self):
        """Delete every message older than ``retention.days``, a batch (one transaction)
        at a time -> the number deleted."""
        cutoff = int(time.time() * 1000 - self.cfg.retention.days * DAY_MS)
        batch = self.cfg.retention.purge_batch
        messages = inbox = 0
        last_mid = None
        while self._may_run():
            out = self.store.purge_messages(cutoff, batch)
            if not out["messages"]:
                break
            messages += out["messages"]
            inbox += out["inbox"]
            last_mid = out["last_mid"]
            gevent.sleep(0)   # sends go first
        if messages:
            logs.info("retention_purge", messages=messages, inbox_entries=inbox, last_mid=last_mid, cutoff=cutoff)
        return messages
