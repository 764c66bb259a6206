"""The API service: short connections, one or more requests each, replies in order.

A thin shell: each frame goes to :meth:`App.api_request` (the core's dispatcher), after the
per-connection rate limit.  A frame with a ``relay`` field comes from the web page's
``POST /api`` relay (imsrv/web/relay_key.py): with this deployment's relay key, its
``addr`` (the browser's) is the caller's address; any other ``relay`` field is refused
(``unauthorized``, or ``bad_request`` for a wrong shape) and the request is not run."""
import socket

import gevent

from .. import logs
from ..core.ratelimit import TokenBucket, retry_seconds
from ..protocol.errors import UNAVAILABLE, ImError, RateLimited, error_reply
from ..protocol.fields import echo_id
from ..web.relay_key import FIELD as RELAY_FIELD, relayed_address
from .connection import Connection
from .listener import Listener


class ApiServer(Listener):
    """``relay_key``: this deployment's relay key (imsrv/web/relay_key.py), None when no
    relay of ours talks to this service (every ``relay`` field is then refused)."""

    name = "api"

    def __init__(self, app, cfg, listener, relay_key=None):
        super().__init__(app, cfg, listener)
        self.relay_key = relay_key

    @property
    def first_byte_timeout(self):
        """With TLS on, a new API connection may be silent as long as an idle one."""
        return self.lim.api_idle_timeout

    def shutdown(self):
        self.draining = True
        self.server.close()
        for conn in list(self.conns):
            if not conn.busy:
                conn.close_with(None)

    def request(self, item, addr):
        """One request frame from ``addr`` -> its reply (the relay's field checked first)."""
        if RELAY_FIELD in item:
            try:
                addr = relayed_address(item, self.relay_key)
            except ImError as exc:
                op = item.get("op")
                self.app.dispatcher.counts.error(exc.code, op)
                logs.warning("relay_refused", addr=addr, op=str(op)[:32], code=exc.code, reason=exc.message)
                return exc.reply(echo_id(item))
        return self.app.api_request(item, addr)

    def handle(self, sock, addr):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock, addr, self.lim.max_frame, self.lim.send_queue_bytes, "api")
        conn.busy = False
        if len(self.conns) >= self.lim.max_connections or self.draining:
            conn.close_with(error_reply(UNAVAILABLE, "server is at its connection limit or shutting down"))
            conn.wait_written(timeout=5)
            return
        self.conns.add(conn)
        bucket = TokenBucket(self.lim.conn_rate, self.lim.conn_burst, gevent.get_hub().loop.now())
        try:
            while not conn.closing:
                try:
                    data = conn.recv(self.lim.api_idle_timeout)
                except socket.timeout:
                    break
                if not data:
                    break
                conn.busy = True
                for item in conn.feed(data):
                    if conn.closing:
                        break
                    if not isinstance(item, dict):
                        conn.framing_error(item)
                        continue
                    now = gevent.get_hub().loop.now()
                    wait = bucket.take(now)
                    if wait:
                        conn.rate_limited(now, op=str(item.get("op"))[:32])
                        reply = RateLimited(f"too many requests on this connection ({conn.peer})",
                                            retry_seconds(wait)).reply(echo_id(item))
                    else:
                        reply = self.request(item, addr[0] if isinstance(addr, tuple) else str(addr))
                    conn.send(reply)
                conn.busy = False
                if self.draining:
                    break
        except Exception as exc:
            logs.exception("internal_error", exc, service="api", addr=conn.peer)
        finally:
            self.conns.discard(conn)
            conn.close_with(None)
            conn.wait_written(timeout=5)
            conn.abort()
