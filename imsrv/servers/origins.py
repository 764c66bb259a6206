"""Which web pages may open a WebSocket on this server: the Origin check of the handshake
(setting ``server.websocket_origins``).  Pure functions of the headers; no I/O."""
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def _host_port(netloc, scheme):
    """("host", port) of "host[:port]" (port defaulted from scheme), lower-cased."""
    parts = urlsplit("//" + netloc)
    try:
        port = parts.port
    except ValueError:
        return None
    return (parts.hostname or "", port or DEFAULT_PORTS.get(scheme))


class OriginPolicy:
    """Which web pages may open a WebSocket here (``server.websocket_origins``).

    A request without ``Origin`` (not a browser: the SDK, a script) is always let in.  A
    browser's ``Origin`` is let in when its host:port is the request's ``Host`` (the page
    was served by this host: same-origin), or when it is one of the configured origins
    (comma-separated ``scheme://host[:port]``), or when the setting is ``*``.  Anything
    else gets 403: a page elsewhere must not talk to the server with its visitors'
    credentials."""

    def __init__(self, setting=""):
        self.setting = setting
        items = [o.strip().lower().rstrip("/") for o in setting.split(",") if o.strip()]
        self.any = "*" in items
        self.allowed = set()
        for item in items:
            if item != "*":
                self.allowed.add(self._key(item))

    @staticmethod
    def _key(origin):
        """(scheme, host, port) of an origin; "null" stays "null"."""
        if origin == "null":
            return "null"
        parts = urlsplit(origin)
        hp = _host_port(parts.netloc, parts.scheme) if parts.scheme and parts.netloc else None
        if hp is None or parts.path or parts.query:
            raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], e.g. https://chat.example.com)"
                             " or *")
        return (parts.scheme,) + hp

    def refusal(self, origin, host):
        """-> None when ``origin`` may connect, else the reason (one line)."""
        if origin is None or self.any:
            return None
        try:
            key = self._key(origin.strip().lower())
        except ValueError:
            key = None
        if key is not None and key in self.allowed:
            return None
        if key not in (None, "null") and host and _host_port(host.lower(), key[0]) == key[1:]:
            return None
        listed = self.setting or "none"
        return (f"origin {origin} may not open a WebSocket here: only pages of the same host as the Host "
                f"header ({host or 'none'}) and server.websocket_origins ({listed}) may")
