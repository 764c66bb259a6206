"""Where the embedded server's send path spends its time under a paced load: the store
rounds of its one forwarder greenlet, per 100 ms.

    python bench/round_timeline.py --rate 15000 --messages 3000     # about half of the maximum here

It starts ``imsrv serve`` (SQLite, the bench's config: rate limits lifted) in a child
process whose ``Messaging.process_batch`` is timed (one round = one store transaction and
its acks and pushes), runs ``imsrv bench pairs --api ... --rate R`` against it, then
prints the rounds: messages, rounds, the share of the time the forwarder was busy, CPU
microseconds per message, and the slowest rounds.  A forwarder busy most of the time at a
given rate means that rate is close to what small rounds can carry: rounds grow (up to
``max_batch``) only once sends queue, and queueing is the latency.  Not a test.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from imsrv.bench.deploy import BENCH_CONFIG, _free_ports, _toml  # noqa: E402

# The child: imsrv serve with process_batch timed; at its exit (SIGTERM: a graceful stop)
# it writes the rounds as JSON.
CHILD = r"""
import atexit, json, sys, time
from imsrv.core import messaging
rounds = []
timed = messaging.Messaging.process_batch
def process_batch(self, reqs, *args, **kwargs):
    started, cpu = time.perf_counter(), time.thread_time()
    try:
        return timed(self, reqs, *args, **kwargs)
    finally:
        rounds.append((started, len(reqs), time.perf_counter() - started, time.thread_time() - cpu))
messaging.Messaging.process_batch = process_batch
def dump(path=sys.argv[1]):
    with open(path, "w") as stream:
        json.dump(rounds, stream)
atexit.register(dump)
sys.argv = ["imsrv"] + sys.argv[2:]
from imsrv.cli.main import main
main()
"""


def summarise(rounds, bucket=0.1):
    """-> rows per ``bucket`` seconds: (start s, messages, rounds, busy share, CPU us per
    message in rounds, slowest round ms)."""
    if not rounds:
        return []
    t0 = rounds[0][0]
    buckets = {}
    for started, size, wall, cpu in rounds:
        row = buckets.setdefault(int((started - t0) / bucket), [0, 0, 0.0, 0.0, 0.0])
        row[0] += size
        row[1] += 1
        row[2] += wall
        row[3] += cpu
        row[4] = max(row[4], wall)
    return [(key * bucket, m, n, wall / bucket, cpu * 1e6 / m if m else 0.0, slowest * 1000)
            for key, (m, n, wall, cpu, slowest) in sorted(buckets.items())]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=15000.0, help="sends/s offered (default 15000)")
    parser.add_argument("--messages", type=int, default=3000, help="messages per sender (default 3000)")
    parser.add_argument("--pairs", type=int, default=50, help="sender/recipient pairs (default 50)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="imsrv-rounds-")
    api_port, gateway_port = _free_ports(2)
    config = os.path.join(work, "imsrv.toml")
    with open(config, "w", encoding="utf-8") as stream:
        stream.write(_toml(dict(BENCH_CONFIG, server={"admin_key": "round-timeline"})))
    dump = os.path.join(work, "rounds.json")
    log = open(os.path.join(work, "server.log"), "wb")
    server = subprocess.Popen([sys.executable, "-c", CHILD, dump, "serve", "--config", config, "--data",
                               os.path.join(work, "data"), "--host", "127.0.0.1", "--api-port", str(api_port),
                               "--gateway-port", str(gateway_port), "--ws-port", "0"], stderr=log)
    try:
        deadline = time.monotonic() + 60
        while b"event=ready" not in open(log.name, "rb").read():
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the server did not start; its log: {log.name}")
            time.sleep(0.1)
        bench = subprocess.run([sys.executable, "-m", "imsrv.cli.main", "bench", "pairs", "--api",
                                f"127.0.0.1:{api_port}", "--admin-key", "round-timeline", "--server-pid",
                                str(server.pid), "--rate", str(args.rate), "--messages", str(args.messages),
                                "--pairs", str(args.pairs)], stdout=subprocess.PIPE, text=True, check=False)
        print("\n".join(line for line in bench.stdout.splitlines() if line.startswith("|")))
        server.send_signal(signal.SIGTERM)   # a graceful stop: the child writes the rounds at exit
        server.wait(timeout=60)
        with open(dump, encoding="utf-8") as stream:
            rounds = [r for r in json.load(stream) if r[1] > 0]
    finally:
        server.kill()
        server.wait()
        log.close()
    rows = summarise(rounds)
    sizes = sorted(r[1] for r in rounds)
    print(f"\n{len(rounds):,} rounds; messages per round p50 {sizes[len(sizes) // 2]}, "
          f"p90 {sizes[int(len(sizes) * 0.9)]}, max {sizes[-1]}")
    print("\n| from s | messages | rounds | forwarder busy | CPU us per message | slowest round ms |")
    print("|---|---|---|---|---|---|")
    for start, m, n, busy, cpu_us, slowest in rows[::5]:   # every 0.5 s
        print(f"| {start:.1f} | {m:,} | {n} | {busy:.0%} | {cpu_us:.0f} | {slowest:.1f} |")
    busy = sum(r[2] for r in rounds) / max(1e-9, rounds[-1][0] + rounds[-1][2] - rounds[0][0])
    cpu = sum(r[3] for r in rounds) * 1e6 / max(1, sum(r[1] for r in rounds))
    print(f"\nOverall: forwarder busy {busy:.0%} of the time, {cpu:.0f} us of its thread's CPU per message "
          "(the COMMIT's fsync runs on the writer thread: its time is busy, not CPU).  Logs: " + work)


if __name__ == "__main__":
    main()
