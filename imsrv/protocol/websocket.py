"""The WebSocket transport's share of the wire contract (docs/PROTOCOL.md, "WebSocket"):
the endpoint's path, the close codes sent, and what one message decodes to.  The same
gateway ops as on the TCP gateway, one JSON object per WebSocket message; the server
(imsrv/servers/websocket.py) and the SDK (imsrv/client/ws_transport.py) both decode with
:func:`decode_message`, the parts of a message gathered by :class:`MessageParts`.  The
WebSocket protocol itself is wsproto's."""
from .. import jsonlib
from .errors import BAD_JSON, FrameError

#: the endpoint's path on the WebSocket port (every other path is the web page's)
WS_PATH = "/ws"
#: close codes (RFC 6455, 7.4.1): a normal close; a message over max_frame
CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 1009


def decode_message(payload):
    """The bytes of one whole WebSocket message -> its JSON object (a dict), or a
    FrameError ``bad_json`` that says what it is instead (empty, no JSON, JSON but no
    object)."""
    if not payload:
        return FrameError(BAD_JSON, "empty message is not a JSON object")
    try:
        obj = jsonlib.loads(payload)
    except jsonlib.JSONDecodeError as exc:
        return FrameError(BAD_JSON, f"message is not valid UTF-8 JSON: {exc}")
    if type(obj) is not dict:
        return FrameError(BAD_JSON, f"message is JSON but not an object ({type(obj).__name__})")
    return obj


class MessageTooLarge(Exception):
    """A message grew past max_frame bytes (each side answers it in its own way)."""


class MessageParts:
    """The parts of one WebSocket message as wsproto gives them (TextMessage /
    BytesMessage events, the last with ``message_finished``), at most ``max_frame`` bytes
    in all."""

    def __init__(self, max_frame):
        self.max_frame = max_frame
        self.parts = []
        self.size = 0

    def add(self, event):
        """-> :func:`decode_message` of the whole message when ``event`` ends it, else None.
        MessageTooLarge when the message is over max_frame bytes."""
        chunk = event.data.encode("utf-8") if isinstance(event.data, str) else bytes(event.data)
        self.size += len(chunk)
        if self.size > self.max_frame:
            raise MessageTooLarge(self.size)
        self.parts.append(chunk)
        if not event.message_finished:
            return None
        payload = b"".join(self.parts)
        self.parts, self.size = [], 0
        return decode_message(payload)
