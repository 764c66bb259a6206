"""The external services some tests need (MySQL/MariaDB, Redis): found, or started privately.

``ensure_mysql()`` / ``ensure_redis()`` return the URL of a server the tests may use:

1. the server named by ``IMSRV_TEST_MYSQL_URL`` / ``IMSRV_TEST_REDIS_URL`` if set (it must
   answer: an explicit choice is never silently replaced);
2. else the shared local one (MariaDB at 127.0.0.1:3306 as root with no password, Redis
   at 127.0.0.1:6379) if it answers;
3. else a PRIVATE throwaway instance started from the installed binaries on a free port
   in a temporary directory (``mariadb-install-db`` + ``mariadbd``, ``redis-server``).
   Tests never install anything: ``make test`` runs ``make system-packages`` first, which
   installs the Debian packages ``mariadb-server`` / ``redis-server`` when their binaries
   are missing.  What is done is printed on the terminal.  Private instances are stopped
   (by pid) when the test process exits.

Shared servers are only ever connected to: never stopped, restarted or reconfigured.  Tests
isolate themselves inside them (a database ``imsrv_test_<hex>`` of their own, a Redis key
prefix of their own; see tests/conftest.py).

When no server can be had, ``ServiceError`` is raised; the fixtures turn it into a skip
with the reason, or into a failure when ``CI`` is set (``CI=true``): in CI a test that
needs a service must never pass by skipping.

``PrivateMariaDB`` and ``PrivateRedis`` are also for tests that break the server on
purpose (stop, SIGKILL, pause, restart on the same data directory and port): only ever
do that to a private instance.
"""
import atexit
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")

SHARED_MYSQL_URL = "mysql://root@127.0.0.1:3306"
SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/libexec", "/sbin")


class ServiceError(RuntimeError):
    """A service the tests need cannot be had (the message says why)."""


def say(message):
    """Print past pytest's output capture, so the user sees what is being started."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"\ntests: {message}\n")
    stream.flush()


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_binary(*names):
    """The first of ``names`` found on PATH or in the sbin directories, else None."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
        for d in SBIN_DIRS:
            candidate = os.path.join(d, name)
            if os.access(candidate, os.X_OK):
                return candidate
    return None


# ----------------------------------------------------------------------------- probes
def _mysql_params(url, timeout):
    parts = urlsplit(url)
    return dict(host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
                user=parts.username or "root", password=parts.password or "",
                connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout,
                charset="utf8mb4", autocommit=True)


def mysql_connect(url, timeout=5.0):
    """A PyMySQL connection (no database selected) to the server of ``url``."""
    import pymysql
    return pymysql.connect(**_mysql_params(url, timeout))


def mysql_ping(url, timeout=2.0):
    """True if a real connection + ``SELECT 1`` works."""
    try:
        conn = mysql_connect(url, timeout)
    except Exception:
        return False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone() == (1,)
    except Exception:
        return False
    finally:
        conn.close()


def mysql_server_url(url):
    """``mysql://user:pw@host:port`` of a URL that may also name a database."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def mysql_create_database(server_url, name):
    conn = mysql_connect(server_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()


def mysql_drop_database(server_url, name):
    conn = mysql_connect(server_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


def redis_client(url, timeout=2.0):
    import redis
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def redis_ping(url, timeout=2.0):
    try:
        client = redis_client(url, timeout)
        try:
            return client.ping() is True
        finally:
            client.close()
    except Exception:
        return False


def redis_delete_prefix(url, prefix):
    """Delete every key starting with ``prefix`` (and only those).  -> number deleted."""
    client = redis_client(url, timeout=10.0)
    deleted = 0
    try:
        batch = []
        for key in client.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += client.delete(*batch)
                batch = []
        if batch:
            deleted += client.delete(*batch)
    finally:
        client.close()
    return deleted


def _glob_escape(text):
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisTestURL(str):
    """A Redis URL (a str) that also carries the key ``prefix`` reserved for these tests."""

    def __new__(cls, url, prefix):
        self = super().__new__(cls, url)
        self.prefix = prefix
        return self


# ----------------------------------------------------------------------------- private servers
def _die_with_parent():  # pragma: no cover - runs in the child between fork and exec
    """In the child: own process group (a ^C in the terminal is ours to handle), and
    SIGTERM if the test process dies without cleaning up (Linux PR_SET_PDEATHSIG).  The
    signal follows the *thread* that started the child: start servers from the main thread
    (greenlets are fine) or from a thread that outlives them."""
    os.setsid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except Exception:
        pass


def wait_stopped(pid, timeout=5.0):
    """After a SIGSTOP to ``pid``: return once every thread of it is stopped (a signal is
    delivered asynchronously: a busy thread could otherwise still do one more thing), or
    it is gone, or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    task_dir = f"/proc/{pid}/task"
    while os.path.isdir(task_dir) and time.monotonic() < deadline:
        try:
            states = []
            for tid in os.listdir(task_dir):
                with open(f"{task_dir}/{tid}/stat") as f:
                    states.append(f.read().rpartition(")")[2].split()[0])
        except OSError:
            states = ["?"]
        if all(st in ("T", "t") for st in states):
            return
        time.sleep(0.002)
    if not os.path.isdir("/proc/self"):
        time.sleep(0.2)  # no /proc: give the signal time to land


class PrivateServer:
    """A server process of our own: started on a fixed free port in a directory of our own,
    stopped/killed/paused/restarted by pid.  Subclasses define ``command()``, ``ready()``
    and may define ``prepare()`` (run before each start)."""

    name = "server"

    def __init__(self, basedir=None, port=None):
        self._own_dir = basedir is None
        self.basedir = str(basedir or tempfile.mkdtemp(prefix=f"imsrv-{self.name}-"))
        os.makedirs(self.basedir, exist_ok=True)
        self.port = port or free_port()
        self.log_path = os.path.join(self.basedir, f"{self.name}.log")
        self.proc = None

    def __repr__(self):
        state = f"pid {self.pid}" if self.running() else "stopped"
        return f"<{type(self).__name__} 127.0.0.1:{self.port} {state} in {self.basedir}>"

    def command(self):
        raise NotImplementedError

    def ready(self):
        raise NotImplementedError

    def prepare(self):
        pass

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n=25):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"

    def start(self, timeout=60.0):
        """Start (if not running) and wait until it accepts real connections."""
        if self.running():
            return self
        self.prepare()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.basedir,
                                         preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServiceError(f"private {self.name} exited with {self.proc.returncode}"
                                   f" while starting (log {self.log_path}):\n{self.log_tail()}")
            if self.ready():
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceError(f"private {self.name} on port {self.port} did not accept"
                                   f" connections within {timeout:g} s (log {self.log_path}):"
                                   f"\n{self.log_tail()}")
            time.sleep(0.05)

    def send_signal(self, sig):
        """Send ``sig`` to the server's pid (no-op if it is not running)."""
        if self.running():
            os.kill(self.proc.pid, sig)

    def stop(self, sig=signal.SIGTERM, timeout=30.0):
        """Send ``sig`` (SIGTERM: clean shutdown) and wait; SIGKILL after ``timeout``."""
        if not self.running():
            return
        self.send_signal(signal.SIGCONT)  # a paused server cannot shut down
        self.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def kill(self):
        """SIGKILL: the server dies at once, as in a crash."""
        self.stop(signal.SIGKILL)

    def sigkill(self, timeout=10.0):
        """SIGKILL the running server (a crash: no shutdown, nothing flushed beyond what
        the OS already has) and wait until it is gone.  Asserts it died of that signal
        (not of something else first).  -> the pid killed; ``start()`` then starts it
        again on the same directory (same data) and port."""
        assert self.running(), f"{self!r} is not running"
        pid = self.proc.pid
        os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout)
        assert self.proc.returncode == -signal.SIGKILL, \
            f"private {self.name} pid {pid} exited with {self.proc.returncode}, not by SIGKILL"
        return pid

    def pause(self, timeout=5.0):
        """SIGSTOP: the server holds its connections but answers nothing.  Returns once
        every thread of it is stopped (a signal is delivered asynchronously: a busy thread
        could otherwise still answer one more query)."""
        self.send_signal(signal.SIGSTOP)
        wait_stopped(self.pid, timeout)

    def resume(self):
        self.send_signal(signal.SIGCONT)

    def restart(self, sig=signal.SIGTERM, timeout=60.0):
        """Stop with ``sig`` and start again on the same directory and port."""
        self.stop(sig)
        return self.start(timeout)

    def cleanup(self):
        """Stop and remove the directory if this object created it."""
        try:
            self.stop()
        finally:
            if self._own_dir:
                shutil.rmtree(self.basedir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()


class PrivateMariaDB(PrivateServer):
    """A throwaway mariadbd (root, empty password) on 127.0.0.1:port.

    Small and quick: 32 MB buffer pool, 16 MB redo log, no binary log, no performance
    schema, ``innodb_flush_log_at_trx_commit=2`` (a commit reaches the OS at once, so it
    survives a SIGKILL of the server, only not a power cut), and no server-wide charset
    defaults beyond the built-in ones (so tests show imsrv names utf8mb4 itself)."""

    name = "mariadb"

    def __init__(self, basedir=None, port=None):
        super().__init__(basedir, port)
        self.server = find_binary("mariadbd", "mysqld")
        self.install_db = find_binary("mariadb-install-db", "mysql_install_db")
        if not self.server or not self.install_db:
            raise ServiceError("no mariadbd / mariadb-install-db binaries"
                               " (mariadb-server is not installed: `make system-packages` installs it)")
        self.datadir = os.path.join(self.basedir, "data")
        self.socket = os.path.join(self.basedir, "mysqld.sock")
        self.pidfile = os.path.join(self.basedir, "mysqld.pid")

    @property
    def url(self):
        return f"mysql://root@127.0.0.1:{self.port}"

    def _tuning(self):
        return ["--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M",
                "--skip-log-bin", "--skip-name-resolve", "--performance-schema=OFF",
                "--innodb-flush-log-at-trx-commit=2"]

    def _user(self):
        return ["--user=root"] if os.geteuid() == 0 else []

    def prepare(self):
        if os.path.isdir(os.path.join(self.datadir, "mysql")):
            return
        cmd = [self.install_db, "--no-defaults", f"--datadir={self.datadir}",
               "--auth-root-authentication-method=normal", "--skip-test-db"] + \
            self._user() + self._tuning()
        try:
            out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 timeout=120, cwd=self.basedir)
        except subprocess.TimeoutExpired:
            raise ServiceError(f"{self.install_db} took more than 120 s") from None
        if out.returncode != 0:
            raise ServiceError(f"{' '.join(cmd)} failed ({out.returncode}):\n"
                               + out.stdout.decode(errors="replace")[-3000:])

    def command(self):
        return [self.server, "--no-defaults", f"--datadir={self.datadir}",
                f"--socket={self.socket}", f"--pid-file={self.pidfile}",
                f"--port={self.port}", "--bind-address=127.0.0.1"] + \
            self._user() + self._tuning()

    def ready(self):
        return mysql_ping(self.url, timeout=1.0)


class PrivateRedis(PrivateServer):
    """A throwaway redis-server on 127.0.0.1:port, no persistence."""

    name = "redis"

    def __init__(self, basedir=None, port=None):
        super().__init__(basedir, port)
        self.server = find_binary("redis-server")
        if not self.server:
            raise ServiceError("no redis-server binary (redis-server is not installed: `make system-packages` installs it)")

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self):
        return [self.server, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", self.basedir]

    def ready(self):
        return redis_ping(self.url, timeout=1.0)


# ----------------------------------------------------------------------------- ensure_*
_PRIVATE = []   # instances started by ensure_*: stopped at exit
_RESULTS = {}   # service -> URL or ServiceError (so a failure is not retried per test)


def stop_private_services():
    """Stop (by pid) every private instance ensure_* started.  Runs at exit."""
    while _PRIVATE:
        _PRIVATE.pop().cleanup()


def _ensure(service, env_var, shared_url, ping, private_cls, package, binaries):
    cached = _RESULTS.get(service)
    if isinstance(cached, ServiceError):
        raise cached
    if cached:
        return cached
    try:
        url = _find_or_start(service, env_var, shared_url, ping, private_cls, package,
                             binaries)
    except ServiceError as exc:
        _RESULTS[service] = exc
        raise
    _RESULTS[service] = url
    return url


def _find_or_start(service, env_var, shared_url, ping, private_cls, package, binaries):
    explicit = os.environ.get(env_var)
    if explicit:
        if ping(explicit):
            return explicit
        raise ServiceError(f"{env_var}={explicit} does not answer")
    if ping(shared_url):
        return shared_url
    parts = urlsplit(shared_url)
    where = f"{parts.hostname}:{parts.port}"
    if not all(find_binary(*names) for names in binaries):
        raise ServiceError(f"no {service} at {where} and no {service} binaries to start a"
                           f" private one: {package} is not installed (`make system-packages`"
                           " installs it)")
    instance = private_cls()
    say(f"no {service} at {where}, starting a private one on port {instance.port}"
        f" from {instance.server} (in {instance.basedir})")
    if not _PRIVATE:
        atexit.register(stop_private_services)
    _PRIVATE.append(instance)
    instance.start()
    return instance.url


def ensure_mysql():
    """-> ``mysql://user[:pw]@host:port`` (no database) of a server tests may use."""
    url = _ensure("MariaDB", "IMSRV_TEST_MYSQL_URL", SHARED_MYSQL_URL, mysql_ping,
                  PrivateMariaDB, "mariadb-server",
                  [("mariadbd", "mysqld"), ("mariadb-install-db", "mysql_install_db")])
    return mysql_server_url(url)


def ensure_redis():
    """-> ``redis://host:port/db`` of a server tests may use (with a key prefix of their
    own: see the redis_url fixture)."""
    return _ensure("Redis", "IMSRV_TEST_REDIS_URL", SHARED_REDIS_URL, redis_ping,
                   PrivateRedis, "redis-server", [("redis-server",)])


def random_name(prefix="imsrv_test_"):
    return prefix + secrets.token_hex(6)


def private_mariadb(basedir=None, port=None):
    """A PrivateMariaDB (not started).  Raises ServiceError when mariadb-server is not
    installed (`make system-packages` installs it)."""
    return PrivateMariaDB(basedir, port)


def private_redis(basedir=None, port=None):
    """A PrivateRedis (not started).  Raises ServiceError when redis-server is not
    installed (`make system-packages` installs it)."""
    return PrivateRedis(basedir, port)


def need(make, what):
    """``make()`` (an ensure_* function, a private_* constructor...), or, when it raises
    ServiceError: pytest.fail under CI, else pytest.skip, with the reason."""
    import pytest
    try:
        return make()
    except ServiceError as exc:
        message = f"{what} is needed and cannot be had: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI: a missing service is a failure, not a skip)",
                        pytrace=False)
        pytest.skip(message)  # outside CI only: under CI=true the branch above fails
