"""A minimal MQTT 3.1.1 codec and QoS 1 client on gevent sockets, for ``imsrv bench --peer
mosquitto``.

Why not a library: the bench has to drive a C broker (Mosquitto) to its limit from a few
Python processes on the same two cores.  paho-mqtt, the maintained Eclipse client, is pure
Python with a lock, a callback and a ``send()`` per packet; measured on this shape it is the
bottleneck, not the broker (numbers in bench/RESULTS.md and in
:mod:`imsrv.bench.peer_mosquitto`).  This module does only what the bench needs, the way
the imsrv load generator talks to imsrv: pipelined, many packets per socket write, packets
decoded in bulk from each read.

What it covers (MQTT 3.1.1, OASIS standard, section 2 and 3):

- packets: CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH (QoS 0/1), PUBACK, PINGREQ/PINGRESP,
  DISCONNECT; ``encode_*`` build them, ``parse_*`` read their bodies;
- :class:`Decoder`: an incremental splitter of a byte stream into ``(type, flags, body)``;
- :class:`Client`: one connection: ``connect`` (CONNECT, CONNACK awaited), ``subscribe``
  (SUBACK awaited), ``write`` (raw packets, serialised by a lock so the keep-alive pinger
  never interleaves with a batch), ``packets()`` (what arrives), ``close``.

Not covered: QoS 2, will messages, user names and passwords, MQTT 5 properties.
"""
import struct
import time

import gevent
import gevent.lock
from gevent import socket

#: packet types (MQTT 3.1.1 table 2.1)
CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
#: the largest remaining length four varint bytes hold (2.2.3)
MAX_REMAINING = 268_435_455
#: seconds between two PINGREQs; the broker drops a client silent for 1.5x this
KEEPALIVE = 60
#: bytes asked of each socket read
READ_SIZE = 256 * 1024

_CONNACK_CODES = {1: "unacceptable protocol version", 2: "identifier rejected",
                  3: "server unavailable", 4: "bad user name or password", 5: "not authorized"}


class ProtocolError(ValueError):
    """Malformed MQTT, a refused CONNECT or SUBSCRIBE, or the broker closed the connection."""


# ---------------------------------------------------------------------------- encoding

def encode_remaining_length(n):
    """The variable-length encoding of a remaining length (1 to 4 bytes)."""
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"remaining length {n} outside 0..{MAX_REMAINING}")
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


#: encoded remaining lengths of one and two bytes
_RL = [encode_remaining_length(n) for n in range(16384)]


def _packet(first, body):
    return bytes((first,)) + encode_remaining_length(len(body)) + body


def _string(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def encode_connect(client_id, keepalive=KEEPALIVE, clean=True):
    """CONNECT, protocol level 4 (3.1.1), no will, no user name or password."""
    body = _string("MQTT") + bytes((4, 0x02 if clean else 0)) + struct.pack("!H", keepalive)
    return _packet(CONNECT << 4, body + _string(client_id))


def encode_connack(session_present=False, code=0):
    return _packet(CONNACK << 4, bytes((1 if session_present else 0, code)))


def encode_subscribe(packet_id, topics):
    """SUBSCRIBE for ``topics``, a list of (topic filter, requested QoS)."""
    body = struct.pack("!H", packet_id) + b"".join(_string(t) + bytes((q,)) for t, q in topics)
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def encode_suback(packet_id, codes):
    return _packet(SUBACK << 4, struct.pack("!H", packet_id) + bytes(codes))


def encode_publish(topic, payload, qos=1, packet_id=0, dup=False, retain=False):
    """PUBLISH; ``topic`` str or bytes, ``payload`` bytes; ``packet_id`` only with QoS > 0.
    (The hot path of the bench: one formatting, lengths below 16384 from a table.)"""
    t = topic.encode() if isinstance(topic, str) else topic
    first = (PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    if qos:
        n = 4 + len(t) + len(payload)
        return b"%c%s%s%s%s%s" % (first, _RL[n] if n < 16384 else encode_remaining_length(n),
                                  len(t).to_bytes(2, "big"), t, packet_id.to_bytes(2, "big"), payload)
    n = 2 + len(t) + len(payload)
    return b"%c%s%s%s%s" % (first, _RL[n] if n < 16384 else encode_remaining_length(n),
                            len(t).to_bytes(2, "big"), t, payload)


def encode_puback(packet_id):
    return b"\x40\x02" + struct.pack("!H", packet_id)


PINGREQ_PACKET = b"\xc0\x00"
PINGRESP_PACKET = b"\xd0\x00"
DISCONNECT_PACKET = b"\xe0\x00"


# ---------------------------------------------------------------------------- decoding

class Decoder:
    """Splits a byte stream into packets: ``feed(data)`` -> a list of (type, flags, body)
    for every packet completed by ``data``; the rest waits for the next feed."""

    def __init__(self, max_size=MAX_REMAINING):
        self.buf = b""
        self.max_size = max_size

    def feed(self, data):
        buf = self.buf + data if self.buf else data
        out = []
        pos, n = 0, len(buf)
        while n - pos >= 2:
            first, length = buf[pos], buf[pos + 1]
            start = pos + 2
            if length & 0x80:
                length &= 0x7F
                shift = 7
                while True:
                    if start >= n:
                        self.buf = buf[pos:]
                        return out
                    byte = buf[start]
                    start += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        raise ProtocolError("remaining length longer than four bytes")
            if length > self.max_size:
                raise ProtocolError(f"packet of {length} bytes over the limit of {self.max_size}")
            end = start + length
            if end > n:
                break
            out.append((first >> 4, first & 0x0F, buf[start:end]))
            pos = end
        self.buf = buf[pos:]
        return out


def decode_remaining_length(data, pos=0):
    """(length, position after it) of the varint at ``data[pos:]``, or None if incomplete."""
    length, shift = 0, 0
    for i in range(pos, min(pos + 4, len(data))):
        length |= (data[i] & 0x7F) << shift
        if not data[i] & 0x80:
            return length, i + 1
        shift += 7
    if len(data) - pos >= 4:
        raise ProtocolError("remaining length longer than four bytes")
    return None


def _read_string(body, pos):
    (size,) = struct.unpack_from("!H", body, pos)
    return body[pos + 2:pos + 2 + size], pos + 2 + size


def parse_connect(body):
    """-> {"protocol", "level", "clean", "keepalive", "client_id"} of a CONNECT body."""
    proto, pos = _read_string(body, 0)
    level, flags = body[pos], body[pos + 1]
    (keepalive,) = struct.unpack_from("!H", body, pos + 2)
    client_id, _ = _read_string(body, pos + 4)
    return {"protocol": proto.decode(), "level": level, "clean": bool(flags & 0x02),
            "keepalive": keepalive, "client_id": client_id.decode()}


def parse_connack(body):
    """-> (session_present, return code) of a CONNACK body."""
    return bool(body[0] & 1), body[1]


def parse_subscribe(body):
    """-> (packet id, [(topic filter, QoS), ...]) of a SUBSCRIBE body."""
    (packet_id,) = struct.unpack_from("!H", body, 0)
    topics, pos = [], 2
    while pos < len(body):
        topic, pos = _read_string(body, pos)
        topics.append((topic.decode(), body[pos]))
        pos += 1
    return packet_id, topics


def parse_suback(body):
    """-> (packet id, [granted QoS or 0x80 for failure, ...]) of a SUBACK body."""
    return struct.unpack_from("!H", body, 0)[0], list(body[2:])


def parse_publish(flags, body):
    """-> (topic bytes, packet id or 0, payload bytes) of a PUBLISH with these flags."""
    size = (body[0] << 8) | body[1]
    pos = 2 + size
    if flags & 0x06:
        return body[2:pos], (body[pos] << 8) | body[pos + 1], body[pos + 2:]
    return body[2:pos], 0, body[pos:]


def parse_puback(body):
    """-> the packet id of a PUBACK body."""
    return (body[0] << 8) | body[1]


# ---------------------------------------------------------------------------- client

class Client:
    """One MQTT connection on a (gevent) socket.  ``connect`` and ``subscribe`` are
    synchronous; after them, one greenlet iterates ``packets()`` while others ``write``."""

    def __init__(self, host, port, client_id, keepalive=KEEPALIVE, connect_timeout=10.0):
        self.client_id = client_id
        self.keepalive = keepalive
        self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.settimeout(None)
        except BaseException:
            self.sock.close()
            raise
        self.decoder = Decoder()
        self.lock = gevent.lock.Semaphore()
        self.last_write = time.monotonic()
        self._pending = []      # packets read past the one a synchronous call waited for
        self._pinger = None

    def write(self, data):
        """Send raw packet bytes (one or many packets) in one ``sendall``."""
        with self.lock:
            self.sock.sendall(data)
            self.last_write = time.monotonic()

    def _next(self, wanted, timeout):
        deadline = time.monotonic() + timeout
        while True:
            for i, packet in enumerate(self._pending):
                if packet[0] == wanted:
                    del self._pending[i]
                    return packet
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProtocolError(f"{self.client_id}: no packet of type {wanted} within {timeout} s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(READ_SIZE)
            except socket.timeout:
                continue  # past the deadline now: the ProtocolError above
            finally:
                self.sock.settimeout(None)
            if not data:
                raise ProtocolError(f"{self.client_id}: the broker closed the connection")
            self._pending.extend(self.decoder.feed(data))

    def connect(self, clean=True, timeout=10.0):
        """Send CONNECT, wait for CONNACK; start the keep-alive pinger."""
        self.write(encode_connect(self.client_id, self.keepalive, clean))
        _, _, body = self._next(CONNACK, timeout)
        _, code = parse_connack(body)
        if code:
            raise ProtocolError(f"{self.client_id}: CONNECT refused: "
                                f"{_CONNACK_CODES.get(code, f'return code {code}')}")
        if self.keepalive:
            self._pinger = gevent.spawn(self._ping_loop)

    def subscribe(self, topic, qos=1, packet_id=1, timeout=10.0):
        """Send SUBSCRIBE, wait for its SUBACK -> the granted QoS."""
        self.write(encode_subscribe(packet_id, [(topic, qos)]))
        _, _, body = self._next(SUBACK, timeout)
        pid, codes = parse_suback(body)
        if pid != packet_id or not codes or codes[0] == 0x80:
            raise ProtocolError(f"{self.client_id}: SUBSCRIBE {topic!r} refused (SUBACK {pid} {codes})")
        return codes[0]

    def _ping_loop(self):
        period = self.keepalive / 2
        while True:
            gevent.sleep(max(0.0, self.last_write + period - time.monotonic()))  # a timer, not a wait
            if time.monotonic() - self.last_write >= period:
                self.write(PINGREQ_PACKET)

    def packets(self):
        """Yield lists of (type, flags, body), one list per socket read, until EOF; packets
        left over from ``connect``/``subscribe`` come first."""
        if self._pending:
            pending, self._pending = self._pending, []
            yield pending
        recv, feed = self.sock.recv, self.decoder.feed
        while True:
            data = recv(READ_SIZE)
            if not data:
                return
            yield feed(data)

    def close(self, disconnect=True):
        """Send DISCONNECT (unless told not to, or it cannot be sent) and close the socket."""
        if self._pinger is not None:
            self._pinger.kill(block=False)
            self._pinger = None
        try:
            if disconnect:
                self.sock.settimeout(1.0)  # a broker that stopped reading cannot hold us
                self.write(DISCONNECT_PACKET)
        except OSError:
            pass
        finally:
            self.sock.close()
