"""Recalls and edits through a SIGKILL of a forwarder holding some of them: the killed
forwarder's entries are claimed by the other one and answered; every acked change is in
both inboxes once, in order, with gapless seqs, and history agrees with what is stored.

The embedded case (SIGKILL of `imsrv serve`) and the helpers (ChangeBurst: recalls and
edits kept in flight on one connection; check_changes) are tests/e2e/test_kill_entries.py.
Only our own processes are killed, by pid (tests/dist/cast.py).
"""
import threading
import time

import pytest

from e2e.test_kill_entries import ChangeBurst, check_changes, send_base
from harness.procs import wait_until
from harness.users import befriend, new_user

from .cast import ACK_IN_TRANSIT, sigkill_with_pending_work
from .traffic import FAST_CLUSTER

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]
FORWARDERS = ("forwarder-0", "forwarder-1")


def _count(dep, pattern):
    return sum(dep.log(p).count(pattern) for p in FORWARDERS)


def test_forwarder_sigkilled_holding_recalls_and_edits(deployment_factory):
    """forwarder-0 SIGKILLed while it holds ingress entries of recalls and edits it read
    but did not finish; supervisord restarts it; the other forwarder claims them.

    How this proves the fault happened: forwarder-0 has another pid afterwards; it held
    pending entries when SIGKILL hit it, none of whose changes had been answered
    (sigkill_with_pending_work's ``answered``), and they hold changes of our bursts (their
    cmids); a forwarder logged event=claimed after the kill; every one of those changes
    was acked afterwards and is stored once."""
    dep = deployment_factory(config=FAST_CLUSTER)
    pairs = []
    for n in range(2):
        a, b = new_user(dep, f"fa{n}_"), new_user(dep, f"fb{n}_")
        befriend(a, b)
        pairs.append((a, b))
    conns = [a.connect(device="burst", timeout=15) for a, _ in pairs]
    stop, errors, threads, bursts = threading.Event(), [], [], []
    try:
        for (a, b), conn in zip(pairs, conns):
            bursts.append(ChangeBurst(conn, send_base(conn, b.name, 300), prefix=f"{a.name}-", window=20))

        def run(burst):
            try:
                burst.run(10**9, threading.Event(), stop, timeout=20)
            except BaseException as exc:   # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(burst,), daemon=True) for burst in bursts]
        for t in threads:
            t.start()
        wait_until(lambda: all(len(bu.acked) >= 50 for bu in bursts) or errors, timeout=30,
                   what="the bursts to get going")
        assert not errors, errors

        def answered(cmids):
            # an ack published just before the freeze may still be on its way
            time.sleep(ACK_IN_TRANSIT)
            return any(c in bu.acked for bu in bursts for c in cmids)

        pid0 = dep.pid("forwarder-0")
        claims = _count(dep, "event=claimed")
        held_cmids = []
        held = sigkill_with_pending_work(dep, "forwarder-0", "fw0", held_cmids=held_cmids, answered=answered)
        wait_until(lambda: _count(dep, "event=claimed") > claims, timeout=20,
                   what="a forwarder to claim the dead one's pending entries")
        dep.wait_ready("forwarder-0", runs=2, timeout=30)
        after = [len(bu.acked) for bu in bursts]
        wait_until(lambda: all(len(bu.acked) >= n + 30 for bu, n in zip(bursts, after)) or errors, timeout=60,
                   what="the bursts to go on after the kill")
        stop.set()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert not [t for t in threads if t.is_alive()], "a burst did not finish"
    finally:
        stop.set()
        for c in conns:
            c.close()
    assert dep.pid("forwarder-0") not in (0, pid0), "forwarder-0 was not restarted under a new pid"
    ours = {c for bu in bursts for c in bu.sent}
    assert held and held_cmids and set(held_cmids) <= ours, (held, held_cmids[:5])
    acked = {c for bu in bursts for c in bu.acked}
    assert set(held_cmids) <= acked, "a change the killed forwarder held was never answered"
    for (a, b), burst in zip(pairs, bursts):
        with a.connect(device="check", timeout=15) as ga, b.connect(device="check", timeout=15) as gb:
            stored = check_changes(a, b, burst.base, burst, {a.name: ga, b.name: gb})
        assert stored == burst.sent, "every change was acked: every one is stored"
    print(f"forwarder-0 killed holding {held} entries ({len(held_cmids)} changes); "
          f"{sum(len(bu.acked) for bu in bursts)} changes acked")
