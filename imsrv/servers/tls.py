"""TLS on every listening port: the API, each gateway and the WebSocket port
(docs/PROTOCOL.md "Operations (v1.1)"), with the standard library's ssl under gevent.

With ``[tls] cert`` and ``key`` set, every :class:`~imsrv.servers.listener.Listener` hands
each new connection to :meth:`Edge.accept` first, in the connection's own greenlet (never
in the accept loop), and its handler gets what that returns:

- at most ``limits.max_connections`` connections of one listener are in this phase (first
  byte, handshake) at once (:attr:`Edge.pending`); one more is closed at once, before
  anything is read (``tls_handshake_failed`` reason ``too_many_handshakes``).  The cap
  is the listener's own connection limit: a listener never holds more connections
  waiting for TLS than it would serve, and those it serves are counted apart (the
  handler's own ``max_connections`` check, with its ``bye`` overloaded);
- one deadline bounds the peek and the whole handshake together, counted from the
  accept: ``max(first_byte_timeout, limits.auth_timeout)`` seconds (a gateway: its
  ``auth_timeout``; the API: its ``api_idle_timeout``, 30 s by default).  A socket
  timeout alone bounds each wait, not the sum: a client that sends its ClientHello one
  byte per (timeout - epsilon) would keep the socket and the greenlet for ever.  A
  connection still in the handshake at the deadline is closed (``tls_handshake_failed``
  reason ``timeout``);
- the first byte is peeked (``MSG_PEEK``: it stays in the socket for the handler), within
  the listener's ``first_byte_timeout`` (a gateway's ``limits.auth_timeout``, the API's
  ``limits.api_idle_timeout``); a connection silent that long, or closed, is closed
  (``first_byte_timeout`` logged);
- 0x16, a TLS handshake record: the socket is wrapped (gevent's SSLSocket, server side)
  and the handshake runs, each wait within ``limits.auth_timeout`` and all of it within
  the deadline; the handler gets the SSLSocket.  A failed handshake is one
  ``tls_handshake_failed`` line (addr, reason) and a close.  No
  plain client can start with 0x16: a binary frame's length would be at least 0x16000000
  bytes, over any max_frame config allows with TLS on (config.py checks), a line-mode
  client starts with ``{`` and HTTP with a method's letter;
- anything else is a plain client: handed over as it is, unless ``[tls] required``.  Then
  it is refused in its own framing (decided by this server, docs/PROTOCOL.md): ``{`` gets
  one line-mode ``error`` frame, an ASCII letter (an HTTP request) ``HTTP/1.1 400`` with a
  one-line text, anything else one binary ``error`` frame; the code is ``bad_frame`` (the
  server closes because of what was sent), the message :data:`REQUIRED_MESSAGE`.  The
  reply is written, the sending side shut, what the client still sends read and dropped
  for at most :data:`LINGER` s (so that a close with unread input does not reset the
  connection before the client read the reply), then the socket is closed
  (``tls_refused`` logged).  The refusal is outside the deadline (it has its own bound,
  LINGER) but inside the cap.

The server context (:func:`server_context`): TLS 1.2 or newer, no renegotiation, the
certificate chain of ``cert`` and its key; made once per (cert, key) and process.
"""
import socket
import time

import gevent
from gevent import ssl

from .. import codec, logs
from ..protocol.errors import BAD_FRAME, error_reply

#: the first byte of a TLS connection: a handshake record
TLS_HANDSHAKE = 0x16
#: with TLS on, max_frame must stay below this, so that no binary frame starts with 0x16
MAX_FRAME_WITH_TLS = TLS_HANDSHAKE << 24
REQUIRED_MESSAGE = "TLS is required on this port"
#: seconds a refused plain client gets to read the refusal while its input is dropped
LINGER = 1.0
#: bytes of a refused client's input dropped at most before the socket is closed
LINGER_BYTES = 65536

_contexts = {}   # (cert, key) -> the server SSLContext made for them


class TlsError(ValueError):
    """The certificate or key cannot be used (the message names the file and why)."""


def enabled(tls_section):
    """True when ``[tls]`` names a certificate and a key."""
    return bool(tls_section.cert and tls_section.key)


def server_context(cert, key):
    """The server SSLContext for ``cert`` (PEM: the certificate, then any intermediates)
    and ``key`` (PEM, unencrypted), made once per process -> gevent.ssl.SSLContext;
    TlsError when a file cannot be read or does not hold what it should."""
    ctx = _contexts.get((cert, key))
    if ctx is not None:
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise TlsError(f"[tls] cannot read {exc.filename or cert}: no such file "
                       "(`imsrv cert` writes a self-signed imsrv.crt and imsrv.key)") from None
    except ssl.SSLError as exc:
        raise TlsError(f"[tls] cert {cert} and key {key} cannot be used: {exc.reason or exc} "
                       "(PEM files expected: the certificate chain, and its unencrypted private key)") from None
    except OSError as exc:
        raise TlsError(f"[tls] cannot read {exc.filename or cert}: {(exc.strerror or str(exc)).lower()}") from None
    _contexts[(cert, key)] = ctx
    return ctx


def check(values):
    """The rules of ``[tls]`` a type alone does not express (config.py ``_check``), on the
    raw config ``values``: cert and key together, both loadable, max_frame below
    MAX_FRAME_WITH_TLS.  Raises ValueError (TlsError) naming the key."""
    tls = values["tls"]
    cert, key = tls["cert"], tls["key"]
    if bool(cert) != bool(key):
        raise TlsError("[tls] cert and key go together: set both (TLS on) or neither (TLS off)")
    if tls["required"] and not cert:
        raise TlsError("[tls] required = true needs cert and key")
    if not cert:
        return
    max_frame = values["limits"]["max_frame"]
    if max_frame >= MAX_FRAME_WITH_TLS:
        raise TlsError(f"[limits] max_frame = {max_frame}: with TLS on it must be below {MAX_FRAME_WITH_TLS} "
                       "(a binary frame's first byte must never look like a TLS handshake)")
    server_context(cert, key)


def _peer(addr):
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)


def _reason(exc):
    if isinstance(exc, socket.timeout):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.__class__.__name__
    return exc.strerror or exc.__class__.__name__ if isinstance(exc, OSError) else repr(exc)


def refusal(first):
    """The reply to a plain client whose first byte is ``first`` (an int) where TLS is
    required -> (kind, bytes): "line", "http" or "binary"."""
    if first == ord("{"):
        return "line", codec.encode(error_reply(BAD_FRAME, REQUIRED_MESSAGE), codec.LINE)
    if ord("A") <= first <= ord("Z") or ord("a") <= first <= ord("z"):
        body = (REQUIRED_MESSAGE + ": use https:// or wss://\n").encode()
        return "http", (b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
                        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
    return "binary", codec.encode(error_reply(BAD_FRAME, REQUIRED_MESSAGE), codec.BINARY)


class Edge:
    """The TLS side of a listener: ``context`` (server SSLContext), ``required``,
    ``handshake_timeout`` (seconds; limits.auth_timeout) and ``max_pending`` (the cap of
    connections in the first-byte and handshake phase; limits.max_connections).
    ``pending``: the connections in that phase now."""

    def __init__(self, context, required, handshake_timeout, max_pending):
        self.context = context
        self.required = required
        self.handshake_timeout = handshake_timeout
        self.max_pending = max_pending
        self.pending = 0

    @classmethod
    def from_config(cls, cfg):
        """The Edge of ``cfg``'s ``[tls]``, or None when TLS is off."""
        if not enabled(cfg.tls):
            return None
        return cls(server_context(cfg.tls.cert, cfg.tls.key), cfg.tls.required, cfg.limits.auth_timeout,
                   cfg.limits.max_connections)

    def deadline(self, first_byte_timeout):
        """Seconds from the accept within which the first byte and the whole handshake
        must be done: the larger of ``first_byte_timeout`` and ``handshake_timeout``."""
        return max(first_byte_timeout, self.handshake_timeout)

    def accept(self, sock, addr, service, first_byte_timeout):
        """A new connection (see the module docstring) -> the socket to serve (``sock``
        itself for a plain client, else an SSLSocket that took ``sock``'s descriptor
        over), or None when it was closed here (over the cap, silent, past the deadline,
        a failed handshake, or a plain client refused)."""
        if self.pending >= self.max_pending:
            logs.info("tls_handshake_failed", service=service, addr=_peer(addr), reason="too_many_handshakes",
                      pending=self.pending)
            sock.close()
            return None
        self.pending += 1
        try:
            served = self._accept_within(sock, addr, service, first_byte_timeout)
            if isinstance(served, int):   # a plain client's first byte, where TLS is required
                self._refuse(sock, addr, service, served)
                return None
            return served
        finally:
            self.pending -= 1

    def _accept_within(self, sock, addr, service, first_byte_timeout):
        """The peek and the handshake within one deadline -> the socket to serve, None
        (closed here), or the first byte (an int) of a plain client to refuse."""
        timer = gevent.Timeout(self.deadline(first_byte_timeout))
        timer.start()
        tls_sock = None
        try:
            try:
                sock.settimeout(first_byte_timeout)
                first = sock.recv(1, socket.MSG_PEEK)
            except (socket.timeout, gevent.Timeout) as exc:
                if exc is not timer and not isinstance(exc, socket.timeout):
                    raise
                logs.info("first_byte_timeout", service=service, addr=_peer(addr), after=first_byte_timeout)
                sock.close()
                return None
            except OSError:
                sock.close()
                return None
            if not first:
                sock.close()
                return None
            if first[0] != TLS_HANDSHAKE:
                return first[0] if self.required else sock
            try:
                tls_sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                tls_sock.settimeout(self.handshake_timeout)
                tls_sock.do_handshake()
            except (OSError, ValueError, gevent.Timeout) as exc:
                if isinstance(exc, gevent.Timeout) and exc is not timer:
                    raise
                reason = "timeout" if exc is timer else _reason(exc)
                logs.info("tls_handshake_failed", service=service, addr=_peer(addr), reason=reason)
                (tls_sock if tls_sock is not None else sock).close()
                return None
            return tls_sock
        finally:
            timer.close()

    def _refuse(self, sock, addr, service, first):
        kind, reply = refusal(first)
        logs.info("tls_refused", service=service, addr=_peer(addr), client=kind)
        deadline = time.monotonic() + LINGER
        try:
            sock.settimeout(LINGER)
            sock.sendall(reply)
            sock.shutdown(socket.SHUT_WR)
            dropped = 0
            while dropped < LINGER_BYTES:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                sock.settimeout(remaining)
                data = sock.recv(LINGER_BYTES)
                if not data:
                    break
                dropped += len(data)
        except OSError:
            pass
        finally:
            sock.close()
