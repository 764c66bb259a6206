"""The connection pool of the MySQL / MariaDB store (:mod:`imsrv.backends.mysql`).

A bounded pool: a semaphore counts the connections in use or idle, a LIFO stack holds
the idle ones (the most recently used is reused first, so surplus ones age out).  Both
come from :mod:`threading` / :mod:`collections`, so the pool works with plain threads
and, after ``gevent.monkey.patch_all()`` (PyMySQL's sockets then yield to the hub), with
greenlets: a greenlet that waits for a connection blocks only itself.  The store must be
created after patching, like every lock.

An idle connection is checked before reuse with a non-blocking peek at its socket (no
round trip, :func:`socket_alive`): one the server has closed (restart, ``KILL``,
``wait_timeout``) is replaced, so calls after a server restart succeed at once.  A
connection that failed is given back with :meth:`Pool.discard` (closed, never reused).
"""
import collections
import socket
import threading


def socket_alive(conn):
    """True if ``conn`` looks usable: its socket is open and has nothing to read (an idle
    connection whose server closed it, or sent an error packet, has EOF or data waiting).
    Costs one non-blocking recv(MSG_PEEK), no round trip; works for gevent sockets too."""
    sock = getattr(conn, "_sock", None)
    if sock is None:
        return False
    try:
        old = sock.gettimeout()
        sock.settimeout(0)
        try:
            sock.recv(1, socket.MSG_PEEK)   # b"" (EOF) or data: not usable
        finally:
            sock.settimeout(old)
    except BlockingIOError:
        return True  # nothing to read: alive
    except ValueError:
        return True  # a socket that takes no recv flags (TLS): cannot tell, assume alive
    except OSError:
        return False
    return False  # EOF (b"") or an unexpected message from the server


def close_quietly(conn, polite=False):
    """Close ``conn`` ignoring errors: ``polite`` says goodbye (COM_QUIT) first."""
    try:
        if polite:
            conn.close()      # COM_QUIT, then close the socket
        else:
            conn._force_close()  # just close the socket (the server may be gone)
    except Exception:
        pass


class Pool:
    """At most ``size`` connections (idle + in use).  ``get`` waits up to ``timeout`` s."""

    def __init__(self, connect, size, timeout):
        self._connect = connect
        self.size = size
        self.timeout = timeout
        self._slots = threading.BoundedSemaphore(size)
        self._idle = collections.deque()  # append/pop are atomic: no lock needed
        self.closed = False
        self.opened = 0  # connections opened so far (tests, stats)

    def get(self):
        """-> a connection; raises the driver's error if a new one cannot be opened and
        TimeoutError if none is free in time."""
        if not self._slots.acquire(timeout=self.timeout):
            raise TimeoutError(f"all {self.size} connections busy for {self.timeout:g} s"
                               " (pool_size / pool_timeout)")
        try:
            while self._idle:
                try:
                    conn = self._idle.pop()
                except IndexError:
                    break
                if socket_alive(conn):
                    return conn
                close_quietly(conn)
            conn = self._connect()
            self.opened += 1
            return conn
        except BaseException:
            self._slots.release()
            raise

    def put(self, conn):
        if self.closed:
            close_quietly(conn, polite=True)
        else:
            self._idle.append(conn)
        self._slots.release()

    def discard(self, conn):
        close_quietly(conn)
        self._slots.release()

    def idle(self):
        return len(self._idle)

    def close(self):
        self.closed = True
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                break
            close_quietly(conn, polite=True)
