"""The web chat page in real Chromium against a real embedded server (conftest.py): two
browser users register, befriend, chat (unread counts, typing, read receipts, reactions,
edits, recalls), reload and find their history; a message sent while one of them is away
(page closed, or network cut) arrives when they come back; a message written offline is
resent on reconnect with its cmid and stored once; history paging; group chat.
Screenshots go to the artifacts directory; the last test renders a fuller chat for the
README (docs/chat-page.png, see conftest.copy_to_docs).

Every wait is for a DOM condition (page.py); nothing sleeps.
"""
from harness.users import PASSWORD, befriend, login, make_group, register, unique_name, User

from .conftest import copy_to_docs
from .page import ChatPage


def user_via_api(server, name, display=None):
    register(server, name, PASSWORD, display)
    rep = login(server, name, PASSWORD)
    return User(server, name, PASSWORD, rep["token"], rep)


def test_two_browsers_chat(web_server, browser, artifacts):
    a = ChatPage(browser("alice"), web_server)
    b = ChatPage(browser("bob"), web_server)
    ua, ub = unique_name("ann"), unique_name("ben")
    a.register(ua, "Ann")
    b.register(ub, "Ben")

    # a friend request, pushed to bob's page; accepted there; both see each other online
    a.request_friend(ub, "hi, it's Ann")
    b.accept_request(ua)
    a.wait(lambda: a.friend_status(ub) == "online", f"{ub} online in Ann's friends")
    b.tab("friends")
    b.wait(lambda: b.friend_status(ua) == "online", f"{ua} online in Ben's friends")

    # three messages: bob's conversation list counts them unread
    a.open_friend(ub)
    for text in ("hey Ben!", "are we still on for tonight?", "dinner at 7?"):
        a.send(text)
    a.wait(lambda: a.status_of("dinner at 7?") == "sent", "the ack of the last message")
    b.tab("chats")
    b.wait(lambda: b.unread("u:" + ua) == 3, "3 unread from Ann")
    assert b.one("#badge-chats").text == "3"

    # bob opens the chat: read; ann sees the receipt on her messages
    b.open_chat("u:" + ua)
    b.wait_text("dinner at 7?")
    assert b.texts() == ["hey Ben!", "are we still on for tonight?", "dinner at 7?"]
    b.wait(lambda: b.unread("u:" + ua) == 0, "the unread badge to go")
    a.wait(lambda: a.status_of("dinner at 7?") == "read", "the read receipt on Ann's messages")
    assert a.status_of("hey Ben!") == "read"

    # typing, then the answer
    b.type("yes!")
    a.wait(lambda: a.header_sub() == "typing…", "Ben typing in Ann's chat header")
    b.send(" see you at 7")
    a.wait_text("yes! see you at 7")
    a.shot(artifacts, "chat-1-messages")

    # reactions, an edit and a recall, seen on the other side
    a.react("yes! see you at 7", "❤️")
    b.wait(lambda: b.reactions("yes! see you at 7") == {"❤️": 1}, "Ann's reaction")
    a.edit("dinner at 7?", "dinner at 8?")
    b.wait_text("dinner at 8?", "the edited message")
    assert "dinner at 7?" not in b.texts()
    assert b.bubble("dinner at 8?").find_element("css selector", ".edited").text == "edited"
    a.send("the code is 4471")
    b.wait_text("the code is 4471")
    a.recall("the code is 4471")
    b.wait_text("This message was recalled")
    a.wait_text("You recalled this message")
    assert "the code is 4471" not in b.texts()
    b.shot(artifacts, "chat-2-entries")

    # bob reloads: still signed in, the history is there in its current state
    b.d.refresh()
    b.wait_online()
    b.open_chat("u:" + ua)
    b.wait(lambda: len(b.texts()) == 5, "the history after the reload")
    assert b.texts() == ["hey Ben!", "are we still on for tonight?", "dinner at 8?", "yes! see you at 7",
                         "This message was recalled"]
    assert b.reactions("yes! see you at 7") == {"❤️": 1}
    b.shot(artifacts, "chat-3-reloaded")
    assert a.console_errors() == [] and b.console_errors() == []


def test_away_and_offline(web_server, browser, artifacts):
    """A message sent while bob's page is closed arrives when he opens it again; while
    alice's network is cut, what she writes waits in her outbox (localStorage) and is sent,
    with its cmid, when she is back (stored once), and what bob wrote meanwhile reaches her
    by the sync from her cursor."""
    ann = user_via_api(web_server, unique_name("cat"))
    ben = user_via_api(web_server, unique_name("dan"))
    befriend(ann, ben)
    a = ChatPage(browser("alice"), web_server).login(ann.name)
    b = ChatPage(browser("bob"), web_server).login(ben.name)
    a.open_friend(ben.name)
    a.send("first")
    b.open_chat("u:" + ann.name)
    b.wait_text("first")

    # bob's page is closed (his session ends); alice writes; bob comes back
    b.d.get("about:blank")
    a.wait(lambda: a.header_sub() == "offline", "Ben offline in Ann's chat header")
    a.send("are you there?")
    a.wait(lambda: a.status_of("are you there?") == "sent", "the ack of 'are you there?'")
    b.open()
    b.wait_online()
    b.tab("chats")
    b.wait(lambda: b.unread("u:" + ann.name) == 1, "1 unread after coming back")
    b.open_chat("u:" + ann.name)
    b.wait_text("are you there?")

    # alice's network goes: her page closes its WebSocket (bob sees her go offline); what
    # she writes waits in her outbox with its cmid
    a.set_offline(True)
    a.wait(lambda: a.conn() == "offline", "Ann's page to notice it is offline")
    b.wait(lambda: b.header_sub() == "offline", "Ann offline in Ben's chat header")
    a.send("written offline")
    a.wait(lambda: a.status_of("written offline") == "pending", "the message pending")
    outbox = a.storage("outbox")
    assert [i["fields"]["body"] for i in outbox] == [{"text": "written offline"}], outbox
    cmid = outbox[0]["cmid"]
    b.send("did you get my message?")   # pushed to nobody: alice's page syncs it from her cursor
    b.wait(lambda: b.status_of("did you get my message?") == "sent", "the ack of Ben's message")
    a.shot(artifacts, "offline-1-pending")

    a.set_offline(False)
    a.wait_online()
    a.wait(lambda: a.status_of("written offline") in ("sent", "read"), "the resent message acked")
    a.wait_text("did you get my message?", "Ben's message, synced after the reconnect")
    b.wait_text("written offline")
    assert a.storage("outbox") == []
    # the server stored it once, with the cmid the page gave it while offline
    msgs = [m for m in ben.call("history", **{"with": ann.name})["msgs"] if m["body"] == {"text": "written offline"}]
    assert len(msgs) == 1 and msgs[0]["cmid"] == cmid, msgs
    # bob's cursor (localStorage) follows his inbox head
    with ben.connect(device="probe") as g:
        head = g.head
    b.wait(lambda: b.storage("cursor") == head, "Ben's cursor at his inbox head")
    assert a.console_errors() == [] and b.console_errors() == []


def test_group_chat(web_server, browser, artifacts):
    ann = user_via_api(web_server, unique_name("eve"))
    ben = user_via_api(web_server, unique_name("fay"))
    befriend(ann, ben)
    a = ChatPage(browser("alice"), web_server).login(ann.name)
    b = ChatPage(browser("bob"), web_server).login(ben.name)

    a.one("#new-group").click()
    a.wait(lambda: a.css("#group-name"), "the new group dialog")
    a.one("#group-name").send_keys("weekend")
    a.one(f'.pick-list input[data-user="{ben.name}"]').click()
    a.one("#group-create").click()
    a.wait(lambda: a.one("#chat-name").text == "weekend", "the new group's chat")
    a.wait(lambda: "2 members" in a.header_sub(), "the member count")
    a.send("who's in for saturday?")

    gkey = b.wait(lambda: next((li.get_attribute("data-key") for li in b.css("#conv-list li.conv")
                                if li.get_attribute("data-key").startswith("g:")), None), "the group in Ben's list")
    b.wait(lambda: b.unread(gkey) == 1, "1 unread in the group")
    b.open_chat(gkey)
    b.wait_text("who's in for saturday?")
    sender = b.bubble("who's in for saturday?").find_element("css selector", ".sender").text
    assert sender == ann.name
    assert any("created the group" in s.text for s in b.css("#msg-list .service"))
    b.send("me!")
    a.wait_text("me!")
    a.wait(lambda: a.status_of("who's in for saturday?") == "read", "read by Ben in the group")
    assert a.bubble("who's in for saturday?").find_element("css selector", ".status-label").text == "read by 1"
    a.shot(artifacts, "group-1")
    assert a.console_errors() == [] and b.console_errors() == []


def test_history_paging(web_server, browser):
    """45 messages: the chat opens on the latest 40 (history), the older ones come with
    "Load older messages" (history with before), then the beginning is marked."""
    ann = user_via_api(web_server, unique_name("gus"))
    ben = user_via_api(web_server, unique_name("hal"))
    befriend(ann, ben)
    with ben.connect(device="script") as g:
        for i in range(1, 46):
            g.send_msg(f"message {i}", to=ann.name, cmid=f"p{i}")
    a = ChatPage(browser("alice"), web_server).login(ann.name)
    a.tab("chats")
    a.wait(lambda: a.unread("u:" + ben.name) == 45, "45 unread")
    a.open_chat("u:" + ben.name)
    a.wait(lambda: len(a.texts()) == 40, "the first history page")
    assert a.texts() == [f"message {i}" for i in range(6, 46)]
    assert a.one("#load-older").text == "Load older messages"
    a.one("#load-older").click()
    a.wait(lambda: len(a.texts()) == 45, "the older page")
    assert a.texts() == [f"message {i}" for i in range(1, 46)]
    a.wait(lambda: a.one("#load-older").text == "Beginning of the conversation", "the beginning")
    assert a.unread("u:" + ben.name) == 0
    assert a.console_errors() == []


def test_page_for_the_readme(web_server, browser, artifacts):
    """A chat with some life in it, for docs/chat-page.png: friends with presence, a group,
    unread counts, a conversation with a receipt, an edit, a reaction and a friend typing."""
    names = {"alice": "Alice Martin", "bob": "Bob Chen", "carol": "Carol Diaz", "dave": "Dave Okafor"}
    users = {n: user_via_api(web_server, n, display) for n, display in names.items()}
    alice, bob, carol, dave = (users[n] for n in names)
    for other in (bob, carol, dave):
        befriend(alice, other)
    group = make_group(alice, [bob, carol, dave], name="Weekend trip")
    with bob.connect(device="phone") as bg, carol.connect(device="phone") as cg, dave.connect(device="phone") as dg, \
            alice.connect(device="laptop") as ag:
        bg.send_msg({"text": "Did you get home ok yesterday?"}, to="alice", cmid="b0")
        ag.send_msg({"text": "Yes, thanks! The last train was packed though"}, to="bob", cmid="a0")
        bg.send_msg({"text": "Ha, as always. Thanks again for the lovely evening"}, to="alice", cmid="b01")
        cg.send_msg({"text": "Booked the cabin for Saturday!"}, group=group, cmid="c1")
        dg.send_msg({"text": "I'll bring the board games"}, group=group, cmid="d1")
        dg.send_msg({"text": "See you at the station?"}, to="alice", cmid="d2")
        first = bg.send_msg({"text": "Hey Alice, are we still on for tonight?"}, to="alice", cmid="b1")
        page = ChatPage(browser("readme"), web_server).login("alice")
        page.open_chat("u:bob")
        page.send("Yes! Dinner at 7?")
        mine = bg.wait_push("msg", body={"text": "Yes! Dinner at 7?"})
        bg.call("edit", "ack", mid=first["mid"], body={"text": "Hey Alice! Are we still on for tonight?"}, cmid="b2")
        bg.call("read", seq=mine["seq"], **{"with": "alice"})
        page.wait(lambda: page.status_of("Yes! Dinner at 7?") == "read", "Bob's receipt")
        bg.send_msg({"text": "Perfect, I'll book a table at Luigi's"}, to="alice", cmid="b3")
        page.wait_text("Perfect, I'll book a table at Luigi's")
        page.react("Perfect, I'll book a table at Luigi's", "❤️")
        bg.wait_push("msg", kind="reaction")
        bg.send_frame({"op": "typing", "to": "alice"})
        page.wait(lambda: page.header_sub() == "typing…", "Bob typing")
        page.one("#input").click()   # the mouse leaves the message: no toolbar in the picture
        page.wait(lambda: page.unread("g:" + group) == 2 and page.unread("u:dave") == 1, "the unread badges")
        shot = page.shot(artifacts, "readme")
    copy_to_docs(shot)
