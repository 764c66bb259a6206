"""One client connection: a frame decoder on the read side, a bounded queue and a writer
greenlet on the write side.

Output is queued as encoded frames.  Every connection that got output during one turn
of the event loop is flushed once at the start of the next turn (:func:`_flush_queued`,
one loop callback for all of them): whatever it has queued is joined into one
non-blocking ``send`` (one syscall for a burst of pushes), from the hub, with no greenlet.
Only a connection whose socket buffer is full gets a writer greenlet, which waits for the
socket and ends when its queue is empty (measured: a greenlet spawned per flushed
connection was 15 % of the embedded server's CPU delivering to a group of 500).  On the read side, a connection with nothing to read can be *parked*
(:meth:`Connection.park`): no greenlet waits for it, an io watcher on its socket spawns
one when input comes.  An idle, parked connection so holds no greenlet at all (measured:
a greenlet blocked in ``recv`` held ~8.5 KiB of RSS; see bench/RESULTS.md).  The queue is bounded in bytes: a
peer that reads slower than we write is sent ``bye`` ``slow_reader`` and closed
(guarantee 8: it syncs when it reconnects) instead of growing our memory.

The socket may be a TLS one (gevent's SSLSocket, made by imsrv/servers/tls.py); what
differs is in three places.  Writes that must not wait (:meth:`Connection._send_now`) set
the socket's timeout to 0 around the one ``send`` (an SSLSocket decides by its timeout,
not by an argument), and a write TLS could not take (``SSLWantWriteError``: ``send``
returns 0) is retried with the same bytes, as OpenSSL requires: the writer greenlet
writes what the hub could not (``unsent``) before anything queued since.  The writer
waits for the socket itself (``wait_write``), whatever timeout a reader set meanwhile.
An SSLSocket may hold decrypted bytes the descriptor will never signal again
(``pending()``): a read that finds nothing is ``SSLWantReadError`` only once those are
taken, and :meth:`Connection.park` never parks a connection that still has some.
"""
import random
import socket
from collections import deque

import gevent
from gevent import ssl
from gevent.socket import wait_write

from .. import codec, logs
from ..protocol.errors import TOO_LARGE, error_reply

RECV_SIZE = 65536
FORCE_CLOSE_AFTER = 5.0  # seconds a closing connection gets to flush its last frames
RATE_LOG_EVERY = 10.0    # seconds between two rate_limited log lines of one connection

# Bytes a person types: printable ASCII and tab/CR/LF.  A connection whose first byte is
# one of these (other than "{", which selects line mode) is in binary mode with a length
# header of at least 0x09000000: always over max_frame unless max_frame is 150 MB or more.
TEXT_BYTES = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}
LINE_MODE_HINT = ("this port speaks one JSON object per line, starting with {, or 4-byte "
                  "length-prefixed frames; see docs/PROTOCOL.md")


def _more_records(sock, data):
    """A TLS read returns one record, about one write of the client's; a plain one all the
    bytes there are.  -> ``data`` and the records already there after it, up to RECV_SIZE
    in all, so that a read is as large a batch on TLS as on plain TCP (one dispatch, one
    flush of replies, for all of them).  An error or EOF is left for the next read."""
    parts = [data]
    size = len(data)
    while size < RECV_SIZE:
        try:
            more = sock.recv(RECV_SIZE - size)
        except (OSError, ValueError):   # SSLWantReadError (nothing more yet) among them
            break
        if not more:
            break
        parts.append(more)
        size += len(more)
    return data if len(parts) == 1 else b"".join(parts)


class Connection:
    def __init__(self, sock, addr, max_frame, max_queue_bytes, service, retry_after=5.0):
        self.sock = sock
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.addr = addr
        self.peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        self.service = service
        self.decoder = codec.Decoder(max_frame)
        self.max_queue_bytes = max_queue_bytes
        self.retry_after = retry_after  # base of the jittered retry_after in a slow_reader bye
        self.out = deque()
        self.out_bytes = 0
        self.flush_due = False   # in _queued: flushed at the next turn of the loop
        self.writer = None       # the writer greenlet of a full socket buffer, else None
        self.unsent = None       # what _flush could not write (the writer's first write)
        self.closing = False     # no more output accepted; writer closes after flushing
        self.closed = False
        self.rate_logged = None  # loop time of the last rate_limited log line
        self.rate_refused = 0    # requests refused since that line
        self._parked = None      # (resume, on_timeout, args) while parked, else None
        self._readable = None    # the io watcher of a parked connection (made at first park)
        self._idle_timer = None  # its idle timer

    @property
    def mode(self):
        return self.decoder.mode or codec.BINARY

    # ------------------------------------------------------------------ output
    def encode(self, obj):
        return codec.encode(obj, self.mode)

    def encode_many(self, objs):
        return codec.encode_batch(objs, self.mode)

    def send(self, obj):
        if self.closing:
            return False
        return self._enqueue(self.encode(obj))

    def send_many(self, objs):
        if self.closing or not objs:
            return False
        return self._enqueue(self.encode_many(objs))

    def send_raw(self, data):
        """Queue bytes that are already framed (e.g. a WebSocket handshake reply)."""
        if not self.closing and data:
            self._enqueue(data)

    def _enqueue(self, data):
        if self.out_bytes + len(data) > self.max_queue_bytes:
            self.slow_reader()
            return False
        self.out.append(data)
        self.out_bytes += len(data)
        if self.writer is None and not self.flush_due:
            self.flush_due = True
            _queued.append(self)
            if len(_queued) == 1:
                gevent.get_hub().loop.run_callback(_flush_queued)
        return True

    def _flush(self):
        """Write what is queued without waiting; what the socket does not take now goes
        to a writer greenlet.  Runs in the hub (_flush_queued) or in wait_written."""
        self.flush_due = False
        out = self.out
        if self.writer is not None or self.closed or not out:
            return
        data = out.popleft() if len(out) == 1 else b"".join(out)
        out.clear()
        try:
            sent = self._send_now(data)
        except (OSError, ValueError):
            self.out_bytes = 0
            self.abort()
            return
        if sent < len(data):
            # written first by the writer, apart from the queue (which slow_reader may
            # clear): a frame is never cut, and TLS gets the bytes it refused back first
            self.unsent = memoryview(data)[sent:]
            self.out_bytes = len(data) - sent
            self.writer = gevent.spawn(self._write_loop)
        else:
            self.out_bytes = 0

    def _send_now(self, data):
        """Write what the socket takes of ``data`` now, without waiting -> bytes written
        (a TLS socket takes all or nothing: 0 when it would block)."""
        sock = self.sock
        try:
            if self.tls:
                timeout = sock.gettimeout()
                sock.settimeout(0.0)   # no switch until it is restored: no reader sees it
                try:
                    return sock.send(data)
                finally:
                    sock.settimeout(timeout)
            return sock.send(data, 0, 0.0)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0

    def _write_all(self, data):
        """Write ``data`` whole (writer greenlet), waiting for the socket as long as it
        takes; :meth:`abort` (FORCE_CLOSE_AFTER after close_with) ends a wait that lasts."""
        view = memoryview(data)
        fileno = self.sock.fileno()
        while view:
            sent = self._send_now(view)
            if sent:
                view = view[sent:]
            else:
                wait_write(fileno)

    def slow_reader(self):
        logs.warning("slow_reader", service=self.service, addr=self.peer, queued=self.out_bytes)
        self.out.clear()
        self.out_bytes = 0
        self.close_with({"op": "bye", "reason": "slow_reader", "retry_after": jittered(self.retry_after)})

    def close_with(self, obj=None):
        """Queue a last frame (bye, kicked, fatal error), then close once it is written."""
        if self.closing:
            return
        for data in self.last_frames(obj):
            self.out.append(data)
            self.out_bytes += len(data)
        self._close_after_output()

    def _close_after_output(self):
        """No more output: the writer writes what is queued, then closes the socket; a
        peer that does not read must not keep us waiting forever (FORCE_CLOSE_AFTER)."""
        self.closing = True
        if self.writer is None:
            self.writer = gevent.spawn(self._write_loop)
        gevent.spawn_later(FORCE_CLOSE_AFTER, self.abort)

    def wait_written(self, timeout):
        """Wait (this greenlet) up to ``timeout`` s for the writer to finish: after
        close_with, until the last frame is written and the socket closed."""
        if self.flush_due:
            self._flush()
        writer = self.writer
        if writer is not None:
            writer.join(timeout=timeout)

    def last_frames(self, obj):
        """The bytes to write before closing: the final frame, if any."""
        return [self.encode(obj)] if obj is not None else []

    def _write_loop(self):
        """Write until the queue is empty (frames queued during a blocked write go out
        in the next round), then end; after close_with, close the socket."""
        out = self.out
        try:
            while out or self.unsent is not None:
                if self.unsent is not None:
                    data, self.unsent = self.unsent, None
                elif len(out) == 1:
                    data = out.popleft()
                else:
                    data = b"".join(out)
                    out.clear()
                self.out_bytes = 0
                self._write_all(data)
        except (OSError, ValueError):   # socket.timeout, ssl.SSLError: OSErrors; ValueError: TLS closed
            self.closing = True
        finally:
            # no switch since the queue was seen empty: the next frame spawns a new writer
            self.writer = None
        if self.closing:
            self.abort()

    def abort(self):
        """Close the socket now (wakes a reader blocked in recv, or a parked connection's
        resume)."""
        self.closing = True
        if self.closed:
            return
        self.closed = True
        writer = self.writer
        if writer is not None and writer is not gevent.getcurrent():
            writer.kill(block=False)   # it may wait for the socket (wait_write): never again
        parked = self._unpark()
        if parked is not None:
            resume, _, args = parked
            gevent.spawn(resume, *args)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass

    # ------------------------------------------------------------------ input
    def recv(self, timeout):
        """-> bytes read, or b"" on EOF / close / timeout (timeout logged by the caller)."""
        if self.closing:
            return b""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(RECV_SIZE)
        except socket.timeout:
            raise
        except (OSError, ValueError):   # ValueError: a TLS socket closed meanwhile (abort)
            return b""

    def recv_nowait(self):
        """-> the bytes there are now; b"" on EOF / close; None when nothing is there yet."""
        if self.closing:
            return b""
        sock = self.sock
        sock.settimeout(0.0)   # gevent's recv raises instead of waiting
        try:
            data = sock.recv(RECV_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None   # TLS: no whole record there, and nothing decrypted left
        except (OSError, ValueError):
            return b""
        if self.tls and data:
            return _more_records(sock, data)
        return data

    def park(self, timeout, resume, on_timeout, *args):
        """Wait for input without a greenlet (the caller's returns): when the socket is
        readable, or the connection is closed (:meth:`abort`), ``resume(*args)`` runs in
        a new greenlet; after ``timeout`` seconds without input, ``on_timeout(*args)``
        does, and the connection stays parked (on_timeout closes it, which resumes it).
        A TLS socket with decrypted bytes pending is not parked: ``resume`` runs at once
        (its descriptor would never signal them)."""
        if self.tls and not self.closed and self.sock.pending():
            gevent.spawn(resume, *args)
            return
        loop = gevent.get_hub().loop
        if self._readable is None:
            self._readable = loop.io(self.sock.fileno(), 1)
            # again() re-arms for the full `repeat`; a stopped libev timer started again
            # would only wait what was left of its first `after`
            self._idle_timer = loop.timer(timeout, timeout)
        self._parked = (resume, on_timeout, args)
        self._readable.start(self._on_readable)
        self._idle_timer.again(self._on_idle)

    def _on_readable(self):
        parked = self._unpark()
        if parked is not None:
            resume, _, args = parked
            gevent.spawn(resume, *args)

    def _on_idle(self):
        self._idle_timer.stop()
        if self._parked is not None:
            _, on_timeout, args = self._parked
            gevent.spawn(on_timeout, *args)

    def _unpark(self):
        """Stop the watchers of a parked connection -> what park() was given, or None."""
        parked, self._parked = self._parked, None
        if parked is not None:
            self._readable.stop()
            self._idle_timer.stop()
        return parked

    def feed(self, data):
        """Received bytes -> decoded items (dicts and FrameErrors), as the decoder's feed,
        except for a first read that is text but not a JSON object (someone typing
        ``help`` into ``nc``): the binary decoder would take "help" for the length of a
        huge frame and wait for its body.  Such a connection is answered with a one-line
        hint in line mode (``too_large``: the length it spells is over max_frame) and
        closed; the codec is not involved."""
        decoder = self.decoder
        if decoder.mode is None and data and data[0] in TEXT_BYTES and data[:1] != b"{" \
                and (data[0] << 24) > decoder.max_frame:
            logs.info("framing_error", service=self.service, addr=self.peer, code=TOO_LARGE,
                      first_bytes=repr(bytes(data[:8])), hint="line_mode")
            self.out.append(codec.encode(error_reply(TOO_LARGE, LINE_MODE_HINT),
                                         codec.LINE))
            self._close_after_output()
            return []
        return decoder.feed(data)

    def rate_limited(self, now, **fields):
        """A request refused by the per-connection bucket: logged once per RATE_LOG_EVERY
        seconds per connection (with how many were refused since the last line), not per
        frame."""
        self.rate_refused += 1
        if self.rate_logged is None or now - self.rate_logged >= RATE_LOG_EVERY:
            logs.warning("rate_limited", service=self.service, addr=self.peer, refused=self.rate_refused,
                         **fields)
            self.rate_logged = now
            self.rate_refused = 0

    def framing_error(self, err):
        """A FrameError item from the decoder: reply; fatal ones close the connection."""
        reply = error_reply(err.code, err.message)
        if err.fatal:
            logs.info("framing_error", service=self.service, addr=self.peer, code=err.code)
            self.close_with(reply)
        else:
            self.send(reply)


_queued = []   # connections with output to flush at the next turn of the loop


def _flush_queued():
    """The loop callback that flushes every connection queued since the last turn."""
    queued = _queued[:]
    del _queued[:]
    for conn in queued:
        if conn.flush_due:
            conn._flush()


def offload(fn, *args):
    """Run ``fn(*args)`` on the hub's thread pool (the core's password hashing: CPU, so
    other connections keep moving)."""
    return gevent.get_hub().threadpool.apply(fn, args)


def schedule(delay, fn):
    """The core's timer (imsrv.core.interfaces): ``fn`` runs in a greenlet of its own after
    ``delay`` seconds.  -> a function that cancels it."""
    greenlet = gevent.spawn_later(delay, fn)
    return lambda: greenlet.kill(block=False)


def jittered(base):
    """retry_after for a bye: base plus up to 100% jitter, whole seconds (thundering herd)."""
    return max(1, int(round(base + random.uniform(0, base))))
