"""The deployment a bench run measures: started by the bench, or one already running.

- ``--embedded`` (the default): a throwaway ``imsrv serve`` in a temporary directory, on
  free loopback ports, with :data:`BENCH_CONFIG` (rate limits lifted, cheap password
  hashing, connection caps raised).  Restartable on the same data and ports (``storm``).
- ``--distributed``: the repo's supervisord set (2 gateways, 2 forwarders, API; ``--gateways
  N`` runs N gateway processes) through the test harness's ``Deployment``
  (tests/harness/deployment.py), on a database and a Redis key prefix of its own that are
  dropped at the end; MariaDB and Redis come from
  tests/services.py (the local ones, or IMSRV_TEST_MYSQL_URL / IMSRV_TEST_REDIS_URL).
  It runs from a source checkout only (it needs tests/ and supervisord.conf).
- ``--api HOST:PORT``: a running server; RSS figures only for the pids given with
  ``--server-pid``, and no restarts (``storm`` refuses it).

Use :func:`open_deployment` as a context manager: whatever it started is stopped and its
directory removed on leaving, on an error or Ctrl-C as well.  Everything listens on
127.0.0.1 only.  Each deployment offers ``kind``, ``api`` ("host:port"), ``admin_key``
(None: ``notify`` is not available), ``processes()`` ({name: pid} of the processes whose
RSS is reported: the embedded server, or each gateway), ``process_of(gateway)`` (the
name of the process serving a gateway address, for per-process connection counts) and
``gateway_list()`` (the gateway addresses, None when only logins know them),
``kill_gateways()`` / ``wait_gateways()`` (SIGKILL the gateways; wait until they are
back, restarted by supervisord or, embedded, by the bench) and ``api_stays_up`` (whether
the API answers while the gateways are down).
"""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager

from .report import ROOT

#: the servers the bench starts: no rate limit, login, connection or group-size cap in the way, and
#: cheap password hashing (argon2id at 64 KiB: registering 10,000 users must not take
#: minutes; the bench measures messaging and connections, not password hashing)
BENCH_CONFIG = {
    "accounts": {"argon2_time_cost": 1, "argon2_memory_cost": 64},
    "limits": {"user_send_rate": 1000000.0, "user_send_burst": 1000000, "conn_rate": 1000000.0,
               "conn_burst": 1000000, "login_addr_attempts": 1000000, "login_user_attempts": 1000000,
               "login_user_global_attempts": 1000000, "max_connections": 1000000},
    "groups": {"max_members": 100000},   # `imsrv bench group --members N` past the default 500
}
HOST = "127.0.0.1"
#: seconds a started server may take to log event=ready
START_TIMEOUT = 60.0


class DeployError(RuntimeError):
    """A deployment could not be started (the message says why)."""


def rss_kib(pid):
    """VmRSS of ``pid`` in KiB (from /proc/PID/status), or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as stream:
            for line in stream:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def fd_limit(pid):
    """The soft limit of open files of ``pid`` (from /proc/PID/limits), or None."""
    try:
        with open(f"/proc/{pid}/limits", encoding="ascii", errors="replace") as stream:
            for line in stream:
                if line.startswith("Max open files"):
                    soft = line.split()[3]
                    return None if soft == "unlimited" else int(soft)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _toml(config):
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            text = ("true" if value else "false") if isinstance(value, bool) else \
                f'"{value}"' if isinstance(value, str) else repr(value)
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def _free_ports(count):
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((HOST, 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class Embedded:
    """A throwaway ``imsrv serve`` (see the module docstring)."""

    kind = "embedded"
    api_stays_up = False

    def __init__(self, workdir):
        self.workdir = workdir
        self.admin_key = secrets.token_hex(16)
        # its /healthz and /metrics on a free port too (not 7090: benches may run side by side)
        self.api_port, self.gateway_port, self.metrics_port = _free_ports(3)
        self.api = f"{HOST}:{self.api_port}"
        self.gateway = f"{HOST}:{self.gateway_port}"
        self.config_path = os.path.join(workdir, "imsrv.toml")
        config = dict(BENCH_CONFIG, server={"admin_key": self.admin_key})
        with open(self.config_path, "w", encoding="utf-8") as stream:
            stream.write(_toml(config))
        self.log_path = os.path.join(workdir, "server.log")
        self.proc = None
        self.reader = None

    def describe(self):
        return f"embedded imsrv serve (SQLite) in {self.workdir}, API {self.api}, gateway {self.gateway}"

    def start(self):
        command = [sys.executable, "-m", "imsrv.cli.main", "serve", "--config", self.config_path,
                   "--data", os.path.join(self.workdir, "data"), "--host", HOST, "--api-port",
                   str(self.api_port), "--gateway-port", str(self.gateway_port), "--ws-port", "0",
                   "--metrics-port", str(self.metrics_port)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("IMSRV_CONFIG", None)
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env)
        ready = threading.Event()
        # a thread keeps reading the log (a full pipe would stall the server) into a file
        self.reader = threading.Thread(target=self._drain, args=(self.proc, ready), daemon=True)
        self.reader.start()
        if not ready.wait(START_TIMEOUT) or self.proc.poll() is not None:
            raise DeployError(f"imsrv serve did not start within {START_TIMEOUT:.0f} s "
                              f"(exit status {self.proc.poll()}); its log:\n{self.tail()}")

    def _drain(self, proc, ready):
        with open(self.log_path, "ab") as log:
            for line in proc.stderr:
                log.write(line)
                if b"event=ready" in line:
                    log.flush()
                    ready.set()
        ready.set()   # EOF: the waiter looks at the exit status

    def tail(self, lines=30):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as stream:
                return "".join(stream.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def processes(self):
        return {"imsrv serve": self.proc.pid} if self.proc is not None else {}

    def gateway_list(self):
        """The gateway addresses clients may connect to."""
        return [self.gateway]

    def process_of(self, gateway):
        return "imsrv serve"

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(30)
            self.reader.join(10)

    def kill_gateways(self):
        """SIGKILL the server (a crash: every connection drops at once)."""
        self.kill()

    def wait_gateways(self):
        """Start the server again on the same data and ports; returns once it is ready."""
        self.start()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


class Distributed:
    """The supervisord set through tests/harness (see the module docstring)."""

    kind = "distributed"
    api_stays_up = True

    def __init__(self, workdir, gateways=None):
        tests = os.path.join(ROOT, "tests")
        if not (os.path.isdir(os.path.join(tests, "harness"))
                and os.path.isfile(os.path.join(ROOT, "supervisord.conf"))):
            raise DeployError(f"--distributed runs from a source checkout (it uses tests/harness and "
                              f"supervisord.conf); {ROOT} is not one")
        if tests not in sys.path:
            sys.path.insert(0, tests)
        import services
        from harness.base import ADMIN_KEY
        from harness.deployment import Deployment
        try:
            mysql, redis = services.ensure_mysql(), services.ensure_redis()
        except Exception as exc:   # services.ServiceError, or a server that does not answer
            raise DeployError(f"--distributed needs MariaDB (or MySQL) and Redis: {exc}") from None
        self.deployment = Deployment(workdir, mysql, redis, BENCH_CONFIG, name="bench", gateways=gateways)
        self.admin_key = ADMIN_KEY
        self.api = self.deployment.api_address
        self.gateways = {address: f"gateway-{index}" for index, address in
                         enumerate(self.deployment.gateway_addresses)}
        self.mysql, self.redis = mysql, redis
        self.restarts = 0

    def describe(self):
        dep = self.deployment
        count = len(dep.gateway_addresses)
        return (f"distributed supervisord set ({count} gateway{'s' if count > 1 else ''} "
                f"{', '.join(dep.gateway_addresses)}, 2 forwarders, "
                f"API {self.api}) on {self.mysql}/{dep.database} and {self.redis} prefix {dep.redis_prefix}")

    def start(self):
        try:
            self.deployment.start(timeout=START_TIMEOUT)
        except RuntimeError as exc:
            raise DeployError(str(exc)) from None

    def processes(self):
        return {program: self.deployment.pid(program) for program in self.gateways.values()}

    def gateway_list(self):
        return list(self.gateways)

    def process_of(self, gateway):
        return self.gateways.get(gateway, gateway)

    def kill_gateways(self):
        """SIGKILL every gateway (supervisord restarts them: autorestart)."""
        pids = self.processes()   # looked up first: the kills land together
        for program, pid in pids.items():
            if not pid:
                raise DeployError(f"{program} is not running")
            os.kill(pid, signal.SIGKILL)
        self.restarts += 1

    def wait_gateways(self):
        """Return once every gateway logged event=ready again after the last kill."""
        self.deployment.wait_ready(tuple(self.gateways.values()), runs=self.restarts + 1, timeout=START_TIMEOUT)

    def stop(self):
        self.deployment.kill()


class Running:
    """A server the bench did not start (``--api``)."""

    kind = "running"
    api_stays_up = True

    def __init__(self, api, pids=(), admin_key=None):
        self.api = api
        self.pids = list(pids)
        self.admin_key = admin_key

    def describe(self):
        return f"running server, API {self.api}" + (f", pids {self.pids}" if self.pids else "")

    def start(self):
        from .client import Conn
        try:
            Conn(self.api, timeout=5).close()
        except OSError as exc:
            raise DeployError(f"cannot reach the API at {self.api}: {exc}") from None

    def processes(self):
        return {f"pid {pid}": pid for pid in self.pids}

    def gateway_list(self):
        return None   # the ones each login names

    def process_of(self, gateway):
        return f"pid {self.pids[0]}" if len(self.pids) == 1 else gateway

    def kill_gateways(self):
        raise DeployError("a server given with --api cannot be restarted by the bench: use --embedded or "
                          "--distributed")

    wait_gateways = kill_gateways

    def stop(self):
        pass


def add_arguments(parser):
    """The deployment options every scenario takes."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--embedded", dest="deployment", action="store_const", const="embedded",
                       help="start a throwaway `imsrv serve` (SQLite) on free loopback ports (the default)")
    where.add_argument("--distributed", dest="deployment", action="store_const", const="distributed",
                       help="start the supervisord set (2 gateways, 2 forwarders, API) on a throwaway MariaDB "
                            "database and Redis key prefix; runs from a source checkout (tests/harness)")
    parser.add_argument("--gateways", type=int, metavar="N",
                        help="with --distributed: run N gateway processes (default 2, as supervisord.conf ships; "
                             "each may hold about 19,000 connections)")
    where.add_argument("--api", metavar="HOST:PORT",
                       help="measure a running server (its rate limits must allow the load); no RSS figures "
                            "unless --server-pid is given")
    parser.add_argument("--server-pid", type=int, action="append", default=[], metavar="PID",
                        help="with --api: a server process whose RSS to report (repeatable)")
    parser.add_argument("--admin-key", metavar="KEY",
                        help="with --api: the server's admin_key (storm's notify messages need it)")
    parser.set_defaults(deployment="embedded")


def check_arguments(args):
    """DeployError for deployment options that do not go together."""
    gateways = getattr(args, "gateways", None)
    if gateways is not None:
        if gateways < 1:
            raise DeployError(f"--gateways must be at least 1, got {gateways}")
        if args.api or (args.deployment != "distributed" and not getattr(args, "both", False)):
            raise DeployError("--gateways goes with --distributed (the embedded server is one process)")
    if getattr(args, "both", False) and args.api:
        raise DeployError("--both starts the deployments it measures: it does not go with --api")


@contextmanager
def open_deployment(args, say=print, kind=None):
    """The started deployment ``args`` name (``kind``, "embedded" or "distributed", instead
    of args.deployment when given); stopped and removed on leaving."""
    kind = kind or args.deployment
    if args.api:
        deployment = Running(args.api, args.server_pid, args.admin_key)
        deployment.start()
        yield deployment
        return
    workdir = tempfile.mkdtemp(prefix=f"imsrv-bench-{kind}-")
    deployment = None
    try:
        deployment = Embedded(workdir) if kind == "embedded" else \
            Distributed(workdir, getattr(args, "gateways", None))
        say(f"starting {deployment.describe()}")
        deployment.start()
        yield deployment
    finally:
        try:
            if deployment is not None:
                deployment.stop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
