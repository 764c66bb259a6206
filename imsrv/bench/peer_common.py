"""What the peers of ``imsrv bench pairs --peer`` share (imsrv/bench/peer_mosquitto.py,
imsrv/bench/peer_ejabberd.py): a free loopback port for the private server, waiting for it
to listen, its log's tail, the counters
of one worker's pairs (:class:`PeerShard`) and the summing of the workers' results into
the dict every ``Peer.run_pairs`` returns (:func:`run_peer_shards`)."""
import socket
import subprocess
import time
from array import array

from imsrv.bench.workers import percentiles, run_shards

#: seconds connecting / registering / subscribing may take, on top of the run's timeout
SETUP_TIMEOUT = 60.0


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc, port, timeout, poll=0.05):
    """Poll a connect to 127.0.0.1:``port`` until it succeeds (True), the server process
    ``proc`` exits or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            pass
        try:
            proc.wait(timeout=poll)  # the poll interval, cut short if the server exits
        except subprocess.TimeoutExpired:
            continue
        return False
    return False


def log_tail(path, lines):
    """The last ``lines`` lines of the log file at ``path`` (or why there are none)."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


class PeerShard:
    """Counters and completion of one worker's pairs (in the worker process)."""

    def __init__(self, shard):
        from gevent.event import Event
        self.sent = self.acked = self.delivered = self.errors = 0
        self.latency = array("q")  # send -> delivery, µs
        self.unfinished = 2 * len(shard["pairs"])  # a sender and a recipient per pair
        self.done = Event()
        self.start_time = self.end = None
        self.timeout = shard["timeout"]
        self.problems = []  # the first few errors, for the bench's report

    def guard(self, fn, *args):
        """``fn(*args)`` with a lost connection counted as an error, not a dead greenlet
        (the clients' ProtocolErrors are ValueErrors)."""
        try:
            fn(*args)
        except (OSError, ValueError) as exc:
            self.error(f"{fn.__name__}: {exc!r}")

    def error(self, problem):
        self.errors += 1
        if len(self.problems) < 10:
            self.problems.append(problem)

    def finish(self):
        self.unfinished -= 1
        if not self.unfinished:
            self.end = time.monotonic()
            self.done.set()

    def start(self, barrier):
        """Wait for every worker's clients to be ready, then start the clock."""
        barrier.wait(SETUP_TIMEOUT)
        self.start_time = time.monotonic()

    def wait(self, report):
        deadline = self.start_time + self.timeout
        while not self.done.wait(timeout=0.25) and time.monotonic() < deadline:
            report(acked=self.acked, delivered=self.delivered)
        if not self.done.is_set():
            self.errors += self.unfinished
            self.problems.append(f"timeout: {self.unfinished} senders or recipients unfinished "
                                 f"after {self.timeout:.0f} s")
            self.end = time.monotonic()
        report(acked=self.acked, delivered=self.delivered)

    def result(self):
        return {"sent": self.sent, "acked": self.acked, "delivered": self.delivered,
                "errors": self.errors, "start": self.start_time, "end": self.end,
                "latency_us": self.latency, "problems": self.problems}


def run_peer_shards(drive_shard, shards, progress, timeout):
    """``run_shards(drive_shard, shards)`` and the sum of the PeerShard results ->
    {"sent", "acked", "delivered", "errors", "seconds", "acked_per_s", "delivered_per_s",
    "latency_ms": {"p50", "p90", "p99", "max"}, "problems"}; ``seconds`` runs from the
    first worker's start to the last worker's end."""

    def on_progress(totals, elapsed):
        progress({"acked": totals.get("acked", 0), "delivered": totals.get("delivered", 0)},
                 elapsed)

    results = run_shards(drive_shard, shards, on_progress if progress else None,
                         SETUP_TIMEOUT + timeout + 30)
    out = {key: sum(r[key] for r in results) for key in ("sent", "acked", "delivered", "errors")}
    seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
    out["seconds"] = seconds
    out["acked_per_s"] = out["acked"] / seconds if seconds > 0 else 0.0
    out["delivered_per_s"] = out["delivered"] / seconds if seconds > 0 else 0.0
    out["latency_ms"] = percentiles([x / 1000.0 for r in results for x in r["latency_us"]])
    out["problems"] = [p for r in results for p in r["problems"]][:10]
    return out
