"""The WebSocket port (contract: port 7080, path /ws, one JSON object per text message; v1.1:
the web chat page at ``GET /``), on both deployments: every gateway of the distributed one
has its own (``server.ws_addrs``).

The WebSocket client here is written from RFC 6455 by hand (no library), so a bug in the
server's WebSocket library cannot hide behind the same library on the test side.  What the
port answers to plain HTTP other than /ws is imsrv.web.app's: compared with that app called
in this process on the server's config.
"""
import base64
import hashlib
import http.client
import json
import os
import socket
import struct
import urllib.error
import urllib.request
import wsgiref.util

import pytest

from harness.procs import wait_until
from harness.users import befriend, login, new_user, register, unique_name
from imsrv import config
from imsrv.web.app import make_app

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class WsClient:
    def __init__(self, addr, path="/ws", timeout=5.0, host="127.0.0.1", origin=None):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.buf = b""
        key = base64.b64encode(os.urandom(16))
        extra = b"Origin: " + origin.encode() + b"\r\n" if origin else b""
        self.sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() +
                          b"\r\nUpgrade: websocket\r\n" + extra +
                          b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                          b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = head
        self.status = int(head.split(b" ", 2)[1])
        if self.status == 101:
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            assert b"sec-websocket-accept: " + accept in head.lower().replace(accept.lower(), accept)

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.buf += data

    def send_frame(self, opcode, payload, fin=True):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send(self, obj):
        self.send_frame(TEXT, json.dumps(obj).encode())

    def read_frame(self):
        while len(self.buf) < 2:
            self._more()
        b0, b1 = self.buf[0], self.buf[1]
        n, off = b1 & 0x7F, 2
        if n == 126:
            while len(self.buf) < 4:
                self._more()
            n, off = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            while len(self.buf) < 10:
                self._more()
            n, off = struct.unpack(">Q", self.buf[2:10])[0], 10
        assert not b1 & 0x80, "server frames must not be masked"
        while len(self.buf) < off + n:
            self._more()
        payload, self.buf = self.buf[off:off + n], self.buf[off + n:]
        return b0 & 0x0F, payload

    def read(self):
        """Next JSON object (text message); skips nothing else silently."""
        op, payload = self.read_frame()
        assert op == TEXT, (op, payload)
        return json.loads(payload)

    def request(self, obj):
        self.send(obj)
        while True:
            m = self.read()
            if m.get("id") == obj.get("id"):
                return m

    def auth(self, token, device=None, rid=1):
        fields = {"device": device} if device else {}
        ok = self.request({"op": "auth", "token": token, "id": rid, **fields})
        assert ok["op"] == "ok", ok
        return ok

    def wait_op(self, op):
        """The next message of ``op``, skipping others (presence pushes and the like)."""
        while True:
            m = self.read()
            if m.get("op") == op:
                return m

    def close(self):
        self.sock.close()


@pytest.fixture
def ws(server):
    """ws(path="/ws", gateway=0, **WsClient kwargs): a WebSocket client of gateway
    ``gateway``'s WebSocket port (the embedded server has one: every index is it)."""
    made = []

    def connect(path="/ws", gateway=0, **kw):
        addrs = server.ws_addrs
        c = WsClient(addrs[gateway % len(addrs)], path, **kw)
        made.append(c)
        return c

    yield connect
    for c in made:
        c.close()


def test_handshake_only_on_the_ws_path(server, ws):
    for i in range(len(server.ws_ports)):
        assert ws("/nope", gateway=i).status == 404
        assert ws("/ws", gateway=i).status == 101


def test_chat_between_websocket_and_tcp_clients(server, ws):
    alice, bob = new_user(server, "wsa"), new_user(server, "wsb")
    befriend(alice, bob)
    a = ws()
    ok = a.request({"op": "auth", "token": alice.token, "id": 1})
    assert ok["op"] == "ok" and ok["user"] == alice.name and ok["head"] == 0
    assert ok["max_frame"] == 65536
    with bob.connect() as b:
        ack = a.request({"op": "send", "to": bob.name, "body": {"text": "hi from ws"}, "cmid": "w1", "id": 2})
        assert ack["op"] == "ack" and ack["seq"] == 1
        msg = b.wait_push("msg")
        assert msg["from"] == alice.name and msg["body"] == {"text": "hi from ws"} and msg["cmid"] == "w1"
        b.send_msg({"text": "hi back"}, to=alice.name)
        while True:
            m = a.read()
            if m["op"] == "msg":
                break
        assert m["from"] == bob.name and m["body"] == {"text": "hi back"} and m["seq"] == 2
    pong = a.request({"op": "ping", "id": 3})
    assert pong["op"] == "pong"


def test_first_message_must_be_auth(server, ws):
    c = ws()
    c.send({"op": "ping", "id": 1})
    err = c.read()
    assert err["op"] == "error" and err["code"] == "unauthorized" and err["id"] == 1
    op, _ = c.read_frame()
    assert op == CLOSE


def test_bad_json_keeps_the_connection_and_ping_frames_get_pongs(server, ws):
    user = new_user(server, "wsj")
    c = ws()
    c.request({"op": "auth", "token": user.token, "id": 1})
    c.send_frame(TEXT, b"{not json")
    err = c.read()
    assert err["op"] == "error" and err["code"] == "bad_json"
    c.send_frame(TEXT, b"[1, 2]")
    assert c.read()["code"] == "bad_json"
    c.send_frame(PING, b"hb")
    assert c.read_frame() == (PONG, b"hb")
    assert c.request({"op": "ping", "id": 2})["op"] == "pong"


def test_fragmented_message_is_one_frame(server, ws):
    user = new_user(server, "wsf")
    c = ws()
    c.request({"op": "auth", "token": user.token, "id": 1})
    raw = json.dumps({"op": "ping", "id": 9}).encode()
    c.send_frame(TEXT, raw[:5], fin=False)
    c.send_frame(0x0, raw[5:], fin=True)
    assert c.read() == {"op": "pong", "id": 9}


def test_message_over_max_frame_is_too_large_and_closes(server, ws):
    user = new_user(server, "wsl")
    c = ws()
    c.request({"op": "auth", "token": user.token, "id": 1})
    c.send_frame(TEXT, b'{"op":"ping","pad":"' + b"x" * 70000 + b'"}')
    err = c.read()
    assert err["op"] == "error" and err["code"] == "too_large"
    op, payload = c.read_frame()
    assert op == CLOSE and struct.unpack(">H", payload[:2])[0] == 1009


# ---------------------------------------------------------------- plain HTTP on the WebSocket port
def _http(server, method, path, headers=None):
    conn = http.client.HTTPConnection(*server.ws_addr, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _one_line(body):
    text = body.decode("utf-8")
    assert text.endswith("\n") and text.count("\n") == 1 and len(text) > 20, body
    return text


@pytest.mark.parametrize("path", ["/ws", "/ws?x=1"])
def test_plain_get_of_ws_is_426_upgrade_required(server, path):
    status, headers, body = _http(server, "GET", path)
    assert status == 426, (status, headers, body)
    assert headers.get("upgrade", "").lower() == "websocket", headers
    assert headers.get("content-type", "").startswith("text/plain"), headers
    assert "WebSocket" in _one_line(body)


def test_urllib_sees_426_with_an_explanation(server):
    url = "http://%s:%d/ws" % server.ws_addr
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url, timeout=5)
    assert e.value.code == 426
    assert "Upgrade: websocket" in _one_line(e.value.read())


def test_head_of_ws_is_426_without_body(server):
    status, headers, body = _http(server, "HEAD", "/ws")
    assert status == 426 and body == b"", (status, body)
    assert headers.get("upgrade", "").lower() == "websocket", headers


def test_post_to_ws_is_405(server):
    status, headers, body = _http(server, "POST", "/ws", {"Content-Length": "0"})
    assert status == 405 and headers.get("allow") == "GET", (status, headers)
    assert "POST" in _one_line(body)


def _app_answer(server, method, path):
    """(status, content-type, body) of imsrv.web.app's app, called here on the server's
    config, for ``method path``."""
    app = make_app(config.load(str(server.config_path), env={}), server.api_addr)
    environ = {}
    wsgiref.util.setup_testing_defaults(environ)
    environ.update(REQUEST_METHOD=method, PATH_INFO=path, HTTP_HOST="%s:%d" % server.ws_addr,
                   SERVER_NAME=server.host, SERVER_PORT=str(server.ws_port))
    got = {}

    def start_response(status, headers, exc_info=None):
        got["status"], got["headers"] = int(status.split()[0]), {k.lower(): v for k, v in headers}
    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return got["status"], got["headers"].get("content-type"), body


@pytest.mark.parametrize("path", ["/", "/wsx", "/no/such-file.txt"])
def test_other_paths_reach_the_web_app(server, path):
    """Every WebSocket port answers plain HTTP outside /ws with the web app (the page at /)."""
    want = _app_answer(server, "GET", path)
    assert want[0] in (200, 404), want
    for port in server.ws_ports:
        conn = http.client.HTTPConnection(server.host, port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            got = resp.status, resp.getheader("content-type"), resp.read()
        finally:
            conn.close()
        assert got == want, (port, got[:2], want[:2])


def test_head_of_the_page_is_its_get_without_the_body(server):
    status, ctype, body = _app_answer(server, "GET", "/")
    h_status, headers, h_body = _http(server, "HEAD", "/")
    assert (h_status, headers.get("content-type"), h_body) == (status, ctype, b"")
    if "content-length" in headers:
        assert int(headers["content-length"]) == len(body)


def test_keep_alive_then_ws_requests_on_the_same_connection(server):
    """HTTP keep-alive serves several requests on one connection; /ws later on it gets the
    refusals of a fresh connection, and a valid upgrade a 400 (browsers open a new
    connection for a WebSocket)."""
    conn = http.client.HTTPConnection(*server.ws_addr, timeout=5)
    try:
        for _ in range(2):
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            assert not resp.will_close
        conn.request("GET", "/ws")
        resp = conn.getresponse()
        assert resp.status == 426 and resp.getheader("upgrade") == "websocket"
        assert "WebSocket" in _one_line(resp.read())
        conn.request("GET", "/", headers={"Connection": "keep-alive"})
        conn.getresponse().read()
        conn.request("GET", "/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                            "Sec-WebSocket-Version": "13"})
        resp = conn.getresponse()
        assert resp.status == 400 and "first request" in _one_line(resp.read())
    finally:
        conn.close()


def _raw(server, data, timeout=5):
    """Send ``data`` on a fresh connection to the WebSocket port; -> all it answers."""
    with socket.create_connection(server.ws_addr, timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def test_no_http_request_is_400_with_the_hint(server):
    out = _raw(server, b"hello there\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400"), out
    assert b"not an HTTP request" in out and b"GET /ws" in out, out


def test_a_request_line_over_8_kib_is_414(server):
    out = _raw(server, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 414"), out[:200]


# ---------------------------------------------------------------- Origin
def test_origin_of_the_same_host_is_accepted(server, ws):
    host = "127.0.0.1:%d" % server.ws_port
    assert ws(host=host, origin="http://" + host).status == 101
    assert ws(host="localhost:%d" % server.ws_port, origin="http://LOCALHOST:%d" % server.ws_port).status == 101


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1:1", "null", "garbage"])
def test_origin_of_another_host_is_403(server, ws, origin):
    c = ws(host="127.0.0.1:%d" % server.ws_port, origin=origin)
    assert c.status == 403, c.head
    while b"\n" not in c.buf:
        c._more()
    assert b"websocket_origins" in c.buf, c.buf


def test_configured_origins_are_accepted(server_factory):
    srv = server_factory({"server": {"websocket_origins": "https://app.example, http://localhost:3000"}})
    host = "127.0.0.1:%d" % srv.ws_port
    for origin, status in (("https://app.example", 101), ("http://localhost:3000", 101),
                           ("http://" + host, 101), ("https://other.example", 403)):
        c = WsClient(srv.ws_addr, host=host, origin=origin)
        try:
            assert c.status == status, (origin, c.head)
        finally:
            c.close()


def test_any_origin_with_a_star(server_factory):
    srv = server_factory({"server": {"websocket_origins": "*"}})
    c = WsClient(srv.ws_addr, origin="https://anything.example")
    try:
        assert c.status == 101
    finally:
        c.close()


# ---------------------------------------------------------------- every gateway, login
def test_every_gateway_has_a_websocket_port(server, ws):
    user = new_user(server, "wse")
    assert len(server.ws_ports) == len(server.gateway_ports)
    for i in range(len(server.ws_ports)):
        c = ws(gateway=i)
        assert c.auth(user.token, device=f"d{i}")["user"] == user.name
        assert c.request({"op": "ping", "id": 2})["op"] == "pong"


def test_websocket_clients_on_two_gateways(server, ws):
    """send / ack / push both ways between a WebSocket client on gateway 0 and one on
    gateway 1 (distributed: through the forwarders and Redis), then sync on a new
    connection, an error reply, and a close handshake."""
    alice, bob = new_user(server, "wsx"), new_user(server, "wsy")
    befriend(alice, bob)
    a, b = ws(gateway=0), ws(gateway=1)
    a.auth(alice.token, "web")
    b.auth(bob.token, "web")
    first = a.request({"op": "send", "to": bob.name, "body": {"text": "over there"}, "cmid": "x1", "id": 2})
    assert first["op"] == "ack" and first["seq"] == 1, first
    msg = b.wait_op("msg")
    assert (msg["from"], msg["body"], msg["seq"], msg["cmid"]) == (alice.name, {"text": "over there"}, 1, "x1")
    ack = b.request({"op": "send", "to": alice.name, "body": "and back", "cmid": "y1", "id": 3})
    assert ack["op"] == "ack" and ack["seq"] == 2, ack
    msg = a.wait_op("msg")
    assert (msg["from"], msg["body"], msg["seq"]) == (bob.name, "and back", 2)
    # the same cmid again: the same ack (stored once)
    again = a.request({"op": "send", "to": bob.name, "body": {"text": "over there"}, "cmid": "x1", "id": 4})
    assert (again["op"], again["seq"], again["mid"]) == ("ack", 1, first["mid"]), again
    # errors keep the connection
    err = a.request({"op": "no_such_op", "id": 5})
    assert err["op"] == "error" and err["code"] == "unknown_op", err
    err = a.request({"op": "send", "to": bob.name, "id": 6})
    assert err["op"] == "error" and err["code"] == "bad_request", err
    # sync from the start on a new connection of bob, on the other gateway
    b2 = ws(gateway=0)
    b2.auth(bob.token, "web2")
    got = b2.request({"op": "sync", "since": 0, "id": 7})
    assert [(m["seq"], m["from"]) for m in got["msgs"]] == [(1, alice.name), (2, bob.name)], got
    assert got["head"] == 2 and got["more"] is False
    # close: the server answers the close frame and ends the connection
    a.send_frame(CLOSE, struct.pack(">H", 1000))
    op, payload = a.read_frame()
    assert op == CLOSE and struct.unpack(">H", payload[:2])[0] == 1000
    with pytest.raises(ConnectionError):
        a.read_frame()


def test_login_names_a_websocket_port(server):
    """login's ``websocket`` is the WebSocket port of the gateway it names; ``websockets``
    lists every live one."""
    user = new_user(server, "wsn")
    everyone = sorted(server.websocket_addresses)
    rep = wait_until(lambda: (lambda r: r if sorted(r["websockets"]) == everyone else None)(user.login("lw")),
                     timeout=15, what="login to list every WebSocket port")
    gw_port = int(rep["gateway"].rpartition(":")[2])
    ws_host, _, ws_port = rep["websocket"].rpartition(":")
    assert ws_host == rep["gateway"].rpartition(":")[0]
    assert server.ws_ports.index(int(ws_port)) == server.gateway_ports.index(gw_port), rep
    c = WsClient((ws_host, int(ws_port)))
    try:
        assert c.auth(rep["token"], "lw")["user"] == user.name
    finally:
        c.close()


def test_login_without_websocket_ports(config_server):
    srv = config_server({"server": {"websocket_port": 0}}, name="nows")
    assert srv.ws_ports == []
    name = unique_name("nws")
    register(srv, name)
    rep = wait_until(lambda: (lambda r: r if len(r["gateways"]) == len(srv.gateway_ports) else None)(
        login(srv, name)), timeout=15, what="login to list every gateway")
    assert rep["websocket"] is None and rep["websockets"] == [], rep
    assert srv.count("websocket=off") == len(srv.gateway_ports), srv.tail()


@pytest.mark.parametrize("server", ["distributed"], indirect=True)
def test_websocket_connections_count_in_the_load_report(server, ws):
    """A gateway's load report (what login's least-loaded choice reads) counts its WebSocket
    clients and carries its WebSocket address (Redis P:gwinfo of gateway 0)."""
    import redis

    r = redis.Redis.from_url(server.redis_url, decode_responses=True)
    user = new_user(server, "wsl")

    def report():
        return json.loads(r.hget(f"{server.redis_prefix}:gwinfo", "gw0"))

    try:
        for i in range(3):
            ws(gateway=0).auth(user.token, f"d{i}")
        rep = wait_until(lambda: (lambda x: x if x[1] >= 3 else None)(report()), timeout=15,
                         what="gateway 0 to report its 3 WebSocket clients")
        assert rep[0] == server.gateway_addresses[0] and rep[3] == server.websocket_addresses[0], rep
    finally:
        r.close()
