"""``imsrv bench storm``: every client reconnecting at once after the gateways restart.

C clients register, connect, authenticate and sync (workers, in parallel).  When all are
ready the bench SIGKILLs the gateways (embedded: the whole ``imsrv serve``, started again
on the same data and ports; distributed: both gateway processes, which supervisord
restarts).  Every client sees its connection drop and does what docs/PROTOCOL.md section
9 tells a client to do: reconnect with backoff and jitter (first retry after about 50 ms,
doubling up to 0.5 s), ``auth`` with its token, ``sync`` from its cursor until ``more``
is false.  ``--messages K`` notify messages are sent to every client while it is away
(through the API: during the gateways' downtime when the API stays up, distributed; right
after the restart, embedded, where the API restarts too), so a client is *back* once it
is authenticated and its cursor has reached its inbox head plus those K messages, by
sync or push.

Reported: the downtime (kill -> the server or gateways ready again), each client's time
from the kill until it is back (p50/p99/max), the time until the last one is back, the
reconnect attempts, and clients not back within ``--timeout``.  CLOCK_MONOTONIC is one
clock for every process of the machine, so the workers' times compare with the parent's
kill moment.
"""
import math
import random
import time

import gevent
from gevent.event import Event

from . import SETUP_TIMEOUT, Conductor, client, report, unique_prefix
from .deploy import DeployError
from .workers import percentiles, split

#: seconds before a client's first reconnect attempt, and the most between two
FIRST_BACKOFF, MAX_BACKOFF = 0.05, 0.5
#: inbox entries one sync asks for (the protocol's most)
SYNC_LIMIT = 1000
#: seconds between two counter reports of a worker
REPORT_EVERY = 0.2
#: users one notify names at most (docs/PROTOCOL.md section 4)
LIST_LIMIT = 500
#: clients a worker holds by default
PER_WORKER = 5000


class _Client:
    __slots__ = ("name", "account", "conn", "cursor", "target", "down", "back", "attempts")

    def __init__(self, name, account, conn):
        self.name, self.account, self.conn = name, account, conn
        self.cursor = self.target = 0
        self.down = self.back = None
        self.attempts = 0


def _sync(conn, cursor):
    """``sync`` from ``cursor`` until ``more`` is false -> the new cursor."""
    number = 0
    while True:
        number += 1
        request = {"op": "sync", "id": f"s{number}", "since": cursor, "limit": SYNC_LIMIT}
        reply = client.expect_ok(request, conn.call(request), ops=("sync",))
        for entry in reply["msgs"]:
            cursor = max(cursor, entry["seq"])
        if not reply["more"]:
            return cursor


def _read_until(conn, bench_client, target):
    """Read pushes, advancing the cursor, until it reaches ``target`` (raises Closed)."""
    while bench_client.cursor < target:
        for frame in conn.read():
            if frame.get("op") == "msg":
                bench_client.cursor = max(bench_client.cursor, frame["seq"])


class _Storm:
    def __init__(self, clients, deadline):
        self.clients = clients
        self.deadline = deadline
        self.back = 0
        self.problems = []
        self.all_back = Event()

    def life(self, bench_client):
        """Wait for the drop, then come back (see the module docstring)."""
        try:
            _read_until(bench_client.conn, bench_client, float("inf"))
        except client.Closed:
            bench_client.down = time.monotonic()
        bench_client.conn.close()
        backoff = FIRST_BACKOFF
        while time.monotonic() < self.deadline:
            bench_client.attempts += 1
            try:
                conn, _ = client.open_gateway(bench_client.account["gateway"], bench_client.account["token"],
                                              timeout=10.0)
            except (OSError, client.BenchError):
                gevent.sleep(backoff * random.uniform(0.5, 1.5))   # the backoff is a deadline
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            bench_client.conn = conn
            try:
                bench_client.cursor = _sync(conn, bench_client.cursor)
                _read_until(conn, bench_client, bench_client.target)
            except (client.Closed, client.BenchError) as exc:
                conn.close()
                if len(self.problems) < 10:
                    self.problems.append(f"{bench_client.name}: dropped again while syncing: {exc}")
                continue
            bench_client.back = time.monotonic()
            self.back += 1
            if self.back == len(self.clients):
                self.all_back.set()
            return


def _drive(shard, report_counters):
    """Worker: set up this shard's clients, report them ready, wait for the storm."""
    accounts = client.register_and_login(shard["api"], shard["names"],
                                         progress=lambda count: report_counters(registered=count))
    connected, problems = client.connect_many(
        accounts, shard["concurrency"],
        progress=lambda done, failed: report_counters(registered=len(accounts), ready=0, failed=failed))
    clients = []
    for name, (conn, auth) in connected.items():
        bench_client = _Client(name, accounts[name], conn)
        if auth["head"]:
            bench_client.cursor = _sync(conn, 0)
        bench_client.target = max(bench_client.cursor, auth["head"]) + shard["messages"]
        clients.append(bench_client)
    counters = {"registered": len(accounts), "failed": len(problems), "ready": len(clients)}
    report_counters(**counters, back=0)
    greenlets = []
    try:
        shard["barrier"].wait(SETUP_TIMEOUT)   # every client ready: the parent kills the gateways
        storm = _Storm(clients, time.monotonic() + shard["timeout"])
        greenlets = [gevent.spawn(storm.life, bench_client) for bench_client in clients]
        while not (storm.all_back.wait(REPORT_EVERY) or not clients):
            report_counters(**counters, back=storm.back)
            if time.monotonic() > storm.deadline + 1.0:
                break
        report_counters(**counters, back=storm.back)
    finally:
        gevent.killall(greenlets)
        for bench_client in clients:
            bench_client.conn.close()
    return {"clients": [(each.down, each.back, each.attempts) for each in clients], "failed": len(problems),
            "problems": (problems + storm.problems)[:10]}


def _notify_all(deployment, names, messages):
    """``messages`` notify messages to every one of ``names``, through the API."""
    requests = [{"op": "notify", "admin_key": deployment.admin_key, "to": names[start:start + LIST_LIMIT],
                 "body": {"storm": number}}
                for number in range(messages) for start in range(0, len(names), LIST_LIMIT)]
    if requests:
        client.api_calls(deployment.api, requests)


def main(args, deployment, info):
    """The storm scenario: ready, kill, come back, table, --json -> exit status."""
    if deployment.kind == "running":
        raise DeployError("storm restarts the gateways, so it needs a deployment the bench starts "
                          "(--embedded or --distributed), not --api")
    if args.messages and not deployment.admin_key:
        raise DeployError("--messages needs the server's admin key (notify)")
    workers = args.workers or max(2, math.ceil(args.connections / PER_WORKER))
    prefix = unique_prefix("s")
    names = [f"{prefix}u{i}" for i in range(args.connections)]
    shards = [{"api": deployment.api, "names": share, "concurrency": args.concurrency, "messages": args.messages,
               "timeout": args.timeout} for share in split(names, workers)]
    progress = report.Progress("storm", rates=("registered", "back"))
    phases = Conductor(_drive, shards, progress, SETUP_TIMEOUT + args.timeout + 30)
    phases.step()
    progress.say(f"all {args.connections} clients ready: killing the gateways")
    killed = time.monotonic()
    deployment.kill_gateways()
    if deployment.api_stays_up:
        _notify_all(deployment, names, args.messages)
    deployment.wait_gateways()
    up = time.monotonic()
    if not deployment.api_stays_up:
        _notify_all(deployment, names, args.messages)
    progress.say(f"gateways back after {up - killed:.2f} s; waiting for the clients")
    results = phases.results()
    progress.done()
    return _report(args, deployment, info, results, killed, up, workers)


def _report(args, deployment, info, results, killed, up, workers):
    clients = [entry for result in results for entry in result["clients"]]
    back = [entry[1] - killed for entry in clients if entry[1] is not None]
    failed = sum(result["failed"] for result in results)
    summary = {"clients": args.connections, "ready": len(clients), "setup_failures": failed, "back": len(back),
               "not_back": len(clients) - len(back), "down_seconds": up - killed,
               "back_seconds": percentiles(back, points=(50, 99)),
               "all_back_seconds": max(back) if len(back) == len(clients) and back else None,
               "reconnect_attempts": sum(entry[2] for entry in clients), "messages_per_client": args.messages}
    report.print_header(info)
    report.table(["clients", "back", "not back", "server down s", "back p50 s", "back p99 s", "back max s",
                  "all back s", "reconnect attempts"],
                 [[report.number(args.connections), report.number(len(back)),
                   report.number(summary["not_back"] + failed),
                   report.number(summary["down_seconds"], 2),
                   *[report.number(summary["back_seconds"][key], 2) for key in ("p50", "p99", "max")],
                   report.number(summary["all_back_seconds"], 2), report.number(summary["reconnect_attempts"])]])
    print(f"\nTimes from the SIGKILL of the gateways; back = authenticated and synced ({args.messages} notify "
          f"message(s) sent to each while away); {workers} worker processes; deployment: {deployment.describe()}.")
    report.print_problems(results)
    if args.json:
        report.write_json(args.json, {**info, "scenario": "storm", "deployment": deployment.kind,
                                      "parameters": {"connections": args.connections, "messages": args.messages,
                                                     "workers": workers, "concurrency": args.concurrency},
                                      "summary": summary})
    return 0 if summary["not_back"] == 0 and failed == 0 else 1
