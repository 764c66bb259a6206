"""Error codes of protocol v1: their one definition, and what carries them.

Business code raises :class:`ImError` subclasses; the core's dispatcher
(imsrv.core.dispatch) turns them into ``{"op": "error", "id": ..., "code": ...,
"message": ...}`` replies.  The frame codec (ext/_codec.pyx and its twin
imsrv/_codec_py.py) returns a :class:`FrameError` for a framing problem, with one of the
framing codes (``bad_json``, ``too_large``, ``bad_frame``).  Only the fatal framing codes
(``bad_frame``, ``too_large``) close a connection.
"""

BAD_FRAME = "bad_frame"
TOO_LARGE = "too_large"
BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
UNKNOWN_OP = "unknown_op"
UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"
NOT_FOUND = "not_found"
CONFLICT = "conflict"
RATE_LIMITED = "rate_limited"
UNAVAILABLE = "unavailable"
INTERNAL = "internal"

ALL_CODES = (
    BAD_FRAME, TOO_LARGE, BAD_JSON, BAD_REQUEST, UNKNOWN_OP, UNAUTHORIZED, FORBIDDEN,
    NOT_FOUND, CONFLICT, RATE_LIMITED, UNAVAILABLE, INTERNAL,
)
FRAMING_CODES = (BAD_JSON, TOO_LARGE, BAD_FRAME)   # what a FrameError carries
FATAL_CODES = frozenset((BAD_FRAME, TOO_LARGE))


class ImError(Exception):
    """An error reply.  ``code`` is one of the protocol codes, ``message`` is for humans."""

    code = INTERNAL

    def __init__(self, message, **extra):
        super().__init__(message)
        self.message = message
        self.extra = extra  # extra reply fields, e.g. retry_after

    def reply(self, req_id=None):
        out = {"op": "error", "code": self.code, "message": self.message}
        if req_id is not None:
            out["id"] = req_id
        out.update(self.extra)
        return out


class BadRequest(ImError):
    code = BAD_REQUEST


class UnknownOp(ImError):
    code = UNKNOWN_OP


class Unauthorized(ImError):
    code = UNAUTHORIZED


class Forbidden(ImError):
    code = FORBIDDEN


class NotFound(ImError):
    code = NOT_FOUND


class Conflict(ImError):
    code = CONFLICT


class RateLimited(ImError):
    code = RATE_LIMITED

    def __init__(self, message, retry_after):
        super().__init__(message, retry_after=retry_after)


class Unavailable(ImError):
    code = UNAVAILABLE


class Internal(ImError):
    code = INTERNAL


class FrameError:
    """A framing problem, returned *in* the item list of a codec Decoder's ``feed`` (not
    raised): the Cython codec and its pure-Python twin both return this class.

    ``code`` is ``BAD_JSON`` (non-fatal: the connection stays usable), ``TOO_LARGE`` or
    ``BAD_FRAME`` (fatal: the decoder is dead, the server answers ``error`` and closes).
    """

    __slots__ = ("code", "message", "fatal")

    def __init__(self, code, message, fatal=False):
        self.code = code
        self.message = message
        self.fatal = fatal

    def __repr__(self):
        return f"FrameError(code={self.code!r}, message={self.message!r}, fatal={self.fatal!r})"

    def __eq__(self, other):
        if not isinstance(other, FrameError):
            return NotImplemented
        return (self.code, self.message, self.fatal) == (other.code, other.message, other.fatal)

    __hash__ = None

    def reply(self):
        """The protocol ``error`` reply for this problem."""
        return {"op": "error", "code": self.code, "message": self.message}


def error_reply(code, message, req_id=None, **extra):
    out = {"op": "error", "code": code, "message": message}
    if req_id is not None:
        out["id"] = req_id
    out.update(extra)
    return out
