"""Protocol v1.1 "Inbox entries with a kind" and the send ops added: recall, edit, react, send
with reply_to / mentions, history in the current state, sync's oldest, and the group send
checks (muted members, a group muted for all, a dissolved group), on both deployments.

Contract: PROTOCOL.md "Version 1.1 additions": "Inbox entries with a kind", "Gateway ops
added", group_mute / group_dissolve of "Groups with roles".  Every refused request is
checked to change nothing (the heads of every inbox involved, and the history).
"""
import time

import pytest

from harness.servers import DEPLOYMENTS, running_server
from harness.users import befriend, heads, make_group, new_user

pytestmark = pytest.mark.timeout(90)


def inbox(user):
    """Every entry of ``user``'s inbox (sync from 0), and the sync reply's oldest."""
    with user.connect(device="reader") as g:
        msgs, head = g.sync_all(0)
        oldest = g.sync(0, limit=1)["oldest"]
    assert [m["seq"] for m in msgs] == list(range(1, head + 1))
    return msgs, oldest


def history(user, **conv):
    return user.call("history", **conv)["msgs"]


def by_mid(msgs):
    return {m["mid"]: m for m in msgs}


# ---------------------------------------------------------------- login, sync oldest
def test_login_replies_protocol_1_1(alice):
    assert alice.login_reply["protocol"] == "1.1"


def test_sync_oldest_is_the_lowest_seq_stored(alice, bob):
    befriend(alice, bob)
    with alice.connect() as g:
        rep = g.sync(0)
        assert (rep["msgs"], rep["head"], rep["oldest"]) == ([], 0, 0)   # an empty inbox
        g.send_msg("one", to=bob.name)
        g.send_msg("two", to=bob.name)
        rep = g.sync(1)
        assert (rep["head"], rep["oldest"], [m["seq"] for m in rep["msgs"]]) == (2, 1, [2])


# ---------------------------------------------------------------- recall
def test_recall_by_its_sender(alice, bob):
    befriend(alice, bob)
    with alice.connect() as ga, alice.connect(device="tablet") as ga2, bob.connect() as gb:
        sent = ga.send_msg({"text": "oops"}, to=bob.name, cmid="m1")
        gb.wait_push("msg", mid=sent["mid"])
        ga2.wait_push("msg", mid=sent["mid"])
        rep = ga.call("recall", expect="ack", mid=sent["mid"], cmid="r1")
        assert set(rep) == {"op", "id", "mid", "seq", "ts"} and rep["seq"] == sent["seq"] + 1, rep
        assert rep["mid"] > sent["mid"]
        push = gb.wait_push("msg", mid=rep["mid"])
        assert (push["kind"], push["ref"], push["body"], push["from"], push["to"]) == (
            "recall", sent["mid"], None, alice.name, bob.name)
        assert push["seq"] == 2 and push["ts"] == rep["ts"] and push["cmid"] == "r1"
        other = ga2.wait_push("msg", mid=rep["mid"])   # the actor's other device
        assert other["seq"] == rep["seq"] and other["kind"] == "recall"
        # the same cmid again: the first ack, nothing new stored
        again = ga.call("recall", expect="ack", mid=sent["mid"], cmid="r1")
        assert {k: again[k] for k in ("mid", "seq", "ts")} == {k: rep[k] for k in ("mid", "seq", "ts")}
    assert heads(alice, bob) == {alice.name: 2, bob.name: 2}
    # sync: the entries as stored (the message, then the recall entry)
    msgs, _ = inbox(bob)
    assert [(m["mid"], m.get("kind"), m["body"]) for m in msgs] == [
        (sent["mid"], None, {"text": "oops"}), (rep["mid"], "recall", None)]
    assert msgs[1]["ref"] == sent["mid"] and "ref" not in msgs[0] and "kind" not in msgs[0]
    # history: the message in its current state, the recall entry not listed
    for who, peer in ((alice, bob), (bob, alice)):
        [h] = history(who, **{"with": peer.name})
        assert h["mid"] == sent["mid"] and h["recalled"] is True and h["body"] is None, h
        assert "kind" not in h and "edited" not in h


def test_recall_refusals_change_nothing(alice, bob, carol):
    befriend(alice, bob)
    befriend(alice, carol)
    with alice.connect() as ga, bob.connect() as gb, carol.connect() as gc:
        m1 = ga.send_msg("first", to=bob.name)
        m2 = ga.send_msg("to carol", to=carol.name)
        before = heads(alice, bob, carol)
        gb.error("recall", "forbidden", mid=m1["mid"])                  # not the sender (1:1)
        gb.error("recall", "not_found", mid=m2["mid"])                  # not in bob's inbox
        gb.error("recall", "not_found", mid=m2["mid"] + 10**9)          # no such message
        gb.error("recall", "bad_request", mid=0)
        gb.error("recall", "bad_request", mid="x")
        gb.error("recall", "bad_request")                               # mid missing
        assert heads(alice, bob, carol) == before
        rec = ga.call("recall", expect="ack", mid=m1["mid"])
        # a recalled message cannot be recalled again, edited or reacted to
        ga.error("recall", "forbidden", mid=m1["mid"])
        ga.error("edit", "forbidden", mid=m1["mid"], body="again")
        gb.error("react", "forbidden", mid=m1["mid"], emoji="+1")
        # an entry with a kind is not a message
        msg = ga.error("recall", "bad_request", mid=rec["mid"])
        assert "mid" in msg["message"]
        ga.error("react", "bad_request", mid=rec["mid"], emoji="+1")
        assert heads(alice, bob, carol) == {**before, alice.name: before[alice.name] + 1,
                                            bob.name: before[bob.name] + 1}
        gc.sync_point()
        assert [p["mid"] for p in gc.take_pushes("msg")] == [m2["mid"]], "carol got nothing of alice and bob's"


# ---------------------------------------------------------------- edit
def test_edit_by_its_sender(alice, bob):
    befriend(alice, bob)
    with alice.connect() as ga, bob.connect() as gb:
        sent = ga.send_msg({"text": "helo"}, to=bob.name)
        e1 = ga.call("edit", expect="ack", mid=sent["mid"], body={"text": "hello"}, cmid="e1")
        e2 = ga.call("edit", expect="ack", mid=sent["mid"], body={"text": "hello!"})
        assert (e1["seq"], e2["seq"]) == (sent["seq"] + 1, sent["seq"] + 2)
        p1 = gb.wait_push("msg", mid=e1["mid"])
        assert (p1["kind"], p1["ref"], p1["body"], p1["cmid"]) == ("edit", sent["mid"], {"text": "hello"}, "e1")
        gb.wait_push("msg", mid=e2["mid"])
        # idempotent by cmid
        again = ga.call("edit", expect="ack", mid=sent["mid"], body={"text": "other"}, cmid="e1")
        assert (again["mid"], again["seq"]) == (e1["mid"], e1["seq"])
        before = heads(alice, bob)
        gb.error("edit", "forbidden", mid=sent["mid"], body="not mine")   # only the sender
        ga.error("edit", "bad_request", mid=sent["mid"], body="x" * 17000)
        ga.error("edit", "bad_request", mid=sent["mid"])                   # body missing
        ga.error("edit", "not_found", mid=sent["mid"] + 10**9, body="?")
        assert heads(alice, bob) == before
    msgs, _ = inbox(bob)
    assert [m["body"] for m in msgs] == [{"text": "helo"}, {"text": "hello"}, {"text": "hello!"}]
    [h] = history(bob, **{"with": alice.name})
    assert h["body"] == {"text": "hello!"} and h["edited"] == e2["ts"] and "recalled" not in h, h


# ---------------------------------------------------------------- react
def test_reactions(alice, bob, carol):
    befriend(alice, bob)
    with alice.connect() as ga, bob.connect() as gb, carol.connect() as gc:
        sent = ga.send_msg("nice", to=bob.name)
        r1 = gb.call("react", expect="ack", mid=sent["mid"], emoji="👍")
        push = ga.wait_push("msg", mid=r1["mid"])
        assert (push["kind"], push["ref"], push["body"], push["from"], push["to"]) == (
            "reaction", sent["mid"], {"emoji": "👍", "on": True}, bob.name, alice.name)
        ga.call("react", expect="ack", mid=sent["mid"], emoji="👍", on=True)
        gb.call("react", expect="ack", mid=sent["mid"], emoji="❤")
        [h] = history(alice, **{"with": bob.name})
        assert h["reactions"] == {"👍": [bob.name, alice.name], "❤": [bob.name]}, h
        off = gb.call("react", expect="ack", mid=sent["mid"], emoji="👍", on=False)
        assert ga.wait_push("msg", mid=off["mid"])["body"] == {"emoji": "👍", "on": False}
        gb.call("react", expect="ack", mid=sent["mid"], emoji="❤", on=False)
        [h] = history(bob, **{"with": alice.name})
        assert h["reactions"] == {"👍": [alice.name]}, h
        before = heads(alice, bob, carol)
        gb.error("react", "bad_request", mid=sent["mid"], emoji="")
        gb.error("react", "bad_request", mid=sent["mid"], emoji="x" * 17)
        gb.error("react", "bad_request", mid=sent["mid"], emoji="x", on="yes")
        gb.error("react", "bad_request", mid=sent["mid"])                 # emoji missing
        gc.error("react", "not_found", mid=sent["mid"], emoji="👍")       # not in carol's inbox
        assert heads(alice, bob, carol) == before
    # history lists only the message (not the five reaction entries)
    assert [m["mid"] for m in history(alice, **{"with": bob.name})] == [sent["mid"]]
    assert len(inbox(alice)[0]) == 6


def test_edit_and_react_follow_the_contact_rules(alice, bob):
    befriend(alice, bob)
    with alice.connect() as ga, bob.connect() as gb:
        sent = ga.send_msg("before the block", to=bob.name)
        alice.call("block", user=bob.name)
        before = heads(alice, bob)
        ga.error("edit", "forbidden", mid=sent["mid"], body="after")
        gb.error("react", "forbidden", mid=sent["mid"], emoji="👍")
        assert heads(alice, bob) == before
        # recalling only takes back: allowed whatever the relation
        ga.call("recall", expect="ack", mid=sent["mid"])
    assert history(bob, **{"with": alice.name})[0]["recalled"] is True


def test_pipelined_entries_keep_their_order(alice, bob):
    befriend(alice, bob)
    with alice.connect() as ga, bob.connect() as gb:
        sent = ga.send_msg("base", to=bob.name)
        ids = [ga.send_request("edit", mid=sent["mid"], body="v2"),
               ga.send_request("send", to=bob.name, body="next", reply_to=sent["mid"]),
               ga.send_request("react", mid=sent["mid"], emoji="🎉"),
               ga.send_request("recall", mid=sent["mid"]),
               ga.send_request("edit", mid=sent["mid"], body="v3")]
        acks = ga.read_replies(ids)
        assert [a["op"] for a in acks] == ["ack", "ack", "ack", "ack", "error"], acks
        assert acks[4]["code"] == "forbidden"    # recalled by the entry before it
        assert [a["seq"] for a in acks[:4]] == [sent["seq"] + k for k in range(1, 5)]
        pushes = gb.wait_pushes("msg", 5)
        assert [(p.get("kind"), p.get("reply_to")) for p in pushes] == [
            (None, None), ("edit", None), (None, sent["mid"]), ("reaction", None), ("recall", None)]


# ---------------------------------------------------------------- reply_to, mentions
def test_reply_to(alice, bob, carol):
    befriend(alice, bob)
    befriend(alice, carol)
    with alice.connect() as ga, bob.connect() as gb:
        first = gb.send_msg("question?", to=alice.name)
        other = ga.send_msg("elsewhere", to=carol.name)
        ans = ga.call("send", expect="ack", to=bob.name, body="answer", reply_to=first["mid"])
        push = gb.wait_push("msg", mid=ans["mid"])
        assert push["reply_to"] == first["mid"] and "kind" not in push and "mentions" not in push
        before = heads(alice, bob, carol)
        ga.error("send", "not_found", to=bob.name, body="x", reply_to=other["mid"])   # another conversation
        ga.error("send", "not_found", to=bob.name, body="x", reply_to=first["mid"] + 10**9)
        ga.error("send", "bad_request", to=bob.name, body="x", reply_to="1")
        assert heads(alice, bob, carol) == before
    assert by_mid(inbox(bob)[0])[ans["mid"]]["reply_to"] == first["mid"]
    assert history(bob, **{"with": alice.name})[0]["reply_to"] == first["mid"]


def test_mentions(alice, bob, carol):
    befriend(alice, bob)
    gid = make_group(alice, [bob, carol])
    outsider = new_user(alice.server, "out")
    with alice.connect() as ga, bob.connect() as gb, carol.connect() as gc:
        m = gb.call("send", expect="ack", group=gid, body="hi @carol", mentions=[carol.name])
        push = gc.wait_push("msg", mid=m["mid"])
        assert push["mentions"] == [carol.name] and push["group"] == gid
        everyone = ga.call("send", expect="ack", group=gid, body="hi all", mentions=["all"])   # the owner
        assert gc.wait_push("msg", mid=everyone["mid"])["mentions"] == ["all"]
        gb.wait_push("msg", mid=everyone["mid"])
        before = heads(alice, bob, carol)
        gb.error("send", "forbidden", group=gid, body="x", mentions=["all"])          # a member
        gb.error("send", "bad_request", group=gid, body="x", mentions=[outsider.name])  # not a member
        gb.error("send", "bad_request", group=gid, body="x", mentions=[])
        gb.error("send", "bad_request", group=gid, body="x", mentions="all")
        gb.error("send", "bad_request", to=alice.name, body="x", mentions=[alice.name])  # 1:1
        assert heads(alice, bob, carol) == before
        reply = gc.call("send", expect="ack", group=gid, body="ok", reply_to=m["mid"], mentions=[bob.name])
        push = gb.wait_push("msg", mid=reply["mid"])
        assert (push["reply_to"], push["mentions"]) == (m["mid"], [bob.name])
    hist = by_mid(history(carol, group=gid))
    assert hist[m["mid"]]["mentions"] == [carol.name] and hist[everyone["mid"]]["mentions"] == ["all"]
    assert by_mid(inbox(bob)[0])[reply["mid"]]["mentions"] == [bob.name]


# ---------------------------------------------------------------- groups
def test_group_recall_edit_react(alice, bob, carol):
    gid = make_group(alice, [bob, carol])
    with alice.connect() as ga, bob.connect() as gb, carol.connect() as gc:
        m = gb.send_msg("bob's", group=gid)
        r = gc.call("react", expect="ack", mid=m["mid"], emoji="👀")
        for g in (ga, gb):
            p = g.wait_push("msg", mid=r["mid"])
            assert (p["kind"], p["group"], p["ref"], "to" not in p) == ("reaction", gid, m["mid"], True)
        e = gb.call("edit", expect="ack", mid=m["mid"], body="bob's, edited")
        ga.wait_push("msg", mid=e["mid"])
        before = heads(alice, bob, carol)
        gc.error("recall", "forbidden", mid=m["mid"])       # a member, not the sender
        gc.error("edit", "forbidden", mid=m["mid"], body="x")
        assert heads(alice, bob, carol) == before
        # the owner recalls a member's message (at any time)
        rec = ga.call("recall", expect="ack", mid=m["mid"])
        for g in (gb, gc):
            assert g.wait_push("msg", mid=rec["mid"])["kind"] == "recall"
    [h] = [x for x in history(carol, group=gid) if x["mid"] == m["mid"]]
    assert h["recalled"] is True and h["body"] is None


def test_group_change_entries_need_a_current_member(alice, bob, carol):
    gid = make_group(alice, [bob, carol])
    with bob.connect() as gb:
        m = gb.send_msg("hello", group=gid)
    carol.call("group_leave", group=gid)
    newcomer = new_user(alice.server, "new")
    alice.call("group_invite", group=gid, users=[newcomer.name])
    before = heads(alice, bob, carol, newcomer)
    with carol.connect() as gc, newcomer.connect() as gn:
        gc.error("react", "forbidden", mid=m["mid"], emoji="👍")     # has it, left the group
        gn.error("react", "not_found", mid=m["mid"], emoji="👍")     # a member who never had it
    assert heads(alice, bob, carol, newcomer) == before
    # recipients of a change entry: the current members (carol has left)
    with bob.connect() as gb:
        r = gb.call("react", expect="ack", mid=m["mid"], emoji="👍")
    after = heads(alice, bob, carol, newcomer)
    assert after[carol.name] == before[carol.name]
    assert all(after[u.name] == before[u.name] + 1 for u in (alice, bob, newcomer)), (before, after)
    assert inbox(newcomer)[0][-1]["mid"] == r["mid"]


def test_group_mute_and_dissolve_stop_sends(alice, bob, carol):
    gid = make_group(alice, [bob, carol])
    alice.call("group_set_role", group=gid, user=carol.name, role="admin")
    with alice.connect() as ga, bob.connect() as gb, carol.connect() as gc:
        m = gb.send_msg("before", group=gid)
        # bob muted: his sends, edits and reactions are refused
        alice.call("group_mute", group=gid, user=bob.name, until=int(time.time() * 1000) + 600_000)
        before = heads(alice, bob, carol)
        msg = gb.error("send", "forbidden", group=gid, body="muted?")
        assert "muted" in msg["message"]
        gb.error("edit", "forbidden", mid=m["mid"], body="x")
        gb.error("react", "forbidden", mid=m["mid"], emoji="👍")
        assert heads(alice, bob, carol) == before
        gc.send_msg("an admin speaks", group=gid)
        alice.call("group_mute", group=gid, user=bob.name, until=0)      # unmuted
        gb.send_msg("back", group=gid)
        # everyone but the owner and admins
        alice.call("group_mute", group=gid, until=int(time.time() * 1000) + 600_000)
        before = heads(alice, bob, carol)
        gb.error("send", "forbidden", group=gid, body="all muted")
        assert heads(alice, bob, carol) == before
        gc.send_msg("admin", group=gid)
        ga.send_msg("owner", group=gid)
        alice.call("group_mute", group=gid, until=0)
        gb.send_msg("unmuted", group=gid)
        # dissolved: no more sends, not even the owner's; history stays readable
        alice.call("group_dissolve", group=gid)
        before = heads(alice, bob, carol)
        for g in (ga, gb, gc):
            assert "dissolved" in g.error("send", "forbidden", group=gid, body="gone?")["message"]
        gb.error("react", "forbidden", mid=m["mid"], emoji="👍")
        ga.error("recall", "forbidden", mid=m["mid"])
        assert heads(alice, bob, carol) == before
    texts = [h["body"] for h in history(bob, group=gid) if h.get("kind") is None]
    assert texts == ["unmuted", "owner", "admin", "back", "an admin speaks", "before"], texts


def test_group_events_are_listed_in_history(alice, bob):
    gid = make_group(alice, [])
    alice.call("group_invite", group=gid, users=[bob.name])
    with alice.connect() as ga:
        m = ga.send_msg("welcome", group=gid)
    hist = history(bob, group=gid)
    assert hist[0]["mid"] == m["mid"]
    events = [h for h in hist if h.get("kind") == "group_event"]
    assert events and all("ref" not in h for h in events), hist
    assert events[0]["body"]["event"] in ("invited", "joined") and events[0]["from"] == alice.name


# ---------------------------------------------------------------- windows (a server of their own)
WINDOWS = 1.5   # seconds: recall_window and edit_window of the `windowed` servers


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def windowed(request, tmp_path_factory):
    config = {"messages": {"recall_window": WINDOWS, "edit_window": WINDOWS}}
    with running_server(request.param, tmp_path_factory.mktemp("windows"), config, name="windows") as srv:
        yield srv


def test_recall_and_edit_windows(windowed):
    a, b, c = (new_user(windowed, p) for p in ("wa", "wb", "wc"))
    befriend(a, b)
    gid = make_group(a, [b, c])
    with a.connect() as ga, b.connect() as gb:
        direct = ga.send_msg("1:1", to=b.name)
        in_group = gb.send_msg("group", group=gid)
        time.sleep(WINDOWS + 0.3)   # the duration under test: both windows pass
        before = heads(a, b, c)
        assert "recall_window" in ga.error("recall", "forbidden", mid=direct["mid"])["message"]
        assert "edit_window" in ga.error("edit", "forbidden", mid=direct["mid"], body="late")["message"]
        gb.error("recall", "forbidden", mid=in_group["mid"])
        gb.error("edit", "forbidden", mid=in_group["mid"], body="late")
        assert heads(a, b, c) == before
        gb.call("react", expect="ack", mid=direct["mid"], emoji="👍")     # no window for reactions
        ga.call("recall", expect="ack", mid=in_group["mid"])                # the owner: at any time
