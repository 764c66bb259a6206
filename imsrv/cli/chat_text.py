"""What `imsrv chat` prints: one sentence per event or error, in people's words.

Nothing here prints or talks to the server; :func:`describe` turns an SDK event into a
line (or None for events the screen does not show), :func:`error_text` an exception.
Group ids are shown by name when ``names`` ({group id: name}) knows them.
"""
import json
import time

# Why the server ended a session (``kicked`` reason).
KICK_REASONS = {
    "replaced": "you logged in elsewhere with the same device name, so this session has ended",
    "logout": "this session was logged out (your password was changed, or you logged out "
              "on another device); log in again",
    "admin": "an administrator ended this session",
}

# Why the server said bye (``bye`` reason).
BYE_REASONS = {
    "shutdown": "the server is restarting",
    "overloaded": "the server is busy",
    "slow_reader": "this terminal fell behind the server",
    "idle": "the connection was idle for too long",
}

# Server error codes as a person would put them (the server's own message follows).
CODE_WORDS = {
    "bad_request": "the server did not accept that",
    "forbidden": "not allowed",
    "not_found": "not found",
    "conflict": "already done",
    "unauthorized": "not logged in",
    "rate_limited": "too fast",
    "unavailable": "the server is having trouble; try again in a moment",
    "internal": "the server had an internal error",
    "too_large": "too large",
    "unknown_op": "this server does not know that request",
}


def text_of(body):
    if isinstance(body, dict) and isinstance(body.get("text"), str):
        return body["text"]
    if isinstance(body, str):
        return body
    return json.dumps(body, ensure_ascii=False)


def hhmm(ts):
    try:
        return time.strftime("%H:%M", time.localtime(ts / 1000.0))
    except (TypeError, ValueError, OverflowError):
        return "--:--"


def group_label(gid, names=None):
    return "#" + str((names or {}).get(gid) or gid)


def conv_label(msg, me, names=None):
    if msg.get("group") is not None:
        return group_label(msg["group"], names)
    peer = msg.get("to") if msg.get("from") == me else msg.get("from")
    return "@" + str(peer)


def format_message(msg, me, names=None):
    sender = "me" if msg.get("from") == me else msg.get("from")
    return f"{hhmm(msg.get('ts'))} [{conv_label(msg, me, names)}] {sender}: {text_of(msg.get('body'))}"


def server_reason(code, message):
    """"not found: no such user 'bob'" -> a sentence fragment for a server error."""
    message = (message or "").strip()
    if code == "rate_limited":
        return "too fast: " + (message or "the server is limiting requests") + "; wait a moment"
    if message:
        return message
    return CODE_WORDS.get(code, code or "refused")


def error_text(exc):
    """A ClientError (or ValueError from a command) -> the line shown for it."""
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None)
    if message is not None and code is not None:   # ServerError
        return "! " + server_reason(code, message)
    return f"! {exc}"


def sent_failed_text(d, names=None):
    dest = d.get("to") or group_label(d.get("group"), names)
    if d.get("code") == "too_large":
        size, limit = d.get("size"), d.get("limit")
        if size and limit:
            why = f"it is too large ({size:,} bytes; the limit is {limit:,})"
        else:
            why = "the server refused it as too large"
    else:
        why = server_reason(d.get("code"), d.get("message"))
    return f"! your message to {dest} was not sent: {why}"


def describe(ev, me, names=None):
    """One line for an event, or None if the screen does not show it."""
    d = ev.data
    t = ev.type
    if t == "message":
        return format_message(d, me, names)
    if t == "typing":
        return f"* {d.get('from')} is typing..."
    if t == "receipt":
        if d.get("group"):
            where = group_label(d["group"], names)
        else:  # the conversation as I see it: with the reader, unless I am the reader
            where = "@" + str(d.get("from") if d.get("with") == me else d.get("with"))
        return f"* {d.get('from')} has read [{where}] up to message {d.get('mid')}"
    if t == "presence":
        text = f" ({d['text']})" if d.get("text") else ""
        return f"* {d.get('user')} is now {d.get('status')}{text}"
    if t == "friend_request":
        msg = f': "{d["message"]}"' if d.get("message") else ""
        return f"* friend request from {d.get('from')}{msg} (/accept {d.get('from')} or /reject {d.get('from')})"
    if t == "friend_added":
        return f"* you and {d.get('user')} are now friends"
    if t == "send_failed":
        return sent_failed_text(d, names)
    if t == "kicked":
        reason = d.get("reason")
        return "! " + KICK_REASONS.get(reason, f"the server ended this session ({reason})")
    if t == "bye":
        why = BYE_REASONS.get(d.get("reason"), f"the server said goodbye ({d.get('reason')})")
        after = d.get("retry_after")
        return f"* {why}; reconnecting" + (f" in {after}s" if after else "")
    if t == "state":
        return describe_state(d)
    if t == "error":
        if d.get("op") == "typing":
            return None   # a refused typing hint: the message itself will say why, if sent
        if d.get("code") == "cursor_ahead":
            return ("* the server has fewer of your messages than this device had seen (a new or "
                    "restored server); continuing with what the server has")
        return "! the server reported a problem: " + server_reason(d.get("code"), d.get("message"))
    return f"* {t}: {json.dumps(d, ensure_ascii=False)}"


def describe_state(d, why=None):
    s = d.get("state")
    if s == "online":
        return f"* online as {d.get('user')} (gateway {d.get('gateway')})"
    if s == "reconnecting":
        delay = d.get("delay")
        delay = f"{delay:.1f}" if isinstance(delay, (int, float)) else delay
        return f"* offline ({why or 'connection lost'}); trying again in {delay}s"
    if s == "auth_failed":
        return f"! cannot log in again: {d.get('error')}"
    if s == "failed":
        return f"! giving up on the connection: the server keeps refusing what this client sends ({d.get('error')})"
    if s in ("offline", "connecting", "bye", "kicked", "stopped"):
        return None   # said by the reconnecting / bye / kicked lines
    return f"* {s}"


def offline_reason(d):
    """The reason of an ``offline`` state event, in a few words."""
    if d.get("code") and d.get("message"):
        return "the server closed the connection: " + server_reason(d["code"], d["message"])
    return str(d.get("error") or "connection lost")


class Narrator:
    """describe() with the memory the connection lines need: one line per retry while
    the server is away ("* offline (why); trying again in 2.1s"), nothing extra after a
    bye (its own line says when)."""

    def __init__(self, me, names=None):
        self.me = me
        self.names = names if names is not None else {}
        self.why = None
        self.after_bye = False

    def line(self, ev):
        if ev.type == "state":
            s = ev.data.get("state")
            if s == "offline":
                self.why = offline_reason(ev.data)
                return None
            if s == "bye":
                self.after_bye = True
                return None
            if s == "reconnecting" and self.after_bye:
                self.after_bye = False
                return None
            if s == "online":
                self.after_bye = False
            return describe_state(ev.data, self.why)
        return describe(ev, self.me, self.names)
