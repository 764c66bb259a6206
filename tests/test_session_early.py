"""A gateway session holds every push (and a kick) that reaches it before its auth reply
is queued, then sends them after the reply in arrival order (PROTOCOL.md: the reply to
`auth` is the first frame on a connection).  Unit level; the end-to-end churn test is
tests/e2e/test_auth_reply_first.py."""
from imsrv.core.session import Session


class Conn:
    closing = False
    peer = "test"

    def __init__(self):
        self.sent = []
        self.last = None

    def send(self, obj):
        self.sent.append(obj)

    def close_with(self, obj):
        self.last = obj
        self.closing = True


def msg(seq):
    return {"op": "msg", "seq": seq, "mid": 100 + seq, "from": "bob", "to": "alice", "body": seq, "ts": 0}


def test_pushes_before_the_reply_follow_it_in_order():
    c = Conn()
    s = Session(c, "alice", "d", "th")
    s.push({"op": "presence", "user": "bob", "status": "away"})
    s.push(msg(4))
    s.push({"op": "typing", "from": "bob"})
    assert c.sent == []
    c.send({"op": "ok", "user": "alice", "head": 3})   # the auth reply
    s.start_at(3)
    assert [o["op"] for o in c.sent] == ["ok", "presence", "typing", "msg"], c.sent
    s.push({"op": "presence", "user": "bob", "status": "online"})
    assert c.sent[-1]["status"] == "online"             # after start_at: at once


def test_a_kick_before_the_reply_comes_after_it():
    c = Conn()
    s = Session(c, "alice", "d", "th")
    s.push({"op": "presence", "user": "bob", "status": "away"})
    s.kick("replaced")
    s.push({"op": "presence", "user": "bob", "status": "online"})
    assert c.last is None and not c.closing
    c.send({"op": "ok", "user": "alice", "head": 0})
    s.start_at(0)
    assert [o["op"] for o in c.sent] == ["ok", "presence"], c.sent
    assert c.last == {"op": "kicked", "reason": "replaced"}
