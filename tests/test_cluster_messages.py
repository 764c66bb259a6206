"""The distributed deployment's internal messages (imsrv/protocol/cluster.py): what a
gateway encodes a forwarder decodes, the acks carry results and errors both ways, and
the channel messages are what the Redis hub applies (imsrv/backends/redis_hub.py
``deliver``)."""
import json

import pytest

from imsrv.backends.redis_hub import RedisHub
from imsrv.core.messaging import SendRequest
from imsrv.protocol import cluster
from imsrv.protocol.errors import ImError, RateLimited


class SessionRef:
    def __init__(self, device, generation):
        self.device, self.generation = device, generation


def sends():
    phone = SessionRef("phone", 7)
    a = SendRequest("alice", {"t": 1}, '{"t":1}', to="bob", cmid="c-1", session=phone)
    b = SendRequest("alice", "x", '"x"', group="g1", session=phone)
    return [a, b]


def test_an_ingress_entry_decodes_to_what_was_sent():
    fields = cluster.encode_ingress_entry("gw0", "123.456.1", sends())
    assert list(fields) == [cluster.INGRESS_FIELD]
    raw = {k: v.decode() for k, v in fields.items()}   # as redis-py returns it (decode_responses)
    got = cluster.decode_ingress_entry(raw)
    assert got == ("gw0", "123.456.1", "alice", "phone", 7, [
        ['{"t":1}', "bob", None, "c-1"],
        ['"x"', None, "g1", None],
    ])
    assert cluster.entry_cmids(raw) == ["c-1"]
    assert cluster.entry_cmids({k.encode(): v for k, v in fields.items()}) == ["c-1"]   # bytes keys


def test_an_ingress_entry_holds_the_sends_of_one_session():
    a, b = sends()
    b.session = SessionRef("phone", 8)   # another session of the device
    with pytest.raises(ValueError):
        cluster.encode_ingress_entry("gw0", "k", [a, b])


def test_an_ack_carries_replies_and_errors():
    a, b = sends()
    a.result = {"op": "ack", "mid": 5, "seq": 3, "ts": 99}
    b.result = RateLimited("too fast", 2)
    [msg] = cluster.decode(cluster.encode([cluster.ack_message("k", [a, b])]))
    assert (msg["type"], msg["key"]) == (cluster.ACK, "k")
    assert msg["results"][0] == [5, 3, 99]   # a stored send: [mid, seq, ts]
    ok, err = (cluster.result_from_wire(r) for r in msg["results"])
    assert ok == a.result
    assert isinstance(err, ImError) and err.reply(4) == b.result.reply(4)


class Session:
    def __init__(self, user, device, generation):
        self.user, self.device, self.generation = user, device, generation
        self.pushed, self.owned, self.kicked = [], [], []

    def push(self, obj):
        self.pushed.append(obj)

    def own(self, seq):
        self.owned.append(seq)

    def kick(self, reason):
        self.kicked.append(reason)


class NoRedis:
    def register_script(self, script):
        return None


def test_the_hub_applies_pushes_and_kicks():
    hub = RedisHub(NoRedis(), "p", gateway="gw0")
    phone, pc = Session("alice", "phone", 7), Session("alice", "pc", 8)
    hub.local.by_user["alice"] = {"phone": phone, "pc": pc}
    obj = {"op": "msg", "seq": 4}
    for msg in cluster.decode(cluster.encode([cluster.push_message([["alice", obj, "phone", 7]])])):
        hub.deliver(msg)
    # the sending session (phone, 7) gets nothing: the ack of its send skips the seq there
    assert (phone.owned, phone.pushed, pc.pushed) == ([], [], [obj])
    hub.deliver(cluster.kick_message("alice", "pc", 7, "replaced"))    # an older generation: not this one
    hub.deliver(cluster.kick_message("alice", "phone", 7, "logout"))
    assert (phone.kicked, pc.kicked) == (["logout"], [])
    assert cluster.catch_up_message(["alice"]) == {"type": cluster.CATCH_UP, "users": ["alice"]}


def test_a_channel_publish_is_an_array_of_messages():
    kick = cluster.kick_message("alice", "pc", 7, "replaced")
    assert cluster.decode(cluster.encode([kick, cluster.catch_up_message(["bob"])])) == [
        kick, {"type": cluster.CATCH_UP, "users": ["bob"]}]
    with pytest.raises(ValueError):
        cluster.decode(cluster.encode(kick))   # a bare message is not a publish


def test_a_raw_body_goes_into_a_push_as_it_is():
    body = '{"t":1,"text":"h\\u00e9 \\"x\\""}'
    push = {"op": "msg", "body": cluster.raw_body(body)}
    assert cluster.decode(cluster.encode([push]))[0]["body"] == json.loads(body)


def test_v1_1_sends_carry_their_kind_ref_reply_to_and_mentions():
    """A recall / edit / reaction travels as a send with a fifth element naming its kind
    and ref; a send with reply_to / mentions too; a plain send keeps its four elements.
    The forwarder rebuilds the same SendRequests (ForwarderProcess._requests)."""
    from imsrv.servers.forwarder_daemon import ForwarderProcess

    phone = SessionRef("phone", 7)
    reqs = [SendRequest("alice", "x", '"x"', to="bob", session=phone),
            SendRequest("alice", None, "null", cmid="r", session=phone, kind="recall", ref=12),
            SendRequest("alice", {"emoji": "👍", "on": False}, '{"emoji":"👍","on":false}', session=phone,
                        kind="reaction", ref=13),
            SendRequest("alice", "y", '"y"', group="g1", session=phone, reply_to=5, mentions=["all"])]
    fields = cluster.encode_ingress_entry("gw0", "k", reqs)
    raw = {k: v.decode() for k, v in fields.items()}
    sends = cluster.decode_ingress_entry(raw)[5]
    assert sends == [['"x"', "bob", None, None],
                     ["null", None, None, "r", {"kind": "recall", "ref": 12}],
                     ['{"emoji":"👍","on":false}', None, None, None, {"kind": "reaction", "ref": 13}],
                     ['"y"', None, "g1", None, {"reply_to": 5, "mentions": ["all"]}]]
    assert cluster.entry_cmids(raw) == ["r"]
    got = ForwarderProcess._requests("gw0", "k", "alice", "phone", 7, sends)
    for want, req in zip(reqs, got):
        assert (req.sender, req.to, req.group, req.cmid, req.body_json, req.kind, req.ref, req.reply_to,
                req.mentions) == (want.sender, want.to, want.group, want.cmid, want.body_json, want.kind,
                                  want.ref, want.reply_to, want.mentions)
        assert (req.session.device, req.session.generation) == ("phone", 7)
    assert [r.implicit for r in got] == ["gw0.k.0", None, "gw0.k.2", "gw0.k.3"]
    for bad in (["null", None, None, None, {"kind": "recall", "notify_to": ["x"]}],
                ["null", None, None, None, ["recall"]]):
        with pytest.raises(ValueError):
            cluster.send_extras(bad)


def test_a_group_event_or_notify_never_goes_into_an_ingress_entry():
    req = SendRequest("alice", {"event": "left"}, '{"event":"left"}', group="g1", kind="group_event",
                      notify_to=["bob"], session=SessionRef("phone", 7))
    with pytest.raises(ValueError):
        cluster.encode_ingress_entry("gw0", "k", [req])
