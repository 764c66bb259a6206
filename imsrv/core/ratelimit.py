"""Rate limiting without I/O: token buckets and windowed failure counters.

Clocks are passed in (``now``, seconds, monotonic) so tests drive them directly.
"""
import math


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate, burst, now):
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now, n=1.0):
        """Take n tokens.  -> 0.0 on success, else the seconds until n would be available."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        if self.rate <= 0:
            return math.inf
        return (n - self.tokens) / self.rate


def retry_seconds(wait):
    """retry_after as the contract sends it: whole seconds, at least 1."""
    return max(1, int(math.ceil(wait)))


class BucketMap:
    """Token buckets by key (user, address...), pruned of full buckets so memory stays bounded."""

    def __init__(self, rate, burst, max_keys=100000):
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.buckets = {}

    def take(self, key, now, n=1.0):
        b = self.buckets.get(key)
        if b is None:
            if len(self.buckets) >= self.max_keys:
                self.prune(now)
            b = self.buckets[key] = TokenBucket(self.rate, self.burst, now)
        return b.take(now, n)

    def prune(self, now):
        full = [k for k, b in self.buckets.items()
                if b.tokens + (now - b.stamp) * b.rate >= b.burst]
        for k in full:
            del self.buckets[k]
        if len(self.buckets) >= self.max_keys:  # all busy: drop the oldest half
            for k in sorted(self.buckets, key=lambda k: self.buckets[k].stamp)[: len(self.buckets) // 2]:
                del self.buckets[k]


class FailureWindow:
    """Counts failures per key in a fixed window; blocked once ``limit`` is reached."""

    def __init__(self, limit, window, max_keys=100000):
        self.limit = limit
        self.window = float(window)
        self.max_keys = max_keys
        self.entries = {}  # key -> [window_start, count]

    def blocked_for(self, key, now):
        """Seconds until key may try again, 0.0 if it may try now."""
        e = self.entries.get(key)
        if e is None:
            return 0.0
        if now - e[0] >= self.window:
            del self.entries[key]
            return 0.0
        if e[1] >= self.limit:
            return self.window - (now - e[0])
        return 0.0

    def failed(self, key, now):
        e = self.entries.get(key)
        if e is None or now - e[0] >= self.window:
            if len(self.entries) >= self.max_keys:
                self.prune(now)
            self.entries[key] = [now, 1]
        else:
            e[1] += 1

    def reset(self, key):
        self.entries.pop(key, None)

    def prune(self, now):
        for k in [k for k, e in self.entries.items() if now - e[0] >= self.window]:
            del self.entries[k]
        if len(self.entries) >= self.max_keys:
            self.entries.clear()
