"""Heartbeats of the client SDK: noticing a dead connection.

A connection whose peer is gone (a crashed server, a pulled cable, a NAT that forgot
it) can look open for ever.  :class:`Heartbeat` sends ``ping`` when nothing was sent or
received for ``interval`` seconds and closes the connection as dead when that ping gets
no ``pong`` within ``timeout`` seconds.  Started by
:meth:`imsrv.client.network.Conn.start_heartbeat`, stopped when the connection closes.
"""
import time

import gevent
from gevent.event import AsyncResult

from .errors import ConnectionLost


class Heartbeat:
    """The heartbeat greenlet of one connection (a :class:`~imsrv.client.network.Conn`)."""

    def __init__(self, conn, interval, timeout):
        self.conn = conn
        self.interval = interval
        self.timeout = timeout
        self._greenlet = gevent.spawn(self._loop)

    def stop(self):
        """Stop pinging (when the connection closes; a no-op from the heartbeat itself)."""
        if self._greenlet is not gevent.getcurrent():
            self._greenlet.kill(block=False)

    def _loop(self):
        conn, interval, timeout = self.conn, self.interval, self.timeout
        tick = max(0.02, min(interval, timeout) / 4.0)
        ping = None
        ping_sent = 0.0
        while not conn.closed:
            gevent.sleep(tick)
            now = time.monotonic()
            if ping is not None:
                if ping.ready():
                    ping = None
                elif now - ping_sent > timeout:
                    conn.close(f"dead connection: no pong within {timeout:g}s")
                    return
            if ping is None and (now - conn.last_recv >= interval or now - conn.last_send >= interval):
                # The write happens in its own greenlet: a connection whose send buffer is
                # full (dead peer) must not stop us from noticing that the pong is late.
                ping = AsyncResult()
                ping_sent = now
                _, frame = conn.new_request("ping", ping, {})
                gevent.spawn(self._send_quietly, frame)

    def _send_quietly(self, frame):
        try:
            self.conn.send_frame(frame)
        except ConnectionLost:
            pass
