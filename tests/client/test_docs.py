"""The ten-line SDK example in docs/CLIENT.md (and the package docstring, and the README
once the section is copied there) runs as written against a fresh server."""
import os
import re
import subprocess
import sys
import textwrap

import pytest

import imsrv.client

from harness.procs import REPO_ROOT, in_thread

pytestmark = pytest.mark.timeout(60)

MARKER = "<!-- sdk-example"


def docs_example():
    text = (REPO_ROOT / "docs" / "CLIENT.md").read_text()
    start = text.index(MARKER)
    m = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    return m.group(1)


def test_example_is_ten_lines_and_the_same_everywhere():
    code = docs_example()
    lines = code.rstrip("\n").split("\n")
    assert len(lines) <= 10, lines
    assert textwrap.indent(code.rstrip("\n"), "    ") in imsrv.client.__doc__
    readme = REPO_ROOT / "README.md"
    text = readme.read_text() if readme.exists() else ""
    if "from imsrv.client import Client" in text:
        blocks = re.findall(r"```python\n(.*?)```", text, re.S)
        assert code in blocks, "README's SDK example differs from docs/CLIENT.md"


def test_example_runs_as_written(server_factory, tmp_path):
    srv = server_factory(name="docs")   # embedded only: the docs run `imsrv serve`; a fresh server (mid 1)
    env = dict(os.environ, IMSRV_API=srv.api_address)
    script = tmp_path / "example.py"
    script.write_text(docs_example())
    r = in_thread(lambda: subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                                         timeout=40, env=env, cwd=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "carol -> dave: hello dave (mid 1)\n"


# ---------------------------------------------------------------------- the quick start
def transcripts(path):
    """The two ```text blocks after "Alice's terminal:" and "Bob's terminal:"."""
    text = path.read_text()
    out = {}
    for who in ("Alice", "Bob"):
        start = text.index(f"{who}'s terminal:")
        m = re.compile(r"```text\n(.*?)```", re.S).search(text, start)
        out[who.lower()] = m.group(1).rstrip("\n").split("\n")
    return out


def render(raw):
    """What a terminal shows for the chat client's output: it only ever writes text,
    newlines, and "\\r ESC[K" (back to the start of the line, clear it)."""
    lines, cur = [], ""
    for token in re.split(r"(\r\x1b\[K|\r\n|\n|\r|\x1b\[[0-9;?]*[A-Za-z])", raw):
        if token in ("\n", "\r\n"):
            lines.append(cur)
            cur = ""
        elif token in ("\r\x1b[K", "\r"):
            cur = ""
        elif token.startswith("\x1b"):
            continue
        else:
            cur += token
    return [ln.rstrip() for ln in lines + [cur]]


def test_the_quick_start_transcripts_are_what_the_client_prints(server_factory, tmp_path):
    from .chat_pty import PtyChat, chat_cmd, pty_env

    srv = server_factory(name="quickstart")   # embedded only: the README's quick start is `make run`
    wanted = transcripts(REPO_ROOT / "README.md")
    assert transcripts(REPO_ROOT / "docs" / "CLIENT.md") == wanted
    terms = {}

    def start(name, password):
        env = pty_env()
        env.update(IMSRV_API=srv.api_address, XDG_DATA_HOME=str(tmp_path / name))
        t = PtyChat(chat_cmd() + ["--user", name, "--register"], env)
        t.expect(rf"password for {name}: ")
        t.line(password)
        t.expect(rf"\* online as {name}")
        terms[name] = t
        return t

    try:
        bob = start("bob", "bob-pass12")
        alice = start("alice", "alice-pass1")
        alice.line("/add bob hi, it's alice")
        bob.expect(r"friend request from alice")
        bob.line("/accept alice")
        bob.expect(r"\* alice is now online")
        alice.expect(r"\* bob is now online")
        bob.line("/friends")
        bob.expect(r"  alice  online")
        alice.line("/open bob")
        alice.expect(r"\* conversation @bob")
        alice.type("hello bob!")
        bob.expect(r"\* alice is typing\.\.\.")
        alice.type("\r")
        bob.expect(r"alice: hello bob!")
        bob.line("/open alice")
        bob.expect(r"\* conversation @alice")
        alice.expect(r"\* bob has read \[@bob\] up to message 1")
        bob.type("hi alice, how are you?")
        alice.expect(r"\* bob is typing\.\.\.")
        bob.type("\r")
        alice.expect(r"bob: hi alice, how are you\?")
        bob.expect(r"\* alice has read \[@alice\] up to message 2")
        alice.type("fine, thanks")
        bob.expect(r"\* alice is typing\.\.\.")
        alice.type("\r")
        bob.expect(r"alice: fine, thanks")
        alice.expect(r"\* bob has read \[@bob\] up to message 3")
        for name, t in terms.items():
            t.expect(r"> $")                      # the prompt is back: the screen is complete
            shown = [f"$ imsrv chat --user {name} --register"] + render(t.raw)
            shown = [re.sub(r"^\d\d:\d\d \[", "16:56 [", re.sub(r"^  \d\d:\d\d \[", "  16:56 [", ln))
                     .replace(srv.gateway_address, "127.0.0.1:7000") for ln in shown]
            assert shown == wanted[name], "\n".join(shown)
    finally:
        for t in terms.values():
            t.kill()
