"""The core's one dispatcher (imsrv/core/dispatch.py) and a gateway session's opening
(App.open_session), without sockets: the same steps and the same error translation for
API and gateway ops, ``send`` included; what the servers give the core at construction
(send path, gateway choice, limits, timer)."""
import io

import pytest

from imsrv import config, logs
from imsrv.backends import open_store
from imsrv.backends.base import OutcomeUnknown, StoreError
from imsrv.backends.memory import LocalHub
from imsrv.core.app import App
from imsrv.core.dispatch import replies_in_order
from imsrv.core.messaging import SendRequest
from imsrv.core.ratelimit import BucketMap, Limits, LoginThrottle
from imsrv.protocol import schemas


class Conn:
    """What a Session and open_session write to."""
    closing = False
    peer = "10.0.0.9:5555"

    def __init__(self):
        self.sent, self.last = [], None

    def send(self, obj):
        self.sent.append(obj)

    def close_with(self, obj):
        self.last, self.closing = obj, True


class SendPath:
    def __init__(self):
        self.batches = []

    def forward(self, reqs):
        self.batches.append(reqs)
        for req in reqs:
            req.result = {"op": "ack", "mid": 1, "seq": 1, "ts": 0}


@pytest.fixture
def log():
    stream = io.StringIO()
    logs.configure("info", stream)
    yield stream
    logs.configure("info", __import__("sys").stderr)


def make_app(send_path=None, choose_gateway=None, limits=None, config_path=None):
    overrides = {("accounts", "argon2_time_cost"): 1, ("accounts", "argon2_memory_cost"): 8192}
    cfg = config.load(config_path, env={"IMSRV_TEST_HOOKS": "1"}, overrides=overrides)
    store = open_store("sqlite:///:memory:")
    store.migrate()
    return App(cfg, store, LocalHub(), send_path=send_path, choose_gateway=choose_gateway, limits=limits)


def logged_in(app, user):
    app.accounts.register(user, "password1")
    return app.accounts.login(user, "password1", "phone", "10.0.0.1")["token"]


def open_session(app, token, **fields):
    conn = Conn()
    return app.open_session(conn, {"op": "auth", "token": token, "id": 1, **fields}), conn


def test_the_schemas_have_one_home():
    app = make_app()
    assert set(app.api_ops) == set(schemas.API_SCHEMAS)
    assert set(app.gateway_ops) == set(schemas.GATEWAY_SCHEMAS)
    assert all(app.api_ops[op].schema is schemas.API_SCHEMAS[op] for op in app.api_ops)
    assert {op for op, entry in app.api_ops.items() if not entry.needs_token} == schemas.NO_TOKEN


def test_api_and_gateway_ops_share_the_steps():
    app = make_app(choose_gateway=lambda: {"gateway": "gw:1", "gateways": ["gw:1"]})
    token = logged_in(app, "alice")
    rep = app.api_request({"op": "login", "user": "alice", "password": "password1", "id": "r1"}, "10.0.0.1")
    assert (rep["op"], rep["id"], rep["gateway"], rep["gateways"]) == ("ok", "r1", "gw:1", ["gw:1"])
    assert app.api_request({"op": "friends", "id": 2}, "a")["code"] == "unauthorized"
    assert app.api_request({"op": "nope", "id": 3}, "a")["message"] == "unknown op 'nope' on the API service"
    session, _ = open_session(app, token)
    dispatch = app.dispatcher.dispatch
    assert dispatch(app.gateway_ops, {"op": "ping", "id": 4}, session) == {"op": "pong", "id": 4}
    rep = dispatch(app.gateway_ops, {"op": "nope", "id": 6}, session)
    assert (rep["code"], rep["id"], rep["message"]) == ("unknown_op", 6, "unknown op 'nope' on the gateway")
    rep = dispatch(app.gateway_ops, {"op": "ping", "id": [1]}, session)
    assert (rep["code"], "id" in rep) == ("bad_request", False)   # an id that cannot be echoed
    assert dispatch(app.gateway_ops, {"op": "auth", "token": token, "id": 5}, session)["code"] == "bad_request"
    assert dispatch(app.gateway_ops, {"op": "typing", "to": "alice"}, session) is None   # no reply


def test_a_send_is_a_slot_answered_once_its_result_is_set():
    path = SendPath()
    app = make_app(send_path=path)
    session, _ = open_session(app, logged_in(app, "alice"))
    req = app.dispatcher.dispatch(app.gateway_ops, {"op": "send", "to": "alice", "body": "hi", "id": 9}, session)
    assert isinstance(req, SendRequest) and (req.rid, req.session, req.body_json) == (9, session, '"hi"')
    app.forward([req])
    assert path.batches == [[req]]
    other = SendRequest("alice", "x", '"x"')
    other.result = OutcomeUnknown("no forwarder answered")
    replies, unknown = replies_in_order([{"op": "pong"}, req, other, {"op": "pong", "id": 3}])
    assert replies == [{"op": "pong"}, {"op": "ack", "mid": 1, "seq": 1, "ts": 0, "id": 9}] and unknown is other


def test_the_limits_are_given_at_construction():
    app = make_app(limits=Limits(BucketMap(rate=0.001, burst=1), LoginThrottle(config.load(env={}).limits)))
    session, _ = open_session(app, logged_in(app, "alice"))
    send = {"op": "send", "to": "alice", "body": "hi"}
    assert isinstance(app.dispatcher.dispatch(app.gateway_ops, send, session), SendRequest)
    rep = app.dispatcher.dispatch(app.gateway_ops, send, session)
    assert rep["code"] == "rate_limited" and rep["retry_after"] >= 1


def test_errors_are_translated_once_and_bugs_logged(log, tmp_path):
    (tmp_path / "hooked.toml").write_text('[test]\nraise_in = "friends"\n')
    app = make_app(config_path=str(tmp_path / "hooked.toml"))
    token = logged_in(app, "alice")
    rep = app.api_request({"op": "friends", "token": token, "id": "bug1"}, "10.0.0.1")
    assert (rep["code"], rep["id"]) == ("internal", "bug1")
    line = [ln for ln in log.getvalue().splitlines() if "event=internal_error" in ln][0]
    for field in ("service=api", "op=friends", "user=alice", "id=bug1", "TestHookError"):
        assert field in line, line

    def down(*args):
        raise StoreError("disk on fire")
    app = make_app()
    token = logged_in(app, "alice")
    app.store.list_friends = down
    rep = app.api_request({"op": "friends", "token": token, "id": 2}, "10.0.0.1")
    assert rep["code"] == "unavailable" and "StoreError" in rep["message"]
    assert "event=backend_unavailable service=api op=friends id=2" in log.getvalue()


def test_open_session_answers_first_then_what_waited():
    app = make_app()
    token = logged_in(app, "alice")
    conn = Conn()
    assert app.open_session(conn, {"op": "ping", "id": 1}) is None
    assert conn.last["code"] == "unauthorized" and conn.closing
    conn = Conn()
    assert app.open_session(conn, {"op": "auth", "token": 5, "id": 1}) is None
    assert conn.sent[0]["code"] == "bad_request" and not conn.closing   # malformed: may try again
    conn = Conn()
    assert app.open_session(conn, {"op": "auth", "token": "not-a-token"}) is None
    assert conn.last["code"] == "unauthorized" and app.hub.sessions("alice") == []
    session, conn = open_session(app, token, device="pc")
    assert conn.sent == [{"op": "ok", "user": "alice", "head": 0, "max_frame": 65536, "id": 1}]
    assert app.hub.sessions("alice") == [session] and session.device == "pc"
    app.close_session(session)
    assert app.hub.sessions("alice") == []
