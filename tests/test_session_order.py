"""Gateway sessions push `msg`s strictly in inbox-seq order (guarantee 3), whatever order
the pushes arrive in, and fill a gap that does not close from the inbox.

The session (imsrv/core/session.py) is sans-IO: its gap timer is armed through the
``schedule`` it is given.  Here that is a fake clock (``timers``): a test sees which timers
are armed and fires them itself (GAP_WAIT "has passed") instead of sleeping."""
import pytest

from imsrv.core.session import GAP_WAIT, Session


class Timer:
    def __init__(self, seconds, fn):
        self.seconds, self.fn = seconds, fn


class FakeClock:
    """``schedule(delay, fn) -> cancel`` on a manual clock."""

    def __init__(self):
        self.pending = []

    def schedule(self, seconds, fn):
        timer = Timer(seconds, fn)
        self.pending.append(timer)
        return lambda: self.pending.remove(timer)

    def fire(self):
        """The time of every armed timer has come: run them (in the order armed)."""
        due, self.pending = self.pending, []
        for timer in due:
            timer.fn()


@pytest.fixture
def timers():
    return FakeClock()


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


def test_a_gap_that_does_not_close_is_filled_from_the_inbox(timers):
    inbox = {q: msg(q) for q in range(1, 6)}
    fetched = []

    def fetch(user, since, limit):
        fetched.append((user, since, limit))
        return [inbox[q] for q in range(since + 1, min(5, since + limit) + 1)]

    c = Conn()
    s = Session(c, "alice", "d", "th", fetch=fetch, schedule=timers.schedule)
    s.start_at(0)
    s.push(msg(1))
    s.push(msg(4))          # 2 and 3 were lost on the way
    s.push(msg(5))
    assert seqs(c) == [1]
    assert [t.seconds for t in timers.pending] == [GAP_WAIT]   # one gap timer armed
    assert fetched == []
    timers.fire()           # GAP_WAIT has passed and 2, 3 never came
    assert seqs(c) == [1, 2, 3, 4, 5]
    assert fetched == [("alice", 1, 2)]
    assert timers.pending == [] and s.cancel_gap_timer is None


def test_a_gap_that_closes_in_time_cancels_its_timer(timers):
    fetched = []
    c = Conn()
    s = Session(c, "alice", "d", "th", fetch=lambda *a: fetched.append(a) or [], schedule=timers.schedule)
    s.start_at(0)
    s.push(msg(2))
    s.push(msg(3))
    assert seqs(c) == [] and len(timers.pending) == 1
    s.push(msg(1))          # the missing one arrives before GAP_WAIT
    assert seqs(c) == [1, 2, 3]
    assert timers.pending == [] and s.cancel_gap_timer is None and fetched == []


def test_catch_up_pushes_everything_after_the_cursor():
    inbox = [msg(q) for q in range(1, 8)]
    c = Conn()
    s = Session(c, "alice", "d", "th", fetch=lambda u, since, limit: [m for m in inbox if m["seq"] > since][:limit])
    s.start_at(3)
    s.catch_up()
    assert seqs(c) == [4, 5, 6, 7]
