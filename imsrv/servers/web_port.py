"""The WebSocket port (``server.websocket_port``; gateway N of the distributed deployment:
``--ws-port``, by default ``websocket_port + 10*N``): the WebSocket gateway at ``/ws`` and
plain HTTP (the web chat page, :func:`imsrv.web.app.make_app`) on one listening socket.

The first request line of a connection decides, before anything is answered (it is read
with a bound, :data:`MAX_LINE`, within ``limits.auth_timeout``; every byte read is kept):

- its path is ``/ws``, or the first bytes are no HTTP request line: a WebSocket
  connection of the Gateway (:class:`~imsrv.servers.websocket.WsConnection`, fed the bytes
  read so far: its decoder is sans-IO).  A bad handshake is refused there, with the
  one-line explanations of docs/PROTOCOL.md (404, 405, 426, 400);
- any other request: HTTP, served by gevent.pywsgi's ``WSGIHandler`` (request parsing,
  keep-alive, chunked bodies: an existing server, not this module), its ``rfile`` giving
  the bytes read so far first, then the socket; the application is the web app.  An idle
  kept-alive connection is closed after ``limits.api_idle_timeout`` seconds.  A response
  that leaves part of its request's body unread (a refused ``POST /api``: 413, 411, 415,
  403, 429; any other answer that did not read the body) closes the connection instead of
  reading the rest (pywsgi would read and drop it to its end, a gigabyte if the client
  says so): it carries ``Connection: close``, then the sending side is shut, what the
  client still sends is dropped for at most :data:`~imsrv.servers.tls.LINGER` s and
  :data:`~imsrv.servers.tls.LINGER_BYTES` bytes (so that the close does not reset the
  connection before the client read the answer) and the socket is closed
  (``http_body_skipped`` logged).

Browsers open a fresh connection for a WebSocket; a ``/ws`` request that comes later on a
kept-alive HTTP connection is answered by the WSGI side with the same refusals, a valid
upgrade there with 400 (the upgrade must be the first request of its connection).

WebSocket connections are the Gateway's ``conns`` (``connection_count``, the load report,
``limits.max_connections``); HTTP connections are tracked apart (``http``), count against
``max_connections`` too, and are cut at shutdown.
"""
import http
import io
import re
import socket
import time

import gevent
from gevent import pywsgi

from .. import logs
from .gateway import Gateway
from .origins import OriginPolicy
from .tls import LINGER, LINGER_BYTES
from ..protocol.websocket import WS_PATH
from .websocket import WsConnection, handshake_refusal

#: the longest request line routed (gevent.pywsgi's own bound: longer ones get its 414)
MAX_LINE = pywsgi.MAX_REQUEST_LINE
RECV_SIZE = 65536
#: an HTTP request line: method, target, version (RFC 9112 section 3)
REQUEST_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ ([^ \r\n]+) HTTP/\d\.\d\r?\n")
FIRST_ON_CONNECTION = "a WebSocket upgrade must be the first request of its connection; open a new one"


def route(head):
    """The first bytes of a connection -> "ws" (its request is for WS_PATH, or it is no
    HTTP request) or "http"."""
    if b"\n" not in head:
        return "http"   # a request line over MAX_LINE: pywsgi answers 414
    m = REQUEST_LINE.match(head)
    if m is None:
        return "ws"
    return "ws" if m.group(1).split(b"?", 1)[0] == WS_PATH.encode() else "http"


class _Prefixed(io.RawIOBase):
    """A raw reader: ``head`` first, then the socket (the HTTP handler's rfile)."""

    def __init__(self, head, sock):
        super().__init__()
        self.head = memoryview(head)
        self.sock = sock

    def readable(self):
        return True

    def readinto(self, buf):
        if self.head:
            n = min(len(buf), len(self.head))
            buf[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        return self.sock.recv_into(buf)


def _body_unread(wsgi_input):
    """True when the request body of ``wsgi_input`` (a pywsgi.Input) was not read to its
    end: bytes left of its Content-Length, or a chunked body before its last chunk (False
    for None: no request was parsed)."""
    if wsgi_input is None:
        return False
    if wsgi_input.chunked_input:
        return wsgi_input.chunk_length != 0
    return wsgi_input.position < (wsgi_input.content_length or 0)


class _Handler(pywsgi.WSGIHandler):
    """gevent's WSGI handler with imsrv's logs: one ``http_request`` line per request,
    client errors as ``http_refused``, an application's exception as ``internal_error``
    with its traceback (then gevent's 500); and a response that leaves its request's
    body unread closes the connection without reading the rest (the module docstring)."""

    body_skipped = False   # this request's body was left unread: linger, then close

    def start_response(self, status, headers, exc_info=None):
        if _body_unread(self.wsgi_input):   # announce the close the body's skip will need
            self.close_connection = True
            if not any(k.lower() == "connection" for k, _ in headers):
                headers = list(headers) + [("Connection", "close")]
        return super().start_response(status, headers, exc_info)

    def run_application(self):
        try:
            super().run_application()
        finally:
            inp = self.wsgi_input
            if _body_unread(inp):
                self.close_connection = True
                self.body_skipped = True
                # pywsgi.Input._discard (after this) reads to the end: make it see none left
                inp.chunked_input = False
                inp.content_length = inp.position

    def handle_one_response(self):
        self.body_skipped = False
        super().handle_one_response()
        if self.body_skipped:
            self._linger()

    def _linger(self):
        """The answer is written: shut the sending side, drop what the client still sends
        for at most LINGER s and LINGER_BYTES bytes; pywsgi closes the socket after."""
        logs.info("http_body_skipped", addr=_peer(self.client_address), method=self.command or "-",
                  path=(self.path or "")[:200], length=self.content_length, status=self.code)
        deadline = time.monotonic() + LINGER
        dropped = 0
        try:
            self.socket.shutdown(socket.SHUT_WR)
            while dropped < LINGER_BYTES:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.socket.settimeout(remaining)
                data = self.socket.recv(LINGER_BYTES)
                if not data:
                    break
                dropped += len(data)
        except OSError:
            pass

    def get_environ(self):
        env = super().get_environ()
        if hasattr(self.socket, "getpeercert"):   # wrapped in TLS by the Listener
            env["wsgi.url_scheme"] = "https"
        return env

    def log_request(self):
        took = (self.time_finish or time.time()) - self.time_start
        status = self._orig_status or self.status or "000"   # a refused request: pywsgi's "414"
        if isinstance(status, bytes):
            status = status.decode("latin-1")
        logs.info("http_request", addr=_peer(self.client_address), method=self.command or "-",
                  path=(self.path or self.requestline or "")[:200], status=status.split(" ", 1)[0],
                  bytes=self.response_length, ms=round(took * 1000, 1))

    def log_error(self, msg, *args):
        logs.info("http_refused", addr=_peer(self.client_address), reason=(msg % args if args else msg)[:300])

    def _log_error(self, t, v, tb):   # gevent's hook for an application's exception
        if not issubclass(t, gevent.GreenletExit):
            logs.exception("internal_error", v, service="http", addr=_peer(self.client_address),
                           method=self.command, path=(self.path or "")[:200])


def local_address(addr):
    """A listening (host, port) -> the (host, port) a process of this machine reaches it at
    (the wildcard addresses are not connectable: loopback instead)."""
    host, port = addr[:2]
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, port


def _peer(addr):
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)


class WebPort(Gateway):
    """The Gateway of the WebSocket port, with ``wsgi_app`` for its plain HTTP requests."""

    def __init__(self, app, cfg, listener, wsgi_app, name="websocket"):
        super().__init__(app, cfg, listener, connection_class=self._ws_connection, name=name)
        self.origins = OriginPolicy(cfg.server.websocket_origins)
        self.wsgi_app = wsgi_app
        self.http = set()      # sockets of the HTTP connections being served
        self._preread = {}     # socket -> bytes read before it became a WsConnection
        host, port = self.address[:2]
        # never started: the handlers' server (application, logs, base environ)
        self.wsgi = pywsgi.WSGIServer((host, port), application=self._http_app, log=None,
                                      error_log=logs.EventStream("http_error"), handler_class=_Handler,
                                      environ={"SERVER_NAME": host, "SERVER_PORT": str(port)})

    def _ws_connection(self, sock, addr, *args):
        return WsConnection(sock, addr, *args, origins=self.origins, preread=self._preread.pop(sock, b""))

    # ------------------------------------------------------------------ one connection
    def handle(self, sock, addr):
        # both kinds write a reply in pieces (pywsgi: headers, then body): no Nagle delay
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = self._read_request_line(sock, addr)
        if head is None:
            return
        if route(head) == "ws":
            self._preread[sock] = head
            try:
                super().handle(sock, addr)
            finally:
                self._preread.pop(sock, None)
        else:
            self._serve_http(sock, addr, head)

    def _read_request_line(self, sock, addr):
        """-> the bytes read until the first line ended (or MAX_LINE of them); None when
        the peer closed or said nothing whole in time (the socket is then closed)."""
        deadline = time.monotonic() + self.lim.auth_timeout
        head = b""
        while b"\n" not in head and len(head) < MAX_LINE:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise socket.timeout()
                sock.settimeout(remaining)
                data = sock.recv(RECV_SIZE)
            except socket.timeout:
                logs.info("request_timeout", service=self.name, addr=_peer(addr), after=self.lim.auth_timeout,
                          received=len(head))
                return None
            except OSError:
                return None
            if not data:
                return None
            head += data
        return head

    def _serve_http(self, sock, addr, head):
        if self.draining or len(self.conns) + len(self.http) >= self.lim.max_connections:
            self._unavailable(sock)
            return
        sock.settimeout(self.lim.api_idle_timeout)
        rfile = io.BufferedReader(_Prefixed(head, sock))
        self.http.add(sock)
        try:
            _Handler(sock, addr, self.wsgi, rfile=rfile).handle()
        except Exception as exc:   # a bug here must not take other connections down
            logs.exception("internal_error", exc, service="http", addr=_peer(addr))
        finally:
            self.http.discard(sock)
            rfile.close()

    def _unavailable(self, sock):
        """503 and close: shutting down, or limits.max_connections reached."""
        why = "shutting down" if self.draining else "too many connections"
        body = f"{why}; retry in {self.lim.retry_after:g} s\n".encode()
        try:
            sock.settimeout(5.0)
            sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
                         b"content-length: %d\r\nretry-after: %d\r\nconnection: close\r\n\r\n%s"
                         % (len(body), max(1, round(self.lim.retry_after)), body))
        except OSError:
            pass

    def _http_app(self, environ, start_response):
        """The web app, except for WS_PATH (reached only by a later request of a kept-alive
        connection) and HEAD (the app's answer to GET without its body)."""
        method = environ.get("REQUEST_METHOD", "GET")
        if environ.get("PATH_INFO") == WS_PATH:
            refusal = handshake_refusal(method.encode("latin-1"), WS_PATH, environ.get("HTTP_UPGRADE", ""))
            status, message, headers = refusal or (400, FIRST_ON_CONNECTION, [])
            body = (message + "\n").encode("utf-8")
            hdrs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers if k != b"connection"]
            start_response(f"{status} {http.HTTPStatus(status).phrase}",
                           hdrs + [("Content-Type", "text/plain; charset=utf-8"),
                                   ("Content-Length", str(len(body))), ("Connection", "close")])
            return [] if method == "HEAD" else [body]
        result = self.wsgi_app(environ, start_response)
        if method != "HEAD":
            return result
        try:
            for _ in result:   # start_response may come with the first item (PEP 3333)
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return []

    # ------------------------------------------------------------------ shutdown
    def shutdown(self, retry_after):
        """The Gateway's (stop accepting, bye every WebSocket client), and HTTP
        connections cut (page loads: the browser tries again)."""
        super().shutdown(retry_after)
        for sock in list(self.http):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
