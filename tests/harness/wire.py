"""The wire-level test client: one blocking API or gateway connection, frames as dicts.

Deliberately does NOT import anything from ``imsrv``: the framing and JSON handling here
are written from docs/PROTOCOL.md alone, so a codec bug in the server cannot be hidden by
the same bug in the test client.

Every socket read has a deadline; nothing here can block forever.
"""

import itertools
import json
import socket
import struct
import time

DEFAULT_TIMEOUT = 5.0

#: server-to-client frames that are pushes (they never carry a request id)
PUSH_OPS = frozenset(
    ("msg", "presence", "typing", "receipt", "friend_request", "friend_added", "kicked", "bye")
)


# --------------------------------------------------------------------------------------
# errors


class Closed(Exception):
    """The peer closed the connection (EOF or reset)."""


class FrameTimeout(AssertionError):
    """No (matching) frame arrived before the deadline."""


class ProtocolViolation(AssertionError):
    """The server sent something that is not a valid frame of protocol v1."""


# --------------------------------------------------------------------------------------
# encoding


def encode_json(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def binary_frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def line_frame(payload: bytes) -> bytes:
    return payload + b"\n"


# --------------------------------------------------------------------------------------
# client


class Client:
    """A blocking client of one API or gateway connection.

    ``mode`` is "binary" (4-byte big-endian length + JSON) or "line" (one JSON object per
    line; the first byte sent is ``{``).  ``tls``: an ``ssl.SSLContext`` to connect with
    (the handshake is done here, ``server_hostname`` = ``host``); None: plain.
    """

    def __init__(self, host, port, mode="binary", timeout=DEFAULT_TIMEOUT, label="", rcvbuf=None, tls=None):
        assert mode in ("binary", "line")
        self.host, self.port, self.mode = host, port, mode
        self.timeout = timeout
        self.label = label
        if rcvbuf is None:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        else:  # a small receive buffer, set before connecting, to play a slow reader
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                self.sock = tls.wrap_socket(self.sock, server_hostname=host)
            except BaseException:
                self.sock.close()
                raise
        self.buf = bytearray()
        self.pushes = []  # pushes received and not yet consumed by wait_push
        self.all_pushes = []  # every push ever received, in order
        self.strays = []  # non-push frames that matched no pending request
        self.closed = False
        self._ids = itertools.count(1)
        self.user = None
        self.head = None

    def __repr__(self):
        return f"<Client {self.label or ''} {self.mode} {self.host}:{self.port}>"

    # -- low level ----------------------------------------------------------------------

    def send_raw(self, data: bytes):
        """Send arbitrary bytes (no framing added)."""
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(data)
        except OSError as exc:
            raise Closed(f"send failed: {exc!r}") from exc

    def encode(self, obj) -> bytes:
        payload = obj if isinstance(obj, (bytes, bytearray)) else encode_json(obj)
        return binary_frame(payload) if self.mode == "binary" else line_frame(payload)

    def send_frame(self, obj):
        """Send one object (or pre-encoded payload bytes) framed in this connection's mode."""
        self.send_raw(self.encode(obj))

    def _recv_more(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FrameTimeout(f"{self!r}: timed out waiting for data")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(262144)
        except socket.timeout:
            raise FrameTimeout(f"{self!r}: timed out waiting for data") from None
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            data = b""
        except OSError as exc:
            # e.g. the socket was closed locally
            self.closed = True
            raise Closed(f"{self!r}: {exc!r}") from exc
        if not data:
            self.closed = True
            raise Closed(f"{self!r}: connection closed by server")
        self.buf += data

    def read_payload(self, timeout=None) -> bytes:
        """Read one frame's raw payload bytes."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        if self.mode == "binary":
            while len(self.buf) < 4:
                self._recv_more(deadline)
            (n,) = struct.unpack(">I", self.buf[:4])
            if n == 0 or n > 16 * 1024 * 1024:
                raise ProtocolViolation(f"{self!r}: server sent a frame of length {n}")
            while len(self.buf) < 4 + n:
                self._recv_more(deadline)
            payload = bytes(self.buf[4 : 4 + n])
            del self.buf[: 4 + n]
            return payload
        while True:
            i = self.buf.find(b"\n")
            if i < 0:
                self._recv_more(deadline)
                continue
            line = bytes(self.buf[:i])
            del self.buf[: i + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if line.strip():
                return line

    def read_frame(self, timeout=None) -> dict:
        """Read and decode one frame (any kind: reply, push, error)."""
        payload = self.read_payload(timeout)
        try:
            obj = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolViolation(f"{self!r}: server sent invalid JSON {payload[:200]!r}") from exc
        if not isinstance(obj, dict) or "op" not in obj:
            raise ProtocolViolation(f"{self!r}: server sent a non-object or op-less frame {obj!r}")
        return obj

    @staticmethod
    def is_push(frame):
        return frame.get("id") is None and frame.get("op") in PUSH_OPS

    def _file(self, frame):
        """Keep a frame that is not what the caller waits for."""
        if self.is_push(frame):
            self.pushes.append(frame)
            self.all_pushes.append(frame)
        else:
            self.strays.append(frame)

    # -- requests -------------------------------------------------------------------------

    def next_id(self):
        return next(self._ids)

    def send_request(self, op, *, id=None, **fields):
        """Send a request without waiting; returns the id used."""
        rid = self.next_id() if id is None else id
        frame = {"op": op, "id": rid}
        frame.update(fields)
        self.send_frame(frame)
        return rid

    def read_reply(self, rid, timeout=None):
        """Read frames until the reply carrying ``rid``; pushes in between are collected."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            frame = self.read_frame(max(0.001, deadline - time.monotonic()))
            if frame.get("id") == rid and type(frame.get("id")) is type(rid) and not self.is_push(frame):
                return frame
            self._file(frame)

    def read_replies(self, rids, timeout=None):
        """The replies to pipelined requests ``rids`` (checked to arrive in request order);
        pushes in between are collected."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        out = []
        for rid in rids:
            while True:
                frame = self.read_frame(max(0.001, deadline - time.monotonic()))
                if self.is_push(frame):
                    self._file(frame)
                    continue
                assert frame.get("id") == rid, f"{self!r}: expected the reply to {rid!r} next, got {frame!r:.300}"
                out.append(frame)
                break
        return out

    def request(self, op, *, id=None, timeout=None, **fields):
        """Send ``op`` with ``fields`` and return the reply with the same id."""
        rid = self.send_request(op, id=id, **fields)
        return self.read_reply(rid, timeout)

    def call(self, op, expect="ok", *, timeout=None, **fields):
        """request() and assert the reply op is ``expect`` (default "ok")."""
        reply = self.request(op, timeout=timeout, **fields)
        if reply.get("op") != expect:
            raise AssertionError(f"{op} {fields!r:.300}: expected {expect!r}, got {reply!r:.500}")
        return reply

    def error(self, op, code, *, timeout=None, **fields):
        """request() and assert an error reply with ``code``."""
        reply = self.request(op, timeout=timeout, **fields)
        assert reply.get("op") == "error", f"{op} {fields!r:.300}: expected error {code}, got {reply!r:.500}"
        assert reply.get("code") == code, f"{op} {fields!r:.300}: expected error {code}, got {reply!r:.500}"
        assert isinstance(reply.get("message"), str), f"error without a message: {reply!r}"
        return reply

    # -- pushes -----------------------------------------------------------------------------

    @staticmethod
    def _matches(frame, op, match):
        if frame.get("op") != op:
            return False
        return all(frame.get(k) == v for k, v in match.items())

    def wait_push(self, op, timeout=None, **match):
        """Return (and consume) the first push ``op`` whose fields equal ``match``."""
        for i, frame in enumerate(self.pushes):
            if self._matches(frame, op, match):
                return self.pushes.pop(i)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FrameTimeout(f"{self!r}: no {op} push matching {match!r}; pending pushes {self.pushes!r:.800}")
            frame = self.read_frame(remaining)
            if self.is_push(frame) and self._matches(frame, op, match):
                self.all_pushes.append(frame)
                return frame
            self._file(frame)

    def wait_pushes(self, op, count, timeout=None, **match):
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        return [self.wait_push(op, max(0.001, deadline - time.monotonic()), **match) for _ in range(count)]

    def take_pushes(self, op=None):
        """Remove and return the collected, unconsumed pushes (of ``op`` if given)."""
        taken = [p for p in self.pushes if op is None or p.get("op") == op]
        self.pushes = [p for p in self.pushes if not (op is None or p.get("op") == op)]
        return taken

    def drain(self, duration):
        """Collect whatever arrives during ``duration`` seconds (for absence checks)."""
        deadline = time.monotonic() + duration
        got = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return got
            try:
                frame = self.read_frame(remaining)
            except FrameTimeout:
                return got
            got.append(frame)
            self._file(frame)

    def sync_point(self):
        """A round trip (ping on the gateway): every frame the server sent before the pong
        has been filed when this returns."""
        self.call("ping", expect="pong")

    def ping_times(self, until, every=0.05):
        """Ping until monotonic time ``until``, one ping every ``every`` s (pacing, so the
        server is asked all along) -> each round trip's seconds: how long the server kept
        this connection waiting while something else happened."""
        times = []
        while time.monotonic() < until:
            t0 = time.monotonic()
            self.call("ping", expect="pong")
            times.append(time.monotonic() - t0)
            time.sleep(every)
        return times

    def expect_close(self, timeout=None):
        """Read until the server closes; return the frames received before the close.

        Fails if the connection is still open after ``timeout``.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        frames = []
        while True:
            try:
                frame = self.read_frame(max(0.001, deadline - time.monotonic()))
            except Closed:
                return frames
            except FrameTimeout:
                raise FrameTimeout(f"{self!r}: server did not close the connection within the timeout; got {frames!r:.500}") from None
            frames.append(frame)
            if self.is_push(frame):
                self.all_pushes.append(frame)

    def is_open(self):
        """True if a ping round-trip works (gateway only)."""
        try:
            self.sync_point()
            return True
        except (Closed, FrameTimeout):
            return False

    # -- gateway helpers ----------------------------------------------------------------------

    def auth(self, token, device=None, **extra):
        fields = {"token": token}
        if device is not None:
            fields["device"] = device
        fields.update(extra)
        reply = self.call("auth", **fields)
        self.user = reply.get("user")
        self.head = reply.get("head")
        return reply

    def send_msg(self, body, *, to=None, group=None, cmid=None, expect="ack", timeout=None):
        fields = {"body": body}
        if to is not None:
            fields["to"] = to
        if group is not None:
            fields["group"] = group
        if cmid is not None:
            fields["cmid"] = cmid
        if expect is None:
            return self.request("send", timeout=timeout, **fields)
        return self.call("send", expect=expect, timeout=timeout, **fields)

    def sync(self, since=0, limit=None, timeout=None):
        fields = {"since": since}
        if limit is not None:
            fields["limit"] = limit
        return self.call("sync", expect="sync", timeout=timeout, **fields)

    def sync_all(self, since=0, limit=1000, timeout=None):
        """Page through sync until more is false; returns (msgs, head)."""
        msgs = []
        head = None
        for _ in range(10000):
            rep = self.sync(since, limit, timeout)
            msgs.extend(rep["msgs"])
            head = rep["head"]
            if not rep["more"]:
                return msgs, head
            assert rep["msgs"], f"sync said more=true but returned nothing: {rep!r:.300}"
            since = rep["msgs"][-1]["seq"]
        raise AssertionError("sync never finished")

    def close(self):
        if not self.closed:
            self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

