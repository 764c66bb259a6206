"""Unit tests of the business core: no sockets, no gevent servers; SQLite in memory."""
import pytest

from imsrv import config
from imsrv.backends import open_store
from imsrv.backends.base import StoreError
from imsrv.backends.memory import LocalHub
from imsrv.core.accounts import now_ms
from imsrv.core.app import App
from imsrv.core.messaging import SendRequest, encode_body
from imsrv.core.ratelimit import BucketMap, FailureWindow, TokenBucket, retry_seconds
from imsrv.protocol import fields as F
from imsrv.protocol.errors import BadRequest, Forbidden, ImError, NotFound, RateLimited, Unauthorized


class Session:
    """A stand-in for a gateway session: records what is pushed to it."""

    def __init__(self, user, device="d1"):
        self.owned = []
        self.user, self.device = user, device
        self.token_hash = None
        self.generation = 0
        self.status, self.text = "online", None
        self.pushed, self.kicked = [], []

    def push(self, obj):
        self.pushed.append(obj)

    def kick(self, reason):
        self.kicked.append(reason)

    def own(self, seq):
        self.owned.append(seq)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def app():
    cfg = config.load(env={}, overrides={("accounts", "argon2_time_cost"): 1,
                                         ("accounts", "argon2_memory_cost"): 8192})
    store = open_store("sqlite:///:memory:")
    store.migrate()
    a = App(cfg, store, LocalHub(), monotonic=Clock())   # sends stored in process (no send_path)
    yield a
    store.close()


def users(app, *names):
    for n in names:
        app.accounts.register(n, "password1")


def friends(app, a, b):
    app.contacts.request(a, b)
    app.contacts.accept(b, a)


def heads(app, *names):
    return {n: app.store.head(n) for n in names}


def send(app, sender, to=None, group=None, body="hi", cmid=None, session=None):
    req = SendRequest(sender, body, encode_body(body), to=to, group=group, cmid=cmid, session=session)
    app.messaging.process_batch([req])
    if isinstance(req.result, ImError):
        raise req.result
    return req.result


# ---------------------------------------------------------------- fields
def test_user_names_follow_the_contract_and_are_lowercased():
    assert F.user_name("user", "Alice_1") == "alice_1"
    for bad in ("ab", "-abc", ".abc", "a" * 33, "al ice", "alice!", 5, None, ["alice"]):
        with pytest.raises(BadRequest) as e:
            F.user_name("to", bad)
        assert "'to'" in e.value.message


def test_ids_and_ints_reject_bools_and_long_strings():
    assert F.req_id({"id": 7}) == 7
    assert F.req_id({"id": "x" * 64}) == "x" * 64
    for bad in (True, 1.5, "x" * 65, [1]):
        with pytest.raises(BadRequest):
            F.req_id({"id": bad})
    with pytest.raises(BadRequest):
        F.non_negative_int("since", True)
    with pytest.raises(BadRequest):
        F.limit_up_to(200)("limit", 201)


def test_body_over_16_kib_is_refused():
    encode_body("x" * 16000)
    with pytest.raises(BadRequest) as e:
        encode_body("x" * 16384)
    assert "body" in e.value.message


# ---------------------------------------------------------------- rate limits
def test_token_bucket_refills_at_its_rate():
    b = TokenBucket(rate=2, burst=3, now=0.0)
    assert [b.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take(0.0) == pytest.approx(0.5)
    assert b.take(0.5) == 0.0
    assert retry_seconds(0.01) == 1


def test_bucket_map_stays_bounded():
    m = BucketMap(1, 1, max_keys=100)
    for i in range(1000):
        m.take(i, now=float(i))
    assert len(m.buckets) <= 100


def test_failure_window_blocks_then_forgets():
    w = FailureWindow(limit=2, window=10)
    w.failed("u", 0.0)
    assert w.blocked_for("u", 1.0) == 0.0
    w.failed("u", 1.0)
    assert w.blocked_for("u", 2.0) == pytest.approx(8.0)
    assert w.blocked_for("u", 10.5) == 0.0


# ---------------------------------------------------------------- accounts
def test_register_login_resolve_logout(app):
    users(app, "alice")
    with pytest.raises(ImError) as e:
        app.accounts.register("alice", "password1")
    assert e.value.code == "conflict"
    with pytest.raises(ImError):
        app.accounts.register("system", "password1")
    out = app.accounts.login("alice", "password1", "phone", "10.0.0.1")
    assert out["user"] == "alice" and out["expires_in"] == app.cfg.accounts.token_ttl
    assert app.accounts.resolve(out["token"])[:2] == ("alice", "phone")
    app.accounts.logout(out["token"])
    with pytest.raises(Unauthorized):
        app.accounts.resolve(out["token"])


def test_stored_password_is_an_argon2_hash(app):
    users(app, "alice")
    assert app.store.get_user("alice")["pw_hash"].startswith("$argon2id$")


def test_failed_logins_throttle_the_user_from_that_address_only(app):
    """Defect 9: ten wrong passwords from one address refused the right one from every
    address for a minute, so anyone could lock anyone out."""
    users(app, "alice", "bob")
    for _ in range(app.cfg.limits.login_user_attempts):
        with pytest.raises(Unauthorized):
            app.accounts.login("alice", "wrong-password", "d", "10.0.0.1")
    with pytest.raises(RateLimited) as e:   # the guesser's address: refused, even the right one
        app.accounts.login("alice", "password1", "d", "10.0.0.1")
    assert e.value.extra["retry_after"] >= 1
    assert app.accounts.login("alice", "password1", "d", "10.0.0.2")["token"]  # the owner elsewhere
    assert app.accounts.login("bob", "password1", "d", "10.0.0.1")["token"]    # others from there
    app.monotonic.t += app.cfg.limits.login_window
    assert app.accounts.login("alice", "password1", "d", "10.0.0.1")["token"]


def test_failed_logins_throttle_an_address_spraying_names(app):
    users(app, "alice")
    lim = app.cfg.limits
    for i in range(lim.login_addr_attempts):
        with pytest.raises(Unauthorized):
            app.accounts.login(f"nobody{i}", "wrong-password", "d", "10.0.0.9")
    with pytest.raises(RateLimited):
        app.accounts.login("alice", "password1", "d", "10.0.0.9")
    assert app.accounts.login("alice", "password1", "d", "10.0.0.8")["token"]


def test_guessing_from_many_addresses_hits_the_global_user_limit_but_not_a_new_address(app):
    users(app, "alice")
    lim = app.cfg.limits
    per_addr = lim.login_user_attempts - 1   # stay under the (user, address) limit
    addrs = [f"10.1.{i // 250}.{i % 250}" for i in range(-(-lim.login_user_global_attempts // per_addr))]
    for n in range(lim.login_user_global_attempts):
        with pytest.raises(Unauthorized):
            app.accounts.login("alice", "wrong-password", "d", addrs[n // per_addr])
    # past the global limit: every address that failed for alice lately is refused
    with pytest.raises(RateLimited) as e:
        app.accounts.login("alice", "password1", "d", addrs[0])
    assert e.value.extra["retry_after"] <= lim.login_user_global_window
    # ... while one with no failure for alice (the owner's) still logs in
    assert app.accounts.login("alice", "password1", "d", "192.168.7.7")["token"]
    # the owner's success does not give the guessers a fresh allowance
    with pytest.raises(RateLimited):
        app.accounts.login("alice", "wrong-password", "d", addrs[1])
    app.monotonic.t += lim.login_user_global_window
    assert app.accounts.login("alice", "password1", "d", addrs[0])["token"]


def test_short_or_long_wrong_password_at_login_is_unauthorized(app):
    """Defect 10: a login with a 3-character password was answered with the registration
    rule (bad_request "must be 8 to 128 characters") instead of wrong credentials."""
    users(app, "alice")
    for pw in ("abc", "x", "y" * 129, "z" * 1024):
        rep = app.api_request({"op": "login", "user": "alice", "password": pw}, "10.0.0.1")
        assert (rep["op"], rep["code"], rep["message"]) == ("error", "unauthorized", "wrong user name or password")
    rep = app.api_request({"op": "login", "user": "alice", "password": "w" * 1025}, "10.0.0.1")
    assert rep["code"] == "bad_request" and "'password'" in rep["message"] and "1024" in rep["message"]
    rep = app.api_request({"op": "login", "user": "alice", "password": ""}, "10.0.0.1")
    assert rep["code"] == "bad_request" and "'password'" in rep["message"]
    # registration keeps its rule
    rep = app.api_request({"op": "register", "user": "shorty", "password": "abc"}, "10.0.0.1")
    assert rep["code"] == "bad_request" and "8 to 128" in rep["message"]


def test_login_reply_carries_max_frame(app):
    users(app, "alice")
    rep = app.api_request({"op": "login", "user": "alice", "password": "password1"}, "10.0.0.1")
    assert rep["op"] == "ok" and rep["max_frame"] == app.cfg.limits.max_frame == 65536


# ---------------------------------------------------------------- messaging
def test_seqs_are_gapless_and_the_sender_keeps_a_copy(app):
    users(app, "alice", "bob")
    friends(app, "alice", "bob")
    acks = [send(app, "alice", to="bob", body=i) for i in range(5)]
    assert [a["seq"] for a in acks] == [1, 2, 3, 4, 5]
    assert app.store.head("bob") == 5 and app.store.head("alice") == 5
    got = app.messaging.sync("bob", 0, 100)
    assert [m["seq"] for m in got["msgs"]] == [1, 2, 3, 4, 5]
    assert [m["body"] for m in got["msgs"]] == [0, 1, 2, 3, 4]
    assert got["more"] is False and got["head"] == 5


def test_not_friends_and_blocks_are_forbidden(app):
    users(app, "alice", "bob", "carol")
    with pytest.raises(Forbidden):
        send(app, "alice", to="bob")
    friends(app, "alice", "bob")
    app.contacts.block("bob", "alice")
    with pytest.raises(Forbidden):
        send(app, "alice", to="bob")
    with pytest.raises(Forbidden):
        send(app, "bob", to="alice")
    with pytest.raises(NotFound):
        send(app, "alice", to="nobody")
    assert app.store.head("bob") == 0


def test_dedup_returns_the_first_ack_and_stores_nothing(app):
    users(app, "alice", "bob")
    friends(app, "alice", "bob")
    first = send(app, "alice", to="bob", cmid="c-1")
    again = send(app, "alice", to="bob", cmid="c-1", body="changed")
    assert again == first
    reqs = [SendRequest("alice", "x", '"x"', to="bob", cmid="c-2") for _ in range(3)]
    app.messaging.process_batch(reqs)
    assert reqs[0].result == reqs[1].result == reqs[2].result
    assert app.store.head("bob") == 2


def test_a_failing_store_fails_the_whole_batch_with_unavailable(app):
    users(app, "alice", "bob")
    friends(app, "alice", "bob")

    def broken(batch, deadline=None):
        raise StoreError("disk I/O error")

    app.store.store_messages = broken
    reqs = [SendRequest("alice", "x", '"x"', to="bob") for _ in range(3)]
    app.messaging.process_batch(reqs)
    assert all(r.result.code == "unavailable" for r in reqs)
    del app.store.store_messages
    assert app.store.head("bob") == 0


def test_a_failing_lookup_answers_that_send_unavailable_and_stores_the_rest(app):
    users(app, "alice", "bob", "carol")
    friends(app, "alice", "bob")
    real = app.store.existing_users

    def broken(names):
        if names == ["carol"]:   # the notify's own lookup, not the batch's
            raise StoreError("lost connection to MySQL server")
        return real(names)

    app.store.existing_users = broken
    reqs = [SendRequest("alice", "a", '"a"', to="bob"), SendRequest("system", "b", '"b"', notify_to=["carol"]),
            SendRequest("alice", "c", '"c"', to="bob")]
    app.messaging.process_batch(reqs)
    del app.store.existing_users
    assert reqs[1].result.code == "unavailable"
    assert [r.result["seq"] for r in (reqs[0], reqs[2])] == [1, 2]
    assert app.store.head("bob") == 2 and app.store.head("carol") == 0


def test_a_failing_batch_lookup_answers_every_send_unavailable(app):
    users(app, "alice", "bob")
    friends(app, "alice", "bob")
    g = app.groups.create("alice", "team", ["bob"])["group"]

    def broken(groups):
        raise StoreError("lost connection to MySQL server")

    before = heads(app, "alice", "bob")   # (group_event entries of the group's creation)
    app.store.group_states = broken
    reqs = [SendRequest("alice", "a", '"a"', to="bob"), SendRequest("alice", "b", '"b"', group=g, cmid="g1")]
    app.messaging.process_batch(reqs)
    del app.store.group_states
    assert [r.result.code for r in reqs] == ["unavailable", "unavailable"]
    assert heads(app, "alice", "bob") == before
    # the same cmid works once the store is back: nothing of the failed send was kept
    retry = SendRequest("alice", "b", '"b"', group=g, cmid="g1")
    app.messaging.process_batch([retry])
    assert retry.result["seq"] == before["alice"] + 1


def test_a_send_stored_concurrently_by_another_forwarder_gets_its_first_ack(app):
    """Between this batch's dedup lookup and its insert, another forwarder (one that took
    the same ingress entry over) committed the same send: the batch runs again and answers
    it with that first ack, never `unavailable` for a stored send."""
    users(app, "alice", "bob")
    friends(app, "alice", "bob")
    real = app.store.store_messages
    other = SendRequest("alice", "a", '"a"', to="bob", cmid="r1")

    def racing(items, deadline=None):
        del app.store.store_messages          # back to the real method
        app.messaging.process_batch([other])  # the other forwarder commits first
        return real(items, deadline)

    app.store.store_messages = racing
    reqs = [SendRequest("alice", "a", '"a"', to="bob", cmid="r1"),
            SendRequest("alice", "b", '"b"', to="bob", cmid="r2")]
    app.messaging.process_batch(reqs)
    assert other.result["seq"] == 1
    assert reqs[0].result == {"op": "ack", "mid": other.result["mid"], "seq": 1, "ts": other.result["ts"]}
    assert reqs[1].result["seq"] == 2
    assert app.store.head("bob") == 2


def test_pushes_go_to_every_device_but_the_sending_one(app):
    users(app, "alice", "bob")
    friends(app, "alice", "bob")
    a1, a2, b1 = Session("alice", "d1"), Session("alice", "d2"), Session("bob", "d1")
    for s in (a1, a2, b1):
        app.hub.attach(s)
    ack = send(app, "alice", to="bob", body={"t": 1}, cmid="m1", session=a1)
    assert not [p for p in a1.pushed if p["op"] == "msg"]
    assert a1.owned == [ack["seq"]]
    (mine,) = [p for p in a2.pushed if p["op"] == "msg"]
    (theirs,) = [p for p in b1.pushed if p["op"] == "msg"]
    assert mine["seq"] == ack["seq"] and mine["mid"] == theirs["mid"] == ack["mid"]
    assert theirs == {"op": "msg", "seq": 1, "mid": ack["mid"], "from": "alice", "to": "bob",
                      "body": {"t": 1}, "ts": ack["ts"], "cmid": "m1"}


def test_group_fan_out_and_membership(app):
    users(app, "alice", "bob", "carol", "dave")
    g = app.groups.create("alice", "team", ["bob", "carol"])["group"]
    assert app.groups.members("bob", g)["members"] == ["alice", "bob", "carol"]
    ack = send(app, "bob", group=g, body="hello team")
    # seq 1 of each member is the group's "created" event (protocol v1.1)
    assert {u: app.store.head(u) for u in ("alice", "bob", "carol", "dave")} == \
        {"alice": 2, "bob": 2, "carol": 2, "dave": 0}
    assert ack["seq"] == 2
    with pytest.raises(Forbidden):
        send(app, "dave", group=g)
    with pytest.raises(Forbidden):
        app.groups.members("dave", g)
    with pytest.raises(NotFound):
        send(app, "alice", group="gnothere")
    app.groups.leave("carol", g)   # carol gets her "left" event (seq 3), then nothing
    send(app, "alice", group=g)
    assert app.store.head("carol") == 3


def test_replaced_session_cannot_detach_the_newer_one(app):
    old, new = Session("alice", "phone"), Session("alice", "phone")
    assert app.hub.attach(old) is True
    assert app.hub.attach(new) is False
    assert old.kicked == ["replaced"]
    assert app.hub.detach(old) is False
    assert app.hub.sessions("alice") == [new]
    assert app.hub.detach(new) is True


def test_combined_presence_over_devices_is_pushed_to_friends(app):
    users(app, "alice", "bob")
    friends(app, "alice", "bob")
    b = Session("bob")
    app.hub.attach(b)
    a1, a2 = Session("alice", "d1"), Session("alice", "d2")
    app.hub.attach(a1)
    app.presence.changed("alice")
    app.hub.attach(a2)
    app.presence.changed("alice")
    a1.status = "away"
    app.presence.changed("alice")  # d2 still online: no change
    app.hub.detach(a2)
    app.presence.changed("alice")
    app.hub.detach(a1)
    app.presence.changed("alice")
    seen = [p["status"] for p in b.pushed if p["op"] == "presence"]
    assert seen == ["online", "away", "offline"]


def test_sync_reply_is_cut_to_fit_max_frame(app):
    users(app, "alice", "bob")
    friends(app, "alice", "bob")
    for i in range(10):
        send(app, "alice", to="bob", body="x" * 15000)
    out = app.messaging.sync("bob", 0, 1000)
    assert 1 <= len(out["msgs"]) < 10 and out["more"] is True
    from imsrv import jsonlib
    assert len(jsonlib.dumps(out)) <= app.cfg.limits.max_frame


# ---------------------------------------------------------------- account safety (v1.1)
def api(app, op, addr="10.0.0.1", **fields):
    return app.api_request(dict(op=op, **fields), addr)


def attach(app, user, device, token):
    s = Session(user, device)
    s.token_hash = app.accounts.resolve(token)[2]
    app.hub.attach(s)
    return s


def test_change_password_revokes_and_kicks_every_other_token(app):
    users(app, "alice")
    t1, t2 = (app.accounts.login("alice", "password1", d, "10.0.0.1")["token"] for d in ("a", "b"))
    s1, s1b, s2 = attach(app, "alice", "a", t1), attach(app, "alice", "a2", t1), attach(app, "alice", "b", t2)
    rep = api(app, "change_password", token=t1, password="password1", new_password="password2")
    assert rep == {"op": "ok"}
    assert (s1.kicked, s1b.kicked, s2.kicked) == ([], [], ["logout"])
    assert api(app, "profile", token=t1)["op"] == "ok"
    assert api(app, "profile", token=t2)["code"] == "unauthorized"
    assert api(app, "login", user="alice", password="password1")["code"] == "unauthorized"
    assert api(app, "login", user="alice", password="password2")["op"] == "ok"


def test_change_password_errors(app):
    users(app, "alice")
    t = app.accounts.login("alice", "password1", "a", "10.0.0.1")["token"]
    rep = api(app, "change_password", token=t, password="password9", new_password="password2")
    assert (rep["code"], rep["message"]) == ("unauthorized", "wrong password")
    rep = api(app, "change_password", token=t, password="abc", new_password="password2")
    assert (rep["code"], rep["message"]) == ("unauthorized", "wrong password")
    rep = api(app, "change_password", token=t, password="password1", new_password="short")
    assert rep["code"] == "bad_request" and "'new_password'" in rep["message"] and "8 to 128" in rep["message"]
    rep = api(app, "change_password", token=t, password="password1", new_password="x" * 129)
    assert rep["code"] == "bad_request" and "'new_password'" in rep["message"]
    rep = api(app, "change_password", token=t, new_password="password2")
    assert rep["code"] == "bad_request" and "'password'" in rep["message"]
    rep = api(app, "change_password", password="password1", new_password="password2")
    assert rep["code"] == "unauthorized"
    assert api(app, "profile", token=t)["op"] == "ok"   # nothing changed


def test_wrong_current_passwords_count_as_failed_logins(app):
    users(app, "alice")
    t = app.accounts.login("alice", "password1", "a", "10.0.0.1")["token"]
    for _ in range(app.cfg.limits.login_user_attempts):
        assert api(app, "delete_account", token=t, password="nope-nope")["code"] == "unauthorized"
    rep = api(app, "change_password", token=t, password="password1", new_password="password2")
    assert rep["code"] == "rate_limited" and rep["retry_after"] >= 1
    assert api(app, "login", user="alice", password="password1")["code"] == "rate_limited"
    assert api(app, "login", user="alice", password="password1", addr="10.0.0.2")["op"] == "ok"


def test_delete_account(app):
    users(app, "alice", "bob", "carol")
    friends(app, "alice", "bob")
    app.contacts.request("alice", "carol")
    ta = app.accounts.login("alice", "password1", "a", "10.0.0.1")["token"]
    tb = app.accounts.login("bob", "password1", "b", "10.0.0.1")["token"]
    g = app.groups.create("alice", "team", ["bob", "carol"])["group"]
    sa, sb = attach(app, "alice", "a", ta), attach(app, "bob", "b", tb)
    sent = send(app, "alice", to="bob", body="before")
    assert api(app, "delete_account", token=ta, password="password9")["code"] == "unauthorized"
    assert api(app, "delete_account", token=ta, password="password1") == {"op": "ok"}
    assert sa.kicked == ["logout"] and sb.kicked == []
    assert {"op": "presence", "user": "alice", "status": "offline"} in sb.pushed
    assert api(app, "profile", token=ta)["code"] == "unauthorized"
    assert api(app, "friends", token=tb)["friends"] == []
    assert app.contacts.list_requests("carol") == {"requests": []}
    assert app.groups.members("bob", g)["members"] == ["bob", "carol"]
    assert app.store.get_group(g)["owner"] == "bob"
    # the name stays taken, and nobody can find or reach it
    assert api(app, "register", user="alice", password="password1")["code"] == "conflict"
    rep = api(app, "login", user="alice", password="password1")
    assert (rep["code"], rep["message"]) == ("unauthorized", "wrong user name or password")
    assert api(app, "profile", token=tb, user="alice")["code"] == "not_found"
    assert api(app, "friend_request", token=tb, to="alice")["code"] == "not_found"
    with pytest.raises(NotFound):
        send(app, "bob", to="alice")
    # what was delivered stays
    hist = api(app, "history", token=tb, **{"with": "alice"})["msgs"]
    assert [m["mid"] for m in hist] == [sent["mid"]]


def test_a_login_racing_a_password_change_gets_no_token(app):
    """The password is verified, then changed by change_password before the login stores
    its token: the login must not get a token the change did not revoke."""
    users(app, "alice")
    real = app.accounts.offload

    def offload(fn, *args):
        out = real(fn, *args)
        if fn == app.accounts.hasher.verify:
            old = app.store.get_user("alice")["pw_hash"]
            assert app.store.set_password("alice", old, app.accounts.hasher.hash("password2"), None) == 0
        return out

    app.accounts.offload = offload
    with pytest.raises(Unauthorized):
        app.accounts.login("alice", "password1", "d", "10.0.0.1")
    with app.store.autocommit("count") as cur:
        cur.execute("SELECT COUNT(*) FROM tokens")
        assert cur.fetchone()[0] == 0


# ---------------------------------------------------------------- entries with a kind (v1.1)
def change(app, sender, kind, ref, body=None, cmid=None, session=None):
    """Store a recall / edit / reaction through process_batch -> its ack (or raise)."""
    if kind == "reaction":
        body = {"emoji": body[0], "on": body[1]}
    req = SendRequest(sender, body, encode_body(body), cmid=cmid, session=session, kind=kind, ref=ref)
    app.messaging.process_batch([req])
    if isinstance(req.result, ImError):
        raise req.result
    return req.result


class FakeMs:
    """Stands in for messaging.now_ms: the ms clock of the send path."""

    def __init__(self, t=1_700_000_000_000):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = FakeMs()
    monkeypatch.setattr("imsrv.core.messaging.now_ms", c)
    return c


def test_recall_and_edit_windows_and_who_may(app, clock):
    users(app, "alice", "bob", "carol")
    friends(app, "alice", "bob")
    m = send(app, "alice", to="bob", body="hi")
    with pytest.raises(Forbidden):
        change(app, "bob", "recall", m["mid"])                     # not the sender
    with pytest.raises(Forbidden):
        change(app, "bob", "edit", m["mid"], body="x")
    with pytest.raises(NotFound):
        change(app, "carol", "reaction", m["mid"], body=("+1", True))   # not in carol's inbox
    clock.t += 120_000                                             # recall_window (120 s): still in
    e = change(app, "alice", "edit", m["mid"], body="hi!")
    clock.t += 1
    with pytest.raises(Forbidden) as exc:
        change(app, "alice", "recall", m["mid"])
    assert "recall_window" in exc.value.message
    clock.t += 86_400_000
    with pytest.raises(Forbidden) as exc:
        change(app, "alice", "edit", m["mid"], body="late")
    assert "edit_window" in exc.value.message
    r = change(app, "bob", "reaction", m["mid"], body=("+1", True))
    assert heads(app, "alice", "bob", "carol") == {"alice": 3, "bob": 3, "carol": 0}
    assert (e["seq"], r["seq"]) == (2, 3)
    [h] = app.messaging.history("alice", with_="bob")["msgs"]
    assert (h["body"], h["edited"], h["reactions"]) == ("hi!", e["ts"], {"+1": ["bob"]})
    with pytest.raises(BadRequest):
        change(app, "alice", "reaction", e["mid"], body=("+1", True))   # an edit entry, not a message


def test_change_entries_are_pushed_with_kind_and_ref(app):
    users(app, "alice", "bob")
    friends(app, "alice", "bob")
    a1, a2, b1 = Session("alice", "d1"), Session("alice", "d2"), Session("bob", "d1")
    for s in (a1, a2, b1):
        app.hub.attach(s)
    m = send(app, "alice", to="bob", body="hi", session=a1)
    r = change(app, "alice", "recall", m["mid"], cmid="r1", session=a1)
    assert a1.owned == [m["seq"], r["seq"]]
    push = b1.pushed[-1]
    assert push == {"op": "msg", "seq": 2, "mid": r["mid"], "from": "alice", "to": "bob", "body": None,
                    "ts": r["ts"], "cmid": "r1", "kind": "recall", "ref": m["mid"]}
    assert a2.pushed[-1] == {**push, "seq": r["seq"]}
    # what gap filling reads from the inbox is the same object
    assert app.messaging.fetch("bob", 1, 10) == [push]
    assert change(app, "alice", "recall", m["mid"], cmid="r1") == r   # dedup by cmid


def test_a_group_event_goes_to_the_listed_recipients_without_checks(app):
    users(app, "alice", "bob", "carol")
    g = app.groups.create("alice", "team", ["bob"])["group"]
    b1, c1 = Session("bob"), Session("carol")
    app.hub.attach(b1)
    app.hub.attach(c1)
    before = heads(app, "alice", "bob", "carol")
    body = {"event": "kicked", "user": "carol", "by": "alice"}
    # carol is not a member: a group_event has no membership check
    req = SendRequest("alice", body, encode_body(body), group=g, kind="group_event",
                      notify_to=["bob", "carol", "bob"])
    app.forward([req])
    assert req.result["op"] == "ack" and req.result["seq"] == 0   # alice is not a recipient
    assert heads(app, "alice", "bob", "carol") == {"alice": before["alice"], "bob": before["bob"] + 1,
                                                  "carol": before["carol"] + 1}
    for s in (b1, c1):
        p = s.pushed[-1]
        assert (p["kind"], p["group"], p["from"], p["body"], p["mid"]) == (
            "group_event", g, "alice", body, req.result["mid"])
        assert "ref" not in p
    hist = app.messaging.history("bob", group=g)["msgs"]
    assert hist[0]["mid"] == req.result["mid"] and hist[0]["kind"] == "group_event"


def test_group_send_checks_read_once_per_batch(app, clock):
    users(app, "alice", "bob", "carol")
    friends(app, "alice", "bob")
    g = app.groups.create("alice", "team", ["bob", "carol"])["group"]
    calls = {}
    for name in ("get_dedups", "existing_users", "relations", "held_messages", "group_states", "get_group",
                 "is_member", "list_members"):
        real = getattr(app.store, name)

        def counted(*a, _real=real, _name=name, **k):
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*a, **k)
        setattr(app.store, name, counted)
    reqs = [SendRequest(u, "x", '"x"', group=g, cmid=f"{u}{i}") for i in range(5) for u in ("bob", "carol")]
    reqs += [SendRequest("alice", "y", '"y"', to="bob", cmid=f"a{i}") for i in range(5)]
    app.messaging.process_batch(reqs)
    assert all(r.result["op"] == "ack" for r in reqs), [r.result for r in reqs]
    # plain sends: no lookup of referred messages, one group state read for the batch
    assert calls == {"get_dedups": 1, "existing_users": 1, "relations": 1, "group_states": 1}, calls


def test_group_mute_and_dissolve_refuse_sends(app, clock):
    users(app, "alice", "bob", "carol")
    g = app.groups.create("alice", "team", ["bob", "carol"])["group"]
    m = send(app, "bob", group=g, body="before")
    state = app.store.group_states([g])[g]
    assert state["members"]["alice"][0] == "owner" and state["list"] == ["alice", "bob", "carol"]

    def set_sql(sql, *params):
        with app.store.transaction("test: set group columns") as cur:
            cur.execute(sql, params)

    set_sql("UPDATE group_members SET muted_until = ? WHERE grp = ? AND user = ?", clock.t + 1000, g, "bob")
    with pytest.raises(Forbidden):
        send(app, "bob", group=g)
    with pytest.raises(Forbidden):
        change(app, "bob", "reaction", m["mid"], body=("+1", True))
    change(app, "bob", "recall", m["mid"])                          # a muted member may recall
    clock.t += 1000                                                 # muted until then: not any more
    send(app, "bob", group=g)
    set_sql("UPDATE group_members SET muted_until = -1 WHERE grp = ? AND user = ?", g, "bob")
    with pytest.raises(Forbidden):
        send(app, "bob", group=g)
    set_sql("UPDATE groups_ SET muted_all = -1 WHERE grp = ?", g)
    with pytest.raises(Forbidden):
        send(app, "carol", group=g)
    send(app, "alice", group=g)                                     # the owner is not muted by it
    set_sql("UPDATE group_members SET role = 'admin' WHERE grp = ? AND user = ?", g, "carol")
    send(app, "carol", group=g, body="admin")
    set_sql("UPDATE groups_ SET dissolved = ? WHERE grp = ?", clock.t, g)
    before = heads(app, "alice", "bob", "carol")
    for u in ("alice", "carol"):
        with pytest.raises(Forbidden) as exc:
            send(app, u, group=g)
        assert "dissolved" in exc.value.message
    assert heads(app, "alice", "bob", "carol") == before


def test_mentions_and_reply_to_rules(app):
    users(app, "alice", "bob", "carol", "dave")
    friends(app, "alice", "bob")
    g = app.groups.create("alice", "team", ["bob", "carol"])["group"]
    first = send(app, "bob", group=g, body="q")
    one = send(app, "alice", to="bob", body="1:1")

    def group_send(sender, **extra):
        req = SendRequest(sender, "x", '"x"', group=g, **extra)
        app.messaging.process_batch([req])
        return req.result

    ok = group_send("carol", reply_to=first["mid"], mentions=["bob"])
    assert ok["op"] == "ack"
    [pushed] = app.messaging.fetch("bob", app.store.head("bob") - 1, 1)   # carol's, from bob's inbox
    assert (pushed["mid"], pushed["reply_to"], pushed["mentions"]) == (ok["mid"], first["mid"], ["bob"])
    assert group_send("carol", mentions=["all"]).code == "forbidden"
    assert group_send("alice", mentions=["all"])["op"] == "ack"
    assert group_send("carol", mentions=["dave"]).code == "bad_request"
    assert group_send("carol", reply_to=one["mid"]).code == "not_found"      # another conversation
    req = SendRequest("alice", "x", '"x"', to="bob", mentions=["bob"])
    app.messaging.process_batch([req])
    assert req.result.code == "bad_request"


def test_sync_reports_the_oldest_seq(app):
    users(app, "alice", "bob")
    friends(app, "alice", "bob")
    assert app.messaging.sync("bob", 0, 10)["oldest"] == 0
    send(app, "alice", to="bob")
    send(app, "alice", to="bob")
    assert app.messaging.sync("bob", 1, 10)["oldest"] == 1


def test_catch_up_users_of_change_entries(app):
    users(app, "alice", "bob", "carol")
    friends(app, "alice", "bob")
    g = app.groups.create("alice", "team", ["carol"])["group"]
    d = send(app, "alice", to="bob")
    gm = send(app, "carol", group=g)
    reqs = [SendRequest("bob", None, "null", kind="reaction", ref=d["mid"]),
            SendRequest("alice", None, "null", kind="recall", ref=gm["mid"])]
    for r in reqs:
        r.result = {"op": "ack"}
    assert sorted(app.messaging.catch_up_users(reqs)) == ["alice", "bob", "carol"]


def test_recall_edit_react_share_the_send_bucket(app):
    users(app, "alice", "bob")
    friends(app, "alice", "bob")
    m = send(app, "alice", to="bob")
    me = Session("alice")
    me.conn = type("Conn", (), {"peer": "10.0.0.1:5"})()   # named in the error's log line
    dispatch = app.dispatcher.dispatch
    for i in range(app.cfg.limits.user_send_burst):   # the clock stands still: no refill
        req = dispatch(app.gateway_ops, {"op": "send", "to": "bob", "body": i}, me)
        assert isinstance(req, SendRequest)
    for frame in ({"op": "recall", "mid": m["mid"]}, {"op": "edit", "mid": m["mid"], "body": "x"},
                  {"op": "react", "mid": m["mid"], "emoji": "+1"}, {"op": "send", "to": "bob", "body": 0}):
        rep = dispatch(app.gateway_ops, dict(frame, id=7), me)
        assert (rep["op"], rep["code"], rep["id"]) == ("error", "rate_limited", 7), rep
    app.monotonic.t += 1.0
    req = dispatch(app.gateway_ops, {"op": "react", "mid": m["mid"], "emoji": "+1", "on": False, "cmid": "c"}, me)
    assert (req.kind, req.ref, req.body, req.cmid) == ("reaction", m["mid"], {"emoji": "+1", "on": False}, "c")
    req = dispatch(app.gateway_ops, {"op": "recall", "mid": m["mid"]}, me)
    assert (req.kind, req.ref, req.body, req.body_json) == ("recall", m["mid"], None, "null")
    rep = dispatch(app.gateway_ops, {"op": "send", "to": "bob", "body": 0, "mentions": ["bob"], "id": 8}, me)
    assert (rep["code"], rep["id"]) == ("bad_request", 8) and "mentions" in rep["message"]


def test_sync_after_retention_purged_everything_says_no_more(app):
    """Seqs are never reused: a sync below head whose entries all expired answers no
    entries, oldest 0 and more false (true would make a client sync forever)."""
    users(app, "alice", "bob")
    app.contacts.request("alice", "bob")
    app.contacts.accept("bob", "alice")
    for n in range(3):
        send(app, "alice", to="bob", body=f"m{n}")
    while app.store.purge_messages(now_ms() + 1, 10)["messages"]:
        pass
    reply = app.messaging.sync("bob", 0, 2)
    assert (reply["msgs"], reply["more"], reply["oldest"], reply["head"]) == ([], False, 0, 3)
    # entries stored after the purge come back, and only they count
    send(app, "alice", to="bob", body="new")
    reply = app.messaging.sync("bob", 0, 2)
    assert [m["body"] for m in reply["msgs"]] == ["new"]
    assert (reply["more"], reply["oldest"], reply["head"]) == (False, 4, 4)
