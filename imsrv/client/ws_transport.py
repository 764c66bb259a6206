"""The SDK's WebSocket transport: a gateway connection to the WebSocket port (``/ws``, one
JSON object per text message) instead of the TCP gateway.

``Client(api, mode="ws")`` selects it: the API calls stay on the API's TCP port (binary
framing), and the link connects to the login reply's ``websocket`` address (its
``websockets`` are the other live ones).  :class:`WsConn` is a
:class:`~imsrv.client.network.Conn` (``Conn(addr, "ws")`` makes one): the same requests,
replies, pushes, heartbeat and close reasons; only the bytes on the socket differ.  The
WebSocket protocol (handshake, masking, fragmentation, ping/pong, close) is wsproto's,
sans-IO, over the Conn's own socket (and its TLS, when it has one).

- The handshake (``GET /ws``) is written by the constructor, which then waits (at most
  ``connect_timeout``) for the reader greenlet to see the server's answer: a refusal (its
  status and one-line text) or no answer raises ConnectionLost, like a refused connect.
- Incoming: :class:`WsDecoder` turns bytes into the Conn reader's items (dicts; a
  FrameError for what is no JSON object, which ends the connection with that reason).
  Messages over ``max_frame`` bytes end it too; pings are answered.
- Outgoing: each frame is one masked text message; ``max_send`` (the server's max_frame)
  is checked against the JSON payload.
- ``close`` sends a close frame (1000) when it can without waiting, then closes.
"""
import gevent
from gevent.event import Event
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message, Ping, RejectConnection,
                            RejectData, Request, TextMessage)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .. import jsonlib
from ..protocol.errors import BAD_FRAME, TOO_LARGE, FrameError
from ..protocol.websocket import CLOSE_NORMAL, WS_PATH, MessageParts, MessageTooLarge
from .errors import ConnectionLost
from .network import BINARY, CLIENT_MAX_FRAME, WS, Conn, format_addr



class WsDecoder:
    """feed(bytes) -> [dict | FrameError] for the Conn's reader; answers pings, and tells
    ``conn`` the handshake's outcome (``conn.upgraded`` set; ``conn.refusal`` when refused)."""

    def __init__(self, conn, ws, max_frame):
        self.conn = conn
        self.ws = ws
        self.max_frame = max_frame
        self.message = MessageParts(max_frame)
        self.reject = None   # [status, body] of a refused handshake, while its body comes
        self.head = b""      # the first bytes of the answer to the handshake (to say what it was)

    def feed(self, data):
        out = []
        if len(self.head) < 200 and not self.conn.upgraded.is_set():
            self.head += data[:200 - len(self.head)]
        try:
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, (TextMessage, BytesMessage)):
                    try:
                        item = self.message.add(event)
                    except MessageTooLarge:
                        out.append(FrameError(TOO_LARGE, f"a message of more than {self.max_frame} bytes"))
                        return out
                    if item is not None:
                        out.append(item)
                elif isinstance(event, Ping):
                    gevent.spawn(self.conn.send_quietly, self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if self.ws.state is ConnectionState.REMOTE_CLOSING:
                        gevent.spawn(self.conn.send_quietly, self.ws.send(event.response()))
                elif isinstance(event, AcceptConnection):
                    self.conn.upgraded.set()
                elif isinstance(event, RejectConnection):
                    self.reject = [event.status_code, b""]
                    if not event.has_body:
                        self._refused()
                elif isinstance(event, RejectData):
                    self.reject[1] += event.data
                    if event.body_finished:
                        self._refused()
        except RemoteProtocolError as exc:
            if not self.conn.upgraded.is_set():
                self.conn.refusal = f"not a WebSocket handshake answer ({exc})"
                self.conn.upgraded.set()
                return out
            out.append(FrameError(BAD_FRAME, f"WebSocket protocol error: {exc}"))
        return out

    def _refused(self):
        status, body = self.reject
        text = body.decode("utf-8", "replace").strip()
        self.conn.refusal = f"WebSocket upgrade refused: HTTP {status}" + (f": {text[:300]}" if text else "")
        self.conn.upgraded.set()


class WsConn(Conn):
    """A Conn to a WebSocket port (``addr`` "host:port"; the path is /ws).  The other
    arguments are Conn's; ``mode`` is "ws"."""

    def __init__(self, addr, mode=WS, connect_timeout=10.0, *args, max_frame=CLIENT_MAX_FRAME, **kwargs):
        super().__init__(addr, BINARY, connect_timeout, *args, max_frame=max_frame, **kwargs)
        # the reader greenlet is spawned but has not run yet: it starts on this decoder
        self.mode = WS
        self.upgraded = Event()
        self.refusal = None
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.decoder = WsDecoder(self, self.ws, max_frame)
        try:
            self.send_raw(self.ws.send(Request(host=format_addr(self.addr), target=WS_PATH)))
        except ConnectionLost:
            raise ConnectionLost(f"cannot connect to {self.label}: {self.close_reason}") from None
        gevent.wait([self.upgraded, self.done], timeout=connect_timeout, count=1)
        if self.refusal is not None or not self.upgraded.is_set():
            if self.refusal is not None:
                why = self.refusal
            elif self.closed:
                why = f"{self.close_reason} before answering the WebSocket handshake"
                if self.decoder.head:
                    why += f" (it sent {self.decoder.head!r})"
            else:
                why = f"no WebSocket handshake answer within {connect_timeout:g} s"
            self.close(why)
            raise ConnectionLost(f"cannot connect to {self.label}: {why}")

    def _encode(self, obj):
        payload = jsonlib.dumps(obj)
        return self.ws.send(Message(data=payload.decode("utf-8"))), len(payload)

    def send_quietly(self, data):
        """send_raw from a greenlet of its own (pong, close reply): a connection gone
        meanwhile is the reader's to report."""
        try:
            self.send_raw(data)
        except ConnectionLost:
            pass

    def close(self, reason="closed by the client"):
        ws = getattr(self, "ws", None)
        if not self.closed and ws is not None and ws.state is ConnectionState.OPEN \
                and self._wlock.acquire(blocking=False):
            try:   # a close frame if it goes out at once; the socket is closed next anyway
                self.sock.settimeout(0.0)
                self.sock.send(ws.send(CloseConnection(code=CLOSE_NORMAL)))
            except (OSError, ValueError, LocalProtocolError):
                pass
            finally:
                self._wlock.release()
        super().close(reason)
