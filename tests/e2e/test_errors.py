"""Error codes, table-driven: bad_request for every field of every op, unknown_op,
unauthorized (API and gateway), and the rule that no error but a framing one closes.

Contract: PROTOCOL.md "Requests and replies" (error table), "API ops", "Gateway ops".
"""

import pytest

from harness.servers import ADMIN_KEY
from harness.users import PASSWORD, befriend, make_group, new_user, unique_name

pytestmark = pytest.mark.timeout(60)

# field kinds and values of the wrong type for each kind
WRONG = {
    "str": [123, ["x"], {"x": 1}, True],
    "list": ["x", 5, {"x": 1}],
    "list_str": ["x", 5, [1], [["a"]]],
    "int": ["x", 1.5, [1], True],
    "any": [],
    "mid": [[1], {"x": 1}],          # a mid's own type is the server's choice; these are never one
    "cmid": [[1], {"x": 1}],
    "user_or_list": [123, {"x": 1}, [1]],
}

# op -> list of (field, kind, required); "with|group" style entries are one-of groups
API_OPS = {
    "register": [("user", "str", True), ("password", "str", True), ("name", "str", False)],
    "login": [("user", "str", True), ("password", "str", True), ("device", "str", False)],
    "logout": [("token", "str", True)],
    "change_password": [("token", "str", True), ("password", "str", True), ("new_password", "str", True)],
    "delete_account": [("token", "str", True), ("password", "str", True)],
    "profile": [("token", "str", True), ("user", "str", False)],
    "set_profile": [("token", "str", True), ("name", "str", False), ("text", "str", False)],
    "friend_request": [("token", "str", True), ("to", "str", True), ("message", "str", False)],
    "friend_requests": [("token", "str", True)],
    "friend_accept": [("token", "str", True), ("user", "str", True)],
    "friend_reject": [("token", "str", True), ("user", "str", True)],
    "friend_remove": [("token", "str", True), ("user", "str", True)],
    "friends": [("token", "str", True)],
    "block": [("token", "str", True), ("user", "str", True)],
    "unblock": [("token", "str", True), ("user", "str", True)],
    "group_create": [("token", "str", True), ("name", "str", True), ("members", "list_str", False)],
    "group_invite": [("token", "str", True), ("group", "str", True), ("users", "list_str", True)],
    "group_leave": [("token", "str", True), ("group", "str", True)],
    "group_members": [("token", "str", True), ("group", "str", True)],
    "groups": [("token", "str", True)],
    "history": [("token", "str", True), ("with", "str", "with|group"), ("group", "str", False),
                ("before", "mid", False), ("limit", "int", False)],
    "notify": [("admin_key", "str", True), ("to", "user_or_list", True), ("body", "any", True)],
}

GW_OPS = {
    "send": [("to", "str", "to|group"), ("group", "str", False), ("body", "any", True), ("cmid", "cmid", False)],
    "sync": [("since", "int", True), ("limit", "int", False)],
    "presence": [("users", "list_str", True)],
    "status": [("status", "str", True), ("text", "str", False)],
    "typing": [("to", "str", True)],
    "read": [("with", "str", "with|group"), ("group", "str", False), ("seq", "int", True)],
}


class Ctx:
    pass


@pytest.fixture(scope="module")
def ctx(server):
    c = Ctx()
    c.server = server
    c.a = new_user(server, "ea")
    c.b = new_user(server, "eb")
    c.stranger = new_user(server, "es")
    befriend(c.a, c.b)
    c.gid = make_group(c.a, [c.b], name="errors")
    return c


def api_valid(ctx, op):
    """A valid request body for op (used as the base that each case breaks in one field)."""
    a, b = ctx.a, ctx.b
    v = {
        "register": {"user": unique_name("ev"), "password": PASSWORD, "name": "Ev"},
        "login": {"user": a.name, "password": a.password, "device": "dev"},
        "logout": {"token": a.token},
        # never carried out: each case breaks one field, so the account stays as it is
        "change_password": {"token": a.token, "password": a.password, "new_password": PASSWORD + "x"},
        "delete_account": {"token": a.token, "password": a.password},
        "profile": {"token": a.token, "user": b.name},
        "set_profile": {"token": a.token, "name": "A", "text": "t"},
        "friend_request": {"token": a.token, "to": ctx.stranger.name, "message": "m"},
        "friend_requests": {"token": a.token},
        "friend_accept": {"token": a.token, "user": ctx.stranger.name},
        "friend_reject": {"token": a.token, "user": ctx.stranger.name},
        "friend_remove": {"token": a.token, "user": ctx.stranger.name},
        "friends": {"token": a.token},
        "block": {"token": a.token, "user": ctx.stranger.name},
        "unblock": {"token": a.token, "user": ctx.stranger.name},
        "group_create": {"token": a.token, "name": "g", "members": [b.name]},
        "group_invite": {"token": a.token, "group": ctx.gid, "users": [ctx.stranger.name]},
        "group_leave": {"token": a.token, "group": ctx.gid},
        "group_members": {"token": a.token, "group": ctx.gid},
        "groups": {"token": a.token},
        "history": {"token": a.token, "with": b.name, "limit": 5},
        "notify": {"admin_key": ADMIN_KEY, "to": a.name, "body": {"x": 1}},
    }
    return dict(v[op])


def gw_valid(ctx, op):
    a, b = ctx.a, ctx.b
    v = {
        "send": {"to": b.name, "body": "hello", "cmid": unique_name("cm")},
        "sync": {"since": 0, "limit": 10},
        "presence": {"users": [b.name]},
        "status": {"status": "online", "text": "here"},
        "typing": {"to": b.name},
        "read": {"with": b.name, "seq": 1},
    }
    return dict(v[op])


def _cases(table):
    missing, wrong = [], []
    for op, fields in table.items():
        for field, kind, required in fields:
            if required is True:
                missing.append(pytest.param(op, (field,), id=f"{op}-{field}"))
            elif isinstance(required, str):  # one-of: drop all alternatives
                missing.append(pytest.param(op, tuple(required.split("|")), id=f"{op}-{required}"))
            for n, bad in enumerate(WRONG[kind]):
                wrong.append(pytest.param(op, field, bad, id=f"{op}-{field}-{n}"))
    return missing, wrong


API_MISSING, API_WRONG = _cases(API_OPS)
GW_MISSING, GW_WRONG = _cases(GW_OPS)
# an absent token is not a bad_request: "unauthorized | no valid token" (see
# test_api_missing_token_is_unauthorized)
API_MISSING = [p for p in API_MISSING if p.values[1] != ("token",)]


def _assert_bad_request(rep, fields):
    assert rep["op"] == "error" and rep["code"] == "bad_request", rep
    msg = rep.get("message", "")
    assert any(f in msg for f in fields), f"message does not name {fields}: {rep!r}"


# ---------------------------------------------------------------- API bad_request

def test_api_valid_bases_are_accepted(ctx):
    """Sanity check of the table's base requests (those without lasting side effects)."""
    with ctx.server.api() as c:
        for op in ("profile", "friends", "friend_requests", "groups", "group_members", "history"):
            c.call(op, **api_valid(ctx, op))


@pytest.mark.parametrize("op,fields", API_MISSING)
def test_api_missing_field_is_bad_request(ctx, op, fields):
    req = api_valid(ctx, op)
    for f in fields:
        req.pop(f, None)
    with ctx.server.api() as c:
        rep = c.request(op, **req)
        _assert_bad_request(rep, fields)
        # the connection stays usable
        c.call("profile", token=ctx.b.token)


@pytest.mark.parametrize("op,field,bad", API_WRONG)
def test_api_wrong_type_is_bad_request(ctx, op, field, bad):
    req = api_valid(ctx, op)
    if field == "group" and op == "history":
        req.pop("with", None)
    req[field] = bad
    with ctx.server.api() as c:
        rep = c.request(op, **req)
        _assert_bad_request(rep, (field,))
        c.call("profile", token=ctx.b.token)


# ---------------------------------------------------------------- gateway bad_request

@pytest.mark.parametrize("op,fields", GW_MISSING)
def test_gateway_missing_field_is_bad_request(ctx, op, fields):
    req = gw_valid(ctx, op)
    for f in fields:
        req.pop(f, None)
    with ctx.a.connect(device=unique_name("d")) as g:
        rep = g.request(op, **req)
        _assert_bad_request(rep, fields)
        g.sync_point()


@pytest.mark.parametrize("op,field,bad", GW_WRONG)
def test_gateway_wrong_type_is_bad_request(ctx, op, field, bad):
    req = gw_valid(ctx, op)
    if field == "group":
        req.pop("to", None)
        req.pop("with", None)
    req[field] = bad
    with ctx.a.connect(device=unique_name("d")) as g:
        rep = g.request(op, **req)
        _assert_bad_request(rep, (field,))
        g.sync_point()


@pytest.mark.parametrize("field,bad", [("token", 123), ("token", ["t"]), ("device", 5), ("device", ["d"]),
                                       ("device", "")])
def test_gateway_auth_wrong_type_is_bad_request(ctx, field, bad):
    """A malformed auth is a bad_request, and only a framing error closes: the same
    connection can then authenticate."""
    device = unique_name("d")
    req = {"token": ctx.a.token, "device": device}
    req[field] = bad
    with ctx.server.gateway() as g:
        _assert_bad_request(g.request("auth", **req), (field,))
        assert g.call("auth", token=ctx.a.token, device=device)["user"] == ctx.a.name
        g.sync_point()


@pytest.mark.parametrize("token", [None, "absent"], ids=["null", "absent"])
def test_gateway_auth_missing_token_is_unauthorized_then_closed(ctx, token):
    """No token is "no valid token" (unauthorized), as on the API, and an auth the server
    does not accept closes the connection."""
    with ctx.server.gateway() as g:
        fields = {"device": "x"} if token == "absent" else {"device": "x", "token": None}
        rep = g.request("auth", **fields)
        assert rep["op"] == "error" and rep["code"] == "unauthorized", rep
        assert g.expect_close(5) == []


# ---------------------------------------------------------------- ranges and limits

@pytest.mark.parametrize("status", ["offline", "sleeping", "", "ONLINE-ish"])
def test_status_out_of_range(ctx, status):
    with ctx.a.connect(device=unique_name("d")) as g:
        _assert_bad_request(g.request("status", status=status), ("status",))


def test_status_text_limit(ctx):
    with ctx.a.connect(device=unique_name("d")) as g:
        g.call("status", status="online", text="t" * 4096)
        _assert_bad_request(g.request("status", status="away", text="t" * 4097), ("text",))


@pytest.mark.parametrize("since", [-1])
def test_sync_since_out_of_range(ctx, since):
    with ctx.a.connect(device=unique_name("d")) as g:
        _assert_bad_request(g.request("sync", since=since), ("since",))


@pytest.mark.parametrize("limit", [0, -1])
def test_sync_limit_out_of_range(ctx, limit):
    with ctx.a.connect(device=unique_name("d")) as g:
        _assert_bad_request(g.request("sync", since=0, limit=limit), ("limit",))


@pytest.mark.parametrize("limit", [1001, 5000, 2 ** 40])
def test_sync_limit_over_1000_is_bad_request(ctx, limit):
    """`limit` max 1000: a larger one is out of range (bad_request naming `limit`), not
    clamped (a clamp could not be told from a full page here anyway: 1000 entries do not
    fit in one 64 KiB frame, and a sync reply is cut to fit)."""
    with new_user(ctx.server, "sl").connect() as g:
        _assert_bad_request(g.request("sync", since=0, limit=limit), ("limit",))
        rep = g.call("sync", expect="sync", since=0, limit=1000)   # the maximum itself is fine
        assert (rep["msgs"], rep["head"], rep["more"]) == ([], 0, False), rep


def test_body_size_limit_16k(ctx):
    """body: any JSON value whose encoding is at most 16 KiB (16384 bytes)."""
    with ctx.a.connect(device=unique_name("d")) as g, ctx.b.connect(device=unique_name("d")) as gb:
        ok_body = "a" * (16384 - 2)  # encodes as 16384 bytes with its quotes
        ack = g.send_msg(ok_body, to=ctx.b.name)
        assert gb.wait_push("msg", mid=ack["mid"])["body"] == ok_body
        too_big = "a" * (16384 - 1)
        _assert_bad_request(g.request("send", to=ctx.b.name, body=too_big), ("body",))
        _assert_bad_request(g.request("send", to=ctx.b.name, body={"k": "v" * 17000}), ("body",))
        # nothing was stored for the rejected sends
        gb.sync_point()
        msgs, _ = gb.sync_all(gb.head)
        assert [m["mid"] for m in msgs] == [ack["mid"]]


@pytest.mark.parametrize("body", [{"a": [1, 2, {"b": None}]}, [1, "two"], "text", 42, 3.5, True, None],
                         ids=["object", "array", "string", "int", "float", "bool", "null"])
def test_body_any_json_value(ctx, body):
    with ctx.a.connect(device=unique_name("d")) as g, ctx.b.connect(device=unique_name("d")) as gb:
        ack = g.send_msg(body, to=ctx.b.name)
        push = gb.wait_push("msg", mid=ack["mid"])
        assert "body" in push and push["body"] == body and type(push["body"]) is type(body)


def test_text_limit_in_send_body_is_not_4096(ctx):
    """The 4096-character text limit is for texts, not message bodies (16 KiB)."""
    with ctx.a.connect(device=unique_name("d")) as g:
        g.send_msg({"text": "x" * 8000}, to=ctx.b.name)


# ---------------------------------------------------------------- unknown_op

@pytest.mark.parametrize("op", ["nosuchop", "send", "sync", "auth", "PROFILE", ""])
def test_api_unknown_op(ctx, op):
    with ctx.server.api() as c:
        rep = c.request(op, token=ctx.a.token)
        assert rep["op"] == "error" and rep["code"] == "unknown_op", rep
        c.call("profile", token=ctx.a.token)


@pytest.mark.parametrize("op", ["nosuchop", "register", "login", "friends", "notify"])
def test_gateway_unknown_op(ctx, op):
    with ctx.a.connect(device=unique_name("d")) as g:
        rep = g.request(op, token=ctx.a.token)
        assert rep["op"] == "error" and rep["code"] == "unknown_op", rep
        g.sync_point()


# ---------------------------------------------------------------- unauthorized

TOKEN_OPS = [op for op, fields in API_OPS.items() if fields[0][0] == "token"]


@pytest.mark.parametrize("op", TOKEN_OPS)
def test_api_missing_token_is_unauthorized(ctx, op):
    """"unauthorized | no valid token": an absent token (or a null one) on every op that
    carries one is unauthorized, not bad_request; the connection stays usable."""
    req = api_valid(ctx, op)
    del req["token"]
    with ctx.server.api() as c:
        rep = c.error(op, "unauthorized", **req)
        assert "token" in rep["message"], rep
        c.error(op, "unauthorized", token=None, **req)
        c.call("profile", token=ctx.b.token)


LONG_TOKEN = "t" * 300


@pytest.mark.parametrize("op", TOKEN_OPS)
@pytest.mark.parametrize("token", ["not-a-real-token", "", LONG_TOKEN], ids=["bogus", "empty", "long"])
def test_api_bad_token_is_unauthorized(ctx, op, token):
    """Any string the server did not issue (the contract gives tokens no length: an empty or
    a very long one is simply not valid) is unauthorized, never bad_request."""
    req = api_valid(ctx, op)
    req["token"] = token
    with ctx.server.api() as c:
        c.error(op, "unauthorized", **req)
        c.call("profile", token=ctx.b.token)


@pytest.mark.parametrize("first", [
    {"op": "ping"},
    {"op": "send", "to": "someone", "body": "x"},
    {"op": "sync", "since": 0},
    {"op": "status", "status": "away"},
    {"op": "nosuchop"},
])
def test_gateway_op_before_auth_is_unauthorized_then_closed(ctx, first):
    with ctx.server.gateway() as g:
        rep = g.request(first["op"], **{k: v for k, v in first.items() if k != "op"})
        assert rep["op"] == "error" and rep["code"] == "unauthorized", rep
        g.expect_close(5)


def test_gateway_op_before_auth_line_mode(ctx):
    with ctx.server.gateway(mode="line") as g:
        rep = g.request("ping")
        assert rep["op"] == "error" and rep["code"] == "unauthorized", rep
        g.expect_close(5)


@pytest.mark.parametrize("token", ["not-a-real-token", "", LONG_TOKEN], ids=["bogus", "empty", "long"])
def test_gateway_auth_bad_token_is_unauthorized(ctx, token):
    with ctx.server.gateway() as g:
        rep = g.request("auth", token=token)
        assert rep["op"] == "error" and rep["code"] == "unauthorized", rep
        assert g.expect_close(5) == []


def test_gateway_auth_wrong_token_then_nothing_else(ctx):
    """A failed auth is answered unauthorized and the connection is closed: a request
    written right behind it (the same write) is never served, nothing else comes."""
    with ctx.server.gateway() as g:
        g.send_raw(g.encode({"op": "auth", "id": 1, "token": "bogus"})
                   + g.encode({"op": "sync", "id": 2, "since": 0})
                   + g.encode({"op": "ping", "id": 3}))
        rep = g.read_frame()
        assert rep["op"] == "error" and rep["code"] == "unauthorized" and rep["id"] == 1, rep
        assert g.expect_close(5) == []


def test_errors_do_not_close_gateway(ctx):
    """A sequence of business errors on one connection: it stays usable throughout."""
    with ctx.a.connect(device=unique_name("d")) as g:
        g.error("send", "forbidden", to=ctx.stranger.name, body="x")
        g.error("send", "bad_request", to=ctx.b.name)
        g.error("presence", "forbidden", users=[ctx.stranger.name])
        g.error("nosuchop", "unknown_op")
        g.sync_point()
        assert g.call("sync", expect="sync", since=0)["op"] == "sync"
