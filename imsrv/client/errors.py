"""Exceptions of the client SDK."""


class ClientError(Exception):
    """Base class of every error the SDK raises."""


class ServerError(ClientError):
    """The server answered ``error``.  ``code`` is the protocol error code
    (``forbidden``, ``not_found``, ``conflict``, ``unauthorized``, ...), ``message`` the
    server's text, ``reply`` the whole error frame, ``retry_after`` set for
    ``rate_limited``."""

    def __init__(self, reply, op=None):
        self.reply = dict(reply)
        self.code = reply.get("code", "internal")
        self.message = reply.get("message", "")
        self.retry_after = reply.get("retry_after")
        self.op = op
        where = f"{op}: " if op else ""
        super().__init__(f"{where}{self.code}: {self.message}")


class ConnectionLost(ClientError):
    """The connection closed (or could not be opened) before the reply arrived."""


class Timeout(ClientError):
    """No reply within the timeout."""


class NotConnected(ClientError):
    """The operation needs the gateway connection and the client is not online."""


class Kicked(ClientError):
    """The server ended this session for good (``kicked``: replaced, logout or admin).
    The client does not reconnect by itself after a kick."""

    def __init__(self, reason):
        self.reason = reason
        super().__init__(f"kicked by the server: {reason}")


class ClientClosed(ClientError):
    """The client was closed (or logged out) while the call was waiting."""


class MessageTooLarge(ClientError, ValueError):
    """The request is bigger than the server accepts; nothing was sent (or, when the server
    was the one to say so, the message was dropped from the outbox).

    ``what`` is ``"body"`` (a message body over the contract's 16 KiB, encoded) or
    ``"frame"`` (the whole request over the server's ``max_frame``); ``size`` and
    ``limit`` are in bytes (``limit`` is None when the server refused a frame without
    saying its limit)."""

    def __init__(self, what, size, limit, text=None):
        self.what = what
        self.size = size
        self.limit = limit
        self.code = "too_large"
        if text is None:
            if what == "body":
                text = (f"the message is too large: its body is {size:,} bytes encoded and a "
                        f"message may have at most {limit:,}")
            elif limit is not None:
                text = (f"the request is too large: {size:,} bytes, and the server accepts at "
                        f"most {limit:,} in one frame")
            else:
                text = f"the server refused a request of {size:,} bytes as too large"
        super().__init__(text)
