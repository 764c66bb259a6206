"""The SDK's log: stdlib ``logging``, logger ``imsrv.client``, one key=value line per event
(``event=send_dropped user=alice device=chat code=too_large ...``), like the server's logs.

A library never prints: with no handler configured the lines go nowhere but Python's
last-resort handler (warnings on stderr), so applications with a screen of their own
(``imsrv chat``) attach a handler or a NullHandler to ``imsrv.client``.
"""
import logging

log = logging.getLogger("imsrv.client")


def kv(level, event, **fields):
    """Log ``event`` with ``fields`` at ``level`` (a logging level number)."""
    if log.isEnabledFor(level):
        log.log(level, "%s", line(event, **fields))


def line(event, **fields):
    return " ".join([f"event={event}"] + [f"{k}={fmt(v)}" for k, v in fields.items()])


def fmt(v):
    s = str(v)
    if not s or any(c in s for c in ' ="\n\t'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s
