"""A minimal, fast wire client for the load generator (docs/PROTOCOL.md), on imsrv.codec.

Not the SDK (imsrv.client): no outbox, no reconnects, no cursor keeping; just frames on
a gevent socket, so one worker process can drive thousands of connections and pipeline
sends (many frames in one write, replies read in bulk).

- :class:`Conn`: one API or gateway connection in binary mode.  ``send`` / ``send_batch``
  write frames, ``read()`` returns the frames of one socket read, ``call`` / ``calls``
  send requests and return their replies (frames that are not replies, pushes, are kept
  in ``backlog`` for whoever reads next).
- :func:`register_and_login`: accounts over the API, pipelined on a few connections.
- :func:`befriend`: friend request + accept for pairs of users.
- :func:`open_gateway`: connect to a gateway and ``auth`` (as a given device, from a given
  source address) -> (conn, auth reply);
  :func:`connect_many`: that for many accounts, a bounded number at a time.
- :func:`api_calls`: a list of requests on one short API connection.

TLS (``imsrv bench pairs|idle --tls``): :func:`use_tls` sets the TLS of every connection
this process opens from then on (a worker calls it first with its shard's ``tls``; the
parent too, for its own connections): the handshake is part of :func:`connect`, bounded
by the same timeout, the certificate and host name checked.
"""
import socket
import ssl

import gevent
from gevent import socket as gsocket
from gevent import ssl as gssl
from gevent.pool import Group, Pool

from .. import codec

#: every bench account's password (8 to 128 characters, docs/PROTOCOL.md section 4)
PASSWORD = "bench-password"
#: the device name the bench logs in with
DEVICE = "bench"
#: seconds a request may take before the bench calls it a failure
CALL_TIMEOUT = 60.0
#: requests written at once on one API connection during setup
SETUP_CHUNK = 100
#: API connections register_and_login uses side by side (the server handles each
#: connection's requests in order; several let its store group the commits)
SETUP_CONNECTIONS = 4
#: Linux's IP_BIND_ADDRESS_NO_PORT: a socket bound to a source address before connect
#: gets its port at connect, per destination (bind alone would reserve one per address)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class BenchError(RuntimeError):
    """The server answered something the bench cannot go on with (the message says what)."""


class Refused(BenchError):
    """A request answered with something else than expected; ``reply`` is the answer (its
    ``code`` says why: ``unavailable`` may be retried, docs/PROTOCOL.md section 9)."""

    def __init__(self, message, reply):
        super().__init__(message)
        self.reply = reply


class Closed(ConnectionError):
    """The server closed the connection (or sent a fatal framing error)."""


#: the SSLContext of this process's connections (use_tls), None: plain; and its spec
_tls = None
_tls_spec = None


def use_tls(spec):
    """Connect with TLS from now on: ``spec`` True (the system's CAs), a path (a PEM file
    of CAs to trust, e.g. the certificate the bench made for its deployment), or
    None/False (plain)."""
    global _tls, _tls_spec
    _tls_spec = spec or None
    _tls = ssl.create_default_context(cafile=spec if isinstance(spec, str) else None) if spec else None


def tls_spec():
    """What :func:`use_tls` was given (picklable: put it in a shard, for the worker's call)."""
    return _tls_spec


def split_address(address):
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


def connect(address, timeout, source=None):
    """A connected gevent socket to ``address``; from the source IP ``source`` (bound
    before connect, the port chosen by connect) when given; TLS after :func:`use_tls`
    (the handshake done within ``timeout`` as well)."""
    if source is None:
        sock = gsocket.create_connection(split_address(address), timeout=timeout)
    else:
        sock = gsocket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            sock.settimeout(timeout)
            sock.connect(split_address(address))
        except BaseException:
            sock.close()
            raise
    if _tls is None:
        return sock
    try:
        tls_sock = gssl.SSLSocket(sock=sock, server_hostname=split_address(address)[0],
                                  do_handshake_on_connect=False, _context=_tls)
    except BaseException:
        sock.close()
        raise
    try:
        tls_sock.settimeout(timeout)
        tls_sock.do_handshake()
    except BaseException:
        tls_sock.close()
        raise
    return tls_sock


class Conn:
    """One connection in binary mode (see the module docstring).  Always ``close()`` it;
    it is a context manager too.  ``source``: the local IP to connect from."""

    def __init__(self, address, timeout=CALL_TIMEOUT, source=None):
        self.address = address
        self.sock = connect(address, timeout, source)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = codec.Decoder(codec.MAX_FRAME_LIMIT)
        self.backlog = []
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.closed = True
        self.sock.close()

    def send(self, frame):
        self.sock.sendall(codec.encode(frame))

    def send_batch(self, frames):
        self.sock.sendall(codec.encode_batch(frames))

    def read(self):
        """The frames of the next socket read (pushes kept from a ``call`` first).  Raises
        :class:`Closed` at the end of the stream or on a frame the codec rejects."""
        if self.backlog:
            frames, self.backlog = self.backlog, []
            return frames
        try:
            data = self.sock.recv(262144)
        except OSError as exc:
            raise Closed(f"{self.address}: {exc}") from None
        if not data:
            raise Closed(f"{self.address}: closed by the server")
        frames = self.decoder.feed(data)
        for frame in frames:
            if isinstance(frame, codec.FrameError):   # the server's output is always valid: a bug to surface
                raise Closed(f"{self.address}: the server sent a frame the codec rejects: {frame.code}: "
                             f"{frame.message}")
        return frames

    def calls(self, requests, timeout=CALL_TIMEOUT):
        """Write ``requests`` (each with a distinct ``id``) at once -> their replies, in
        order.  Other frames are kept in ``backlog``."""
        wanted = {request["id"]: index for index, request in enumerate(requests)}
        replies = [None] * len(requests)
        missing = len(requests)
        kept = []
        self.send_batch(requests)
        with gevent.Timeout(timeout, BenchError(f"{self.address}: no reply within {timeout:.0f} s to "
                                                f"{requests[0].get('op')} (+{len(requests) - 1} more)")):
            while missing:
                for frame in self.read():
                    index = wanted.get(frame.get("id"))
                    if index is None or replies[index] is not None:
                        kept.append(frame)
                        continue
                    replies[index] = frame
                    missing -= 1
        self.backlog = kept + self.backlog
        return replies

    def call(self, request, timeout=CALL_TIMEOUT):
        return self.calls([request], timeout)[0]


def expect_ok(request, reply, ops=("ok",)):
    """``reply`` if its op is one of ``ops``, else :class:`BenchError` naming the request."""
    if reply.get("op") not in ops:
        what = {key: value for key, value in request.items() if key not in ("password", "token", "body")}
        raise Refused(f"{what} was answered {reply}", reply)
    return reply


def api_calls(api, requests, timeout=CALL_TIMEOUT):
    """``requests`` on one short API connection, in chunks of SETUP_CHUNK -> replies, each
    checked to be ``ok``."""
    replies = []
    with Conn(api, timeout) as conn:
        for start in range(0, len(requests), SETUP_CHUNK):
            chunk = [dict(request, id=start + index) for index, request in
                     enumerate(requests[start:start + SETUP_CHUNK])]
            for request, reply in zip(chunk, conn.calls(chunk, timeout)):
                replies.append(expect_ok(request, reply))
    return replies


def register_and_login(api, names, progress=None, connections=SETUP_CONNECTIONS):
    """Register every one of ``names`` and log each in -> {name: login reply} (``token``,
    ``gateway``).  ``progress(count)`` is called after each chunk with the accounts done
    so far."""
    accounts = {}

    def one_connection(share):
        with Conn(api) as conn:
            for start in range(0, len(share), SETUP_CHUNK // 2):
                chunk = share[start:start + SETUP_CHUNK // 2]
                requests = []
                for name in chunk:
                    requests.append({"op": "register", "user": name, "password": PASSWORD})
                    requests.append({"op": "login", "user": name, "password": PASSWORD, "device": DEVICE})
                replies = api_calls_on(conn, requests)
                for index, name in enumerate(chunk):
                    accounts[name] = replies[2 * index + 1]
                if progress is not None:
                    progress(len(accounts))

    group = Group()
    try:
        for index in range(connections):
            if names[index::connections]:
                group.spawn(one_connection, names[index::connections])
        group.join(raise_error=True)
    finally:
        group.kill()
    return accounts


def api_calls_on(conn, requests, timeout=CALL_TIMEOUT):
    """``requests`` pipelined on the open API connection ``conn`` -> replies, checked ok."""
    requests = [dict(request, id=index) for index, request in enumerate(requests)]
    return [expect_ok(request, reply) for request, reply in zip(requests, conn.calls(requests, timeout))]


def befriend(api, pairs):
    """Make friends of each (user_a, token_a, user_b, token_b) of ``pairs``."""
    requests = [{"op": "friend_request", "token": token_a, "to": user_b} for user_a, token_a, user_b, _ in pairs]
    accepts = [{"op": "friend_accept", "token": token_b, "user": user_a} for user_a, _, _, token_b in pairs]
    with Conn(api) as conn:
        for start in range(0, len(pairs), SETUP_CHUNK):
            api_calls_on(conn, requests[start:start + SETUP_CHUNK])
            api_calls_on(conn, accepts[start:start + SETUP_CHUNK])


def open_gateway(address, token, timeout=CALL_TIMEOUT, device=None, source=None):
    """Connect to the gateway at ``address`` (from ``source``) and authenticate (as
    ``device``; default the login's) -> (conn, the auth reply)."""
    conn = Conn(address, timeout, source)
    try:
        request = {"op": "auth", "id": 0, "token": token}
        if device is not None:
            request["device"] = device
        reply = expect_ok(request, conn.call(request, timeout))
    except BaseException:
        conn.close()
        raise
    return conn, reply


def connect_many(accounts, concurrency, progress=None, tick=0.2):
    """Connect and authenticate every one of ``accounts`` ({name: login reply}) with at
    most ``concurrency`` in flight -> ({name: (conn, auth reply)}, [problems]).
    ``progress(connected, failed)`` is called every ``tick`` seconds and at the end."""
    connected, problems = {}, []

    def one(name):
        account = accounts[name]
        try:
            connected[name] = open_gateway(account["gateway"], account["token"])
        except (OSError, BenchError) as exc:
            problems.append(f"{name}: connect/auth to {account['gateway']}: {exc}")

    pool = Pool(concurrency)

    def feed():
        for name in accounts:
            pool.spawn(one, name)   # waits for a free slot
        pool.join()

    feeder = gevent.spawn(feed)
    try:
        while True:
            feeder.join(timeout=tick)
            if progress is not None:
                progress(len(connected), len(problems))
            if feeder.ready():
                break
        feeder.get()
    except BaseException:
        feeder.kill()
        pool.kill()
        for conn, _ in connected.values():
            conn.close()
        raise
    return connected, problems
