"""The JSON backend: one switch for the whole server.

``loads``/``dumps`` here are what every part of imsrv uses for JSON, so a backend change
is one environment variable, not a code change:

``IMSRV_JSON``
    ``orjson`` (default) or ``rapidjson`` (python-rapidjson, an optional extra:
    ``pip install 'imsrv[rapidjson]'``).  Read once, at import time.

API
---
``BACKEND``
    the backend in use, ``"orjson"`` or ``"rapidjson"``.
``loads(data)``
    ``data`` is ``bytes``, ``bytearray``, ``memoryview`` (UTF-8) or ``str``.  Raises
    :data:`JSONDecodeError` on malformed JSON *and* on invalid UTF-8 (a ``ValueError``
    subclass in both backends).
``dumps(obj) -> bytes``
    compact UTF-8 JSON, non-ASCII text left as UTF-8 (not ``\\u`` escaped), never a raw
    newline (control characters inside strings are escaped, as JSON requires), so the
    result can be framed as one line.  Raises ``TypeError`` or ``ValueError`` for
    what cannot be serialised (unknown types, non-``str`` keys, lone surrogates, NaN
    with rapidjson, integers beyond 64 bits with orjson).
``JSONDecodeError``
    the exception class ``loads`` raises on bad input.

The two backends agree on everything the protocol needs (objects, strings incl. non-BMP
text and ``\\u`` escapes, integers up to 64 bits, floats); they differ on corner cases
the protocol does not use (orjson writes NaN as ``null``, rapidjson refuses it;
rapidjson reads and writes integers beyond 64 bits, orjson turns them into floats on
input and refuses them on output).

``raw_loads`` / ``RAW_LOADS_ERRORS`` are for the frame codec's hot path: the fastest
callable that accepts ``bytes`` (no wrapper), and the exception classes it may raise on
bad input.  With orjson they are ``orjson.loads`` and ``(orjson.JSONDecodeError,)``.
"""
import os

_ENV = "IMSRV_JSON"
_requested = os.environ.get(_ENV, "").strip().lower() or "orjson"

if _requested == "orjson":
    import orjson as _orjson

    BACKEND = "orjson"
    JSONDecodeError = _orjson.JSONDecodeError
    # orjson already takes bytes/bytearray/memoryview/str, rejects invalid UTF-8 with
    # JSONDecodeError, and writes compact UTF-8 bytes: no wrapper needed.
    loads = _orjson.loads
    dumps = _orjson.dumps
    raw_loads = _orjson.loads
    RAW_LOADS_ERRORS = (_orjson.JSONDecodeError,)
    VERSION = getattr(_orjson, "__version__", "?")

elif _requested == "rapidjson":
    import rapidjson as _rapidjson

    BACKEND = "rapidjson"
    JSONDecodeError = _rapidjson.JSONDecodeError
    VERSION = getattr(_rapidjson, "__version__", "?")

    # NM_NONE: exact float parsing (NM_NATIVE is faster but loses the last bit of many
    # floats), NaN/Infinity refused like orjson does, big integers kept exact.
    raw_loads = _rapidjson.Decoder(number_mode=_rapidjson.NM_NONE)
    # rapidjson reports invalid UTF-8 as UnicodeDecodeError and deep nesting as
    # RecursionError; both are "bad input" here.
    RAW_LOADS_ERRORS = (_rapidjson.JSONDecodeError, UnicodeError, RecursionError)
    # ensure_ascii=False keeps non-ASCII text as UTF-8; NM_NONE refuses NaN/Infinity
    # (ValueError) and writes big integers exactly.
    _encode = _rapidjson.Encoder(ensure_ascii=False, number_mode=_rapidjson.NM_NONE)

    def loads(data):
        """Parse one JSON document from UTF-8 bytes-like data or a str."""
        if isinstance(data, memoryview):
            data = data.tobytes()
        try:
            return raw_loads(data)
        except (UnicodeError, RecursionError) as exc:
            raise JSONDecodeError(f"invalid input: {exc}") from exc

    def dumps(obj):
        """Serialise ``obj`` to compact UTF-8 JSON bytes."""
        try:
            text = _encode(obj)
        except OverflowError as exc:
            raise ValueError(str(exc)) from exc
        # Lone surrogates raise UnicodeEncodeError (a ValueError) here.
        return text.encode("utf-8")

else:
    raise ImportError(
        f"{_ENV}={os.environ.get(_ENV)!r} is not a known JSON backend; "
        "use 'orjson' (the default) or 'rapidjson'"
    )

__all__ = ["BACKEND", "JSONDecodeError", "loads", "dumps", "raw_loads", "RAW_LOADS_ERRORS", "VERSION"]
