"""The gateway link of the client SDK: one authenticated gateway connection, kept up.

:class:`Link` connects to the gateway that login names and authenticates; when the
connection ends it says why (a state), then connects again after a :class:`Backoff`
delay, or after the ``retry_after`` of a ``bye``.  It asks for a fresh login when the
token was refused, a ``bye`` said so, or one gateway kept failing; it stops for good on
``kicked``, on a login refused for good, and when the server keeps closing the
connection for a frame it refused.  The connections themselves are
:class:`~imsrv.client.network.Conn`.
"""
import random

import gevent
from gevent.event import Event

from .errors import ConnectionLost, ServerError, Timeout
from .logfmt import log
from .network import BINARY, FRAME_REFUSED, Conn, monotonic


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
        longest = min(self.cap, self.base * self.factor ** min(attempt - 1, 64))
        return self.rng.uniform(longest / 2.0, longest)


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
                 backoff=None, tls=None):
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
        self.tls = tls             # the SSLContext of the gateway connections, or None (plain)
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
        greenlet = self._greenlet
        if greenlet is not None and greenlet is not gevent.getcurrent():
            greenlet.join(timeout=5)

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
                                label=f"gateway {gateway}", tls=self.tls)
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
