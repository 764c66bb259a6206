"""The hooks' core logic without I/O (imsrv/core/hooks.py): the signature (test vectors),
the before_send answers and fail_open, the queue rows, the offline decision, the retry
waits; at the end, the core wired with them (App.check_send / gw_edit, Messaging's
hook_sink) on SQLite in memory, as tests/test_core.py.  The end-to-end tests against a
real HTTP receiver: tests/e2e/test_hooks.py; the SQL queue: tests/test_store_hooks.py."""
import hashlib
import hmac
import json

import pytest

from imsrv.core import hooks as H
from imsrv.protocol.errors import Forbidden, Unavailable

# ---------------------------------------------------------------- signature


@pytest.mark.parametrize("secret, body, hexdigest", [
    # RFC 4231, test case 2
    ("Jefe", b"what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    # the classic one
    ("key", b"The quick brown fox jumps over the lazy dog",
     "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"),
])
def test_signature_vectors(secret, body, hexdigest):
    assert H.sign(secret, body) == "sha256=" + hexdigest


def test_signature_of_a_hook_body_keys_with_the_utf8_secret():
    body = '{"events":[]}'.encode()
    secret = "sécret ☃"
    want = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    assert H.headers(secret, body) == {"Content-Type": "application/json", "X-Imsrv-Signature": "sha256=" + want}


# ---------------------------------------------------------------- settings
class Section:
    def __init__(self, **kw):
        base = {"before_send": "", "after_send": "", "offline": "", "secret": "s", "timeout": 1.0,
                "fail_open": True, "batch": 100, "retry_max": 60.0}
        base.update(kw)
        self.__dict__.update(base)


def test_settings_check_urls_secret_and_numbers():
    s = H.HookSettings(Section(after_send="http://h:1/a", offline="https://h/o"))
    assert s.queued == ["after_send", "offline"] and "before_send" not in s.urls
    assert H.HookSettings(Section(secret="")).queued == []    # no hook: no secret needed
    for bad, words in [(dict(before_send="ftp://h/x"), "before_send"),
                       (dict(after_send="http:///nohost"), "after_send"),
                       (dict(offline="http://h/", secret=""), "secret"),
                       (dict(timeout=0.0), "timeout"), (dict(retry_max=-1.0), "retry_max"),
                       (dict(batch=0), "batch")]:
        with pytest.raises(ValueError, match=words):
            H.HookSettings(Section(**bad))


# ---------------------------------------------------------------- before_send
@pytest.mark.parametrize("status, reply, want", [
    (200, b'{"action": "allow"}', ("allow", None)),
    (204, b'{"action": "allow", "extra": 1}', ("allow", None)),
    (200, b'{"action": "reject", "reason": "no spam"}', ("reject", "no spam")),
    (200, b'{"action": "reject"}', ("reject", H.REJECTED)),
    (200, b'{"action": "replace", "body": {"text": "***"}}', ("replace", {"text": "***"})),
    (200, b'{"action": "replace", "body": null}', ("replace", None)),
])
def test_decide_answers(status, reply, want):
    assert H.decide(status, reply) == want


@pytest.mark.parametrize("status, reply", [
    (500, b'{"action": "allow"}'), (302, b""), (200, b"allow"), (200, b"[]"), (200, b'{"action": "maybe"}'),
    (200, b'{"action": "replace"}'), (200, b"\xff"),
])
def test_decide_failures(status, reply):
    with pytest.raises(H.HookFailure):
        H.decide(status, reply)


class FakePost:
    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, url, body, headers, timeout):
        self.calls.append((url, body, headers, timeout))
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a


def before_send(post, **kw):
    s = H.HookSettings(Section(before_send="http://hooks/bs", secret="k", timeout=0.5, **kw))
    return H.BeforeSend(s, post, monotonic=lambda: 0.0)


def test_before_send_request_and_answers():
    post = FakePost((200, b'{"action":"allow"}'), (200, b'{"action":"reject","reason":"nope"}'),
                    (200, b'{"action":"replace","body":{"text":"x"}}'))
    bs = before_send(post)
    fields = H.send_fields("alice", {"group": "g1", "body": {"text": "hi"}, "mentions": ["all"]})
    assert fields == {"from": "alice", "group": "g1", "kind": None, "body": {"text": "hi"}, "mentions": ["all"],
                      "reply_to": None}
    assert bs.ask(fields, {"text": "hi"}, '{"text":"hi"}') == ({"text": "hi"}, '{"text":"hi"}')
    url, body, headers, timeout = post.calls[0]
    assert (url, timeout, json.loads(body)) == ("http://hooks/bs", 0.5, fields)
    assert headers["X-Imsrv-Signature"] == H.sign("k", body)
    with pytest.raises(Forbidden) as err:
        bs.ask(fields, "b", '"b"')
    assert err.value.message == "nope"
    assert bs.ask(fields, "b", '"b"') == ({"text": "x"}, '{"text":"x"}')
    one = H.send_fields("bob", {"to": "carol", "body": "yo", "reply_to": 7})
    assert one == {"from": "bob", "to": "carol", "kind": None, "body": "yo", "mentions": None, "reply_to": 7}


@pytest.mark.parametrize("fail_open", [True, False])
def test_before_send_failures_follow_fail_open(fail_open):
    oversized = json.dumps({"action": "replace", "body": "x" * (16 * 1024 + 1)}).encode()
    post = FakePost(H.HookFailure("no answer within 0.5 s"), (503, b""), (200, b"nonsense"), (200, oversized))
    bs = before_send(post, fail_open=fail_open)
    fields = H.send_fields("alice", {"to": "bob", "body": "hi"})
    for _ in range(4):
        if fail_open:
            assert bs.ask(fields, "hi", '"hi"') == ("hi", '"hi"')
        else:
            with pytest.raises(Unavailable):
                bs.ask(fields, "hi", '"hi"')
    assert not post.answers


class HeldStore:
    def __init__(self, held):
        self.held = held

    def held_messages(self, keys):
        return {k: self.held[k] for k in keys if k in self.held}


def test_edit_fields_name_the_conversation_and_the_mid():
    store = HeldStore({
        ("alice", 5): {"from": "alice", "to": "bob", "group": None, "kind": None},
        ("bob", 5): {"from": "alice", "to": "bob", "group": None, "kind": None},
        ("alice", 6): {"from": "alice", "to": None, "group": "g1", "kind": None},
        ("alice", 7): {"from": "alice", "to": "bob", "group": None, "kind": "recall"},
    })
    assert H.BeforeSend.edit_fields(store, "alice", 5, "new") == {
        "from": "alice", "to": "bob", "kind": "edit", "body": "new", "mentions": None, "reply_to": None, "ref": 5}
    assert H.BeforeSend.edit_fields(store, "bob", 5, "new")["to"] == "alice"
    assert H.BeforeSend.edit_fields(store, "alice", 6, "new")["group"] == "g1"
    assert H.BeforeSend.edit_fields(store, "alice", 7, "x") is None     # the send path refuses it
    assert H.BeforeSend.edit_fields(store, "alice", 8, "x") is None


# ---------------------------------------------------------------- queue rows
def item(sender, body, to=None, group=None, kind=None, cmid=None, mentions=None, ref=None, reply_to=None):
    conv = f"g:{group}" if group else "u:" + ":".join(sorted((sender, to)))
    return {"sender": sender, "to": to, "group": group, "conv": conv, "body": json.dumps(body), "ts": 0,
            "cmid": cmid, "kind": kind, "ref": ref, "reply_to": reply_to, "mentions": mentions}


def test_rows_events_and_candidates():
    s = H.HookSettings(Section(after_send="http://h/a", offline="http://h/o", batch=2))
    items = [item("alice", {"text": "hi " * 50}, to="bob", cmid='"c1"'),
             item("alice", None, to="bob", kind="recall", ref=1, cmid="!gw.1.0"),
             item("bob", "yo @all", group="g1", mentions=["all"], reply_to=1),
             item("alice", [1, 2], to="alice")]                          # notes to self: no candidate
    results = [{"mid": 1, "ts": 10, "seqs": {"bob": 4, "alice": 7}},
               {"mid": 2, "ts": 11, "seqs": {"bob": 5, "alice": 8}},
               {"mid": 3, "ts": 12, "seqs": {"bob": 6, "alice": 9, "carol": 1}},
               {"mid": 4, "ts": 13, "seqs": {"alice": 10}}]
    rows = H.HookRows(s).rows(items, results)
    assert [(h, n) for h, n, _ in rows] == [("after_send", 2), ("after_send", 2), ("offline", 2)]
    events = [e for h, _, p in rows if h == "after_send" for e in json.loads(p)]
    assert events == [
        {"mid": 1, "from": "alice", "to": "bob", "body": {"text": "hi " * 50}, "ts": 10, "cmid": "c1"},
        {"mid": 2, "from": "alice", "to": "bob", "body": None, "ts": 11, "kind": "recall", "ref": 1},
        {"mid": 3, "from": "bob", "group": "g1", "body": "yo @all", "ts": 12, "reply_to": 1, "mentions": ["all"]},
        {"mid": 4, "from": "alice", "to": "alice", "body": [1, 2], "ts": 13}]
    cands = json.loads(rows[2][2])
    assert cands == [
        {"mid": 1, "from": "alice", "to": "bob", "conv": "u:alice:bob", "seqs": {"bob": 4},
         "preview": ("hi " * 50)[:100], "mentions": None},
        {"mid": 3, "from": "bob", "group": "g1", "conv": "g:g1", "seqs": {"alice": 9, "carol": 1},
         "preview": "yo @all", "mentions": ["all"]}]
    assert H.HookRows(H.HookSettings(Section())).rows(items, results) == []


@pytest.mark.parametrize("body, preview", [
    ({"text": "x" * 150}, "x" * 100), ("short", "short"), ({"text": 5}, ""), ({"img": "u"}, ""), (None, ""),
    (["text"], ""), ({"text": "é☃" * 60}, ("é☃" * 60)[:100]),
])
def test_preview(body, preview):
    assert H.preview_of(body) == preview


def test_take_prefix_keeps_rows_whole():
    rows = [("a", 60, ""), ("b", 30, ""), ("c", 20, ""), ("d", 1, "")]
    assert H.take_prefix(rows, 100) == rows[:2]
    assert H.take_prefix(rows[2:], 100) == rows[2:]
    assert H.take_prefix([("big", 150, "")], 100) == [("big", 150, "")]   # never stuck


def test_events_body_is_in_mid_order():
    body = H.events_body(['[{"mid": 5}, {"mid": 7}]', '[{"mid": 6}]'])
    assert json.loads(body) == {"events": [{"mid": 5}, {"mid": 6}, {"mid": 7}]}


def test_notifications_skip_online_and_muted():
    cands = H.candidates([json.dumps([
        {"mid": 3, "from": "bob", "group": "g1", "conv": "g:g1", "seqs": {"alice": 9, "carol": 1, "dan": 4},
         "preview": "yo", "mentions": ["carol"]},
        {"mid": 1, "from": "alice", "to": "bob", "conv": "u:alice:bob", "seqs": {"bob": 4}, "preview": "hi",
         "mentions": None}])])
    assert H.notify_pairs(cands) == [("bob", "u:alice:bob"), ("alice", "g:g1"), ("carol", "g:g1"), ("dan", "g:g1")]
    notes = H.notifications(cands, online={"alice"}, muted={("dan", "g:g1")}, badges={"bob": 3, "carol": 1})
    assert notes == [
        {"user": "bob", "from": "alice", "to": "bob", "mid": 1, "seq": 4, "preview": "hi", "mentioned": False,
         "badge": 3},
        {"user": "carol", "from": "bob", "group": "g1", "mid": 3, "seq": 1, "preview": "yo", "mentioned": True,
         "badge": 1}]
    bodies = H.notification_bodies(notes * 3, 4)
    assert [len(json.loads(b)["notifications"]) for b in bodies] == [4, 2]


def test_retry_wait_doubles_to_the_maximum_with_jitter():
    assert [H.retry_wait(n, 60.0, rand=lambda: 1.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert H.retry_wait(20, 60.0, rand=lambda: 1.0) == 60.0
    assert H.retry_wait(200, 3.0, rand=lambda: 0.0) == 1.5
    assert 0.25 <= H.retry_wait(1, 60.0) < 0.5


# ---------------------------------------------------------------- wired into the core
# (the only part of this file with a store: SQLite in memory, as tests/test_core.py)
class Sink:
    def __init__(self):
        self.batches, self.before = [], []

    def stored(self, items, results):
        self.batches.append([r["mid"] for r in results])

    def stored_before(self, mid):
        self.before.append(mid)


class GwSession:
    def __init__(self, user):
        self.user, self.device, self.generation = user, "d1", 0
        self.pushed = []

    def push(self, obj):
        self.pushed.append(obj)

    def own(self, seq):
        pass

    def kick(self, reason):
        pass


@pytest.fixture
def app():
    from imsrv import config
    from imsrv.backends import open_store
    from imsrv.backends.memory import LocalHub
    from imsrv.core.app import App
    cfg = config.load(env={}, overrides={("accounts", "argon2_time_cost"): 1, ("accounts", "argon2_memory_cost"): 8192})
    store = open_store("sqlite:///:memory:")
    store.migrate()
    a = App(cfg, store, LocalHub())
    assert a.before_send is None and a.messaging.hook_sink is None   # hooks off: nothing in the way
    for n in ("alice", "bob"):
        a.accounts.register(n, "password1")
    a.contacts.request("alice", "bob")
    a.contacts.accept("bob", "alice")
    yield a
    store.close()


def test_the_core_asks_before_send_and_tells_the_sink(app):
    post = FakePost((200, b'{"action":"replace","body":"[x]"}'), (200, b'{"action":"allow"}'),
                    (200, b'{"action":"reject","reason":"edits closed"}'))
    app.before_send = before_send(post)
    sink = app.messaging.hook_sink = Sink()
    me = GwSession("alice")
    req = app.check_send(me, {"to": "bob", "body": "rude", "cmid": "c1"})
    assert (req.body, req.body_json) == ("[x]", '"[x]"')
    app.forward([req])
    mid = req.result["mid"]
    assert sink.batches == [[mid]] and sink.before == []
    again = app.check_send(me, {"to": "bob", "body": "rude", "cmid": "c1"})
    app.forward([again])                            # the dedup hit: stored before
    assert again.result["mid"] == mid and sink.before == [mid] and len(sink.batches) == 1
    with pytest.raises(Forbidden, match="edits closed"):
        app.gw_edit(me, {"mid": mid, "body": "nicer"})
    assert json.loads(post.calls[2][1])["ref"] == mid
    assert app.store.history("bob", "u:alice:bob", None, 10)[0]["body"] == '"[x]"'
    # an edit of a mid the editor does not have is not asked: the send path answers not_found
    asked = len(post.calls)
    edit = app.gw_edit(me, {"mid": mid + 100, "body": "x"})
    assert len(post.calls) == asked and edit.body == "x"
