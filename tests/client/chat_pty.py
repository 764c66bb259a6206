"""Running `imsrv chat` in the tests: as a subprocess (scriptable mode) or on a pty
(interactive mode), reading what it prints without sleeps."""
import errno
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import time

from gevent.socket import wait_read

from harness.procs import in_thread

_CHAT_CMD = None


def chat_cmd():
    """`imsrv chat` if the lead wired it into imsrv/cli/main.py, else the same code via
    `python -m imsrv.cli.chat`."""
    global _CHAT_CMD
    if _CHAT_CMD is None:
        exe = shutil.which("imsrv", path=os.path.dirname(sys.executable)) or shutil.which("imsrv")
        _CHAT_CMD = [sys.executable, "-m", "imsrv.cli.chat"]
        if exe:
            r = subprocess.run([exe, "chat", "--help"], capture_output=True, timeout=30)
            if r.returncode == 0:
                _CHAT_CMD = [exe, "chat"]
    return list(_CHAT_CMD)


def run_chat(args, timeout=30, env=None):
    full = dict(os.environ)
    full.pop("IMSRV_PASSWORD", None)
    full.update(env or {})
    return in_thread(lambda: subprocess.run(chat_cmd() + args, capture_output=True, text=True,
                                            timeout=timeout, env=full))


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


class PtyChat:
    def __init__(self, cmd, env):
        pid, fd = pty.fork()
        if pid == 0:  # child: become the chat client
            try:
                os.execvpe(cmd[0], cmd, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.raw = ""
        self.pos = 0

    def _fill(self, timeout):
        try:
            wait_read(self.fd, timeout=timeout)
        except Exception:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return None  # the child closed the terminal
            raise
        if not data:
            return None
        self.raw += data.decode("utf-8", "replace")
        return True

    @property
    def text(self):
        return ANSI.sub("", self.raw)

    def expect(self, pattern, timeout=10.0):
        """Wait until ``pattern`` (regex) appears after the last match; return the match."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.text, self.pos)
            if m:
                self.pos = m.end()
                return m
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"pattern {pattern!r} not seen in {timeout}s; screen:\n{self.text[-3000:]}")
            if self._fill(min(remaining, 0.5)) is None and not rx.search(self.text, self.pos):
                raise AssertionError(f"chat exited before {pattern!r}; screen:\n{self.text[-3000:]}")

    def expect_all(self, *patterns, timeout=10.0):
        """Wait until every pattern appears after the last match, in any order."""
        start = self.pos
        ends = []
        for p in patterns:
            self.pos = start
            ends.append(self.expect(p, timeout).end())
        self.pos = max(ends)

    def type(self, text):
        os.write(self.fd, text.encode("utf-8"))

    def line(self, text):
        self.type(text + "\r")

    def wait_exit(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._fill(0.2)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        raise AssertionError(f"chat did not exit; screen:\n{self.text[-2000:]}")

    def kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass

    def type_long(self, text, chunk=2048):
        """Type a long text (a paste) while reading the echo, so neither side blocks."""
        for i in range(0, len(text), chunk):
            os.write(self.fd, text[i:i + chunk].encode("utf-8"))
            while self._fill(0.01):
                pass

    def since(self, start):
        """The screen text from offset ``start`` (a position from .pos) to the end."""
        return self.text[start:]

    def marker(self, tag):
        """Have the client print a marker line (an unknown command, answered locally)
        and wait for it: whatever the client printed before is on the screen by now."""
        self.line(f"/mark-{tag}")
        self.expect(rf"unknown command /mark-{tag}")


def pty_env():
    env = dict(os.environ)
    env.pop("IMSRV_PASSWORD", None)
    env["TERM"] = "xterm"
    return env


def start_chat(server, user, pwfile, store, *extra):
    """`imsrv chat` for ``user`` on a pty, with its own store; -> PtyChat (logged in)."""
    cmd = chat_cmd() + ["--api", server.api_address, "--user", user, "--password-file", pwfile,
                        "--store", str(store)] + list(extra)
    t = PtyChat(cmd, pty_env())
    t.expect(r"logged in as " + re.escape(user))
    return t
