"""Rate limiting without I/O: token buckets and windowed failure counters, and the
:class:`Limits` the core is built with.

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


class LoginThrottle:
    """Failed-login throttling that an attacker cannot turn against the account's owner.

    Three limits, each a failure window (``make(name, limit, window)`` builds one: a
    :class:`FailureWindow` here, a Redis-shared one in the distributed deployment):

    - ``user_addr``: failures for one user name from one address, ``login_user_attempts``
      per ``login_window`` s (10 per 60 s): an online guesser is slowed down, and nobody
      else is touched by it;
    - ``addr``: failures from one address for any user names, ``login_addr_attempts`` per
      ``login_window`` s (50 per 60 s): one address spraying many names;
    - ``user``: failures for one user name from every address,
      ``login_user_global_attempts`` per ``login_user_global_window`` s (100 per 900 s): a
      guesser spread over many addresses.  Past it, the user's logins are refused only from
      the addresses that failed for that user within that window; an address with no such
      failure (the owner's, usually) still gets through (OWASP: the attacker must not be
      able to lock the owner out).

    Refused attempts are not verified and not counted.  A correct password clears its
    (user, address) counts, never the user's global count (the owner logging in must not
    give a guesser a fresh allowance).  ``check`` -> (seconds to wait, limit name) or
    (0.0, None)."""

    def __init__(self, limits, make=None):
        make = make or (lambda name, limit, window: FailureWindow(limit, window))
        glimit = getattr(limits, "login_user_global_attempts", 100)
        gwindow = getattr(limits, "login_user_global_window", 900.0)
        self.pair = make("login_pair", limits.login_user_attempts, limits.login_window)
        self.addr = make("login_addr", limits.login_addr_attempts, limits.login_window)
        self.user = make("login_user", glimit, gwindow)
        self.seen = make("login_seen", 1, gwindow)   # "this address failed for this user lately"

    @staticmethod
    def _pair(user, addr):
        return f"{user}|{addr}"

    def check(self, user, addr, now):
        pair = self._pair(user, addr)
        wait = self.pair.blocked_for(pair, now)
        if wait > 0:
            return wait, "user_addr"
        wait = self.addr.blocked_for(addr, now)
        if wait > 0:
            return wait, "addr"
        wait = self.user.blocked_for(user, now)
        if wait > 0:
            seen = self.seen.blocked_for(pair, now)
            if seen > 0:
                return min(wait, seen), "user"
        return 0.0, None

    def failed(self, user, addr, now):
        pair = self._pair(user, addr)
        self.pair.failed(pair, now)
        self.addr.failed(addr, now)
        self.user.failed(user, now)
        self.seen.failed(pair, now)

    def succeeded(self, user, addr):
        pair = self._pair(user, addr)
        self.pair.reset(pair)
        self.seen.reset(pair)


class LogGate:
    """At most one log line per key every ``every`` seconds (a flood of refused sends must
    not flood the log): ``gate.due(key, now)`` -> None (stay quiet) or the number of events
    since the last line (this one included)."""

    def __init__(self, every=10.0, max_keys=10000):
        self.every = float(every)
        self.max_keys = max_keys
        self.entries = {}  # key -> [last logged, events since]

    def due(self, key, now):
        e = self.entries.get(key)
        if e is not None and now - e[0] < self.every:
            e[1] += 1
            return None
        if e is None and len(self.entries) >= self.max_keys:
            for k in [k for k, v in self.entries.items() if now - v[0] >= self.every]:
                del self.entries[k]
            if len(self.entries) >= self.max_keys:
                self.entries.clear()
        count = 1 if e is None else e[1] + 1
        self.entries[key] = [now, 0]
        return count


class Limits:
    """The per-user limits the core applies: ``send_buckets`` (``take(user, now)`` -> 0.0 or
    seconds to wait; the send rate of a user over all their devices) and
    ``login_throttle`` (a :class:`LoginThrottle`).  :meth:`in_process` keeps them in this
    process (embedded server, tests); imsrv.backends.redis_limits.shared_limits keeps them
    in Redis, shared by every process of the distributed deployment."""

    __slots__ = ("send_buckets", "login_throttle")

    def __init__(self, send_buckets, login_throttle):
        self.send_buckets = send_buckets
        self.login_throttle = login_throttle

    @classmethod
    def in_process(cls, limits):
        """From the ``[limits]`` config section."""
        return cls(BucketMap(limits.user_send_rate, limits.user_send_burst), LoginThrottle(limits))
