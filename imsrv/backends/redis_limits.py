"""Rate-limit state shared by every process of the distributed deployment, in Redis.

Same methods as the in-process :class:`imsrv.core.ratelimit.BucketMap` and
:class:`~imsrv.core.ratelimit.FailureWindow`, so the core does not know which it has: a
user's sends are counted over all the gateways their devices are on, failed logins over
all API daemons.  Keys (``P`` = prefix) expire by themselves:

    P:rl:<name>:{<key>}    hash {tokens, stamp} (bucket) or int (failure count)
"""
from .. import logs

# A token bucket in one round trip; Redis's clock, so every process agrees.
TAKE = """
local rate, burst, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens, stamp = tonumber(b[1]), tonumber(b[2])
if tokens == nil then tokens, stamp = burst, now end
if now > stamp then tokens = math.min(burst, tokens + (now - stamp) * rate); stamp = now end
local wait = 0
if tokens >= n then tokens = tokens - n else wait = (n - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(stamp))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""


class RedisBucketMap:
    def __init__(self, redis, prefix, name, rate, burst):
        self.r = redis
        self.base = f"{prefix}:rl:{name}"
        self.rate = float(rate)
        self.burst = float(burst)
        self._take = redis.register_script(TAKE)

    def take(self, key, now=None, n=1.0):
        """-> 0.0 if allowed, else seconds until it would be.  Fails open if Redis is down:
        a limit must not turn an outage of the cache into an outage of messaging."""
        try:
            return float(self._take(keys=[f"{self.base}:{{{key}}}"], args=[self.rate, self.burst, n]))
        except Exception as exc:
            logs.warning("rate_limit_unavailable", limit=self.base, error=repr(exc))
            return 0.0


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
            logs.warning("rate_limit_unavailable", limit=self.base, error=repr(exc))
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
            logs.warning("rate_limit_unavailable", limit=self.base, error=repr(exc))

    def reset(self, key):
        try:
            self.r.delete(self._key(key))
        except Exception:
            pass


def install(app, redis, prefix):
    """Swap the App's in-process limits for the shared ones."""
    lim = app.cfg.limits
    app.send_buckets = RedisBucketMap(redis, prefix, "send", lim.user_send_rate, lim.user_send_burst)
    app.accounts.user_failures = RedisFailureWindow(redis, prefix, "login_user", lim.login_user_attempts,
                                                    lim.login_window)
    app.accounts.addr_failures = RedisFailureWindow(redis, prefix, "login_addr", lim.login_addr_attempts,
                                                    lim.login_window)
