"""`imsrv chat` on a pty with protocol v1.1: the conversation list at start and /convs with
unread counts, /recall, /edit, /react, /reply, @mentions in group messages, the group
admin commands and their events, /search.  The other side of each conversation is an SDK
Client, which checks what reached the server.

The screen is read with ``expect`` (bounded waits for a line); "nothing more was printed"
is shown with a marker (an unknown command the chat answers at once, after everything it
printed before).
"""
import re

import pytest

from .chat_pty import start_chat
from .conftest import befriend
from harness.procs import wait_until

pytestmark = pytest.mark.timeout(120)

T = r"\d\d:\d\d"


def collect_msgs(client):
    got = []
    client.on("message", got.append)
    return got


def test_start_screen_and_convs_show_unread_counts(server, make_client, tmp_path, pwfile):
    alice, bob, carol = (make_client(server) for _ in range(3))
    befriend(alice, bob)
    bob.send(alice.user, {"text": "are you there?"})
    bob.send(alice.user, {"text": "ping"})
    gid = carol.group_create("crew", [alice.user])
    carol.send(group=gid, body={"text": f"@{alice.user} look"}, mentions=[alice.user])
    alice.close()
    t = start_chat(server, alice.user, pwfile, tmp_path / "alice.db")
    try:
        t.expect(r"\* your conversations \(/convs for more, /open or /group to read one\):")
        t.expect(rf"  #crew\s+1 unread, mentions you  {T} {carol.user}: @{alice.user} look  \(mentions you\)")
        t.expect(rf"  @{bob.user}\s+2 unread  {T} {bob.user}: ping")
        # what arrived while away is printed too; then opening the conversation reads it
        t.expect_all(rf"online as {alice.user}", rf"{T} \[@{bob.user}\] {bob.user}: ping")
        receipts = []
        bob.on("receipt", receipts.append)
        t.line(f"/open {bob.user}")
        t.expect(rf"conversation @{bob.user}")
        wait_until(lambda: receipts, what="bob's receipt")
        t.line("/convs")
        t.expect(r"\* your conversations, most recent first:")
        t.expect(rf"  #crew\s+1 unread, mentions you")
        t.expect(rf"  @{bob.user}\s+0 unread  {T} {bob.user}: ping")
        t.line("/convs x")
        t.expect(r"! usage: /convs \[N\]")
        t.line("/quit")
        assert t.wait_exit() == 0
    finally:
        t.kill()
    # a new account: nothing is listed at start, /convs says so
    dave = make_client(server)
    dave.close()
    t = start_chat(server, dave.user, pwfile, tmp_path / "dave.db")
    try:
        t.expect(rf"online as {dave.user}")
        t.line("/convs")
        t.expect(r"\* no conversations yet")
        assert "your conversations" not in t.text
        t.line("/quit")
        assert t.wait_exit() == 0
    finally:
        t.kill()


def test_recall_edit_react_and_reply(server, make_client, tmp_path, pwfile):
    alice, bob = make_client(server), make_client(server)
    befriend(alice, bob)
    alice.close()
    got_b = collect_msgs(bob)

    def bob_has(pred, what):
        return wait_until(lambda: [m for m in got_b if pred(m)], what=what)[-1]

    t = start_chat(server, alice.user, pwfile, tmp_path / "alice.db")
    try:
        t.line(f"/open {bob.user}")
        t.expect(rf"conversation @{bob.user}")
        t.line("/recall")
        t.expect(r"! there is no message of yours here to recall")
        t.line("helo")
        t.expect(rf"\[@{bob.user}\] me: helo")
        first = bob_has(lambda m: m["body"] == {"text": "helo"}, "the first message")
        t.line("/edit hello bob")
        t.expect(rf"{T} \[@{bob.user}\] me: \(edited\) hello bob")
        edit = bob_has(lambda m: m.get("kind") == "edit", "the edit")
        assert (edit["ref"], edit["body"]) == (first["mid"], {"text": "hello bob"})
        # incoming: a question; react to it and reply to it
        q = bob.send(alice.user, {"text": "how are you?"})
        t.expect(rf"\[@{bob.user}\] {bob.user}: how are you\?")
        t.line("/react 👍")
        t.expect(rf'{T} \[@{bob.user}\] you reacted 👍 to "how are you\?"')
        reaction = bob_has(lambda m: m.get("kind") == "reaction", "the reaction")
        assert (reaction["ref"], reaction["body"]) == (q["mid"], {"emoji": "👍", "on": True})
        t.line("/reply 1 fine, thanks")
        t.expect(rf'\[@{bob.user}\] me: \(reply to {bob.user}: "how are you\?"\) fine, thanks')
        reply = bob_has(lambda m: m["body"] == {"text": "fine, thanks"}, "the reply")
        assert reply["reply_to"] == q["mid"]
        # /edit N: my 2nd last message is the first one (now "hello bob")
        t.line("/edit 2 hello, bob")
        t.expect(rf"me: \(edited\) hello, bob")
        bob_has(lambda m: m.get("kind") == "edit" and m["body"] == {"text": "hello, bob"}, "the second edit")
        # /recall takes my last message back
        t.line("/recall")
        t.expect(rf"{T} \[@{bob.user}\] you recalled a message")
        recall = bob_has(lambda m: m.get("kind") == "recall", "the recall")
        assert recall["ref"] == reply["mid"]
        t.line("/recall 5")
        t.expect(r"! there is only 1 message of yours here to recall \(N counts back from the last, 1\)")
        # what bob does shows up the same way
        bob.edit(q["mid"], {"text": "how are you, alice?"})
        t.expect(rf"{T} \[@{bob.user}\] {bob.user}: \(edited\) how are you, alice\?")
        bob.react(first["mid"], "❤")
        t.expect(rf'{T} \[@{bob.user}\] {bob.user} reacted ❤ to "hello, bob"')
        bob.react(first["mid"], "❤", on=False)
        t.expect(rf'{bob.user} took back ❤ from "hello, bob"')
        bob.recall(q["mid"])
        t.expect(rf"{T} \[@{bob.user}\] {bob.user} recalled a message")
        # recalled messages are not counted: one is left
        t.line("/react 👍 9")
        t.expect(r"! there is only 1 message here to react to")
        # the scrollback shows the current state
        t.line("/close")
        t.line(f"/open {bob.user}")
        t.expect(rf"  {T} \[@{bob.user}\] me: \(edited\) hello, bob")
        t.expect(rf"  {T} \[@{bob.user}\] {bob.user} recalled a message")
        t.expect(rf"  {T} \[@{bob.user}\] you recalled a message")
        t.line("/quit")
        assert t.wait_exit() == 0
    finally:
        t.kill()


def test_group_mentions_admin_commands_and_search(server, make_client, tmp_path, pwfile):
    alice, bob, carol = (make_client(server) for _ in range(3))
    gid = alice.group_create("crew", [bob.user, carol.user])
    alice.close()
    got_b = collect_msgs(bob)
    t = start_chat(server, alice.user, pwfile, tmp_path / "alice.db", "--group-poll", "0")
    try:
        t.line("/group crew")
        t.expect(r"conversation #crew")
        # @name words of members become mentions; @all mentions everyone
        t.line(f"hi @{bob.user}, and @nobody_here")
        t.expect(rf"\[#crew\] me: hi @{bob.user}, and @nobody_here")
        m = wait_until(lambda: [x for x in got_b if x.get("body") == {"text": f"hi @{bob.user}, and @nobody_here"}],
                       what="bob has it")[0]
        assert m["mentions"] == [bob.user]
        t.line("@all stand-up in 5")
        m = wait_until(lambda: [x for x in got_b if x.get("body") == {"text": "@all stand-up in 5"}],
                       what="bob has the @all")[0]
        assert m["mentions"] == ["all"]
        bob.send(group=gid, body={"text": f"ok @{alice.user}"}, mentions=[alice.user])
        t.expect(rf"\[#crew\] {bob.user}: ok @{alice.user}  \(mentions you\)")
        # admin commands say what they did once; the members get the event
        t.line(f"/admin {bob.user}")
        t.expect(rf"\* you made {bob.user} an admin of crew")
        wait_until(lambda: [x for x in got_b if x.get("kind") == "group_event" and x["body"]["event"] == "role"],
                   what="bob hears he is an admin")
        t.line("/notice no spoilers")
        t.expect(r"\* you set the notice of crew: no spoilers")
        t.line("/info")
        t.expect(rf"  crew \(id {gid}\): 3 members \(at most \d+\), owner {alice.user}, admins {bob.user}")
        t.expect(r"  notice: no spoilers")
        t.line("/muteall 10")
        t.expect(rf"\* you muted everyone but the owner and admins in crew until (\d{{4}}-\d\d-\d\d )?{T}")
        t.line("/unmuteall")
        t.expect(r"\* you unmuted everyone in crew")
        t.line(f"/mute {carol.user} forever")
        t.expect(rf"\* you muted {carol.user} in crew until further notice")
        t.line(f"/unmute {carol.user}")
        t.expect(rf"\* you unmuted {carol.user} in crew")
        t.line("/rename band")
        t.expect(r"\* you renamed group crew to band")
        t.expect(rf"{alice.user}#band> ")
        # what another admin does is shown as it happens
        bob.group_kick(gid, carol.user)
        t.expect(rf"\* {bob.user} removed {carol.user} from band")
        t.marker("admin")
        shown = t.text
        for said in ("an admin of crew", "the notice of crew", "you muted everyone", f"unmuted {carol.user}",
                     "renamed group crew"):
            assert shown.count(said) == 1, (said, shown[-3000:])   # the event did not repeat the command
        t.line(f"/kick {carol.user}")
        t.expect(rf"! user '{carol.user}' is not a member of group '{gid}'")
        t.line("/dissolve")
        t.expect(r"type band to confirm: ")
        t.line("no")
        t.expect(r"\* cancelled; band goes on")
        # search
        wait_until(lambda: bob.search("stand-up"), what="indexed")
        t.line("/search STAND-UP")
        t.expect(r'\* 1 message with "STAND-UP":')
        t.expect(rf"  {T} \[#band\] me: @all stand-up in 5")
        t.line("/search zzzyzzy")
        t.expect(r'\* no messages with "zzzyzzy"')
        t.line("/help")
        t.expect(r"/react EMOJI \[N\]")
        t.expect(r"/quit")
        t.line("/quit")
        assert t.wait_exit() == 0
    finally:
        t.kill()
    assert re.search(r"event=|\{'op'|Traceback", t.text) is None


def test_mentions_and_event_lines():
    from imsrv.cli.chat_entries import FOREVER_MS, find_mentions, group_event_line
    members = {"bob", "carol", "dan.k"}
    assert find_mentions("hi @bob, @Carol and @nobody", members) == ["bob", "carol"]
    assert find_mentions("@dan.k. and @bob @bob", members) == ["dan.k", "bob"]
    assert find_mentions("ping @bob and @all", members) == ["all"]
    assert find_mentions("mail me at x@bob.com", members) is None
    assert find_mentions("no one", members) is None

    def line(body, me="alice"):
        return group_event_line({"kind": "group_event", "group": "g1", "body": body}, {"g1": "crew"}, me,
                                lambda gid: ["bob"])

    assert line({"event": "created", "by": "bob"}) == "* you were added to group crew (with bob) by bob"
    assert line({"event": "invited", "by": "bob", "user": "carol"}) == "* carol joined crew (added by bob)"
    assert line({"event": "invited", "by": "alice", "user": "carol"}) == "* you added carol to crew"
    assert line({"event": "left", "by": "alice", "user": "alice"}) == \
        "* you are no longer in group crew (you left it on another device)"
    assert line({"event": "kicked", "by": "bob", "user": "alice"}) == "* bob removed you from crew"
    assert line({"event": "role", "by": "alice", "user": "bob", "role": "admin"}) == "* you made bob an admin of crew"
    assert line({"event": "role", "by": "alice", "user": "bob", "role": "member"}) == \
        "* you removed bob as admin of crew"
    assert line({"event": "muted", "by": "bob", "until": FOREVER_MS}) == \
        "* bob muted everyone but the owner and admins in crew until further notice"
    assert line({"event": "unmuted", "by": "bob", "user": "alice"}) == "* bob unmuted you in crew"
    assert line({"event": "updated", "by": "bob", "name": "band", "notice": "hi"}) == \
        "* bob renamed group crew to band; set the notice of band: hi"
    assert line({"event": "transferred", "by": "bob", "user": "alice"}) == "* bob handed group crew over to you"
    assert line({"event": "dissolved", "by": "bob"}) == "* bob dissolved group crew"
