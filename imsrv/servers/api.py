"""The API service: short connections, one or more requests each, replies in order.

A thin shell: each frame goes to :meth:`App.api_request` (the core's dispatcher), after the
per-connection rate limit."""
import socket

import gevent

from .. import logs
from ..core.ratelimit import TokenBucket, retry_seconds
from ..protocol.errors import UNAVAILABLE, RateLimited, error_reply
from ..protocol.fields import echo_id
from .connection import Connection
from .listener import Listener


class ApiServer(Listener):
    def shutdown(self):
        self.draining = True
        self.server.close()
        for conn in list(self.conns):
            if not conn.busy:
                conn.close_with(None)

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
                        reply = self.app.api_request(item, addr[0] if isinstance(addr, tuple) else str(addr))
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
