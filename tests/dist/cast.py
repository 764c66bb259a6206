"""The cast of the fault tests and the ways they break our own processes.

:class:`Cast` is the set of busy clients a fault test runs (tests/dist/traffic.py:
senders and watchers), with the phase marks that let a test say what it saw: traffic
flows healthy until :meth:`Cast.mark_fault`, so any retry before that mark is a failure
(:meth:`Cast.check_retries`), and retries after it must be of the kinds the fault
explains.

Faults are only ever done to our own processes: daemons of our deployment (by the pid
supervisord reports) and private Redis / MariaDB servers started here on free ports (by
pid, through tests/services.py).
"""
import os
import signal
import time
from contextlib import contextmanager

import redis as redis_lib

import services
from imsrv.protocol.cluster import entry_cmids   # the one decoder of ingress entries
from harness.users import befriend, make_group, new_user

from .traffic import (Sender, Watcher, check_delivery, check_retries, progress, read_inboxes,
                      retry_kinds, start_all, stop_all, wait_watchers_caught_up)

BEFORE = 20      # acks each sender gets before the fault (traffic is flowing)
AFTER = 25       # acks each sender gets after the fault (the service came back by itself)


#: how long an ack a forwarder had already published (before it was frozen or killed) may
#: take to reach its sender: it crosses Redis and a gateway, no claim involved
ACK_IN_TRANSIT = 0.5


class Cast:
    """Four senders (pairs of friends, all in one group) and two watchers (one per gateway,
    friends of every sender, in the group, sent to 1:1 too).  Sender i sits on gateway
    i % 2 and sends to its partner, the group and watcher i % 2, in turn; each of its sends
    must be acked within ``give_up`` seconds (retries included), or the sender fails."""

    def __init__(self, dep, watcher_reconnect=True, senders=4, give_up=45.0):
        self.dep = dep
        self.fault_at = None
        self.users = [new_user(dep, "snd") for _ in range(senders)]
        self.watch_users = [new_user(dep, "wat") for _ in range(2)]
        for i in range(0, senders, 2):
            befriend(self.users[i], self.users[i + 1])
        for u in self.users:
            for w in self.watch_users:
                befriend(u, w)
        self.gid = make_group(self.users[0], self.users[1:] + self.watch_users, name="faults")
        self.members = {self.gid: [u.name for u in self.users + self.watch_users]}
        self.senders = []
        for i, u in enumerate(self.users):
            partner = self.users[i ^ 1]
            targets = [("to", partner.name), ("group", self.gid), ("to", self.watch_users[i % 2].name)]
            self.senders.append(Sender(dep, u, targets, gateway=i % 2, give_up=give_up))
        # watchers connect now, in this thread: their heads are 0 and they see everything
        self.watchers = [Watcher(dep, w, gateway=i, reconnect=watcher_reconnect).connect()
                         for i, w in enumerate(self.watch_users)]

    @property
    def agents(self):
        return self.watchers + self.senders

    def everyone(self):
        return self.users + self.watch_users

    @contextmanager
    def busy(self):
        """Senders and watchers run inside the block (each sender got BEFORE acks when it
        starts); the senders are stopped (bounded) at its end, the watchers by check()."""
        start_all(self.agents)
        try:
            progress(self.senders, BEFORE, 30)
            yield self
        except BaseException:
            for a in self.agents:
                a.stop()
            raise
        try:
            stop_all(self.senders, timeout=60)
        except BaseException:
            for a in self.watchers:
                a.stop()
            raise

    def mark_fault(self):
        """The fault starts now: what came before was the healthy phase.  -> the time."""
        self.fault_at = time.monotonic()
        return self.fault_at

    def check(self, watchers_stay=False, stats=None):
        """Read every inbox, let the watchers be pushed all of theirs, and check the
        guarantees (check_delivery; ``stats`` as there); -> number of acked messages."""
        try:
            inboxes = read_inboxes(self.everyone())
            if watchers_stay:
                for w in self.watchers:
                    assert len(w.conns) == 1 and w.conns[0].closed is None, \
                        f"{w!r}: its connection was closed during the fault; events {w.events[-8:]}"
            wait_watchers_caught_up(self.watchers, inboxes)
        finally:
            stop_all(self.watchers, timeout=10)
        return check_delivery(self.senders, inboxes, self.members, self.watchers, stats)

    def retries(self):
        return sum(len(v) for s in self.senders for v in s.retried.values())

    def check_retries(self, allowed):
        """No retry (of any sender or watcher) before mark_fault(); after it, only of the
        kinds ``allowed`` (see traffic.check_retries).  -> Counter of the retries after."""
        assert self.fault_at is not None, "mark_fault() was never called"
        return check_retries(self.agents, self.fault_at, allowed)[1]

    def acked_any(self, cmids, settle=None):
        """True if a sender got the ack of one of ``cmids``, looking after ``settle``
        seconds (default ACK_IN_TRANSIT: an ack published just before is given the time to
        reach its sender; there is no event to wait for, the question is an absence)."""
        time.sleep(ACK_IN_TRANSIT if settle is None else settle)
        return any(cmid in cmids for s in self.senders for _, cmid, _, _ in list(s.acks))

    def longest_wait(self):
        """The most seconds any acked send took from its first try to its ack."""
        return max((at - sent for s in self.senders for _, sent, at in s.ack_times()), default=0.0)

    def summary(self):
        after = retry_kinds(self.agents, since=self.fault_at)
        return (f"{sum(len(s.acks) for s in self.senders)} acked, {self.retries()} send retries,"
                f" retries after the fault {dict(after)}, longest wait {self.longest_wait():.1f}s")


# ---------------------------------------------------------------- ways to break things
def _pending_of(r, dep, consumer):
    info = r.xpending(f"{dep.redis_prefix}:ingress", "forwarders")
    for c in info.get("consumers") or []:
        name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
        if name == consumer:
            return int(c["pending"])
    return 0


def _held_cmids(r, dep, consumer=None):
    """The cmids of the sends in the ingress entries ``consumer`` (None: any forwarder)
    read and has not finished (its pending entries)."""
    ingress = f"{dep.redis_prefix}:ingress"
    cmids = []
    for p in r.xpending_range(ingress, "forwarders", "-", "+", 1000, consumername=consumer):
        for _, fields in r.xrange(ingress, p["message_id"], p["message_id"]):
            cmids.extend(entry_cmids(fields))
    return cmids


def held_by_forwarders(dep):
    """The cmids of the sends the forwarders read from the ingress and have not finished
    (stored and answered) yet: the sends of the batches they are working on."""
    r = redis_lib.Redis.from_url(dep.redis_url, socket_timeout=5)
    try:
        return _held_cmids(r, dep)
    finally:
        r.close()


def sigkill_with_pending_work(dep, program, consumer, timeout=20.0, held_cmids=None, answered=None):
    """SIGKILL ``program`` (a forwarder) at a moment it holds sends it read from the
    ingress but has not finished: freeze it (SIGSTOP), look at its pending entries, kill
    it if it has some, else let it run on and look again.  -> how many it held (and, if
    ``held_cmids`` is a list, the cmids of the sends in them are added to it).

    ``answered(cmids)`` (optional) -> True if some of these sends were answered already:
    the forwarder was frozen between publishing their acks and acknowledging their
    entries; that moment is skipped too, so that every send it held is one it had not
    answered."""
    r = redis_lib.Redis.from_url(dep.redis_url, socket_timeout=5)
    pid = dep.pid(program)
    deadline = time.monotonic() + timeout
    try:
        while True:
            pending = 0
            os.kill(pid, signal.SIGSTOP)
            try:
                services.wait_stopped(pid)
                pending = _pending_of(r, dep, consumer)
                if pending and (held_cmids is not None or answered is not None):
                    cmids = _held_cmids(r, dep, consumer)
                    if answered is not None and answered(cmids):
                        pending = 0
                    elif held_cmids is not None:
                        held_cmids.extend(cmids)
                if pending:
                    os.kill(pid, signal.SIGKILL)   # a stopped process dies of it too
                    return pending
            finally:
                if not pending:
                    os.kill(pid, signal.SIGCONT)
            assert time.monotonic() < deadline, f"{program} never held pending sends in {timeout:g}s"
            time.sleep(0.003)  # let it run a little: the next look samples another moment
    finally:
        r.close()


@contextmanager
def frozen(pids):
    """SIGSTOP ``pids`` (our deployment's daemons) for the block, SIGCONT after it."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    for pid in pids:
        services.wait_stopped(pid)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def check_held_sends_waited_for_claim(senders, held_cmids, t_kill, claim_idle, what="kill"):
    """Sends a SIGKILLed forwarder held (its pending entries at the kill) were answered by a
    claim, not by the dead forwarder: each is acked either within ACK_IN_TRANSIT of the
    kill (its ack was published just before the freeze and was slower than the
    ``answered`` look of sigkill_with_pending_work, which waits ACK_IN_TRANSIT) or at least
    ``claim_idle`` after it was sent.  At least one must be of the second kind: the kill
    hit work nobody had answered.  -> (claimed, answered_before) cmid lists."""
    waits = {cmid: (sent, at) for s in senders for cmid, sent, at in s.ack_times()}
    assert held_cmids and set(held_cmids) <= set(waits), \
        f"{what}: sends held by the killed forwarder {held_cmids} were not all acked"
    claimed, before, quick = [], [], {}
    for cmid in held_cmids:
        sent, acked = waits[cmid]
        if acked <= t_kill + ACK_IN_TRANSIT and acked - sent < claim_idle - 0.05:
            before.append(cmid)
        elif acked - sent >= claim_idle - 0.05:
            claimed.append(cmid)
        else:
            quick[cmid] = round(acked - sent, 3)
    assert not quick, f"{what}: held sends acked without waiting for a claim: {quick}"
    assert claimed, f"{what}: every held send was answered before the kill ({before}): it hit no unanswered work"
    return claimed, before

