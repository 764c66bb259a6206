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
