"""The distributed deployment under the REAL supervisord, running the repo's supervisord.conf.

A ``Deployment`` is a working directory holding a verbatim copy of ``supervisord.conf``
(``%(here)s`` is that directory, so its ``var/supervisor`` logs and socket are ours), a
``.venv`` symlink to the virtualenv the tests run in (the conf starts
``%(here)s/.venv/bin/imsrv``), and an ``imsrv.toml``.  supervisord runs in the foreground
(``-n``) as our child, so we own its pid; its programs get their settings from the
environment we give it, exactly as the README tells operators to do:

    IMSRV_CONFIG, IMSRV_DATABASE_URL (a database of our own), IMSRV_REDIS_URL,
    IMSRV_REDIS_PREFIX (a key prefix of our own), IMSRV_ADMIN_KEY,
    IMSRV_GATEWAY_PORT / IMSRV_API_PORT (free ports: gateway N on base + 10*N)

It offers the interface of tests/e2e/support.ServerProc (``api()``, ``gateway()``,
``kill()``, ``log_text()``...) so the e2e suite runs on it unchanged; ``gateway()``
alternates between the gateways so the users of one test sit on both.  For fault tests:
``pid(program)``, ``sigkill(program)``, ``wait_ready(program, runs)``, ``supervisorctl()``,
``sigkill_supervisord()`` (its daemons live on, orphaned: they are remembered by pid).

Teardown kills (by pid) supervisord and the daemons it started (orphaned ones included),
then drops the database and deletes the Redis keys under the prefix.
"""
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import services
from e2e.support import (ADMIN_KEY, BASE_CONFIG, DEFAULT_TIMEOUT, REPO_ROOT, Client,
                         merge_config, to_toml)

PROGRAMS = ("gateway-0", "gateway-1", "forwarder-0", "forwarder-1", "api")
SUPERVISOR_NAMES = {"gateway-0": "gateway:gateway-0", "gateway-1": "gateway:gateway-1",
                    "forwarder-0": "forwarder:forwarder-0", "forwarder-1": "forwarder:forwarder-1",
                    "api": "api", "initdb": "initdb"}


def _free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def deployment_ports(rng=None):
    """(gateway base port, api port): base and base + 10 (gateway 0 and 1) and the API
    port all free right now."""
    import random
    rng = rng or random.SystemRandom()
    for _ in range(500):
        base = rng.randrange(20000, 32700)   # below the ephemeral range (32768-60999)
        if _free(base) and _free(base + 10) and _free(base + 1):
            return base, base + 1
    raise RuntimeError("no free port triple found for a deployment")


def venv_dir():
    """The virtualenv the tests run in (it must hold bin/imsrv and bin/supervisord)."""
    prefix = Path(sys.prefix)
    for need in ("imsrv", "supervisord", "supervisorctl"):
        if not (prefix / "bin" / need).exists():
            raise RuntimeError(f"{prefix}/bin/{need} is missing: run the tests from the"
                               " project's venv (`make test` installs it)")
    return prefix


def children_of(pid):
    """Pids of the direct children of ``pid`` (from /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            kids.append(int(entry))
    return kids


#: supervisord.conf's control socket, under the working directory
SOCKET = Path("var") / "supervisor" / "supervisor.sock"


def _short_workdir(workdir):
    """``workdir``, made; or, when the control socket's path under it would be too long
    for AF_UNIX (108 bytes, and supervisord binds ``<socket>.<pid>`` first), a short
    symlink to it in the temporary directory (what a long pytest tmp_path needs)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if len(os.fsencode(str(workdir / SOCKET))) + 12 <= 100:
        return workdir
    link = Path(tempfile.mkdtemp(prefix="imsrv-dep-")) / "w"
    link.symlink_to(workdir.resolve(), target_is_directory=True)
    return link


class Deployment:
    gateways = 2

    def __init__(self, workdir, mysql_server, redis_url, config=None, name="dist"):
        self.workdir = _short_workdir(Path(workdir))
        self.name = name
        self.host = "127.0.0.1"
        self.mysql_server = mysql_server
        self.database = services.random_name()
        self.database_url = f"{mysql_server}/{self.database}"
        self.redis_url = str(redis_url)
        self.redis_prefix = services.random_name("imsrv_dist_")
        self.base_port, self.api_port = deployment_ports()
        self.gateway_ports = [self.base_port + 10 * i for i in range(self.gateways)]
        self.gateway_port = self.gateway_ports[0]
        self.config = merge_config(BASE_CONFIG, {"server": {"host": self.host}}, config)
        self.config_path = self.workdir / "imsrv.toml"
        self.config_path.write_text(to_toml(self.config))
        self.conf_path = self.workdir / "supervisord.conf"
        shutil.copyfile(REPO_ROOT / "supervisord.conf", self.conf_path)
        venv = self.workdir / ".venv"
        if not venv.exists():
            venv.symlink_to(venv_dir())
        self.logdir = self.workdir.resolve() / "var" / "supervisor"   # readable after kill()
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.proc = None
        self.orphans = {}   # program -> pid of a daemon whose supervisord we SIGKILLed
        self.created_db = False
        self._next_gateway = itertools.cycle(range(self.gateways))

    def __repr__(self):
        return f"<Deployment {self.name} api={self.api_port} gateways={self.gateway_ports}>"

    # -- environment and supervisord
    def env(self):
        env = dict(os.environ)
        env.update({
            "IMSRV_CONFIG": str(self.config_path),
            "IMSRV_DATABASE_URL": self.database_url,
            "IMSRV_REDIS_URL": self.redis_url,
            "IMSRV_REDIS_PREFIX": self.redis_prefix,
            "IMSRV_ADMIN_KEY": ADMIN_KEY,
            "IMSRV_GATEWAY_PORT": str(self.base_port),
            "IMSRV_API_PORT": str(self.api_port),
            "IMSRV_WEBSOCKET_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def supervisorctl(self, *args, check=True, timeout=60):
        out = subprocess.run(
            [str(self.workdir / ".venv" / "bin" / "supervisorctl"), "-c", str(self.conf_path), *args],
            cwd=str(self.workdir), env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and out.returncode not in (0, 3):  # 3: some program not RUNNING (status)
            raise RuntimeError(f"supervisorctl {' '.join(args)} -> {out.returncode}: {out.stdout}{out.stderr}")
        return out.stdout

    def start(self, timeout=60.0):
        assert self.proc is None, "already started"
        services.mysql_create_database(self.mysql_server, self.database)
        self.created_db = True
        supervisord = self.workdir / ".venv" / "bin" / "supervisord"
        self.proc = subprocess.Popen(
            [str(supervisord), "-n", "-c", str(self.conf_path)],
            cwd=str(self.workdir), env=self.env(), stdin=subprocess.DEVNULL,
            stdout=open(self.logdir / "supervisord.stdout", "ab"), stderr=subprocess.STDOUT,
            preexec_fn=os.setsid)
        try:
            self.wait_ready(timeout=timeout)
        except BaseException:
            self.kill()
            raise
        return self

    # -- logs and readiness
    def log_path(self, program):
        return self.logdir / f"{program}.log"

    def log(self, program):
        try:
            return self.log_path(program).read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_text(self):
        return "\n".join(self.log(p) for p in PROGRAMS)

    def tail(self, n=40):
        out = []
        for p in ("initdb",) + PROGRAMS + ("supervisord",):
            lines = self.log(p).splitlines()[-n:]
            out.append(f"---- {p}.log\n" + "\n".join(lines))
        return "\n".join(out)

    def ready_count(self, program):
        return self.log(program).count("event=ready")

    def wait_ready(self, programs=PROGRAMS, runs=1, timeout=60.0):
        """Wait until each of ``programs`` logged its ``runs``-th event=ready."""
        if isinstance(programs, str):
            programs = (programs,)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self!r}: supervisord exited with {self.proc.returncode}\n{self.tail()}")
            missing = [p for p in programs if self.ready_count(p) < runs]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self!r}: {missing} not ready (run {runs}) after {timeout}s\n{self.tail()}")
            time.sleep(0.05)

    def pid(self, program):
        """The pid supervisord reports for ``program`` (0 when not running)."""
        out = self.supervisorctl("pid", SUPERVISOR_NAMES[program]).strip()
        return int(out) if re.fullmatch(r"\d+", out) else 0

    def sigkill(self, program):
        """SIGKILL one daemon by pid (supervisord restarts it: autorestart=true)."""
        pid = self.pid(program)
        assert pid, f"{program} is not running"
        os.kill(pid, signal.SIGKILL)
        return pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def owns(self, pid):
        """True while ``pid`` is alive and one of our daemons (its command line names our
        working directory)."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat", "rb") as f:
                zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except OSError:
            return False
        return not zombie and os.fsencode(str(self.workdir)) in cmdline

    def sigkill_supervisord(self, timeout=10.0):
        """SIGKILL supervisord itself (not its daemons).  Its daemons are orphaned: nothing
        restarts them any more and nothing reads their log pipes; ``kill()`` kills them by
        the pids returned here.  -> {program: pid} of the daemons running at the kill."""
        assert self.running(), f"{self!r}: supervisord is not running"
        pids = {p: self.pid(p) for p in PROGRAMS}
        assert all(pids.values()), f"{self!r}: not every daemon is running: {pids}"
        kids = set(children_of(self.proc.pid))
        assert set(pids.values()) <= kids, f"{self!r}: daemons {pids} are not all children of supervisord {kids}"
        self.orphans.update(pids)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout)
        return pids

    # -- teardown
    def kill(self):
        """SIGKILL supervisord and every daemon it started (by pid), then drop our
        database and Redis keys."""
        if self.proc is not None and self.proc.poll() is None:
            # stop supervisord first, so it does not restart the daemons we kill
            kids = children_of(self.proc.pid)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            for pid in kids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for pid in kids:
                _reap(pid)
        while self.orphans:   # daemons of a supervisord killed earlier: no longer its children
            _, pid = self.orphans.popitem()
            if not self.owns(pid):
                continue   # gone already (its pid may be another process's by now)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            _reap(pid)
        if self.workdir.is_symlink() and self.workdir.parent.name.startswith("imsrv-dep-"):
            shutil.rmtree(self.workdir.parent, ignore_errors=True)   # the short link only
        if self.created_db:
            self.created_db = False
            try:
                services.mysql_drop_database(self.mysql_server, self.database)
            except Exception as exc:  # the server is one a fault test stopped, say
                services.say(f"could not drop database {self.database}: {exc!r}")
            try:
                services.redis_delete_prefix(self.redis_url, self.redis_prefix)
            except Exception as exc:
                services.say(f"could not delete Redis keys {self.redis_prefix}*: {exc!r}")
        return 0

    stop = kill

    # -- clients
    @property
    def api_addr(self):
        return (self.host, self.api_port)

    @property
    def gateway_addr(self):
        return (self.host, self.gateway_port)

    def api(self, mode="binary", timeout=DEFAULT_TIMEOUT):
        return Client(self.host, self.api_port, mode, timeout, label=f"{self.name}/api")

    def gateway(self, mode="binary", timeout=DEFAULT_TIMEOUT, rcvbuf=None, index=None):
        """A connection to a gateway: ``index``, or the next one in turn."""
        i = next(self._next_gateway) if index is None else index
        return Client(self.host, self.gateway_ports[i], mode, timeout,
                      label=f"{self.name}/gw{i}", rcvbuf=rcvbuf)


def _reap(pid, timeout=10.0):
    """Wait until ``pid`` (not our child: supervisord's) is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    return  # a zombie of the dead supervisord: init reaps it
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.02)
