"""Gateway sessions push `msg`s strictly in inbox-seq order (guarantee 3), whatever order
the pushes arrive in, and fill a gap that does not close from the inbox."""
import gevent

from imsrv.servers import gateway
from imsrv.servers.gateway import Session


class Conn:
    closing = False

    def __init__(self):
        self.sent = []

    def send(self, obj):
        self.sent.append(obj)


def msg(seq):
    return {"op": "msg", "seq": seq, "mid": 100 + seq, "from": "bob", "to": "alice", "body": seq, "ts": 0}


def seqs(conn):
    return [o["seq"] for o in conn.sent if o["op"] == "msg"]


def test_pushes_before_auth_finished_wait_for_the_head():
    c = Conn()
    s = Session(c, "alice", "d", "th")
    s.push(msg(5))
    s.push(msg(6))
    assert c.sent == []
    s.start_at(5)           # head was 5: seq 5 was already in the inbox before auth
    assert seqs(c) == [6]


def test_out_of_order_pushes_are_reordered_and_duplicates_dropped():
    c = Conn()
    s = Session(c, "alice", "d", "th", fetch=lambda *a: [])
    s.start_at(0)
    for q in (2, 3, 1, 3, 1, 4):
        s.push(msg(q))
    assert seqs(c) == [1, 2, 3, 4]


def test_own_sends_are_skipped_in_order():
    c = Conn()
    s = Session(c, "alice", "d", "th", fetch=lambda *a: [])
    s.start_at(0)
    s.push(msg(2))
    s.own(1)                # this device sent seq 1: it got the ack, not a push
    s.push(msg(3))
    assert seqs(c) == [2, 3]


def test_a_gap_that_does_not_close_is_filled_from_the_inbox(monkeypatch):
    monkeypatch.setattr(gateway, "GAP_WAIT", 0.01)
    inbox = {q: msg(q) for q in range(1, 6)}
    fetched = []

    def fetch(user, since, limit):
        fetched.append((user, since, limit))
        return [inbox[q] for q in range(since + 1, min(5, since + limit) + 1)]

    c = Conn()
    s = Session(c, "alice", "d", "th", fetch=fetch)
    s.start_at(0)
    s.push(msg(1))
    s.push(msg(4))          # 2 and 3 were lost on the way
    s.push(msg(5))
    assert seqs(c) == [1]
    gevent.sleep(0.05)      # let the gap timer fire (the only observable is time)
    assert seqs(c) == [1, 2, 3, 4, 5]
    assert fetched == [("alice", 1, 2)]


def test_catch_up_pushes_everything_after_the_cursor():
    inbox = [msg(q) for q in range(1, 8)]
    c = Conn()
    s = Session(c, "alice", "d", "th", fetch=lambda u, since, limit: [m for m in inbox if m["seq"] > since][:limit])
    s.start_at(3)
    s.catch_up()
    assert seqs(c) == [4, 5, 6, 7]
