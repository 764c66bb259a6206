"""Processes the tests start: free ports, environments, waiting, killing by pid.

Only processes a test started are ever killed, and only by pid.  Blocking waits go
through ``in_thread`` and ``pause``: from the main thread they let gevent's hub run, so
the SDK's greenlets (tests/client) keep going while a test waits for a server; from any
other thread (tests/dist's sender threads) they simply block.
"""
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import gevent

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


# ------------------------------------------------------------------------------- ports


def free_ports(n):
    """``n`` distinct ports free right now (bound to port 0, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_besides(taken):
    """A port free right now that is not one of ``taken``."""
    while True:
        (port,) = free_ports(1)
        if port not in taken:
            return port


def port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def deployment_ports(rng=None):
    """(gateway base port, api port) of a distributed deployment: base and base + 10
    (gateway 0 and 1, supervisord.conf's numbering) and the API port all free right now."""
    rng = rng or random.SystemRandom()
    for _ in range(500):
        base = rng.randrange(20000, 32700)   # below the ephemeral range (32768-60999)
        if port_free(base) and port_free(base + 10) and port_free(base + 1):
            return base, base + 1
    raise RuntimeError("no free port triple found for a deployment")


# ------------------------------------------------------------------------- environment


def child_env(extra=None):
    """The environment of a process a test starts: ours, unbuffered Python output, ``extra``."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


# ----------------------------------------------------------------------------- waiting


def _cooperative():
    return threading.current_thread() is threading.main_thread()


def in_thread(fn, *args):
    """Run a blocking call; from the main thread in gevent's thread pool, so the hub (and
    the SDK's greenlets) keep running meanwhile."""
    if _cooperative():
        return gevent.get_hub().threadpool.apply(fn, args)
    return fn(*args)


def pause(seconds):
    """Sleep ``seconds``, letting greenlets run when called from the main thread."""
    if _cooperative():
        gevent.sleep(seconds)
    else:
        time.sleep(seconds)


def wait_until(pred, timeout=10.0, interval=0.05, what="condition"):
    """Poll ``pred()`` until it returns something true and return that; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        pause(interval)   # the poll interval of this bounded wait


# ----------------------------------------------------------------------------- killing


def sigkill(pid):
    """SIGKILL ``pid``; False if it was already gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def kill_child(proc, timeout=10.0):
    """SIGKILL our child ``proc`` (a Popen) if it still runs, and reap it -> its exit status."""
    if proc.poll() is None:
        sigkill(proc.pid)
    return in_thread(proc.wait, timeout)


def _stat(pid):
    """The fields of /proc/PID/stat after the command name (state, ppid, ...)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        # pid (comm) state ppid ...; comm may hold spaces and parentheses
        return f.read().rsplit(b")", 1)[1].split()


def children_of(pid):
    """Pids of the direct children of ``pid`` (from /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat(entry)[1])
        except OSError:
            continue
        if ppid == pid:
            kids.append(int(entry))
    return kids


def alive(pid):
    """True while ``pid`` exists and is not a zombie."""
    try:
        return _stat(pid)[0] != b"Z"
    except OSError:
        return False


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def reap(pid, timeout=10.0):
    """Wait until ``pid`` (not our child: e.g. supervisord's) is gone or a zombie."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.02)


# ------------------------------------------------------------------- line-reading child


#: LineProcs still to be killed after the test (tests/conftest.py does it)
LIVE_PROCS = []


class LineProc:
    """A subprocess whose stdout lines are collected by a reader thread (JSON-decoded
    when they are JSON).  stderr goes to a file (``stderr_path``).  Any that a test leaves
    running is killed after it (tests/conftest.py)."""

    def __init__(self, cmd, workdir, env=None, name="proc"):
        LIVE_PROCS.append(self)
        self.name = name
        self.stderr_path = Path(workdir) / f"{name}.stderr"
        self.lines = []
        self._errf = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=str(workdir), env=child_env(env), stdin=subprocess.DEVNULL,
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
            return wait_until(pred, timeout, what=f"{self.name}: {what}")
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
            sigkill(self.proc.pid)
        return self.wait()
