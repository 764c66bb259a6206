"""``POST /api``: one API request of a browser, relayed to the API service.

A browser cannot open a raw TCP connection, so the web page sends each API request (a
JSON object, exactly the frame it would send on port 7001) as the body of ``POST /api``;
:class:`ApiRelay` sends it to the API service over a short TCP connection of its own
(binary framing: docs/PROTOCOL.md section 2), reads the one reply frame, closes the
connection and answers the reply as the response body.  The reply is relayed as it is,
``error`` replies included: the page branches on ``code`` as any client does.

HTTP status codes (decided by this server; the body is always one JSON object, the API's
reply or an ``error`` object of the protocol's shape with a ``code``):

====  =====================================================================================
200   the API's reply (``ok``, ``error``, whatever it answered)
400   the body is not a UTF-8 JSON object (``bad_json``)
403   the request comes from a page of another origin (``forbidden``; the same Origin
      rule as the WebSocket handshake, ``server.websocket_origins``)
405   a method other than POST (``Allow: POST``)
411   no Content-Length (``bad_request``)
413   the body is over ``limits.max_frame`` bytes (``too_large``)
415   the Content-Type is not ``application/json`` (``bad_request``): a page elsewhere
      cannot send that without a CORS preflight, which this server never grants
429   more than ``limits.web_api_rate`` requests per second (burst ``web_api_burst``) from
      this browser address (``rate_limited`` with ``retry_after``; header ``Retry-After``)
502   the API service cannot be reached or closed without answering, or refused this
      relay's key (``unavailable``)
504   the API service did not answer within ``limits.api_idle_timeout`` (``unavailable``)
====  =====================================================================================

The browser's address: every relayed request carries the field ``relay: {"addr":
REMOTE_ADDR, "key": the deployment's relay key}`` (imsrv/web/relay_key.py), replacing a
``relay`` the browser sent, so that the API throttles failed logins per browser, not per
relay.  The per-address buckets live in this process (:class:`~imsrv.core.ratelimit.BucketMap`:
idle ones are dropped, at most ``MAX_ADDRESSES``).

When the configuration makes TLS mandatory on the API port (``[tls] required``), the
relay connects with TLS and trusts the configured certificate (and the system's CAs)
without a host name check: it talks to the address of its own configuration.
"""
import socket
import ssl
import time

from .. import codec, jsonlib, logs
from ..core.ratelimit import BucketMap, retry_seconds
from ..protocol.errors import (BAD_JSON, BAD_REQUEST, FORBIDDEN, RATE_LIMITED, TOO_LARGE, UNAUTHORIZED,
                               UNAVAILABLE, error_reply)
from ..protocol.fields import echo_id
from ..servers.origins import OriginPolicy
from .relay_key import FIELD as RELAY_FIELD, REFUSED

CONNECT_TIMEOUT = 5.0   # seconds to reach the API service (it is local, or on the same LAN)
MAX_ADDRESSES = 100000  # browser addresses with a bucket (idle ones are dropped first)


class RelayError(Exception):
    """A request the relay answers itself: ``status`` (HTTP), ``code`` and ``message``."""

    def __init__(self, status, code, message, **extra):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra   # more fields of the error object (retry_after)

    def body(self, request_id=None):
        return error_reply(self.code, self.message, request_id, **self.extra)

    def headers(self):
        """The response's own headers (``Retry-After`` of a 429)."""
        return [("Retry-After", str(self.extra["retry_after"]))] if "retry_after" in self.extra else []


def _tls_context(cfg):
    """The client SSLContext for the API port when TLS is required there, else None."""
    tls = getattr(cfg, "tls", None)
    if tls is None or not getattr(tls, "required", False) or not getattr(tls, "cert", ""):
        return None
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cafile=tls.cert)
    ctx.verify_flags |= getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0)   # the leaf itself is trusted
    ctx.check_hostname = False   # our own configured address, pinned to our own certificate
    return ctx


class ApiRelay:
    """``relay(environ) -> (status, reply dict, headers)`` for ``POST /api`` (see the module
    docstring).  ``relay_key``: the deployment's relay key (imsrv/web/relay_key.py; None:
    the API sees the relay's own address, as without this field)."""

    def __init__(self, cfg, api_address, relay_key=None, clock=time.monotonic):
        self.api_address = (api_address[0], int(api_address[1]))
        self.relay_key = relay_key
        self.clock = clock
        self.buckets = BucketMap(cfg.limits.web_api_rate, cfg.limits.web_api_burst, MAX_ADDRESSES)
        self.max_frame = cfg.limits.max_frame
        self.timeout = cfg.limits.api_idle_timeout
        self.origins = OriginPolicy(cfg.server.websocket_origins)
        self.tls = _tls_context(cfg)

    @property
    def label(self):
        return "%s:%d" % self.api_address

    # -------------------------------------------------------------------- the request

    def read_request(self, environ):
        """-> the request object of ``environ``'s body; RelayError when it is not one."""
        refusal = self.origins.refusal(environ.get("HTTP_ORIGIN"), environ.get("HTTP_HOST"))
        if refusal:
            raise RelayError(403, FORBIDDEN, refusal.replace("open a WebSocket", "call /api"))
        ctype = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            raise RelayError(415, BAD_REQUEST, f"Content-Type must be application/json, not {ctype or 'none'}")
        length = environ.get("CONTENT_LENGTH") or ""
        try:
            length = int(length)
        except ValueError:
            raise RelayError(411, BAD_REQUEST, "a Content-Length is required") from None
        if length > self.max_frame:
            raise RelayError(413, TOO_LARGE, f"request of {length} bytes exceeds max_frame ({self.max_frame})")
        data = environ["wsgi.input"].read(length) if length > 0 else b""
        if not data:
            raise RelayError(400, BAD_JSON, "empty body: one JSON object (an API request) expected")
        try:
            obj = jsonlib.loads(data)
        except jsonlib.JSONDecodeError as exc:
            raise RelayError(400, BAD_JSON, f"body is not valid UTF-8 JSON: {exc}") from None
        if type(obj) is not dict:
            raise RelayError(400, BAD_JSON, f"body is JSON but not an object ({type(obj).__name__})")
        return obj

    # ------------------------------------------------------------------- to the API

    def call(self, obj):
        """Send ``obj`` to the API service, -> its reply (a dict); RelayError when it cannot."""
        frame = codec.encode(obj)
        if len(frame) - 4 > self.max_frame:
            raise RelayError(413, TOO_LARGE, f"request of {len(frame) - 4} bytes exceeds max_frame "
                             f"({self.max_frame})")
        try:
            sock = socket.create_connection(self.api_address, timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            raise RelayError(502, UNAVAILABLE, f"the API service at {self.label} cannot be reached: "
                             f"{exc.strerror or exc}; retry later") from None
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.api_address[0])
            sock.settimeout(self.timeout)
            sock.sendall(frame)
            return self._read_reply(sock)
        except socket.timeout:
            raise RelayError(504, UNAVAILABLE, f"the API service at {self.label} did not answer within "
                             f"{self.timeout:g} s; retry later") from None
        except (OSError, ssl.SSLError) as exc:
            raise RelayError(502, UNAVAILABLE, f"the connection to the API service at {self.label} failed: "
                             f"{getattr(exc, 'strerror', None) or exc}; retry later") from None
        finally:
            sock.close()

    @staticmethod
    def _read_reply(sock):
        decoder = codec.Decoder(codec.MAX_FRAME_LIMIT, codec.BINARY)
        while True:
            data = sock.recv(65536)
            if not data:
                raise RelayError(502, UNAVAILABLE, "the API service closed the connection without answering; "
                                 "retry later")
            for item in decoder.feed(data):
                if isinstance(item, dict):
                    return item
                raise RelayError(502, UNAVAILABLE, f"the API service answered an unreadable frame: {item.message}")

    # ------------------------------------------------------------------------ both

    def _throttle(self, addr):
        """RelayError 429 when ``addr`` is over its rate (every POST /api counts)."""
        wait = self.buckets.take(addr, self.clock())
        if not wait:
            return
        retry = retry_seconds(wait)
        raise RelayError(429, RATE_LIMITED, f"too many requests to /api from address {addr}; retry in "
                         f"{retry} s", retry_after=retry)

    def _relayed(self, obj, addr):
        """``obj`` with this relay's ``relay`` field (the browser's own is replaced)."""
        obj.pop(RELAY_FIELD, None)
        if self.relay_key is not None and addr:
            obj[RELAY_FIELD] = {"addr": addr, "key": self.relay_key.value}
        return obj

    def _call_relayed(self, obj, addr):
        """:meth:`call` with the relay field; a refused key is re-read once (Redis lost it
        and another process made a new one), then RelayError 502."""
        reply = self.call(self._relayed(obj, addr))
        if not _key_refused(reply):
            return reply
        if self.relay_key is not None and self.relay_key.refresh():
            reply = self.call(self._relayed(obj, addr))
            if not _key_refused(reply):
                return reply
        raise RelayError(502, UNAVAILABLE, f"the API service at {self.label} refused this relay's key "
                         "(another deployment's?); retry later")

    def relay(self, environ):
        """-> (HTTP status, reply dict, extra headers) for one ``POST /api``."""
        obj = None
        addr = environ.get("REMOTE_ADDR") or ""
        try:
            try:
                self._throttle(addr)
            except RelayError:
                try:   # for the id the answer echoes
                    obj = self.read_request(environ)
                except RelayError:
                    pass
                raise
            obj = self.read_request(environ)
            reply = self._call_relayed(obj, addr)
        except RelayError as exc:
            rid = echo_id(obj)
            level = logs.warning if exc.status >= 500 else logs.debug
            level("web_api_refused", status=exc.status, code=exc.code, op=str((obj or {}).get("op"))[:32],
                  addr=addr or "?", reason=exc.message)
            return exc.status, exc.body(rid), exc.headers()
        return 200, reply, []


def _key_refused(reply):
    """The API's answer to a relay field whose key it does not hold."""
    message = reply.get("message")
    return reply.get("code") == UNAUTHORIZED and type(message) is str and message.startswith(REFUSED)
