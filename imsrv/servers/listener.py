"""Listening: bound sockets with errors that name the port and how to change it, and
:class:`Listener`, a gevent StreamServer with the set of its live connections (the API
server, the gateways and the WebSocket port are Listeners).

TLS is here, for every listener at once: with ``[tls] cert`` and ``key`` set, each new
connection goes through :meth:`imsrv.servers.tls.Edge.accept` (first byte peeked; a TLS
handshake, a plain client, or a refusal when TLS is required) in its own greenlet before
:meth:`Listener.handle` gets it, an SSLSocket or the plain socket as it came.  That phase
has one deadline from the accept (peek and handshake together) and a cap per listener,
``limits.max_connections`` connections in it at once (imsrv/servers/tls.py)."""
import errno
import socket

from gevent import socket as gsocket
from gevent.server import StreamServer

from . import tls


class ListenError(Exception):
    """A port that cannot be listened on; the message names it and how to change it."""

    def __init__(self, host, port, what, remedy, err):
        self.host, self.port, self.what, self.err = host, port, what, err
        if err.errno == errno.EADDRINUSE:
            reason = f"address already in use; choose another with {remedy}"
        elif err.errno == errno.EACCES:
            reason = f"permission denied (ports below 1024 need privileges); choose another with {remedy}"
        elif err.errno == errno.EADDRNOTAVAIL:
            reason = "no such address on this machine; choose another with --host H or server.host"
        else:
            reason = f"{(err.strerror or str(err)).lower()}; {remedy} changes the port"
        shown = f"[{host}]" if ":" in host else host
        super().__init__(f"cannot listen on {shown}:{port} ({what}): {reason}")


#: the listen queue of every server socket (the kernel caps it at net.core.somaxconn).
#: gevent's default, 128, overflowed when 200 clients connected at once (`imsrv bench
#: idle`: 50-100 of 15,000 handshakes dropped, each retried by the client's kernel 1 s
#: later); a reconnect storm after a restart needs room too.
BACKLOG = 1024


def listen(host, port, what, remedy, backlog=BACKLOG):
    """A bound, listening (gevent) socket on host:port, or ListenError naming ``what``
    (e.g. "WebSocket gateway") and ``remedy`` (e.g. "--ws-port N or server.websocket_port").

    Servers bind with this before anything else is made (data directory, store), so a
    busy port leaves nothing behind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = gsocket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ListenError(host, port, what, remedy, exc) from None
    sock.setblocking(False)
    return sock


def listen_all(specs):
    """listen() for each (host, port, what, remedy); on a failure the sockets bound
    already are closed before ListenError is raised."""
    socks = []
    try:
        for spec in specs:
            socks.append(listen(*spec))
    except ListenError:
        for sock in socks:
            sock.close()
        raise
    return socks


class _StreamServer(StreamServer):
    """gevent's StreamServer, except that a socket whose handler parked its connection
    (Listener.keep_open) is not closed when the handler returns."""

    def __init__(self, listener, handle):
        super().__init__(listener, handle)
        self.kept = set()

    def do_close(self, sock, *args):
        if sock in self.kept:
            self.kept.discard(sock)
        else:
            sock.close()


class Listener:
    """A gevent StreamServer and the set of its live connections (API and gateways).

    ``tls``: the :class:`~imsrv.servers.tls.Edge` of ``cfg`` (None: TLS off, the
    StreamServer calls :meth:`handle` directly)."""

    #: the name in log lines (a Gateway's instances have their own)
    name = "listener"

    def __init__(self, app, cfg, listener):
        self.app = app
        self.cfg = cfg
        self.lim = cfg.limits
        self.tls = tls.Edge.from_config(cfg)
        self.server = _StreamServer(listener, self.handle if self.tls is None else self._accept)
        self.conns = set()
        self.draining = False

    @property
    def first_byte_timeout(self):
        """Seconds a new connection may stay silent before its first byte, with TLS on
        (the peek that tells TLS from plain): a gateway's auth_timeout; the API's is its
        api_idle_timeout (ApiServer)."""
        return self.lim.auth_timeout

    def _accept(self, sock, addr):
        """The StreamServer's handler with TLS on: TLS or plain (Edge.accept, in this
        connection's greenlet; bounded by its deadline, capped at ``limits.max_connections``
        connections at once, more closed there), then :meth:`handle` with the socket to
        serve.  An SSLSocket
        took the accepted socket's descriptor over: it is closed here when the handler
        returns, unless the handler parked its connection (keep_open)."""
        served = self.tls.accept(sock, addr, self.name, self.first_byte_timeout)
        if served is None:   # closed there
            return
        if served is sock:   # a plain client
            self.handle(sock, addr)
            return
        try:
            self.handle(served, addr)
        finally:
            if served in self.server.kept:
                self.server.kept.discard(served)   # parked: it lives on
            else:
                served.close()

    def keep_open(self, sock):
        """The handler returns but its connection lives on (parked): keep the socket open."""
        self.server.kept.add(sock)

    @property
    def address(self):
        return self.server.address

    def start(self):
        self.server.start()

    def connection_count(self):
        return len(self.conns)

    def handle(self, sock, addr):
        raise NotImplementedError
