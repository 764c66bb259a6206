"""MariaDB outages of the distributed deployment WHILE SENDERS ARE BUSY (issues 5 and 10).

The deployment's own private MariaDB (tests/services.py PrivateMariaDB: started here on a
free port, stopped / paused by pid; the machine's shared MariaDB is never touched) is
stopped (SIGTERM, then started again on the same data) or paused (SIGSTOP / SIGCONT) while
the Cast of tests/dist/cast.py sends; then every inbox is checked as in test_faults.py
(check_delivery: each acked message in each recipient's inbox exactly once, send order,
seqs 1..head gapless, pushes complete).

Every case must show that the outage happened and was felt by the clients, not only that
the service works afterwards (issue 10, item 1: with pause/resume made no-ops, the old
test passed):

- **acks stalled**: no send first tried after the store went down was acked before it came
  back (`_stalled`): a sender gets at most the ack of the one send it had in flight;
- **and each case's own sign** (_check_sign): stop: a send refused `unavailable` with a
  message naming our MariaDB's port, and the forwarders logged event=store_unavailable;
  pause shorter than the commit deadline: the sends the forwarders were storing mid-pause
  (their pending ingress entries, read from Redis then) were acked only after the resume;
  pause longer than entry_ttl but shorter than send_timeout: a forwarder logged a
  transaction rolled back at its commit deadline (DeadlinePassed), a send of the stuck
  batches was refused `unavailable`, and every refused send's retry was acked with a ts
  no older than the refusal (check_delivery: the rollback check runs on real cases);
  pause longer than send_timeout: a send cut by bye overloaded and a gateway's
  event=send_outcome_unknown;
- **retries bounded**: none before the outage, and after it only the kinds it explains.

The forwarders log every store failure of a send batch (event=store_unavailable, with
DeadlinePassed when a transaction was rolled back at its commit deadline); the tests look
for those lines too.
"""
import time

import pytest

import services
from harness.servers import merge_config

from .cast import AFTER, Cast, held_by_forwarders
from .traffic import FAST_CLUSTER, progress

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]

#: what a stopped MariaDB explains: sends refused `unavailable` (cannot connect: nothing
#: stored); a send whose COMMIT outcome was unknown when the server went away is left
#: undecided and its client gets bye overloaded at send_timeout, then reconnects (auth
#: and sync need the store too)
STOPPED = {"unavailable", "bye:overloaded", "connect:*", "auth:unavailable", "sync:unavailable"}
#: a pause shorter than entry_ttl: the transactions wait and commit after it; a batch that
#: was already old when it began may pass its commit deadline and be refused
SHORT_PAUSE = {"unavailable"}
#: a pause past entry_ttl but shorter than send_timeout: refusals only
LONG_PAUSE = {"unavailable"}
#: a pause past send_timeout: the gateway gives up (bye overloaded), the client reconnects
PAST_SEND_TIMEOUT = {"bye:overloaded", "unavailable", "connect:*", "auth:unavailable", "sync:unavailable"}

#: (how, seconds, config on top of FAST_CLUSTER, retry kinds allowed, the sign each case
#: must show of the outage: see _check_sign)
OUTAGES = [
    pytest.param("stop", 3.0, None, STOPPED, "refused", id="stop-3s"),
    pytest.param("pause", 3.0, None, SHORT_PAUSE, "waited", id="pause-3s"),
    # past the commit deadline (entry_ttl 4 s), yet the gateway still waits (12 s) and
    # relays the forwarder's `unavailable`
    pytest.param("pause", 8.0, {"cluster": {"send_timeout": 12.0}}, LONG_PAUSE, "rolled_back",
                 id="pause-8s-rolled-back"),
    pytest.param("pause", 8.0, None, PAST_SEND_TIMEOUT, "cut", id="pause-8s-past-send_timeout"),
]
ROLLED_BACK = "DeadlinePassed"   # a forwarder's batch rolled back at its commit deadline
FORWARDERS = ("forwarder-0", "forwarder-1")


def _store_errors(dep):
    """The forwarders' event=store_unavailable log lines so far."""
    return [line for p in FORWARDERS for line in dep.log(p).splitlines() if "event=store_unavailable" in line]


def _stalled(senders, down, up):
    """Assert no send first tried after ``down`` was acked before ``up`` (monotonic
    times): while the store is away nothing new can be stored."""
    early = [(s.user.name, cmid, round(at - down, 3)) for s in senders
             for cmid, sent, at in s.ack_times() if sent > down and at < up]
    assert not early, f"sends made during the outage ({up - down:.1f}s) were acked during it: {early[:10]}"


def _refusals(senders, since, until=None, match=""):
    """[(cmid, message)] of the `unavailable` replies in [since, until) whose message
    holds ``match``."""
    return [(cmid, msg) for s in senders for t, cmid, code, msg in list(s.refusals)
            if code == "unavailable" and t >= since and (until is None or t < until) and match in (msg or "")]


def _check_sign(sign, cast, dep, priv, down, up, held, compared, logged, outcome_unknown):
    """The sign of the outage each case must show, seen by the clients and in the logs.
    ``held``: the cmids of the sends the forwarders were working on mid-outage (their
    pending ingress entries); ``compared``: the cmids refused `unavailable`, then acked
    (check_delivery compared their ts); ``logged``: the forwarders' store errors logged
    since the outage began."""
    refused = {cmid for cmid, _ in _refusals(cast.senders, down)}
    if sign == "refused":      # MariaDB stopped: the forwarders cannot connect to it
        named = _refusals(cast.senders, down, match=f":{priv.port}/")
        assert named, f"no send was refused naming our MariaDB (port {priv.port}): {_refusals(cast.senders, down)[:3]}"
        assert logged, "no forwarder logged event=store_unavailable while MariaDB was stopped"
    elif sign == "waited":     # paused within the commit deadline: the transactions wait it out
        acked_at = {cmid: at for s in cast.senders for cmid, _, at in s.ack_times()}
        early = {c: acked_at.get(c) for c in held if acked_at.get(c, up) < up}
        assert held and not early, f"sends the forwarders held during the pause {held}: acked before the resume {early}"
    elif sign == "rolled_back":
        rolled = [line for line in logged if ROLLED_BACK in line]
        assert rolled, f"no forwarder rolled a transaction back at its commit deadline: {logged[:3]}"
        # the sends of the stuck batches were refused (by the forwarder rolling back, or by
        # one that claimed them meanwhile), and each one's retry, stored later, has a later ts
        assert held and refused & set(held), \
            f"none of the sends held by stuck forwarders {held} was refused `unavailable`: refused {refused}"
        assert refused <= set(compared), f"refused sends {refused - set(compared)} were never acked"
    elif sign == "cut":        # past send_timeout: the gateway gave up on a send
        assert any(kind == "bye:overloaded" for a in cast.senders for t, kind, _ in a.retry_log if t >= down), \
            "no send outlived send_timeout"
        logged_unknown = sum(dep.log(g).count("event=send_outcome_unknown") for g in ("gateway-0", "gateway-1"))
        assert logged_unknown > outcome_unknown, "no gateway logged event=send_outcome_unknown"
    else:
        raise AssertionError(f"unknown sign {sign!r}")


@pytest.mark.parametrize("how,outage,config,allowed,sign", OUTAGES)
def test_mysql_outage_while_busy(deployment_factory, how, outage, config, allowed, sign):
    """The deployment's (private) MariaDB stopped (SIGTERM, then started again on the same
    data) or paused (SIGSTOP/SIGCONT) for ``outage`` seconds while senders are busy:
    senders get `unavailable`, or wait, or are told bye overloaded, and retry; nothing
    acked is lost, nothing stored twice; the service resumes by itself.  A forwarder
    blocked in a store transaction past its commit deadline (entry_ttl after the send was
    added) rolls it back, and its senders are answered `unavailable`: the copy stored
    later is their retry (check_delivery compares each such ack's ts with the refusal).

    How this proves the fault happened: the acks stalled (no send made during the
    outage was acked during it), plus the case's ``sign`` (_check_sign, module
    docstring): stop: a refusal naming our MariaDB and the forwarders' store errors
    logged; pause 3 s: the sends the forwarders were stuck with mid-pause were acked only
    after the resume; pause 8 s with send_timeout 12 s: a transaction rolled back at its
    commit deadline (logged), a send of the stuck batches refused, and every refused send
    acked later with a later ts; pause 8 s past send_timeout: a send cut by bye
    overloaded and event=send_outcome_unknown logged.  No retry before the outage, and
    only ``allowed`` kinds after it."""
    priv = services.need(services.private_mariadb, "a private MariaDB server")
    priv.start()
    dep = None
    try:
        dep = deployment_factory(config=merge_config(FAST_CLUSTER, config), mysql=priv.url)
        cast = Cast(dep, give_up=outage + 15.0)
        outcome_unknown = sum(dep.log(g).count("event=send_outcome_unknown") for g in ("gateway-0", "gateway-1"))
        with cast.busy():
            errors = len(_store_errors(dep))
            cast.mark_fault()
            if how == "stop":
                priv.stop()
            else:
                priv.pause()
            down = time.monotonic()
            # the outage itself (what happened during it is checked below); halfway, what
            # the forwarders are stuck with (Redis still answers)
            time.sleep(outage / 2)
            held = held_by_forwarders(dep)
            time.sleep(max(0.0, down + outage - time.monotonic()))
            marks = [len(s.acks) for s in cast.senders]
            up = time.monotonic()
            if how == "stop":
                priv.start()
            else:
                priv.resume()
            progress(cast.senders, AFTER, 60)
        _stalled(cast.senders, down, up)
        # sends first made after the outage were acked: the service came back by itself
        for s, mark in zip(cast.senders, marks):
            assert len(s.acks) >= mark + AFTER, f"{s!r}: {len(s.acks) - mark} acks after the outage"
        retried = cast.check_retries(allowed)
        stats = {}
        total = cast.check(stats=stats)
        logged = _store_errors(dep)[errors:]
        _check_sign(sign, cast, dep, priv, down, up, held, stats["refused_then_acked"], logged, outcome_unknown)
        print(f"mysql {how} {outage:g}s: {total} acked, refused then acked (ts compared):"
              f" {len(stats['refused_then_acked'])}, held by the forwarders mid-outage {held},"
              f" store errors logged {len(logged)} ({sum(ROLLED_BACK in x for x in logged)} rolled back);"
              f" {cast.summary()}")
    finally:
        if dep is not None:
            dep.kill()
        priv.cleanup()
