"""Server processes and small helpers for the client SDK tests.

``ServerProc`` is a real `imsrv serve` subprocess on free local ports (picked by binding
port 0), started with its own config and data dir; readiness is the ``event=ready`` line
on its stderr, seen by a reader thread (never a sleep).  ``DistributedServer`` is the
distributed set under the real supervisord (tests/dist/deployment.py) behind the same
interface (``api``, ``gateways``, ``name``, ``pid``, ``tail``, ``count``, ``kill``).
Only processes started here are killed, by pid.  Waiting on those threads goes through
gevent's thread pool, so client greenlets keep running while a test waits for a server.
"""
import itertools
import json
import os
import random
import signal
import socket
import string
import subprocess
import sys
import threading
import time
from pathlib import Path

import gevent

REPO = Path(__file__).resolve().parents[2]
BASE_CONFIG = {
    "server": {"websocket_port": 0},   # the WebSocket gateway is not what these tests are about
    "accounts": {"argon2_time_cost": 1, "argon2_memory_cost": 8192},
    "limits": {"login_user_attempts": 100000, "login_addr_attempts": 100000,
               "login_user_global_attempts": 100000,
               "user_send_rate": 100000.0, "user_send_burst": 100000,
               "conn_rate": 100000.0, "conn_burst": 100000},
}
PASSWORD = "client-test-pw1"


def free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def merge(*configs):
    out = {}
    for cfg in configs:
        for section, values in (cfg or {}).items():
            out.setdefault(section, {}).update(values)
    return out


def to_toml(config):
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif isinstance(v, str):
                v = json.dumps(v)
            lines.append(f"{k} = {v}")
        lines.append("")
    return "\n".join(lines)


def in_thread(fn, *args):
    """Run a blocking call in gevent's thread pool (the hub keeps running)."""
    return gevent.get_hub().threadpool.apply(fn, args)


class ServerProc:
    deployment = "embedded"

    def __init__(self, workdir, config=None, name="srv"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.api_port, self.gateway_port = free_ports(2)
        self.config = merge(BASE_CONFIG, config)
        self.config_path = self.workdir / "imsrv.toml"
        self.config_path.write_text(to_toml(self.config))
        self.data_dir = self.workdir / "data"
        self.proc = None
        self.lines = []
        self._lock = threading.Lock()
        self._ready = None
        self._reader = None

    @property
    def api(self):
        return f"127.0.0.1:{self.api_port}"

    @property
    def gateway(self):
        return f"127.0.0.1:{self.gateway_port}"

    @property
    def gateways(self):
        """The gateways a login may name (one here)."""
        return [self.gateway]

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def _read(self, proc, ready):
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.lines.append(line)
            if "event=ready" in line:
                ready.set()
        ready.set()  # EOF: wake the waiter, it checks the exit status

    def start(self, timeout=30.0):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("IMSRV_API", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imsrv.cli.main", "serve", "--config", str(self.config_path),
             "--data", str(self.data_dir), "--host", "127.0.0.1",
             "--api-port", str(self.api_port), "--gateway-port", str(self.gateway_port)],
            cwd=str(self.workdir), env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(self.proc, self._ready), daemon=True)
        self._reader.start()
        if not in_thread(self._ready.wait, timeout) or self.proc.poll() is not None:
            self.kill()
            raise RuntimeError(f"{self.name} did not become ready:\n{self.tail()}")
        return self

    def kill(self):
        """SIGKILL (a crash); the data dir survives."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            in_thread(self.proc.wait, 10)
        if self._reader is not None:
            in_thread(self._reader.join, 5)

    def terminate(self):
        """SIGTERM: graceful shutdown (clients get `bye`)."""
        os.kill(self.proc.pid, signal.SIGTERM)

    def wait_exit(self, timeout=30.0):
        rc = in_thread(self.proc.wait, timeout)
        if self._reader is not None:
            in_thread(self._reader.join, 5)
        return rc

    def restart(self):
        self.kill()
        return self.start()

    def tail(self, n=40):
        with self._lock:
            return "\n".join(self.lines[-n:])

    def count(self, text):
        with self._lock:
            return sum(1 for line in self.lines if text in line)


class DistributedServer:
    """The distributed deployment (2 gateways, 2 forwarders, 1 API under the real
    supervisord, over MariaDB + Redis: tests/dist/deployment.py) with the suite's
    BASE_CONFIG and the part of ServerProc's interface the SDK tests use.  The SDK logs
    in through ``api`` and goes to whichever gateway the login names."""

    deployment = "distributed"

    def __init__(self, workdir, config=None, name="dist"):
        import services
        from dist.deployment import Deployment

        mysql = services.need(services.ensure_mysql, "a MySQL/MariaDB server (distributed deployment)")
        redis = services.need(services.ensure_redis, "a Redis server (distributed deployment)")
        self.name = name
        self.dep = Deployment(workdir, mysql, redis, merge(BASE_CONFIG, config), name=name)

    def start(self, timeout=60.0):
        self.dep.start(timeout=timeout)
        return self

    @property
    def api(self):
        return f"{self.dep.host}:{self.dep.api_port}"

    @property
    def gateways(self):
        return [f"{self.dep.host}:{port}" for port in self.dep.gateway_ports]

    @property
    def pid(self):
        return self.dep.proc.pid if self.dep.proc else None

    def kill(self):
        self.dep.kill()

    def tail(self, n=40):
        return self.dep.tail(n)

    def count(self, text):
        return sum(1 for line in self.dep.log_text().splitlines() if text in line)


_counter = itertools.count(1)
_RUN = "".join(random.choice(string.ascii_lowercase) for _ in range(3))


def unique_name(prefix="u"):
    return f"{prefix}{next(_counter)}_{_RUN}{random.randrange(1000):03d}"


def wait_for(pred, timeout=10.0, what="condition", interval=0.01):
    """Wait (letting greenlets run) until pred() is true; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        gevent.sleep(interval)  # poll interval of this bounded wait


LIVE_PROCS = []


class LineProc:
    """A subprocess whose stdout lines are collected by a reader thread (JSON-decoded
    when they are JSON).  stderr goes to a file (``stderr_path``).  The conftest kills
    any that a test leaves running."""

    def __init__(self, cmd, workdir, env=None, name="proc"):
        LIVE_PROCS.append(self)
        self.name = name
        self.stderr_path = Path(workdir) / f"{name}.stderr"
        self.lines = []
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env or {})
        self._errf = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=str(workdir), env=full_env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self._errf)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append(line)

    @property
    def pid(self):
        return self.proc.pid

    def events(self, kind):
        return [x for x in list(self.lines) if isinstance(x, dict) and x.get("event") == kind]

    def wait_until(self, pred, timeout=15.0, what="output"):
        try:
            return wait_for(pred, timeout, f"{self.name}: {what}")
        except AssertionError:
            raise AssertionError(f"{self.name}: timed out waiting for {what}; stdout {self.lines[-10:]!r}; "
                                 f"stderr {self.stderr()[-2000:]}") from None

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait(self, timeout=30.0):
        rc = in_thread(self.proc.wait, timeout)
        in_thread(self._reader.join, 5)
        self._errf.close()
        return rc

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.wait()
