"""RedisHub against a real Redis (the tests' own key prefix): routing-table upkeep."""
import redis as redislib

from imsrv.backends.redis_hub import RedisHub


class Session:
    """A stand-in for a gateway session (what the hub reads and calls)."""

    def __init__(self, user, device="d1"):
        self.user, self.device = user, device
        self.token_hash = None
        self.generation = 0
        self.status, self.text = "online", None
        self.kicked = []

    def kick(self, reason):
        self.kicked.append(reason)


def test_routes_no_local_session_backs_are_forgotten(redis_url):
    """A detach that failed (Redis unreachable) leaves a route behind; the gateway's next
    check removes it and reports who is offline now.  Live sessions keep theirs."""
    r = redislib.Redis.from_url(str(redis_url), decode_responses=True)
    hub = RedisHub(r, redis_url.prefix + "hub1", gateway="gw0")
    alice, bob_phone, bob_pc = Session("alice"), Session("bob", "phone"), Session("bob", "pc")
    for s in (alice, bob_phone, bob_pc):
        hub.attach(s)
    assert hub.is_online("alice") and hub.is_online("bob")
    # their connections ended while Redis was away: gone locally, still routed
    del hub.local.by_user["alice"]
    del hub.local.by_user["bob"]["phone"]
    assert hub.forget_stale_routes() == ["alice"]
    assert not hub.is_online("alice")
    assert set(hub.routes("bob")) == {"pc"}
    assert hub.forget_stale_routes() == []          # nothing left to forget
    hub.detach(bob_pc)
    assert not hub.is_online("bob")
