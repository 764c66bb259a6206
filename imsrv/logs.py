"""One line per event, key=value, greppable: ``ts=... level=info event=login user=alice``."""
import re
import sys
import time
import traceback

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_threshold = LEVELS["info"]
_stream = sys.stderr


def configure(level="info", stream=None):
    global _threshold, _stream
    if level not in LEVELS:
        raise ValueError(f"log_level {level!r}: must be one of {', '.join(LEVELS)}")
    _threshold = LEVELS[level]
    if stream is not None:
        _stream = stream


_NEEDS_QUOTES = re.compile(r'[ ="\n\t]')


def _fmt(v):
    s = v if type(v) is str else str(v)
    if not s or _NEEDS_QUOTES.search(s) is not None:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


_second = [None, ""]   # the last whole second formatted, and its text (one strftime a second)


def _timestamp(t):
    whole = int(t)
    if whole != _second[0]:
        _second[0], _second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int(t * 1000) % 1000:03d}Z"


def log(level, event, **fields):
    if LEVELS[level] < _threshold:
        return
    parts = ["ts=" + _timestamp(time.time()), "level=" + level, "event=" + event]
    parts.extend([f"{k}={_fmt(v)}" for k, v in fields.items()])
    try:
        _stream.write(" ".join(parts) + "\n")
        _stream.flush()
    except (OSError, ValueError):
        pass  # a closed stderr must never take the server down


def debug(event, **kw):
    log("debug", event, **kw)


def info(event, **kw):
    log("info", event, **kw)


def warning(event, **kw):
    log("warning", event, **kw)


def error(event, **kw):
    log("error", event, **kw)


def exception(event, exc, **fields):
    """An error line for an exception nobody expected (a bug: the `internal` code): the
    fields (service, op, user, request id...), ``error=repr(exc)`` and the whole traceback,
    still one line (its newlines are written as ``\\n``)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip("\n")
    log("error", event, **fields, error=repr(exc), traceback=tb)
