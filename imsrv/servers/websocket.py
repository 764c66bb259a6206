"""The WebSocket gateway (port 7080, path /ws): the gateway ops, one JSON object per
WebSocket message.  The port's connections are routed by web_port.py: those for /ws (and
those that are no HTTP, refused here with an explanation) are this module's.

Only the transport differs from the TCP gateway, so this module supplies a Connection
whose "decoder" turns WebSocket bytes into the same items the frame codec yields (dicts
and FrameErrors) and whose encoder writes WebSocket text messages.  The WebSocket
protocol itself (handshake, masking, fragmentation, ping/pong, close) is wsproto's,
sans-IO like the rest of the protocol layer.
"""
import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message, Ping,
                            RejectConnection, RejectData, Request, TextMessage)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .. import jsonlib, logs
from ..protocol.errors import BAD_FRAME, TOO_LARGE, FrameError
from ..protocol.websocket import CLOSE_NORMAL, CLOSE_TOO_BIG, WS_PATH, MessageParts, MessageTooLarge
from .connection import Connection
from .origins import OriginPolicy

UPGRADE_HINT = ("this is the imsrv WebSocket endpoint: connect with a WebSocket client "
                "(GET /ws with Upgrade: websocket), one JSON object per text message; see docs/PROTOCOL.md")
MAX_HEAD = 16384  # bytes of a handshake kept to explain a refused one (h11's own limit is 16 KiB)


def _header(headers, name):
    for k, v in headers:
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def handshake_refusal(method, path, upgrade):
    """The answer to a request that is no WebSocket upgrade of WS_PATH -> (status, one-line
    message, extra headers as (bytes, bytes) pairs); None for ``GET /ws`` with ``Upgrade:
    websocket`` (``method`` bytes, ``path`` str without the query, ``upgrade`` the Upgrade
    header or "").  The texts of docs/PROTOCOL.md: 404 another path, 405 another method
    than GET (HEAD included), 426 no Upgrade (HEAD: 426, its body left out by the caller)."""
    if path != WS_PATH:
        return 404, f"not found: {path} (the WebSocket endpoint is {WS_PATH})", []
    if method not in (b"GET", b"HEAD"):
        return (405, f"method {method.decode('ascii', 'replace')} not allowed on {WS_PATH}; {UPGRADE_HINT}",
                [(b"allow", b"GET")])
    if "websocket" not in upgrade.lower() or method == b"HEAD":
        return 426, UPGRADE_HINT, [(b"upgrade", b"websocket"), (b"connection", b"Upgrade, close")]
    return None


class WsDecoder:
    """feed(bytes) -> [dict | FrameError]; answers the handshake, pings and closes itself."""

    mode = "ws"

    def __init__(self, conn, max_frame, origins=None):
        self.conn = conn
        self.ws = WSConnection(ConnectionType.SERVER)
        self.max_frame = max_frame
        self.origins = origins or OriginPolicy()
        self.message = MessageParts(max_frame)
        self.failed = False
        self.head = bytearray()  # the handshake's first bytes, to explain a refusal

    def _reject(self, out, status, message, headers=(), head_only=False):
        """Answer the handshake with an HTTP error (plain text, one line), then close."""
        logs.info("websocket_refused", addr=self.conn.peer, status=status, reason=message)
        body = (message + "\n").encode("utf-8")
        hdrs = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))]
        hdrs += list(headers)
        if not any(k.lower() == b"connection" for k, _ in hdrs):
            hdrs.append((b"connection", b"close"))
        try:
            data = self.ws.send(RejectConnection(status_code=status, headers=hdrs, has_body=True))
            data += self.ws.send(RejectData(data=b"" if head_only else body, body_finished=True))
            self.conn.send_raw(data)
        except (LocalProtocolError, h11.LocalProtocolError):
            pass  # the request was not even HTTP: nothing sensible to answer
        self.failed = True
        self.conn.close_with(None)
        return out

    def _refuse_handshake(self, out, exc):
        """wsproto refused the request: tell the client why, in HTTP."""
        parser = h11.Connection(h11.SERVER)
        try:
            parser.receive_data(bytes(self.head))
            req = parser.next_event()
        except h11.RemoteProtocolError:
            req = None
        if not isinstance(req, h11.Request):
            return self._reject(out, 400, f"not an HTTP request ({exc}); {UPGRADE_HINT}")
        path = req.target.decode("ascii", "replace").split("?", 1)[0]
        refusal = handshake_refusal(req.method, path, _header(req.headers, b"upgrade") or "")
        if refusal is not None:
            status, message, headers = refusal
            return self._reject(out, status, message, headers, req.method == b"HEAD")
        hint = exc.event_hint if isinstance(exc.event_hint, RejectConnection) else RejectConnection()
        return self._reject(out, hint.status_code, f"bad WebSocket handshake: {exc}", hint.headers)

    def _fail(self, out, code, message, close_code):
        self.failed = True
        out.append(FrameError(code, message, True))
        self.close_code = close_code
        return out

    def feed(self, data):
        out = []
        if self.failed:
            return out
        if self.ws.state is ConnectionState.CONNECTING and len(self.head) < MAX_HEAD:
            self.head += data[:MAX_HEAD - len(self.head)]
        try:
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, Request):
                    path = event.target.split("?", 1)[0]
                    if path != WS_PATH:
                        return self._reject(out, 404, f"not found: {path} (the WebSocket endpoint is {WS_PATH})")
                    refusal = self.origins.refusal(_header(event.extra_headers, b"origin"), event.host)
                    if refusal:
                        return self._reject(out, 403, refusal)
                    self.head = None
                    self.conn.send_raw(self.ws.send(AcceptConnection()))
                elif isinstance(event, (TextMessage, BytesMessage)):
                    try:
                        item = self.message.add(event)
                    except MessageTooLarge:
                        return self._fail(out, TOO_LARGE, f"message of more than {self.max_frame} bytes "
                                          f"exceeds max_frame", CLOSE_TOO_BIG)
                    if item is not None:
                        out.append(item)
                elif isinstance(event, Ping):
                    self.conn.send_raw(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if self.ws.state is ConnectionState.REMOTE_CLOSING:
                        self.conn.send_raw(self.ws.send(event.response()))
                    self.failed = True
                    self.conn.close_with(None)
                    return out
        except RemoteProtocolError as exc:
            if self.ws.state is ConnectionState.CONNECTING:  # not a valid handshake
                return self._refuse_handshake(out, exc)
            return self._fail(out, BAD_FRAME, f"WebSocket protocol error: {exc}", 1002)
        return out


class WsConnection(Connection):
    """A Gateway connection in WebSocket framing.  ``preread``: bytes already read from the
    socket (the request line the WebSocket port routed on, web_port.py): the first recv
    returns them."""

    def __init__(self, sock, addr, max_frame, max_queue_bytes, service, retry_after=5.0, origins=None,
                 preread=b""):
        super().__init__(sock, addr, max_frame, max_queue_bytes, service, retry_after)
        self.decoder = WsDecoder(self, max_frame, origins)
        self.preread = preread

    @property
    def mode(self):
        return "ws"

    def recv(self, timeout):
        if self.preread and not self.closing:
            data, self.preread = self.preread, b""
            return data
        return super().recv(timeout)

    def recv_nowait(self):
        if self.preread and not self.closing:
            data, self.preread = self.preread, b""
            return data
        return super().recv_nowait()

    def _open(self):
        return self.decoder.ws.state is ConnectionState.OPEN

    def encode(self, obj):
        if not self._open():
            return b""
        return self.decoder.ws.send(Message(data=jsonlib.dumps(obj).decode("utf-8")))

    def encode_many(self, objs):
        return b"".join(self.encode(o) for o in objs)

    def last_frames(self, obj):
        if not self._open():
            return []
        frames = [self.encode(obj)] if obj is not None else []
        code = getattr(self.decoder, "close_code", CLOSE_NORMAL)
        frames.append(self.decoder.ws.send(CloseConnection(code=code)))
        return frames

