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


class Ref:
    """The sending session as a forwarder knows it (imsrv.backends.redis_hub.SessionRef)."""

    def __init__(self, device, generation):
        self.device, self.generation = device, generation


def published(r, prefix, gateways, action):
    """Run ``action()``; -> {gateway: [channel message, ...]} published on their channels."""
    from imsrv.protocol import cluster
    pubsub = r.pubsub()
    pubsub.subscribe(*[f"{prefix}:gw:{gw}" for gw in gateways])
    confirmed = 0
    while confirmed < len(gateways):
        msg = pubsub.get_message(timeout=1.0)
        confirmed += msg is not None and msg["type"] == "subscribe"
    action()
    got = {}
    while True:
        msg = pubsub.get_message(timeout=0.3)
        if msg is None:
            break
        got.setdefault(msg["channel"].rsplit(":", 1)[1], []).extend(cluster.decode(msg["data"]))
    pubsub.close()
    return got


def test_a_batch_is_one_publish_per_gateway_and_skips_the_sending_session(redis_url):
    """Pushes and acks for one gateway go out together; the sending session gets no push
    (its ack skips the seq), its user's other sessions do; a gateway holding only the
    sending session gets nothing."""
    r = redislib.Redis.from_url(str(redis_url), decode_responses=True)
    prefix = redis_url.prefix + "hub2"
    gw0, gw1 = RedisHub(r, prefix, gateway="gw0"), RedisHub(r, prefix, gateway="gw1")
    alice_phone, alice_pc, bob, carol = Session("alice", "phone"), Session("alice", "pc"), Session("bob"), \
        Session("carol")
    gw0.attach(alice_phone)
    gw1.attach(alice_pc)
    gw1.attach(bob)
    gw0.attach(carol)
    forwarder = RedisHub(r, prefix)
    msg = {"op": "msg", "seq": 1}
    ack = {"type": "ack", "key": "k", "results": [[1, 1, 1]]}

    def batch():
        with forwarder.collect() as pushes:
            with forwarder.batch():   # the core's batch() inside collect(): collected too
                forwarder.push("bob", msg)
                forwarder.push("alice", msg, skip=Ref("phone", alice_phone.generation))
                forwarder.push("carol", msg, skip=Ref("d1", carol.generation))
        assert len(pushes) == 3
        forwarder.send(pushes, {"gw0": [ack]})

    got = published(r, prefix, ["gw0", "gw1"], batch)
    assert got["gw0"] == [ack]   # alice's phone and carol sent: no push there
    [push] = got["gw1"]
    assert push["type"] == "push"
    assert push["deliveries"] == [["bob", msg, None, None], ["alice", msg, "phone", alice_phone.generation]]
