"""``EmbeddedProcess``: one `imsrv serve` process (SQLite, in-process hub) for the tests."""
import os
import subprocess
import sys
import threading

from .base import ADMIN_KEY, BASE_CONFIG, Server, merge_config, to_toml
from .procs import REPO_ROOT, child_env, free_port_besides, free_ports, in_thread, kill_child


class EmbeddedProcess(Server):
    """One `imsrv serve` process on fixed ports and a fixed data dir (restartable).

    Its stderr (the log) is read by a thread into ``lines`` and appended to
    ``server.log``; ``start`` returns once it logged ``event=ready``.  The WebSocket
    gateway listens on ``ws_port`` unless the config turns it off
    (``[server] websocket_port = 0``: ``ws_port`` is None)."""

    deployment = "embedded"

    def __init__(self, workdir, config=None, name="imsrv"):
        super().__init__(workdir, name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = merge_config(BASE_CONFIG, config)
        websocket = self.config.get("server", {}).get("websocket_port") != 0
        ports = free_ports(3 if websocket else 2)
        self.api_port, self.gateway_port = ports[:2]
        self.ws_port = ports[2] if websocket else None
        self.ws_ports = [self.ws_port] if websocket else []
        self.gateway_ports = [self.gateway_port]
        # /healthz and /metrics (``metrics_addresses``), unless the config turns them off
        metrics = self.config.get("server", {}).get("metrics_port") != 0
        self.metrics_port = free_port_besides(ports) if metrics else None
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.config_path = self.workdir / "imsrv.toml"
        self.config_path.write_text(to_toml(self.config))
        self.log_path = self.workdir / "server.log"
        self.lines = []  # every stderr line of every run
        self._lock = threading.Lock()
        self._reader = None
        self.runs = 0
        self._ready_run = 0   # the last run that logged event=ready

    def command(self):
        cmd = [
            sys.executable, "-m", "imsrv.cli.main", "serve",
            "--config", str(self.config_path),
            "--data", str(self.data_dir),
            "--host", self.host,
            "--api-port", str(self.api_port),
            "--gateway-port", str(self.gateway_port),
        ]
        if self.ws_port is not None:
            cmd += ["--ws-port", str(self.ws_port)]
        if self.metrics_port is not None:
            cmd += ["--metrics-port", str(self.metrics_port)]
        return cmd

    @property
    def metrics_addresses(self):
        """{process: "host:port" of its /healthz and /metrics}: {"embedded": ...} (empty
        when the config turns metrics off)."""
        return {"embedded": f"{self.host}:{self.metrics_port}"} if self.metrics_port else {}

    def environment(self):
        pythonpath = os.environ.get("PYTHONPATH")
        env = child_env({
            "IMSRV_ADMIN_KEY": ADMIN_KEY,
            "PYTHONPATH": str(REPO_ROOT) + (os.pathsep + pythonpath if pythonpath else ""),
            **self.env,
        })
        env.pop("IMSRV_API", None)   # a developer's default API address is no server setting
        return env

    def _read_stderr(self, proc, ready, logf):
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.lines.append(line)
            try:
                logf.write(line + "\n")
                logf.flush()
            except ValueError:
                pass
            if "event=ready" in line or '"event":"ready"' in line:   # (log_format json)
                self._ready_run = self.runs
                ready.set()
        logf.close()
        ready.set()  # EOF: wake the waiter, it checks the exit status

    def start(self, timeout=30.0):
        assert not self.running(), "already running"
        self.runs += 1
        logf = open(self.log_path, "a", encoding="utf-8")
        logf.write(f"---- run {self.runs}: {' '.join(self.command())}\n")
        logf.flush()
        self.proc = subprocess.Popen(
            self.command(), cwd=str(self.workdir), env=self.environment(),
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.PIPE)
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, args=(self.proc, ready, logf),
                                        daemon=True, name=f"{self.name}-stderr")
        self._reader.start()
        if not in_thread(ready.wait, timeout):
            self.kill()
            raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.tail(60)}")
        if self._ready_run != self.runs:   # stderr closed first: the process is exiting
            rc = self.wait(5)
            raise RuntimeError(f"{self.name} exited with {rc} before event=ready:\n{self.tail(60)}")
        return self

    def log_text(self):
        with self._lock:
            return "\n".join(self.lines)

    def kill(self):
        """SIGKILL the process by pid (a crash; the data dir survives) and reap it."""
        if self.proc is None:
            return None
        rc = kill_child(self.proc)
        self._join_reader()
        return rc

    def terminate(self):
        """SIGTERM: graceful shutdown (clients get `bye`); does not wait."""
        self.proc.terminate()

    def wait(self, timeout=30.0):
        """The exit status, or None if the process still runs after ``timeout``."""
        try:
            rc = in_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            return None
        self._join_reader()
        return rc

    def _join_reader(self):
        if self._reader is not None:
            in_thread(self._reader.join, 5)

    def restart(self, timeout=30.0):
        self.kill()
        return self.start(timeout)
