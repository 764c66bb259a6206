"""``imsrv bench idle``: C authenticated connections held with heartbeats.

Measured: the connect + auth rate (connections/s, from the moment every worker starts
connecting to the last auth reply), and the server's resident memory (VmRSS from
/proc/PID/status) of every server process before the connections and after, while they
are all held, so the memory each held connection costs: (after - before) / connections
on that process.  The processes are the embedded server, or each gateway of the
distributed set (``--gateways N`` of them; ``--api``: the ``--server-pid`` ones).  The
table gives each process's open-files limit too (/proc/PID/limits): it caps the
connections one process can hold.

Connections are devices: ``--devices D`` connections per user (default 100; the protocol
lets one user hold a session per device, ``auth`` with ``device``), so 100,000
connections are 1,000 users to register, not 100,000.  Connection i is device ``d<i % D>``
of user ``i // D``, and goes to gateway ``i % N`` of the deployment's N gateways (so every
gateway gets its share), from source address ``127.0.0.<2 + i % S>`` with ``--sources S``
(default one per 10,000 connections, none below that: the ephemeral ports, 32768-60999,
are counted per source and destination address).

``--connections 1000,5000,19000`` measures each count on a fresh deployment (one after
the other); ``--both`` does that on the embedded server, then on the distributed set;
``--plot FILE.svg`` draws server KiB per connection against connections held.  This
module measures; the tables, the plot and ``--json`` are imsrv/bench/idle_report.py's.

Phases of one measurement, the workers and the parent in step (imsrv.bench.Conductor):

1. register and log in this worker's users (in parallel over the workers: progress);
2. the parent restarts an embedded server (registering grew its heap: the figures are
   those of a fresh process, as the issue asks; the distributed gateways take no part in
   registering) and reads the RSS "before";
3. connect + auth, at most ``--concurrency`` in flight per worker (default 200 over all
   workers); a failed connect, or an ``auth`` answered ``unavailable`` (a backend did not
   answer in time: "retry later", docs/PROTOCOL.md section 9), is retried after a backoff
   (0.5 s doubling to 8 s, jittered; 6 attempts), and the table counts those retries; each
   connection heartbeats from the moment it is authenticated on (a connect phase can
   outlast the server's 90 s idle_timeout): a ping every ``--heartbeat`` seconds, the
   first at a random moment within that (section 9: ping inside ``idle_timeout``);
4. hold ``--hold`` seconds, heartbeating;
5. every connection pings once more and must get its pong (held = answered);
6. the parent reads the RSS "after"; then all close.

Each worker process may open 20,000 files at most here, so the default number of
workers is one per 12,500 connections (at least 2); a worker is given at most 19,000.
Everything is bounded: each phase has a timeout, and the run stops by itself.
"""
import heapq
import math
import os
import random
import time

import gevent
from gevent.event import Event
from gevent.pool import Pool

from . import SETUP_TIMEOUT, Conductor, client, report, unique_prefix
from .deploy import fd_limit, rss_kib
from .idle_report import print_report
from .workers import split, sum_counters

#: the deployments opened by main itself (cli.run hands it an opener, not a deployment)
OPENS_DEPLOYMENTS = True
#: connections a worker holds by default (its open-files limit is 20,000)
PER_WORKER = 12500
#: connections a worker may hold at most (its sockets, plus a few files of its own)
MAX_PER_WORKER = 19000
#: connections per source address by default (--sources)
PER_SOURCE = 10000
#: seconds between two counter reports of a worker
REPORT_EVERY = 0.2
#: seconds every held connection has to answer the final ping
FINAL_PING_TIMEOUT = 60.0
#: the heartbeat scheduler looks at its next due ping at least this often (seconds)
HEARTBEAT_TICK = 0.25
#: connects + auths in flight over all workers by default (--concurrency is per worker)
IN_FLIGHT = 200
#: attempts at connect + auth of one connection: an ``unavailable`` answer or a failed
#: connect is retried after a backoff, as a client does (docs/PROTOCOL.md section 9)
ATTEMPTS = 6
#: seconds of the first backoff; it doubles up to BACKOFF_MAX, with +-50 % jitter
BACKOFF, BACKOFF_MAX = 0.5, 8.0


class _Held:
    """This worker's held connections and what their readers saw."""

    def __init__(self, every):
        self.every = every
        self.conns = {}              # index -> Conn
        self.due = []                # heap of (monotonic time of the next ping, index)
        self.pongs = self.final = self.pings = 0
        self.expected_final = None   # set when the final pings go out
        self.closed = []             # problems: connections the server closed
        self.all_answered = Event()
        self.closing = False
        self.beating = True

    def add(self, index, conn):
        """A new authenticated connection: read it, and heartbeat it from now on."""
        self.conns[index] = conn
        heapq.heappush(self.due, (time.monotonic() + random.uniform(0, self.every), index))
        return gevent.spawn(self.read_loop, index, conn)

    def _check_final(self):
        if self.expected_final is not None and self.final >= self.expected_final - len(self.closed):
            self.all_answered.set()

    def read_loop(self, index, conn):
        try:
            while True:
                for frame in conn.read():
                    if frame.get("op") == "pong":
                        self.pongs += 1
                        if frame.get("id") == "final":
                            self.final += 1
                            self._check_final()
                    elif frame.get("op") in ("bye", "kicked", "error"):
                        self.closed.append(f"connection {index}: {frame}")
        except client.Closed as exc:
            if not self.closing:
                self.closed.append(f"connection {index}: {exc}")
                self._check_final()

    def heartbeat_loop(self):
        """Ping each connection every ``every`` seconds (the scheduler of every connection
        of this worker: one greenlet, a heap of due times)."""
        due = self.due
        while self.beating:
            now = time.monotonic()
            if not due or due[0][0] > now:
                gevent.sleep(HEARTBEAT_TICK if not due else min(HEARTBEAT_TICK, due[0][0] - now))
                continue
            when, index = heapq.heappop(due)
            try:
                self.conns[index].send({"op": "ping"})
                self.pings += 1
            except OSError:
                pass   # its reader reports the close
            heapq.heappush(due, (when + self.every, index))

    def counters(self):
        return {"held": len(self.conns) - len(self.closed), "pings": self.pings, "pongs": self.pongs}


def _drive(shard, report_counters):
    """Worker: the phases of the module docstring (the parent waits at each boundary too)."""
    client.use_tls(shard.get("tls"))
    gate = shard["barrier"]
    users = shard["users"]   # [(name, [(index, device), ...]), ...]
    accounts = client.register_and_login(shard["api"], [name for name, _ in users],
                                         progress=lambda count: report_counters(registered=count))
    report_counters(registered=len(accounts), connected=0)
    gate.wait(SETUP_TIMEOUT)   # all registered: the parent restarts an embedded server
    gate.wait(SETUP_TIMEOUT)   # the parent read the RSS before
    cpu_started = time.process_time()
    held = _Held(shard["heartbeat"])
    greenlets = [gevent.spawn(held.heartbeat_loop)]
    sources = shard["sources"]
    gateways, problems, retries, retry_problems = {}, [], {}, []

    def one(index, name, device):
        account = accounts[name]
        addresses = shard["gateways"] or account.get("gateways") or [account["gateway"]]
        address = addresses[index % len(addresses)]
        source = sources[index % len(sources)] if sources else None
        for attempt in range(1, ATTEMPTS + 1):
            try:
                conn, _ = client.open_gateway(address, account["token"], device=device, source=source)
                break
            except (OSError, client.BenchError) as exc:
                retryable = isinstance(exc, OSError) or (isinstance(exc, client.Refused)
                                                         and exc.reply.get("code") == "unavailable")
                what = f"{name}/{device}: connect/auth to {address}" + (f" from {source}" if source else "")
                if not retryable or attempt == ATTEMPTS:
                    problems.append(f"{what}, attempt {attempt}: {exc}")
                    return
                reason = "unavailable" if isinstance(exc, client.Refused) else type(exc).__name__
                retries[reason] = retries.get(reason, 0) + 1
                if sum(retries.values()) <= 3:
                    retry_problems.append(f"{what}, attempt {attempt} (retried): {exc}")
                gevent.sleep(min(BACKOFF * 2 ** (attempt - 1), BACKOFF_MAX) * random.uniform(0.5, 1.5))
        gateways[address] = gateways.get(address, 0) + 1
        greenlets.append(held.add(index, conn))

    def counters():
        return dict(registered=len(accounts), connected=len(held.conns), failed=len(problems),
                    retried=sum(retries.values()), **held.counters())

    pool = Pool(shard["concurrency"])
    try:
        started = time.monotonic()

        def feed():
            for name, devices in users:
                for index, device in devices:
                    pool.spawn(one, index, name, device)   # waits for a free slot
            pool.join()

        feeder = gevent.spawn(feed)
        greenlets.append(feeder)
        while not feeder.ready():
            feeder.join(timeout=REPORT_EVERY)
            report_counters(**counters())
        feeder.get()
        finished = time.monotonic()
        cpu_connect = time.process_time() - cpu_started
        report_counters(**counters())
        gate.wait(SETUP_TIMEOUT)   # all connected
        hold_end = time.monotonic() + shard["hold"]
        while time.monotonic() < hold_end:
            gevent.sleep(min(REPORT_EVERY, max(0.0, hold_end - time.monotonic())))   # holding is a deadline
            report_counters(**counters())
        held.beating = False
        held.expected_final = len(held.conns)
        for conn in list(held.conns.values()):
            try:
                conn.send({"op": "ping", "id": "final"})
            except OSError:
                pass
        held._check_final()
        if held.conns:
            held.all_answered.wait(FINAL_PING_TIMEOUT)
        report_counters(**counters())
        gate.wait(SETUP_TIMEOUT)   # all checked: the parent reads the RSS after
        gate.wait(SETUP_TIMEOUT)
    finally:
        held.closing = True
        pool.kill()
        gevent.killall(greenlets)
        for conn in held.conns.values():
            conn.close()
    return {"registered": len(accounts), "connected": len(held.conns), "started": started, "finished": finished,
            "cpu_connect": cpu_connect,
            "answered": held.final, "pings": held.pings, "closed": len(held.closed), "gateways": gateways,
            "retries": retries, "problems": (problems + held.closed + retry_problems)[:10]}


def _rss(pids):
    return {name: rss_kib(pid) for name, pid in pids.items()}


def _cpu_seconds(pids):
    """User + system CPU seconds used so far by all of ``pids`` together (from
    /proc/PID/stat), or None if one cannot be read."""
    total = 0.0
    for pid in pids.values():
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stream:
                fields = stream.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime, stime
    return total


def default_workers(connections):
    return max(2, math.ceil(connections / PER_WORKER))


def default_sources(connections):
    return math.ceil(connections / PER_SOURCE) if connections > PER_SOURCE else 0


def plan(connections, devices, workers):
    """The users of a measurement: [(user number, [(connection index, device), ...]), ...]
    dealt over ``workers`` -> a list of shares (one per worker)."""
    devices = max(1, min(devices, connections))
    users = [(number, [(index, f"d{index % devices}") for index in
                       range(number * devices, min(connections, (number + 1) * devices))])
             for number in range(math.ceil(connections / devices))]
    return split(users, workers), devices


def measure(args, deployment, connections):
    """One measurement on ``deployment`` -> the point dict (see main)."""
    workers = args.workers or default_workers(connections)
    shares, devices = plan(connections, args.devices, workers)
    biggest = max(sum(len(devs) for _, devs in share) for share in shares)
    if biggest > MAX_PER_WORKER:
        raise client.BenchError(f"{connections} connections over {len(shares)} workers is {biggest} for one, more "
                                f"than the {MAX_PER_WORKER:,} a process may hold here (20,000 open files): give "
                                "more --workers, or fewer --devices")
    gateway_list = deployment.gateway_list()
    loopback = all(address.startswith("127.") for address in (gateway_list or [deployment.api]))
    count = args.sources if args.sources is not None else default_sources(connections)
    sources = [f"127.0.0.{2 + i}" for i in range(min(count, 250))] if loopback else []
    prefix = unique_prefix("i")
    concurrency = args.concurrency or max(10, math.ceil(IN_FLIGHT / len(shares)))
    shards = [{"api": deployment.api, "gateways": gateway_list, "sources": sources,
               "users": [(f"{prefix}u{number}", devs) for number, devs in share], "concurrency": concurrency,
               "heartbeat": args.heartbeat, "hold": args.hold, "tls": client.tls_spec()} for share in shares]
    progress = report.Progress(f"idle deployment={deployment.kind} connections={connections}",
                               rates=("registered", "connected", "pongs"))
    phases = Conductor(_drive, shards, progress, SETUP_TIMEOUT * 3 + args.timeout + args.hold + FINAL_PING_TIMEOUT)
    phases.step()
    if deployment.kind == "embedded":
        progress.say("users registered: restarting the server, so its memory is that of a fresh process")
        deployment.kill_gateways()
        deployment.wait_gateways()
    pids = deployment.processes()
    before = _rss(pids)
    cpu_before = _cpu_seconds(pids)
    phases.step()
    phases.step(args.timeout)
    cpu_after = _cpu_seconds(pids)
    phases.step(args.hold + FINAL_PING_TIMEOUT + SETUP_TIMEOUT)
    after = _rss(pids)
    limits = {name: fd_limit(pid) for name, pid in pids.items()}
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
        processes.append({"process": name, "pid": pid, "open_files_limit": limits.get(name), "connections": count,
                          "rss_before_kib": before.get(name), "rss_after_kib": after.get(name),
                          "kib_per_connection": grown / count if grown is not None and count else None})
    grown = [process["rss_after_kib"] - process["rss_before_kib"] for process in processes
             if process["rss_after_kib"] is not None and process["rss_before_kib"] is not None]
    measured = sum(process["connections"] for process in processes
                   if process["rss_after_kib"] is not None and process["rss_before_kib"] is not None)
    summary = {"connections": connections, "users": math.ceil(connections / devices), "devices": devices,
               "connected": connected, "held": answered, "errors": connections - answered,
               "connect_seconds": seconds, "connects_per_s": connected / seconds if seconds > 0 else None,
               "pings": sum(result["pings"] for result in results),
               # CPU per connect + auth, server processes (all of them, from /proc) and the
               # load generator (its workers' process time while connecting): on a machine
               # shared by both, their sum bounds the connect rate
               "server_cpu_us_per_connect": (cpu_after - cpu_before) * 1e6 / connected
               if connected and cpu_before is not None and cpu_after is not None else None,
               "loadgen_cpu_us_per_connect": sum(result["cpu_connect"] for result in results) * 1e6 / connected
               if connected else None,
               "retried": sum_counters([result["retries"] for result in results]),
               "rss_grown_kib": sum(grown) if grown else None,
               "kib_per_connection": sum(grown) / measured if grown and measured else None}
    return {"deployment": deployment.kind, "described": deployment.describe(), "tls": bool(client.tls_spec()),
            "workers": len(shares),
            "concurrency": concurrency, "sources": sources, "summary": summary, "processes": processes,
            "problems": [problem for result in results for problem in result["problems"]][:10]}


def main(args, open_deployment, info):
    """The idle scenario: each deployment x each connection count, measured on a fresh
    deployment; tables, --plot, --json (idle_report.print_report) -> exit status."""
    kinds = ["embedded", "distributed"] if args.both else [None]
    points = []
    for kind in kinds:
        for connections in args.connections:
            with open_deployment(kind=kind) as deployment:
                points.append(measure(args, deployment, connections))
    print_report(args, info, points)
    return 0 if all(point["summary"]["errors"] == 0 for point in points) else 1
