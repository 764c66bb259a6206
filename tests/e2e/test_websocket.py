"""The WebSocket gateway (contract: port 7080, path /ws, one JSON object per text message).

The WebSocket client here is written from RFC 6455 by hand (no library), so a bug in the
server's WebSocket library cannot hide behind the same library on the test side.
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

import pytest

from harness.users import befriend, new_user

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

    def close(self):
        self.sock.close()


@pytest.fixture
def ws(server):
    made = []

    def connect(path="/ws", **kw):
        c = WsClient(server.ws_addr, path, **kw)
        made.append(c)
        return c

    yield connect
    for c in made:
        c.close()


def test_handshake_only_on_the_ws_path(ws):
    assert ws("/nope").status == 404
    assert ws("/ws").status == 101


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


@pytest.mark.parametrize("path", ["/", "/index.html", "/wsx"])
def test_other_paths_are_404_with_an_explanation(server, path):
    status, headers, body = _http(server, "GET", path)
    assert status == 404, (status, body)
    assert headers.get("content-type", "").startswith("text/plain"), headers
    line = _one_line(body)
    assert path in line and "/ws" in line, line


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
