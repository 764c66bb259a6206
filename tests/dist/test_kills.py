"""SIGKILL of any process of the distributed deployment, under load (issue 10, item 3).

test_faults.py breaks forwarder-0 or gateway-0 once; here every other kind of process is
SIGKILLed while clients are busy: the (private) mariadbd, restarted on the same data
directory; the API daemon while clients log in; both gateways one after the other; a
forwarder twice in a row; and supervisord itself.  After each fault the service must
resume by itself, and nothing acked may be lost or stored twice (check_delivery: each
acked message in each recipient's inbox exactly once, seqs 1..head gapless, per-sender
order, pushes in order with none missing).

Each test asserts what it saw of the fault (a new pid, the dying process's exit status,
clients that saw their connection drop, pending work the killed forwarder held, logins
that failed during the window...): none of them passes with the kill turned into a no-op.
Retries are bounded as in test_faults.py (Cast.check_retries): none before the kill, and
after it only the kinds that kill explains (the ``*_RETRIES`` sets below).
Only our own processes are ever killed, by pid; never the shared Redis / MariaDB.
"""
import re
import signal
import threading
import time

import pytest
import redis as redis_lib

import services
from harness.procs import wait_until
from harness.users import PASSWORD, unique_name
from harness.wire import Client, Closed, FrameTimeout

from .cast import AFTER, Cast, check_held_sends_waited_for_claim, entry_cmids, sigkill_with_pending_work
from .traffic import FAST_CLUSTER, progress

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]
FORWARDERS = ("forwarder-0", "forwarder-1")


def _count(dep, programs, pattern):
    return sum(dep.log(p).count(pattern) for p in programs)


# ---------------------------------------------------------------- a. mariadbd
#: what a dead mariadbd explains: sends refused `unavailable` (the forwarders cannot
#: connect); a send whose COMMIT outcome the crash left unknown stays undecided until the
#: server is back and may outlive send_timeout (bye overloaded, then a reconnect: auth and
#: sync need the store too)
MARIADB_KILL_RETRIES = {"unavailable", "bye:overloaded", "connect:*", "auth:unavailable", "sync:unavailable"}


def _refused_naming(senders, since, port):
    """[(cmid, message)] of the `unavailable` replies since ``since`` (monotonic) whose
    message names the MariaDB on ``port``."""
    return [(cmid, msg) for s in senders for t, cmid, code, msg in list(s.refusals)
            if code == "unavailable" and t >= since and f":{port}/" in (msg or "")]


def _sigkill_mid_store(priv, dep, idle_ms=200, timeout=20.0):
    """SIGKILL ``priv`` (the deployment's mariadbd) while forwarders are inside store calls
    on it: freeze it (SIGSTOP), wait until some ingress entry has been held by a forwarder
    for ``idle_ms`` (a healthy batch takes milliseconds: that forwarder is blocked on the
    frozen server, in a transaction or its COMMIT), then SIGKILL it (a stopped process
    dies of it too).  -> (pid killed, cmids of the sends in the entries held)."""
    ingress = f"{dep.redis_prefix}:ingress"
    r = redis_lib.Redis.from_url(dep.redis_url, socket_timeout=5)
    try:
        priv.pause()
        try:
            held = wait_until(
                lambda: [p["message_id"] for p in r.xpending_range(ingress, "forwarders", "-", "+", 100)
                         if p["time_since_delivered"] >= idle_ms],
                timeout=timeout, what="a forwarder to be blocked in a store call on the frozen mariadbd")
            cmids = [c for mid in held for _, fields in r.xrange(ingress, mid, mid) for c in entry_cmids(fields)]
        except BaseException:
            priv.resume()
            raise
        return priv.sigkill(), cmids
    finally:
        r.close()


def test_mariadbd_sigkilled_while_busy(deployment_factory):
    """The deployment's private mariadbd SIGKILLed while forwarders are inside store calls
    on it (_sigkill_mid_store; innodb_flush_log_at_trx_commit=2: what was committed is in
    the OS, so it survives the crash of the server), then started again on the SAME data
    directory and port: InnoDB recovers, the daemons' pools reconnect by themselves, the sends that were refused or
    whose COMMIT outcome was unknown are sent again (same cmid) or decided from their
    dedup records; every acked message is there exactly once, seqs gapless.

    How this proves the fault happened: mariadbd's exit status is -SIGKILL (sigkill()
    asserts it) and the restarted server has another pid; forwarders held sends in store
    calls on it when it died, and each of those was acked only after the restart; before
    the restart, senders were refused `unavailable` naming our MariaDB's port, and no
    send first tried after it was frozen was acked before the restart; no retry happened
    before the fault."""
    priv = services.need(services.private_mariadb, "a private MariaDB server")
    priv.start()
    dep = None
    try:
        dep = deployment_factory(config=FAST_CLUSTER, mysql=priv.url)
        cast = Cast(dep)
        with cast.busy():
            down = cast.mark_fault()
            old, held = _sigkill_mid_store(priv, dep)
            wait_until(lambda: _refused_naming(cast.senders, down, priv.port), timeout=20,
                       what="a send to be refused naming the dead mariadbd")
            up = time.monotonic()
            priv.start()     # same datadir, same port: crash recovery of what was committed
            assert priv.pid != old
            progress(cast.senders, AFTER, 60)
        waits = {cmid: (sent, at) for s in cast.senders for cmid, sent, at in s.ack_times()}
        early = [(cmid, round(at - down, 3)) for cmid, (sent, at) in waits.items() if sent > down and at < up]
        assert not early, f"sends made after mariadbd was frozen were acked before it came back: {early[:10]}"
        assert held, "no send was in a store call when mariadbd died"
        unsettled = [c for c in held if c not in waits or waits[c][1] < up]
        assert not unsettled, f"sends held in store calls when mariadbd died, acked before it came back" \
            f" or never: {unsettled}"
        retried = cast.check_retries(MARIADB_KILL_RETRIES)
        total = cast.check()
        print(f"mariadbd kill: {len(held)} sends in store calls at the kill,"
              f" {len(_refused_naming(cast.senders, down, priv.port))} refused naming it,"
              f" {_count(dep, FORWARDERS, 'event=batch_undecided')} batches undecided (COMMIT outcome"
              f" unknown), {total} acked; {cast.summary()}; retries {dict(retried)}")
    finally:
        if dep is not None:
            dep.kill()      # while the private MariaDB still runs (it drops its database)
        priv.cleanup()


# ---------------------------------------------------------------- b. the API daemon
class LoginLoop(threading.Thread):
    """Logs in (a new device each time) and, every third turn, registers a new user first,
    one fresh API connection per request, until stopped.  Records every token it got
    (with the gateway login named) and every failure (start, end, op, what)."""

    def __init__(self, dep, users, index):
        super().__init__(daemon=True, name=f"logins-{index}")
        self.dep, self.users, self.index = dep, list(users), index
        self.tokens = []        # (time, user, device, token, "host:port")
        self.failures = []      # (start, end, op, what): connection errors, `unavailable`
        self.wrong = []         # anything else: never acceptable
        self.stop_event = threading.Event()
        self.error = None

    def _request(self, op, **fields):
        """-> the reply, or None after a failure (recorded)."""
        t0 = time.monotonic()
        try:
            with self.dep.api(timeout=10.0) as c:
                rep = c.request(op, **fields)
        except (OSError, Closed, FrameTimeout) as exc:
            self.failures.append((t0, time.monotonic(), op, type(exc).__name__))
            return None
        if rep.get("op") == "error" and rep.get("code") == "unavailable":
            self.failures.append((t0, time.monotonic(), op, "unavailable"))
            return None
        return rep

    def _register(self):
        name, broken = unique_name("lg"), False
        while not self.stop_event.is_set():
            rep = self._request("register", user=name, password=PASSWORD)
            if rep is None:
                broken = True     # it may have been stored before the connection broke
                time.sleep(0.05)
                continue
            if rep.get("op") == "ok" or (broken and rep.get("code") == "conflict"):
                self.users.append(name)
                return
            self.wrong.append(("register", name, rep))
            return

    def run(self):
        try:
            for n in range(1_000_000):
                if self.stop_event.is_set():
                    return
                if n % 3 == 0:
                    self._register()
                user = self.users[-1] if n % 3 == 0 else self.users[n % len(self.users)]
                device = f"d{self.index}-{n}"
                rep = self._request("login", user=user, password=PASSWORD, device=device)
                if rep is None:
                    time.sleep(0.05)   # down: try again soon (a client's backoff)
                elif rep.get("op") == "ok" and rep.get("token"):
                    self.tokens.append((time.monotonic(), user, device, rep["token"], rep["gateway"]))
                else:
                    self.wrong.append(("login", user, rep))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def _token_works(user, device, token, gateway):
    host, port = gateway.rsplit(":", 1)
    with Client(host, int(port), timeout=10.0, label=f"check/{user}") as c:
        rep = c.request("auth", token=token, device=device)
    return rep.get("op") == "ok" and rep.get("user") == user, rep


def test_api_sigkilled_while_clients_log_in(deployment_factory):
    """The API daemon SIGKILLed while four threads register and log in: while it is down,
    requests fail only as connection errors (or `unavailable`), never with another answer;
    supervisord restarts it and logins succeed again; every token any login returned,
    before or after the kill, then works on the gateway that login named.

    How this proves the fault happened: the API's pid changed and it logged a second
    event=ready; logins failed (connection refused or closed) after the kill, and every
    failure lies between the kill and the restarted API being ready (none before)."""
    dep = deployment_factory(config=FAST_CLUSTER)
    seed = [unique_name("lg") for _ in range(4)]
    with dep.api() as c:
        for name in seed:
            c.call("register", user=name, password=PASSWORD)
    loops = [LoginLoop(dep, seed, i) for i in range(4)]
    for lp in loops:
        lp.start()
    try:
        wait_until(lambda: all(len(lp.tokens) >= 5 for lp in loops), timeout=30, what="logins to flow")
        old = dep.pid("api")
        t_kill = time.monotonic()
        dep.sigkill("api")
        wait_until(lambda: any(f[1] >= t_kill for lp in loops for f in lp.failures), timeout=20,
                   what="a login to fail while the API is down")
        dep.wait_ready("api", runs=2, timeout=30)
        t_ready = time.monotonic()
        wait_until(lambda: all(sum(t > t_ready for t, *_ in lp.tokens) >= 5 for lp in loops),
                   timeout=30, what="logins to succeed again after the restart")
    finally:
        for lp in loops:
            lp.stop_event.set()
        for lp in loops:
            lp.join(20)
    assert not any(lp.is_alive() for lp in loops), "a login thread did not stop"
    assert not [lp.error for lp in loops if lp.error], [lp.error for lp in loops]
    new = dep.pid("api")
    assert new not in (0, old), f"the API's pid is {new}, was {old}: it was not restarted"
    wrong = [w for lp in loops for w in lp.wrong]
    assert not wrong, f"answers other than ok / unavailable: {wrong[:5]}"
    failures = [f for lp in loops for f in lp.failures]
    assert failures, "no login failed: the API was never down"
    outside = [f for f in failures if f[1] < t_kill or f[0] > t_ready]
    assert not outside, f"logins failed outside the outage ({t_kill:.3f}..{t_ready:.3f}): {outside[:5]}"
    tokens = [tk for lp in loops for tk in lp.tokens]
    before = [tk for tk in tokens if tk[0] < t_kill]
    assert before, "no token was issued before the kill"
    for _, user, device, token, gateway in tokens:
        ok, rep = _token_works(user, device, token, gateway)
        assert ok, f"the token login gave {user} ({device}) does not work on {gateway}: {rep!r}"
    print(f"api kill: {len(failures)} failed requests while down"
          f" ({sorted({f[3] for f in failures})}), {len(tokens)} tokens checked, {len(before)} from before")


# ---------------------------------------------------------------- c. both gateways
#: the sends in flight on a killed gateway are cut (Closed, no bye); its clients reconnect
#: (the dead gateway refuses them until restarted); its watcher's connection drops
GATEWAY_KILL_RETRIES = {"Closed", "connect:*", "drop:Closed"}


def _dropped_since(agent, mark, gw):
    return any(f"dropped gw{gw}" in e for _, e in agent.events[mark:])


def test_both_gateways_sigkilled_one_after_the_other(deployment_factory):
    """gateway-0 SIGKILLed under load; once its clients are back (on gateway-1, or the
    restarted gateway-0) and acked again, gateway-1 SIGKILLed too, which by then holds
    about every client.  The clients reconnect and resend their unacked sends with the
    same cmid: each stored exactly once, nothing acked lost; pushes and inboxes intact.

    How this proves the fault happened: each gateway's pid changed and it logged a second
    event=ready; for each kill, the clients that were on that gateway (at least two
    senders) saw their connection drop, and some send in flight on it was resent (the
    same cmid) after the drop and acked; no retry happened before the first kill."""
    dep = deployment_factory(config=FAST_CLUSTER)
    cast = Cast(dep)
    seen = []
    with cast.busy():
        cast.mark_fault()
        for gw, program in enumerate(("gateway-0", "gateway-1")):
            victims = [a for a in cast.agents if (c := a.conn) is not None and c.gateway == gw]
            senders = [s for s in victims if s in cast.senders]
            assert len(senders) >= 2, f"{program}: only {senders} of the senders are on it"
            marks = {id(a): len(a.events) for a in cast.agents}
            old = dep.sigkill(program)
            for a in victims:
                wait_until(lambda: _dropped_since(a, marks[id(a)], gw) and a.client is not None,
                           timeout=20, what=f"{a!r} to see {program} die and reconnect")
            dep.wait_ready(program, runs=2, timeout=30)
            progress(cast.senders, 10, 60)
            new = dep.pid(program)
            assert new not in (0, old), f"{program}: pid {new}, was {old}"
            resent = [e.split(":")[0] for s in senders for _, e in s.events[marks[id(s)]:]
                      if e.startswith(f"{s.user.name}-") and e.endswith(": Closed")]
            assert resent, f"{program}: no send was in flight on it: {[s.events[-8:] for s in senders]}"
            seen.append((program, len(victims), resent))
        progress(cast.senders, AFTER, 60)
    acked = {cmid for s in cast.senders for _, cmid, _, _ in s.acks}
    for program, _, resent in seen:
        assert set(resent) <= acked, f"{program}: resent sends never acked: {set(resent) - acked}"
    retried = cast.check_retries(GATEWAY_KILL_RETRIES)
    total = cast.check()
    print(f"gateways killed in turn (program, clients on it, resent): {seen}; {total} acked;"
          f" {cast.summary()}; retries {dict(retried)}")


# ---------------------------------------------------------------- d. a forwarder, twice
#: a forwarder's death is seen by clients only as a delay (claim_idle): no retry at all
FORWARDER_KILL_RETRIES = set()


def test_forwarder_sigkilled_twice_in_a_row(deployment_factory):
    """forwarder-0 SIGKILLed while it holds sends it read but did not finish; supervisord
    restarts it; once the dead run's sends are finished (claimed and answered), the NEW
    run is SIGKILLed the same way, holding sends of its own.  No acked send lost or
    stored twice.

    How this proves the fault happened: forwarder-0 had three different pids; each time,
    it held pending ingress entries when SIGKILL hit it (sigkill_with_pending_work), the
    second time only sends first made after the first kill (the dead run's were all
    finished first), i.e. read by the restarted run; a forwarder logged event=claimed
    after each kill; every send held was acked only by a claim, at least claim_idle after
    it was sent, and never retried (no retry at all)."""
    dep = deployment_factory(config=FAST_CLUSTER)
    cast = Cast(dep)
    ingress = f"{dep.redis_prefix}:ingress"
    r = redis_lib.Redis.from_url(dep.redis_url, socket_timeout=5)
    pids, held, held_cmids, kills = [], [], [[], []], []
    try:
        with cast.busy():
            cast.mark_fault()
            for run in (1, 2):
                pids.append(dep.pid("forwarder-0"))
                claims = _count(dep, FORWARDERS, "event=claimed")
                held.append(sigkill_with_pending_work(dep, "forwarder-0", "fw0", held_cmids=held_cmids[run - 1],
                                                      answered=cast.acked_any))
                kills.append(time.monotonic())
                last = r.xinfo_stream(ingress)["last-generated-id"]
                wait_until(lambda: _count(dep, FORWARDERS, "event=claimed") > claims, timeout=20,
                           what="a forwarder to claim the dead one's pending sends")
                dep.wait_ready("forwarder-0", runs=run + 1, timeout=30)
                # every entry the dead run held is finished: what fw0 holds next, it read anew
                wait_until(lambda: not r.xpending_range(ingress, "forwarders", "-", last, 100,
                                                        consumername="fw0"),
                           timeout=20, what="the killed run's pending sends to be finished")
                progress(cast.senders, 5, 60)
            pids.append(dep.pid("forwarder-0"))
            progress(cast.senders, AFTER, 60)
    finally:
        r.close()
    assert len(set(pids)) == 3 and 0 not in pids, f"forwarder-0 pids {pids}"
    assert all(held) and all(held_cmids), (held, held_cmids)
    claim_idle = FAST_CLUSTER["cluster"]["claim_idle"]
    for n, (cmids, t_kill) in enumerate(zip(held_cmids, kills), 1):
        check_held_sends_waited_for_claim(cast.senders, cmids, t_kill, claim_idle, what=f"kill {n}")
    first_tries = {cmid: sent for s in cast.senders for cmid, sent, _ in s.ack_times()}
    old_run = [c for c in held_cmids[1] if first_tries[c] < kills[0]]
    assert not old_run, f"the second kill hit sends made before the first one: {old_run}"
    retried = cast.check_retries(FORWARDER_KILL_RETRIES)
    total = cast.check()
    print(f"forwarder killed twice: held {held} entries {held_cmids}, pids {pids}, {total} acked;"
          f" {cast.summary()}; retries {dict(retried)}")


# ---------------------------------------------------------------- e. supervisord itself
def test_supervisord_sigkilled_daemons_keep_serving(deployment_factory):
    """supervisord SIGKILLed under load: its daemons are orphaned (nobody restarts them,
    nobody reads their log pipes any more: a log line they write fails with EPIPE) and
    must keep serving: the senders keep getting acks, a new login works and its token is
    accepted by the gateway login names.  The test then kills the orphans by pid.

    How this proves the fault happened: supervisord's exit status is -SIGKILL,
    supervisorctl no longer reaches it, and the daemons that serve afterwards are the very
    pids from before, no longer its children.  Nothing else may be felt: no retry at all."""
    dep = deployment_factory(config=FAST_CLUSTER)
    cast = Cast(dep)
    with cast.busy():
        sup = dep.proc.pid
        cast.mark_fault()
        pids = dep.sigkill_supervisord()
        assert dep.proc.returncode == -signal.SIGKILL, \
            f"supervisord did not die of SIGKILL: returncode {dep.proc.returncode}"
        out = dep.supervisorctl("pid", "api", check=False)
        assert not re.fullmatch(r"\s*\d+\s*", out), f"supervisorctl still answers: {out!r}"
        progress(cast.senders, AFTER, 60)
        user = unique_name("sv")
        with dep.api() as c:
            c.call("register", user=user, password=PASSWORD)
            rep = c.call("login", user=user, password=PASSWORD, device="after")
        ok, auth = _token_works(user, "after", rep["token"], rep["gateway"])
        assert ok, f"login after the supervisord kill gave a token the gateway refuses: {auth!r}"
        for program, pid in pids.items():
            assert dep.owns(pid), f"{program} (pid {pid}) died with supervisord"
            with open(f"/proc/{pid}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            assert ppid != sup, f"{program} is still a child of the dead supervisord"
    retried = cast.check_retries(set())
    total = cast.check()
    orphans = dict(dep.orphans)
    dep.kill()
    assert not [p for p in orphans.values() if dep.owns(p)], "an orphaned daemon survived the cleanup"
    print(f"supervisord kill: daemons {pids} kept serving, {total} acked; {cast.summary()};"
          f" retries {dict(retried)}")
