"""The WebSocket gateway (port 7080, path /ws): the gateway ops, one JSON object per
WebSocket message.

Only the transport differs from the TCP gateway, so this module supplies a Connection
whose "decoder" turns WebSocket bytes into the same items the frame codec yields (dicts
and FrameErrors) and whose encoder writes WebSocket text messages.  The WebSocket
protocol itself (handshake, masking, fragmentation, ping/pong, close) is wsproto's,
sans-IO like the rest of the protocol layer.
"""
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message, Ping,
                            RejectConnection, Request, TextMessage)
from wsproto.utilities import RemoteProtocolError

from .. import jsonlib
from ..codec import FrameError
from .connection import Connection

WS_PATH = "/ws"
CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 1009


class WsDecoder:
    """feed(bytes) -> [dict | FrameError]; answers the handshake, pings and closes itself."""

    mode = "ws"

    def __init__(self, conn, max_frame):
        self.conn = conn
        self.ws = WSConnection(ConnectionType.SERVER)
        self.max_frame = max_frame
        self.parts = []
        self.size = 0
        self.failed = False

    def _fail(self, out, code, message, close_code):
        self.failed = True
        out.append(FrameError(code, message, True))
        self.close_code = close_code
        return out

    def feed(self, data):
        out = []
        if self.failed:
            return out
        try:
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, Request):
                    if event.target.split("?", 1)[0] != WS_PATH:
                        self.conn.send_raw(self.ws.send(RejectConnection(status_code=404)))
                        self.failed = True
                        self.conn.close_with(None)
                        return out
                    self.conn.send_raw(self.ws.send(AcceptConnection()))
                elif isinstance(event, (TextMessage, BytesMessage)):
                    chunk = event.data.encode("utf-8") if isinstance(event, TextMessage) else bytes(event.data)
                    self.size += len(chunk)
                    if self.size > self.max_frame:
                        return self._fail(out, "too_large", f"message of more than {self.max_frame} bytes "
                                          f"exceeds max_frame", CLOSE_TOO_BIG)
                    self.parts.append(chunk)
                    if event.message_finished:
                        payload = b"".join(self.parts)
                        self.parts, self.size = [], 0
                        out.append(self._decode(payload))
                elif isinstance(event, Ping):
                    self.conn.send_raw(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if self.ws.state is ConnectionState.REMOTE_CLOSING:
                        self.conn.send_raw(self.ws.send(event.response()))
                    self.failed = True
                    self.conn.close_with(None)
                    return out
        except RemoteProtocolError as exc:
            if self.ws.state is ConnectionState.CONNECTING:  # not even a valid handshake
                self.failed = True
                self.conn.close_with(None)
                return out
            return self._fail(out, "bad_frame", f"WebSocket protocol error: {exc}", 1002)
        return out

    @staticmethod
    def _decode(payload):
        if not payload:
            return FrameError("bad_json", "empty message is not a JSON object")
        try:
            obj = jsonlib.loads(payload)
        except jsonlib.JSONDecodeError as exc:
            return FrameError("bad_json", f"message is not valid UTF-8 JSON: {exc}")
        if type(obj) is not dict:
            return FrameError("bad_json", f"message is JSON but not an object ({type(obj).__name__})")
        return obj


class WsConnection(Connection):
    def __init__(self, sock, addr, max_frame, max_queue_bytes, service, retry_after=5.0):
        super().__init__(sock, addr, max_frame, max_queue_bytes, service, retry_after)
        self.decoder = WsDecoder(self, max_frame)

    @property
    def mode(self):
        return "ws"

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
