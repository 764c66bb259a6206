"""The hook queues of the distributed deployment: one Redis stream per queued hook (rows
as imsrv/core/hooks.py defines them), under the cluster prefix ``P``:

    P:hooks:<hook>        stream   one entry per row: fields ``n`` (objects in it) and ``p``
                                   (the payload, JSON text); consumer group ``hooks``
    P:hooks:<hook>:lease  str      the token (consumer id.pid) of the one forwarder delivering <hook>
                                   (SET NX PX, renewed while it delivers)

Writer: the lease holder of the hook (:class:`HookStreams`), which moves the rows every
process wrote into MariaDB's ``hook_queue`` table in its batches' transactions, in table
order (imsrv/servers/hook_queue.py LeasedSource).

Readers (:class:`StreamSource`, one per hook and forwarder): only the lease holder
delivers, so a hook's rows go out one POST after the other in stream order, whichever
forwarder delivers them.  It first takes over what is pending in the group (a former
holder's rows read but not acknowledged: XAUTOCLAIM from the start of the group's pending
list, oldest first), then reads new entries (XREADGROUP).  A delivered row is
acknowledged and deleted (XACK + XDEL).  If the holder dies, its lease expires and another
forwarder takes it and the pending rows.
"""
import redis.exceptions

GROUP = "hooks"
_RENEW = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"""
_RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1]) else return 0 end"""


def stream_key(prefix, hook):
    return f"{prefix}:hooks:{hook}"


class HookStreams:
    """The writers' side: ``add(pipe, rows)`` queues rows [(hook, n, payload)] in a
    pipeline (or a client)."""

    def __init__(self, redis, prefix):
        self.r = redis
        self.prefix = prefix

    def add(self, pipe, rows):
        for hook, n, payload in rows:
            pipe.xadd(stream_key(self.prefix, hook), {"n": n, "p": payload})

    def add_now(self, rows):
        """Queue ``rows`` in one round trip.  redis-py errors propagate."""
        if rows:
            pipe = self.r.pipeline(transaction=False)
            self.add(pipe, rows)
            pipe.execute()


class StreamSource:
    """The delivering side of one hook's stream for consumer ``consumer``; ``lease_s``:
    seconds a lease lasts unless renewed; ``token``: what the lease holds (default the
    consumer).  Every method may raise redis-py's errors."""

    def __init__(self, redis, prefix, hook, consumer, lease_s, token=None):
        self.r = redis
        self.hook = hook
        self.key = stream_key(prefix, hook)
        self.lease_key = f"{self.key}:lease"
        self.consumer = consumer
        self.token = token or consumer
        self.lease_ms = max(1, int(lease_s * 1000))
        self.leader = False
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def ensure_group(self):
        try:
            self.r.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- the lease
    def acquire(self):
        """Take the lease if nobody holds it -> True if we hold it now."""
        if self.leader:
            return self.renew()
        self.leader = bool(self.r.set(self.lease_key, self.token, nx=True, px=self.lease_ms))
        return self.leader

    def renew(self):
        """-> True if we still hold the lease (extended), else False (lost)."""
        self.leader = bool(self._renew(keys=[self.lease_key], args=[self.token, self.lease_ms]))
        return self.leader

    def release(self):
        if self.leader:
            self.leader = False
            self._release(keys=[self.lease_key], args=[self.token])

    # -- rows
    def take(self, limit, block_ms):
        """Up to ``limit`` rows (entry id, n, payload), oldest first: the group's pending
        ones (taken over) if any, else new ones (waiting up to ``block_ms`` for some)."""
        try:
            return self._take(limit, block_ms)
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()   # the stream or group is gone (Redis came back empty)
            return []

    def _take(self, limit, block_ms):
        res = self.r.xautoclaim(self.key, GROUP, self.consumer, 0, "0-0", count=limit)
        gone = [eid for eid, fields in res[1] if eid and not fields]
        if gone:   # deleted while pending (Redis < 7 lists them): nothing to deliver
            self.done(gone)
        rows = [(eid, int(f["n"]), f["p"]) for eid, f in res[1] if f]
        if rows:
            return rows
        got = self.r.xreadgroup(GROUP, self.consumer, {self.key: ">"}, count=limit, block=block_ms)
        return [(eid, int(f["n"]), f["p"]) for _, entries in got or [] for eid, f in entries if f]

    def done(self, ids):
        """Delivered: acknowledged in the group and deleted from the stream."""
        if ids:
            pipe = self.r.pipeline(transaction=False)
            pipe.xack(self.key, GROUP, *ids)
            pipe.xdel(self.key, *ids)
            pipe.execute()


def online_users(hub, users):
    """The users of ``users`` with a live session anywhere (one pipelined round trip over
    the routing table of the RedisHub ``hub``)."""
    users = list(dict.fromkeys(users))
    if not users:
        return set()
    pipe = hub.r.pipeline(transaction=False)
    for u in users:
        pipe.exists(hub.keys.sess(u))
    return {u for u, n in zip(users, pipe.execute()) if n}
