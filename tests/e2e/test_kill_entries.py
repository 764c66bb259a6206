"""Recalls and edits through a SIGKILL of the embedded server: every acked one is present
after the restart, in both inboxes, once, in order, with gapless seqs, and the messages'
state in history agrees with the entries stored (it is written in the same transaction).

The forwarder case of the distributed deployment is tests/dist/test_kill_entries.py; it
uses :class:`ChangeBurst` and :func:`check_changes` from here.  Contract: PROTOCOL.md
v1.1 "Inbox entries with a kind" (stored durably before the ack, idempotent by cmid) and
"Delivery guarantees" 1, 2, 5.
"""
import signal
import threading

import pytest

from harness.users import befriend, login, new_user
from harness.wire import Closed

from .test_guarantees import HIGH_LIMITS

pytestmark = pytest.mark.timeout(120)



def send_base(conn, to, n, prefix="b"):
    """``n`` messages to ``to``, pipelined -> their acks, in order."""
    ids = [conn.send_request("send", to=to, body={"base": k}, cmid=f"{prefix}{k}") for k in range(n)]
    acks = conn.read_replies(ids, 60)
    assert all(a["op"] == "ack" for a in acks), [a for a in acks if a["op"] != "ack"][:3]
    return acks


def change_op(k, base):
    """The k-th change of a burst: first an edit of each even-numbered base message and a
    recall of each odd-numbered one, in turn; then edits of the even-numbered ones again
    and again (as many as wanted)."""
    n = len(base)
    if k < n:
        i = k
    else:
        i = 2 * ((k - n) % ((n + 1) // 2))
    if i % 2:
        return "recall", {"mid": base[i]["mid"]}
    return "edit", {"mid": base[i]["mid"], "body": {"edit": k}}


class ChangeBurst:
    """Keeps ``window`` recalls and edits (change_op) in flight on one gateway connection, a
    new one for every ack.  ``acked``: cmid -> ack; ``sent``: every cmid written, in order;
    ``ops``: cmid -> (op, fields); ``pending``: request id -> cmid, unanswered."""

    def __init__(self, conn, base, prefix="x", window=30):
        self.conn, self.base, self.prefix, self.window = conn, base, prefix, window
        self.acked, self.sent, self.ops, self.pending = {}, [], {}, {}

    def _send_one(self):
        k = len(self.sent)
        op, fields = change_op(k, self.base)
        cmid = f"{self.prefix}{k}"
        self.sent.append(cmid)
        self.ops[cmid] = (op, fields)
        self.pending[self.conn.send_request(op, cmid=cmid, **fields)] = cmid

    def run(self, enough_at, enough, stop, timeout=10):
        """Send until ``stop`` is set, then read what is pending; set ``enough`` once
        ``enough_at`` acks arrived.  Closed / OSError propagate (the connection ended), as
        does a reply that is not an ack."""
        for _ in range(self.window):
            self._send_one()
        while self.pending:
            rid = next(iter(self.pending))
            reply = self.conn.read_replies([rid], timeout)[0]
            assert reply["op"] == "ack", reply
            self.acked[self.pending.pop(rid)] = reply
            if len(self.acked) >= enough_at:
                enough.set()
            if not stop.is_set():
                self._send_one()


def history_all(user, peer):
    """Every history item of ``user``'s conversation with ``peer``, newest first."""
    out, before = [], None
    with user.server.api() as c:
        while True:
            fields = {"with": peer.name, "limit": 200}
            if before is not None:
                fields["before"] = before
            page = c.call("history", token=user.token, **fields)["msgs"]
            out.extend(page)
            if len(page) < 200:
                return out
            before = page[-1]["mid"]


def check_changes(actor, peer, base, burst, conns):
    """After the fault: in both inboxes (``conns``: {user name: gateway connection}) seqs
    are gapless, every acked change is present (the actor's at its acked seq), the changes
    stored are a prefix of those sent, each once and as sent (kind, ref, body); history
    shows each base message in the state its stored changes give it.  -> stored cmids."""
    stored = None
    for user in (actor, peer):
        msgs, head = conns[user.name].sync_all(0)
        assert [m["seq"] for m in msgs] == list(range(1, head + 1)), f"{user.name}: seqs not gapless"
        changes = [m for m in msgs if m.get("kind")]
        cmids = [m["cmid"] for m in changes]
        assert len(set(cmids)) == len(cmids), f"{user.name}: a change stored twice"
        assert cmids == burst.sent[:len(cmids)], f"{user.name}: stored changes are not a prefix of those sent"
        missing = [c for c in burst.acked if c not in cmids]
        assert not missing, f"{user.name}: {len(missing)} acked changes lost, e.g. {missing[:5]}"
        for m in changes:
            op, fields = burst.ops[m["cmid"]]
            assert (m["kind"], m["ref"], m["from"]) == (op, fields["mid"], actor.name), m
            assert m["body"] == fields.get("body"), m
        if user is actor:
            by_seq = {m["seq"]: m["mid"] for m in msgs}
            for ack in burst.acked.values():
                assert by_seq.get(ack["seq"]) == ack["mid"], f"ack {ack} does not point at its entry"
        if stored is None:
            stored = cmids
        assert cmids == stored, "the two inboxes hold different changes"
    state = {}   # base mid -> ("recalled", None) / ("edited", body)
    for cmid in stored:
        op, fields = burst.ops[cmid]
        state[fields["mid"]] = ("recalled", None) if op == "recall" else ("edited", fields["body"])
    for user, other in ((actor, peer), (peer, actor)):
        hist = {h["mid"]: h for h in history_all(user, other)}
        assert not [h for h in hist.values() if h.get("kind")], "change entries listed in history"
        for k, b in enumerate(base):
            h = hist[b["mid"]]
            want = state.get(b["mid"])
            if want is None:
                assert h["body"] == {"base": k} and "edited" not in h and "recalled" not in h, h
            elif want[0] == "recalled":
                assert h["recalled"] is True and h["body"] is None, h
            else:
                assert h["body"] == want[1] and h["edited"] > 0 and "recalled" not in h, h
    return stored


@pytest.mark.timeout(120)
def test_sigkill_with_recalls_and_edits_in_flight(server_factory):
    """How this proves the fault happened: the server's exit status is -SIGKILL, sent while
    changes were still unanswered (asserted), and the burst may only end by the connection
    closing after that kill."""
    srv = server_factory(HIGH_LIMITS, name="killchanges")
    a, b = new_user(srv, "ka"), new_user(srv, "kb")
    befriend(a, b)
    ga = a.connect(timeout=10)
    enough, stop, killed = threading.Event(), threading.Event(), threading.Event()
    rc = []

    def killer():
        if enough.wait(60):
            rc.append(srv.kill())
            killed.set()

    try:
        base = send_base(ga, b.name, 200)
        burst = ChangeBurst(ga, base, prefix="k")
        kt = threading.Thread(target=killer, daemon=True)
        kt.start()
        try:
            burst.run(100, enough, stop)
            raise AssertionError("the burst ended before the kill")
        except (Closed, OSError) as exc:
            assert enough.is_set() and killed.wait(15), \
                f"connection ended before the server was killed ({len(burst.acked)} acks): {exc!r}"
        finally:
            enough.set()
            kt.join(15)
    finally:
        ga.close()
    assert rc == [-signal.SIGKILL], f"server exit status {rc}: not ended by our SIGKILL"
    assert burst.pending, "no change was in flight at the kill"
    print(f"crash: {len(burst.acked)} changes acked of {len(burst.sent)} sent, {len(burst.pending)} in flight")
    srv.start()
    a.token, b.token = login(srv, a.name)["token"], login(srv, b.name)["token"]
    with a.connect(device="after", timeout=15) as ga2, b.connect(timeout=15) as gb:
        stored = check_changes(a, b, base, burst, {a.name: ga2, b.name: gb})
        # seqs go on after the restart without a gap; the unanswered changes resent with
        # their cmids are stored once (those stored before the kill get their first ack)
        head = ga2.head
        resent = [c for c in burst.sent if c not in burst.acked]
        ids = [ga2.send_request(burst.ops[c][0], cmid=c, **burst.ops[c][1]) for c in resent]
        replies = ga2.read_replies(ids, 30)
        assert all(r["op"] == "ack" for r in replies), [r for r in replies if r["op"] != "ack"][:3]
        new = [r for c, r in zip(resent, replies) if c not in stored]
        assert [r["seq"] for r in new] == list(range(head + 1, head + 1 + len(new)))
        burst.acked.update(zip(resent, replies))
        stop.set()
        assert check_changes(a, b, base, burst, {a.name: ga2, b.name: gb}) == burst.sent
