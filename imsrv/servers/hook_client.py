"""The HTTP client of the hooks (imsrv/core/hooks.py): ``POST`` of a JSON body with a hard
timeout, over kept-alive connections.

Cooperative: http.client over the sockets gevent patched (imsrv.runtime), so a greenlet
waiting for a hook's answer lets the others run; no thread per request.  The whole request
(connect, send, answer, body) is bounded by ``timeout`` (a gevent.Timeout), not only each
socket call.  Connections are kept per (scheme, host, port): an idle one is reused (HTTP/1.1
keep-alive), at most ``max_idle`` of them are kept, so concurrent before_send questions each
get one.  A request on a reused connection that the service closed meanwhile (it answered
nothing) is sent once more on a new connection.
"""
import http.client
import socket
import ssl
from urllib.parse import urlsplit

import gevent

from ..core.hooks import HookFailure

_STALE = (http.client.RemoteDisconnected, http.client.BadStatusLine, BrokenPipeError, ConnectionResetError,
          ConnectionAbortedError)
MAX_REPLY = 1 << 20   # bytes of an answer read at most (a hook answers a small JSON object)


class _Timeout(Exception):
    pass


def _no_delay(conn):
    # http.client sends the headers and the body in two writes: without TCP_NODELAY the
    # body waits for the ACK of the headers (Nagle), which the peer delays (~40 ms)
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Http(http.client.HTTPConnection):
    def connect(self):
        super().connect()
        _no_delay(self)


class _Https(http.client.HTTPSConnection):
    def connect(self):
        super().connect()   # TCP connect (our _no_delay is not in its MRO), then TLS
        _no_delay(self)


class HookClient:
    def __init__(self, max_idle=16):
        self.max_idle = max_idle
        self.idle = {}          # (scheme, host, port) -> [HTTPConnection]
        self._tls = None

    def post(self, url, body, headers, timeout):
        """POST ``body`` (bytes) to ``url`` -> (status, reply bytes).  HookFailure when no
        answer came within ``timeout`` seconds or the connection failed."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname, parts.port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        hdrs = dict(headers)
        hdrs["Content-Length"] = str(len(body))
        timer = gevent.Timeout(timeout, _Timeout)
        timer.start()
        conn = None
        try:
            for attempt in (0, 1):
                conn, reused = self._take(key, timeout)
                try:
                    status, reply = self._exchange(conn, path, body, hdrs)
                except _STALE as exc:
                    conn.close()
                    if reused and attempt == 0:
                        continue   # the service closed the idle connection: once more
                    raise HookFailure(f"connection to {parts.netloc} failed: {exc!r}") from None
                self._give_back(key, conn)
                conn = None
                return status, reply
        except _Timeout:
            raise HookFailure(f"no answer from {parts.netloc} within {timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise HookFailure(f"connection to {parts.netloc} failed: {exc!r}") from None
        finally:
            timer.close()
            if conn is not None:
                conn.close()

    @staticmethod
    def _exchange(conn, path, body, headers):
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        reply = resp.read(MAX_REPLY)
        if not resp.isclosed():   # an answer longer than we read: do not reuse the connection
            conn.close()
        return resp.status, reply

    def _take(self, key, timeout):
        """An idle connection to ``key`` (reused: True), else a new one."""
        pool = self.idle.get(key)
        if pool:
            conn = pool.pop()
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            return conn, conn.sock is not None
        scheme, host, port = key
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            return _Https(host, port, timeout=timeout, context=self._tls), False
        return _Http(host, port, timeout=timeout), False

    def _give_back(self, key, conn):
        pool = self.idle.setdefault(key, [])
        if len(pool) < self.max_idle:
            pool.append(conn)
        else:
            conn.close()

    def close(self):
        for pool in self.idle.values():
            for conn in pool:
                conn.close()
        self.idle.clear()
