"""Load generator for a running imsrv (or one it starts): N online users in pairs, each
sending M messages with a window of W sends in flight; measures acked sends/s and the
send -> recipient push latency.  Traffic goes to 127.0.0.1 only; bounded by --messages
and --timeout, and stops by itself.

    python bench/loadgen.py                       # starts a throwaway embedded server
    python bench/loadgen.py --api 127.0.0.1:7001  # against a running one
    python bench/loadgen.py --distributed         # starts a throwaway supervisord set
    python bench/loadgen.py --users 200 --messages 50 --window 8 --mode line

Prints progress every second and a result table (markdown) at the end.

``--distributed`` runs the repo's supervisord.conf (2 gateways, 2 forwarders, API) in a
temporary directory against the local Redis and MySQL/MariaDB (or IMSRV_TEST_REDIS_URL /
IMSRV_TEST_MYSQL_URL), with a database and a Redis key prefix of its own that are dropped
at the end; it uses the test suite's harness (tests/harness/servers.py).  Each user
connects to the gateway its login names, so the load is spread over the gateways.
"""
import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import gevent
from gevent import socket as gsocket
from gevent.event import Event

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from imsrv import codec  # noqa: E402

PASSWORD = "loadgen-password"


class Conn:
    """Minimal pipelining client on imsrv.codec (binary or line mode)."""

    def __init__(self, addr, mode):
        host, port = addr.rsplit(":", 1)
        self.sock = gsocket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.mode = mode
        self.dec = codec.Decoder(1 << 24, mode=mode)

    def send(self, obj):
        self.sock.sendall(codec.encode(obj, self.mode))

    def frames(self):
        while True:
            data = self.sock.recv(262144)
            if not data:
                return
            for item in self.dec.feed(data):
                yield item

    def call(self, obj):
        self.send(obj)
        for f in self.frames():
            if f.get("id") == obj.get("id"):
                return f
        raise ConnectionError("closed")

    def close(self):
        self.sock.close()


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


#: the servers loadgen starts: fast password hashing, no rate limit in the way
LOAD_CONFIG = {
    "accounts": {"argon2_time_cost": 1, "argon2_memory_cost": 8192},
    "limits": {"user_send_rate": 100000.0, "user_send_burst": 100000, "conn_rate": 100000.0,
               "conn_burst": 100000, "login_addr_attempts": 1000000},
}


def stop_servers(proc=None, dep=None, tmp=None):
    """Stop what start_server / start_distributed started and remove its directory."""
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=30)
    if dep is not None:
        dep.kill()
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


def machine():
    """CPU model, cores, Python, codec: the line every result table carries."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            cpu = m.group(1) if m else cpu
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, codec "
            f"{codec.IMPLEMENTATION}; load generator and server on the same machine")


def start_distributed(tmp):
    """The supervisord set, through the test harness -> (deployment, api address)."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import services
    from harness.servers import Deployment
    print("loadgen: starting supervisord (2 gateways, 2 forwarders, API) on"
          f" {services.ensure_mysql()} and {services.ensure_redis()} in {tmp} ...", flush=True)
    dep = Deployment(tmp, services.ensure_mysql(), services.ensure_redis(), LOAD_CONFIG, name="loadgen")
    dep.start()
    return dep, f"127.0.0.1:{dep.api_port}"


def start_server(tmp):
    cfg = os.path.join(tmp, "imsrv.toml")
    with open(cfg, "w") as f:
        for section, values in LOAD_CONFIG.items():
            f.write(f"[{section}]\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items()))
    ports = []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s)
    api, gw, ws = (s.getsockname()[1] for s in ports)
    for s in ports:
        s.close()
    proc = subprocess.Popen([sys.executable, "-m", "imsrv.cli.main", "serve", "--config", cfg,
                             "--data", os.path.join(tmp, "data"), "--host", "127.0.0.1",
                             "--api-port", str(api), "--gateway-port", str(gw), "--ws-port", str(ws)],
                            stderr=subprocess.PIPE, cwd=ROOT)
    for line in proc.stderr:
        if b"event=ready" in line:
            break
    else:
        raise SystemExit("loadgen: server did not start")
    # keep draining its log; a real thread, since a blocking pipe read would stall the hub
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, f"127.0.0.1:{api}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--api", help="API host:port of a running server (default: start one)")
    ap.add_argument("--users", type=int, default=100, help="online users (even), in sender/recipient pairs")
    ap.add_argument("--messages", type=int, default=100, help="messages per sending user")
    ap.add_argument("--window", type=int, default=8, help="sends in flight per connection")
    ap.add_argument("--size", type=int, default=120, help="body text length (chars)")
    ap.add_argument("--mode", choices=("binary", "line"), default="binary")
    ap.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    ap.add_argument("--json", metavar="FILE",
                    help="also write the result as a JSON object to FILE (bench/sweep.py uses it)")
    ap.add_argument("--distributed", action="store_true",
                    help="start the supervisord set (Redis + MySQL) instead of an embedded server")
    args = ap.parse_args()
    users = max(2, args.users - args.users % 2)

    proc = tmp = dep = None
    if args.api:
        api = args.api
    elif args.distributed:
        tmp = tempfile.mkdtemp(prefix="imsrv-loadgen-")
        dep, api = start_distributed(tmp)
    else:
        tmp = tempfile.mkdtemp(prefix="imsrv-loadgen-")
        proc, api = start_server(tmp)
    run = "%04x" % (os.getpid() % 65536)
    names = [f"lg{run}_{i}" for i in range(users)]
    try:
        t0 = time.monotonic()
        print(f"loadgen: registering {users} users on {api} ...", flush=True)
        tokens = {}
        c = Conn(api, "binary")
        for i, n in enumerate(names):
            c.call({"op": "register", "id": i, "user": n, "password": PASSWORD})
            tokens[n] = c.call({"op": "login", "id": i, "user": n, "password": PASSWORD})
        gateways = sorted({t["gateway"] for t in tokens.values()})
        for i in range(0, users, 2):
            a, b = names[i], names[i + 1]
            c.call({"op": "friend_request", "id": 1, "token": tokens[a]["token"], "to": b})
            c.call({"op": "friend_accept", "id": 2, "token": tokens[b]["token"], "user": a})
        c.close()
        print(f"loadgen: setup {time.monotonic() - t0:.1f}s; connecting to {', '.join(gateways)}", flush=True)

        conns = {}
        for n in names:
            g = Conn(tokens[n]["gateway"], args.mode)   # where its login sends it
            ok = g.call({"op": "auth", "id": 0, "token": tokens[n]["token"]})
            assert ok["op"] == "ok", ok
            conns[n] = g
        body_text = "x" * args.size
        sent_at = {}
        latencies = []
        acked = [0]
        received = [0]
        expected = (users // 2) * args.messages
        done = Event()

        def reader(name, is_sender, window):
            for f in conns[name].frames():
                op = f.get("op")
                if op == "ack":
                    acked[0] += 1
                    window.release()
                elif op == "msg":
                    received[0] += 1
                    t = sent_at.pop(f["cmid"], None)
                    if t is not None:
                        latencies.append(time.monotonic() - t)
                    if received[0] >= expected:
                        done.set()
                elif op == "error":
                    print("loadgen: error", f, flush=True)
                    window.release()

        def sender(name, to, window):
            g = conns[name]
            for k in range(args.messages):
                window.acquire()
                cmid = f"{name}-{k}"
                sent_at[cmid] = time.monotonic()
                g.send({"op": "send", "id": k, "to": to, "cmid": cmid, "body": {"text": body_text, "k": k}})

        from gevent.lock import Semaphore
        greenlets = []
        start = time.monotonic()
        for i in range(0, users, 2):
            a, b = names[i], names[i + 1]
            w = Semaphore(args.window)
            greenlets.append(gevent.spawn(reader, a, True, w))
            greenlets.append(gevent.spawn(reader, b, False, Semaphore(0)))
            greenlets.append(gevent.spawn(sender, a, b, w))
        last = 0
        while not done.wait(timeout=1.0):
            el = time.monotonic() - start
            print(f"loadgen: {el:5.1f}s acked {acked[0]}/{expected} received {received[0]} "
                  f"({(received[0] - last)}/s)", flush=True)
            last = received[0]
            if el > args.timeout:
                print("loadgen: timeout", flush=True)
                break
        elapsed = time.monotonic() - start
        for g in greenlets:
            g.kill()
        for g in conns.values():
            g.close()
    finally:
        stop_servers(proc, dep, tmp)

    lat = [x * 1000 for x in latencies]
    print()
    print(f"Command: python bench/loadgen.py --users {users} --messages {args.messages} --window {args.window} "
          f"--size {args.size} --mode {args.mode}" + (" --distributed" if args.distributed else ""))
    print(f"Machine: {machine()}")
    print()
    print("| users | msgs delivered | seconds | msgs/s | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {users} | {received[0]} | {elapsed:.2f} | {received[0] / elapsed:.0f} | "
          f"{percentile(lat, 50):.1f} | {percentile(lat, 90):.1f} | {percentile(lat, 99):.1f} | "
          f"{max(lat) if lat else float('nan'):.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"users": users, "messages": args.messages, "window": args.window,
                       "delivered": received[0], "expected": expected, "seconds": elapsed,
                       "msgs_per_s": received[0] / elapsed, "p50_ms": percentile(lat, 50),
                       "p90_ms": percentile(lat, 90), "p99_ms": percentile(lat, 99)}, f)
    return 0 if received[0] >= expected else 1


if __name__ == "__main__":
    sys.exit(main())
