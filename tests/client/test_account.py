"""Account safety in the SDK and in `imsrv chat`: change_password, delete_account
(protocol v1.1), against the real server."""
import pytest

from imsrv.client import Client, ClientClosed, ServerError
from imsrv.client.network import api_call

from .chat_pty import start_chat
from .conftest import befriend
from harness.procs import wait_until
from harness.users import PASSWORD, unique_name

pytestmark = pytest.mark.timeout(90)

NEW = "a-new-password-2"


def kicks(client):
    got = []
    client.on("kicked", got.append)
    return got



def answer_passwd(t, current, new, again):
    """/passwd in the chat on ``t``, answering its three prompts."""
    t.line("/passwd")
    for prompt, answer in (("current password: ", current), ("new password: ", new),
                           ("new password again: ", again)):
        t.expect(prompt)
        t.line(answer)

def test_change_password_keeps_this_client_and_logs_out_the_others(server, make_client):
    phone = make_client(server, device="phone")
    laptop = make_client(server, user=phone.user, register=False, device="laptop")
    friend = make_client(server)
    befriend(phone, friend)
    laptop_kicks = kicks(laptop)
    with pytest.raises(ServerError) as e:
        phone.change_password("not-the-password", NEW)
    assert e.value.code == "unauthorized"
    assert laptop.online and not laptop_kicks        # nothing changed
    with pytest.raises(ServerError) as e:
        phone.change_password(PASSWORD, "short")
    assert e.value.code == "bad_request"
    phone.change_password(PASSWORD, NEW)
    wait_until(lambda: laptop_kicks, what="the laptop kicked")
    assert laptop_kicks[0]["reason"] == "logout"
    wait_until(lambda: laptop.stopped, what="the laptop stopped for good")
    # this client keeps its token and its connection
    assert phone.online and phone.friends()[0]["user"] == friend.user
    assert phone.send(friend.user, {"text": "still here"})["seq"] > 0
    with pytest.raises(ServerError) as e:
        api_call(server.api_address, "login", user=phone.user, password=PASSWORD)
    assert e.value.code == "unauthorized"
    assert api_call(server.api_address, "login", user=phone.user, password=NEW)["op"] == "ok"
    # and it logs in again with the new password when it has to (a fresh login: kept password)
    phone._relogin()
    assert phone.token and phone.profile()["user"] == phone.user


def test_threaded_client_account_calls(server, make_client):
    from imsrv.client.threaded import ThreadedClient
    name = unique_name("thr")
    make_client(server, user=name, login=False)
    tc = ThreadedClient(server.api_address, device="worker", timeout=5)
    try:
        tc.login(name, PASSWORD)
        tc.change_password(PASSWORD, NEW)
        assert tc.profile()["user"] == name
        with pytest.raises(ServerError) as e:
            tc.delete_account(PASSWORD)          # the old one no longer works
        assert e.value.code == "unauthorized"
        tc.delete_account(NEW)
        assert tc.stopped
    finally:
        tc.close()
    with pytest.raises(ServerError):
        api_call(server.api_address, "login", user=name, password=NEW)


def test_delete_account(server, make_client):
    a, b = make_client(server), make_client(server)
    other = make_client(server, user=a.user, register=False, device="tablet")
    befriend(a, b)
    gid = b.group_create("club", [a.user])
    other_kicks = kicks(other)
    with pytest.raises(ServerError) as e:
        a.delete_account("wrong-password-1")
    assert e.value.code == "unauthorized" and a.online
    a.delete_account(PASSWORD)
    assert a.stopped and not a.online
    with pytest.raises(ClientClosed):
        a.friends()
    wait_until(lambda: other_kicks, what="the other device kicked")
    assert other_kicks[0]["reason"] == "logout"
    assert b.friends() == [] and a.user not in b.group_members(gid)
    with pytest.raises(ServerError) as e:
        Client(server.api_address).register(a.user, PASSWORD)
    assert e.value.code == "conflict"                  # the name stays reserved


def test_chat_passwd_and_delete_account(server, make_client, tmp_path, pwfile):
    alice = make_client(server, device="phone")
    alice_kicks = kicks(alice)
    t = start_chat(server, alice.user, pwfile, tmp_path / "alice.db")
    try:
        t.expect(rf"online as {alice.user}")
        # /passwd: nothing typed is shown; two different new ones change nothing
        answer_passwd(t, PASSWORD, NEW, "something-else-9")
        t.expect(r"! the two new passwords differ; the password is unchanged")
        answer_passwd(t, "wrong-password-1", NEW, NEW)
        t.expect(r"! wrong password")
        answer_passwd(t, PASSWORD, NEW, NEW)
        t.expect(r"\* password changed; your other devices were logged out, this one stays logged in")
        assert PASSWORD not in t.text and NEW not in t.text and "something-else" not in t.text
        wait_until(lambda: alice_kicks, what="the phone kicked")
        assert alice_kicks[0]["reason"] == "logout"
        t.line("/who")
        t.expect(rf"  {alice.user} \(")                 # still working with its token
        # /delete-account: the name must be typed, then the password
        t.line("/delete-account")
        t.expect(rf"type {alice.user} to confirm: ")
        t.line("nope")
        t.expect(r"\* cancelled; nothing was deleted")
        t.line("/delete-account")
        t.expect(rf"type {alice.user} to confirm: ")
        t.line(alice.user)
        t.expect(r"password: ")
        t.line(NEW)
        t.expect(rf"\* the account {alice.user} is deleted; goodbye")
        assert t.wait_exit() == 0
        assert "this session was logged out" not in t.text   # its own deletion is not a surprise
    finally:
        t.kill()
    with pytest.raises(ServerError):
        api_call(server.api_address, "login", user=alice.user, password=NEW)


def test_chat_shows_a_logout_from_elsewhere_in_words(server, make_client, tmp_path, pwfile):
    alice = make_client(server, device="phone")
    t = start_chat(server, alice.user, pwfile, tmp_path / "alice.db")
    try:
        t.expect(rf"online as {alice.user}")
        alice.change_password(PASSWORD, NEW)
        t.expect(r"! this session was logged out \(your password was changed, or you logged out on "
                 r"another device\); log in again")
        assert t.wait_exit() == 1
    finally:
        t.kill()
