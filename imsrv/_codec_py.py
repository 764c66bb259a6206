"""Pure-Python frame codec: the twin of the Cython module ``imsrv._codec`` (ext/_codec.pyx).

Same API, same behaviour, same test vectors; use :mod:`imsrv.codec`, which picks the
implementation.  Framing rules (protocol v1, docs/PROTOCOL.md "Framing"):

* mode detection: a connection whose first byte is ``{`` is in line mode for its whole
  life, otherwise binary;
* binary: 4-byte unsigned big-endian length N, then N bytes of UTF-8 JSON holding one
  object; N == 0 is a fatal ``bad_frame``, N > max_frame a fatal ``too_large``, detected
  from the header alone, before any of the body is buffered;
* line: one JSON object per line ending in ``\\n`` (``\\r\\n`` accepted, empty lines and
  lines holding only ``\\r`` ignored); a line longer than max_frame (terminator not
  counted) is a fatal ``too_large``, detected as soon as more than max_frame bytes (plus
  a possible ``\\r``) are pending without a newline;
* a frame that is not valid UTF-8, not valid JSON or not a JSON object is a non-fatal
  ``bad_json`` and decoding goes on with the next frame.

Memory: the decoder keeps a ``bytearray`` and a read offset, decodes each frame from a
slice of that one frame, and drops consumed bytes once per ``feed`` (deleting from the
front of a ``bytearray`` is O(1) in CPython).  What it holds between calls is at most one
partial frame: < 4 + max_frame bytes in binary mode, <= max_frame + 1 in line mode.
"""
from struct import Struct

from imsrv import jsonlib
# The framing error codes and FrameError are defined once, in imsrv.protocol.errors (the
# server answers with the same codes); re-exported here as part of the codec's API.
from imsrv.protocol.errors import BAD_FRAME, BAD_JSON, TOO_LARGE, FrameError

BINARY = "binary"
LINE = "line"
DEFAULT_MAX_FRAME = 65536
# The binary header is 32 bits, so no frame can be longer than this whatever max_frame says.
MAX_FRAME_LIMIT = 0xFFFFFFFF

_HEADER = Struct(">I")
_unpack_from = _HEADER.unpack_from
_pack = _HEADER.pack
_loads = jsonlib.raw_loads
_LOADS_ERRORS = jsonlib.RAW_LOADS_ERRORS
_dumps = jsonlib.dumps


def _check_mode(mode, allow_none=False):
    if mode == BINARY or mode == LINE or (allow_none and mode is None):
        return mode
    raise ValueError(f"mode must be {BINARY!r} or {LINE!r}" + (" or None" if allow_none else "") + f", not {mode!r}")


def _check_max_frame(max_frame):
    if isinstance(max_frame, bool) or not isinstance(max_frame, int):
        raise TypeError(f"max_frame must be an int, not {type(max_frame).__name__}")
    if not 1 <= max_frame <= MAX_FRAME_LIMIT:
        raise ValueError(f"max_frame must be between 1 and {MAX_FRAME_LIMIT}, not {max_frame}")
    return max_frame


def _bad_json(exc):
    return FrameError(BAD_JSON, f"frame is not valid UTF-8 JSON: {exc}")


def _not_object(obj):
    return FrameError(BAD_JSON, f"frame is not a JSON object (got {type(obj).__name__})")


def _too_large_binary(n, max_frame):
    return FrameError(TOO_LARGE, f"frame length {n} exceeds max_frame {max_frame}", True)


def _too_large_line(max_frame):
    return FrameError(TOO_LARGE, f"line exceeds max_frame {max_frame} bytes", True)


def _zero_length():
    return FrameError(BAD_FRAME, "frame length 0 is not allowed", True)


class Decoder:
    """Incremental, sans-IO frame splitter + JSON decoder for one connection.

    ``feed(data)`` returns the items completed by ``data``, in order: a ``dict`` per
    decoded frame, or a :class:`FrameError`.  A fatal FrameError is always the last item;
    after it ``failed`` is True, the buffer is released and ``feed`` returns ``[]``.
    """

    __slots__ = ("max_frame", "mode", "failed", "_buf", "_scan")

    def __init__(self, max_frame=DEFAULT_MAX_FRAME, mode=None):
        self.max_frame = _check_max_frame(max_frame)
        self.mode = _check_mode(mode, allow_none=True)
        self.failed = False
        # Unconsumed bytes.  Within feed() a read offset walks through it; what was
        # consumed is dropped once at the end of the call.
        self._buf = bytearray()
        self._scan = 0  # line mode: the held bytes before this offset hold no newline

    @property
    def buffered(self):
        """Bytes currently held (the start of a frame not complete yet)."""
        return len(self._buf)

    def __repr__(self):
        state = "failed" if self.failed else f"buffered={self.buffered}"
        return f"<Decoder mode={self.mode!r} max_frame={self.max_frame} {state}>"

    def _fail(self, out, error):
        self.failed = True
        self._buf = bytearray()
        self._scan = 0
        out.append(error)
        return out

    def feed(self, data):
        """Add received bytes; return the items (dicts / FrameErrors) they complete."""
        if type(data) is not bytes and type(data) is not bytearray:
            data = memoryview(data).cast("B")  # TypeError for non-buffers, before any change
        if self.failed or not data:
            return []
        if self.mode is None:
            self.mode = LINE if bytes(data[:1]) == b"{" else BINARY
        try:
            if self.mode == BINARY:
                return self._feed_binary(data)
            return self._feed_line(data)
        except BaseException:
            # Only MemoryError and the like get here; the stream position is lost.
            self._fail([], None)
            raise

    def _feed_binary(self, data):
        out = []
        append = out.append
        loads = _loads
        errors = _LOADS_ERRORS
        max_frame = self.max_frame
        buf = self._buf
        have = len(buf)
        if have < 4 and have + len(data) >= 4:
            # The next frame's header completes in this data: check it before buffering
            # any of its body.
            if have:
                (n,) = _unpack_from(bytes(buf) + bytes(data[:4 - have]))
            else:
                (n,) = _unpack_from(data)
            if n == 0:
                return self._fail(out, _zero_length())
            if n > max_frame:
                return self._fail(out, _too_large_binary(n, max_frame))
        buf += data
        end = len(buf)
        pos = 0
        while end - pos >= 4:
            (n,) = _unpack_from(buf, pos)
            if n == 0:
                return self._fail(out, _zero_length())
            if n > max_frame:
                return self._fail(out, _too_large_binary(n, max_frame))
            stop = pos + 4 + n
            if stop > end:
                break
            try:
                obj = loads(buf[pos + 4:stop])  # a copy of this one frame only
            except errors as exc:
                obj = _bad_json(exc)
            else:
                if type(obj) is not dict:
                    obj = _not_object(obj)
            append(obj)
            pos = stop
        if pos:
            # O(1) in CPython: deleting from the front moves the bytearray's start.
            del buf[:pos]
        return out

    def _feed_line(self, data):
        out = []
        append = out.append
        loads = _loads
        errors = _LOADS_ERRORS
        max_frame = self.max_frame
        buf = self._buf
        buf += data
        find = buf.find
        pos = 0
        scan = self._scan
        while True:
            nl = find(b"\n", scan)
            if nl < 0:
                break
            stop = nl
            if stop > pos and buf[stop - 1] == 0x0D:  # "\r\n"
                stop -= 1
            if stop - pos > max_frame:
                return self._fail(out, _too_large_line(max_frame))
            if stop > pos:  # blank lines are skipped
                try:
                    obj = loads(buf[pos:stop])  # a copy of this one line only
                except errors as exc:
                    obj = _bad_json(exc)
                else:
                    if type(obj) is not dict:
                        obj = _not_object(obj)
                append(obj)
            pos = scan = nl + 1
        # The pending, unterminated line may hold max_frame bytes, plus one if that is a
        # "\r" a "\n" may still follow.
        pending = len(buf) - pos
        if pending > max_frame and not (pending == max_frame + 1 and buf[-1] == 0x0D):
            return self._fail(out, _too_large_line(max_frame))
        if pos:
            del buf[:pos]
        self._scan = len(buf)
        return out


def _set_json_loads(loads, errors):
    """Swap the JSON decoder the Decoder calls; returns the previous ``(loads, errors)``.

    For benchmarks only (e.g. measuring frame splitting alone with a stub decoder).
    """
    global _loads, _LOADS_ERRORS
    old = (_loads, _LOADS_ERRORS)
    _loads, _LOADS_ERRORS = loads, tuple(errors)
    return old


def frame_bytes(payload, mode=BINARY):
    """Frame an already-serialised JSON payload (``bytes``-like, one JSON object)."""
    if type(payload) is not bytes:
        payload = bytes(payload)
    n = len(payload)
    if mode == BINARY:
        if n == 0 or n > MAX_FRAME_LIMIT:
            raise ValueError(f"payload length {n} cannot be framed (1..{MAX_FRAME_LIMIT})")
        return _pack(n) + payload
    if mode == LINE:
        if n == 0:
            raise ValueError("payload length 0 cannot be framed")
        if b"\n" in payload:
            raise ValueError("payload contains a newline and cannot be framed as one line")
        return payload + b"\n"
    _check_mode(mode)


def encode(obj, mode=BINARY):
    """Serialise one object (a ``dict``) and frame it."""
    if not isinstance(obj, dict):
        raise TypeError(f"a frame holds a JSON object (dict), not {type(obj).__name__}")
    payload = _dumps(obj)
    if mode == BINARY:
        n = len(payload)
        if n > MAX_FRAME_LIMIT:
            raise ValueError(f"payload length {n} cannot be framed (1..{MAX_FRAME_LIMIT})")
        return _pack(n) + payload
    if mode == LINE:
        return payload + b"\n"
    _check_mode(mode)


def encode_batch(objs, mode=BINARY):
    """Serialise and frame many objects into one ``bytes`` (== joined :func:`encode`).

    Each payload is appended to one growing ``bytearray`` right after it is serialised
    and dropped at once: holding hundreds of fresh payloads for a final ``b"".join`` is
    several times slower with glibc's allocator.
    """
    _check_mode(mode)
    out = bytearray()
    binary = mode == BINARY
    dumps = _dumps
    pack = _pack
    for obj in objs:
        if not isinstance(obj, dict):
            raise TypeError(f"a frame holds a JSON object (dict), not {type(obj).__name__}")
        payload = dumps(obj)
        if binary:
            n = len(payload)
            if n > MAX_FRAME_LIMIT:
                raise ValueError(f"payload length {n} cannot be framed (1..{MAX_FRAME_LIMIT})")
            out += pack(n)
            out += payload
        else:
            out += payload
            out += b"\n"
    return bytes(out)


__all__ = [
    "BINARY", "LINE", "DEFAULT_MAX_FRAME", "MAX_FRAME_LIMIT", "BAD_JSON", "TOO_LARGE", "BAD_FRAME",
    "FrameError", "Decoder", "encode", "encode_batch", "frame_bytes",
]
