"""Error codes of protocol v1 and the exception hierarchy that carries them.

Business code raises :class:`ImError` subclasses; the servers turn them into
``{"op": "error", "id": ..., "code": ..., "message": ...}`` replies.  Only the framing
codes (``bad_frame``, ``too_large``) close a connection.
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


def error_reply(code, message, req_id=None, **extra):
    out = {"op": "error", "code": code, "message": message}
    if req_id is not None:
        out["id"] = req_id
    out.update(extra)
    return out
