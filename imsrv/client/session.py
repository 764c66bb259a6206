"""The login session half of :class:`~imsrv.client.Client`: API requests with the token,
re-login, the gateway :class:`~imsrv.client.link.Link` and its callbacks, gateway
requests, and shutdown.

* API requests carry the token; one refused as ``unauthorized`` logs in again (when the
  password is kept) and is tried once more.
* The link asks :meth:`_credentials` for a token and a gateway, reports pushes
  (:meth:`_on_push`), its states (:meth:`_on_state`) and each authenticated connection
  (:meth:`_on_online`: follow the server's inbox head, resend the outbox, re-apply the
  status, sync); a ``typing`` hint the server refused becomes an ``error`` event
  (:meth:`_hint_refused`).
* Gateway requests wait until online and are tried once more on a fresh connection if
  the first one died.

A mixin: it uses the Client's ``api``, ``device``, ``mode``, ``tls``, ``timeout``, ``user``,
``token``, ``gateway``, ``gateways``, ``state``, ``protocol``, ``max_frame``, ``_password``,
``_link``, ``_closed``, ``_status``, ``_gw_index``, ``_learned_max``, ``_waiters``,
``_events`` (:class:`~imsrv.client.events.EventDispatcher`), ``_inbox``
(:class:`~imsrv.client.inbox.Inbox`) and the outbox's ``_pump``, ``_pump_timer``,
``_drop_oversized``, ``_frame_refused``.
"""
import logging

from . import limits
from .errors import ClientClosed, ClientError, ConnectionLost, Kicked, NotConnected, ServerError
from .logfmt import kv as logkv
from .network import BINARY, FRAME_REFUSED, WS, api_call

#: pushes handed to the application as events of the same name
EVENT_PUSHES = ("presence", "typing", "receipt", "friend_request", "friend_added", "kicked", "bye")


def non_none(**fields):
    """The fields whose value is not None (optional request fields)."""
    return {k: v for k, v in fields.items() if v is not None}


class Session:
    # ================================================================== API requests
    def _api(self, op, **fields):
        # the API has no WebSocket: a WebSocket client (mode "ws") calls it in binary framing
        mode = BINARY if self.mode == WS else self.mode
        return api_call(self.api, op, mode=mode, timeout=self.timeout, tls=self.tls, **fields)

    def _authed(self, op, **fields):
        self._require_login()
        try:
            return self._api(op, token=self.token, **fields)
        except ServerError as exc:
            if exc.code == "unauthorized" and self._password is not None:
                self._relogin()
                return self._api(op, token=self.token, **fields)
            raise

    def _apply_login(self, reply):
        self.token = reply["token"]
        self.user = reply.get("user", self.user)
        self.protocol = reply.get("protocol") or "1"
        # mode "ws": the gateway's WebSocket port (ws_transport.py), which login names too
        one, every = ("websocket", "websockets") if self.mode == WS else ("gateway", "gateways")
        gateways = [g for g in (reply.get(every) or []) if isinstance(g, str)]
        gateway = reply.get(one) or (gateways[0] if gateways else None)
        if not gateway:
            raise ClientError(f"login at {self.api} named no {one}: {reply!r}")
        self.gateway = gateway
        self.gateways = gateways or [gateway]
        self._gw_index = 0
        self._learn_max_frame(reply)

    def _learn_max_frame(self, reply):
        announced = limits.frame_limit(reply)
        if announced is not None:
            self.max_frame = announced
        if self._learned_max is not None and self._learned_max < self.max_frame:
            self.max_frame = self._learned_max

    def _relogin(self):
        reply = self._api("login", user=self.user, password=self._password, device=self.device)
        self._apply_login(reply)
        return reply

    def _require_login(self):
        if self._closed:
            raise ClientClosed("the client is closed")
        if self.token is None or self._link is None:
            raise ClientError("not logged in: call login() first")

    # ================================================================== link callbacks
    def _credentials(self, refresh):
        """Link callback: the token and gateway to use (a fresh login when asked)."""
        if refresh:
            if self._password is not None:
                self._relogin()
            elif len(self.gateways) > 1:
                self._gw_index = (self._gw_index + 1) % len(self.gateways)
                self.gateway = self.gateways[self._gw_index]
        return self.token, self.gateway

    def _on_state(self, state, info):
        self.state = state
        data = {"state": state}
        data.update({k: (str(v) if isinstance(v, BaseException) else v) for k, v in info.items()})
        self._events.emit("state", data)
        if state == "kicked":
            self._fail_waiters(Kicked(info.get("reason")))
        elif state in ("auth_failed", "failed"):
            self._fail_waiters(self._stop_error())
        elif state == "stopped":
            self._fail_waiters(self._stop_error() if not self._closed else ClientClosed("the client was closed"))

    def _on_push(self, conn, frame):
        op = frame.get("op")
        data = {k: v for k, v in frame.items() if k != "op"}
        if op == "msg":
            self._inbox.take([data])
        elif op in EVENT_PUSHES:
            self._events.emit(op, data)
        elif op == "error":
            code = frame.get("code")
            logkv(logging.WARNING, "gateway_error", user=self.user, device=self.device, code=code,
                  message=frame.get("message"))
            if code in FRAME_REFUSED and frame.get("id") is None:
                self._frame_refused(conn)   # reported as send_failed, if it was a send
            else:
                self._events.emit("error", data)
        else:
            logkv(logging.DEBUG, "unknown_push", op=op)

    def _on_online(self, conn, reply):
        self._learn_max_frame(reply)
        conn.max_send = self.max_frame
        self._drop_oversized()
        self._inbox.follow_server_head(reply.get("head"), self.user, self.device)
        conn.sent_upto = 0
        conn.ready = True
        self._pump(conn)
        if self._status is not None:
            status, text = self._status
            reply = conn.request("status", timeout=self.timeout, status=status, **non_none(text=text))
            if reply.get("op") == "error":
                logkv(logging.WARNING, "status_reapply_failed", user=self.user, code=reply.get("code"),
                      message=reply.get("message"))
        self._inbox.sync(conn, self.timeout)

    def _gap_sync(self):
        """Inbox callback: a gap stayed open; sync now if online (else the next
        connection syncs anyway)."""
        conn = self._link.conn if self._link else None
        if conn is None or not getattr(conn, "ready", False):
            return
        try:
            self._inbox.sync(conn, self.timeout)
        except ClientError as exc:
            logkv(logging.INFO, "gap_sync_failed", user=self.user, error=exc)

    def _hint_refused(self, to, reply):
        """A typing hint the server refused (not friends, no such user): an ``error``
        event naming it, never a push that looks like something else went wrong."""
        logkv(logging.DEBUG, "typing_refused", user=self.user, to=to, code=reply.get("code"))
        self._events.emit("error", {"op": "typing", "to": to, "code": reply.get("code"),
                                    "message": reply.get("message")})

    # ================================================================== gateway requests
    def _online_conn(self, timeout=None):
        self._require_login()
        self.wait_online(self.timeout if timeout is None else timeout)
        conn = self._link.conn
        if conn is None:
            raise NotConnected(f"{self.user}/{self.device}: not connected to the gateway")
        return conn

    def _gw_request(self, op, timeout=None, **fields):
        """A gateway request, retried once on a fresh connection if the first one died."""
        for attempt in (1, 2):
            conn = self._online_conn(timeout)
            try:
                reply = conn.request(op, timeout=timeout or self.timeout, **fields)
            except ConnectionLost:
                if attempt == 2:
                    raise
                continue
            if reply.get("op") == "error":
                raise ServerError(reply, op)
            return reply

    # ================================================================== stopping
    def _shutdown(self, exc):
        if self._closed:
            return
        self._closed = True
        self._events.mark_closed()
        self._inbox.close()
        if self._pump_timer is not None:
            self._pump_timer.kill(block=False)
        if self._link is not None:
            self._link.stop("closed")
        self._fail_waiters(exc)
        self._events.stop()

    def _fail_waiters(self, exc):
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            if not waiter.ready():
                waiter.set_exception(exc)

    def _stop_error(self):
        link = self._link
        if link.stop_reason == "kicked":
            return Kicked(link.kick_reason)
        if isinstance(link.last_error, ServerError) and link.stop_reason in ("auth_failed", "refused"):
            return link.last_error
        return ClientClosed(f"the client is stopped ({link.stop_reason})")
