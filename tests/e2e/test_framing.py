"""Framing (binary and line mode), ids, reply order, bad_frame / too_large / bad_json.

Contract: PROTOCOL.md "Framing (API and gateway)" and "Requests and replies".
"""

import json
import struct
import time

import pytest

from harness.servers import running_server
from harness.users import PASSWORD, new_user, unique_name

pytestmark = pytest.mark.timeout(60)

MAX_FRAME = 65536


def padded(obj, size):
    """obj with a "pad" field so that its compact JSON encoding is exactly size bytes."""
    base = dict(obj, pad="")
    n = len(json.dumps(base, separators=(",", ":")).encode())
    assert n <= size
    base["pad"] = "x" * (size - n)
    data = json.dumps(base, separators=(",", ":")).encode()
    assert len(data) == size
    return data


@pytest.fixture
def user(server):
    return new_user(server, "frm")


@pytest.fixture
def gw(user):
    c = user.connect()
    yield c
    c.close()


# ---------------------------------------------------------------- binary framing errors

@pytest.mark.parametrize("where", ["api", "gateway"])
def test_zero_length_frame_is_bad_frame_and_closes(server, user, where):
    c = server.api() if where == "api" else user.connect()
    with c:
        c.send_raw(struct.pack(">I", 0))
        frames = c.expect_close(5)
        errors = [f for f in frames if f["op"] == "error"]
        assert errors and errors[0]["code"] == "bad_frame", frames


@pytest.mark.parametrize("where", ["api", "gateway"])
def test_header_over_max_frame_is_too_large_and_closes(server, user, where):
    c = server.api() if where == "api" else user.connect()
    with c:
        # only the header: the server must judge the length without waiting for the body
        c.send_raw(struct.pack(">I", MAX_FRAME + 1))
        frames = c.expect_close(5)
        errors = [f for f in frames if f["op"] == "error"]
        assert errors and errors[0]["code"] == "too_large", frames


def test_huge_header_is_too_large(server):
    with server.api() as c:
        c.send_raw(struct.pack(">I", 0x7FFFFFFF))
        frames = c.expect_close(5)
        assert [f["code"] for f in frames if f["op"] == "error"][:1] == ["too_large"], frames


def test_frame_of_exactly_max_frame_is_accepted(server, user):
    with server.api() as c:
        c.send_frame(padded({"op": "profile", "id": 7, "token": user.token}, MAX_FRAME))
        rep = c.read_reply(7)
        assert rep["op"] == "ok" and rep["user"] == user.name, rep
    with user.connect() as g:
        g.send_frame(padded({"op": "ping", "id": "big"}, MAX_FRAME))
        assert g.read_reply("big")["op"] == "pong"


def test_frame_split_across_many_writes(server, user):
    with server.api() as c:
        data = c.encode({"op": "profile", "id": 1, "token": user.token})
        for i in range(len(data)):
            c.send_raw(data[i : i + 1])
        assert c.read_reply(1)["op"] == "ok"


def test_many_frames_in_one_write(server, user):
    with server.api() as c:
        blob = b"".join(c.encode({"op": "profile", "id": i, "token": user.token}) for i in range(1, 21))
        c.send_raw(blob)
        for i in range(1, 21):
            frame = c.read_frame()
            assert frame["id"] == i and frame["op"] == "ok", frame


# ---------------------------------------------------------------- bad_json keeps the connection

BAD_PAYLOADS = [
    pytest.param(b"{not json", id="invalid-json"),
    pytest.param(b'{"op": "profile"', id="truncated-json"),
    pytest.param(b"[1, 2, 3]", id="array"),
    pytest.param(b'"just a string"', id="string"),
    pytest.param(b"42", id="number"),
    pytest.param(b"null", id="null"),
    pytest.param(b'{"op": "profile", "token": "\xff\xfe"}', id="invalid-utf8"),
    pytest.param(b'{"op": "x"} trailing', id="trailing-garbage"),
]


@pytest.mark.parametrize("payload", BAD_PAYLOADS)
def test_bad_json_api_binary_connection_stays_usable(server, user, payload):
    with server.api() as c:
        c.send_frame(payload)
        err = c.read_frame()
        assert err["op"] == "error" and err["code"] == "bad_json", err
        assert isinstance(err.get("message"), str)
        rep = c.call("profile", token=user.token)
        assert rep["user"] == user.name


@pytest.mark.parametrize("payload", BAD_PAYLOADS)
def test_bad_json_line_mode_connection_stays_usable(server, user, payload):
    with server.api(mode="line") as c:
        # the first frame puts the connection in line mode
        c.call("profile", token=user.token)
        c.send_frame(payload)
        err = c.read_frame()
        assert err["op"] == "error" and err["code"] == "bad_json", err
        assert c.call("profile", token=user.token)["user"] == user.name


@pytest.mark.parametrize("payload", BAD_PAYLOADS[:4] + BAD_PAYLOADS[6:7])
def test_bad_json_gateway_connection_stays_usable(gw, payload):
    gw.send_frame(payload)
    err = gw.read_frame()
    assert err["op"] == "error" and err["code"] == "bad_json", err
    gw.sync_point()


# ---------------------------------------------------------------- line mode

def test_line_mode_answers_in_line_mode(server, user):
    with server.api(mode="line") as c:
        c.send_raw(b'{"op":"profile","id":1,"token":"' + user.token.encode() + b'"}\n')
        deadline = time.monotonic() + 5
        while b"\n" not in c.buf:
            c._recv_more(deadline)
        line = bytes(c.buf[: c.buf.index(b"\n")])
        assert line.startswith(b"{"), line[:80]
        obj = json.loads(line)
        assert obj["id"] == 1 and obj["op"] == "ok"


def test_line_mode_crlf_and_blank_lines(server, user):
    with server.api(mode="line") as c:
        tok = json.dumps(user.token).encode()
        c.send_raw(b'{"op":"profile","id":1,"token":' + tok + b"}\r\n")
        c.send_raw(b"\n\r\n\n")
        c.send_raw(b'{"op":"profile","id":2,"token":' + tok + b"}\n")
        assert c.read_frame()["id"] == 1
        second = c.read_frame()
        assert second["id"] == 2 and second["op"] == "ok", second


def test_line_mode_gateway(user):
    with user.connect(mode="line") as g:
        assert g.call("ping", expect="pong")


def test_line_longer_than_max_frame_is_too_large(server):
    with server.api(mode="line") as c:
        line = padded({"op": "profile", "id": 1, "token": "t"}, MAX_FRAME + 100)
        c.send_raw(line + b"\n")
        frames = c.expect_close(5)
        assert [f["code"] for f in frames if f["op"] == "error"][:1] == ["too_large"], frames


def test_unterminated_line_over_max_frame_is_too_large(server):
    """The server must not wait for a newline that never comes once max_frame is passed."""
    with server.api(mode="line") as c:
        c.send_raw(b'{"op":"profile","pad":"' + b"y" * (MAX_FRAME + 1000))
        frames = c.expect_close(5)
        assert [f["code"] for f in frames if f["op"] == "error"][:1] == ["too_large"], frames


def test_long_line_under_max_frame_is_accepted(server, user):
    with server.api(mode="line") as c:
        c.send_raw(padded({"op": "profile", "id": 3, "token": user.token}, MAX_FRAME - 100) + b"\n")
        assert c.read_reply(3)["op"] == "ok"


# ---------------------------------------------------------------- ids, order, unknown fields

@pytest.mark.parametrize("rid", [1, 0, -5, 2**40, "abc", "", "x" * 64, "ünïcødé"])
def test_id_is_echoed(server, user, rid):
    with server.api() as c:
        rep = c.request("profile", id=rid, token=user.token)
        assert rep["op"] == "ok" and rep["id"] == rid and type(rep["id"]) is type(rid)
        err = c.request("profile", id=rid, token="no-such-token")
        assert err["op"] == "error" and err["id"] == rid
    with user.connect() as g:
        assert g.request("ping", id=rid)["op"] == "pong"


def test_id_string_over_64_chars_is_bad_request(server, user):
    with server.api() as c:
        c.send_frame({"op": "profile", "id": "x" * 65, "token": user.token})
        rep = c.read_frame()
        assert rep["op"] == "error" and rep["code"] == "bad_request", rep
        assert "id" in rep["message"].lower()
        # the connection stays usable
        assert c.call("profile", token=user.token)["user"] == user.name


@pytest.mark.parametrize("bad", [[1], {"a": 1}, 1.5, True])
def test_id_of_wrong_type_is_bad_request(server, user, bad):
    with server.api() as c:
        c.send_frame({"op": "profile", "id": bad, "token": user.token})
        rep = c.read_frame()
        assert rep["op"] == "error" and rep["code"] == "bad_request", rep
        assert c.call("profile", token=user.token)["user"] == user.name


def test_request_without_id_gets_reply(server, user):
    with server.api() as c:
        c.send_frame({"op": "profile", "token": user.token})
        rep = c.read_frame()
        assert rep["op"] == "ok" and rep["user"] == user.name
        assert rep.get("id") is None


def test_several_requests_replies_in_order(server, user):
    """Pipelined requests of mixed outcome (ok, errors, slow argon2 login) come back in order."""
    other = unique_name("ord")
    with server.api() as c:
        plan = [
            ("register", {"user": other, "password": PASSWORD}, "ok"),
            ("login", {"user": other, "password": PASSWORD}, "ok"),
            ("profile", {"token": "nope"}, "error"),
            ("profile", {"token": user.token}, "ok"),
            ("login", {"user": other, "password": "wrong-password"}, "error"),
            ("nosuchop", {}, "error"),
            ("profile", {"token": user.token, "user": other}, "ok"),
        ]
        ids = []
        for n, (op, fields, _) in enumerate(plan):
            rid = f"r{n}" if n % 2 else n
            c.send_request(op, id=rid, **fields)
            ids.append(rid)
        got = [c.read_frame(10) for _ in plan]
        assert [g.get("id") for g in got] == ids, got
        assert [g["op"] for g in got] == [p[2] for p in plan], got
        assert got[3]["user"] == user.name and got[6]["user"] == other


def test_unknown_fields_ignored(server, user):
    with server.api() as c:
        name = unique_name("unk")
        c.call("register", user=name, password=PASSWORD, colour="blue", extra={"a": [1]})
        rep = c.call("login", user=name, password=PASSWORD, x=1, y=None)
        assert rep["user"] == name
        assert c.call("profile", token=rep["token"], whatever=True)["user"] == name
    with user.connect() as g:
        assert g.call("ping", expect="pong", foo="bar")
        g.call("sync", expect="sync", since=0, unknown=[1, 2])


def test_gateway_replies_in_order(user):
    with user.connect() as g:
        ids = [g.send_request("ping") if i % 2 else g.send_request("sync", since=0) for i in range(10)]
        got = [g.read_frame() for _ in ids]
        assert [f["id"] for f in got] == ids
        assert [f["op"] for f in got] == ["sync" if i % 2 == 0 else "pong" for i in range(10)]


def test_missing_op_is_bad_request(server, user):
    with server.api() as c:
        c.send_frame({"id": 1, "token": user.token})
        rep = c.read_frame()
        assert rep["op"] == "error" and rep["code"] == "bad_request", rep
        assert "op" in rep["message"].lower()
        assert c.call("profile", token=user.token)


def test_op_of_wrong_type_is_bad_request(server, user):
    with server.api() as c:
        c.send_frame({"op": 5, "id": 2})
        rep = c.read_frame()
        assert rep["op"] == "error" and rep["code"] in ("bad_request",), rep
        assert c.call("profile", token=user.token)


# ---------------------------------------------------------------- a configured max_frame

@pytest.fixture(scope="module")
def small_frames(tmp_path_factory):
    config = {"limits": {"max_frame": 1024}}
    with running_server("embedded", tmp_path_factory.mktemp("smallframe"), config, name="smallframe") as srv:
        yield srv


def test_configured_max_frame(small_frames):
    u = new_user(small_frames, "sf")
    with small_frames.api() as c:
        c.send_frame(padded({"op": "profile", "id": 1, "token": u.token}, 1024))
        assert c.read_reply(1)["op"] == "ok"
        c.send_frame(padded({"op": "profile", "id": 2, "token": u.token}, 1025))
        frames = c.expect_close(5)
        assert [f["code"] for f in frames if f["op"] == "error"][:1] == ["too_large"], frames
    with u.connect(mode="line") as g:
        # a send that is within the 16 KiB body rule but over this server's max_frame
        g.send_raw(padded({"op": "send", "id": 3, "to": u.name, "body": "b"}, 2000) + b"\n")
        frames = g.expect_close(5)
        assert [f["code"] for f in frames if f["op"] == "error"][:1] == ["too_large"], frames
