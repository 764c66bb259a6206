# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Cython frame codec, compiled as ``imsrv._codec``.

The twin of ``imsrv/_codec_py.py``: same API, same behaviour, same test vectors (see that
module's docstring for the framing rules).  Use :mod:`imsrv.codec`, which picks the
implementation.

How it is fast:

* ``feed`` reads the caller's data in place through the buffer protocol (no copy) and
  splits it with C pointer arithmetic: ``memchr`` for newlines, a hand-rolled big-endian
  header read.  Only the trailing partial frame is copied into the decoder's own C buffer
  (and completed from the next ``feed``), so the decoder never holds more than one
  partial frame: < 4 + max_frame bytes in binary mode, <= max_frame + 1 in line mode,
  whatever the chunk size.  A too-long frame is refused from its header (binary) or as
  soon as the line passes max_frame (line), before it is copied anywhere.
* each frame is handed to the JSON library as one ``bytes`` object made directly from the
  frame's bytes (one small copy, the cheapest object orjson accepts), through a cached
  module-level reference to ``loads``, with an exact ``dict`` type check.
* the encoders write header and payload straight into one preallocated ``bytes``
  object; ``encode_batch`` sizes its output from an estimate, copies each payload in as
  soon as it is serialised, and trims the result in place.

``_set_json_loads`` is a benchmark hook (bench/bench_codec.py measures splitting alone
with a stub JSON decoder); nothing else calls it.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject, PyObject_LengthHint
from cpython.ref cimport Py_XDECREF
from libc.stdint cimport uint32_t
from libc.stdlib cimport free, realloc
from libc.string cimport memchr, memcpy

from imsrv import jsonlib
# The framing error codes and FrameError are defined once, in imsrv.protocol.errors (the
# server answers with the same codes); re-exported here as part of the codec's API.
from imsrv.protocol.errors import BAD_FRAME, BAD_JSON, TOO_LARGE, FrameError

BINARY = "binary"
LINE = "line"
DEFAULT_MAX_FRAME = 65536
MAX_FRAME_LIMIT = 0xFFFFFFFF

# Cached at import: the hot path calls these without attribute lookups.
cdef object _loads = jsonlib.raw_loads
cdef tuple _LOADS_ERRORS = tuple(jsonlib.RAW_LOADS_ERRORS)
cdef object _dumps = jsonlib.dumps

cdef extern from "Python.h":
    # Raw-pointer versions for encode_batch, which grows one bytes object in place.
    PyObject* _new_bytes "PyBytes_FromStringAndSize"(const char* data, Py_ssize_t size) except NULL
    char* _bytes_data "PyBytes_AS_STRING"(PyObject* obj)
    int _PyBytes_Resize(PyObject** obj, Py_ssize_t size) except -1

cdef enum:
    MODE_UNKNOWN = 0
    MODE_BINARY = 1
    MODE_LINE = 2

# A buffer that held a large partial frame is freed once it is empty again, so an idle
# connection costs nothing; smaller ones are kept for reuse.
cdef Py_ssize_t KEEP_CAPACITY = 16384
cdef Py_ssize_t MIN_CAPACITY = 512
# encode_batch's first guess of the framed size of one message.
cdef Py_ssize_t ENCODE_ESTIMATE = 256


cdef int _parse_mode(object mode, bint allow_none) except -1:
    if mode is None and allow_none:
        return MODE_UNKNOWN
    if mode is BINARY or mode == BINARY:
        return MODE_BINARY
    if mode is LINE or mode == LINE:
        return MODE_LINE
    raise ValueError(f"mode must be {BINARY!r} or {LINE!r}" + (" or None" if allow_none else "") + f", not {mode!r}")


cdef inline uint32_t _read_be32(const unsigned char* p) noexcept nogil:
    return ((<uint32_t>p[0]) << 24) | ((<uint32_t>p[1]) << 16) | ((<uint32_t>p[2]) << 8) | (<uint32_t>p[3])


cdef inline void _write_be32(unsigned char* p, uint32_t n) noexcept nogil:
    p[0] = <unsigned char>(n >> 24)
    p[1] = <unsigned char>(n >> 16)
    p[2] = <unsigned char>(n >> 8)
    p[3] = <unsigned char>n


cdef object _decode(const unsigned char* p, Py_ssize_t n):
    """One frame's bytes -> dict or a non-fatal FrameError."""
    cdef bytes frame = PyBytes_FromStringAndSize(<const char*>p, n)
    try:
        obj = _loads(frame)
    except _LOADS_ERRORS as exc:
        return FrameError(BAD_JSON, f"frame is not valid UTF-8 JSON: {exc}")
    if type(obj) is dict:
        return obj
    return FrameError(BAD_JSON, f"frame is not a JSON object (got {type(obj).__name__})")


cdef class Decoder:
    """Incremental, sans-IO frame splitter + JSON decoder for one connection.

    ``feed(data)`` returns the items completed by ``data``, in order: a ``dict`` per
    decoded frame, or a :class:`FrameError`.  A fatal FrameError is always the last item;
    after it ``failed`` is True, the buffer is released and ``feed`` returns ``[]``.
    """

    cdef unsigned char* _buf    # the pending partial frame, always from offset 0
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _max_frame
    cdef int _mode
    cdef readonly bint failed

    def __cinit__(self):
        self._buf = NULL
        self._len = 0
        self._cap = 0
        self._mode = MODE_UNKNOWN
        self.failed = False

    def __dealloc__(self):
        free(self._buf)
        self._buf = NULL

    def __init__(self, max_frame=DEFAULT_MAX_FRAME, mode=None):
        if isinstance(max_frame, bool) or not isinstance(max_frame, int):
            raise TypeError(f"max_frame must be an int, not {type(max_frame).__name__}")
        if not 1 <= max_frame <= MAX_FRAME_LIMIT:
            raise ValueError(f"max_frame must be between 1 and {MAX_FRAME_LIMIT}, not {max_frame}")
        self._max_frame = max_frame
        self._mode = _parse_mode(mode, True)

    @property
    def mode(self):
        """None until the first byte arrives, then ``"binary"`` or ``"line"``."""
        if self._mode == MODE_BINARY:
            return BINARY
        if self._mode == MODE_LINE:
            return LINE
        return None

    @property
    def max_frame(self):
        return self._max_frame

    @property
    def buffered(self):
        """Bytes currently held (the start of a frame not complete yet)."""
        return self._len

    def __repr__(self):
        state = "failed" if self.failed else f"buffered={self._len}"
        return f"<Decoder mode={self.mode!r} max_frame={self._max_frame} {state}>"

    # -- buffer management ------------------------------------------------------------

    cdef int _append(self, const unsigned char* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t need = self._len + n
        cdef Py_ssize_t cap
        cdef unsigned char* nbuf
        if need > self._cap:
            cap = self._cap * 2
            if cap < need:
                cap = need
            if cap < MIN_CAPACITY:
                cap = MIN_CAPACITY
            nbuf = <unsigned char*>realloc(self._buf, <size_t>cap)
            if nbuf == NULL:
                raise MemoryError()
            self._buf = nbuf
            self._cap = cap
        memcpy(self._buf + self._len, p, <size_t>n)
        self._len = need
        return 0

    cdef inline void _consumed(self) noexcept:
        """The pending frame was used up."""
        self._len = 0
        if self._cap > KEEP_CAPACITY:
            free(self._buf)
            self._buf = NULL
            self._cap = 0

    cdef void _release(self) noexcept:
        free(self._buf)
        self._buf = NULL
        self._len = 0
        self._cap = 0

    cdef list _fail(self, list out, object error):
        self.failed = True
        self._release()
        out.append(error)
        return out

    cdef object _too_large_line(self):
        return FrameError(TOO_LARGE, f"line exceeds max_frame {self._max_frame} bytes", True)

    # -- decoding ---------------------------------------------------------------------

    def feed(self, data):
        """Add received bytes; return the items (dicts / FrameErrors) they complete."""
        cdef Py_buffer view
        if self.failed:
            return []
        if type(data) is bytes:
            return self._feed_guarded(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self._feed_guarded(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef list _feed_guarded(self, const unsigned char* p, Py_ssize_t n):
        try:
            if self._mode == MODE_LINE:
                return self._feed_line(p, n)
            if self._mode == MODE_BINARY:
                return self._feed_binary(p, n)
            if n == 0:
                return []
            if p[0] == 0x7B:  # "{"
                self._mode = MODE_LINE
                return self._feed_line(p, n)
            self._mode = MODE_BINARY
            return self._feed_binary(p, n)
        except BaseException:
            # Only MemoryError and the like get here; the stream position is lost.
            self.failed = True
            self._release()
            raise

    cdef list _feed_binary(self, const unsigned char* p, Py_ssize_t n):
        cdef list out = []
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t take, need
        cdef uint32_t length
        cdef Py_ssize_t max_frame = self._max_frame

        if self._len > 0:
            # Complete the pending frame from the front of the new data.
            if self._len < 4:
                take = 4 - self._len
                if take > n:
                    take = n
                self._append(p, take)
                pos = take
                if self._len < 4:
                    return out
                length = _read_be32(self._buf)
                if length == 0:
                    return self._fail(out, FrameError(BAD_FRAME, "frame length 0 is not allowed", True))
                if length > max_frame:
                    return self._fail(out, FrameError(
                        TOO_LARGE, f"frame length {length} exceeds max_frame {max_frame}", True))
            length = _read_be32(self._buf)
            need = 4 + <Py_ssize_t>length - self._len
            take = n - pos
            if take > need:
                take = need
            self._append(p + pos, take)
            pos += take
            if take < need:
                return out
            out.append(_decode(self._buf + 4, length))
            self._consumed()

        # Whole frames straight from the caller's data.
        while n - pos >= 4:
            length = _read_be32(p + pos)
            if length == 0:
                return self._fail(out, FrameError(BAD_FRAME, "frame length 0 is not allowed", True))
            if length > max_frame:
                return self._fail(out, FrameError(
                    TOO_LARGE, f"frame length {length} exceeds max_frame {max_frame}", True))
            if n - pos - 4 < <Py_ssize_t>length:
                break
            out.append(_decode(p + pos + 4, length))
            pos += 4 + <Py_ssize_t>length

        if pos < n:
            self._append(p + pos, n - pos)
        return out

    cdef int _line(self, list out, const unsigned char* p, Py_ssize_t k) except -1:
        """One complete line (without its "\\n"): 1 = go on, 0 = fatal error appended."""
        if k > 0 and p[k - 1] == 0x0D:  # "\r"
            k -= 1
        if k == 0:
            return 1  # blank line
        if k > self._max_frame:
            self._fail(out, self._too_large_line())
            return 0
        out.append(_decode(p, k))
        return 1

    cdef list _feed_line(self, const unsigned char* p, Py_ssize_t n):
        cdef list out = []
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t k, total
        cdef Py_ssize_t max_frame = self._max_frame
        cdef const unsigned char* nl

        if n == 0:
            return out
        if self._len > 0:
            nl = <const unsigned char*>memchr(p, 0x0A, <size_t>n)
            if nl == NULL:
                total = self._len + n
                if total > max_frame and not (total == max_frame + 1 and p[n - 1] == 0x0D):
                    return self._fail(out, self._too_large_line())
                self._append(p, n)
                return out
            k = nl - p
            if self._len + k > max_frame + 1:  # too long even if it ends in "\r"
                return self._fail(out, self._too_large_line())
            self._append(p, k)
            pos = k + 1
            if not self._line(out, self._buf, self._len):
                return out
            self._consumed()

        # Whole lines straight from the caller's data.
        while True:
            nl = <const unsigned char*>memchr(p + pos, 0x0A, <size_t>(n - pos))
            if nl == NULL:
                break
            k = nl - (p + pos)
            if not self._line(out, p + pos, k):
                return out
            pos += k + 1

        k = n - pos
        if k > 0:
            # A pending line may reach max_frame bytes, plus one if that is a "\r".
            if k > max_frame and not (k == max_frame + 1 and p[n - 1] == 0x0D):
                return self._fail(out, self._too_large_line())
            self._append(p + pos, k)
        return out


def _set_json_loads(loads, errors):
    """Swap the JSON decoder the Decoder calls; returns the previous ``(loads, errors)``.

    For benchmarks only (e.g. measuring frame splitting alone with a stub decoder).
    """
    global _loads, _LOADS_ERRORS
    old = (_loads, _LOADS_ERRORS)
    _loads = loads
    _LOADS_ERRORS = tuple(errors)
    return old


# -- encoding ---------------------------------------------------------------------------

cdef bytes _frame(const unsigned char* payload, Py_ssize_t n, int mode):
    cdef bytes out
    cdef unsigned char* w
    if mode == MODE_BINARY:
        if n == 0 or n > <Py_ssize_t>MAX_FRAME_LIMIT:
            raise ValueError(f"payload length {n} cannot be framed (1..{MAX_FRAME_LIMIT})")
        out = PyBytes_FromStringAndSize(NULL, n + 4)
        w = <unsigned char*>PyBytes_AS_STRING(out)
        _write_be32(w, <uint32_t>n)
        memcpy(w + 4, payload, <size_t>n)
    else:
        out = PyBytes_FromStringAndSize(NULL, n + 1)
        w = <unsigned char*>PyBytes_AS_STRING(out)
        memcpy(w, payload, <size_t>n)
        w[n] = 0x0A
    return out


def frame_bytes(payload, mode=BINARY):
    """Frame an already-serialised JSON payload (``bytes``-like, one JSON object)."""
    cdef int m = _parse_mode(mode, False)
    cdef Py_buffer view
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        if m == MODE_LINE:
            if view.len == 0:
                raise ValueError("payload length 0 cannot be framed")
            if memchr(view.buf, 0x0A, <size_t>view.len) != NULL:
                raise ValueError("payload contains a newline and cannot be framed as one line")
        return _frame(<const unsigned char*>view.buf, view.len, m)
    finally:
        PyBuffer_Release(&view)


def encode(obj, mode=BINARY):
    """Serialise one object (a ``dict``) and frame it."""
    cdef int m
    cdef bytes payload
    if mode is BINARY:
        m = MODE_BINARY
    else:
        m = _parse_mode(mode, False)
    if not isinstance(obj, dict):
        raise TypeError(f"a frame holds a JSON object (dict), not {type(obj).__name__}")
    payload = _dumps(obj)
    return _frame(<const unsigned char*>PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), m)


def encode_batch(objs, mode=BINARY):
    """Serialise and frame many objects into one ``bytes`` (== joined :func:`encode`).

    The output is one ``bytes`` object allocated up front from an estimate, grown
    geometrically if needed and trimmed in place at the end; each payload is copied in
    right after it is serialised and dropped at once (holding hundreds of freshly
    serialised payloads until a final join is markedly slower with glibc's allocator).
    """
    cdef int m = _parse_mode(mode, False)
    cdef Py_ssize_t extra = 4 if m == MODE_BINARY else 1
    cdef Py_ssize_t used = 0
    cdef Py_ssize_t cap = PyObject_LengthHint(objs, 16) * ENCODE_ESTIMATE
    cdef Py_ssize_t n, want
    cdef PyObject* out
    cdef bytes payload
    cdef unsigned char* w
    if cap < ENCODE_ESTIMATE:
        cap = ENCODE_ESTIMATE
    out = _new_bytes(NULL, cap)
    try:
        for obj in objs:
            if not isinstance(obj, dict):
                raise TypeError(f"a frame holds a JSON object (dict), not {type(obj).__name__}")
            payload = _dumps(obj)
            n = PyBytes_GET_SIZE(payload)
            if m == MODE_BINARY and n > <Py_ssize_t>MAX_FRAME_LIMIT:
                raise ValueError(f"payload length {n} cannot be framed (1..{MAX_FRAME_LIMIT})")
            want = used + n + extra
            if want > cap:
                cap = cap * 2
                if cap < want:
                    cap = want
                _PyBytes_Resize(&out, cap)  # on failure: out is released and set to NULL
            w = <unsigned char*>_bytes_data(out) + used
            if m == MODE_BINARY:
                _write_be32(w, <uint32_t>n)
                memcpy(w + 4, PyBytes_AS_STRING(payload), <size_t>n)
            else:
                memcpy(w, PyBytes_AS_STRING(payload), <size_t>n)
                w[n] = 0x0A
            used = want
        if used != cap:
            _PyBytes_Resize(&out, used)
        result = <object>out  # a new reference; ours is dropped in finally
    finally:
        Py_XDECREF(out)
    return result


__all__ = [
    "BINARY", "LINE", "DEFAULT_MAX_FRAME", "MAX_FRAME_LIMIT", "BAD_JSON", "TOO_LARGE", "BAD_FRAME",
    "FrameError", "Decoder", "encode", "encode_batch", "frame_bytes",
]
