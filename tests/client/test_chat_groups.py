"""Groups in `imsrv chat` (issue 9, defect 7): names everywhere, and notices when you are
added and when people join or leave, as far as protocol v1 lets the client see them."""
import re

import pytest

from .chat_pty import start_chat

pytestmark = pytest.mark.timeout(90)


def test_added_joined_left_noticed_on_group_messages(server, make_client, tmp_path, pwfile):
    alice, bob, carol = make_client(server), make_client(server), make_client(server)
    t = start_chat(server, alice.user, pwfile, tmp_path / "alice.db", "--group-poll", "0")
    try:
        t.marker("start")
        gid = bob.group_create("crew", [alice.user])
        bob.send(group=gid, body={"text": "hi crew"})
        # the notice comes before the message, and the message shows the name, not the id
        t.expect(rf"\* you were added to group crew \(with {bob.user}\)")
        t.expect(rf"\[#crew\] {bob.user}: hi crew")
        bob.group_invite(gid, [carol.user])
        carol.send(group=gid, body={"text": "carol here"})
        # a look after bob's message, or after carol's, finds her: either order
        t.expect_all(rf"\[#crew\] {carol.user}: carol here", rf"\* {carol.user} joined crew")
        carol.group_leave(gid)
        bob.send(group=gid, body={"text": "bye carol"})
        t.expect_all(rf"\[#crew\] {bob.user}: bye carol", rf"\* {carol.user} left crew")
        # opening it by name; the prompt, history and receipts use the name
        t.line("/group crew")
        t.expect(r"conversation #crew")
        t.expect(rf"  \d\d:\d\d \[#crew\] {bob.user}: bye carol")
        t.expect(rf"{alice.user}#crew> ")
        m = bob.send(group=gid, body={"text": "read me"})
        t.expect(rf"\[#crew\] {bob.user}: read me")
        bob.read(m["seq"], group=gid)
        t.expect(rf"{bob.user} has read \[#crew\]")
        t.line("/members")
        t.expect(rf"  {' '.join(sorted([alice.user, bob.user]))}")
        t.marker("end")
        assert gid not in re.sub(r"id \S+", "", t.text.replace(f"(id {gid})", ""))
        t.line("/quit")
        assert t.wait_exit() == 0
    finally:
        t.kill()


def test_changes_without_messages_are_found_by_polling(server, make_client, tmp_path, pwfile):
    alice, bob, dave = make_client(server), make_client(server), make_client(server)
    other_device = make_client(server, user=alice.user, register=False, device="laptop")
    t = start_chat(server, alice.user, pwfile, tmp_path / "alice.db", "--group-poll", "0.3")
    try:
        gid = bob.group_create("quiet", [alice.user])
        t.expect(rf"\* you were added to group quiet \(with {bob.user}\)")
        bob.group_invite(gid, [dave.user])
        t.expect(rf"\* {dave.user} joined quiet")
        dave.group_leave(gid)
        t.expect(rf"\* {dave.user} left quiet")
        other_device.group_leave(gid)            # alice leaves from her other device
        t.expect(r"\* you are no longer in group quiet")
        # her own /newgroup, /invite and /leave say what they did, and no notice repeats it
        t.line(f"/newgroup mine {bob.user}")
        t.expect(r"created group mine \(id \S+\)")
        t.line(f"/invite {dave.user}")
        t.expect(rf"\* invited {dave.user} to mine")
        # two more groups, one after the other: once the second is noticed, at least one
        # whole poll (groups, then every group's members) ran after the /invite
        bob.group_create("probe1", [alice.user])
        t.expect(r"\* you were added to group probe1")
        bob.group_create("probe2", [alice.user])
        t.expect(r"\* you were added to group probe2")
        t.line(f"/transfer {bob.user}")         # protocol v1.1: the owner may not leave
        t.expect(rf"\* you handed group mine over to {bob.user}")
        t.line("/leave")
        t.expect(r"\* you left mine")
        t.marker("c")
        assert "joined mine" not in t.text and "added to group mine" not in t.text
        assert "no longer in group mine" not in t.text
        t.line("/quit")
        assert t.wait_exit() == 0
    finally:
        t.kill()
