"""Delivery guarantees: gapless seqs under concurrency, ack-after-store, dedup by cmid,
per-sender order, multi-device copies, and crash (SIGKILL) durability.

Contract: PROTOCOL.md "Delivery guarantees" 1-6.
"""

import signal
import threading
import time

import pytest

from harness.users import befriend, login, make_group, new_user
from harness.wire import Closed, FrameTimeout

pytestmark = pytest.mark.timeout(120)

HIGH_LIMITS = {
    "limits": {
        "user_send_rate": 100000.0, "user_send_burst": 100000,
        "conn_rate": 100000.0, "conn_burst": 100000,
        "login_user_attempts": 100000, "login_addr_attempts": 100000,
        "shutdown_grace": 2.0,
    },
}


def assert_gapless(msgs, start=1, what="inbox"):
    seqs = [m["seq"] for m in msgs]
    assert seqs == list(range(start, start + len(seqs))), f"{what} seqs not gapless: {seqs[:50]}..."


def run_threads(targets, timeout):
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t for t in threads if t.is_alive()]
    if errors:
        raise errors[0]
    assert not alive, f"{len(alive)} threads still running after {timeout}s"


# ---------------------------------------------------------------- 1. gapless under concurrency

@pytest.mark.timeout(120)
def test_gapless_seqs_concurrent_senders(server):
    n_senders, per_sender = 10, 50
    total = n_senders * per_sender
    rcpt = new_user(server, "rc")
    senders = [new_user(server, "snd") for _ in range(n_senders)]
    for s in senders:
        befriend(s, rcpt)
    watcher = rcpt.connect(device="watch", timeout=30)
    acks = {}

    def sender(i, user):
        def run():
            with user.connect(timeout=30) as g:
                ids = [g.send_request("send", to=rcpt.name, body={"s": i, "k": k}, cmid=f"{i}-{k}")
                       for k in range(per_sender)]
                got = g.read_replies(ids, 60)
                assert all(f["op"] == "ack" for f in got), got
                acks[i] = got
        return run

    pushes = []

    def watch():
        pushes.extend(watcher.wait_pushes("msg", total, timeout=80))

    try:
        # the watcher reads concurrently so that it is never a slow reader
        run_threads([watch] + [sender(i, s) for i, s in enumerate(senders)], 90)
        # the sender's own inbox: its 50 messages got seqs 1..50 in send order
        assert len(acks) == n_senders
        for i, got in acks.items():
            assert [a["seq"] for a in got] == list(range(1, per_sender + 1)), f"sender {i} ack seqs"
        # the live device got every entry, in seq order, exactly once
        assert [p["seq"] for p in pushes] == list(range(1, total + 1))
        with rcpt.connect(device="syncer", timeout=30) as g:
            msgs, head = g.sync_all(0)
        assert head == total
        assert_gapless(msgs)
        assert len(msgs) == total
        all_mids = {a["mid"] for got in acks.values() for a in got}
        assert {m["mid"] for m in msgs} == all_mids
        # per-sender order kept
        for i in range(n_senders):
            ks = [m["body"]["k"] for m in msgs if m["from"] == senders[i].name]
            assert ks == list(range(per_sender)), f"sender {i} order {ks}"
    finally:
        watcher.close()


# ---------------------------------------------------------------- 2. ack means stored

def test_ack_means_stored(server, alice, bob):
    befriend(alice, bob)
    with alice.connect() as ga, bob.connect(device="other") as gb_other, server.api() as api:
        since = 0
        for i in range(20):
            ack = ga.send_msg(f"s{i}", to=bob.name)
            # immediately after the ack: in history (both sides) and in both inboxes
            hist = api.call("history", token=bob.token, limit=1, **{"with": alice.name})["msgs"]
            assert hist and hist[0]["mid"] == ack["mid"], (i, hist)
            own = ga.call("sync", expect="sync", since=ack["seq"] - 1, limit=1)["msgs"]
            assert own and own[0]["mid"] == ack["mid"] and own[0]["seq"] == ack["seq"]
            r = gb_other.sync(since)
            assert ack["mid"] in [m["mid"] for m in r["msgs"]]
            since = r["head"]


# ---------------------------------------------------------------- 4. idempotent send

def test_dedup_same_cmid(alice, bob):
    befriend(alice, bob)
    with alice.connect() as ga, bob.connect() as gb:
        first = ga.send_msg("original", to=bob.name, cmid="dup-1")
        again = ga.send_msg("original", to=bob.name, cmid="dup-1")
        assert (again["mid"], again["seq"]) == (first["mid"], first["seq"])
        # even with a different body, the first ack comes back and nothing is stored
        third = ga.send_msg("changed body", to=bob.name, cmid="dup-1")
        assert (third["mid"], third["seq"]) == (first["mid"], first["seq"])
        nxt = ga.send_msg("next", to=bob.name, cmid="dup-2")
        assert nxt["seq"] == first["seq"] + 1
        gb.wait_push("msg", mid=nxt["mid"])
        pushed = [p["seq"] for p in gb.all_pushes if p["op"] == "msg"]
        assert pushed == sorted(set(pushed)), f"pushes repeated or out of order: {pushed}"
        msgs, head = gb.sync_all(0)
        assert [m["mid"] for m in msgs] == [first["mid"], nxt["mid"]]
        assert [m["body"] for m in msgs] == ["original", "next"]
        assert head == 2
        own, own_head = ga.sync_all(0)
        assert [m["mid"] for m in own] == [first["mid"], nxt["mid"]] and own_head == 2


def test_dedup_across_reconnect_and_devices(alice, bob):
    befriend(alice, bob)
    with alice.connect(device="d1") as g1:
        first = g1.send_msg("once", to=bob.name, cmid="re-1")
    with alice.connect(device="d1") as g1b:
        assert g1b.send_msg("once", to=bob.name, cmid="re-1")["mid"] == first["mid"]
    with alice.connect(device="d2") as g2:
        rep = g2.send_msg("once", to=bob.name, cmid="re-1")
        assert (rep["mid"], rep["seq"]) == (first["mid"], first["seq"])
    with bob.connect() as gb:
        msgs, head = gb.sync_all(0)
        assert [m["mid"] for m in msgs] == [first["mid"]] and head == 1


def test_same_cmid_different_users_are_different_messages(server, alice, bob):
    carol = new_user(server, "carol")
    befriend(alice, bob)
    befriend(carol, bob)
    with alice.connect() as ga, carol.connect() as gc, bob.connect() as gb:
        a = ga.send_msg("from alice", to=bob.name, cmid="shared")
        c = gc.send_msg("from carol", to=bob.name, cmid="shared")
        assert a["mid"] != c["mid"]
        msgs, _ = gb.sync_all(0)
        assert sorted(m["body"] for m in msgs) == ["from alice", "from carol"]


def test_dedup_pipelined_duplicates(alice, bob):
    """The same cmid sent several times back to back (no wait) is still stored once."""
    befriend(alice, bob)
    with alice.connect() as ga:
        ids = [ga.send_request("send", to=bob.name, body="burst", cmid="pipe-1") for _ in range(5)]
        acks = ga.read_replies(ids)
        assert all(a["op"] == "ack" for a in acks), acks
        assert len({(a["mid"], a["seq"]) for a in acks}) == 1, acks
    with bob.connect() as gb:
        msgs, head = gb.sync_all(0)
        assert len(msgs) == 1 and head == 1


# ---------------------------------------------------------------- 5. order

def test_order_per_sender_per_conversation(server):
    sender = new_user(server, "os")
    r1, r2 = new_user(server, "or"), new_user(server, "or")
    befriend(sender, r1)
    befriend(sender, r2)
    gid = make_group(sender, [r1, r2])
    with sender.connect() as gs:
        n = 60
        ids = []
        for k in range(n):
            if k % 3 == 0:
                ids.append(gs.send_request("send", to=r1.name, body={"c": "dm1", "k": k}))
            elif k % 3 == 1:
                ids.append(gs.send_request("send", group=gid, body={"c": "grp", "k": k}))
            else:
                ids.append(gs.send_request("send", to=r2.name, body={"c": "dm2", "k": k}))
        acks = gs.read_replies(ids, 15)
        assert all(a["op"] == "ack" for a in acks)
        # (after the group's "created" group_event entry, v1.1)
        assert [a["seq"] for a in acks] == list(range(gs.head + 1, gs.head + n + 1))
    for user, convs in ((r1, ("dm1", "grp")), (r2, ("dm2", "grp"))):
        with user.connect() as g:
            msgs, _ = g.sync_all(0)
        assert_gapless(msgs)
        msgs = [m for m in msgs if m.get("kind") is None]
        for conv in convs:
            ks = [m["body"]["k"] for m in msgs if m["body"]["c"] == conv]
            assert ks == sorted(ks) and len(ks) == n // 3, (user, conv, ks)


# ---------------------------------------------------------------- 6. multi-device copies

def test_multi_device_copies(alice, bob):
    befriend(alice, bob)
    d1 = alice.connect(device="d1", timeout=15)
    d2 = alice.connect(device="d2", timeout=15)
    gb = bob.connect(timeout=15)
    results = {}
    try:
        def burst(conn, tag):
            def run():
                ids = [conn.send_request("send", to=bob.name, body=f"{tag}{k}") for k in range(20)]
                # the other device's copies arrive interleaved with our acks
                acks = conn.read_replies(ids, 15)
                assert all(f["op"] == "ack" for f in acks), acks
                results[tag] = acks
            return run

        run_threads([burst(d1, "a"), burst(d2, "b")], 60)
        # each device got the other's 20 messages as pushes, and none of its own
        for conn, mine, theirs in ((d1, "a", "b"), (d2, "b", "a")):
            copies = conn.wait_pushes("msg", 20, timeout=15)
            conn.sync_point()
            all_msgs = [p for p in conn.all_pushes if p["op"] == "msg"]
            assert sorted(p["mid"] for p in all_msgs) == sorted(a["mid"] for a in results[theirs])
            assert [p["body"] for p in copies] == [f"{theirs}{k}" for k in range(20)]
        # the sender's inbox holds all 40, gapless, each ack seq pointing at its message
        msgs, head = d1.sync_all(0)
        assert_gapless(msgs)
        assert head == 40
        by_seq = {m["seq"]: m["mid"] for m in msgs}
        for a in results["a"] + results["b"]:
            assert by_seq[a["seq"]] == a["mid"]
        bob_msgs = gb.wait_pushes("msg", 40, timeout=15)
        assert [p["seq"] for p in bob_msgs] == list(range(1, 41))
    finally:
        for c in (d1, d2, gb):
            c.close()


# ---------------------------------------------------------------- crash durability

class Burst:
    """What a burst cut short by SIGKILL left: ``acked`` (cmid -> ack), ``sent`` (every
    cmid written, in order), ``in_flight`` (cmids written but unacked when the kill
    landed) and the server's exit status ``rc`` (-SIGKILL: it was our kill that ended it)."""

    def __init__(self):
        self.acked = {}
        self.sent = []
        self.in_flight = []
        self.rc = None


def _burst_until_killed(srv, conn, to, kill_after, prefix, max_msgs=20000, window=50):
    """Keep ``window`` sends in flight (a new one for every ack); SIGKILL the server from
    another thread once kill_after acks have arrived, i.e. while sends are in flight.

    Only the end the kill explains is accepted: the connection closing (or reset) AFTER the
    kill was sent.  A reply timeout (a hung server), a close before the kill, or any reply
    but an ack fails the test.  -> Burst."""
    burst = Burst()
    pending = {}  # request id -> cmid, in send order
    enough = threading.Event()
    killed = threading.Event()

    def killer():
        if enough.wait(60):
            burst.rc = srv.kill()
            killed.set()

    def send_one():
        cmid = f"{prefix}{len(burst.sent)}"
        burst.sent.append(cmid)
        pending[conn.send_request("send", to=to, body={"n": len(burst.sent) - 1}, cmid=cmid)] = cmid

    kt = threading.Thread(target=killer, daemon=True)
    kt.start()
    try:
        for _ in range(window):
            send_one()
        while pending:
            rid = next(iter(pending))
            f = conn.read_replies([rid], 10)[0]
            assert f["op"] == "ack", f
            burst.acked[pending.pop(rid)] = f
            if len(burst.acked) >= kill_after:
                enough.set()
            if len(burst.sent) < max_msgs:
                send_one()
        raise AssertionError(f"all {len(burst.sent)} sends acked: the kill never cut the burst")
    except (Closed, OSError) as exc:
        # the reader may see the close a moment before the killer thread records the kill
        assert enough.is_set() and killed.wait(15), \
            f"connection ended before the server was killed ({len(burst.acked)} acks): {exc!r}"
    finally:
        enough.set()
        kt.join(15)
    assert burst.rc == -signal.SIGKILL, f"server exit status {burst.rc}: not ended by our SIGKILL"
    assert not srv.running(), "server was not killed"
    burst.in_flight = list(pending.values())
    return burst


def assert_each_once_in_order(msgs, sent, what):
    """Every stored message is one of ``sent`` (by cmid, matching its body), none twice
    (a message stored twice gets a new mid, so mids cannot tell), in send order."""
    cmids = [m.get("cmid") for m in msgs]
    repeated = sorted({c for c in cmids if cmids.count(c) > 1})
    assert not repeated, f"{what}: stored twice: {repeated[:10]}"
    index = {cmid: n for n, cmid in enumerate(sent)}
    unknown = [c for c in cmids if c not in index]
    assert not unknown, f"{what}: messages nobody sent: {unknown[:10]}"
    ns = [m["body"]["n"] for m in msgs]
    assert ns == [index[c] for c in cmids], f"{what}: a body does not match its cmid"
    assert all(a < b for a, b in zip(ns, ns[1:])), f"{what}: send order broken: {ns[:60]}"


@pytest.mark.timeout(120)
def test_sigkill_mid_burst_acked_messages_survive(server_factory):
    """How this proves the fault happened: the server's exit status is -SIGKILL, sent by
    the test while sends were still unacked (in_flight is not empty), and the burst may only
    end by the connection closing after that kill (a timeout fails)."""
    srv = server_factory(HIGH_LIMITS, name="crash")
    a, b = new_user(srv, "ka"), new_user(srv, "kb")
    befriend(a, b)
    ga = a.connect(timeout=10)
    try:
        burst = _burst_until_killed(srv, ga, b.name, kill_after=300, prefix="k")
    finally:
        ga.close()
    acked = burst.acked
    print(f"crash: {len(acked)} acked of {len(burst.sent)} sent before SIGKILL, {len(burst.in_flight)} in flight")
    assert len(acked) >= 300
    assert burst.in_flight, "no send was in flight at the kill"
    srv.start()
    # re-login (token survival across restarts is tested separately)
    ta = login(srv, a.name)["token"]
    tb = login(srv, b.name)["token"]
    with srv.gateway(timeout=15) as gb, srv.gateway(timeout=15) as ga2:
        ga2.auth(ta, device="after")
        gb.auth(tb)
        for who, g in (("recipient", gb), ("sender", ga2)):
            msgs, head = g.sync_all(0)
            assert_gapless(msgs, what=who)
            assert head == len(msgs), (who, head, len(msgs))
            assert_each_once_in_order(msgs, burst.sent, who)
            mids = {m["mid"] for m in msgs}
            missing = [c for c, ack in acked.items() if ack["mid"] not in mids]
            assert not missing, f"{who}: {len(missing)} acked messages lost after SIGKILL, e.g. {missing[:5]}"
            # what was stored is a prefix of what was sent: acked ones, then perhaps some of
            # those in flight (committed, ack not yet written), never one after a hole
            stored = [m["cmid"] for m in msgs]
            assert stored == burst.sent[:len(stored)], f"{who}: stored sends are not a prefix of the sent ones"
            if who == "sender":
                by_seq = {m["seq"]: m["mid"] for m in msgs}
                for ack in acked.values():
                    assert by_seq.get(ack["seq"]) == ack["mid"], "ack seq does not point at its message"
                sender_head = head
            else:
                rcpt_head = head
        # seqs continue after the restart without gap or repeat
        for k in range(5):
            ack = ga2.send_msg({"n": 10**6 + k}, to=b.name, cmid=f"post{k}")
            assert ack["seq"] == sender_head + 1 + k, (ack, sender_head)
            push = gb.wait_push("msg", mid=ack["mid"])
            assert push["seq"] == rcpt_head + 1 + k, (push, rcpt_head)


@pytest.mark.timeout(120)
def test_sigkill_then_resend_unacked_with_same_cmid(server_factory):
    """Clients resend unacked messages with the same cmid after a reconnect: each message
    then ends up in the inbox exactly once (dedup records are durable).

    How this proves the fault happened: exit status -SIGKILL with sends in flight (asserted
    non-empty: those are the resends that matter), the burst ending only by a close after
    the kill."""
    srv = server_factory(HIGH_LIMITS, name="crash2")
    a, b = new_user(srv, "ra"), new_user(srv, "rb")
    befriend(a, b)
    ga = a.connect(timeout=10)
    try:
        burst = _burst_until_killed(srv, ga, b.name, kill_after=150, prefix="q")
    finally:
        ga.close()
    acked, sent = burst.acked, burst.sent
    print(f"crash: {len(acked)} acked of {len(sent)} sent before SIGKILL, {len(burst.in_flight)} in flight")
    assert burst.in_flight, "no send was in flight at the kill: the resend below would test nothing"
    srv.start()
    ta = login(srv, a.name)["token"]
    tb = login(srv, b.name)["token"]
    with srv.gateway(timeout=15) as ga2, srv.gateway(timeout=15) as gb:
        ga2.auth(ta)
        gb.auth(tb)
        before, _ = gb.sync_all(0)
        stored_unacked = [m["cmid"] for m in before if m["cmid"] not in acked]
        # resend everything (acked or not) with the same cmid, in the original order
        ids = [ga2.send_request("send", to=b.name, body={"n": int(cmid[1:])}, cmid=cmid) for cmid in sent]
        resent = {}
        for cmid, f in zip(sent, ga2.read_replies(ids, 30)):
            assert f["op"] == "ack", f
            resent[cmid] = f
        for cmid, ack in acked.items():
            assert (resent[cmid]["mid"], resent[cmid]["seq"]) == (ack["mid"], ack["seq"]), (
                f"resend of acked {cmid} after restart got a different ack")
        msgs, head = gb.sync_all(0)
        assert_gapless(msgs, what="recipient")
        assert_each_once_in_order(msgs, sent, "recipient")
        assert [m["cmid"] for m in msgs] == sent, "each message exactly once, in order"
        print(f"resend: {len(stored_unacked)} of the {len(burst.in_flight)} in flight were stored before the kill")


@pytest.mark.timeout(90)
def test_token_and_data_survive_restart(server_factory):
    """A token is valid for expires_in seconds; a restart (even SIGKILL) does not end it."""
    srv = server_factory(HIGH_LIMITS, name="restart")
    a, b = new_user(srv, "ta"), new_user(srv, "tb")
    befriend(a, b)
    with a.connect() as ga:
        ack = ga.send_msg("before", to=b.name)
    srv.kill()
    srv.start()
    with srv.api() as c:
        assert c.call("profile", token=a.token)["user"] == a.name
        assert [f["user"] for f in c.call("friends", token=a.token)["friends"]] == [b.name]
    with b.connect() as gb:
        assert [m["mid"] for m in gb.sync(0)["msgs"]] == [ack["mid"]]


# ---------------------------------------------------------------- 3. slow reader never misses

@pytest.mark.timeout(90)
def test_slow_reader_misses_nothing(server_factory):
    """A device that stops reading: the server either keeps its pushes gapless (re-sending
    from the inbox) or closes the connection; sync then returns the rest. Acks to the
    sender never depend on the slow reader."""
    cfg = {"limits": dict(HIGH_LIMITS["limits"], send_queue_bytes=65536)}
    srv = server_factory(cfg, name="slow")
    a, b = new_user(srv, "fast"), new_user(srv, "slow")
    befriend(a, b)
    slow = srv.gateway(timeout=10, rcvbuf=4096)
    slow.auth(b.token)
    n = 300
    body = "z" * 12000
    try:
        with a.connect(timeout=20) as ga:
            for start in range(0, n, 25):
                ids = [ga.send_request("send", to=b.name, body={"i": i, "pad": body}) for i in range(start, min(n, start + 25))]
                assert all(r["op"] == "ack" for r in ga.read_replies(ids, 20))
        # now read everything the slow connection still delivers
        pushes, closed = [], False
        while True:
            try:
                f = slow.read_frame(3)
            except Closed:
                closed = True
                break
            except FrameTimeout:
                break
            if f["op"] == "msg":
                pushes.append(f)
            elif f["op"] == "bye":
                assert f["reason"] == "slow_reader", f
    finally:
        slow.close()
    seqs = [p["seq"] for p in pushes]
    print(f"slow reader: {len(seqs)} pushes before {'close' if closed else 'the end'}")
    assert seqs == list(range(1, len(seqs) + 1)), f"pushes to a slow reader have gaps: {seqs[:20]}..."
    assert closed or len(seqs) == n, f"got {len(seqs)} of {n} pushes and the connection stayed open"
    last = seqs[-1] if seqs else 0
    with b.connect(timeout=20) as gb:
        rest, head = gb.sync_all(last)
    assert head == n
    assert [m["seq"] for m in rest] == list(range(last + 1, n + 1))
    assert [m["body"]["i"] for m in rest] == list(range(last, n))
