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
