"""One line per event, greppable, on stderr.

``server.log_format`` picks the line (:func:`configure`):

- ``text`` (the default): key=value, ``ts=... level=info event=login user=alice``; a value
  with a space, ``=``, ``"``, a tab or a newline is double-quoted (``\\``, ``"`` and newlines
  escaped), so a line never breaks;
- ``json``: one JSON object per line with the same keys, ``ts``, ``level`` and ``event``
  first, then the event's fields in order: ints, floats, booleans and None as JSON values,
  anything else as its text; an internal error's traceback is the field ``traceback``
  (its newlines escaped by JSON, so still one line).

Every warning and error line is also counted by (level, event) in :data:`event_counts`
(the ``imsrv_log_events_total`` metric, imsrv/metrics.py), whatever ``log_level`` hides.
"""
import json
import re
import sys
import time
import traceback

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
FORMATS = ("text", "json")
_threshold = LEVELS["info"]
_stream = sys.stderr
_json = False
#: (level, event) -> lines of warning and error level since the process started
event_counts = {}
_COUNTED = LEVELS["warning"]


def configure(level="info", stream=None, fmt=None):
    """``level``: the lowest level written; ``stream``: where lines go (default stderr);
    ``fmt``: "text" or "json" (None: unchanged).  ValueError names a bad value."""
    global _threshold, _stream, _json
    if level not in LEVELS:
        raise ValueError(f"log_level {level!r}: must be one of {', '.join(LEVELS)}")
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"log_format {fmt!r}: must be one of {', '.join(FORMATS)}")
    _threshold = LEVELS[level]
    if stream is not None:
        _stream = stream
    if fmt is not None:
        _json = fmt == "json"


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


_JSON_NATIVE = (str, int, float, bool, type(None))


def _json_line(ts, level, event, fields):
    obj = {"ts": ts, "level": level, "event": event}
    for k, v in fields.items():
        obj[k] = v if type(v) in _JSON_NATIVE else str(v)
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)


def log(level, event, **fields):
    n = LEVELS[level]
    if n >= _COUNTED:
        key = (level, event)
        event_counts[key] = event_counts.get(key, 0) + 1
    if n < _threshold:
        return
    ts = _timestamp(time.time())
    if _json:
        line = _json_line(ts, level, event, fields)
    else:
        parts = ["ts=" + ts, "level=" + level, "event=" + event]
        parts.extend([f"{k}={_fmt(v)}" for k, v in fields.items()])
        line = " ".join(parts)
    try:
        _stream.write(line + "\n")
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
    still one line (text: its newlines are written as ``\\n``; json: the ``traceback``
    field)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip("\n")
    log("error", event, **fields, error=repr(exc), traceback=tb)


class EventStream:
    """A file for a library that writes free text to one (gevent.pywsgi's error log, a
    WSGI app's wsgi.errors): each write that is not blank becomes one warning line
    ``event`` with the text as ``error``, stripped and cut to its last ERROR_TAIL
    characters (a traceback's last line says what went wrong)."""

    ERROR_TAIL = 500

    def __init__(self, event):
        self.event = event

    def write(self, text):
        text = str(text).strip()
        if text:
            warning(self.event, error=text[-self.ERROR_TAIL:])

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        pass
