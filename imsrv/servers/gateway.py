"""The gateway: long connections.  Auth first, then sends, syncs, pushes, heartbeats.

One greenlet per connection reads and handles frames in order (replies keep request
order); consecutive ``send``s of one read are handed to the forwarder together, so they
share one store transaction.  Pushes from other greenlets go through Connection.send.
"""
import socket

import gevent

from .. import logs
from ..core.app import BACKEND_ERRORS, GATEWAY_SCHEMAS
from ..core.messaging import OutcomeUnknown
from ..core.ratelimit import TokenBucket, retry_seconds
from ..protocol import fields as F
from ..protocol.errors import (BadRequest, ImError, Internal, RateLimited, Unauthorized, Unavailable,
                               UnknownOp, error_reply)
from .connection import Connection, Listener, jittered


GAP_WAIT = 0.5  # seconds a missing seq may take to arrive before it is fetched from the inbox
_OWN = object()  # placeholder for a seq this device sent itself (it got the ack, not a push)


class Session:
    """A live, authenticated (user, device) on this gateway.

    Message pushes go out strictly in inbox-seq order (guarantee 3): a push that arrives
    ahead of a missing seq is held; if the gap does not fill within GAP_WAIT (a push lost
    or delayed by another forwarder), the missing entries are read from the inbox.

    The session is reachable by pushes from the moment it is attached to the hub, before
    the auth reply is written, and the reply must be the first frame on the connection:
    until :meth:`start_at` (called once the reply is queued), other pushes and a kick wait
    in ``early``, in arrival order, and ``msg`` pushes in ``held``.
    """

    __slots__ = ("conn", "user", "device", "token_hash", "generation", "status", "text",
                 "next_seq", "held", "gap_timer", "fetch", "early")

    def __init__(self, conn, user, device, token_hash, fetch=None):
        self.conn = conn
        self.user = user
        self.device = device
        self.token_hash = token_hash
        self.generation = 0
        self.status = "online"
        self.text = None
        self.next_seq = None  # unknown until auth has read the head: hold pushes until then
        self.held = {}
        self.gap_timer = None
        self.fetch = fetch    # fetch(user, since, limit) -> msg push objects, from the inbox
        self.early = []       # pushes (and a kick) that came before the auth reply went out

    def start_at(self, head):
        """The auth reply (with ``head``) is queued: send what waited for it, in order."""
        early, self.early = self.early, None
        self.next_seq = head + 1
        for seq in [s for s in self.held if s <= head]:
            del self.held[seq]
        for obj in early or ():
            if isinstance(obj, str):   # a kick: it ends the session, nothing after it
                self.kick(obj)
                return
            self.conn.send(obj)
        self._drain()

    def push(self, obj):
        if obj.get("op") == "msg":
            self._arrive(obj["seq"], obj)
        elif self.early is not None:
            self.early.append(obj)
        else:
            self.conn.send(obj)

    def own(self, seq):
        """This device sent inbox entry ``seq`` itself: skip it in the push order."""
        self._arrive(seq, _OWN)

    def _arrive(self, seq, obj):
        if self.next_seq is not None and seq < self.next_seq:
            return  # already delivered (a duplicate, or fetched from the inbox before)
        self.held[seq] = obj
        if self.next_seq is None:
            return  # auth has not read the head yet: start_at() drains
        if seq == self.next_seq:
            self._drain()
        elif self.gap_timer is None and self.fetch is not None:
            self.gap_timer = gevent.spawn_later(GAP_WAIT, self.fill_gap)

    def _drain(self):
        held = self.held
        while self.next_seq in held:
            obj = held.pop(self.next_seq)
            if obj is not _OWN:
                self.conn.send(obj)
            self.next_seq += 1
        if not held and self.gap_timer is not None:
            self.gap_timer.kill(block=False)
            self.gap_timer = None

    def fill_gap(self):
        self.gap_timer = None
        if self.held and self.next_seq is not None and not self.conn.closing:
            self.catch_up(min(self.held) - self.next_seq)

    def catch_up(self, limit=1000):
        """Read what this device has not been pushed from the inbox (after a gap, or when
        the gateway may have lost pushes) and push it in order."""
        if self.next_seq is None or self.fetch is None:
            return
        for obj in self.fetch(self.user, self.next_seq - 1, max(1, limit)):
            if obj["seq"] >= self.next_seq and obj["seq"] not in self.held:
                self.held[obj["seq"]] = obj
        self._drain()
        if self.held and self.gap_timer is None:
            self.gap_timer = gevent.spawn_later(GAP_WAIT, self.fill_gap)

    def kick(self, reason):
        if self.early is not None:   # replaced before our auth reply went out: after it
            self.early.append(reason)
            return
        logs.info("kicked", user=self.user, device=self.device, reason=reason, addr=self.conn.peer)
        self.conn.close_with({"op": "kicked", "reason": reason})


class Gateway(Listener):
    def __init__(self, app, cfg, listener, connection_class=Connection, name="gateway"):
        super().__init__(app, cfg, listener)
        self.connection_class = connection_class
        self.name = name

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
            conn.writer.join(timeout=5)  # the bye must be written before the handler returns
            return
        self.conns.add(conn)
        # the per-connection request bucket exists before auth: frames that arrive in the
        # same read as the auth frame are dispatched by _authenticate already
        conn.bucket = TokenBucket(self.lim.conn_rate, self.lim.conn_burst, gevent.get_hub().loop.now())
        session = None
        try:
            session = self._authenticate(conn)
            if session is not None:
                self._serve(conn, session)
        except Exception as exc:  # never let one connection's bug take others down
            logs.exception("internal_error", exc, service="gateway", addr=conn.peer,
                           user=session.user if session is not None else None)
        finally:
            self.conns.discard(conn)
            try:
                if session is not None:
                    logs.info("offline", user=session.user, device=session.device, addr=conn.peer)
                    self._detach(session)
            finally:
                if not conn.closing:
                    conn.close_with(None)
                conn.writer.join(timeout=5)
                conn.abort()

    def _detach(self, session):
        """Remove the session from the hub; announce the user offline if it was the last."""
        try:
            if self.app.hub.detach(session):
                self.app.presence.changed(session.user)
        except Exception as exc:
            # Redis or the store down: the route stays behind until the gateway's next
            # check of its routes (forget_stale_routes), but the socket must be closed
            # whatever happens here
            logs.warning("detach_failed", user=session.user, device=session.device, error=repr(exc))

    def _read_items(self, conn, timeout, session=None):
        """-> list of decoded items, or None when the connection is over (logged here)."""
        try:
            data = conn.recv(timeout)
        except socket.timeout:
            if session is None:
                self._auth_timeout(conn)
            else:
                # `idle` is not among v1's bye reasons (shutdown, overloaded, slow_reader):
                # a v1 client treats an unknown reason like the others, reconnecting
                # after retry_after
                logs.info("idle_timeout", service=self.name, user=session.user, device=session.device,
                          addr=conn.peer, after=self.lim.idle_timeout)
                conn.close_with({"op": "bye", "reason": "idle", "retry_after": jittered(self.lim.retry_after)})
            return None
        if not data:
            return None
        return conn.feed(data)

    def _auth_timeout(self, conn):
        logs.info("auth_timeout", service=self.name, addr=conn.peer, after=self.lim.auth_timeout)
        conn.close_with(error_reply("unauthorized", f"no auth within {self.lim.auth_timeout:g} s "
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
                session = self._auth_frame(conn, item)
                if session is not None:
                    rest = items[i + 1:]
                    if rest:
                        self._handle_items(conn, session, rest)
                    return session
                if conn.closing:
                    return None
        return None

    def _auth_frame(self, conn, frame):
        rid = F.echo_id(frame)
        try:
            rid = F.req_id(frame)
            if frame.get("op") != "auth":
                conn.close_with(error_reply("unauthorized", "the first frame must be auth", rid))
                return None
            if frame.get("token") is None:
                # "unauthorized: no valid token", as on the API; like any auth the server
                # does not accept, the connection is closed
                conn.close_with(error_reply("unauthorized", "auth needs a token: log in first", rid))
                return None
            c = F.validate(GATEWAY_SCHEMAS["auth"], frame)
        except BadRequest as exc:
            conn.send(exc.reply(rid))
            return None
        session = attached = None
        try:
            user, token_device, th = self.app.accounts.resolve(c["token"])
            session = Session(conn, user, c.get("device", token_device), th, self.app.messaging.fetch)
            first = self.app.hub.attach(session)
            attached = session
            head = self.app.store.head(user)  # after attach: anything newer is pushed to us
            if self.app.store.get_token(th) is None:
                # logout / change_password revoked the token between resolve and attach:
                # its kick went out before this session was in the hub, so refuse it here
                raise Unauthorized("invalid or revoked token")
        except ImError as exc:
            conn.close_with(exc.reply(rid))
            if attached is not None:
                self._detach(attached)
            return None
        except BACKEND_ERRORS as exc:
            logs.warning("backend_unavailable", service=self.name, op="auth", error=repr(exc))
            conn.close_with(Unavailable("a backend is unavailable, retry later").reply(rid))
            if attached is not None:  # the route must not outlive this connection
                self._detach(attached)
            return None
        # max_frame: the SDK learns the frame limit of this server
        reply = {"op": "ok", "user": user, "head": head, "max_frame": self.lim.max_frame}
        if rid is not None:
            reply["id"] = rid
        conn.send(reply)
        session.start_at(head)  # only now: pushes that came meanwhile follow the reply
        logs.info("online", user=user, device=session.device, generation=session.generation, addr=conn.peer)
        if first:
            self.app.presence.changed(user)
        return session

    def _serve(self, conn, session):
        idle = self.lim.idle_timeout
        while not conn.closing:
            items = self._read_items(conn, idle, session)
            if items is None:
                return
            self._handle_items(conn, session, items)
            if self.draining and not conn.closing:
                conn.close_with({"op": "bye", "reason": "shutdown", "retry_after": jittered(self.lim.retry_after)})

    def _handle_items(self, conn, session, items):
        conn.busy = True
        try:
            slots = []   # replies in request order: dict, SendRequest (filled by the forwarder) or None
            sends = []
            for item in items:
                if conn.closing:
                    break
                if not isinstance(item, dict):
                    slots.append(error_reply(item.code, item.message))
                    if item.fatal:
                        self._flush(conn, slots, sends)
                        slots, sends = [], []
                        conn.close_with(None)
                        return
                    continue
                op = item.get("op")
                if op != "send" and sends:
                    # keep order: earlier sends are stored before a later sync/read runs
                    self._flush(conn, slots, sends)
                    slots, sends = [], []
                slot = self._dispatch(conn, session, item)
                if slot is not None:
                    slots.append(slot)
                    if not isinstance(slot, dict):
                        sends.append(slot)
            self._flush(conn, slots, sends)
        finally:
            conn.busy = False

    def _flush(self, conn, slots, sends):
        if sends:
            self.app.forward(sends)
        out = []
        for slot in slots:
            if isinstance(slot, dict):
                out.append(slot)
            else:
                r = slot.result
                if isinstance(r, OutcomeUnknown):
                    # no true reply exists (stored or not?): answer what came before, then
                    # close; the client resends its unacked sends with their cmids
                    logs.warning("send_outcome_unknown", user=slot.sender, id=slot.rid, reason=r.reason,
                                 addr=conn.peer)
                    if out:
                        conn.send_many(out)
                    conn.close_with({"op": "bye", "reason": "overloaded",
                                     "retry_after": jittered(self.lim.retry_after)})
                    return
                reply = r.reply(slot.rid) if isinstance(r, ImError) else dict(r)
                if slot.rid is not None and not isinstance(r, ImError):
                    reply["id"] = slot.rid
                out.append(reply)
        if out:
            conn.send_many(out)

    def _dispatch(self, conn, session, frame):
        """-> reply dict, a SendRequest to forward, or None (no reply)."""
        rid = F.echo_id(frame)
        op = frame.get("op")
        try:
            rid = F.req_id(frame)
            now = gevent.get_hub().loop.now()
            wait = conn.bucket.take(now)
            if wait:
                conn.rate_limited(now, user=session.user, device=session.device, op=str(op)[:32])
                raise RateLimited(f"too many requests on this connection ({conn.peer})", retry_seconds(wait))
            if not isinstance(op, str):
                raise BadRequest("field 'op' is missing or not a string")
            schema = GATEWAY_SCHEMAS.get(op)
            if schema is None:
                raise UnknownOp(f"unknown op {op[:64]!r} on the gateway")
            c = F.validate(schema, frame)
            if op != "auth":
                self.app.test_hook(op)
            if op == "send":
                req = self.app.check_send(session, c)
                req.rid = rid
                return req
            if op == "auth":
                raise BadRequest("already authenticated on this connection")
            reply = getattr(self.app, "gw_" + op)(session, c)
        except ImError as exc:
            return exc.reply(rid)
        except BACKEND_ERRORS as exc:
            logs.warning("backend_unavailable", service="gateway", op=op, id=rid, error=repr(exc))
            return Unavailable(f"a backend is unavailable, retry later ({type(exc).__name__})").reply(rid)
        except Exception as exc:  # a bug: log it with the request id, answer `internal`
            logs.exception("internal_error", exc, service="gateway", op=op, user=session.user,
                           device=session.device, id=rid, addr=conn.peer)
            return Internal(f"internal error handling request id={rid}").reply(rid)
        if reply is None:
            return None
        if rid is not None:
            reply = dict(reply)
            reply["id"] = rid
        return reply
