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

Each test also proves that its fault happened and was felt (its docstring says how: a
test must fail with the fault turned into a no-op), and bounds the retries that could hide
a failure: none while all is healthy (before the fault), and after it only the kinds the
fault explains (``allowed`` below; tests/dist/cast.py Cast.check_retries).  MariaDB
outages are in test_faults_store.py, SIGKILLs of the other processes in test_kills.py.

Faults are only ever done to our own processes: daemons of our deployment (by the pid
supervisord reports) and private Redis / MariaDB servers started here on free ports (by
pid, through tests/services.py).  The machine's shared Redis and MariaDB are never touched.
"""
import os
import re
import signal
import time
from datetime import datetime, timezone

import pytest
import redis as redis_lib

import services
from harness.procs import wait_until
from harness.servers import merge_config
from harness.users import befriend, login, new_user

from .cast import AFTER, Cast, check_held_sends_waited_for_claim, entry_cmids, frozen, sigkill_with_pending_work
from .traffic import FAST_CLUSTER, progress

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]


# ---------------------------------------------------------------- 1. a forwarder dies
#: a forwarder's death is seen by clients only as a delay (claim_idle): no retry at all
FORWARDER_KILL_RETRIES = set()


def test_forwarder_sigkilled_while_busy(deployment_factory):
    """A forwarder SIGKILLed while it holds sends it has not finished: the other forwarder
    (or its restarted self) claims them after claim_idle and answers them; supervisord
    restarts it; nothing acked is lost or stored twice.

    How this proves the fault happened: forwarder-0 held pending ingress entries when
    SIGKILL hit it, a forwarder logged event=claimed, and forwarder-0 runs again under a
    new pid; the clients felt it: every send the dead forwarder held was acked only by a
    claim, at least claim_idle after it was sent, and never retried (no retry at all)."""
    dep = deployment_factory(config=FAST_CLUSTER)
    cast = Cast(dep, give_up=20.0)
    held_cmids = []
    with cast.busy():
        old = dep.pid("forwarder-0")
        cast.mark_fault()
        held = sigkill_with_pending_work(dep, "forwarder-0", "fw0", held_cmids=held_cmids,
                                         answered=cast.acked_any)
        t_kill = time.monotonic()
        # its unfinished sends are claimed by a live forwarder (restarted fw0 or fw1)
        wait_until(lambda: "event=claimed" in dep.log("forwarder-1") + dep.log("forwarder-0"),
                   timeout=20, what="a forwarder to claim the dead one's pending sends")
        dep.wait_ready("forwarder-0", runs=2, timeout=30)  # supervisord restarted it
        progress(cast.senders, AFTER, 60)
    assert dep.pid("forwarder-0") not in (0, old)
    check_held_sends_waited_for_claim(cast.senders, held_cmids, t_kill, FAST_CLUSTER["cluster"]["claim_idle"])
    retried = cast.check_retries(FORWARDER_KILL_RETRIES)
    total = cast.check()
    print(f"forwarder kill: {held} entries held ({len(held_cmids)} sends), {total} acked;"
          f" {cast.summary()}; retries {dict(retried)}")


# ---------------------------------------------------------------- 2. a gateway dies
#: its clients' sends in flight are cut (Closed, no bye), they reconnect (the dead gateway
#: refuses them until restarted), its watcher's connection drops
GATEWAY_KILL_RETRIES = {"Closed", "connect:*", "drop:Closed"}


def test_gateway_sigkilled_while_busy(deployment_factory):
    """A gateway SIGKILLed under supervisord: its clients see the connection drop,
    reconnect (on the other gateway, or the restarted one) and resend unacked sends with
    the same cmid: each stored once.  The restarted gateway forgets the routes of its dead
    run, so a user whose only session was there is offline again.

    How this proves the fault happened: gateway-0 runs again under a new pid; both senders
    on it saw their connection drop (no bye) after the kill, a send in flight there was
    resent after the drop (same cmid) and acked once, and the lurker whose only session
    was on it went offline; no retry happened before the kill."""
    dep = deployment_factory(config=FAST_CLUSTER)
    cast = Cast(dep, give_up=20.0)
    lurker = new_user(dep, "lurk")
    probe_user = cast.users[1]
    befriend(probe_user, lurker)
    lurking = dep.gateway(index=0)   # its only session, on the gateway about to die
    lurking.auth(lurker.token, "lurk")
    try:
        with cast.busy():
            old = dep.pid("gateway-0")
            cast.mark_fault()
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
    assert dep.pid("gateway-0") not in (0, old)
    dropped = [s for s in cast.senders if any("dropped gw0" in e for _, e in s.events)]
    assert len(dropped) >= 2, "the clients of the killed gateway never saw their connection drop"
    # sends in flight when it died were sent again (same cmid) after reconnecting
    resent = [c for s in dropped for c, why in s.retried.items() if "Closed" in why]
    assert resent, f"no send was in flight on the killed gateway: {[s.events[-8:] for s in dropped]}"
    retried = cast.check_retries(GATEWAY_KILL_RETRIES)
    assert retried["Closed"] >= 2, f"the senders on the killed gateway were not cut under a send: {dict(retried)}"
    total = cast.check()
    print(f"gateway kill: {total} acked, resent after the drop: {resent}; {cast.summary()}")


# ---------------------------------------------------------------- 3. Redis restarts empty
#: sends added while Redis is down are refused `unavailable` (nothing was stored); a send
#: whose XADD failed midway, or was not added again in time, gets bye overloaded, and its
#: client reconnects (auth needs Redis: `unavailable` until it is back)
REDIS_RESTART_RETRIES = {"unavailable", "bye:overloaded", "connect:*", "auth:unavailable", "sync:*"}


def test_redis_restarted_empty_while_busy(deployment_factory):
    """The deployment's (private) Redis SIGKILLed while sends wait in its ingress stream
    (the forwarders are frozen meanwhile, so some surely do) and started again with no
    data: the gateways notice, resubscribe, re-announce their live sessions and make them
    catch up (the watchers' connections stay open and are pushed every entry); the lost
    ingress entries are added again and answered; seq counters resume from MySQL, never
    going back; login finds the gateways again.

    How this proves the fault happened: Redis runs under a new pid and came back empty
    (the sends that waited in its stream are gone from it); both gateways logged
    event=routes_restored and added the lost sends again (event=sends_readded) after the
    restart; the sends that waited unacked in the lost stream were all acked in the end."""
    priv = services.need(services.private_redis, "a private redis-server")
    priv.start()
    dep = None
    try:
        # a longer send_timeout: a gateway adds a lost send again only while a forwarder
        # can still store it before the gateway gives up (send_timeout - entry_ttl)
        config = merge_config(FAST_CLUSTER, {"cluster": {"send_timeout": 10.0}})
        dep = deployment_factory(config=config, redis=priv.url)
        cast = Cast(dep, watcher_reconnect=False, give_up=30.0)
        gateways = ("gateway-0", "gateway-1")
        ingress = f"{dep.redis_prefix}:ingress"
        with cast.busy():
            restored = {g: dep.log(g).count("event=routes_restored") for g in gateways}
            readded = sum(dep.log(g).count("event=sends_readded") for g in gateways)
            old = priv.pid
            cast.mark_fault()
            with frozen([dep.pid("forwarder-0"), dep.pid("forwarder-1")]):
                # senders wait for acks of entries nobody reads now
                r = redis_lib.Redis.from_url(priv.url, socket_timeout=5)
                try:
                    wait_until(lambda: r.xlen(ingress) >= 2, timeout=10, what="sends to wait in the ingress stream")
                    # (an entry stays in the stream until its forwarder deletes it, after the ack)
                    acked = {cmid for s in cast.senders for _, cmid, _, _ in list(s.acks)}
                    waiting = [c for _, fields in r.xrange(ingress) for c in entry_cmids(fields) if c not in acked]
                    priv.kill()
                    priv.start()          # no RDB, no AOF: it comes back empty
                    assert priv.pid != old and r.xlen(ingress) == 0, "Redis did not come back empty"
                finally:
                    r.close()
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
        acked = {cmid for s in cast.senders for _, cmid, _, _ in s.acks}
        assert waiting and set(waiting) <= acked, \
            f"unacked sends that waited in the lost stream {waiting}: never acked {set(waiting) - acked}"
        retried = cast.check_retries(REDIS_RESTART_RETRIES)
        total = cast.check(watchers_stay=True)
        print(f"redis restart: {len(waiting)} sends lost with the stream, {total} acked; {cast.summary()};"
              f" retries {dict(retried)}")
    finally:
        if dep is not None:
            dep.kill()      # while the private Redis still runs (it deletes its keys)
        priv.cleanup()


# ---------------------------------------------------------------- 4. a gateway that does not come back
def test_a_dead_gateway_is_reaped_and_a_frozen_one_comes_back(deployment_factory):
    """gateway-0 frozen (SIGSTOP: no load report, supervisord sees nothing wrong): once its
    report is gateway_dead_after overdue, gateway-1 removes its routes, so its users go
    offline for their friends and login stops naming it.  Thawed (SIGCONT), its next report
    finds it was reaped: it puts its routes back, its users are online again, and its
    still-open connections get their pushes.

    How this proves the fault happened: while gateway-0 is frozen, its user's friend on
    gateway-1 is pushed "offline" (nothing else makes a connected user offline),
    gateway-1 logs event=gateway_reaped gateway=gw0 and login names gateway-1 only; after
    the thaw gateway-0 logs event=gateway_reinstated."""
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


# ---------------------------------------------------------------- 5. Redis cuts the subscribers
LOG_TS = re.compile(r"^ts=(\S+) .*event=(\w+)", re.M)


def _event_times(dep, program, event):
    """Wall-clock times (time.time() scale) of ``program``'s log lines of ``event``."""
    return [datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
            for ts, ev in LOG_TS.findall(dep.log(program)) if ev == event]


def _group_sends(senders, gid, since):
    """[(cmid, monotonic time of its ack)]: group sends first tried after ``since``, acked."""
    return [(cmid, at) for s in senders for (_, cmid, target, _), at in zip(s.acks, s.acked_at)
            if target == ("group", gid) and s.sent_at[cmid] > since]


#: a cut subscription is invisible to clients: no retry, no connection dropped (acks
#: lost with it come when the gateway adds the sends again: see the config below)
SUBSCRIBERS_CUT_RETRIES = set()


def test_subscribers_cut_by_redis_while_busy(deployment_factory):
    """Redis closes the gateways' pub/sub connections (what it does to a subscriber over
    client-output-buffer-limit pubsub, here CLIENT KILL TYPE pubsub on our private Redis),
    three times while senders are busy: pushes published meanwhile are lost, so each
    gateway must notice, resubscribe and push its clients what they missed from the inbox
    (guarantee 3), without dropping their connections.

    How this proves the fault happened: each round, one gateway (the victim) is frozen
    across the cut, so it cannot resubscribe before it is thawed; a group message (the
    victim's watcher is in the group) is first sent after the cut and acked (on the other
    gateway) before the victim even logged event=subscription_lost: its push to the
    victim was published while the victim's subscription was down, and was lost; the
    watcher's connection, never closed, must still be pushed it (check: no push missing,
    caught up with its inbox).  Both gateways log subscription_lost and subscribed again
    after every cut, and no client retried anything."""
    priv = services.need(services.private_redis, "a private redis-server")
    priv.start()
    dep = None
    try:
        # a gateway adds a send whose ack it lost again only while it is younger than
        # send_timeout - entry_ttl: more than a frozen victim's cut (about 1-2 s) + RETRY
        config = merge_config(FAST_CLUSTER, {"cluster": {"send_timeout": 10.0}})
        dep = deployment_factory(config=config, redis=priv.url)
        cast = Cast(dep, watcher_reconnect=False, give_up=30.0)
        gateways = ("gateway-0", "gateway-1")
        r = redis_lib.Redis.from_url(priv.url, socket_timeout=5)
        missed = []    # (victim, cmid): sent while the victim's subscription was down
        try:
            with cast.busy():
                cast.mark_fault()
                for round_ in range(3):
                    victim, other = round_ % 2, 1 - round_ % 2
                    lost = {g: len(_event_times(dep, g, "subscription_lost")) for g in gateways}
                    subscribed = {g: len(_event_times(dep, g, "subscribed")) for g in gateways}
                    marks = [len(s.acks) for s in cast.senders]
                    on_other = [s for s in cast.senders if s.conn is not None and s.conn.gateway == other]
                    with frozen([dep.pid(gateways[victim])]):
                        assert r.client_kill_filter(_type="pubsub") >= 2
                        t_cut = time.monotonic()
                        wait_until(lambda: _group_sends(on_other, cast.gid, t_cut), timeout=15,
                                   what=f"a group send from gateway-{other} while gateway-{victim} is cut off")
                        sent = _group_sends(on_other, cast.gid, t_cut)
                    for g in gateways:
                        wait_until(lambda: len(_event_times(dep, g, "subscription_lost")) > lost[g]
                                   and len(_event_times(dep, g, "subscribed")) > subscribed[g],
                                   timeout=15, what=f"{g} to notice the cut and resubscribe")
                    # acked before the victim noticed the cut: it can only have subscribed again later
                    noticed = _event_times(dep, gateways[victim], "subscription_lost")[lost[gateways[victim]]]
                    to_wall = time.time() - time.monotonic()
                    early = [cmid for cmid, at in sent if at + to_wall < noticed - 0.002]
                    assert early, f"round {round_}: no group send acked before gateway-{victim} noticed" \
                        f" the cut at {noticed:.3f}: {[(c, round(at + to_wall, 3)) for c, at in sent]}"
                    missed.extend((victim, cmid) for cmid in early)
                    for s, mark in zip(cast.senders, marks):
                        s.wait_acks(mark + 5, 30)
        finally:
            r.close()
        retried = cast.check_retries(SUBSCRIBERS_CUT_RETRIES)
        total = cast.check(watchers_stay=True)
        print(f"subscribers cut: {total} acked, sent while a subscription was down: {missed};"
              f" {cast.summary()}; retries {dict(retried)}")
    finally:
        if dep is not None:
            dep.kill()
        priv.cleanup()


# ---------------------------------------------------------------- 6. no answer in time
def test_a_send_nobody_answers_closes_the_connection_instead_of_unavailable(deployment_factory):
    """Both forwarders frozen: a send waits send_timeout and is then NOT answered
    `unavailable` (that would promise "nothing was stored", and the frozen forwarder may
    still store it); the gateway says bye overloaded and closes.  The client resends with
    the same cmid once the forwarders are back: stored exactly once.

    How this proves the fault happened: the send is not acked; the bye comes no sooner
    than send_timeout after the send, and the gateway logs event=send_outcome_unknown."""
    send_timeout = 2.0
    dep = deployment_factory(config=merge_config(FAST_CLUSTER, {"cluster": {"send_timeout": send_timeout,
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
        t_send = time.monotonic()
        c.send_request("send", to=b.name, body="late", cmid="nt-1")
        frames = c.expect_close(timeout=10)
        waited = time.monotonic() - t_send
        assert [f["op"] for f in frames] == ["bye"] and frames[0]["reason"] == "overloaded", frames
        assert waited >= send_timeout - 0.05, f"bye after {waited:.3f}s, before send_timeout"
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
