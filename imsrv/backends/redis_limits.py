"""Rate-limit state shared by every process of the distributed deployment, in Redis.

Same methods as the in-process :class:`imsrv.core.ratelimit.BucketMap` and
:class:`~imsrv.core.ratelimit.FailureWindow`, so the core does not know which it has: a
user's sends are counted over all the gateways their devices are on, failed logins over
all API daemons.  Keys (``P`` = prefix) expire by themselves:

    P:rl:<name>:{<key>}    hash {tokens, stamp} (bucket) or int (failure count)

Login throttling (:class:`~imsrv.core.ratelimit.LoginThrottle`) uses four failure windows:
``login_pair`` ({user|address}), ``login_addr`` ({address}), ``login_user`` ({user}) and
``login_seen`` ({user|address}, "failed lately").

A process takes send tokens from Redis a few at a time (a lease, spent locally within
LEASE_TTL), not one round trip per message: the send bucket is checked for every `send`,
on the gateway's hot path.  A key that spends its lease while it is still fresh gets a
lease twice as large the next time, up to an eighth of the burst (MAX_LEASE at most); one
left to expire makes the next half as large (LEASE at least): a user sending thousands a
second costs a round trip per few hundred sends, one sending now and then LEASE tokens at
a time.  The price: tokens a process leased and did not use within LEASE_TTL are lost, so
a user sending from several gateways at once may be held to up to a lease - 1 tokens
fewer per gateway than the configured burst.
"""
import time

from .. import logs
from ..core.ratelimit import Limits, LogGate, LoginThrottle

LEASE = 8          # tokens a process takes from a bucket in one round trip (at first)
MAX_LEASE = 1024   # ... at most, for a key that spends its leases fast
LEASE_TTL = 1.0    # seconds leased tokens stay usable in the process
MAX_LEASES = 20000 # bound on the per-process lease table
FAIL_OPEN_LOG_EVERY = 10.0  # seconds between rate_limit_unavailable lines of one limit

#: limits fail open while Redis is down: one line per limit per interval says so (with
#: how many checks failed open since the last line), not one per refused round trip
_fail_open_log = LogGate(FAIL_OPEN_LOG_EVERY)


def fail_open(limit, what, exc, now=None):
    """Log (at most once per FAIL_OPEN_LOG_EVERY per limit) that ``limit``'s ``what`` failed
    on ``exc`` and was let through."""
    count = _fail_open_log.due(limit, time.monotonic() if now is None else now)
    if count is not None:
        logs.warning("rate_limit_unavailable", limit=limit, call=what, failed_open=count, error=repr(exc))

# Up to ARGV[3] tokens of a token bucket in one round trip; Redis's clock, so every
# process agrees.  -> {tokens granted (whole, maybe 0), seconds until one is available}
LEASE_TOKENS = """
local rate, burst, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens, stamp = tonumber(b[1]), tonumber(b[2])
if tokens == nil then tokens, stamp = burst, now end
if now > stamp then tokens = math.min(burst, tokens + (now - stamp) * rate); stamp = now end
local grant = math.min(n, math.floor(tokens))
local wait = 0
if grant >= 1 then tokens = tokens - grant else grant = 0; wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(stamp))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {grant, tostring(wait)}
"""


class RedisBucketMap:
    def __init__(self, redis, prefix, name, rate, burst, lease=LEASE, clock=time.monotonic):
        self.r = redis
        self.base = f"{prefix}:rl:{name}"
        self.rate = float(rate)
        self.burst = float(burst)
        self.lease = max(1, min(int(lease), int(burst)))
        self.max_lease = max(self.lease, min(MAX_LEASE, int(burst) // 8))
        self.clock = clock
        self.leases = {}   # key -> [tokens left, usable until (clock), size of the last lease]
        self._lease_tokens = redis.register_script(LEASE_TOKENS)

    def take(self, key, now=None, n=1):
        """Take ``n`` (whole) tokens -> 0.0 if allowed, else seconds until it would be.
        Fails open if Redis is down: a limit must not turn an outage of the cache into an
        outage of messaging."""
        t = self.clock()
        held = self.leases.get(key)
        size = self.lease
        if held is not None:
            if held[1] > t:
                if held[0] >= n:
                    held[0] -= n
                    return 0.0
                size = min(held[2] * 2, self.max_lease)   # spent while fresh: a busy key
            else:
                size = max(self.lease, held[2] // 2)      # left to expire
        try:
            granted, wait = self._lease_tokens(keys=[f"{self.base}:{{{key}}}"],
                                               args=[self.rate, self.burst, max(n, size)])
        except Exception as exc:
            fail_open(self.base, "take", exc)
            return 0.0
        granted = int(granted)
        if held is not None and held[1] > t:
            granted += held[0]   # what is left of the current lease counts too
        if granted < n:
            # not enough: keep what we got for the next try
            self._keep(key, granted, t, size)
            return max(float(wait), (n - granted) / self.rate)
        self._keep(key, granted - n, t, size)
        return 0.0

    def _keep(self, key, tokens, t, size):
        if tokens <= 0 and size <= self.lease:
            self.leases.pop(key, None)
            return
        if len(self.leases) >= MAX_LEASES and key not in self.leases:
            for k in [k for k, v in self.leases.items() if v[1] <= t]:
                del self.leases[k]
            if len(self.leases) >= MAX_LEASES:
                self.leases.clear()   # all live: dropping leases only makes limits stricter
        self.leases[key] = [tokens, t + LEASE_TTL, size]


class RedisFailureWindow:
    def __init__(self, redis, prefix, name, limit, window):
        self.r = redis
        self.base = f"{prefix}:rl:{name}"
        self.limit = int(limit)
        self.window = float(window)

    def _key(self, key):
        return f"{self.base}:{{{key}}}"

    def blocked_for(self, key, now=None):
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.get(self._key(key))
            pipe.pttl(self._key(key))
            count, ttl = pipe.execute()
        except Exception as exc:
            fail_open(self.base, "blocked_for", exc)
            return 0.0
        if count is None or int(count) < self.limit:
            return 0.0
        return max(ttl, 1) / 1000.0

    def failed(self, key, now=None):
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.incr(self._key(key))
            pipe.expire(self._key(key), int(self.window + 0.999), nx=True)
            pipe.execute()
        except Exception as exc:
            fail_open(self.base, "failed", exc)

    def reset(self, key):
        try:
            self.r.delete(self._key(key))
        except Exception as exc:   # the window then runs out by itself (it expires)
            fail_open(self.base, "reset", exc)


def login_throttle(redis, prefix, limits):
    """A LoginThrottle whose windows are shared by every API process."""
    return LoginThrottle(limits, make=lambda name, limit, window: RedisFailureWindow(
        redis, prefix, name, limit, window))


def shared_limits(redis, prefix, limits):
    """The core's Limits (imsrv.core.ratelimit.Limits) kept in Redis, shared by every
    process of the distributed deployment; ``limits`` is the [limits] config section."""
    return Limits(RedisBucketMap(redis, prefix, "send", limits.user_send_rate, limits.user_send_burst),
                  login_throttle(redis, prefix, limits))
