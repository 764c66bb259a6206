"""Every SDK call against a real server of both deployments (``server``: embedded and
distributed, shared, unique users per test).

No fixed sleeps: "nothing more arrives" is shown with a marker, a message sent after the
others; the client hands messages out in seq order and the marker has the highest seq,
so once it is delivered everything stored before it has been delivered too."""
import pytest

from imsrv.client import (Client, ClientError, Kicked, MemoryStore, ServerError, SQLiteStore)
from imsrv.client.network import Conn, api_call

from .conftest import befriend
from harness.procs import wait_until
from harness.users import PASSWORD, unique_name

pytestmark = pytest.mark.timeout(60)


def collect(client, types=None):
    """Record events of ``types`` (all) as they are handed out, in order."""
    got = []
    if types is None:
        client.on("*", got.append)
    else:
        for t in types:
            client.on(t, lambda data, t=t: got.append((t, data)))
    return got


class Messages:
    """The ordinary messages (no ``kind``) of a collect() list of messages, as it grows."""

    def __init__(self, got):
        self.got = got

    def _now(self):
        return [x for x in self.got if not x[1].get("kind")]

    def __len__(self):
        return len(self._now())

    def __getitem__(self, i):
        return self._now()[i]


def bodies(msgs):
    return [m["body"] for m in msgs]


def marker(sender, to, got, text="marker"):
    """Send one more message and wait until ``got`` (a collect() list, or a list of
    messages) holds it: every message stored before it has been delivered by then."""
    ack = sender.send(to, {"text": text})
    wait_until(lambda: any((x[1] if isinstance(x, tuple) else x)["mid"] == ack["mid"] for x in got),
             what=f"marker {text!r}")
    return ack


# ---------------------------------------------------------------------- accounts
def test_register_login_profile_logout(server, make_client):
    c = make_client(server, register=False, login=False)
    name = unique_name("acc")
    assert c.register(name, PASSWORD, name="Display") == {"user": name}
    with pytest.raises(ServerError) as e:
        c.register(name, PASSWORD)
    assert e.value.code == "conflict"
    with pytest.raises(ServerError) as e:
        c.login(name, "wrong-password")
    assert e.value.code == "unauthorized"
    reply = c.login(name.upper(), PASSWORD)          # names are case-insensitive
    assert reply["user"] == name and reply["gateway"] in server.gateway_addresses and reply["expires_in"] > 0
    assert c.online and c.user == name
    p = c.profile()
    assert (p["user"], p["name"], p["status"]) == (name, "Display", "online")
    c.set_profile(name="New name", text="hello")
    assert c.profile()["name"] == "New name" and c.profile()["text"] == "hello"
    token = c.token
    c.logout()
    assert not c.online
    reply = api_call(server.api_address, "friends", raw=True, token=token)
    assert reply["op"] == "error" and reply["code"] == "unauthorized"
    with pytest.raises(ClientError):
        c.friends()


def test_kicked_when_the_same_device_logs_in_again(server, make_client):
    a1 = make_client(server, device="phone")
    events = collect(a1, ["kicked", "state"])
    a2 = make_client(server, user=a1.user, register=False, device="phone")
    wait_until(lambda: a1.stopped, what="first session kicked")
    assert ("kicked", {"reason": "replaced"}) in events
    assert isinstance(a1.stop_error(), Kicked) and a1.stop_error().reason == "replaced"
    with pytest.raises(Kicked):
        a1.send(a1.user, {"text": "x"})
    assert a2.online
    # another device of the same user is not kicked
    a3 = make_client(server, user=a1.user, register=False, device="laptop")
    assert a2.online and a3.online


# ---------------------------------------------------------------------- contacts
def test_friend_requests_accept_reject_remove_block(server, make_client):
    a, b, c = (make_client(server) for _ in range(3))
    b_events = collect(b, ["friend_request", "friend_added", "presence"])
    a_events = collect(a, ["friend_added"])
    a.friend_request(b.user, "hi b")
    wait_until(lambda: ("friend_request", {"from": a.user, "message": "hi b"}) in b_events, what="friend_request push")
    reqs = b.friend_requests()
    assert [(r["from"], r["message"]) for r in reqs] == [(a.user, "hi b")]
    b.friend_accept(a.user)
    wait_until(lambda: ("friend_added", {"user": b.user}) in a_events, what="friend_added push")
    assert b.friend_requests() == []
    assert a.friends() == [{"user": b.user, "name": b.user, "status": "online", "remark": None}]   # v1.1: remark
    # presence: b sees a go away, then offline
    a.set_status("away", "lunch")
    wait_until(lambda: any(t == "presence" and d["user"] == a.user and d["status"] == "away" for t, d in b_events),
             what="presence away")
    assert b.presence([a.user]) == {a.user: "away"}
    assert b.friends()[0]["status"] == "away"
    # reject
    c.friend_request(a.user)
    a.friend_reject(c.user)
    assert a.friend_requests() == []
    with pytest.raises(ServerError) as e:
        c.presence([a.user])
    assert e.value.code == "forbidden"
    # remove, block, unblock
    a.friend_remove(b.user)
    assert a.friends() == []
    a.block(c.user)
    with pytest.raises(ServerError):
        c.friend_request(a.user)
    a.unblock(c.user)
    c.friend_request(a.user)
    assert [r["from"] for r in a.friend_requests()] == [c.user]


# ---------------------------------------------------------------------- messages
def test_send_receive_in_seq_order_exactly_once(server, make_client):
    a, b = make_client(server), make_client(server)
    befriend(a, b)
    got_b, got_a = collect(b, ["message"]), collect(a, ["message"])
    handles = [a.send(b.user, {"text": f"m{i}"}, wait=False) for i in range(50)]
    acks = [h.get(10) for h in handles]
    assert [ack["seq"] for ack in acks] == list(range(1, 51))       # a's own inbox seqs
    assert len({ack["mid"] for ack in acks}) == 50
    assert all(ack["cmid"] == h.cmid for ack, h in zip(acks, handles))
    wait_until(lambda: len(got_b) >= 50 and len(got_a) >= 50, what="50 messages on both sides")
    msgs = [m for _, m in got_b]
    assert [m["seq"] for m in msgs] == list(range(1, 51))
    assert bodies(msgs) == [{"text": f"m{i}"} for i in range(50)]
    assert all(m["from"] == a.user and m["to"] == b.user for m in msgs)
    # the sender's own stream holds its messages too, in order, once
    assert [m["seq"] for _, m in got_a] == list(range(1, 51))
    assert bodies(m for _, m in got_a) == bodies(msgs)
    assert a.pending_sends() == []
    wait_until(lambda: b.cursor == 50, what="b's cursor")
    # a sync finds nothing new: no duplicates (the marker comes right after the 50)
    assert b.sync() == 50
    marker(a, b.user, got_b)
    assert [m["seq"] for _, m in got_b] == list(range(1, 52))
    assert bodies(m for _, m in got_b) == [{"text": f"m{i}"} for i in range(50)] + [{"text": "marker"}]


def test_send_refused_for_good(server, make_client):
    a, stranger = make_client(server), make_client(server)
    failed = collect(a, ["send_failed"])
    with pytest.raises(ServerError) as e:
        a.send(stranger.user, {"text": "hi"})
    assert e.value.code == "forbidden"
    assert a.pending_sends() == []
    with pytest.raises(ServerError) as e:
        a.send("nobody-here-xyz", {"text": "hi"})
    assert e.value.code == "not_found"              # PROTOCOL.md: no such user
    wait_until(lambda: len(failed) == 2, what="send_failed events")
    assert failed[0][1]["to"] == stranger.user and failed[0][1]["code"] == "forbidden"
    assert failed[1][1]["to"] == "nobody-here-xyz" and failed[1][1]["code"] == "not_found"
    with pytest.raises(ValueError):
        a.send(stranger.user, {"text": "x"}, group="g")
    with pytest.raises(TypeError):
        a.send(stranger.user, {"not json": object()})


def test_messages_wait_for_a_consumer_and_sync_after_offline(server, make_client, tmp_path):
    a = make_client(server)
    store = str(tmp_path / "b.db")
    b = make_client(server, store=store)
    befriend(a, b)
    for i in range(3):
        a.send(b.user, {"text": f"early{i}"})
    # no consumer of messages yet: nothing is delivered, the cursor does not move.  The
    # sync's reply puts the 3 messages in b's queue for sure; then a typing hint (an event
    # b does consume) is delivered after them, so the dispatcher ran with the messages
    # queued and left them there.
    assert b.sync() == 3
    hints = collect(b, ["typing"])
    a.typing(b.user)
    wait_until(lambda: hints, what="typing hint at b")
    assert b.cursor == 0
    got = collect(b, ["message"])
    wait_until(lambda: len(got) == 3, what="held messages delivered")
    wait_until(lambda: b.cursor == 3, what="cursor 3")
    b.close()
    for i in range(4):
        a.send(b.user, {"text": f"offline{i}"})
    # a new Client on the same store resumes after its cursor: only the 4 new ones
    b2 = make_client(server, user=b.user, register=False, store=store)
    got2 = collect(b2, ["message"])
    wait_until(lambda: len(got2) >= 4, what="offline messages")
    marker(a, b.user, got2)                 # nothing else (no replay of 1..3) before it
    assert [m["seq"] for _, m in got2] == [4, 5, 6, 7, 8]
    assert bodies(m for _, m in got2) == [{"text": f"offline{i}"} for i in range(4)] + [{"text": "marker"}]
    assert [m["seq"] for m in b2.local_history(user=a.user, limit=10)] == [8, 7, 6, 5, 4, 3, 2, 1]


def test_events_iterator(server, make_client):
    a, b = make_client(server), make_client(server)
    befriend(a, b)
    for i in range(5):
        a.send(b.user, {"text": str(i)})
    seen = []
    for msg in b.messages(timeout=5):
        seen.append(msg["seq"])
        if len(seen) == 3:
            break
    # leaving the loop after the third counts it as delivered; the rest wait
    wait_until(lambda: b.cursor == 3, what="cursor after break")
    rest = [m["seq"] for m in b.messages(timeout=0.5)]
    assert seen == [1, 2, 3] and rest == [4, 5]
    assert b.cursor == 5
    # filtered iterator of other events
    b.typing(a.user)
    ev = next(a.events(("typing",), timeout=5))
    assert ev.type == "typing" and ev["from"] == b.user


def test_presence_typing_read_receipts(server, make_client):
    a, b = make_client(server), make_client(server)
    befriend(a, b)
    a_events = collect(a, ["typing", "receipt", "presence"])
    got_b = collect(b, ["message"])
    assert a.presence([b.user]) == {b.user: "online"}
    assert a.presence(b.user) == {b.user: "online"}
    removed = []
    a.on("typing", removed.append)
    a.off("typing", removed.append)
    assert b.typing(a.user) is True
    wait_until(lambda: ("typing", {"from": b.user}) in a_events, what="typing hint")
    assert removed == []
    ack = a.send(b.user, {"text": "read me"})
    wait_until(lambda: got_b, what="message at b")
    msg = got_b[0][1]
    b.read(msg)
    wait_until(lambda: any(t == "receipt" for t, _ in a_events), what="receipt")
    receipt = [d for t, d in a_events if t == "receipt"][0]
    assert receipt == {"from": b.user, "with": a.user, "seq": msg["seq"], "mid": ack["mid"]}
    b.read(msg["seq"], user=a.user)    # the explicit form
    b.set_status("busy", "in a meeting")
    wait_until(lambda: ("presence", {"user": b.user, "status": "busy", "text": "in a meeting"}) in a_events,
             what="busy presence")
    with pytest.raises(ServerError) as e:
        b.read(999, user=a.user)
    assert e.value.code == "not_found"


def test_history(server, make_client):
    a, b = make_client(server), make_client(server)
    befriend(a, b)
    for i in range(7):
        (a if i % 2 == 0 else b).send(b.user if i % 2 == 0 else a.user, {"text": f"h{i}"})
    h = a.history(user=b.user, limit=3)
    assert [m["body"]["text"] for m in h] == ["h6", "h5", "h4"]
    older = a.history(user=b.user, before=h[-1]["mid"], limit=10)
    assert [m["body"]["text"] for m in older] == ["h3", "h2", "h1", "h0"]
    with pytest.raises(ValueError):
        a.history()


def test_groups(server, make_client):
    a, b, c = (make_client(server) for _ in range(3))
    gid = a.group_create("team", [b.user])
    assert a.groups() == [{"group": gid, "name": "team"}]
    assert sorted(a.group_members(gid)) == sorted([a.user, b.user])
    got_all = collect(b, ["message"])
    got_b = Messages(got_all)   # protocol v1.1: without the group_event entries
    ack = a.send(group=gid, body={"text": "hi team"})
    wait_until(lambda: got_b, what="group message")
    m = got_b[0][1]
    assert m["group"] == gid and m["from"] == a.user and m["body"] == {"text": "hi team"} and m["mid"] == ack["mid"]
    receipts = collect(a, ["receipt"])
    b.read(m)
    wait_until(lambda: receipts, what="group receipt")
    assert receipts[0][1]["group"] == gid and receipts[0][1]["from"] == b.user
    a.group_invite(gid, [c.user])
    c.send(group=gid, body={"text": "thanks"})
    wait_until(lambda: len(got_b) == 2, what="second group message")
    assert got_b[1][1]["from"] == c.user
    assert [x["body"]["text"] for x in a.history(group=gid) if not x.get("kind")] == ["thanks", "hi team"]
    assert c.history(group=gid)[0]["body"]["text"] == "thanks"
    c.group_leave(gid)
    with pytest.raises(ServerError) as e:
        c.send(group=gid, body={"text": "gone"})
    assert e.value.code == "forbidden"
    with pytest.raises(ServerError):
        c.group_members(gid)


def test_line_mode_and_binary_mode(server, make_client):
    a = make_client(server, mode="line")
    b = make_client(server, mode="binary")
    befriend(a, b)
    got = collect(b, ["message"])
    got_a = collect(a, ["message"])
    a.send(b.user, {"text": "over line mode"})
    b.send(a.user, "plain string body")
    wait_until(lambda: got and len(got_a) == 2, what="messages both ways")
    assert got[0][1]["body"] == {"text": "over line mode"}
    assert [m["body"] for _, m in got_a] == [{"text": "over line mode"}, "plain string body"]
    assert a.presence([b.user]) == {b.user: "online"}
    # the raw connection speaks line mode on the wire
    conn = Conn(server.api_address, mode="line")
    try:
        assert conn.request("login", timeout=5, user=a.user, password=PASSWORD)["op"] == "ok"
    finally:
        conn.close()


def test_request_reply_matching_with_pipelined_requests(server, make_client):
    a = make_client(server)
    conn = a._link.conn
    waiters = [conn.request_async("ping") for _ in range(20)] + [conn.request_async("sync", since=0)]
    replies = [w.get(timeout=5) for w in waiters]
    assert [r["op"] for r in replies] == ["pong"] * 20 + ["sync"]
    assert len({r["id"] for r in replies}) == 21


def test_stores(tmp_path):
    for store in (MemoryStore(), SQLiteStore(tmp_path / "sub" / "s.db")):
        store.bind("alice", "d1")
        assert store.cursor() == 0
        e1 = store.outbox_add("c1", "bob", None, {"text": "1"})
        e2 = store.outbox_add(7, None, "g1", ["any", "json"])
        assert [(e.cmid, e.to, e.group, e.body) for e in store.outbox()] == [
            ("c1", "bob", None, {"text": "1"}), (7, None, "g1", ["any", "json"])]
        assert e2.fields() == {"body": ["any", "json"], "cmid": 7, "group": "g1"}
        store.outbox_remove(e1.id)
        assert [e.cmid for e in store.outbox()] == [7]
        store.delivered({"seq": 1, "mid": 5, "from": "bob", "to": "alice", "body": 1, "ts": 0})
        store.delivered({"seq": 2, "mid": 6, "from": "alice", "group": "g1", "body": 2, "ts": 0})
        store.delivered({"seq": 3, "mid": 7, "from": "alice", "to": "bob", "body": 3, "ts": 0})
        assert store.cursor() == 3
        assert [m["seq"] for m in store.messages(user="bob")] == [3, 1]
        assert [m["seq"] for m in store.messages(group="g1")] == [2]
        assert [m["seq"] for m in store.messages(before_seq=3)] == [2, 1]
        store.set_meta("k", {"v": 1})
        assert store.get_meta("k") == {"v": 1} and store.get_meta("nope", 5) == 5
        # another (user, device) in the same store is separate
        store.bind("alice", "d2")
        assert store.cursor() == 0 and store.outbox() == []
        store.close()
    s = SQLiteStore(tmp_path / "sub" / "s.db")
    s.bind("alice", "d1")
    assert s.cursor() == 3 and [e.cmid for e in s.outbox()] == [7]
    s.close()


def test_client_from_threads(server, make_client):
    import threading

    from imsrv.client.threaded import ThreadedClient

    a = make_client(server)
    name = unique_name("thr")
    result = {}

    def worker():
        tc = ThreadedClient(server.api_address, device="worker", timeout=5)
        try:
            tc.register(name, PASSWORD)
            tc.login(name, PASSWORD)
            result["online"] = tc.online
            req = next(tc.events(("friend_request",), timeout=10))
            tc.friend_accept(req["from"])
            msgs = []
            for m in tc.messages(timeout=10):
                msgs.append(m)
                if len(msgs) == 3:
                    break
            result["msgs"] = msgs
            result["ack"] = tc.send(a.user, {"text": "from a thread"})
            try:
                tc.send("nobody-at-all", {"text": "x"})
            except ServerError as exc:
                result["error"] = exc.code
        finally:
            tc.close()

    t = threading.Thread(target=worker)
    t.start()
    wait_until(lambda: "online" in result, what="thread client online")
    a.friend_request(name)
    wait_until(lambda: a.friends(), what="friendship", interval=0.05)
    assert result["online"]
    got = collect(a, ["message"])
    for i in range(3):
        a.send(name, {"text": f"t{i}"})
    wait_until(lambda: not t.is_alive(), timeout=20, what="worker thread")
    t.join()
    assert [m["body"]["text"] for m in result["msgs"]] == ["t0", "t1", "t2"]
    assert result["ack"]["seq"] == 4 and result["error"] == "not_found"   # PROTOCOL.md: no such user
    wait_until(lambda: any(m["from"] == name for _, m in got), what="message from the thread")


def test_not_logged_in_and_closed(server):
    c = Client(server.api_address)
    with pytest.raises(ClientError):
        c.friends()
    with pytest.raises(ClientError):
        c.send("bob", {"text": "x"})
    c.close()
    with pytest.raises(ClientError):
        c.login("whoever", PASSWORD)


def test_same_cmid_is_stored_once_and_acked_the_same(server, make_client):
    a, b = make_client(server), make_client(server)
    befriend(a, b)
    got = collect(b, ["message"])
    first = a.send(b.user, {"text": "once"}, cmid="fixed-cmid-1")
    again = a.send(b.user, {"text": "once"}, cmid="fixed-cmid-1")
    assert again == first
    nxt = a.send(b.user, {"text": "next"})   # the marker: stored right after the first one
    assert nxt["seq"] == first["seq"] + 1
    wait_until(lambda: any(m["mid"] == nxt["mid"] for _, m in got), what="the marker")
    assert [m["body"]["text"] for _, m in got] == ["once", "next"]
    assert got[0][1]["cmid"] == "fixed-cmid-1"
