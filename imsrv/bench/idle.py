"""``imsrv bench idle``: C authenticated connections held with heartbeats.

Measured: the connect + auth rate (connections/s, from the moment every worker starts
connecting to the last auth reply), and the server's resident memory (VmRSS from
/proc/PID/status) of every server process before the connections and after, while they
are all held, so the memory each held connection costs: (after - before) / connections
on that process.  The processes are the embedded server, or each gateway of the
distributed set (``--api``: the ``--server-pid`` ones).

Phases, the workers and the parent in step (imsrv.bench.Conductor):

1. register and log in this worker's users (in parallel over the workers: progress);
2. the parent restarts an embedded server (registering grew its heap: the figures are
   those of a fresh process, as the issue asks; the distributed gateways take no part in
   registering) and reads the RSS "before";
3. connect + auth, at most ``--concurrency`` in flight per worker;
4. hold ``--hold`` seconds: every connection pings every ``--heartbeat`` seconds from a
   random first moment (docs/PROTOCOL.md section 9: ping inside ``idle_timeout``);
5. every connection pings once more and must get its pong (held = answered);
6. the parent reads the RSS "after"; then all close.

Each worker process may open 20,000 files at most here, so the default number of
workers is one per 5,000 connections (at least 2).
"""
import math
import random
import time

import gevent
from gevent.event import Event

from . import SETUP_TIMEOUT, Conductor, client, report, unique_prefix
from .deploy import rss_kib
from .workers import split

#: connections a worker holds by default (its open-files limit is 20,000)
PER_WORKER = 5000
#: seconds between two counter reports of a worker
REPORT_EVERY = 0.2
#: seconds every held connection has to answer the final ping
FINAL_PING_TIMEOUT = 30.0


class _Held:
    """This worker's held connections and what their readers saw."""

    def __init__(self, conns):
        self.conns = conns           # name -> Conn
        self.pongs = self.final = self.pings = 0
        self.closed = []             # problems: connections the server closed
        self.all_answered = Event()
        self.closing = False

    def read_loop(self, name, conn):
        try:
            while True:
                for frame in conn.read():
                    if frame.get("op") == "pong":
                        self.pongs += 1
                        if frame.get("id") == "final":
                            self.final += 1
                            if self.final >= len(self.conns) - len(self.closed):
                                self.all_answered.set()
                    elif frame.get("op") in ("bye", "kicked", "error"):
                        self.closed.append(f"{name}: {frame}")
        except client.Closed as exc:
            if not self.closing:
                self.closed.append(f"{name}: {exc}")
                if self.final >= len(self.conns) - len(self.closed):
                    self.all_answered.set()

    def heartbeat_loop(self, every):
        """Ping each connection every ``every`` seconds, first at a random moment."""
        start = time.monotonic()
        due = sorted((random.uniform(0, every), name) for name in self.conns)
        while True:
            for offset, name in due:
                wait = start + offset - time.monotonic()
                if wait > 0:
                    gevent.sleep(wait)   # this connection's next heartbeat is a deadline
                try:
                    self.conns[name].send({"op": "ping"})
                    self.pings += 1
                except OSError:
                    pass   # its reader reports the close
            start += every

    def counters(self):
        return {"held": len(self.conns) - len(self.closed), "pings": self.pings, "pongs": self.pongs}


def _drive(shard, report_counters):
    """Worker: the phases of the module docstring (the parent waits at each boundary too)."""
    gate = shard["barrier"]
    accounts = client.register_and_login(shard["api"], shard["names"],
                                         progress=lambda count: report_counters(registered=count))
    report_counters(registered=len(accounts), connected=0)
    gate.wait(SETUP_TIMEOUT)   # all registered: the parent restarts an embedded server
    gate.wait(SETUP_TIMEOUT)   # the parent read the RSS before
    started = time.monotonic()
    connected, problems = client.connect_many(accounts, shard["concurrency"], progress=lambda done, failed:
                                              report_counters(registered=len(accounts), connected=done,
                                                              failed=failed))
    finished = time.monotonic()
    held = _Held({name: conn for name, (conn, _) in connected.items()})
    gateways = {}
    for name in connected:
        gateways[accounts[name]["gateway"]] = gateways.get(accounts[name]["gateway"], 0) + 1
    greenlets = [gevent.spawn(held.read_loop, name, conn) for name, conn in held.conns.items()]
    try:
        gate.wait(SETUP_TIMEOUT)   # all connected
        greenlets.append(gevent.spawn(held.heartbeat_loop, shard["heartbeat"]))
        hold_end = time.monotonic() + shard["hold"]
        while time.monotonic() < hold_end:
            gevent.sleep(min(REPORT_EVERY, max(0.0, hold_end - time.monotonic())))   # holding is a deadline
            report_counters(registered=len(accounts), connected=len(connected), failed=len(problems),
                            **held.counters())
        greenlets[-1].kill()
        for conn in held.conns.values():
            try:
                conn.send({"op": "ping", "id": "final"})
            except OSError:
                pass
        if held.conns:
            held.all_answered.wait(FINAL_PING_TIMEOUT)
        report_counters(registered=len(accounts), connected=len(connected), failed=len(problems), **held.counters())
        gate.wait(SETUP_TIMEOUT)   # all checked: the parent reads the RSS after
        gate.wait(SETUP_TIMEOUT)
    finally:
        held.closing = True
        gevent.killall(greenlets)
        for conn in held.conns.values():
            conn.close()
    return {"registered": len(accounts), "connected": len(connected), "started": started, "finished": finished,
            "answered": held.final, "pings": held.pings, "closed": len(held.closed), "gateways": gateways,
            "problems": (problems + held.closed)[:10]}


def _rss(pids):
    return {name: rss_kib(pid) for name, pid in pids.items()}


def default_workers(connections):
    return max(2, math.ceil(connections / PER_WORKER))


def main(args, deployment, info):
    """The idle scenario: hold the connections, measure, table, --json -> exit status."""
    workers = args.workers or default_workers(args.connections)
    if args.connections / workers > 19000:
        raise client.BenchError(f"{args.connections} connections over {workers} workers is more than the "
                                "20,000 files a process may open: give more --workers")
    prefix = unique_prefix("i")
    shards = [{"api": deployment.api, "names": share, "concurrency": args.concurrency, "heartbeat": args.heartbeat,
               "hold": args.hold} for share in split([f"{prefix}u{i}" for i in range(args.connections)], workers)]
    progress = report.Progress("idle", rates=("registered", "connected", "pongs"))
    phases = Conductor(_drive, shards, progress, SETUP_TIMEOUT * 3 + args.timeout + args.hold + FINAL_PING_TIMEOUT)
    phases.step()
    if deployment.kind == "embedded":
        progress.say("users registered: restarting the server, so its memory is that of a fresh process")
        deployment.kill_gateways()
        deployment.wait_gateways()
    pids = deployment.processes()
    before = _rss(pids)
    phases.step()
    phases.step(args.timeout)
    phases.step(args.hold + FINAL_PING_TIMEOUT + SETUP_TIMEOUT)
    after = _rss(pids)
    phases.step()
    results = phases.results()
    progress.done()

    connected = sum(result["connected"] for result in results)
    seconds = max(result["finished"] for result in results) - min(result["started"] for result in results)
    answered = sum(result["answered"] for result in results)
    per_process = {}
    for result in results:
        for gateway, count in result["gateways"].items():
            name = deployment.process_of(gateway)
            per_process[name] = per_process.get(name, 0) + count
    processes = []
    for name, pid in pids.items():
        count = per_process.get(name, 0)
        grown = after[name] - before[name] if after.get(name) is not None and before.get(name) is not None else None
        processes.append({"process": name, "pid": pid, "connections": count, "rss_before_kib": before.get(name),
                          "rss_after_kib": after.get(name),
                          "kib_per_connection": grown / count if grown is not None and count else None})
    summary = {"connections": args.connections, "connected": connected, "held": answered,
               "errors": args.connections - answered, "connect_seconds": seconds,
               "connects_per_s": connected / seconds if seconds > 0 else None,
               "pings": sum(result["pings"] for result in results)}
    _print(args, deployment, info, summary, processes, results, workers)
    return 0 if summary["errors"] == 0 else 1


def _print(args, deployment, info, summary, processes, results, workers):
    report.print_header(info)
    report.table(["connections", "connected", "held (answered the final ping)", "errors", "connect + auth s",
                  "connect + auth /s", "heartbeat pings"],
                 [[report.number(summary[key], digits) for key, digits in
                   (("connections", 0), ("connected", 0), ("held", 0), ("errors", 0), ("connect_seconds", 2),
                    ("connects_per_s", 0), ("pings", 0))]])
    print()
    if processes:
        report.table(["server process", "pid", "connections", "RSS before MiB", "RSS after MiB", "KiB per connection"],
                     [[process["process"], process["pid"], report.number(process["connections"]),
                       report.number(_mib(process["rss_before_kib"]), 1),
                       report.number(_mib(process["rss_after_kib"]), 1),
                       report.number(process["kib_per_connection"], 1)] for process in processes])
    else:
        print("No RSS figures: the server was given with --api and no --server-pid.")
    before = {"embedded": "a fresh server process (restarted once the users were registered)",
              "distributed": "fresh gateway processes (they take no part in registering users)"}
    print(f"\nRSS before: {before.get(deployment.kind, 'the running server as found')}; after: every connection "
          f"held.  Held {args.hold:g} s, a ping every {args.heartbeat:g} s per connection; {workers} worker "
          f"processes, {args.concurrency} connects in flight each; deployment: {deployment.describe()}.")
    for problem in [problem for result in results for problem in result["problems"]][:10]:
        print(f"problem: {problem}")
    if args.json:
        report.write_json(args.json, {**info, "scenario": "idle", "deployment": deployment.kind,
                                      "parameters": {"connections": args.connections, "workers": workers,
                                                     "hold": args.hold, "heartbeat": args.heartbeat,
                                                     "concurrency": args.concurrency},
                                      "summary": summary, "processes": processes})


def _mib(kib):
    return None if kib is None else kib / 1024.0
