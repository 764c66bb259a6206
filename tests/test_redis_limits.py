"""Shared rate limits in a real Redis (the tests' own key prefix)."""
import redis as redislib

from imsrv.backends.redis_limits import RedisBucketMap, RedisFailureWindow


def client(url):
    return redislib.Redis.from_url(str(url), decode_responses=True)


def test_bucket_allows_the_burst_then_says_how_long_to_wait(redis_url):
    r = client(redis_url)
    b = RedisBucketMap(r, redis_url.prefix + "t1", "send", rate=10, burst=5)
    assert [b.take("alice") for _ in range(5)] == [0.0] * 5
    wait = b.take("alice")
    assert 0 < wait <= 0.1 + 1e-6
    assert b.take("bob") == 0.0  # per key
    other_process = RedisBucketMap(r, redis_url.prefix + "t1", "send", rate=10, burst=5)
    assert other_process.take("alice") > 0  # the state is shared


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_tokens_are_leased_a_few_at_a_time(redis_url):
    """One round trip per LEASE sends, not per send; the burst holds exactly for one process."""
    r = client(redis_url)
    b = RedisBucketMap(r, redis_url.prefix + "t3", "send", rate=0.001, burst=40, lease=8)
    calls = []
    real = b._lease_tokens
    b._lease_tokens = lambda **kw: calls.append(kw["args"][2]) or real(**kw)
    assert [b.take("alice") for _ in range(40)] == [0.0] * 40
    assert len(calls) == 5 and calls == [8] * 5
    assert b.take("alice") > 0


def test_leases_are_shared_fairly_and_expire(redis_url):
    r = client(redis_url)
    clock = Clock()
    a = RedisBucketMap(r, redis_url.prefix + "t4", "send", rate=0.001, burst=20, lease=8, clock=clock)
    b = RedisBucketMap(r, redis_url.prefix + "t4", "send", rate=0.001, burst=20, lease=8, clock=clock)
    assert a.take("carol") == 0.0            # a holds 7 more
    assert [b.take("carol") for _ in range(12)] == [0.0] * 12
    assert b.take("carol") > 0               # Redis is empty: a's lease is the rest
    clock.t += 2.0                           # a's 7 leased tokens expire unused
    assert a.take("carol") > 0


def test_a_busy_key_gets_larger_leases_and_an_idle_one_smaller(redis_url):
    """A lease spent while fresh doubles the next (up to burst / 8, MAX_LEASE at most); one
    left to expire halves it: round trips per send fall as a user sends faster."""
    r = client(redis_url)
    clock = Clock()
    b = RedisBucketMap(r, redis_url.prefix + "t5", "send", rate=1e6, burst=1e6, lease=8, clock=clock)
    calls = []
    real = b._lease_tokens
    b._lease_tokens = lambda **kw: calls.append(kw["args"][2]) or real(**kw)
    assert [b.take("dave") for _ in range(8 + 16 + 32 + 64 + 1)] == [0.0] * 121
    assert calls == [8, 16, 32, 64, 128]
    clock.t += 2.0                           # 127 leased tokens expire unused
    assert b.take("dave") == 0.0 and calls[-1] == 64
    assert b.max_lease == 1024
    # a small burst keeps small leases: at most burst / 8 (LEASE at least)
    assert RedisBucketMap(r, redis_url.prefix + "t5", "send", rate=50, burst=100).max_lease == 12
    assert RedisBucketMap(r, redis_url.prefix + "t5", "send", rate=10, burst=40, lease=8).max_lease == 8


def test_failure_window_blocks_after_the_limit_and_expires(redis_url):
    r = client(redis_url)
    w = RedisFailureWindow(r, redis_url.prefix + "t2", "login", limit=3, window=60)
    for _ in range(2):
        w.failed("alice")
    assert w.blocked_for("alice") == 0.0
    w.failed("alice")
    assert 0 < w.blocked_for("alice") <= 60
    assert 0 < r.ttl(f"{redis_url.prefix}t2:rl:login:{{alice}}") <= 60
    w.reset("alice")
    assert w.blocked_for("alice") == 0.0


def test_limits_fail_open_when_redis_is_down():
    r = redislib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, decode_responses=True)
    assert RedisBucketMap(r, "x", "send", 1, 1).take("alice") == 0.0
    w = RedisFailureWindow(r, "x", "login", 1, 60)
    w.failed("alice")
    assert w.blocked_for("alice") == 0.0


class Limits:
    login_user_attempts = 3
    login_addr_attempts = 6
    login_window = 60.0
    login_user_global_attempts = 5
    login_user_global_window = 900.0


def test_login_throttle_shared_in_redis_spares_the_owner(redis_url):
    """Defect 9 in the distributed deployment: the throttle's windows live in Redis, shared
    by every API process, and still never refuse an address with no failure for the user."""
    from imsrv.backends.redis_limits import login_throttle

    r = client(redis_url)
    api1 = login_throttle(r, redis_url.prefix + "t5", Limits)
    api2 = login_throttle(r, redis_url.prefix + "t5", Limits)   # another API process
    for _ in range(3):
        assert api1.check("alice", "10.0.0.1", None) == (0.0, None)
        api1.failed("alice", "10.0.0.1", None)
    wait, limit = api2.check("alice", "10.0.0.1", None)
    assert limit == "user_addr" and 0 < wait <= 60
    assert api2.check("alice", "10.0.0.2", None) == (0.0, None)   # the owner, elsewhere
    assert api2.check("bob", "10.0.0.1", None) == (0.0, None)
    api2.failed("alice", "10.0.0.3", None)
    api2.failed("alice", "10.0.0.3", None)                      # 5 for alice: the global limit
    wait, limit = api1.check("alice", "10.0.0.3", None)
    assert limit == "user" and 60 < wait <= 900
    assert api1.check("alice", "10.0.0.2", None) == (0.0, None)   # still no failure from there
    api1.succeeded("alice", "10.0.0.3")
    assert api2.check("alice", "10.0.0.3", None) == (0.0, None)
    assert r.ttl(f"{redis_url.prefix}t5:rl:login_user:{{alice}}") > 60


def test_shared_limits_are_the_cores(redis_url):
    """The distributed daemons build their App with shared_limits: the send buckets and
    the login throttle are in Redis."""
    from imsrv import config
    from imsrv.backends import open_store
    from imsrv.backends.memory import LocalHub
    from imsrv.backends.redis_limits import RedisBucketMap, shared_limits
    from imsrv.core.app import App

    cfg = config.load(env={})
    store = open_store("sqlite:///:memory:")
    try:
        app = App(cfg, store, LocalHub(), limits=shared_limits(client(redis_url), redis_url.prefix + "t6", cfg.limits))
        assert isinstance(app.limits.send_buckets, RedisBucketMap)
        assert isinstance(app.accounts.throttle.pair, RedisFailureWindow)
        assert isinstance(app.accounts.throttle.user, RedisFailureWindow)
        assert app.accounts.throttle.user.window == cfg.limits.login_user_global_window
    finally:
        store.close()


def test_limits_fail_open_with_one_log_line_per_interval(monkeypatch):
    """Redis down (a port nobody listens on: real refused connections): every check lets
    the request through, and the log says so once per limit per interval, with the count
    of checks that failed open, not once per check."""
    import io
    import socket

    from imsrv import logs
    from imsrv.backends import redis_limits

    with socket.socket() as s:          # a free port, closed again: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = redislib.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    gate = redis_limits.LogGate(redis_limits.FAIL_OPEN_LOG_EVERY)
    monkeypatch.setattr(redis_limits, "_fail_open_log", gate)
    out = io.StringIO()
    monkeypatch.setattr(logs, "_stream", out)
    bucket = RedisBucketMap(down, "imsrv_test_down", "send", rate=1, burst=1)
    window = RedisFailureWindow(down, "imsrv_test_down", "login", limit=1, window=60)
    assert [bucket.take("alice") for _ in range(20)] == [0.0] * 20
    assert [window.blocked_for("alice") for _ in range(5)] == [0.0] * 5
    window.failed("alice")
    window.reset("alice")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines      # one per limit (send, login), not 27
    assert all("event=rate_limit_unavailable" in ln and "failed_open=1" in ln for ln in lines), lines
    # an interval later, the next line counts every check that failed open meanwhile
    later = gate.entries["imsrv_test_down:rl:send"][0] + redis_limits.FAIL_OPEN_LOG_EVERY
    redis_limits.fail_open("imsrv_test_down:rl:send", "take", OSError("down"), now=later)
    assert "failed_open=20" in out.getvalue().splitlines()[-1]
