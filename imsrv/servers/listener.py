"""Listening: bound sockets with errors that name the port and how to change it, and
:class:`Listener`, a gevent StreamServer with the set of its live connections (the API
server and the gateways are Listeners)."""
import errno
import socket

from gevent import socket as gsocket
from gevent.server import StreamServer


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
    """A gevent StreamServer and the set of its live connections (API and gateways)."""

    def __init__(self, app, cfg, listener):
        self.app = app
        self.cfg = cfg
        self.lim = cfg.limits
        self.server = _StreamServer(listener, self.handle)
        self.conns = set()
        self.draining = False

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
