"""The SDK's protocol v1.1 calls on real servers (both deployments through ``server``; the
resend across a server restart on an embedded ``server_factory`` server): recall, edit,
react and their inbox entries, reply_to and mentions, the local history in the current
state, conversations / read / mute (gateway and API paths), groups with roles, avatar,
remarks and search.

Contract: PROTOCOL.md "Version 1.1 additions"; the SDK's side: docs/CLIENT.md.  Every
refusal is checked by its code, and that it changed nothing (the inbox heads, the outbox,
the group's state).  No sleep stands for an event: waits are bounded polls
(``wait_until``) on what the clients received or what the server answers.
"""
import sqlite3
import time

import pytest

from imsrv.client import Client, MessageTooLarge, ServerError, SQLiteStore

from .conftest import befriend
from harness.procs import wait_until
from harness.users import PASSWORD

pytestmark = pytest.mark.timeout(90)

FAST = dict(backoff_base=0.05, backoff_max=0.5)
ENTRY_FIELDS = ("seq", "mid", "from", "to", "group", "kind", "ref", "body", "ts", "cmid", "reply_to", "mentions")
STATE_FIELDS = ("mid", "from", "to", "group", "body", "recalled", "edited", "reactions", "reply_to", "mentions")


def collect_msgs(client):
    got = []
    client.on("message", got.append)
    return got


def collect_failed(client):
    got = []
    client.on("send_failed", got.append)
    return got


def entry(msg):
    return {k: msg.get(k) for k in ENTRY_FIELDS}


def state(msgs):
    return [{k: m.get(k) for k in STATE_FIELDS} for m in msgs]


def heads(*clients):
    """The server's inbox head of each client (a sync from its cursor)."""
    return [c.sync() for c in clients]


def refused(code, fn, *args, **kwargs):
    with pytest.raises(ServerError) as e:
        fn(*args, **kwargs)
    assert e.value.code == code, e.value
    return e.value


def ordinary(msgs):
    return [m for m in msgs if not m.get("kind")]


# ---------------------------------------------------------------- recall, edit, react
def test_recall_edit_react_entries_and_the_local_history(server, make_client, tmp_path):
    alice = make_client(server, store=str(tmp_path / "alice.db"))   # SQLite store
    bob = make_client(server)                                       # memory store
    befriend(alice, bob)
    got_a, got_b = collect_msgs(alice), collect_msgs(bob)
    m1 = alice.send(bob.user, {"text": "first"})
    m2 = alice.send(bob.user, {"text": "tpyo"})
    wait_until(lambda: len(got_b) == 2, what="bob has both")
    ed = alice.edit(m2["mid"], {"text": "typo fixed"}, cmid="e1")
    assert set(ed) == {"mid", "seq", "ts", "cmid"} and ed["seq"] == m2["seq"] + 1 and ed["cmid"] == "e1"
    thumbs = bob.react(m1["mid"], "👍")
    party = bob.react(m1["mid"], "🎉")
    bob.react(m1["mid"], "🎉", on=False)
    assert thumbs["mid"] < party["mid"]
    wait_until(lambda: len(got_a) == 6 and len(got_b) == 6, what="the change entries at both ends")
    # every entry once, in seq order, the same at both ends (our own from the ack, the
    # other side's from the push)
    assert [m["seq"] for m in got_a] == [m["seq"] for m in got_b] == [1, 2, 3, 4, 5, 6]
    assert [entry(m) for m in got_a] == [entry(m) for m in got_b]
    assert [(m["from"], m.get("kind"), m.get("ref"), m["body"]) for m in got_b] == [
        (alice.user, None, None, {"text": "first"}), (alice.user, None, None, {"text": "tpyo"}),
        (alice.user, "edit", m2["mid"], {"text": "typo fixed"}),
        (bob.user, "reaction", m1["mid"], {"emoji": "👍", "on": True}),
        (bob.user, "reaction", m1["mid"], {"emoji": "🎉", "on": True}),
        (bob.user, "reaction", m1["mid"], {"emoji": "🎉", "on": False})]
    assert got_b[2]["to"] == bob.user and got_a[3]["to"] == alice.user   # the conversation, as each sees it
    # the local history: the messages in their current state, as the server's history
    wait_until(lambda: alice.cursor == 6 and bob.cursor == 6, what="both stores up to date")
    for c, peer in ((alice, bob.user), (bob, alice.user)):
        local = c.local_history(user=peer)
        assert state(local) == state(c.history(user=peer))
        assert [(m["body"], m.get("edited"), m.get("reactions")) for m in local] == [
            ({"text": "typo fixed"}, ed["ts"], None), ({"text": "first"}, None, {"👍": [bob.user]})]
    # recall: the message is gone for both, its reactions too
    rc = alice.recall(m1["mid"])
    wait_until(lambda: len(got_b) == 7 and alice.cursor == 7 and bob.cursor == 7, what="the recall entry")
    assert (got_b[6]["kind"], got_b[6]["ref"], got_b[6]["body"], got_b[6]["mid"]) == ("recall", m1["mid"], None,
                                                                                    rc["mid"])
    assert entry(got_a[6]) == entry(got_b[6])
    for c, peer in ((alice, bob.user), (bob, alice.user)):
        local = c.local_history(user=peer)
        assert state(local) == state(c.history(user=peer))
        assert local[1]["recalled"] is True and local[1]["body"] is None and "reactions" not in local[1]
        assert c.local_message(m1["mid"])["recalled"] is True
        assert c.local_message(rc["mid"]) is None      # change entries are applied, not kept as messages
    assert alice.pending_sends() == [] and bob.pending_sends() == []


def test_refused_changes_change_nothing(server, make_client):
    alice, bob = make_client(server), make_client(server)
    befriend(alice, bob)
    failed_a, failed_b = collect_failed(alice), collect_failed(bob)
    mine = alice.send(bob.user, {"text": "mine"})
    theirs = bob.send(alice.user, {"text": "theirs"})
    before = heads(alice, bob)
    refused("forbidden", bob.recall, mine["mid"])            # not the sender
    refused("forbidden", bob.edit, mine["mid"], {"text": "x"})
    refused("forbidden", alice.edit, theirs["mid"], {"text": "x"})
    refused("not_found", alice.react, 10 ** 12, "👍")        # not in my inbox
    refused("not_found", alice.recall, 10 ** 12)
    refused("bad_request", alice.react, mine["mid"], "x" * 17)   # an emoji is 1..16 characters
    assert heads(alice, bob) == before
    assert alice.pending_sends() == [] and bob.pending_sends() == []
    wait_until(lambda: len(failed_a) == 4 and len(failed_b) == 2, what="send_failed events")
    assert [(f["op"], f["mid"], f["code"]) for f in failed_b] == [("recall", mine["mid"], "forbidden"),
                                                                  ("edit", mine["mid"], "forbidden")]
    assert failed_a[1]["emoji"] == "👍" and failed_a[1]["on"] is True and "to" not in failed_a[1]
    # what the SDK refuses itself, before the outbox
    with pytest.raises(ValueError):
        alice.edit(mine["mid"], None)
    with pytest.raises(ValueError):
        alice.react(mine["mid"], "")
    with pytest.raises(MessageTooLarge):
        alice.edit(mine["mid"], {"text": "x" * 20000})
    # after a recall, nothing more can be done to the message
    alice.recall(mine["mid"])
    after = heads(alice, bob)
    refused("forbidden", alice.recall, mine["mid"])
    refused("forbidden", alice.edit, mine["mid"], {"text": "again"})
    refused("forbidden", bob.react, mine["mid"], "👍")
    assert heads(alice, bob) == after
    assert alice.pending_sends() == [] and bob.pending_sends() == []


def test_reply_to_and_mentions(server, make_client):
    alice, bob, carol, dave = (make_client(server) for _ in range(4))
    befriend(alice, dave)
    gid = alice.group_create("talk", [bob.user, carol.user])   # alice owns it
    got_c = collect_msgs(carol)
    q = alice.send(group=gid, body={"text": "who is in?"})
    a = bob.send(group=gid, body={"text": "@carol and me"}, reply_to=q["mid"], mentions=[carol.user])
    wait_until(lambda: any(m["mid"] == a["mid"] for m in got_c), what="carol has the reply")
    got = next(m for m in got_c if m["mid"] == a["mid"])
    assert (got["reply_to"], got["mentions"], got["from"]) == (q["mid"], [carol.user], bob.user)
    convs = {c.get("group"): c for c in carol.conversations()}
    assert convs[gid]["mentioned"] is True and convs[gid]["unread"] == 2
    assert {c.get("group"): c for c in alice.conversations()}[gid]["mentioned"] is False
    # the refusals change nothing
    d = alice.send(dave.user, {"text": "elsewhere"})
    before = heads(alice, bob, carol)
    refused("forbidden", bob.send, group=gid, body={"text": "@all"}, mentions=["all"])   # owner/admins only
    refused("bad_request", bob.send, group=gid, body={"text": "@dave"}, mentions=[dave.user])   # not a member
    refused("not_found", bob.send, group=gid, body={"text": "re"}, reply_to=d["mid"])   # another conversation
    with pytest.raises(ValueError):
        alice.send(dave.user, {"text": "hi"}, mentions=[dave.user])                 # group sends only
    assert heads(alice, bob, carol) == before
    # @all by the owner mentions everyone; a 1:1 reply
    alice.send(group=gid, body={"text": "@all stand-up"}, mentions=["all"])
    assert {c.get("group"): c for c in bob.conversations()}[gid]["mentioned"] is True
    r = dave.send(alice.user, {"text": "sure"}, reply_to=d["mid"])
    assert alice.history(user=dave.user)[0]["reply_to"] == d["mid"] and r["mid"] > d["mid"]


# ---------------------------------------------------------------- conversations, read, mute
def test_conversations_read_and_mute_on_the_gateway_and_the_api(server, make_client, monkeypatch):
    alice, bob, carol = (make_client(server) for _ in range(3))
    befriend(alice, bob)
    got_a = collect_msgs(alice)
    acks = [bob.send(alice.user, {"text": f"m{i}"}) for i in range(3)]
    gid = carol.group_create("later", [alice.user])
    wait_until(lambda: len(got_a) == 4, what="alice has it all")
    convs = alice.conversations()
    assert [c.get("group") or c.get("with") for c in convs] == [gid, bob.user]   # most recent first
    with_bob = convs[1]
    assert (with_bob["unread"], with_bob["read_seq"], with_bob["muted_until"], with_bob["mentioned"]) == (3, 0, 0,
                                                                                                        False)
    assert with_bob["last"]["mid"] == acks[2]["mid"] and with_bob["last"]["body"] == {"text": "m2"}
    assert convs[0]["unread"] == 0 and convs[0]["last"]["kind"] == "group_event"   # events are not unread
    # paging
    first = alice.conversations(limit=1)
    assert first == convs[:1] and alice.conversations(before=first[0]["ts"]) == convs[1:]
    # read on the gateway: durable, the other side gets a receipt
    receipts = []
    bob.on("receipt", receipts.append)
    alice.read(got_a[1])
    wait_until(lambda: receipts, what="bob's receipt")
    assert receipts[0]["mid"] == acks[1]["mid"] and receipts[0]["from"] == alice.user
    assert alice.conversations()[1]["unread"] == 1
    alice.mute(user=bob.user)
    until = int(time.time() * 1000) + 3600_000
    alice.mute(group=gid, until=until)
    # the same through the API (a client that is not online)
    monkeypatch.setattr(Client, "online", property(lambda self: False))
    via_api = alice.conversations()
    assert [(c["unread"], c["muted_until"]) for c in via_api] == [(0, until), (1, -1)]
    alice.mark_read(got_a[2]["seq"], user=bob.user)
    alice.unmute(user=bob.user)
    assert [(c["unread"], c["muted_until"]) for c in alice.conversations()] == [(0, until), (0, 0)]
    monkeypatch.undo()
    assert [(c["unread"], c["read_seq"]) for c in alice.conversations()] == [(0, 0), (0, got_a[2]["seq"])]
    # refusals, on both paths: nothing changes
    before = alice.conversations()
    for online in (True, False):
        if not online:
            monkeypatch.setattr(Client, "online", property(lambda self: False))
        refused("not_found", alice.mute, user="nobody_" + alice.user[:20])
        refused("not_found", alice.mute, group="gnosuchgroup")
        outsiders = bob.group_create("outside", [carol.user])
        refused("forbidden", alice.mute, group=outsiders)
        refused("bad_request", alice.mute, user=bob.user, until=-2)
        refused("bad_request", alice.conversations, limit=201)
        refused("bad_request", alice.read, 0, user=bob.user)
        monkeypatch.undo()
    with pytest.raises(ValueError):
        alice.mute(user=bob.user, group=gid)
    assert alice.conversations() == before


# ---------------------------------------------------------------- groups with roles
def test_group_admin_calls(server, make_client):
    owner, admin, member, other = (make_client(server) for _ in range(4))
    gid = owner.group_create("crew", [admin.user, member.user])
    got_m = collect_msgs(member)
    info = owner.group_info(gid)
    assert info == {"group": gid, "name": "crew", "notice": "", "owner": owner.user, "size": 3,
                    "max_members": 500, "muted_all": 0, "dissolved": 0}
    owner.group_update(gid, name="Crew", notice="be nice")
    owner.group_set_role(gid, admin.user, "admin")
    roles = member.group_roles(gid)
    assert roles["roles"] == {owner.user: "owner", admin.user: "admin", member.user: "member"}
    assert (member.group_info(gid)["name"], member.group_info(gid)["notice"]) == ("Crew", "be nice")
    # refusals change nothing
    state_before = (owner.group_info(gid), owner.group_roles(gid))
    refused("forbidden", admin.group_set_role, gid, member.user, "admin")     # the owner only
    refused("forbidden", member.group_update, gid, name="mine")
    refused("forbidden", admin.group_transfer, gid, member.user)
    refused("forbidden", admin.group_dissolve, gid)
    refused("forbidden", other.group_info, gid)                               # not a member
    refused("not_found", owner.group_info, "gnosuchgroup")
    refused("not_found", owner.group_kick, gid, other.user)                   # not a member
    refused("forbidden", owner.group_leave, gid)                              # the owner cannot leave
    refused("bad_request", owner.group_update, gid, notice="n" * 1025)
    with pytest.raises(ValueError):
        owner.group_update(gid)
    assert (owner.group_info(gid), owner.group_roles(gid)) == state_before
    # mute a member, then everyone
    future = int(time.time() * 1000) + 600_000
    admin.group_mute(gid, future, user=member.user)
    assert owner.group_roles(gid)["muted"] == {member.user: future}
    refused("forbidden", member.send, group=gid, body={"text": "muted?"})
    admin.group_unmute(gid, user=member.user)
    member.send(group=gid, body={"text": "free again"})
    owner.group_mute(gid, future)
    assert owner.group_info(gid)["muted_all"] == future
    refused("forbidden", member.send, group=gid, body={"text": "quiet?"})
    admin.send(group=gid, body={"text": "admins may"})
    owner.group_unmute(gid)
    # kick, transfer, dissolve
    admin.group_kick(gid, member.user)
    wait_until(lambda: any(m.get("kind") == "group_event" and m["body"]["event"] == "kicked" for m in got_m),
               what="the kicked member hears of it")
    owner.group_transfer(gid, admin.user)
    assert admin.group_roles(gid)["roles"] == {owner.user: "admin", admin.user: "owner"}
    owner.group_leave(gid)
    admin.group_dissolve(gid)
    assert admin.group_info(gid)["dissolved"] != 0
    refused("forbidden", admin.send, group=gid, body={"text": "anyone?"})
    events = [(m["body"]["event"], m["body"].get("user")) for m in got_m if m.get("kind") == "group_event"]
    assert events == [("created", None), ("updated", None), ("role", admin.user), ("muted", member.user),
                      ("unmuted", member.user), ("muted", None), ("unmuted", None), ("kicked", member.user)]


# ---------------------------------------------------------------- avatar, remark, search
def test_avatar_remark_and_search(server, make_client):
    alice, bob, carol = (make_client(server) for _ in range(3))
    befriend(alice, bob)
    alice.set_profile(avatar="https://example.com/a.png")
    assert bob.profile(alice.user)["avatar"] == "https://example.com/a.png"
    refused("bad_request", alice.set_profile, avatar="ftp://example.com/a.png")
    assert alice.profile()["avatar"] == "https://example.com/a.png"
    alice.set_remark(bob.user, "Bob from work")
    assert alice.friends()[0]["remark"] == "Bob from work"
    refused("forbidden", alice.set_remark, carol.user, "stranger")   # not a friend
    refused("bad_request", alice.set_remark, bob.user, "r" * 65)
    alice.set_remark(bob.user, "")
    assert alice.friends()[0]["remark"] is None
    gid = alice.group_create("search", [bob.user])
    one = alice.send(bob.user, {"text": "The quarterly Report is ready"})
    two = bob.send(group=gid, body={"text": "report of the group"})
    bob.send(alice.user, "a plain string about nothing")
    found = wait_until(lambda: len(bob.search("report")) == 2 and bob.search("report"), what="indexed")
    assert [m["mid"] for m in found] == [two["mid"], one["mid"]]   # newest first
    assert [m["mid"] for m in bob.search("REPORT quarterly")] == [one["mid"]]   # every word
    assert [m["mid"] for m in bob.search("report", user=alice.user)] == [one["mid"]]
    assert [m["mid"] for m in bob.search("report", group=gid)] == [two["mid"]]
    assert [m["mid"] for m in bob.search("report", before=two["mid"])] == [one["mid"]]
    assert [m["mid"] for m in bob.search("report", limit=1)] == [two["mid"]]
    assert carol.search("report") == []                            # not in her inbox
    refused("bad_request", bob.search, "")
    refused("bad_request", bob.search, "report", limit=101)
    alice.recall(one["mid"])
    wait_until(lambda: [m["mid"] for m in bob.search("report")] == [two["mid"]], what="recalled: not found")


# ---------------------------------------------------------------- the outbox covers them
def test_a_queued_recall_is_sent_once_after_a_restart_of_the_client(server, make_client, tmp_path):
    """A recall left in the outbox by an earlier run goes out at the next login, with its
    cmid: sent twice (two runs), the server stores it once and acks it the same."""
    alice, bob = make_client(server), make_client(server)
    befriend(alice, bob)
    sent = alice.send(bob.user, {"text": "take me back"})
    acks = []
    for run in range(2):
        path = str(tmp_path / f"alice{run}.db")   # a fresh store each time: it syncs the whole inbox
        store = SQLiteStore(path)
        store.bind(alice.user, "laptop")
        store.outbox_add("recall-1", bob.user, None, None, op="recall", extra={"mid": sent["mid"]})
        store.close()
        c = Client(server.api_address, device="laptop", store=path, timeout=5.0)
        try:
            got = collect_msgs(c)
            c.login(alice.user, PASSWORD)
            wait_until(lambda: c.pending_sends() == [] and any(m.get("kind") == "recall" for m in got),
                       what="the recall acked and delivered")
            acks.append(next(m for m in got if m.get("kind") == "recall"))
            wait_until(lambda: c.local_history(user=bob.user)[0].get("recalled"), what="the local copy recalled")
        finally:
            c.close()
    assert acks[0]["mid"] == acks[1]["mid"] and acks[0]["cmid"] == "recall-1"
    assert [m.get("kind") for m in bob.history(user=alice.user)] == [None]   # one message, recalled
    assert bob.history(user=alice.user)[0]["recalled"] is True
    assert heads(bob) == [2]                                                  # the message and one recall


def test_a_recall_made_offline_is_sent_after_the_reconnect(server_factory, make_client):
    srv = server_factory(name="recall-offline")   # embedded only: the one process is killed and restarted
    alice = make_client(srv, **FAST)
    bob = make_client(srv, **FAST)
    befriend(alice, bob)
    got_a, got_b = collect_msgs(alice), collect_msgs(bob)   # a consumer: the store keeps what it took
    sent = alice.send(bob.user, {"text": "oops"})
    wait_until(lambda: alice.local_message(sent["mid"]) is not None, what="alice keeps her message")
    srv.kill()
    wait_until(lambda: not alice.online, what="alice noticed")
    handle = alice.recall(sent["mid"], wait=False)
    assert [e.op for e in alice.pending_sends()] == ["recall"]
    srv.start()
    ack = handle.get(30)
    wait_until(lambda: any(m["mid"] == ack["mid"] for m in got_b), timeout=20, what="bob has the recall")
    assert [(m.get("kind"), m.get("ref")) for m in got_b] == [(None, None), ("recall", sent["mid"])]
    wait_until(lambda: alice.local_message(sent["mid"]).get("recalled"), what="alice's copy recalled")
    assert alice.pending_sends() == []


# ---------------------------------------------------------------- retention
RETENTION_S = 2.0


def test_entries_the_server_no_longer_keeps_are_stepped_over(config_server, make_client):
    """With retention, a device that was away syncs from its cursor and the server starts
    at ``oldest``: the SDK steps over the purged seqs instead of waiting for them."""
    srv = config_server({"retention": {"days": RETENTION_S / 86400, "purge_interval": 0.1, "purge_batch": 10}},
                        name="retention")
    alice, bob = make_client(srv), make_client(srv)
    befriend(alice, bob)
    for i in range(3):
        alice.send(bob.user, {"text": f"old {i}"})
    wait_until(lambda: not alice.history(user=bob.user), timeout=30, what="the old messages purged")
    fresh = alice.send(bob.user, {"text": "fresh"})
    late = make_client(srv, user=bob.user, register=False, device="late")   # a new device: cursor 0
    got = collect_msgs(late)
    wait_until(lambda: got, what="the fresh message")
    assert [(m["mid"], m["seq"]) for m in got] == [(fresh["mid"], 4)]


# ---------------------------------------------------------------- the local store
def test_a_store_file_of_the_earlier_sdk_gets_the_new_columns(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE account (user TEXT NOT NULL, device TEXT NOT NULL, cursor INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (user, device));
        CREATE TABLE message (user TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,
            kind TEXT NOT NULL, conv TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (user, device, seq));
        CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, user TEXT NOT NULL, device TEXT NOT NULL,
            cmid TEXT NOT NULL, to_user TEXT, grp TEXT, body TEXT NOT NULL, created INTEGER NOT NULL);
        CREATE TABLE meta (user TEXT NOT NULL, device TEXT NOT NULL, key TEXT NOT NULL, value TEXT,
            PRIMARY KEY (user, device, key));
        INSERT INTO account VALUES ('alice', 'd', 1);
        INSERT INTO message VALUES ('alice', 'd', 1, 'user', 'bob',
            '{"seq": 1, "mid": 9, "from": "bob", "to": "alice", "body": {"text": "old"}, "ts": 5}');
        INSERT INTO outbox (user, device, cmid, to_user, grp, body, created)
            VALUES ('alice', 'd', '"c1"', 'bob', NULL, '{"text": "queued"}', 7);
    """)
    db.commit()
    db.close()
    store = SQLiteStore(path)
    store.bind("alice", "d")
    assert [(e.op, e.fields()) for e in store.outbox()] == [("send", {"body": {"text": "queued"}, "cmid": "c1",
                                                                      "to": "bob"})]
    assert store.message(9)["body"] == {"text": "old"}
    store.delivered({"seq": 2, "mid": 10, "from": "bob", "to": "alice", "kind": "edit", "ref": 9,
                     "body": {"text": "new"}, "ts": 6})
    assert [(m["mid"], m["body"], m["edited"]) for m in store.messages(user="bob")] == [(9, {"text": "new"}, 6)]
    assert store.cursor() == 2
    store.close()


def test_apply_change_rules():
    from imsrv.client.entries import apply_change
    orig = {"seq": 1, "mid": 5, "from": "alice", "to": "bob", "body": {"text": "hi"}, "ts": 1}

    def change(kind, body, who="bob", ts=2):
        return {"seq": ts, "mid": 5 + ts, "from": who, "kind": kind, "ref": 5, "body": body, "ts": ts}

    m = apply_change(orig, change("reaction", {"emoji": "👍", "on": True}))
    m = apply_change(m, change("reaction", {"emoji": "👍", "on": True}))           # twice: once
    m = apply_change(m, change("reaction", {"emoji": "👍", "on": True}, who="carol"))
    m = apply_change(m, change("reaction", {"emoji": "🎉", "on": False}))          # never on: nothing
    assert m["reactions"] == {"👍": ["bob", "carol"]} and "reactions" not in orig
    m = apply_change(m, change("edit", {"text": "hello"}, who="alice", ts=3))
    assert (m["body"], m["edited"]) == ({"text": "hello"}, 3)
    m = apply_change(m, change("reaction", {"emoji": "👍", "on": False}))
    m = apply_change(m, change("reaction", {"emoji": "👍", "on": False}, who="carol"))
    assert "reactions" not in m
    m = apply_change(m, change("recall", None, who="alice", ts=4))
    assert (m["body"], m["recalled"], "edited" in m) == (None, True, False)
    assert apply_change(m, change("edit", {"text": "back?"}, who="alice", ts=5)) == m   # recalled stays so
