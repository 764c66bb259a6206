"""Size limits the SDK keeps before it sends anything, and which send errors are final.

The server closes a connection that sends it a frame over its ``max_frame`` (``error``
``too_large``), and refuses a message body over 16 KiB encoded (``bad_request``).  A
client that only found out by sending would resend the same oversized entry of its outbox
after every reconnect, forever.  So :func:`check_send` refuses such a message before it
reaches the outbox, and :func:`oversized` finds entries (from an older run) that must
never be sent.

``max_frame`` is learned from the server: the ``login`` and the gateway ``auth`` replies
carry it; :data:`DEFAULT_MAX_FRAME` (the contract's default) when they do not.
"""
from .. import jsonlib
from .errors import MessageTooLarge

#: the contract's limit on a message body, JSON-encoded (protocol v1 "Names")
MAX_BODY_BYTES = 16 * 1024
#: the contract's default max_frame, assumed until the server says otherwise
DEFAULT_MAX_FRAME = 65536
#: room for the request id the connection adds to a frame (ids are small integers)
ID_ALLOWANCE = len(',"id":') + 20

#: send errors after which the same send is tried again later (nothing was stored)
RETRY_SEND_CODES = frozenset(("rate_limited", "unavailable"))
#: Any other code is final (too_large, bad_request, forbidden, not_found, internal, ...):
#: the entry leaves the outbox and is reported (``send_failed``), never resent.


def is_final(code):
    """True if a send refused with ``code`` must not be sent again."""
    return code not in RETRY_SEND_CODES


def body_size(body):
    """Bytes of ``body`` encoded as the server encodes it (TypeError / ValueError if it
    cannot be encoded as JSON)."""
    try:
        return len(jsonlib.dumps(body))
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"the message body cannot be encoded as JSON: {exc}") from None


def frame_size(op, fields):
    """Bytes the server counts against max_frame for a request (id allowance included):
    the JSON length in binary framing, the line without its terminator in line framing."""
    obj = {"op": op}
    obj.update(fields)
    return len(jsonlib.dumps(obj)) + ID_ALLOWANCE


def check_send(fields, max_frame, op="send"):
    """-> the request frame's size of outbox op ``op`` (send, edit, recall, react);
    MessageTooLarge if its body (send, edit) or the frame is over its limit."""
    if "body" in fields:
        size = body_size(fields["body"])
        if size > MAX_BODY_BYTES:
            raise MessageTooLarge("body", size, MAX_BODY_BYTES)
    n = frame_size(op, fields)
    if n > max_frame:
        raise MessageTooLarge("frame", n, max_frame)
    return n


def oversized(entry, max_frame):
    """-> MessageTooLarge if an outbox entry can never be sent, else None."""
    try:
        check_send(entry.fields(), max_frame, entry.op)
    except MessageTooLarge as exc:
        return exc
    return None


def frame_limit(reply, default=None):
    """The ``max_frame`` a login/auth reply announces (None or ``default`` if absent/invalid)."""
    value = reply.get("max_frame") if isinstance(reply, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value < 2 ** 32:
        return value
    return default
