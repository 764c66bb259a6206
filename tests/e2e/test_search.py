"""Protocol v1.1 `search`, on both deployments: the messages of the caller's own inbox whose
text (body.text, or a string body) contains every word of q (case-insensitive; CJK text:
a substring), newest first, as history items; `with` / `group` narrow it, `before` and
`limit` page it; recalled messages and entries of a kind are never found, an edited one by
its latest body.  Every refusal is checked exactly.

The index is written by a background indexer a moment after the ack (imsrv/core/search.py),
so each test waits (bounded) for its last message to be found before it asserts.

Contract: PROTOCOL.md v1.1 "Profiles, remarks, search, retention (API)".
"""
import pytest

from harness.procs import wait_until
from harness.users import befriend, make_group, new_user, unique_name

pytestmark = pytest.mark.timeout(90)


def found(user, q, **args):
    return [m["mid"] for m in user.call("search", q=q, **args)["msgs"]]


def indexed(user, q, mid, **args):
    """Wait until ``q`` finds message ``mid`` (the indexer has caught up with it)."""
    wait_until(lambda: mid in found(user, q, limit=100, **args), timeout=20, what=f"search {q!r} finding {mid}")


@pytest.fixture
def trio(server):
    a, b, c = new_user(server, "sa"), new_user(server, "sb"), new_user(server, "sc")
    befriend(a, b)
    befriend(a, c)
    return a, b, c


def test_words_case_cjk_and_text_rules(server, trio):
    a, b, c = trio
    with a.connect() as ga:
        m = [ga.send_msg(body, to=b.name)["mid"] for body in (
            {"text": "Hello Bob, lunch today?"},
            "hello again: lunch at NOON",
            {"text": "今天天气很好, lunch"},
            {"text": 5, "note": "hello lunch"},      # no text
            ["hello", "lunch"],                      # no text
            {"text": "the end marker"},
        )]
    indexed(a, "marker", m[5])
    assert found(a, "hello") == [m[1], m[0]]
    assert found(a, "LUNCH Hello") == [m[1], m[0]]
    assert found(a, "lunch") == [m[2], m[1], m[0]]
    assert found(a, "lun") == []                         # whole words
    assert found(a, "noon!") == [m[1]]
    assert found(a, "天气") == [m[2]] and found(a, "好") == [m[2]] and found(a, "天好") == []
    assert found(a, "天气 lunch") == [m[2]]
    assert found(b, "hello") == [m[1], m[0]]             # the other side's inbox too
    assert found(c, "hello") == []                       # not in carol's inbox
    # the items are the history items of those messages
    hist = {x["mid"]: x for x in a.call("history", **{"with": b.name})["msgs"]}
    for item in a.call("search", q="lunch")["msgs"]:
        assert item == hist[item["mid"]], item
    assert a.call("search", q="hello")["msgs"][1]["body"] == {"text": "Hello Bob, lunch today?"}


def test_with_group_paging_and_limits(server, trio):
    a, b, c = trio
    g = make_group(a, [b])
    with a.connect() as ga:
        ab = [ga.send_msg({"text": f"ping {i}"}, to=b.name)["mid"] for i in range(25)]
        ac = [ga.send_msg({"text": f"ping {i}"}, to=c.name)["mid"] for i in range(3)]
        gm = [ga.send_msg({"text": f"ping {i}"}, group=g)["mid"] for i in range(3)]
    indexed(a, "ping", gm[-1])
    everything = sorted(ab + ac + gm, reverse=True)
    assert found(a, "ping") == everything[:20]                      # default limit 20
    assert found(a, "ping", limit=100) == everything
    assert found(a, "ping", limit=100, **{"with": b.name}) == ab[::-1]
    assert found(a, "ping", limit=100, **{"with": c.name.upper()}) == ac[::-1]
    assert found(a, "ping", limit=100, group=g) == gm[::-1]
    assert found(b, "ping", limit=100) == sorted(ab + gm, reverse=True)
    assert found(a, "ping 2", limit=100) == [gm[2], ac[2], ab[2]]
    # pages: before = the last mid of the previous page
    page1 = found(a, "ping", limit=10, **{"with": b.name})
    page2 = found(a, "ping", limit=10, **{"with": b.name}, before=page1[-1])
    page3 = found(a, "ping", limit=10, **{"with": b.name}, before=page2[-1])
    assert page1 + page2 + page3 == ab[::-1] and len(page3) == 5
    assert found(a, "ping", before=ab[0]) == []
    # a member who joins later finds only what reached their inbox
    d = new_user(server, "sd")
    a.call("group_invite", group=g, users=[d.name])
    with a.connect() as ga:
        late = ga.send_msg({"text": "ping late"}, group=g)["mid"]
    indexed(d, "ping", late)
    assert found(d, "ping", limit=100) == [late] == found(d, "ping", limit=100, group=g)


def test_search_errors_change_nothing(server, trio):
    a, b, c = trio
    g = make_group(b)
    with a.connect() as ga:
        mid = ga.send_msg({"text": "needle"}, to=b.name)["mid"]
    indexed(a, "needle", mid)
    with server.api() as api:
        t = a.token

        def bad(field, **fields):
            rep = api.error("search", "bad_request", token=t, **fields)
            assert f"'{field}'" in rep["message"], rep

        bad("q")
        bad("q", q="")
        bad("q", q="x" * 101)
        bad("q", q=5)
        bad("q", q="?! ...")                       # no word to search for
        bad("limit", q="needle", limit=101)
        bad("limit", q="needle", limit=0)
        bad("limit", q="needle", limit="5")
        bad("before", q="needle", before=0)
        bad("before", q="needle", before="9")
        bad("with", q="needle", **{"with": "B@D"})
        rep = api.error("search", "bad_request", token=t, q="needle", group=g, **{"with": b.name})
        assert "'with'" in rep["message"] and "'group'" in rep["message"], rep
        rep = api.error("search", "not_found", token=t, q="needle", **{"with": unique_name("ghost")})
        assert "no such user" in rep["message"], rep
        rep = api.error("search", "not_found", token=t, q="needle", group="no-such-group")
        assert "no such group" in rep["message"], rep
        rep = api.error("search", "forbidden", token=t, q="needle", group=g)
        assert "not a member" in rep["message"], rep
        api.error("search", "unauthorized", token="nope", q="needle")
    assert found(a, "needle") == [mid]
    assert found(a, "x" * 100) == []                # 100 characters is fine
    assert found(a, "needle", limit=100) == [mid]


def test_recalled_edited_and_entries_of_a_kind(server, trio):
    a, b, c = trio
    with a.connect() as ga:
        keep = ga.send_msg({"text": "alpha original"}, to=b.name)["mid"]
        gone = ga.send_msg({"text": "alpha recalled"}, to=b.name)["mid"]
        ga.call("recall", expect="ack", mid=gone)
        ga.call("edit", expect="ack", mid=keep, body={"text": "alpha changed words"})
        ga.call("react", expect="ack", mid=keep, emoji="+1")
        marker = ga.send_msg({"text": "omega"}, to=b.name)["mid"]
    indexed(a, "omega", marker)
    # recalled: never found; edited: by its latest body, once the indexer followed the edit
    wait_until(lambda: found(a, "changed") == [keep], timeout=20, what="the edit indexed")
    assert found(a, "alpha") == [keep]
    assert found(a, "original") == [] and found(a, "recalled") == []
    item, = a.call("search", q="changed")["msgs"]
    assert item["body"] == {"text": "alpha changed words"} and item["edited"] > 0
    assert item["reactions"] == {"+1": [a.name]}
    assert "kind" not in item
    # only ordinary messages: the edit entry (its body has the words too) is not found
    assert found(b, "changed words", limit=100) == [keep]
