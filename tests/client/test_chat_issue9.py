"""`imsrv chat` defects of issue 9: oversized messages (1), /open of nobody (4), library
internals on the screen (5), two lines per retry and `imsrv call --help` (13)."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from imsrv.client import SQLiteStore

from .chat_pty import run_chat, start_chat
from .conftest import befriend
from harness.procs import in_thread, wait_until
from harness.users import PASSWORD, unique_name

pytestmark = pytest.mark.timeout(90)

INTERNALS = re.compile(r"imsrv client|\{'op'|event=|Traceback")


def texts(msgs):
    return [m["body"]["text"] for m in msgs]


def plant(path, user, device, to, text, cmid):
    """An outbox entry as an older client would have left it (no size check)."""
    store = SQLiteStore(path)
    store.bind(user, device)
    store.outbox_add(cmid, to, None, {"text": text})
    store.close()


def outbox_of(path, user, device):
    store = SQLiteStore(path)
    store.bind(user, device)
    try:
        return store.outbox()
    finally:
        store.close()


# ---------------------------------------------------------------------- defect 1
def test_a_pasted_66000_character_line_is_refused_and_the_client_keeps_working(
        server, make_client, tmp_path, pwfile):
    alice, bob = make_client(server), make_client(server)
    befriend(alice, bob)
    got = []
    bob.on("message", got.append)
    store = tmp_path / "alice.db"
    t = start_chat(server, alice.user, pwfile, store)
    try:
        t.line(f"/open {bob.user}")
        t.expect(rf"conversation @{bob.user}")
        start = t.pos
        t.type_long("x" * 66000)
        t.type("\r")
        t.expect(r"! the message is too large: its body is 66,011 bytes encoded and a message may "
                 r"have at most 16,384", timeout=20)
        t.line("hello after the paste")
        t.expect(rf"\[@{bob.user}\] me: hello after the paste")
        wait_until(lambda: got, what="bob got the small message")
        assert texts(got) == ["hello after the paste"]
        assert "trying again" not in t.since(start) and "offline" not in t.since(start)
        t.line("/quit")
        assert t.wait_exit() == 0
    finally:
        t.kill()
    assert outbox_of(str(store), alice.user, "chat") == []
    # and the next start is not wedged
    t = start_chat(server, alice.user, pwfile, store)
    try:
        t.expect(rf"online as {alice.user}")
        t.line("/quit")
        assert t.wait_exit() == 0
    finally:
        t.kill()


def test_send_of_70kb_fails_at_once_and_an_old_outbox_does_not_wedge(server, make_client, tmp_path, pwfile):
    alice, bob = make_client(server), make_client(server)
    befriend(alice, bob)
    got = []
    bob.on("message", got.append)
    store = str(tmp_path / "alice.db")
    base = ["--api", server.api_address, "--user", alice.user, "--password-file", pwfile, "--store", store]
    r = run_chat(base + ["--send", bob.user, "y" * 70000], timeout=30)
    assert r.returncode == 1, r
    assert f"not sent to {bob.user}: the message is too large" in r.stderr, r.stderr
    assert outbox_of(store, alice.user, "chat-send") == []
    # an older client left a 70 KB entry in the outbox of chat-send: dropped and said so
    plant(store, alice.user, "chat-send", bob.user, "z" * 70000, "old-big")
    r = run_chat(base + ["--send", bob.user, "hi"], timeout=30)
    assert r.returncode == 0, r
    assert re.search(rf"your message to {bob.user} was not sent: it is too large \(70,011 bytes; "
                     r"the limit is 16,384\) \(queued by an earlier run\)", r.stderr), r.stderr
    wait_until(lambda: texts(got) == ["hi"], what="bob got hi")
    assert outbox_of(store, alice.user, "chat-send") == []
    # the same for the interactive client's outbox
    plant(store, alice.user, "chat", bob.user, "w" * 70000, "old-big-2")
    t = start_chat(server, alice.user, pwfile, store)
    try:
        t.expect(rf"! your message to {bob.user} was not sent: it is too large")
        t.expect(rf"online as {alice.user}")
        t.line(f"/msg {bob.user} still here")
        wait_until(lambda: texts(got) == ["hi", "still here"], what="bob got the next one")
        t.line("/quit")
        assert t.wait_exit() == 0
    finally:
        t.kill()


# ---------------------------------------------------------------------- defect 4
def test_open_of_nobody_keeps_the_open_conversation(server, make_client, tmp_path, pwfile):
    alice, bob = make_client(server), make_client(server)
    befriend(alice, bob)
    got = []
    bob.on("message", got.append)
    t = start_chat(server, alice.user, pwfile, tmp_path / "alice.db")
    try:
        t.line(f"/open {bob.user}")
        t.expect(rf"conversation @{bob.user}")
        start = t.pos
        t.line("/open nobody_xyz")
        t.expect(rf"! there is no user nobody_xyz; plain lines still go to @{bob.user}")
        t.line("/group no-such-group")
        t.expect(rf"! you are not in a group called no-such-group \(/groups lists yours\); "
                 rf"plain lines still go to @{bob.user}")
        t.line("still for bob")
        t.expect(rf"{alice.user}@{bob.user}> still for bob\n")   # what was typed stays on the screen
        t.expect(rf"\[@{bob.user}\] me: still for bob")
        wait_until(lambda: texts(got) == ["still for bob"], what="bob got it")
        assert "conversation @nobody_xyz" not in t.since(start)
        assert t.text.rstrip().endswith(f"{alice.user}@{bob.user}>")   # the prompt did not change
        t.line("/close")
        t.line("/open nobody_xyz")
        t.expect(r"! there is no user nobody_xyz; no conversation is open")
        t.line("/quit")
        assert t.wait_exit() == 0
    finally:
        t.kill()


# ---------------------------------------------------------------------- defect 5
def test_people_sentences_not_library_internals(server, make_client, tmp_path, pwfile):
    alice, stranger = make_client(server), make_client(server)
    log = tmp_path / "chat.log"
    t = start_chat(server, alice.user, pwfile, tmp_path / "alice.db", "--log", str(log))
    try:
        t.line(f"/open {stranger.user}")       # exists, but not a friend
        t.expect(rf"conversation @{stranger.user}")
        t.type("typing to a stranger")         # a typing hint the gateway refuses
        t.type("\r")
        t.expect(rf"! your message to {stranger.user} was not sent: you cannot message "
                 rf"'{stranger.user}': not friends")
        t.marker("one")
        assert not INTERNALS.search(t.text), t.text
        t.line("/quit")
        assert t.wait_exit() == 0
    finally:
        t.kill()
    logged = log.read_text()
    assert "event=send_dropped" in logged and "code=forbidden" in logged, logged


def test_a_wiped_server_is_explained(server_factory, make_client, tmp_path, pwfile):
    srv = server_factory(name="wiped")   # embedded only: kills the server and wipes its data dir
    alice, bob = make_client(srv, user=unique_name("al")), make_client(srv, user=unique_name("bo"))
    befriend(alice, bob)
    for i in range(3):
        bob.send(alice.user, {"text": f"m{i}"})
    store = tmp_path / "alice.db"
    t = start_chat(srv, alice.user, pwfile, store)
    try:
        t.expect(rf"\[@{bob.user}\] {bob.user}: m2")
        t.line("/quit")
        assert t.wait_exit() == 0
    finally:
        t.kill()
    alice.close()
    bob.close()
    srv.kill()
    shutil.rmtree(srv.data_dir)
    srv.start()
    make_client(srv, user=alice.user, login=False)   # the same name on the empty server
    t = start_chat(srv, alice.user, pwfile, store)
    try:
        t.expect(r"\* the server has fewer of your messages than this device had seen \(a new or restored "
                 r"server\); continuing with what the server has")
        t.marker("two")
        assert "cursor_ahead" not in t.text and not INTERNALS.search(t.text), t.text
        t.line("/quit")
        assert t.wait_exit() == 0
    finally:
        t.kill()


# ---------------------------------------------------------------------- defect 13
def test_one_line_per_retry_while_the_server_is_down(server_factory, make_client, tmp_path, pwfile):
    srv = server_factory(name="down")   # embedded only: kills and restarts the one server process
    alice = make_client(srv)
    alice.close()
    t = start_chat(srv, alice.user, pwfile, tmp_path / "alice.db")
    try:
        t.expect(rf"online as {alice.user}")
        start = t.pos
        srv.kill()
        for _ in range(3):
            t.expect(r"\* offline \([^)\n]+\); trying again in [\d.]+s", timeout=20)
        srv.start()
        t.expect(rf"online as {alice.user}", timeout=30)
        prompt = re.compile(rf"^(?:{alice.user}\S*> )+")
        shown = [prompt.sub("", ln) for ln in t.since(start).splitlines()]
        shown = [ln for ln in shown if ln.startswith(("* ", "! "))]
        retries = [ln for ln in shown if "trying again" in ln]
        assert len(retries) >= 3
        assert all(ln in retries or ln.startswith("* online as") for ln in shown), shown
        t.line("/quit")
        assert t.wait_exit() == 0
    finally:
        t.kill()


def imsrv_cmd():
    exe = shutil.which("imsrv", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "imsrv.cli.main"]


def test_call_help_lists_the_api_ops_with_their_fields():
    from imsrv.protocol.schemas import API_SCHEMAS, NO_TOKEN
    r = in_thread(lambda: subprocess.run(imsrv_cmd() + ["call", "--help"], capture_output=True, text=True,
                                         timeout=30))
    assert r.returncode == 0, r
    assert "usage: imsrv call [--api HOST:PORT] [--timeout S] OP [KEY=VALUE ...]" in r.stdout
    for op, schema in API_SCHEMAS.items():
        m = re.search(rf"^  {op} +(.*)$", r.stdout, re.M)
        assert m, f"{op} not listed:\n{r.stdout}"
        for name, (_check, required) in schema.items():
            assert (f"{name}=..." if required else f"[{name}=...]") in m.group(1).split(), (op, name, m.group(1))
        assert ("token=TOKEN" in m.group(1)) == (op not in NO_TOKEN)
    r = in_thread(lambda: subprocess.run(imsrv_cmd() + ["call"], capture_output=True, text=True, timeout=30))
    assert r.returncode == 2 and "required: OP" in r.stderr and "fields" not in r.stderr, r.stderr
    r = in_thread(lambda: subprocess.run(imsrv_cmd() + ["call", "--api", "127.0.0.1:1", "groups"],
                                         capture_output=True, text=True, timeout=30))
    assert r.returncode == 1 and "cannot reach the API at 127.0.0.1:1" in r.stderr


@pytest.mark.parametrize("password", [PASSWORD])
def test_call_fields_are_optional(server, password):
    name = unique_name("call")
    run = lambda *a: in_thread(lambda: subprocess.run(imsrv_cmd() + ["call", "--api", server.api_address] + list(a),
                                                      capture_output=True, text=True, timeout=30))
    r = run("register", f"user={name}", f"password={password}")
    assert r.returncode == 0 and '"user": "%s"' % name in r.stdout, r
    r = run("groups")                     # no fields at all: the server says what is missing
    assert r.returncode == 1 and "unauthorized" in r.stdout, r
