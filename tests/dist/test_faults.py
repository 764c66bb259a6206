"""Faults of the distributed deployment WHILE SENDERS ARE BUSY (issue 5).

Each test runs the real supervisord set (2 gateways, 2 forwarders, 1 API), starts a few
sender threads (tests/dist/traffic.py: each one gateway connection sending 1:1 and group
messages one after the other, every send with a cmid of its own, retried with the SAME
cmid after `unavailable`, a timeout or a dropped connection) and watcher threads (live
connections that only read pushes), breaks one part of the deployment, waits until every
sender got more acks after the fault, then reads every inbox from seq 0 on a fresh
connection and checks PROTOCOL.md's delivery guarantees on what was acked: each acked
message in each recipient's inbox exactly once, per-sender order kept, seqs 1..head with
no gap and no repeat, pushes of every connection in order with none missing.

Faults are only ever done to our own processes: daemons of our deployment (by the pid
supervisord reports) and private Redis / MariaDB servers started here on free ports (by
pid, through tests/services.py).  The machine's shared Redis and MariaDB are never touched.
"""
import os
import signal
import time
from contextlib import contextmanager

import pytest
import redis as redis_lib

import services
from e2e.support import befriend, login, make_group, merge_config, new_user, wait_until

from .traffic import (FAST_CLUSTER, Sender, Watcher, check_delivery, progress, read_inboxes, start_all,
                      stop_all, wait_watchers_caught_up)

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]

BEFORE = 20      # acks each sender gets before the fault (traffic is flowing)
AFTER = 25       # acks each sender gets after the fault (the service came back by itself)


class Cast:
    """Four senders (pairs of friends, all in one group) and two watchers (one per gateway,
    friends of every sender, in the group, sent to 1:1 too)."""

    def __init__(self, dep, watcher_reconnect=True, senders=4):
        self.dep = dep
        self.users = [new_user(dep, "snd") for _ in range(senders)]
        self.watch_users = [new_user(dep, "wat") for _ in range(2)]
        for i in range(0, senders, 2):
            befriend(self.users[i], self.users[i + 1])
        for u in self.users:
            for w in self.watch_users:
                befriend(u, w)
        gid = make_group(self.users[0], self.users[1:] + self.watch_users, name="faults")
        self.members = {gid: [u.name for u in self.users + self.watch_users]}
        self.senders = []
        for i, u in enumerate(self.users):
            partner = self.users[i ^ 1]
            targets = [("to", partner.name), ("group", gid), ("to", self.watch_users[i % 2].name)]
            self.senders.append(Sender(dep, u, targets, gateway=i % 2))
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
        """Senders and watchers run inside the block; the senders are stopped (bounded) at
        its end, the watchers by check()."""
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

    def check(self, watchers_stay=False):
        """Read every inbox, let the watchers be pushed all of theirs, and check the
        guarantees; -> number of acked messages."""
        try:
            inboxes = read_inboxes(self.everyone())
            if watchers_stay:
                for w in self.watchers:
                    assert len(w.conns) == 1 and w.conns[0].closed is None, \
                        f"{w!r}: its connection was closed during the fault; events {w.events[-8:]}"
            wait_watchers_caught_up(self.watchers, inboxes)
        finally:
            stop_all(self.watchers, timeout=10)
        return check_delivery(self.senders, inboxes, self.members, self.watchers)

    def retries(self):
        return sum(len(v) for s in self.senders for v in s.retried.values())


def _pending_of(r, dep, consumer):
    info = r.xpending(f"{dep.redis_prefix}:ingress", "forwarders")
    for c in info.get("consumers") or []:
        name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
        if name == consumer:
            return int(c["pending"])
    return 0


def sigkill_with_pending_work(dep, program, consumer, timeout=20.0):
    """SIGKILL ``program`` (a forwarder) at a moment it holds sends it read from the
    ingress but has not finished: freeze it (SIGSTOP), look at its pending entries, kill
    it if it has some, else let it run on and look again.  -> how many it held."""
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


# ---------------------------------------------------------------- 1. a forwarder dies
def test_forwarder_sigkilled_while_busy(deployment_factory):
    """A forwarder SIGKILLed while it holds sends it has not finished: the other forwarder
    (or its restarted self) claims them after claim_idle and answers them; supervisord
    restarts it; nothing acked is lost or stored twice."""
    dep = deployment_factory(config=FAST_CLUSTER)
    cast = Cast(dep)
    with cast.busy():
        old = dep.pid("forwarder-0")
        held = sigkill_with_pending_work(dep, "forwarder-0", "fw0")
        # its unfinished sends are claimed by a live forwarder (restarted fw0 or fw1)
        wait_until(lambda: "event=claimed" in dep.log("forwarder-1") + dep.log("forwarder-0"),
                   timeout=20, what="a forwarder to claim the dead one's pending sends")
        dep.wait_ready("forwarder-0", runs=2, timeout=30)  # supervisord restarted it
        progress(cast.senders, AFTER, 60)
    assert dep.pid("forwarder-0") not in (0, old)
    total = cast.check()
    print(f"forwarder kill: {held} sends held by the dead forwarder, {total} acked, {cast.retries()} retries")


# ---------------------------------------------------------------- 2. a gateway dies
def test_gateway_sigkilled_while_busy(deployment_factory):
    """A gateway SIGKILLed under supervisord: its clients see the connection drop,
    reconnect (the other gateway first, or the restarted one) and resend unacked sends with
    the same cmid: each stored once.  The restarted gateway forgets the routes of its dead
    run, so a user whose only session was there is offline again."""
    dep = deployment_factory(config=FAST_CLUSTER)
    cast = Cast(dep)
    lurker = new_user(dep, "lurk")
    probe_user = cast.users[1]
    befriend(probe_user, lurker)
    lurking = dep.gateway(index=0)   # its only session, on the gateway about to die
    lurking.auth(lurker.token, "lurk")
    try:
        with cast.busy():
            dep.sigkill("gateway-0")
            # the clients of gateway 0 saw their connection drop and are back on a gateway
            for s in cast.senders[0::2]:
                wait_until(lambda: any("dropped gw0" in e for _, e in s.events) and s.client is not None,
                           timeout=20, what=f"{s!r} to reconnect after the gateway died")
            dep.wait_ready("gateway-0", runs=2, timeout=30)
            progress(cast.senders, AFTER, 60)
            # the restarted gateway 0 serves again, and its dead run's routes are gone
            p = dep.gateway(index=0)
            try:
                p.auth(probe_user.token, "probe")
                wait_until(lambda: p.call("presence", expect="presence", users=[lurker.name])["statuses"]
                           == {lurker.name: "offline"}, timeout=15, what="the dead gateway's session to go offline")
            finally:
                p.close()
    finally:
        lurking.close()
    dropped = [s for s in cast.senders if any("dropped gw0" in e for _, e in s.events)]
    assert len(dropped) >= 2, "the clients of the killed gateway never saw their connection drop"
    # sends in flight when it died were sent again (same cmid) after reconnecting
    resent = [c for s in dropped for c, why in s.retried.items() if "Closed" in why]
    assert resent, f"no send was in flight on the killed gateway: {[s.events[-8:] for s in dropped]}"
    total = cast.check()
    print(f"gateway kill: {total} acked, {cast.retries()} retries, resent after the drop: {resent}")


# ---------------------------------------------------------------- 3. Redis restarts empty
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


def test_redis_restarted_empty_while_busy(deployment_factory):
    """The deployment's (private) Redis SIGKILLed while sends wait in its ingress stream
    (the forwarders are frozen meanwhile, so some surely do) and started again with no
    data: the gateways notice, resubscribe, re-announce their live sessions and make them
    catch up (the watchers' connections stay open and are pushed every entry); the lost
    ingress entries are added again and answered; seq counters resume from MySQL, never
    going back; login finds the gateways again."""
    priv = services.need(services.private_redis, "a private redis-server")
    priv.start()
    dep = None
    try:
        # a longer send_timeout: a gateway adds a lost send again only while a forwarder
        # can still store it before the gateway gives up (send_timeout - entry_ttl)
        config = merge_config(FAST_CLUSTER, {"cluster": {"send_timeout": 10.0}})
        dep = deployment_factory(config=config, redis=priv.url)
        cast = Cast(dep, watcher_reconnect=False)
        gateways = ("gateway-0", "gateway-1")
        with cast.busy():
            restored = {g: dep.log(g).count("event=routes_restored") for g in gateways}
            readded = sum(dep.log(g).count("event=sends_readded") for g in gateways)
            with frozen([dep.pid("forwarder-0"), dep.pid("forwarder-1")]):
                # senders wait for acks of entries nobody reads now
                r = redis_lib.Redis.from_url(priv.url, socket_timeout=5)
                try:
                    wait_until(lambda: r.xlen(f"{dep.redis_prefix}:ingress") >= 2, timeout=10,
                               what="sends to wait in the ingress stream")
                finally:
                    r.close()
                priv.kill()
                priv.start()          # no RDB, no AOF: it comes back empty
            for g in gateways:
                wait_until(lambda: dep.log(g).count("event=routes_restored") > restored[g],
                           timeout=20, what=f"{g} to resubscribe and re-announce its sessions")
            # the sends lost with the stream were added again by their gateways (when
            # they resubscribe; the load reporter may have re-announced the routes first)
            wait_until(lambda: sum(dep.log(g).count("event=sends_readded") for g in gateways) > readded,
                       timeout=20, what="the gateways to add the lost sends again")
            progress(cast.senders, AFTER, 60)
            ports = {f"127.0.0.1:{p}" for p in dep.gateway_ports}
            wait_until(lambda: set(login(dep, cast.users[0].name)["gateways"]) == ports,
                       timeout=15, what="login to list both gateways again")
        total = cast.check(watchers_stay=True)
        print(f"redis restart: {total} acked, {cast.retries()} retries")
    finally:
        if dep is not None:
            dep.kill()      # while the private Redis still runs (it deletes its keys)
        priv.cleanup()


# ---------------------------------------------------------------- 4. MySQL goes away
@pytest.mark.parametrize("how,outage", [("stop", 3.0), ("pause", 3.0), ("pause", 8.0)])
def test_mysql_outage_while_busy(deployment_factory, how, outage):
    """The deployment's (private) MariaDB stopped (SIGTERM, then started again on the same
    data) or paused (SIGSTOP/SIGCONT) for 3 s: senders get `unavailable` or wait, and
    retry; nothing acked is lost, nothing stored twice; the service resumes by itself.
    Paused for 8 s, longer than send_timeout (6 s): the forwarders blocked in a store
    transaction must roll it back rather than commit sends their senders were told are
    `unavailable` (check_delivery compares each ack's ts with the refusal)."""
    priv = services.need(services.private_mariadb, "a private MariaDB server")
    priv.start()
    dep = None
    try:
        dep = deployment_factory(config=FAST_CLUSTER, mysql=priv.url)
        cast = Cast(dep)
        with cast.busy():
            if how == "stop":
                priv.stop()
            else:
                priv.pause()
            time.sleep(outage)   # the outage itself (not a wait for anything)
            marks = [len(s.acks) for s in cast.senders]
            if how == "stop":
                priv.start()
            else:
                priv.resume()
            progress(cast.senders, AFTER, 60)
        total = cast.check()
        # sends first made after the outage were acked: the service came back by itself
        for s, mark in zip(cast.senders, marks):
            assert len(s.acks) >= mark + AFTER
        print(f"mysql {how}: {total} acked, {cast.retries()} retries")
    finally:
        if dep is not None:
            dep.kill()
        priv.cleanup()


# ---------------------------------------------------------------- 5. a gateway that does not come back
def test_a_dead_gateway_is_reaped_and_a_frozen_one_comes_back(deployment_factory):
    """gateway-0 frozen (SIGSTOP: no load report, supervisord sees nothing wrong): once its
    report is gateway_dead_after overdue, gateway-1 removes its routes, so its users go
    offline for their friends and login stops naming it.  Thawed (SIGCONT), its next report
    finds it was reaped: it puts its routes back, its users are online again, and its
    still-open connections get their pushes."""
    dep = deployment_factory(config={"cluster": {"load_report_every": 0.3, "gateway_dead_after": 0.5}})
    a, b = new_user(dep, "fz"), new_user(dep, "wt")
    befriend(a, b)
    gw0, gw1 = (f"127.0.0.1:{p}" for p in dep.gateway_ports)
    cb = dep.gateway(index=1)
    cb.auth(b.token)
    ca = dep.gateway(index=0)
    ca.auth(a.token)
    pid = dep.pid("gateway-0")
    try:
        cb.wait_push("presence", user=a.name, status="online")
        os.kill(pid, signal.SIGSTOP)
        services.wait_stopped(pid)
        # reaped: report expired (5 x 0.3 s) + 0.5 s, then gateway-1's next report
        cb.wait_push("presence", timeout=20, user=a.name, status="offline")
        assert "event=gateway_reaped gateway=gw0" in dep.log("gateway-1")
        rep = login(dep, b.name)
        assert rep["gateways"] == [gw1] and rep["gateway"] == gw1, rep
        os.kill(pid, signal.SIGCONT)
        cb.wait_push("presence", timeout=20, user=a.name, status="online")
        wait_until(lambda: "event=gateway_reinstated" in dep.log("gateway-0"), timeout=10,
                   what="gateway-0 to log that it was reinstated")
        # its connection never closed, and pushes reach it again
        ack = cb.send_msg({"after": "thaw"}, to=a.name, cmid="thaw-1")
        push = ca.wait_push("msg", timeout=15, cmid="thaw-1")
        assert push["mid"] == ack["mid"]
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        ca.close()
        cb.close()


# ---------------------------------------------------------------- 6. Redis cuts the subscribers
def test_subscribers_cut_by_redis_while_busy(deployment_factory):
    """Redis closes the gateways' pub/sub connections (what it does to a subscriber over
    client-output-buffer-limit pubsub, here CLIENT KILL TYPE pubsub on our private Redis),
    three times while senders are busy: pushes published meanwhile are lost, so each
    gateway must notice, resubscribe and push its clients what they missed from the inbox
    (guarantee 3), without dropping their connections."""
    priv = services.need(services.private_redis, "a private redis-server")
    priv.start()
    dep = None
    try:
        dep = deployment_factory(config=FAST_CLUSTER, redis=priv.url)
        cast = Cast(dep, watcher_reconnect=False)
        gateways = ("gateway-0", "gateway-1")
        r = redis_lib.Redis.from_url(priv.url, socket_timeout=5)
        try:
            with cast.busy():
                for round_ in range(3):
                    lost = {g: dep.log(g).count("event=subscription_lost") for g in gateways}
                    marks = [len(s.acks) for s in cast.senders]
                    assert r.client_kill_filter(_type="pubsub") >= 2
                    for g in gateways:
                        wait_until(lambda: dep.log(g).count("event=subscription_lost") > lost[g]
                                   and dep.log(g).count("event=subscribed") > round_ + 1,
                                   timeout=15, what=f"{g} to notice the cut and resubscribe")
                    for s, mark in zip(cast.senders, marks):
                        s.wait_acks(mark + 5, 30)
        finally:
            r.close()
        total = cast.check(watchers_stay=True)
        print(f"subscribers cut: {total} acked, {cast.retries()} retries")
    finally:
        if dep is not None:
            dep.kill()
        priv.cleanup()


# ---------------------------------------------------------------- 7. no answer in time
def test_a_send_nobody_answers_closes_the_connection_instead_of_unavailable(deployment_factory):
    """Both forwarders frozen: a send waits send_timeout and is then NOT answered
    `unavailable` (that would promise "nothing was stored", and the frozen forwarder may
    still store it); the gateway says bye overloaded and closes.  The client resends with
    the same cmid once the forwarders are back: stored exactly once."""
    dep = deployment_factory(config=merge_config(FAST_CLUSTER, {"cluster": {"send_timeout": 2.0,
                                                                            "entry_ttl": 1.0}}))
    a, b = new_user(dep, "nt"), new_user(dep, "nr")
    befriend(a, b)
    fws = [dep.pid("forwarder-0"), dep.pid("forwarder-1")]
    c = a.connect()
    try:
        for pid in fws:
            os.kill(pid, signal.SIGSTOP)
        for pid in fws:
            services.wait_stopped(pid)
        c.send_request("send", to=b.name, body="late", cmid="nt-1")
        frames = c.expect_close(timeout=10)
        assert [f["op"] for f in frames] == ["bye"] and frames[0]["reason"] == "overloaded", frames
        assert frames[0]["retry_after"] > 0
        wait_until(lambda: "event=send_outcome_unknown" in dep.log("gateway-0") + dep.log("gateway-1"),
                   timeout=5, what="the gateway to log the unknown outcome (supervisord copies logs)")
    finally:
        for pid in fws:
            os.kill(pid, signal.SIGCONT)
        c.close()
    with a.connect() as c2:
        ack = c2.send_msg("late", to=b.name, cmid="nt-1", timeout=15)
        again = c2.send_msg("late", to=b.name, cmid="nt-1", timeout=15)
        assert (again["mid"], again["seq"]) == (ack["mid"], ack["seq"])
    with b.connect() as cb:
        msgs, head = cb.sync_all()
    assert [m["cmid"] for m in msgs] == ["nt-1"] and head == 1
