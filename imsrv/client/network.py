"""Network layer of the client SDK: framed connections, request/reply matching,
heartbeats, dead-connection detection, and the reconnecting gateway link.

Everything here runs on gevent (one reader greenlet per connection).  Nothing here knows
about messages, cursors or outboxes: the business layer (:mod:`imsrv.client.client`)
plugs in through callbacks.

:class:`Conn`
    one TCP connection to the API or a gateway, in binary or line framing (protocol v1
    "Framing"), with integer request ids matched to replies, pushes handed to a callback,
    an optional heartbeat (``ping`` when idle, closed when no ``pong`` comes back in
    time), and every waiter failed with :class:`ConnectionLost` when it goes away.
:func:`api_call`
    one request to the API service on a short connection.
:class:`Link`
    keeps one authenticated gateway connection up: connects to the gateway that login
    names, authenticates, reconnects with exponential backoff and jitter, honours ``bye``
    ``retry_after``, re-logs in when the token was refused, stops for good on ``kicked``.
"""
import itertools
import logging
import random
import socket
import time

import gevent
from gevent import socket as gsocket
from gevent.event import AsyncResult, Event
from gevent.lock import Semaphore

from .. import codec
from .logfmt import kv as logkv, log
from .errors import ConnectionLost, MessageTooLarge, ServerError, Timeout


BINARY = codec.BINARY
LINE = codec.LINE
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


class _Callback:
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
    """

    def __init__(self, addr, mode=BINARY, connect_timeout=10.0, on_push=None, on_close=None,
                 label=None, max_frame=CLIENT_MAX_FRAME):
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
                except OSError as exc:
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
    def send_frame(self, obj):
        """Write one frame (no reply expected unless the caller registered one)."""
        data = codec.encode(obj, self.mode)
        if self.max_send is not None:
            size = len(data) - (4 if self.mode == BINARY else 1)
            if size > self.max_send:
                raise MessageTooLarge("frame", size, self.max_send)
        with self._wlock:
            if self.closed:
                raise ConnectionLost(f"connection to {self.label} is closed ({self.close_reason})")
            try:
                self.sock.sendall(data)
            except OSError as exc:
                self.close(f"write error: {_strerror(exc)}")
                raise ConnectionLost(f"connection to {self.label} lost: {self.close_reason}") from None
        self.last_send = monotonic()

    def request_async(self, op, waiter=None, **fields):
        """Send ``op`` with a fresh id; -> the waiter (an AsyncResult unless given) that
        gets the reply frame, or ConnectionLost if the connection ends first."""
        if self.closed:
            raise ConnectionLost(f"connection to {self.label} is closed ({self.close_reason})")
        rid = next(self._ids)
        frame = {"op": op, "id": rid}
        frame.update(fields)
        if waiter is None:
            waiter = AsyncResult()
        self._pending[rid] = waiter
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
        rid = next(self._ids)
        frame = {"op": op, "id": rid}
        frame.update(fields)
        if on_error is not None:
            self._pending[rid] = _Callback(lambda reply, exc: reply is not None and on_error(reply))
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
            self._heartbeat = gevent.spawn(self._heartbeat_loop, float(interval), float(timeout))

    def _heartbeat_loop(self, interval, timeout):
        tick = max(0.02, min(interval, timeout) / 4.0)
        ping = None
        ping_sent = 0.0
        while not self.closed:
            gevent.sleep(tick)
            now = monotonic()
            if ping is not None:
                if ping.ready():
                    ping = None
                elif now - ping_sent > timeout:
                    self.close(f"dead connection: no pong within {timeout:g}s")
                    return
            if ping is None and (now - self.last_recv >= interval or now - self.last_send >= interval):
                # The write happens in its own greenlet: a connection whose send buffer is
                # full (dead peer) must not stop us from noticing that the pong is late.
                ping = AsyncResult()
                ping_sent = now
                rid = next(self._ids)
                self._pending[rid] = ping
                gevent.spawn(self._send_quietly, {"op": "ping", "id": rid})

    def _send_quietly(self, frame):
        try:
            self.send_frame(frame)
        except ConnectionLost:
            pass

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
        hb = self._heartbeat
        if hb is not None and hb is not gevent.getcurrent():
            hb.kill(block=False)
        self.done.set()
        if self.on_close is not None:
            try:
                self.on_close(self)
            except Exception:
                log.exception("event=on_close_error conn=%r", self.label)


def _strerror(exc):
    if isinstance(exc, gevent.Timeout) or isinstance(exc, socket.timeout):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__


def api_call(addr, op, mode=BINARY, timeout=10.0, raw=False, **fields):
    """One request to the API service on a short connection.

    -> the reply frame; ServerError for an ``error`` reply unless ``raw``;
    ConnectionLost / Timeout when the service cannot be reached or does not answer."""
    conn = Conn(addr, mode, connect_timeout=timeout, label=f"API {format_addr(parse_addr(addr))}")
    try:
        reply = conn.request(op, timeout=timeout, **fields)
    finally:
        conn.close("done")
    if not raw and reply.get("op") == "error":
        raise ServerError(reply, op)
    return reply


class Backoff:
    """Exponential backoff with jitter: attempt n waits a random time in
    [d/2, d] with d = min(cap, base * factor**(n-1))."""

    def __init__(self, base=0.5, cap=30.0, factor=2.0, rng=None):
        self.base = float(base)
        self.cap = float(cap)
        self.factor = float(factor)
        self.rng = rng or random.Random()

    def delay(self, attempt):
        if attempt <= 0:
            return 0.0
        d = min(self.cap, self.base * self.factor ** min(attempt - 1, 64))
        return self.rng.uniform(d / 2.0, d)


class Link:
    """Keeps one authenticated gateway connection up.

    Callbacks (all run in gevent greenlets of this client):

    ``credentials(refresh) -> (token, gateway)``
        the token to authenticate with and the gateway ("host:port") to use.  ``refresh``
        is True when a new login is wanted (the token was refused, a ``bye`` asked us to
        come back to the gateway that login names, or the gateway kept failing).  May
        raise ServerError (``unauthorized`` is fatal), ConnectionLost or Timeout.
    ``on_online(conn, auth_reply)``
        runs after a successful ``auth``, before the link reports "online" (the business
        layer resends its outbox and syncs here).  Raising ConnectionLost/Timeout means
        the connection died.
    ``on_push(conn, frame)``
        every push (and id-less error frame), in the reader greenlet.
    ``on_state(state, info)``
        "connecting", "online", "offline", "reconnecting", "bye", "kicked",
        "auth_failed", "failed" (the server kept refusing a frame), "stopped".
    """

    #: online for at least this long = stable; the next failure restarts the backoff
    STABLE_AFTER = 10.0
    #: consecutive failures of one gateway after which a fresh login picks a gateway
    GATEWAY_FAILURES_BEFORE_RELOGIN = 2
    #: a token refused right after a fresh login this many times in a row is fatal
    MAX_FRESH_REFUSALS = 3
    #: connections closed in a row for a frame the server refused (too_large, bad_frame)
    #: after which the link stops (state "failed") instead of trying again
    MAX_FRAME_REFUSALS = 3

    def __init__(self, device, credentials, on_online=None, on_push=None, on_state=None,
                 mode=BINARY, heartbeat=30.0, heartbeat_timeout=10.0, connect_timeout=10.0,
                 backoff=None):
        self.device = device
        self.credentials = credentials
        self.on_online = on_online
        self.on_push = on_push
        self.on_state = on_state
        self.mode = mode
        self.heartbeat = heartbeat
        self.heartbeat_timeout = heartbeat_timeout
        self.connect_timeout = connect_timeout
        self.backoff = backoff or Backoff()
        self.conn = None           # the online connection, or None
        self.online = Event()
        self.stopped = Event()
        self.state = "offline"
        self.stop_reason = None    # "kicked", "auth_failed", "closed"
        self.kick_reason = None
        self.last_error = None
        self._stopping = False
        self._stop_evt = Event()
        self._bye = None
        self._kick = None
        self._error = None
        self._greenlet = None

    def start(self):
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self, reason="closed"):
        """Close the connection and stop reconnecting (idempotent)."""
        if not self._stopping:
            self._stopping = True
            self.stop_reason = self.stop_reason or reason
            self._stop_evt.set()
        conn = self.conn
        if conn is not None:
            conn.close("client stopped")
        g = self._greenlet
        if g is not None and g is not gevent.getcurrent():
            g.join(timeout=5)

    def wait_online(self, timeout=None):
        """Block until online (True), or stopped / timeout (False)."""
        deadline = None if timeout is None else monotonic() + timeout
        while not self.online.is_set():
            if self.stopped.is_set():
                return False
            remaining = None if deadline is None else deadline - monotonic()
            if remaining is not None and remaining <= 0:
                return False
            gevent.wait([self.online, self.stopped], timeout=remaining, count=1)
        return True

    # ------------------------------------------------------------------ internals
    def _state(self, state, **info):
        self.state = state
        if self.on_state is not None:
            try:
                self.on_state(state, info)
            except Exception:
                log.exception("event=on_state_error state=%s", state)

    def _push(self, conn, frame):
        op = frame.get("op")
        if op == "bye":
            self._bye = frame
        elif op == "kicked":
            self._kick = frame
        elif op == "error" and frame.get("id") is None:
            self._error = frame  # often the last word before the server closes
        if self.on_push is not None:
            self.on_push(conn, frame)

    def _sleep(self, seconds):
        """-> True if stop() was called during the sleep."""
        return self._stop_evt.wait(seconds) if seconds > 0 else self._stopping

    def _run(self):
        attempt = 0              # consecutive failures (drives the backoff)
        wait = 0.0
        refresh = False
        gw_failures = 0
        fresh_refusals = 0
        frame_refusals = 0       # consecutive connections closed for a frame the server refused
        try:
            while not self._stopping:
                if wait > 0:
                    self._state("reconnecting", delay=round(wait, 3), attempt=attempt)
                    if self._sleep(wait):
                        break
                wait = 0.0
                # 1. credentials (maybe a fresh login through the API)
                try:
                    token, gateway = self.credentials(refresh)
                except ServerError as exc:
                    self.last_error = exc
                    if exc.code in ("rate_limited", "unavailable", "internal"):
                        attempt += 1
                        wait = max(float(exc.retry_after or 0), self.backoff.delay(attempt))
                        self._state("offline", error=str(exc))
                        continue
                    self.stop_reason = "auth_failed"
                    self._state("auth_failed", error=str(exc), code=exc.code)
                    break
                except (ConnectionLost, Timeout) as exc:
                    self.last_error = exc
                    attempt += 1
                    wait = self.backoff.delay(attempt)
                    self._state("offline", error=str(exc))
                    continue
                fresh = refresh
                refresh = False
                # 2. connect and authenticate
                self._state("connecting", gateway=gateway)
                self._bye = self._kick = self._error = None
                try:
                    conn = Conn(gateway, self.mode, self.connect_timeout, on_push=self._push,
                                label=f"gateway {gateway}")
                except ConnectionLost as exc:
                    self.last_error = exc
                    attempt += 1
                    gw_failures += 1
                    if gw_failures >= self.GATEWAY_FAILURES_BEFORE_RELOGIN:
                        refresh = True
                    wait = self.backoff.delay(attempt)
                    self._state("offline", error=str(exc))
                    continue
                if self._stopping:
                    conn.close("client stopped")
                    break
                try:
                    reply = conn.request("auth", timeout=self.connect_timeout, token=token, device=self.device)
                except (ConnectionLost, Timeout) as exc:
                    conn.close(str(exc))
                    self.last_error = exc
                    attempt += 1
                    gw_failures += 1
                    if self._bye is not None:
                        # e.g. bye overloaded/shutdown instead of an auth reply
                        wait = float(self._bye.get("retry_after") or 0) or self.backoff.delay(attempt)
                        refresh = True
                        self._state("bye", reason=self._bye.get("reason"), retry_after=self._bye.get("retry_after"))
                    else:
                        if gw_failures >= self.GATEWAY_FAILURES_BEFORE_RELOGIN:
                            refresh = True
                        wait = self.backoff.delay(attempt)
                        self._state("offline", error=str(exc))
                    continue
                if reply.get("op") != "ok":
                    conn.close("auth refused")
                    exc = ServerError(reply, "auth")
                    self.last_error = exc
                    if exc.code == "unauthorized":
                        # expired or revoked token: log in again (immediately the first time)
                        if fresh:
                            fresh_refusals += 1
                            if fresh_refusals >= self.MAX_FRESH_REFUSALS:
                                self.stop_reason = "auth_failed"
                                self._state("auth_failed", error=str(exc), code=exc.code)
                                break
                            attempt += 1
                            wait = self.backoff.delay(attempt)
                        refresh = True
                        self._state("offline", error=str(exc), relogin=True)
                        continue
                    attempt += 1
                    wait = max(float(exc.retry_after or 0), self.backoff.delay(attempt))
                    self._state("offline", error=str(exc))
                    continue
                # 3. online
                gw_failures = 0
                fresh_refusals = 0
                since = monotonic()
                conn.start_heartbeat(self.heartbeat, self.heartbeat_timeout)
                self.conn = conn
                try:
                    if self.on_online is not None:
                        self.on_online(conn, reply)
                except (ConnectionLost, Timeout) as exc:
                    conn.close(str(exc))
                    self.last_error = exc
                except ServerError as exc:
                    conn.close(f"while coming online: {exc}")
                    self.last_error = exc
                if not conn.closed:
                    self.online.set()
                    self._state("online", gateway=gateway, user=reply.get("user"), head=reply.get("head"))
                conn.done.wait()
                self.online.clear()
                self.conn = None
                # 4. why did it end?
                if self._kick is not None:
                    self.kick_reason = self._kick.get("reason")
                    self.stop_reason = "kicked"
                    self._state("kicked", reason=self.kick_reason)
                    break
                if self._stopping:
                    break
                stable = monotonic() - since >= self.STABLE_AFTER
                attempt = 1 if stable else attempt + 1
                err = self._error
                code = err.get("code") if err is not None else None
                if err is not None:
                    self.last_error = ServerError(err)
                if code in FRAME_REFUSED:
                    # The business layer dropped what the server refused (on_push); if the
                    # same thing keeps happening, stop rather than loop on it for ever.
                    frame_refusals = 1 if stable else frame_refusals + 1
                    if frame_refusals >= self.MAX_FRAME_REFUSALS:
                        self.stop_reason = "refused"
                        self._state("failed", error=str(self.last_error), code=code)
                        break
                elif stable:
                    frame_refusals = 0
                if code == "unauthorized":
                    refresh = True   # the server no longer takes this session's token
                if self._bye is not None:
                    # the server said when to come back, and to come back through login
                    wait = float(self._bye.get("retry_after") or 0) or self.backoff.delay(attempt)
                    refresh = True
                    self._state("bye", reason=self._bye.get("reason"), retry_after=self._bye.get("retry_after"))
                else:
                    wait = self.backoff.delay(attempt)
                    said = {"code": code, "message": err.get("message")} if err is not None else {}
                    self._state("offline", error=conn.close_reason, **said)
        except Exception as exc:  # a bug: report it instead of dying silently
            log.exception("event=link_failed device=%s", self.device)
            self.last_error = exc
            self.stop_reason = self.stop_reason or "error"
        finally:
            self.online.clear()
            self.conn = None
            self._stopping = True
            self.stopped.set()
            self._state("stopped", reason=self.stop_reason)
