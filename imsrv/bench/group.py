"""``imsrv bench group``: fan-out of group messages to every member, one group per size.

For each size K of ``--members`` the bench registers K users, makes one group of them
(the first creates it and invites the rest) and connects every member.  The first
``--senders`` members then send ``--messages`` messages each to the group, with at most
``--window`` unacked (default 1: one message at a time, so the latency is that of a
message, not of a queue).  Every other member gets a ``msg`` push.

Measured per size: deliveries/s (pushes over the span from the first send to the last
push) and the latency from a send to the push of the LAST member that got it
(p50/p90/p99/max), the issue's "last online member has it within 50 ms".  Members are
dealt over ``--workers`` processes; a push is timed by the process that reads it and a
send carries its write time in its body; CLOCK_MONOTONIC is one clock for every process
of the machine, so the parent takes each message's latest push over all workers.
"""
import time

import gevent
from gevent.event import Event
from gevent.pool import Pool

from . import SETUP_TIMEOUT, barrier, client, report, unique_prefix
from .workers import percentiles, run_shards, split

#: seconds between two counter reports of a worker while it measures
REPORT_EVERY = 0.2
#: a group_create / group_invite names at most this many users (docs/PROTOCOL.md section 4)
LIST_LIMIT = 500
#: connects + auths in flight per worker during setup
CONNECT_CONCURRENCY = 50


class _Member:
    __slots__ = ("name", "conn", "sends", "sent", "acked", "errors", "space")

    def __init__(self, name, sends):
        self.name, self.sends = name, sends
        self.conn = None
        self.sent = self.acked = self.errors = 0
        self.space = Event()


class _Run:
    """One worker's members and what they saw."""

    def __init__(self, shard):
        self.shard = shard
        self.members = [_Member(name, shard["messages"] if name in shard["senders"] else 0)
                        for name in shard["members"]]
        self.expected = sum(shard["total_messages"] - member.sends for member in self.members)
        self.to_ack = sum(member.sends for member in self.members)
        self.deliveries = 0
        self.last_push = {}    # (sender, cmid) -> monotonic time of the latest push seen here
        self.sent_at = {}      # (sender, cmid) -> the send's write time (from the body)
        self.pushes = {}       # (sender, cmid) -> pushes seen here
        self.problems = []
        self.done = Event()
        self.end = None

    def check(self):
        answered = sum(member.acked + member.errors for member in self.members)
        if self.deliveries >= self.expected and answered >= self.to_ack:
            if self.end is None:
                self.end = time.monotonic()
            self.done.set()

    def read_loop(self, member):
        group, last_push, sent_at, pushes = self.shard["group"], self.last_push, self.sent_at, self.pushes
        try:
            while True:
                frames = member.conn.read()
                now = time.monotonic()
                for frame in frames:
                    op = frame.get("op")
                    if op == "msg" and frame.get("group") == group:
                        key = (frame["from"], frame["cmid"])
                        last_push[key] = now
                        sent_at[key] = frame["body"]["t"]
                        pushes[key] = pushes.get(key, 0) + 1
                        self.deliveries += 1
                    elif op == "ack":
                        member.acked += 1
                        member.space.set()
                    elif op == "error":
                        member.errors += 1
                        member.space.set()
                        if len(self.problems) < 10:
                            self.problems.append(f"{member.name}: {frame}")
                self.check()
        except client.Closed as exc:
            self.problems.append(f"{member.name}: {exc}")
            member.errors += member.sends - member.acked - member.errors + 1
            self.done.set()

    def send_loop(self, member):
        group, text, window = self.shard["group"], "x" * self.shard["size"], self.shard["window"]
        while member.sent < member.sends:
            while member.sent - member.acked - member.errors >= window:
                member.space.clear()
                member.space.wait()
            member.conn.send({"op": "send", "id": member.sent, "group": group, "cmid": member.sent,
                              "body": {"t": time.monotonic(), "text": text}})
            member.sent += 1


def _drive(shard, report_counters):
    """Worker: connect this shard's members, wait for the others, send, time the pushes."""
    run = _Run(shard)
    pool = Pool(CONNECT_CONCURRENCY)
    greenlets = []
    try:
        def connect(member):
            account = shard["accounts"][member.name]
            member.conn, _ = client.open_gateway(account["gateway"], account["token"])
        pool.map(connect, run.members)
        report_counters(connected=len(run.members), deliveries=0)
        shard["barrier"].wait(SETUP_TIMEOUT)
        start = time.monotonic()
        deadline = start + shard["timeout"]
        greenlets = [gevent.spawn(run.read_loop, member) for member in run.members]
        greenlets += [gevent.spawn(run.send_loop, member) for member in run.members if member.sends]
        run.check()
        while not run.done.wait(REPORT_EVERY):
            report_counters(connected=len(run.members), deliveries=run.deliveries)
            if time.monotonic() > deadline:
                run.problems.append(f"timeout: {run.deliveries} of {run.expected} deliveries after "
                                    f"{shard['timeout']:.0f} s")
                break
        report_counters(connected=len(run.members), deliveries=run.deliveries)
    finally:
        gevent.killall(greenlets)
        pool.kill()
        for member in run.members:
            if member.conn is not None:
                member.conn.close()
    return {"start": start, "end": run.end or time.monotonic(), "deliveries": run.deliveries,
            "expected": run.expected, "sent": sum(member.sent for member in run.members),
            "acked": sum(member.acked for member in run.members),
            "errors": sum(member.errors for member in run.members),
            "last_push": run.last_push, "sent_at": run.sent_at, "pushes": run.pushes, "problems": run.problems}


def make_group(api, size, progress):
    """Register ``size`` users and put them in one group -> (group id, {name: login reply})."""
    prefix = unique_prefix("g")
    names = [f"{prefix}m{i}" for i in range(size)]
    accounts = client.register_and_login(api, names, progress=lambda count: progress.throttled(
        f"bench=group members={size} registered={count}/{size}", final=count == size))
    token = accounts[names[0]]["token"]
    others = names[1:]
    created = client.api_calls(api, [{"op": "group_create", "token": token, "name": f"bench {size}",
                                      "members": others[:LIST_LIMIT - 1]}])
    group = created[0]["group"]
    rest = others[LIST_LIMIT - 1:]
    client.api_calls(api, [{"op": "group_invite", "token": token, "group": group,
                            "users": rest[start:start + LIST_LIMIT]} for start in range(0, len(rest), LIST_LIMIT)])
    return group, accounts


def run_size(api, size, args, progress):
    """One group of ``size`` members -> its result row (a dict)."""
    group, accounts = make_group(api, size, progress)
    names = list(accounts)
    senders = names[:min(args.senders, size)]
    shares = split(names, args.workers)
    gate = barrier(len(shares))
    total = len(senders) * args.messages
    shards = [{"group": group, "members": share, "accounts": {name: accounts[name] for name in share},
               "senders": set(senders), "messages": args.messages, "total_messages": total, "window": args.window,
               "size": args.size, "timeout": args.timeout, "barrier": gate} for share in shares]
    results = run_shards(_drive, shards, progress=progress, timeout=SETUP_TIMEOUT + args.timeout + 30)
    last_push, sent_at, pushes = {}, {}, {}
    for result in results:
        sent_at.update(result["sent_at"])
        for key, moment in result["last_push"].items():
            last_push[key] = max(moment, last_push.get(key, moment))
            pushes[key] = pushes.get(key, 0) + result["pushes"][key]
    to_last = [(last_push[key] - sent_at[key]) * 1000.0 for key in last_push]
    start = min(result["start"] for result in results)
    end = max(result["end"] for result in results)
    deliveries = sum(result["deliveries"] for result in results)
    return {"members": size, "senders": len(senders), "messages": total,
            "sent": sum(result["sent"] for result in results),
            "acked": sum(result["acked"] for result in results), "deliveries": deliveries,
            "expected_deliveries": sum(result["expected"] for result in results),
            "errors": sum(result["errors"] for result in results),
            "incomplete_messages": sum(1 for key in last_push if pushes[key] < size - 1) + total - len(last_push),
            "seconds": end - start, "deliveries_per_s": deliveries / (end - start),
            "latency_to_last_ms": percentiles(to_last),
            "problems": [problem for result in results for problem in result["problems"]][:10]}


COLUMNS = ["members", "senders", "messages", "acked", "deliveries", "errors", "seconds", "deliveries/s",
           "to last p50 ms", "p90 ms", "p99 ms", "max ms"]


def main(args, deployment, info):
    """The group scenario: one run per size, table, --json -> exit status."""
    rows = []
    for size in args.members:
        progress = report.Progress(f"group members={size}", rates=("deliveries",))
        rows.append(run_size(deployment.api, size, args, progress))
        progress.done()
    report.print_header(info)
    report.table(COLUMNS, [[row["members"], row["senders"], report.number(row["messages"]), report.number(row["acked"]),
                            report.number(row["deliveries"]), report.number(row["errors"]),
                            report.number(row["seconds"], 2), report.number(row["deliveries_per_s"]),
                            *report.latency_cells(row["latency_to_last_ms"])] for row in rows])
    print(f"\nEvery member online; {args.senders} sender(s) x {args.messages} messages per group, up to "
          f"{args.window} unacked per sender, body {args.size} chars; latency: send -> push of the last "
          f"member; {args.workers} worker processes; deployment: {deployment.describe()}.")
    report.print_problems(rows)
    if args.json:
        report.write_json(args.json, {**info, "scenario": "group", "deployment": deployment.kind,
                                      "parameters": {"members": args.members, "messages": args.messages,
                                                     "senders": args.senders, "window": args.window,
                                                     "size": args.size, "workers": args.workers},
                                      "groups": rows})
    complete = all(row["errors"] == 0 and row["acked"] == row["messages"]
                   and row["deliveries"] == row["expected_deliveries"] for row in rows)
    return 0 if complete else 1
