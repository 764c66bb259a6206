"""The frame codec (protocol v1 framing): splitting, JSON decoding and encoding of frames.

Two implementations with one API: the Cython module ``imsrv._codec`` (ext/_codec.pyx,
the default) and its pure-Python twin ``imsrv._codec_py``.  This module picks one at
import time and re-exports it:

``IMSRV_PUREPYTHON=1``
    use the pure-Python twin even if the extension is built.
``IMSRV_REQUIRE_EXT=1``
    a missing/unimportable extension is an ``ImportError`` (CI sets this) instead of a
    loud ``RuntimeWarning`` plus a fallback to the twin.
``IMSRV_JSON``
    the JSON backend, ``orjson`` (default) or ``rapidjson``; see :mod:`imsrv.jsonlib`.

``IMPLEMENTATION`` says which codec is in use (``"cython"`` or ``"python"``),
``JSON_BACKEND`` which JSON library.

API (see ``imsrv/_codec_py.py`` for the framing rules)::

    Decoder(max_frame=65536, mode=None)   .feed(data) -> [dict | FrameError, ...]
                                          .mode, .failed, .buffered, .max_frame
    FrameError                            .code, .message, .fatal, .reply()
                                          (defined in imsrv.protocol.errors, with the
                                          codes BAD_JSON, TOO_LARGE, BAD_FRAME)
    encode(obj, mode="binary") -> bytes
    encode_batch(objs, mode="binary") -> bytes
    frame_bytes(payload, mode="binary") -> bytes
    loads, dumps                          (the JSON backend's, from imsrv.jsonlib)
"""
import os
import sys
import warnings

from imsrv import jsonlib
from imsrv.jsonlib import dumps, loads


def _flag(name):
    return os.environ.get(name, "").strip() not in ("", "0")


_BUILD_HINT = (
    "build it with `make install` (or `python setup.py build_ext --inplace` in the source "
    "tree; Cython and a C compiler are needed)"
)

if _flag("IMSRV_PUREPYTHON"):
    from imsrv import _codec_py as _impl

    IMPLEMENTATION = "python"
else:
    try:
        from imsrv import _codec as _impl
    except ImportError as exc:
        if _flag("IMSRV_REQUIRE_EXT"):
            raise ImportError(
                f"IMSRV_REQUIRE_EXT is set but the Cython frame codec imsrv._codec cannot be "
                f"imported ({exc}); {_BUILD_HINT}"
            ) from exc
        _msg = (
            f"imsrv: the Cython frame codec imsrv._codec is not available ({exc}); falling "
            f"back to the pure-Python codec, which is several times slower. To fix: "
            f"{_BUILD_HINT}. Set IMSRV_PUREPYTHON=1 to choose the pure-Python codec "
            f"deliberately (and silence this), or IMSRV_REQUIRE_EXT=1 to make this an error."
        )
        warnings.warn(_msg, RuntimeWarning, stacklevel=2)
        # Warnings can be filtered away; the fallback must stay visible in the logs.
        sys.stderr.write(f"WARNING: {_msg}\n")
        from imsrv import _codec_py as _impl

        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "cython"

JSON_BACKEND = jsonlib.BACKEND

BINARY = _impl.BINARY
LINE = _impl.LINE
DEFAULT_MAX_FRAME = _impl.DEFAULT_MAX_FRAME
MAX_FRAME_LIMIT = _impl.MAX_FRAME_LIMIT
BAD_JSON = _impl.BAD_JSON
TOO_LARGE = _impl.TOO_LARGE
BAD_FRAME = _impl.BAD_FRAME
FrameError = _impl.FrameError
Decoder = _impl.Decoder
encode = _impl.encode
encode_batch = _impl.encode_batch
frame_bytes = _impl.frame_bytes

__all__ = [
    "IMPLEMENTATION", "JSON_BACKEND", "BINARY", "LINE", "DEFAULT_MAX_FRAME", "MAX_FRAME_LIMIT",
    "BAD_JSON", "TOO_LARGE", "BAD_FRAME", "FrameError", "Decoder", "encode", "encode_batch",
    "frame_bytes", "loads", "dumps",
]
