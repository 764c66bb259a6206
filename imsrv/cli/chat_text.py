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


#: what a refused outbox request other than a send was (send_failed ``op``)
CHANGE_WORDS = {"recall": "recall", "edit": "edit", "react": "react to"}


def sent_failed_text(data, names=None):
    if data.get("op") in CHANGE_WORDS:
        why = server_reason(data.get("code"), data.get("message"))
        return f"! could not {CHANGE_WORDS[data['op']]} message {data.get('mid')}: {why}"
    dest = data.get("to") or group_label(data.get("group"), names)
    if data.get("code") == "too_large":
        size, limit = data.get("size"), data.get("limit")
        if size and limit:
            why = f"it is too large ({size:,} bytes; the limit is {limit:,})"
        else:
            why = "the server refused it as too large"
    else:
        why = server_reason(data.get("code"), data.get("message"))
    return f"! your message to {dest} was not sent: {why}"


# ---------------------------------------------------------------------- one line per event type
# Each takes the event's data, me (the user logged in) and names ({group id: name}).
def _typing_line(data, me, names):
    return f"* {data.get('from')} is typing..."


def _receipt_line(data, me, names):
    if data.get("group"):
        where = group_label(data["group"], names)
    else:  # the conversation as I see it: with the reader, unless I am the reader
        where = "@" + str(data.get("from") if data.get("with") == me else data.get("with"))
    return f"* {data.get('from')} has read [{where}] up to message {data.get('mid')}"


def _presence_line(data, me, names):
    text = f" ({data['text']})" if data.get("text") else ""
    return f"* {data.get('user')} is now {data.get('status')}{text}"


def _friend_request_line(data, me, names):
    msg = f': "{data["message"]}"' if data.get("message") else ""
    sender = data.get("from")
    return f"* friend request from {sender}{msg} (/accept {sender} or /reject {sender})"


def _friend_added_line(data, me, names):
    return f"* you and {data.get('user')} are now friends"


def _kicked_line(data, me, names):
    reason = data.get("reason")
    return "! " + KICK_REASONS.get(reason, f"the server ended this session ({reason})")


def _bye_line(data, me, names):
    why = BYE_REASONS.get(data.get("reason"), f"the server said goodbye ({data.get('reason')})")
    after = data.get("retry_after")
    return f"* {why}; reconnecting" + (f" in {after}s" if after else "")


def _error_line(data, me, names):
    if data.get("op") == "typing":
        return None   # a refused typing hint: the message itself will say why, if sent
    if data.get("code") == "cursor_ahead":
        return ("* the server has fewer of your messages than this device had seen (a new or "
                "restored server); continuing with what the server has")
    return "! the server reported a problem: " + server_reason(data.get("code"), data.get("message"))


def _message_line(data, me, names):
    from .chat_entries import entry_line, group_event_line   # it builds on this module
    return group_event_line(data, names, me) or entry_line(data, me, names)


#: event type -> its line (None: not shown)
EVENT_LINES = {
    "message": _message_line,
    "typing": _typing_line,
    "receipt": _receipt_line,
    "presence": _presence_line,
    "friend_request": _friend_request_line,
    "friend_added": _friend_added_line,
    "send_failed": lambda data, me, names: sent_failed_text(data, names),
    "kicked": _kicked_line,
    "bye": _bye_line,
    "state": lambda data, me, names: describe_state(data),
    "error": _error_line,
}


def describe(event, me, names=None):
    """One line for an event, or None if the screen does not show it."""
    line_for = EVENT_LINES.get(event.type)
    if line_for is None:
        return f"* {event.type}: {json.dumps(event.data, ensure_ascii=False)}"
    return line_for(event.data, me, names)


def describe_state(data, why=None):
    state = data.get("state")
    if state == "online":
        return f"* online as {data.get('user')} (gateway {data.get('gateway')})"
    if state == "reconnecting":
        delay = data.get("delay")
        delay = f"{delay:.1f}" if isinstance(delay, (int, float)) else delay
        return f"* offline ({why or 'connection lost'}); trying again in {delay}s"
    if state == "auth_failed":
        return f"! cannot log in again: {data.get('error')}"
    if state == "failed":
        return f"! giving up on the connection: the server keeps refusing what this client sends ({data.get('error')})"
    if state in ("offline", "connecting", "bye", "kicked", "stopped"):
        return None   # said by the reconnecting / bye / kicked lines
    return f"* {state}"


def offline_reason(data):
    """The reason of an ``offline`` state event, in a few words."""
    if data.get("code") and data.get("message"):
        return "the server closed the connection: " + server_reason(data["code"], data["message"])
    return str(data.get("error") or "connection lost")


class Narrator:
    """describe() with the memory the connection lines need: one line per retry while
    the server is away ("* offline (why); trying again in 2.1s"), nothing extra after a
    bye (its own line says when)."""

    def __init__(self, me, names=None):
        self.me = me
        self.names = names if names is not None else {}
        self.why = None
        self.after_bye = False

    def line(self, event):
        if event.type == "state":
            state = event.data.get("state")
            if state == "offline":
                self.why = offline_reason(event.data)
                return None
            if state == "bye":
                self.after_bye = True
                return None
            if state == "reconnecting" and self.after_bye:
                self.after_bye = False
                return None
            if state == "online":
                self.after_bye = False
            return describe_state(event.data, self.why)
        return describe(event, self.me, self.names)
