"""Protocol v1.1 "Conversations, unread counts, muting": `conversations`, `mark_read` and
`mute`, as API ops (with a token) and as gateway ops (without), on both deployments.

Contract: PROTOCOL.md v1.1 (unread = ordinary messages from others above the read
position; mentioned; the read position durable and shared by the user's devices, each of
the others getting the `receipt`; muting changes no delivery).  Decisions of this server
(imsrv/core/conversations.py): a `mark_read` / `read` at or below the position is ok and
changes nothing (no receipt); a seq not in the inbox is not_found, one of another
conversation bad_request; the list pages by activity `ts` without splitting a run of
equal ts."""
import threading

import pytest

from harness.users import befriend, make_group, new_user, unique_name

pytestmark = pytest.mark.timeout(90)


def convs(user, **fields):
    return user.call("conversations", **fields)["convs"]


def conv_of(user, with_=None, group=None):
    for c in convs(user, limit=200):
        if (group is not None and c.get("group") == group) or (with_ is not None and c.get("with") == with_):
            return c
    raise AssertionError(f"no conversation with {with_ or group} for {user.name}")


def unread_over_inbox(msgs, me, read_seq, with_=None, group=None):
    """The contract's count, over a user's whole inbox (sync items)."""
    def in_conv(m):
        if group is not None:
            return m.get("group") == group
        return m.get("group") is None and {m["from"], m.get("to")} == ({me, with_} if me != with_ else {me})
    return sum(1 for m in msgs if in_conv(m) and "kind" not in m and m["from"] != me and m["seq"] > read_seq)


def test_unread_counts_and_last(pair):
    a, b = pair
    with a.connect() as ga, b.connect() as gb:
        acks = [ga.send_msg(f"m{i}", to=b.name) for i in range(3)]
        gb.wait_pushes("msg", 3)
        msgs, _ = gb.sync_all(0)
        c = conv_of(b, with_=a.name)
        assert c == {"with": a.name, "last": msgs[-1], "unread": 3, "read_seq": 0, "muted_until": 0,
                     "mentioned": False, "ts": acks[-1]["ts"]}
        assert c["last"]["mid"] == acks[-1]["mid"] and c["last"]["body"] == "m2"
        mine = conv_of(a, with_=b.name)
        assert mine["unread"] == 0 and mine["last"]["seq"] == acks[-1]["seq"]
        # the gateway op: the same fields without a token, the same answer
        rep = gb.call("conversations")
        assert rep["convs"] == convs(b) and [x.get("with") for x in rep["convs"]] == [a.name]
        # b answers: a's unread counts it, b's does not change
        gb.send_msg("back", to=a.name)
        assert conv_of(a, with_=b.name)["unread"] == 1
        assert conv_of(b, with_=a.name)["unread"] == 3


def test_mark_read_is_durable_shared_and_tells_the_other_devices(pair):
    a, b = pair
    with a.connect() as ga, b.connect(device="phone") as phone, b.connect(device="laptop") as laptop:
        acks = [ga.send_msg(f"r{i}", to=b.name) for i in range(3)]
        pushes = phone.wait_pushes("msg", 3)
        laptop.wait_pushes("msg", 3)
        seqs = [p["seq"] for p in pushes]
        # from the API: every device of b hears it, and a
        b.call("mark_read", seq=seqs[1], **{"with": a.name})
        want = {"from": b.name, "seq": seqs[1], "mid": acks[1]["mid"], "with": a.name}
        for dev in (ga, phone, laptop):
            r = dev.wait_push("receipt")
            assert {k: r.get(k) for k in want} == want, r
        c = conv_of(b, with_=a.name)
        assert c["read_seq"] == seqs[1] and c["unread"] == 1
        # from the phone, as a gateway op: the laptop hears it, the phone does not
        phone.call("mark_read", seq=seqs[2], **{"with": a.name})
        assert laptop.wait_push("receipt")["seq"] == seqs[2]
        assert ga.wait_push("receipt")["seq"] == seqs[2]
        phone.sync_point()
        assert phone.take_pushes("receipt") == []
        c = conv_of(b, with_=a.name)
        assert c["read_seq"] == seqs[2] and c["unread"] == 0
        # the gateway's `read` moves the same position
        more = ga.send_msg("later", to=b.name)
        s4 = phone.wait_push("msg", mid=more["mid"])["seq"]
        assert conv_of(b, with_=a.name)["unread"] == 1
        laptop.call("read", seq=s4, **{"with": a.name})
        assert phone.wait_push("receipt")["seq"] == s4
        assert conv_of(b, with_=a.name) | {"last": None} == {
            "with": a.name, "last": None, "unread": 0, "read_seq": s4, "muted_until": 0, "mentioned": False,
            "ts": more["ts"]}


def test_mark_read_never_moves_back(pair):
    a, b = pair
    with a.connect() as ga, b.connect() as gb:
        for i in range(3):
            ga.send_msg(f"x{i}", to=b.name)
        seqs = [p["seq"] for p in gb.wait_pushes("msg", 3)]
        b.call("mark_read", seq=seqs[1], **{"with": a.name})
        assert ga.wait_push("receipt")["seq"] == seqs[1]
        # at or below the position: ok, nothing changes, nobody is told
        b.call("mark_read", seq=seqs[0], **{"with": a.name})
        gb.call("read", seq=seqs[1], **{"with": a.name})
        c = conv_of(b, with_=a.name)
        assert c["read_seq"] == seqs[1] and c["unread"] == 1
        # the next receipt a gets (from the same API service, in order) is the forward one
        b.call("mark_read", seq=seqs[2], **{"with": a.name})
        assert ga.wait_push("receipt")["seq"] == seqs[2]
        ga.sync_point()
        assert ga.take_pushes("receipt") == []


def test_mark_read_errors_change_nothing(server, pair):
    a, b = pair
    c = new_user(server, "mrc")
    befriend(c, b)
    gid = make_group(b, [c], name="mr")
    with a.connect() as ga, b.connect() as gb, c.connect() as gc:
        ga.send_msg("one", to=b.name)
        gb.wait_push("msg")
        gc.send_msg("from c", to=b.name)
        c_seq = gb.wait_push("msg")["seq"]
        head = gb.sync_all(0)[1]
        before = convs(b)
        W = {"with": a.name}
        with server.api() as api:
            t = b.token
            rep = api.error("mark_read", "not_found", token=t, seq=head + 1, **W)
            assert str(head + 1) in rep["message"], rep
            rep = api.error("mark_read", "bad_request", token=t, seq=c_seq, **W)     # c's conversation
            assert "'seq'" in rep["message"], rep
            api.error("mark_read", "bad_request", token=t, seq=c_seq, group=gid)
            api.error("mark_read", "not_found", token=t, seq=c_seq, **{"with": unique_name("ghost")})
            api.error("mark_read", "not_found", token=t, seq=c_seq, group="gnosuchgroup0000")
            api.error("mark_read", "bad_request", token=t, **W)                  # no seq
            api.error("mark_read", "bad_request", token=t, seq=0, **W)
            api.error("mark_read", "bad_request", token=t, seq="1", **W)
            api.error("mark_read", "bad_request", token=t, seq=1)                # neither
            api.error("mark_read", "bad_request", token=t, seq=1, group=gid, **W)  # both
            api.error("mark_read", "unauthorized", seq=1, **W)
            api.error("mark_read", "unauthorized", token="not-a-token", seq=1, **W)
        gb.error("mark_read", "not_found", seq=head + 1, **W)
        gb.error("mark_read", "bad_request", seq=c_seq, **W)
        gb.error("mark_read", "bad_request", seq=1)
        assert convs(b) == before
        gb.sync_point()
        assert gb.take_pushes("receipt") == []
        ga.sync_point()
        gc.sync_point()
        assert ga.take_pushes("receipt") == [] and gc.take_pushes("receipt") == []


def test_mute_is_reported_and_changes_no_delivery(server, pair):
    a, b = pair
    with a.connect() as ga, b.connect() as gb:
        ga.send_msg("before", to=b.name)
        gb.wait_push("msg")
        b.call("mute", until=-1, **{"with": a.name})
        assert conv_of(b, with_=a.name)["muted_until"] == -1
        assert conv_of(a, with_=b.name)["muted_until"] == 0
        ack = ga.send_msg("while muted", to=b.name)
        assert gb.wait_push("msg")["mid"] == ack["mid"]
        c = conv_of(b, with_=a.name)
        assert c["unread"] == 2 and c["muted_until"] == -1 and c["last"]["mid"] == ack["mid"]
        gb.call("mute", until=4102444800000, **{"with": a.name})   # as a gateway op
        assert conv_of(b, with_=a.name)["muted_until"] == 4102444800000
        b.call("mute", until=0, **{"with": a.name})
        assert conv_of(b, with_=a.name)["muted_until"] == 0
        # a conversation with no message yet: muted, listed once something arrives
        c2 = new_user(server, "mu")
        befriend(c2, b)
        b.call("mute", until=-1, **{"with": c2.name})
        assert all(x.get("with") != c2.name for x in convs(b))
        with c2.connect() as g2:
            g2.send_msg("hi", to=b.name)
        gb.wait_push("msg")
        assert conv_of(b, with_=c2.name)["muted_until"] == -1


def test_mute_errors_change_nothing(server, pair):
    a, b = pair
    outsider = new_user(server, "mo")
    gid = make_group(outsider, name="mo")
    with a.connect() as ga, b.connect() as gb:
        ga.send_msg("hi", to=b.name)
        gb.wait_push("msg")
    before = convs(b)
    with server.api() as api:
        t = b.token
        api.error("mute", "not_found", token=t, until=-1, **{"with": unique_name("ghost")})
        api.error("mute", "not_found", token=t, until=-1, group="gnosuchgroup0000")
        api.error("mute", "forbidden", token=t, until=-1, group=gid)
        api.error("mute", "bad_request", token=t, until=-2, **{"with": a.name})
        api.error("mute", "bad_request", token=t, until="soon", **{"with": a.name})
        api.error("mute", "bad_request", token=t, **{"with": a.name})
        api.error("mute", "bad_request", token=t, until=-1)
        api.error("mute", "bad_request", token=t, until=-1, group=gid, **{"with": a.name})
        api.error("mute", "unauthorized", until=-1, **{"with": a.name})
    with b.connect() as gb:
        gb.error("mute", "forbidden", until=-1, group=gid)
        gb.error("mute", "bad_request", until=-5, **{"with": a.name})
    assert convs(b) == before


def test_conversations_errors(server, pair):
    a, b = pair
    with server.api() as api:
        for bad in ({"limit": 0}, {"limit": 201}, {"limit": "5"}, {"before": -1}, {"before": "x"}):
            api.error("conversations", "bad_request", token=a.token, **bad)
        api.error("conversations", "unauthorized")
    with a.connect() as ga:
        ga.error("conversations", "bad_request", limit=201)
    assert a.call("conversations", limit=200)["convs"] == []


def test_order_and_paging(server):
    me = new_user(server, "pg")
    friends = [new_user(server, "pf") for _ in range(4)]
    for f in friends:
        befriend(f, me)
    with me.connect() as gm:
        for f in friends:
            with f.connect() as gf:
                gf.send_msg(f"from {f.name}", to=me.name)
            gm.wait_push("msg", **{"from": f.name})
    names = [f.name for f in reversed(friends)]
    listing = convs(me)
    assert [c["with"] for c in listing] == names
    assert [c["ts"] for c in listing] == sorted((c["ts"] for c in listing), reverse=True)
    assert all(c["last"]["ts"] == c["ts"] for c in listing)
    # page through with before = the last item's ts: every conversation exactly once
    seen, before = [], None
    for _ in range(10):
        fields = {"limit": 1} if before is None else {"limit": 1, "before": before}
        page = convs(me, **fields)
        if not page:
            break
        seen.extend(c["with"] for c in page)
        before = page[-1]["ts"]
    assert seen == names


def test_group_unread_and_mentions(server):
    owner, m1, m2 = (new_user(server, p) for p in ("go", "g1", "g2"))
    for m in (m1, m2):
        befriend(owner, m)
    gid = make_group(owner, [m1, m2], name="mentions")
    with owner.connect() as go, m1.connect() as g1, m2.connect() as g2:
        plain = go.send_msg("plain", group=gid)
        go.call("send", expect="ack", group=gid, body="hey m1", mentions=[m1.name])
        for g in (g1, g2):
            g.wait_push("msg", mid=plain["mid"])
            g.wait_push("msg", body="hey m1")
        c1, c2 = conv_of(m1, group=gid), conv_of(m2, group=gid)
        assert c1["unread"] == 2 and c1["mentioned"] is True
        assert c2["unread"] == 2 and c2["mentioned"] is False
        assert conv_of(owner, group=gid)["unread"] == 0
        # reading past the mention clears it; reading the plain one only does not
        msgs, _ = g1.sync_all(0)
        mine = [m for m in msgs if m.get("group") == gid and "kind" not in m]
        m1.call("mark_read", group=gid, seq=mine[0]["seq"])
        c1 = conv_of(m1, group=gid)
        assert c1["unread"] == 1 and c1["mentioned"] is True
        g1.call("mark_read", group=gid, seq=mine[1]["seq"])
        c1 = conv_of(m1, group=gid)
        assert c1["unread"] == 0 and c1["mentioned"] is False
        # the other members got the receipts
        assert go.wait_push("receipt", seq=mine[1]["seq"])["group"] == gid
        go.call("send", expect="ack", group=gid, body="everyone", mentions=["all"])
        g2.wait_push("msg", body="everyone")
        assert conv_of(m2, group=gid)["mentioned"] is True and conv_of(m2, group=gid)["unread"] == 3


def test_unread_counts_match_the_inbox_after_concurrent_senders(server):
    """The issue's test: several senders at once to one user, 1:1 and in a group, while the
    user marks read on a device; then each conversation's unread equals a count over the
    inbox."""
    me = new_user(server, "cc")
    senders = [new_user(server, "cs") for _ in range(4)]
    for s in senders:
        befriend(s, me)
    gid = make_group(me, senders, name="cc")
    per = 25
    errors = []

    def send(user):
        try:
            with user.connect(timeout=30) as g:
                ids = []
                for k in range(per):
                    ids.append(g.send_request("send", to=me.name, body={"k": k}))
                    ids.append(g.send_request("send", group=gid, body={"k": k}))
                got = g.read_replies(ids, 60)
                assert all(f["op"] == "ack" for f in got), got
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(s,), daemon=True) for s in senders]
    with me.connect(device="reader", timeout=30) as gm:
        for t in threads:
            t.start()
        # mark read while the senders send, on whatever has arrived
        for _ in range(20):
            p = gm.wait_push("msg")
            fields = {"group": p["group"]} if "group" in p else {"with": p["from"]}
            gm.call("mark_read", seq=p["seq"], **fields)
        for t in threads:
            t.join(90)
        assert not errors, errors
        msgs, head = gm.sync_all(0)
    assert sum(1 for m in msgs if "kind" not in m) == 2 * per * len(senders)
    listing = {c.get("with") or c.get("group"): c for c in convs(me, limit=200)}
    for s in senders:
        c = listing[s.name]
        assert c["unread"] == unread_over_inbox(msgs, me.name, c["read_seq"], with_=s.name), (s.name, c)
    c = listing[gid]
    assert c["unread"] == unread_over_inbox(msgs, me.name, c["read_seq"], group=gid), c
    assert c["last"]["seq"] == max(m["seq"] for m in msgs if m.get("group") == gid)
    # and each sender's own rows: 1:1 unread 0, group unread = the others' messages
    for s in senders:
        with s.connect() as gs:
            smsgs, _ = gs.sync_all(0)
        sc = conv_of(s, group=gid)
        assert sc["unread"] == unread_over_inbox(smsgs, s.name, 0, group=gid) == per * (len(senders) - 1)
        assert conv_of(s, with_=me.name)["unread"] == 0
