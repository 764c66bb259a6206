"""``imsrv bench pairs``: N sender/recipient pairs, each sender sending M messages.

Each sender writes ``batch`` sends per socket write and keeps at most ``window`` of them
unacknowledged; its recipient counts the ``msg`` pushes.  Measured: acked sends/s,
delivered pushes/s, and the latency from the write of a send to the recipient's read of
its push (p50/p90/p99/max).  A send carries its write time in its body; sender and
recipient of a pair live in the same worker process, so one clock times both ends.
Pairs are dealt over ``--workers`` processes (imsrv.bench.workers); every worker sets up
its own users (register, login, befriend, connect, auth), then all start sending at
the same moment (a barrier), and the rates are taken over the span from that moment to
the last worker's last delivery.

``--rate R`` paces the senders to R sends/s in total (an open loop): each sender sends
its batches of ``batch`` on a schedule of its own, ``batch / (R / pairs)`` seconds apart,
the senders' schedules staggered evenly over that interval (across workers too); the
window still applies, and a sender that fell behind its schedule sends at once until it
is on it again.  The table then gives the offered rate and the achieved one (sent/s,
from the common start to the last write, and delivered/s), with the latency at that load:
the issue's "p99 send-to-push latency < 10 ms at half of the maximum rate" (``imsrv bench
sweep`` finds the maximum and runs the fractions).

``--peer mosquitto|ejabberd`` runs the same shape against that server
(imsrv/bench/peer_<name>.py, a ``Peer`` with the same ``run_pairs``), alternating imsrv
and peer rounds, and prints both and the ratio of the median delivered/s.
"""
import importlib
import shutil
import statistics
import tempfile
import time

import gevent
from gevent.event import Event

from . import SETUP_TIMEOUT, barrier, client, report, unique_prefix
from .workers import percentiles, run_shards, split

#: seconds between two counter reports of a worker while it measures
REPORT_EVERY = 0.2
#: what an imsrv ack promises, per deployment (for the table)
PROMISES = {
    "embedded": "stored in sender's and recipient's inbox, SQLite commit fsync'd (synchronous=FULL)",
    "distributed": "stored in both inboxes by a forwarder, MariaDB transaction committed",
    "running": "stored in both inboxes, the server's store committed",
}


class _Pair:
    """One sender and its recipient, with their counters."""

    __slots__ = ("sender", "recipient", "offset", "sender_conn", "recipient_conn", "sent", "acked", "errors",
                 "delivered", "space", "finished", "last_write")

    def __init__(self, sender, recipient, offset=0.0):
        self.sender, self.recipient, self.offset = sender, recipient, offset
        self.last_write = None
        self.sender_conn = self.recipient_conn = None
        self.sent = self.acked = self.errors = self.delivered = 0
        self.space = Event()
        self.finished = False


class _Run:
    """One worker's measured phase (see the module docstring)."""

    def __init__(self, pairs, shard):
        self.pairs = pairs
        self.messages, self.batch = shard["messages"], max(1, min(shard["batch"], shard["window"]))
        self.window, self.text = shard["window"], "x" * shard["size"]
        # --rate: this worker's senders each send at rate / pairs (sends/s), a batch at a time
        self.per_sender = shard["rate"] / shard["total_pairs"] if shard.get("rate") else None
        self.start = None
        self.latencies = []
        self.problems = []
        self.unfinished = len(pairs)
        self.done = Event()
        self.end = None

    def finish(self, pair):
        if not pair.finished:
            pair.finished = True
            self.unfinished -= 1
            if not self.unfinished:
                self.end = time.monotonic()
                self.done.set()

    def check(self, pair):
        if pair.acked + pair.errors >= self.messages and pair.delivered >= pair.acked:
            self.finish(pair)

    def fail(self, pair, problem):
        pair.errors += 1
        self.problems.append(problem)
        self.finish(pair)

    def send_loop(self, pair):
        conn, to, text = pair.sender_conn, pair.recipient, self.text
        rate = self.per_sender
        due = self.start + pair.offset * self.batch / rate if rate else None
        while pair.sent < self.messages:
            count = min(self.batch, self.messages - pair.sent)
            while pair.sent - pair.acked - pair.errors + count > self.window:
                pair.space.clear()
                pair.space.wait()
            if rate:
                wait = due - time.monotonic()
                if wait > 0:
                    gevent.sleep(wait)   # the schedule: behind it, the next batch goes at once
                due += count / rate
            now = time.monotonic()
            pair.last_write = now
            conn.send_batch([{"op": "send", "id": number, "to": to, "cmid": number, "body": {"t": now, "text": text}}
                             for number in range(pair.sent, pair.sent + count)])
            pair.sent += count

    def ack_loop(self, pair):
        try:
            while True:
                for frame in pair.sender_conn.read():
                    op = frame.get("op")
                    if op == "ack":
                        pair.acked += 1
                    elif op == "error":
                        pair.errors += 1
                        if len(self.problems) < 10:
                            self.problems.append(f"{pair.sender}: {frame}")
                pair.space.set()
                self.check(pair)
        except client.Closed as exc:
            self.fail(pair, f"{pair.sender}: {exc}")

    def push_loop(self, pair):
        latencies = self.latencies
        try:
            while True:
                frames = pair.recipient_conn.read()
                now = time.monotonic()
                for frame in frames:
                    if frame.get("op") == "msg":
                        pair.delivered += 1
                        latencies.append(now - frame["body"]["t"])
                self.check(pair)
        except client.Closed as exc:
            self.fail(pair, f"{pair.recipient}: {exc}")

    def counters(self):
        return {"acked": sum(pair.acked for pair in self.pairs),
                "delivered": sum(pair.delivered for pair in self.pairs)}


def _drive(shard, report_counters):
    """Worker: set up this shard's pairs, wait for the others, send, count, time."""
    client.use_tls(shard.get("tls"))
    pairs = [_Pair(sender, recipient, offset) for sender, recipient, offset in shard["pairs"]]
    names = [name for pair in pairs for name in (pair.sender, pair.recipient)]
    accounts = client.register_and_login(shard["api"], names, progress=lambda count: report_counters(registered=count))
    client.befriend(shard["api"], [(pair.sender, accounts[pair.sender]["token"], pair.recipient,
                                    accounts[pair.recipient]["token"]) for pair in pairs])
    run = _Run(pairs, shard)
    greenlets = []
    try:
        for pair in pairs:
            pair.sender_conn, _ = client.open_gateway(accounts[pair.sender]["gateway"], accounts[pair.sender]["token"])
            pair.recipient_conn, _ = client.open_gateway(accounts[pair.recipient]["gateway"],
                                                         accounts[pair.recipient]["token"])
        report_counters(registered=len(names), acked=0, delivered=0)
        shard["barrier"].wait(SETUP_TIMEOUT)
        start = run.start = time.monotonic()
        deadline = start + shard["timeout"]
        for pair in pairs:
            greenlets += [gevent.spawn(run.ack_loop, pair), gevent.spawn(run.push_loop, pair),
                          gevent.spawn(run.send_loop, pair)]
        while not run.done.wait(REPORT_EVERY):
            report_counters(**run.counters())
            if time.monotonic() > deadline:
                run.problems.append(f"timeout: {run.unfinished} pairs unfinished after {shard['timeout']:.0f} s")
                break
        end = run.end or time.monotonic()
        report_counters(**run.counters())
    finally:
        gevent.killall(greenlets)
        for pair in pairs:
            for conn in (pair.sender_conn, pair.recipient_conn):
                if conn is not None:
                    conn.close()
    writes = [pair.last_write for pair in pairs if pair.last_write is not None]
    return {"start": start, "end": end, "last_write": max(writes) if writes else None,
            "sent": sum(pair.sent for pair in pairs),
            "acked": sum(pair.acked for pair in pairs),
            "delivered": sum(pair.delivered for pair in pairs), "errors": sum(pair.errors for pair in pairs),
            "latencies": run.latencies, "problems": run.problems}


def run_pairs(api, pairs, messages, batch, window, size, workers, progress, timeout, rate=None):
    """One imsrv round against the API at ``api`` -> the result dict every peer returns
    too: sent, acked, delivered, errors, seconds, acked_per_s, delivered_per_s,
    latency_ms {p50, p90, p99, max}; plus ``problems`` (the first errors seen), and
    ``rate`` (the offered sends/s, None unpaced) and ``sent_per_s`` (achieved)."""
    prefix = unique_prefix("p")
    indices = split(list(range(pairs)), workers)
    gate = barrier(len(indices))
    shards = [{"api": api, "pairs": [(f"{prefix}s{i}", f"{prefix}r{i}", i / pairs) for i in share],
               "messages": messages, "batch": batch, "window": window, "size": size, "timeout": timeout,
               "barrier": gate, "rate": rate, "total_pairs": pairs, "tls": client.tls_spec()}
              for share in indices]
    results = run_shards(_drive, shards, progress=progress, timeout=SETUP_TIMEOUT + timeout + 30)
    return summarize(results, rate, max(1, min(batch, window)))


def summarize(results, rate=None, batch=1):
    """The workers' results -> one round's result (run_pairs).  Rates are taken from the
    common start: sent/s to the last write, acked/s and delivered/s to the last delivery.
    Paced, the senders' writes (all of them together) are ``batch / rate`` apart on
    schedule and the last write starts the last of those gaps, so the spans count that
    gap too: a run that kept to its schedule shows its offered rate, however short."""
    start = min(result["start"] for result in results)
    seconds = max(result["end"] for result in results) - start
    totals = {key: sum(result[key] for result in results) for key in ("sent", "acked", "delivered", "errors")}
    latencies = [value * 1000.0 for result in results for value in result["latencies"]]
    writes = [result["last_write"] for result in results if result.get("last_write") is not None]
    send_seconds = max(writes) - start if writes else 0.0
    if rate and writes:
        send_seconds += batch / rate
        seconds += batch / rate
    return {**totals, "rate": rate, "seconds": seconds,
            "sent_per_s": totals["sent"] / send_seconds if send_seconds > 0 else None,
            "acked_per_s": totals["acked"] / seconds, "delivered_per_s": totals["delivered"] / seconds,
            "latency_ms": percentiles(latencies),
            "problems": [problem for result in results for problem in result["problems"]][:10]}


class Imsrv:
    """imsrv as the ``pairs`` scenario sees it: the same interface as a peer."""

    name = "imsrv"

    def __init__(self, deployment):
        self.api = deployment.api
        self.promise = PROMISES[deployment.kind]

    def run_pairs(self, *args, rate=None):
        return run_pairs(self.api, *args, rate=rate)


def load_peer(name, workdir):
    """A started ``imsrv.bench.peer_<name>.Peer`` (a clear BenchError when it cannot be had)."""
    module_name = f"imsrv.bench.peer_{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise client.BenchError(f"--peer {name}: {module_name} (imsrv/bench/peer_{name}.py) does not exist "
                                    "in this version of imsrv") from None
        raise client.BenchError(f"--peer {name}: {module_name} needs the module {exc.name!r}, which is not "
                                f"installed") from None
    peer = module.Peer(workdir)
    try:
        peer.start()
    except Exception as exc:
        try:
            peer.stop()
        except Exception:
            pass   # what a failed start left may not stop cleanly; the start's error is the one to tell
        raise client.BenchError(f"--peer {name}: could not start it: {exc}") from exc
    return peer


def row(name, number, result, shape):
    """One table row of a round."""
    return [name, number, shape, report.number(result.get("rate")), report.number(result["acked"]),
            report.number(result["delivered"]), report.number(result["errors"]), report.number(result["seconds"], 2),
            report.number(result.get("sent_per_s")), report.number(result["acked_per_s"]),
            report.number(result["delivered_per_s"]), *report.latency_cells(result["latency_ms"])]


COLUMNS = ["server", "round", "pairs x messages", "offered/s", "acked", "delivered", "errors", "seconds", "sent/s",
           "acked/s", "delivered/s", "p50 ms", "p90 ms", "p99 ms", "max ms"]


def main(args, deployment, info):
    """The pairs scenario: rounds (alternating with the peer's), table, --json -> exit status."""
    shape = (args.pairs, args.messages, args.batch, args.window, args.size, args.workers)
    if args.rate and args.peer:
        raise client.BenchError("--rate paces imsrv's senders only: it does not go with --peer")
    if client.tls_spec() and args.peer:
        raise client.BenchError("--tls is for imsrv's connections only: it does not go with --peer")
    targets = [Imsrv(deployment)]
    peer_dir = None
    rounds = {"imsrv": []}
    try:
        if args.peer:
            peer_dir = tempfile.mkdtemp(prefix=f"imsrv-bench-{args.peer}-")
            targets.append(load_peer(args.peer, peer_dir))
            rounds[targets[1].name] = []
        for number in range(1, args.rounds + 1):
            for target in targets:
                progress = report.Progress(f"pairs server={target.name} round={number}/{args.rounds}",
                                           rates=("acked", "delivered"))
                result = target.run_pairs(*shape, progress, args.timeout, **({"rate": args.rate} if args.rate
                                                                              else {}))
                progress.done()
                rounds[target.name].append(result)
    finally:
        for target in targets[1:]:
            target.stop()
        if peer_dir:
            shutil.rmtree(peer_dir, ignore_errors=True)

    report.print_header(info)
    shape_cell = f"{args.pairs} x {args.messages}"
    report.table(COLUMNS, [row(target.name, number + 1, rounds[target.name][number], shape_cell)
                           for number in range(args.rounds) for target in targets])
    medians = {name: statistics.median(result["delivered_per_s"] for result in results)
               for name, results in rounds.items()}
    print(f"\nShape: {args.pairs} pairs, {args.messages} messages each, {args.batch} sends per write, up to "
          f"{args.window} unacked per sender, body {args.size} chars, {args.workers} worker processes"
          + (f", paced to {args.rate:,g} sends/s in total (offered/s; sent/s is what the senders achieved)"
             if args.rate else ", unpaced (as fast as acks and the window allow)")
          + f"; deployment: {deployment.describe()}"
          + (", every connection TLS (imsrv bench --tls)." if client.tls_spec() else "."))
    for target in targets:
        print(f"- {target.name} ack: {target.promise}")
    ratio = None
    if len(targets) > 1:
        peer_name = targets[1].name
        ratio = medians["imsrv"] / medians[peer_name] if medians[peer_name] else None
        print(f"\nRatio imsrv/{peer_name} delivered/s (median of {args.rounds} round{'s' if args.rounds > 1 else ''} each): "
              f"{report.number(medians['imsrv'])} / {report.number(medians[peer_name])} = "
              + (f"{ratio:.2f}x" if ratio is not None else "-"))
    report.print_problems([result for results in rounds.values() for result in results])
    if args.json:
        report.write_json(args.json, {**info, "scenario": "pairs", "deployment": deployment.kind,
                                      "parameters": dict(zip(("pairs", "messages", "batch", "window", "size",
                                                              "workers"), shape), rounds=args.rounds,
                                                     rate=args.rate, tls=bool(client.tls_spec())),
                                      "promises": {target.name: target.promise for target in targets}, "rounds": rounds,
                                      "median_delivered_per_s": medians, "ratio": ratio})
    complete = all(result["errors"] == 0 and result["acked"] == result["sent"] == args.pairs * args.messages
                   and result["delivered"] == result["acked"] for results in rounds.values() for result in results)
    return 0 if complete else 1
