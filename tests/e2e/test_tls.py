"""TLS on every port (docs/PROTOCOL.md "Operations (v1.1)": with ``[tls] cert`` and ``key``
set, the API, every gateway and the WebSocket port accept TLS, ``wss://`` included;
``[tls] required`` refuses plain clients; the framing inside TLS is unchanged), on both
deployments: each process of the distributed one (both gateways, their WebSocket ports,
the API daemon) gets the certificate from the config file.

The certificate is made by the code of ``imsrv cert`` (imsrv/cli/cert.py) in a temporary
directory; the clients trust it as their CA file, host names checked (the certificate
names 127.0.0.1, where the servers listen).  The wire clients are harness.wire's, given
the SSLContext (``server.tls``); the WebSocket client below is written from RFC 6455.
"""
import base64
import hashlib
import http.client
import json
import os
import select
import socket
import ssl
import struct
import time

import pytest

from harness.procs import wait_until
from harness.servers import DEPLOYMENTS, running_server
from harness.users import befriend, new_user
from harness.wire import Client, Closed
from imsrv.cli import cert

pytestmark = pytest.mark.timeout(120)

#: the handshake bound (limits.auth_timeout) of these servers: a stalled handshake is
#: closed after it
AUTH_TIMEOUT = 5.0
CONFIG = {
    "limits": {"auth_timeout": AUTH_TIMEOUT, "user_send_rate": 100000.0, "user_send_burst": 100000,
               "conn_rate": 100000.0, "conn_burst": 100000},
}
REQUIRED = "TLS is required on this port"


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory):
    """(cert path, key path): a self-signed certificate written by `imsrv cert`'s code."""
    crt, key, _ = cert.write(tmp_path_factory.mktemp("tls-cert"))
    return crt, key


@pytest.fixture(scope="module")
def client_tls(cert_files):
    """The clients' SSLContext: trusts the certificate, checks host names."""
    ctx = ssl.create_default_context(cafile=cert_files[0])
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    return ctx


def _serving(request, tmp_path_factory, cert_files, client_tls, required):
    """Run a server of deployment ``request.param`` with TLS on (``required`` or not) and
    yield it; ``.tls``: the clients' context."""
    name = "tls-required" if required else "tls"
    config = dict(CONFIG, tls={"cert": cert_files[0], "key": cert_files[1], "required": required})
    with running_server(request.param, tmp_path_factory.mktemp(f"{name}-{request.param}"), config,
                        name=name) as srv:
        srv.tls = client_tls
        yield srv


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def tls_server(request, tmp_path_factory, cert_files, client_tls):
    """A server with TLS on, plain still allowed; ``tls_server.tls``: the client context."""
    yield from _serving(request, tmp_path_factory, cert_files, client_tls, required=False)


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def required_server(request, tmp_path_factory, cert_files, client_tls):
    """A server with ``[tls] required = true``."""
    yield from _serving(request, tmp_path_factory, cert_files, client_tls, required=True)


# ------------------------------------------------------------------ a WebSocket client


class Wss:
    """One WebSocket connection to ``/ws`` (RFC 6455 by hand), over TLS when ``ctx``."""

    def __init__(self, addr, ctx=None, timeout=5.0):
        sock = socket.create_connection(addr, timeout=timeout)
        self.sock = ctx.wrap_socket(sock, server_hostname=addr[0]) if ctx is not None else sock
        self.buf = b""
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(b"GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                          % (addr[0].encode(), addr[1], key))
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101 "), head
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        assert accept.lower() in head.lower(), head

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            raise Closed("closed")
        self.buf += data

    def _need(self, n):
        while len(self.buf) < n:
            self._more()

    def send(self, obj):
        payload = json.dumps(obj).encode()
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv(self):
        """The next text message, decoded."""
        self._need(2)
        n = self.buf[1] & 0x7F
        at = 2
        if n == 126:
            self._need(4)
            n, at = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, at = struct.unpack(">Q", self.buf[2:10])[0], 10
        self._need(at + n)
        opcode, payload, self.buf = self.buf[0] & 0x0F, self.buf[at:at + n], self.buf[at + n:]
        assert opcode == 0x1, (opcode, payload)
        return json.loads(payload)

    def call(self, obj):
        self.send(obj)
        while True:
            reply = self.recv()
            if reply.get("id") == obj.get("id"):
                return reply

    def close(self):
        self.sock.close()


# ------------------------------------------------------------------ handshakes


def test_every_port_speaks_tls(tls_server):
    """The API, every gateway, every WebSocket port (wss, and https for the web page):
    a TLS handshake with the certificate of the config (its host name checked), then the
    protocol as without TLS."""
    srv = tls_server
    u = new_user(srv, "tls")   # register + login over TLS
    with srv.api() as api:
        assert api.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert api.sock.getpeercert()["subject"]
        assert api.call("profile", token=u.token, user=u.name)["user"] == u.name
    for index, port in enumerate(srv.gateway_ports):
        with srv.gateway(index=index) as g:
            assert isinstance(g.sock, ssl.SSLSocket) and g.sock.version() in ("TLSv1.2", "TLSv1.3")
            assert g.auth(u.token, f"gw{index}")["user"] == u.name
            g.call("ping", expect="pong")
    assert srv.ws_ports or srv.deployment == "distributed", "the embedded server has its WebSocket port"
    for addr in srv.ws_addrs:
        ws = Wss(addr, srv.tls)
        try:
            assert ws.call({"op": "auth", "id": 1, "token": u.token, "device": "wss"})["op"] == "ok"
            assert ws.call({"op": "ping", "id": 2})["op"] == "pong"
        finally:
            ws.close()
        page = http.client.HTTPSConnection(*addr, context=srv.tls, timeout=5)
        try:
            page.request("GET", "/")
            response = page.getresponse()
            assert response.status == 200 and response.read(), response.status
        finally:
            page.close()


def test_protocol_over_tls(tls_server):
    """The gateway protocol through TLS: auth, send -> ack + push, presence on connect and
    disconnect, typing, read receipt, sync of what came while offline, line mode, and
    pipelined requests spanning many TLS records in one write."""
    srv = tls_server
    a, b = new_user(srv, "ta"), new_user(srv, "tb")
    befriend(a, b)
    with a.connect(device="one") as ga:
        gb = b.connect(device="one")
        assert ga.wait_push("presence", user=b.name)["status"] == "online"
        ack = ga.send_msg({"text": "over tls"}, to=b.name, cmid="c1")
        push = gb.wait_push("msg", mid=ack["mid"])
        assert push["body"] == {"text": "over tls"} and push["from"] == a.name and push["cmid"] == "c1"
        ga.send_request("typing", to=b.name)
        assert gb.wait_push("typing")["from"] == a.name
        gb.call("read", seq=push["seq"], **{"with": a.name})
        assert ga.wait_push("receipt", mid=ack["mid"])["from"] == b.name
        gb.close()
        assert ga.wait_push("presence", user=b.name)["status"] == "offline"
        # while b is offline, in line mode on another TLS connection of a
        with srv.gateway("line") as line:
            line.auth(a.token, "line")
            acks = [line.send_msg(f"offline {i}", to=b.name) for i in range(3)]
        # pipelined: 2000 pings and a send in one write of several TLS records (~70 KB)
        frames = b"".join(ga.encode({"op": "ping", "id": 10000 + i}) for i in range(2000))
        ga.send_raw(frames + ga.encode({"op": "send", "id": 20000, "to": b.name, "body": "x" * 16000}))
        replies = ga.read_replies(list(range(10000, 12000)) + [20000], timeout=20)
        assert all(r["op"] == "pong" for r in replies[:2000]) and replies[2000]["op"] == "ack", replies[2000]
    with b.connect(device="two") as gb2:
        msgs, head = gb2.sync_all(0)
        assert [m["body"] for m in msgs] == [{"text": "over tls"}, "offline 0", "offline 1", "offline 2", "x" * 16000]
        assert [m["mid"] for m in msgs[1:4]] == [x["mid"] for x in acks]
        assert head == msgs[-1]["seq"]


def test_push_burst_to_a_slow_tls_reader(tls_server):
    """Pushes written while the reader does not read (the server's TLS writes wait for the
    socket, then resume with the bytes TLS refused) arrive whole and in order."""
    srv = tls_server
    a, b = new_user(srv, "sa"), new_user(srv, "sb")
    befriend(a, b)
    count, body = 300, "y" * 2500
    with srv.gateway(rcvbuf=4096) as slow:
        slow.auth(b.token, "slow")
        with a.connect() as ga:
            rids = [ga.send_request("send", to=b.name, body=f"{i:04d}{body}") for i in range(count)]
            acks = ga.read_replies(rids, timeout=30)
            assert all(ack["op"] == "ack" for ack in acks), [x for x in acks if x["op"] != "ack"][:1]
        pushes = slow.wait_pushes("msg", count, timeout=30)
        assert [p["body"][:4] for p in pushes] == [f"{i:04d}" for i in range(count)]
        assert all(p["body"][4:] == body for p in pushes)
        assert [p["seq"] for p in pushes] == sorted(p["seq"] for p in pushes)
        slow.sync_point()


def test_plain_and_tls_clients_on_the_same_port(tls_server):
    """Without ``required``, one port serves both: plain binary and line-mode clients on
    the API and every gateway, side by side with TLS ones, pushing to each other."""
    srv = tls_server
    a, b = new_user(srv, "pa"), new_user(srv, "pb")
    befriend(a, b)
    with Client(srv.host, srv.api_port, "line") as plain_api:
        assert plain_api.call("login", user=a.name, password=a.password)["token"]
    for index, port in enumerate(srv.gateway_ports):
        with Client(srv.host, port) as plain, Client(srv.host, port, "line") as line, \
                srv.gateway(index=index) as tls:
            plain.auth(a.token, f"plain{index}")
            line.auth(a.token, f"line{index}")
            tls.auth(b.token, f"tls{index}")
            ack = tls.send_msg("to plain", to=a.name)
            assert plain.wait_push("msg", mid=ack["mid"])["body"] == "to plain"
            assert line.wait_push("msg", mid=ack["mid"])["body"] == "to plain"
            ack = plain.send_msg("to tls", to=b.name)
            assert tls.wait_push("msg", mid=ack["mid"])["body"] == "to tls"
    for addr in srv.ws_addrs:
        ws = Wss(addr)   # plain ws:// on the same port as wss://
        try:
            assert ws.call({"op": "auth", "id": 1, "token": a.token, "device": "ws"})["op"] == "ok"
        finally:
            ws.close()


def _closed_within(sock, seconds):
    """True when the server closes ``sock`` within ``seconds`` (what it sends is dropped)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except OSError:
            return True
    return False


def test_bad_handshakes_do_not_disturb_others(tls_server):
    """Garbage after a handshake byte, a client that does not trust the certificate and a
    handshake that stalls are each logged (tls_handshake_failed, with the reason) and
    closed; meanwhile an established TLS session goes on and new ones are made (the
    handshake runs in the connection's greenlet, never in the accept loop: a new
    connection to the stalled one's port is served before the stalled one is given up);
    the stalled one is closed after limits.auth_timeout."""
    srv = tls_server
    a, b = new_user(srv, "ha"), new_user(srv, "hb")
    befriend(a, b)
    before = srv.count("event=tls_handshake_failed")
    with a.connect() as ga, b.connect() as gb:
        stalled = socket.create_connection((srv.host, srv.gateway_port), timeout=5)
        stalled.sendall(b"\x16")   # a handshake record that never comes whole
        started = time.monotonic()
        try:
            garbage = socket.create_connection((srv.host, srv.api_port), timeout=5)
            garbage.sendall(b"\x16\x03\x01\x00\x10" + b"not a client hello")
            assert _closed_within(garbage, 5), "a garbage handshake is closed"
            garbage.close()
            untrusting = socket.create_connection((srv.host, srv.gateway_port), timeout=5)
            with pytest.raises(ssl.SSLCertVerificationError):
                ssl.create_default_context().wrap_socket(untrusting, server_hostname=srv.host)
            untrusting.close()
            # while the stalled handshake waits: the session goes on, a new one is made
            ack = ga.send_msg("still here", to=b.name)
            assert gb.wait_push("msg", mid=ack["mid"])["body"] == "still here"
            with srv.gateway(index=0) as fresh:   # the stalled one's port
                fresh.auth(b.token, "new")
                fresh.call("ping", expect="pong")
            assert not _closed_within(stalled, 0.01), "all this ran while the handshake stalled"
            assert _closed_within(stalled, AUTH_TIMEOUT + 5), "the stalled handshake is closed"
            assert time.monotonic() - started >= AUTH_TIMEOUT * 0.9
        finally:
            stalled.close()
        wait_until(lambda: srv.count("event=tls_handshake_failed") >= before + 3, timeout=10,
                   what="three tls_handshake_failed lines")
        text = srv.log_text()
        assert "reason=timeout" in text, srv.tail(20)
        assert any(r in text for r in ("ALERT_UNKNOWN_CA", "ALERT_BAD_CERTIFICATE", "reason=EOF")), srv.tail(20)
        ack = gb.send_msg("after", to=a.name)
        assert ga.wait_push("msg", mid=ack["mid"])["body"] == "after"


def client_hello(ctx, host):
    """The bytes of a real ClientHello of ``ctx`` (a TLS handshake record, a few hundred
    bytes), made in memory."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=host)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


#: seconds between two bytes of a dribbled ClientHello: far under the per-read timeout
#: (AUTH_TIMEOUT), so only a deadline for the whole handshake ends it
DRIBBLE_PACE = 0.25


def test_a_dribbled_client_hello_is_closed_at_the_deadline(tls_server):
    """A client that sends its ClientHello one byte every DRIBBLE_PACE s (each read
    waits far less than the per-read timeout) on a gateway port and a WebSocket port is
    closed when the deadline of the whole handshake passes (limits.auth_timeout from the
    accept), with one tls_handshake_failed reason=timeout line each, long before its
    ClientHello could be whole."""
    srv = tls_server
    hello = client_hello(srv.tls, srv.host)
    assert len(hello) * DRIBBLE_PACE > 4 * AUTH_TIMEOUT, "the ClientHello outlasts the deadline"
    before = srv.count("reason=timeout")
    addrs = [(srv.host, srv.gateway_port), srv.ws_addrs[0]]
    socks = [socket.create_connection(addr, timeout=5) for addr in addrs]
    started = time.monotonic()
    closed = {}   # socket -> seconds from the connect to the close
    try:
        sent = 0
        while sent < len(hello) and len(closed) < len(socks) and time.monotonic() - started < AUTH_TIMEOUT + 10:
            for sock in socks:
                if sock not in closed:
                    try:
                        sock.sendall(hello[sent:sent + 1])
                    except OSError:   # reset: closed already
                        closed[sock] = time.monotonic() - started
            sent += 1
            waiting = [sock for sock in socks if sock not in closed]
            # the dribble's pace; a close (or anything the server sends) ends the wait
            readable, _, _ = select.select(waiting, [], [], DRIBBLE_PACE)
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    closed[sock] = time.monotonic() - started
        assert len(closed) == len(socks), f"open after {sent} bytes of {len(hello)} over {time.monotonic() - started:.1f} s"
        for sock, after in closed.items():
            assert AUTH_TIMEOUT * 0.9 <= after <= AUTH_TIMEOUT + 3, (after, AUTH_TIMEOUT)
        assert sent < len(hello)
    finally:
        for sock in socks:
            sock.close()
    wait_until(lambda: srv.count("reason=timeout") >= before + len(socks), timeout=10,
               what="a tls_handshake_failed reason=timeout line per dribbler")


def test_connections_waiting_for_tls_are_capped(tmp_path_factory, cert_files, client_tls):
    """At most limits.max_connections (2 here) connections of a listener wait in the TLS
    phase (first byte, handshake) at once: with two silent connections on the gateway
    port, a third is closed at once (tls_handshake_failed reason=too_many_handshakes),
    not after auth_timeout; once the silent ones are gone, a TLS client is served."""
    config = dict(CONFIG, limits=dict(CONFIG["limits"], max_connections=2),
                  tls={"cert": cert_files[0], "key": cert_files[1], "required": False})
    with running_server("embedded", tmp_path_factory.mktemp("tls-cap"), config, name="tls-cap") as srv:
        srv.tls = client_tls
        u = new_user(srv, "cap")
        addr = (srv.host, srv.gateway_port)
        silent = [socket.create_connection(addr, timeout=5) for _ in range(2)]
        try:
            over = socket.create_connection(addr, timeout=5)
            started = time.monotonic()
            try:
                assert _closed_within(over, AUTH_TIMEOUT / 2), "the third is closed at once"
                assert time.monotonic() - started < AUTH_TIMEOUT / 2
            finally:
                over.close()
            wait_until(lambda: srv.count("reason=too_many_handshakes") >= 1, timeout=10,
                       what="a tls_handshake_failed reason=too_many_handshakes line")
        finally:
            for sock in silent:
                sock.close()

        def served():
            try:
                with srv.gateway() as g:
                    return g.auth(u.token, "after-cap")["user"] == u.name
            except (OSError, Closed):   # still over the cap: the silent ones' close is on its way
                return False

        assert wait_until(served, timeout=10, what="a TLS client served once the silent ones left")


# ------------------------------------------------------------------ required


def test_plain_clients_refused_when_required(required_server):
    """``[tls] required``: a plain client of the API or a gateway gets one ``error``
    bad_frame "TLS is required on this port" in its own framing (binary, line), a plain
    HTTP request on the WebSocket port ``400``; each is then closed.  TLS clients are
    served as usual."""
    srv = required_server
    u = new_user(srv, "rq")   # over TLS
    for port in [srv.api_port] + srv.gateway_ports:
        for mode in ("binary", "line"):
            with Client(srv.host, port, mode) as plain:
                plain.send_request("ping")
                frames = plain.expect_close()
                assert [(f["op"], f["code"], f["message"]) for f in frames] == [("error", "bad_frame", REQUIRED)], \
                    (port, mode, frames)
    for index in range(len(srv.gateway_ports)):
        with srv.gateway(index=index) as g:
            assert g.auth(u.token, f"tls{index}")["user"] == u.name
    for addr in srv.ws_addrs:
        page = http.client.HTTPConnection(*addr, timeout=5)
        try:
            page.request("GET", "/")
            response = page.getresponse()
            assert response.status == 400 and REQUIRED in response.read().decode(), response.status
        finally:
            page.close()
        ws = Wss(addr, srv.tls)
        try:
            assert ws.call({"op": "auth", "id": 1, "token": u.token, "device": "wss"})["op"] == "ok"
        finally:
            ws.close()
    wait_until(lambda: srv.count("event=tls_refused") >= 2 * (1 + len(srv.gateway_ports)), timeout=10,
               what="tls_refused lines")


# ------------------------------------------------------------------ imsrv admin


def test_imsrv_admin_over_tls(required_server, cert_files):
    """`imsrv admin` (imsrv/cli/admin.py) with --tls and --ca-file, after the command or
    before it (--ca-file alone implies --tls), on a server that refuses plain clients:
    served; plain, refused (exit 1); --tls without the CA file, the certificate is not
    trusted (exit 1, said on stderr)."""
    import subprocess
    import sys

    from harness.procs import in_thread
    from harness.servers import ADMIN_KEY

    srv = required_server
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMSRV_")
           or k in ("IMSRV_PUREPYTHON", "IMSRV_REQUIRE_EXT", "IMSRV_JSON")}
    env["IMSRV_ADMIN_KEY"] = ADMIN_KEY

    def admin(*args):
        cmd = [sys.executable, "-m", "imsrv.cli.main", "admin", "--api", srv.api_address, *args]
        return in_thread(lambda: subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env))

    r = admin("stats", "--tls", "--ca-file", cert_files[0])
    assert r.returncode == 0 and r.stdout.startswith("users  online_users  messages_last_minute\n"), r
    r = admin("--ca-file", cert_files[0], "--json", "stats")
    assert r.returncode == 0 and json.loads(r.stdout)["op"] == "ok", r
    r = admin("stats")
    assert r.returncode == 1 and f"cannot reach the API at {srv.api_address}" in r.stderr and not r.stdout, r
    r = admin("stats", "--tls")
    assert r.returncode == 1 and "certificate" in r.stderr, r
