"""The gateway: long connections.  Auth first, then sends, syncs, pushes, heartbeats.

A thin shell: a greenlet per connection reads frames and hands them to the core (the
first to :meth:`App.open_session`, the others to the dispatcher with the gateway's op
table), in order (replies keep request order); consecutive ``send``s of one read are
handed to the send path together, so they share one store transaction.  Pushes from other
greenlets go through Connection.send; a session's push order is core/session.py's.

After auth, a connection with nothing left to read is parked (Connection.park) and its
greenlet ends; input (or a close) spawns a new one (:meth:`Gateway._resume`).  An idle
client so costs no greenlet, and ``limits.idle_timeout`` is the parked connection's timer.
The whole life of a connection, however many greenlets served it, ends in
:meth:`Gateway._finish`, once.
"""
import socket

import gevent

from .. import logs
from ..core.dispatch import replies_in_order
from ..core.ratelimit import TokenBucket, retry_seconds
from ..protocol.errors import UNAUTHORIZED, RateLimited, error_reply
from ..protocol.fields import echo_id
from ..protocol.schemas import SEND_OPS
from .connection import Connection, jittered
from .listener import Listener


class Gateway(Listener):
    def __init__(self, app, cfg, listener, connection_class=Connection, name="gateway"):
        super().__init__(app, cfg, listener)
        self.connection_class = connection_class
        self.name = name
        self.auths_ok = self.auths_failed = 0   # auth frames answered (imsrv_auths_total)

    # ------------------------------------------------------------------ shutdown
    def shutdown(self, retry_after):
        """Stop accepting; tell every client `bye` shutdown (jittered retry_after)."""
        self.draining = True
        self.server.close()
        for conn in list(self.conns):
            if not getattr(conn, "busy", False):
                conn.close_with({"op": "bye", "reason": "shutdown", "retry_after": jittered(retry_after)})

    # ------------------------------------------------------------------ one connection
    def handle(self, sock, addr):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = self.connection_class(sock, addr, self.lim.max_frame, self.lim.send_queue_bytes, self.name,
                                     self.lim.retry_after)
        conn.busy = False
        if len(self.conns) >= self.lim.max_connections or self.draining:
            reason = "shutdown" if self.draining else "overloaded"
            conn.close_with({"op": "bye", "reason": reason, "retry_after": jittered(self.lim.retry_after)})
            conn.wait_written(timeout=5)  # the bye must be written before the handler returns
            return
        self.conns.add(conn)
        # the per-connection request bucket exists before auth: frames that arrive in the
        # same read as the auth frame are dispatched by _authenticate already
        conn.bucket = TokenBucket(self.lim.conn_rate, self.lim.conn_burst, gevent.get_hub().loop.now())
        session = None
        parked = False
        try:
            session = self._authenticate(conn)
            if session is not None:
                parked = self._serve(conn, session)
        except Exception as exc:  # never let one connection's bug take others down
            logs.exception("internal_error", exc, service="gateway", addr=conn.peer,
                           user=session.user if session is not None else None)
        finally:
            if parked:
                self.keep_open(sock)   # the StreamServer must not close it as we return
            else:
                self._finish(conn, session)

    def _resume(self, conn, session):
        """A parked connection has input, or was closed: serve it in this greenlet."""
        parked = False
        try:
            parked = self._serve(conn, session)
        except Exception as exc:
            logs.exception("internal_error", exc, service="gateway", addr=conn.peer, user=session.user)
        finally:
            if not parked:
                self._finish(conn, session)

    def _finish(self, conn, session):
        """The connection is over: forget it, close its session, flush and close."""
        self.conns.discard(conn)
        try:
            if session is not None:
                logs.info("offline", user=session.user, device=session.device, addr=conn.peer)
                self.app.close_session(session)
        finally:
            if not conn.closing:
                conn.close_with(None)
            conn.wait_written(timeout=5)
            conn.abort()

    def _read_items(self, conn, timeout):
        """(auth) -> list of decoded items, or None when the connection is over."""
        try:
            data = conn.recv(timeout)
        except socket.timeout:
            self._auth_timeout(conn)
            return None
        if not data:
            return None
        return conn.feed(data)

    def _idle(self, conn, session):
        """No input from an authenticated client for limits.idle_timeout seconds."""
        if conn.closing:
            return
        # `idle` is not among v1's bye reasons (shutdown, overloaded, slow_reader): a v1
        # client treats an unknown reason like the others, reconnecting after retry_after
        logs.info("idle_timeout", service=self.name, user=session.user, device=session.device,
                  addr=conn.peer, after=self.lim.idle_timeout)
        conn.close_with({"op": "bye", "reason": "idle", "retry_after": jittered(self.lim.retry_after)})

    def _auth_timeout(self, conn):
        logs.info("auth_timeout", service=self.name, addr=conn.peer, after=self.lim.auth_timeout)
        conn.close_with(error_reply(UNAUTHORIZED, f"no auth within {self.lim.auth_timeout:g} s "
                                    "(limits.auth_timeout)"))

    def _authenticate(self, conn):
        deadline = gevent.get_hub().loop.now() + self.lim.auth_timeout
        while not conn.closing:
            remaining = deadline - gevent.get_hub().loop.now()
            if remaining <= 0:   # bytes kept coming, but no complete auth frame in time
                self._auth_timeout(conn)
                break
            items = self._read_items(conn, remaining)
            if items is None:
                break
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    conn.framing_error(item)
                    continue
                session = self.app.open_session(conn, item, self.name)
                if session is None:
                    self.auths_failed += 1
                else:
                    self.auths_ok += 1
                    rest = items[i + 1:]
                    if rest:
                        self._handle_items(conn, session, rest)
                    return session
                if conn.closing:
                    return None
        return None

    def _serve(self, conn, session):
        """Handle what the client has sent until nothing is left to read, then park the
        connection -> True; False when the connection is over (the caller finishes it)."""
        while not conn.closing:
            data = conn.recv_nowait()
            if data is None:
                conn.park(self.lim.idle_timeout, self._resume, self._idle, conn, session)
                return True
            if not data:
                return False
            self._handle_items(conn, session, conn.feed(data))
            if self.draining and not conn.closing:
                conn.close_with({"op": "bye", "reason": "shutdown", "retry_after": jittered(self.lim.retry_after)})
        return False

    def _handle_items(self, conn, session, items):
        dispatch = self.app.dispatcher.dispatch
        ops = self.app.gateway_ops
        loop = gevent.get_hub().loop
        conn.busy = True
        try:
            slots = []   # replies in request order: dict, SendRequest (filled by the send path) or None
            sends = []
            for item in items:
                if conn.closing:
                    break
                if type(item) is not dict:   # a FrameError from the decoder
                    self.app.dispatcher.counts.error(item.code, "frame")
                    slots.append(error_reply(item.code, item.message))
                    if item.fatal:
                        self._flush(conn, slots, sends)
                        slots, sends = [], []
                        conn.close_with(None)
                        return
                    continue
                if sends and item.get("op") not in SEND_OPS:
                    # keep order: earlier sends (send, recall, edit, react: one batch) are
                    # stored before a later sync/read runs
                    self._flush(conn, slots, sends)
                    slots, sends = [], []
                now = loop.now()
                wait = conn.bucket.take(now)
                if wait:
                    slot = self._connection_limited(conn, session, item, now, wait)
                else:
                    slot = dispatch(ops, item, session)
                if slot is not None:
                    slots.append(slot)
                    if type(slot) is not dict:
                        sends.append(slot)
            self._flush(conn, slots, sends)
        finally:
            conn.busy = False

    def _connection_limited(self, conn, session, frame, now, wait):
        """The reply to a request over the connection's rate (limits.conn_rate)."""
        conn.rate_limited(now, user=session.user, device=session.device, op=str(frame.get("op"))[:32])
        self.app.dispatcher.counts.error(RateLimited.code, frame.get("op"))
        return RateLimited(f"too many requests on this connection ({conn.peer})",
                           retry_seconds(wait)).reply(echo_id(frame))

    def _flush(self, conn, slots, sends):
        if sends:
            self.app.forward(sends)
        replies, unknown = replies_in_order(slots, self.app.dispatcher.counts)
        if unknown is not None:
            # no true reply exists (stored or not?): answer what came before, then close;
            # the client resends its unacked sends with their cmids
            logs.warning("send_outcome_unknown", user=unknown.sender, id=unknown.rid, reason=str(unknown.result),
                         addr=conn.peer)
            if replies:
                conn.send_many(replies)
            conn.close_with({"op": "bye", "reason": "overloaded", "retry_after": jittered(self.lim.retry_after)})
            return
        if replies:
            conn.send_many(replies)
