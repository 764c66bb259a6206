"""``Deployment``: the distributed set for the tests, the repo's supervisord.conf under the
REAL supervisord (2 gateways, 2 forwarders, 1 API) over MariaDB + Redis; ``gateways=N``
runs N gateway processes instead (imsrv bench idle --gateways)."""
import itertools
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import services

from .base import ADMIN_KEY, BASE_CONFIG, Server, merge_config, to_toml
from .procs import (REPO_ROOT, alive, child_env, children_of, cmdline, deployment_ports, kill_child, port_free,
                    reap, sigkill)


#: the programs of the set as shipped (2 gateways); a Deployment's own are ``programs``
PROGRAMS = ("gateway-0", "gateway-1", "forwarder-0", "forwarder-1", "api")
SUPERVISOR_NAMES = {"gateway-0": "gateway:gateway-0", "gateway-1": "gateway:gateway-1",
                    "forwarder-0": "forwarder:forwarder-0", "forwarder-1": "forwarder:forwarder-1",
                    "api": "api", "initdb": "initdb"}
#: gateway i's WebSocket port is base + WS_OFFSET + 10*i (IMSRV_WEBSOCKET_PORT = base + WS_OFFSET)
WS_OFFSET = 2
#: daemon ``role-i``'s /healthz and /metrics port is METRICS_BASE + offset + 10*i (the
#: command's derivation, imsrv/servers/metrics.py ROLE_OFFSET; IMSRV_SERVER_METRICS_PORT is
#: the base, picked below the deployments' gateway ports: 10000-19999)
METRICS_OFFSET = {"gateway": 2, "forwarder": 3, "api": 4}
#: supervisord.conf's control socket, under the working directory
SOCKET = Path("var") / "supervisor" / "supervisor.sock"


def programs_for(gateways):
    """The programs of a set with ``gateways`` gateway processes (PROGRAMS for 2)."""
    return tuple(f"gateway-{i}" for i in range(gateways)) + ("forwarder-0", "forwarder-1", "api")


def supervisor_name(program):
    """supervisorctl's name of ``program`` ("gateway-3" -> "gateway:gateway-3")."""
    if program in SUPERVISOR_NAMES:
        return SUPERVISOR_NAMES[program]
    group = program.rsplit("-", 1)[0]
    return f"{group}:{program}" if group in ("gateway", "forwarder") else program


def with_gateways(conf_text, gateways):
    """supervisord.conf's text with ``numprocs`` of [program:gateway] set to ``gateways``,
    everything else as it is."""
    out, section, done = [], None, False
    for line in conf_text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
        elif section == "program:gateway" and re.match(r"numprocs\s*=", stripped):
            line = re.sub(r"=\s*\d+", f"={gateways}", line, count=1)
            done = True
        out.append(line)
    if not done:
        raise RuntimeError("supervisord.conf has no numprocs= in [program:gateway]")
    return "".join(out)


def _ports(gateways, websocket=True):
    """(gateway base port, api port): base + 10*i free for every gateway i, and the API's;
    with ``websocket``, gateway i's WebSocket port base + WS_OFFSET + 10*i too."""
    for _ in range(100):
        base, api = deployment_ports()
        wanted = [base + 10 * i for i in range(2, gateways)]
        if websocket:
            wanted += [base + WS_OFFSET + 10 * i for i in range(gateways)]
        if all(port_free(p) for p in wanted):
            return base, api
    raise RuntimeError(f"no free ports found for a deployment with {gateways} gateways")


def metrics_port(base, program):
    """The metrics port of ``program`` ("gateway-1", "forwarder-0", "api") under ``base``."""
    role, _, index = program.partition("-")
    return base + METRICS_OFFSET[role] + 10 * int(index or 0)


def _metrics_base(programs):
    """A metrics base port under which every program's metrics port is free."""
    rng = random.SystemRandom()
    for _ in range(500):
        base = rng.randrange(10000, 19900)
        if all(port_free(metrics_port(base, p)) for p in programs):
            return base
    raise RuntimeError(f"no free metrics ports found for {programs}")


def venv_dir():
    """The virtualenv the tests run in (it must hold bin/imsrv and bin/supervisord)."""
    prefix = Path(sys.prefix)
    for need in ("imsrv", "supervisord", "supervisorctl"):
        if not (prefix / "bin" / need).exists():
            raise RuntimeError(f"{prefix}/bin/{need} is missing: run the tests from the"
                               " project's venv (`make test` installs it)")
    return prefix


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


class Deployment(Server):
    """The distributed set under the real supervisord, running the repo's supervisord.conf.

    Its working directory holds a verbatim copy of ``supervisord.conf`` (``%(here)s`` is
    that directory, so its ``var/supervisor`` logs and socket are ours), a ``.venv``
    symlink to the virtualenv the tests run in (the conf starts
    ``%(here)s/.venv/bin/imsrv``), and an ``imsrv.toml``.  supervisord runs in the
    foreground (``-n``) as our child, so we own its pid; its programs get their settings
    from the environment we give it, exactly as the README tells operators to do:

        IMSRV_CONFIG, IMSRV_DATABASE_URL (a database of our own), IMSRV_REDIS_URL,
        IMSRV_REDIS_PREFIX (a key prefix of our own), IMSRV_ADMIN_KEY,
        IMSRV_GATEWAY_PORT / IMSRV_API_PORT (free ports: gateway N on base + 10*N)
        IMSRV_WEBSOCKET_PORT (gateway N's WebSocket port on base + 2 + 10*N: ``ws_ports``;
        0 when the config turns it off, ``[server] websocket_port = 0``)
        IMSRV_SERVER_METRICS_PORT (a base of their own: each daemon's /healthz and /metrics,
        ``metrics_addresses``; 0 when the config turns it off, ``metrics_port = 0``)

    ``gateways`` (default 2, as shipped) sets ``numprocs`` of [program:gateway] in the
    copy; ``programs`` are then gateway-0 .. gateway-N-1, the forwarders and the API.

    For fault tests: ``pid(program)``, ``sigkill(program)``, ``wait_ready(program, runs)``,
    ``log(program)``, ``supervisorctl()``, ``sigkill_supervisord()`` (its daemons live on,
    orphaned: they are remembered by pid).

    ``kill()`` kills (by pid) supervisord and the daemons it started (orphaned ones
    included), then drops the database and deletes the Redis keys under the prefix.
    """

    deployment = "distributed"
    gateways = 2

    def __init__(self, workdir, mysql_server, redis_url, config=None, name="dist", gateways=None):
        super().__init__(_short_workdir(Path(workdir)), name)
        if gateways is not None:
            if gateways < 1:
                raise ValueError(f"gateways must be at least 1, got {gateways}")
            self.gateways = gateways   # else the class's 2, as supervisord.conf ships
        self.programs = programs_for(self.gateways)
        self.mysql_server = mysql_server
        self.database = services.random_name()
        self.database_url = f"{mysql_server}/{self.database}"
        self.redis_url = str(redis_url)
        self.redis_prefix = services.random_name("imsrv_dist_")
        websocket = (config or {}).get("server", {}).get("websocket_port") != 0
        self.base_port, self.api_port = _ports(self.gateways, websocket)
        self.gateway_ports = [self.base_port + 10 * i for i in range(self.gateways)]
        self.gateway_port = self.gateway_ports[0]
        self.ws_ports = [self.base_port + WS_OFFSET + 10 * i for i in range(self.gateways)] if websocket else []
        self.ws_port = self.ws_ports[0] if websocket else None
        metrics = (config or {}).get("server", {}).get("metrics_port") != 0
        self.metrics_base = _metrics_base(self.programs) if metrics else 0
        self.config = merge_config(BASE_CONFIG, {"server": {"host": self.host}}, config)
        self.config_path = self.workdir / "imsrv.toml"
        self.config_path.write_text(to_toml(self.config))
        self.conf_path = self.workdir / "supervisord.conf"
        if self.gateways == 2:
            shutil.copyfile(REPO_ROOT / "supervisord.conf", self.conf_path)
        else:
            self.conf_path.write_text(with_gateways((REPO_ROOT / "supervisord.conf").read_text(), self.gateways))
        venv = self.workdir / ".venv"
        if not venv.exists():
            venv.symlink_to(venv_dir())
        self.logdir = self.workdir.resolve() / "var" / "supervisor"   # readable after kill()
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.orphans = {}   # program -> pid of a daemon whose supervisord we SIGKILLed
        self.created_db = False
        self._next_gateway = itertools.cycle(range(self.gateways))

    def _gateway_index(self):
        return next(self._next_gateway)

    @property
    def metrics_addresses(self):
        """{program: "host:port" of its /healthz and /metrics} (empty when the config
        turns metrics off)."""
        if not self.metrics_base:
            return {}
        return {p: f"{self.host}:{metrics_port(self.metrics_base, p)}" for p in self.programs}

    # -- environment and supervisord
    def environment(self):
        """supervisord's environment (its daemons inherit it)."""
        return child_env({
            "IMSRV_CONFIG": str(self.config_path),
            "IMSRV_DATABASE_URL": self.database_url,
            "IMSRV_REDIS_URL": self.redis_url,
            "IMSRV_REDIS_PREFIX": self.redis_prefix,
            "IMSRV_ADMIN_KEY": ADMIN_KEY,
            "IMSRV_GATEWAY_PORT": str(self.base_port),
            "IMSRV_API_PORT": str(self.api_port),
            "IMSRV_WEBSOCKET_PORT": str(self.base_port + WS_OFFSET if self.ws_ports else 0),
            "IMSRV_SERVER_METRICS_PORT": str(self.metrics_base),
            **self.env,
        })

    def supervisorctl(self, *args, check=True, timeout=60):
        out = subprocess.run(
            [str(self.workdir / ".venv" / "bin" / "supervisorctl"), "-c", str(self.conf_path), *args],
            cwd=str(self.workdir), env=self.environment(), capture_output=True, text=True, timeout=timeout)
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
            cwd=str(self.workdir), env=self.environment(), stdin=subprocess.DEVNULL,
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
        return "\n".join(self.log(p) for p in self.programs)

    def tail(self, n=40):
        out = []
        for p in ("initdb",) + self.programs + ("supervisord",):
            lines = self.log(p).splitlines()[-n:]
            out.append(f"---- {p}.log\n" + "\n".join(lines))
        return "\n".join(out)

    def ready_count(self, program):
        text = self.log(program)
        return text.count("event=ready") + text.count('"event":"ready"')   # (log_format json)

    def wait_ready(self, programs=None, runs=1, timeout=60.0):
        """Wait until each of ``programs`` (default: all of ours) logged its ``runs``-th
        event=ready."""
        if programs is None:
            programs = self.programs
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

    # -- the daemons
    def pid(self, program):
        """The pid supervisord reports for ``program`` (0 when not running)."""
        out = self.supervisorctl("pid", supervisor_name(program)).strip()
        return int(out) if re.fullmatch(r"\d+", out) else 0

    def sigkill(self, program):
        """SIGKILL one daemon by pid (supervisord restarts it: autorestart=true)."""
        pid = self.pid(program)
        assert pid, f"{program} is not running"
        sigkill(pid)
        return pid

    def owns(self, pid):
        """True while ``pid`` is alive and one of our daemons (its command line names our
        working directory)."""
        return alive(pid) and os.fsencode(str(self.workdir)) in cmdline(pid)

    def sigkill_supervisord(self, timeout=10.0):
        """SIGKILL supervisord itself (not its daemons).  Its daemons are orphaned: nothing
        restarts them any more and nothing reads their log pipes; ``kill()`` kills them by
        the pids returned here.  -> {program: pid} of the daemons running at the kill."""
        assert self.running(), f"{self!r}: supervisord is not running"
        pids = {p: self.pid(p) for p in self.programs}
        assert all(pids.values()), f"{self!r}: not every daemon is running: {pids}"
        kids = set(children_of(self.proc.pid))
        assert set(pids.values()) <= kids, f"{self!r}: daemons {pids} are not all children of supervisord {kids}"
        self.orphans.update(pids)
        sigkill(self.proc.pid)
        self.proc.wait(timeout)
        return pids

    # -- teardown
    def kill(self):
        """SIGKILL supervisord and every daemon it started (by pid), then drop our
        database and Redis keys."""
        if self.running():
            # stop supervisord first, so it does not restart the daemons we kill
            kids = children_of(self.proc.pid)
            kill_child(self.proc)
            for pid in kids:
                sigkill(pid)
            for pid in kids:
                reap(pid)
        while self.orphans:   # daemons of a supervisord killed earlier: no longer its children
            _, pid = self.orphans.popitem()
            if self.owns(pid) and sigkill(pid):   # else gone already (its pid may be another's by now)
                reap(pid)
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
