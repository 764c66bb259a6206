"""`imsrv chat` end to end: the scriptable mode, and the interactive mode through a pty."""
import json
import os
import re

import pytest

from .chat_pty import PtyChat, chat_cmd, run_chat
from .conftest import befriend
from harness.procs import LineProc, wait_until
from harness.users import PASSWORD

pytestmark = pytest.mark.timeout(90)

def test_scriptable_send_and_json_listen(server, make_client, tmp_path, pwfile):
    alice = make_client(server, login=False, register=False)
    bob = make_client(server)
    alice.user = "chat_" + bob.user[:20]
    store = str(tmp_path / "alice-chat.db")
    base = ["--api", server.api_address, "--user", alice.user, "--password-file", pwfile, "--store", store]
    # register through the chat client; not friends yet: refused, exit 1
    r = run_chat(base + ["--register", "--send", bob.user, "hello"])
    assert r.returncode == 1 and "forbidden" in r.stderr, r
    alice.login(alice.user, PASSWORD)
    befriend(alice, bob)
    got = []
    bob.on("message", lambda m: None if m.get("kind") else got.append(m))   # v1.1: not the group events
    r = run_chat(base + ["--send", bob.user, "hello bob"])
    assert r.returncode == 0, r
    assert re.match(r"sent to \S+: mid=\d+ seq=\d+", r.stdout), r.stdout
    r = run_chat(base + ["--json", "--send", bob.user, "second"])
    ack = json.loads(r.stdout)
    assert r.returncode == 0 and ack["event"] == "ack" and ack["to"] == bob.user and ack["mid"] > 0
    wait_until(lambda: len(got) == 2, what="bob got both")
    assert [m["body"] for m in got] == [{"text": "hello bob"}, {"text": "second"}]
    # groups by name
    gid = bob.group_create("chatters", [alice.user])
    r = run_chat(base + ["--send-group", "chatters", "hi group"])
    assert r.returncode == 0, r
    wait_until(lambda: len(got) == 3 and got[2].get("group") == gid, what="group message")
    r = run_chat(base + ["--send-group", "no-such-group", "x"])
    assert r.returncode == 1
    # password problems
    bad = tmp_path / "bad"
    bad.write_text("wrong-password\n")
    r = run_chat(["--api", server.api_address, "--user", alice.user, "--password-file", str(bad), "--store", store,
                  "--send", bob.user, "x"])
    assert r.returncode == 1 and "unauthorized" in r.stderr
    r = run_chat(["--api", server.api_address, "--user", alice.user, "--store", store, "--send", bob.user, "x"])
    assert r.returncode == 2 and "password" in r.stderr
    r = run_chat(["--api", server.api_address, "--user", alice.user, "--store", store, "--send", bob.user, "via env"],
                 env={"IMSRV_PASSWORD": PASSWORD})
    assert r.returncode == 0, r


def test_listen_prints_json_lines_exactly_once(server, make_client, tmp_path, pwfile):
    alice, bob = make_client(server), make_client(server)
    befriend(alice, bob)
    store = str(tmp_path / "bob-chat.db")
    base = chat_cmd() + ["--api", server.api_address, "--user", bob.user, "--password-file", pwfile, "--store", store]
    alice.send(bob.user, {"text": "before listening"})
    p = LineProc(base + ["--json", "--count", "3", "--timeout", "30"], tmp_path, name="listen")
    for i in range(2):
        alice.send(bob.user, {"text": f"live {i}"})
    assert p.wait(40) == 0, p.stderr()
    lines = [x for x in p.lines if isinstance(x, dict)]
    assert [x["event"] for x in lines] == ["message"] * 3
    assert [x["body"]["text"] for x in lines] == ["before listening", "live 0", "live 1"]
    assert [x["seq"] for x in lines] == [1, 2, 3] and all(x["from"] == alice.user for x in lines)
    # the store remembers: a second run prints only what is new, then stops at --timeout
    alice.send(bob.user, {"text": "later"})
    p2 = LineProc(base + ["--json", "--timeout", "1.5"], tmp_path, name="listen2")
    assert p2.wait(30) == 0, p2.stderr()
    assert [x["body"]["text"] for x in p2.lines if isinstance(x, dict)] == ["later"]
    # human-readable listen with other events
    p3 = LineProc(base + ["--listen", "--events", "message,typing,state", "--count", "1", "--timeout", "30"],
                  tmp_path, name="listen3")
    p3.wait_until(lambda: any(str(x).startswith(f"* online as {bob.user}") for x in p3.lines), what="online")
    alice.typing(bob.user)
    p3.wait_until(lambda: any("is typing" in str(x) for x in p3.lines), what="typing line")
    alice.send(bob.user, {"text": "plain"})
    assert p3.wait(30) == 0, p3.stderr()
    assert any(re.search(rf"\[@{alice.user}\] {alice.user}: plain$", str(x)) for x in p3.lines), p3.lines


def test_interactive_through_a_pty(server, make_client, tmp_path, pwfile):
    bob, carol, dave = make_client(server), make_client(server), make_client(server)
    alice = make_client(server, login=False)
    alice.login(alice.user, PASSWORD)
    befriend(alice, bob)
    bob.send(alice.user, {"text": "old message"})
    alice.close()
    bob_events = []
    bob.on("*", bob_events.append)

    def bob_saw(kind, pred=lambda d: True):
        return wait_until(lambda: [e for e in bob_events if e.type == kind and pred(e.data)], what=f"bob: {kind}")

    env = dict(os.environ)
    env.pop("IMSRV_PASSWORD", None)
    env["TERM"] = "xterm"
    cmd = chat_cmd() + ["--api", server.api_address, "--user", alice.user, "--password-file", pwfile,
                        "--store", str(tmp_path / "alice.db")]
    t = PtyChat(cmd, env)
    try:
        t.expect(r"logged in as " + alice.user)
        t.expect(rf"\[@{bob.user}\] {bob.user}: old message")      # synced from the inbox
        # friends with presence
        t.line("/friends")
        t.expect(rf"{bob.user}\s+online")
        # open the conversation: scrollback shows the history
        t.line(f"/open {bob.user}")
        t.expect(rf"conversation @{bob.user}")
        t.expect(rf"  \d\d:\d\d \[@{bob.user}\] {bob.user}: old message")   # indented: history
        # typing sends a hint, Enter sends the message
        t.type("hello bob")
        bob_saw("typing", lambda d: d["from"] == alice.user)
        t.type("\r")
        msg = bob_saw("message", lambda d: d["body"] == {"text": "hello bob"})[0].data
        t.expect(rf"\[@{bob.user}\] me: hello bob")
        # incoming: typing hint, message, then alice's client marks it read (receipt to bob)
        bob.typing(alice.user)
        t.expect(rf"{bob.user} is typing")
        hi = bob.send(alice.user, {"text": "hi alice"})
        t.expect(rf"\[@{bob.user}\] {bob.user}: hi alice")
        bob_saw("receipt", lambda d: d["from"] == alice.user and d["mid"] == hi["mid"])
        # bob reads alice's message: alice sees the receipt
        bob.read(msg)
        t.expect(rf"{bob.user} has read \[@{bob.user}\] up to message {msg['mid']}")
        # history scrollback: all of it was shown already
        t.line("/history 5")
        t.expect(r"no earlier messages")
        # friends: add, accept
        carol.friend_request(alice.user, "let's chat")
        t.expect(rf'friend request from {carol.user}: "let\'s chat"')
        t.line(f"/accept {carol.user}")
        t.expect(rf"accepted {carol.user}")
        wait_until(lambda: carol.friends(), what="carol's friendship", interval=0.05)
        dave_events = []
        dave.on("friend_request", dave_events.append)
        t.line(f"/add {dave.user} hi dave")
        t.expect(rf"friend request sent to {dave.user}")
        wait_until(lambda: dave_events, what="dave's friend request")
        # a group conversation
        t.line(f"/newgroup crew {bob.user} {carol.user}")
        m = t.expect(r"created group crew \(id (\S+)\)")
        gid = m.group(1)
        t.line("hi crew")
        bob_saw("message", lambda d: d.get("group") == gid and d["body"] == {"text": "hi crew"})
        t.expect(r"\[#crew\] me: hi crew")
        carol.send(group=gid, body={"text": "hey"})
        t.expect(rf"\[#crew\] {carol.user}: hey")
        # status and presence
        t.line("/status away back soon")
        bob_saw("presence", lambda d: d["user"] == alice.user and d["status"] == "away")
        t.line("/nonsense")
        t.expect(r"unknown command /nonsense")
        t.line("/quit")
        assert t.wait_exit() == 0
    finally:
        t.kill()
