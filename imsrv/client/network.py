"""Network layer of the client SDK: framed connections and request/reply matching.

Everything here runs on gevent (one reader greenlet per connection).  Nothing here knows
about messages, cursors or outboxes: the business layer (:mod:`imsrv.client.client`)
plugs in through callbacks.  The network layer is three modules:

:class:`Conn` (this module)
    one TCP connection to the API or a gateway, in binary or line framing (protocol v1
    "Framing"), with integer request ids matched to replies, pushes handed to a callback,
    and every waiter failed with :class:`ConnectionLost` when it goes away.  With ``tls``
    (an ``ssl.SSLContext``, see :func:`tls_context`) it is a TLS connection, the server's
    certificate and host name checked as the context says (by default both).
:func:`api_call` (this module)
    one request to the API service on a short connection.
:class:`~imsrv.client.heartbeat.Heartbeat`
    a connection's optional heartbeat (``ping`` when idle, closed as dead when no
    ``pong`` comes back in time): ``Conn.start_heartbeat``.
:class:`~imsrv.client.link.Link`
    keeps one authenticated gateway connection up: connects to the gateway that login
    names, authenticates, reconnects with exponential backoff and jitter, honours ``bye``
    ``retry_after``, re-logs in when the token was refused, stops for good on ``kicked``.
"""
import itertools
import logging
import socket
import ssl
import time

import gevent
from gevent import socket as gsocket
from gevent import ssl as gssl
from gevent.event import AsyncResult, Event
from gevent.lock import Semaphore

from .. import codec
from .logfmt import kv as logkv, log
from .errors import ConnectionLost, MessageTooLarge, ServerError, Timeout
from .heartbeat import Heartbeat


BINARY = codec.BINARY
LINE = codec.LINE
#: the gateway over its WebSocket port (Conn(addr, WS) is a ws_transport.WsConn)
WS = "ws"
#: server -> client frames that are pushes (they never carry a request id)
PUSH_OPS = frozenset(
    ("msg", "presence", "typing", "receipt", "friend_request", "friend_added", "kicked", "bye")
)
#: error codes after which the server closes the connection because of a frame we sent
FRAME_REFUSED = frozenset(("too_large", "bad_frame"))
#: the largest frame the client accepts from a server (servers cut replies to their own
#: max_frame, 64 KiB by default; this only guards against garbage)
CLIENT_MAX_FRAME = 16 * 1024 * 1024
RECV_SIZE = 65536

monotonic = time.monotonic


def parse_addr(text, default_port=None):
    """``"host:port"`` (or ``"[v6]:port"``, or a (host, port) tuple) -> (host, port)."""
    if isinstance(text, tuple):
        return text[0], int(text[1])
    text = str(text).strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, ""
    if not port:
        if default_port is None:
            raise ValueError(f"address {text!r}: expected host:port")
        port = default_port
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise ValueError(f"address {text!r}: port {port!r} is not a number") from None


def format_addr(addr):
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tls_context(tls=None, ca_file=None):
    """The client TLS context of the SDK's options -> an ``ssl.SSLContext``, or None (plain).

    ``tls``: None/False (plain, unless ``ca_file``), True (the system's CAs), or an
    ``ssl.SSLContext`` of the application's own (used as it is).  ``ca_file``: a PEM file
    of CA certificates to trust instead of the system's (e.g. the imsrv.crt of ``imsrv
    cert``); it implies TLS.  The default context checks the certificate and the host
    name (the host of each address connected to: the API's, and the gateway's a login
    names), TLS 1.2 at least."""
    if isinstance(tls, ssl.SSLContext):
        if ca_file:
            raise ValueError("give either an SSLContext (tls=) or ca_file, not both")
        return tls
    if not tls and not ca_file:
        return None
    return ssl.create_default_context(cafile=ca_file)


def _start_tls(sock, context, host, timeout):
    """``sock`` (connected) wrapped in TLS, the handshake done within ``timeout`` s -> a
    gevent SSLSocket (cooperative, whichever SSLContext class ``context`` is)."""
    tls_sock = gssl.SSLSocket(sock=sock, server_hostname=host, do_handshake_on_connect=False, _context=context)
    try:
        tls_sock.settimeout(timeout)
        tls_sock.do_handshake()
    except BaseException:
        tls_sock.close()   # it owns the descriptor now
        raise
    return tls_sock


class ReplyCallback:
    """A reply waiter that calls ``fn(reply, exc)`` in the reader greenlet (must not block
    on the network: it runs where replies are read)."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def set(self, reply):
        self.fn(reply, None)

    def set_exception(self, exc):
        self.fn(None, exc)


class Conn:
    """One framed connection with request/reply matching by id.

    ``on_push(conn, frame)`` is called in the reader greenlet for every frame that is not
    the reply to a pending request (pushes, and ``error`` frames without an id); it must
    not wait for replies on this connection (spawn a greenlet for that).
    ``on_close(conn)`` is called once when the connection ends, ``close_reason`` says why.
    ``mode`` WS makes a :class:`~imsrv.client.ws_transport.WsConn` (the same interface).
    """

    def __new__(cls, addr=None, mode=BINARY, *args, **kwargs):
        if mode == WS and cls is Conn:
            from .ws_transport import WsConn
            cls = WsConn
        return super().__new__(cls)

    def __init__(self, addr, mode=BINARY, connect_timeout=10.0, on_push=None, on_close=None,
                 label=None, max_frame=CLIENT_MAX_FRAME, tls=None):
        if mode not in (BINARY, LINE):
            raise ValueError(f"mode must be {BINARY!r} or {LINE!r}, not {mode!r}")
        self.addr = parse_addr(addr)
        self.label = label or format_addr(self.addr)
        self.mode = mode
        self.on_push = on_push
        self.on_close = on_close
        try:
            sock = gsocket.create_connection(self.addr, timeout=connect_timeout)
        except (OSError, gevent.Timeout) as exc:
            raise ConnectionLost(f"cannot connect to {self.label}: {_strerror(exc)}") from None
        if tls is not None:
            try:
                sock = _start_tls(sock, tls, self.addr[0], connect_timeout)
            except (OSError, ValueError) as exc:
                sock.close()
                raise ConnectionLost(f"cannot connect to {self.label}: TLS: {_strerror(exc)}") from None
        self.tls = tls is not None
        sock.settimeout(None)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.sock = sock
        #: the largest frame the peer accepts (its max_frame); None: unknown, not checked.
        #: A bigger frame raises MessageTooLarge and is not sent (the server would close).
        self.max_send = None
        self.decoder = codec.Decoder(max_frame, mode)
        self.closed = False
        self.close_reason = None
        self.done = Event()
        self._pending = {}
        self._ids = itertools.count(1)
        self._wlock = Semaphore()
        self.last_recv = self.last_send = monotonic()
        self._heartbeat = None
        self._reader = gevent.spawn(self._read_loop)

    def __repr__(self):
        state = f"closed ({self.close_reason})" if self.closed else "open"
        return f"<Conn {self.mode} {self.label} {state}>"

    # ------------------------------------------------------------------ reading
    def _read_loop(self):
        reason = "closed by the server"
        try:
            while not self.closed:
                try:
                    data = self.sock.recv(RECV_SIZE)
                except (OSError, ValueError) as exc:   # ValueError: a TLS socket closed meanwhile
                    reason = f"read error: {_strerror(exc)}"
                    break
                if not data:
                    break
                self.last_recv = monotonic()
                for item in self.decoder.feed(data):
                    if not isinstance(item, dict):
                        reason = f"the server sent an invalid frame ({item.code}: {item.message})"
                        return
                    self._dispatch(item)
        except Exception as exc:  # a bug in a callback: do not leave the connection half-dead
            log.exception("event=frame_handler_error conn=%r", self.label)
            reason = f"client error: {exc!r}"
        finally:
            self.close(reason)

    def _dispatch(self, frame):
        # Pushes never carry an id; a reply always carries its request's id (the reply to
        # `presence` is itself op "presence", so the op alone does not tell).
        rid = frame.get("id")
        if rid is not None:
            waiter = self._pending.pop(rid, None)
            if waiter is not None:
                waiter.set(frame)
                return
            if frame.get("op") not in PUSH_OPS:
                logkv(logging.DEBUG, "unknown_reply_id", conn=self.label, id=rid)
                return
        if self.on_push is not None:
            self.on_push(self, frame)

    # ------------------------------------------------------------------ writing
    def new_request(self, op, waiter, fields):
        """A request frame with a fresh id, its reply going to ``waiter`` (None: no
        waiter) -> (id, frame).  Nothing is sent."""
        rid = next(self._ids)
        frame = {"op": op, "id": rid}
        frame.update(fields)
        if waiter is not None:
            self._pending[rid] = waiter
        return rid, frame

    def send_frame(self, obj):
        """Write one frame (no reply expected unless the caller registered one)."""
        data, size = self._encode(obj)
        if self.max_send is not None:
            if size > self.max_send:
                raise MessageTooLarge("frame", size, self.max_send)
        self.send_raw(data)
        self.last_send = monotonic()

    def send_raw(self, data):
        """Write bytes that are framed already (a frame; a WebSocket handshake, pong or close)."""
        with self._wlock:
            if self.closed:
                raise ConnectionLost(f"connection to {self.label} is closed ({self.close_reason})")
            try:
                self.sock.sendall(data)
            except (OSError, ValueError) as exc:   # ValueError: a TLS socket closed meanwhile
                self.close(f"write error: {_strerror(exc)}")
                raise ConnectionLost(f"connection to {self.label} lost: {self.close_reason}") from None

    def _encode(self, obj):
        """-> (the bytes of frame ``obj``, its size as max_frame counts it)."""
        data = codec.encode(obj, self.mode)
        return data, len(data) - (4 if self.mode == BINARY else 1)

    def request_async(self, op, waiter=None, **fields):
        """Send ``op`` with a fresh id; -> the waiter (an AsyncResult unless given) that
        gets the reply frame, or ConnectionLost if the connection ends first."""
        if self.closed:
            raise ConnectionLost(f"connection to {self.label} is closed ({self.close_reason})")
        if waiter is None:
            waiter = AsyncResult()
        rid, frame = self.new_request(op, waiter, fields)
        try:
            self.send_frame(frame)
        except BaseException:
            self._pending.pop(rid, None)
            raise
        return waiter

    def hint(self, op, on_error=None, forget_after=10.0, **fields):
        """Send a request the server does not answer when it succeeds (``typing``).  It
        carries an id all the same, so an error reply is matched to it and goes to
        ``on_error(reply)`` instead of looking like a push; the id is forgotten after
        ``forget_after`` seconds."""
        if self.closed:
            raise ConnectionLost(f"connection to {self.label} is closed ({self.close_reason})")
        waiter = None
        if on_error is not None:
            waiter = ReplyCallback(lambda reply, exc: reply is not None and on_error(reply))
        rid, frame = self.new_request(op, waiter, fields)
        if waiter is not None:
            gevent.spawn_later(forget_after, self._pending.pop, rid, None)
        try:
            self.send_frame(frame)
        except BaseException:
            self._pending.pop(rid, None)
            raise

    def request(self, op, timeout=None, **fields):
        """Send ``op`` and wait for its reply frame (``ok``/``error``/...)."""
        waiter = self.request_async(op, **fields)
        try:
            return waiter.get(timeout=timeout)
        except gevent.Timeout:
            raise Timeout(f"no reply to {op} from {self.label} within {timeout}s") from None

    def call(self, op, timeout=None, **fields):
        """request() that raises ServerError for an ``error`` reply."""
        reply = self.request(op, timeout=timeout, **fields)
        if reply.get("op") == "error":
            raise ServerError(reply, op)
        return reply

    # ------------------------------------------------------------------ liveness
    def start_heartbeat(self, interval, timeout):
        """Ping when nothing was sent or received for ``interval`` seconds; close the
        connection as dead when a ping gets no pong within ``timeout`` seconds."""
        if interval and interval > 0 and self._heartbeat is None and not self.closed:
            self._heartbeat = Heartbeat(self, float(interval), float(timeout))

    # ------------------------------------------------------------------ closing
    def close(self, reason="closed by the client"):
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        exc = ConnectionLost(f"connection to {self.label} lost: {reason}")
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            try:
                waiter.set_exception(exc)
            except Exception:
                log.exception("event=waiter_error")
        if self._heartbeat is not None:
            self._heartbeat.stop()
        self.done.set()
        if self.on_close is not None:
            try:
                self.on_close(self)
            except Exception:
                log.exception("event=on_close_error conn=%r", self.label)


def _strerror(exc):
    if isinstance(exc, gevent.Timeout) or isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or str(exc)
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__


def api_call(addr, op, mode=BINARY, timeout=10.0, raw=False, tls=None, **fields):
    """One request to the API service on a short connection (TLS with ``tls``, an
    SSLContext: :func:`tls_context`).

    -> the reply frame; ServerError for an ``error`` reply unless ``raw``;
    ConnectionLost / Timeout when the service cannot be reached or does not answer."""
    conn = Conn(addr, mode, connect_timeout=timeout, label=f"API {format_addr(parse_addr(addr))}", tls=tls)
    try:
        reply = conn.request(op, timeout=timeout, **fields)
    finally:
        conn.close("done")
    if not raw and reply.get("op") == "error":
        raise ServerError(reply, op)
    return reply
