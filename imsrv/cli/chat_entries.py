"""What `imsrv chat` prints for protocol v1.1: inbox entries with a kind, replies,
mentions, messages in their current state (history, search), group events and the
conversation list.  Like :mod:`.chat_text`, nothing here prints or talks to the server.

One line per entry, in the style of :func:`.chat_text.format_message`
(``HH:MM [conversation] ...``):

* a message: ``16:56 [@bob] bob: hi`` ; a reply ``bob: (reply to alice: "hello") hi`` ;
  a message that mentions me (or everyone) ends with ``(mentions you)`` ; as history
  shows it: ``alice: (edited) new text``, ``alice recalled a message``, reactions at the
  end ``[👍 bob, carol]``;
* a recall entry: ``16:57 [@bob] alice recalled a message`` ("you recalled ...");
* an edit entry: ``16:57 [@bob] alice: (edited) new text``;
* a reaction entry: ``16:57 [@bob] bob reacted 👍 to "hello"`` / ``bob took back 👍
  from "hello"``;
* a group event: ``* alice made bob an admin of crew`` (:func:`group_event_line`).

``lookup(mid)`` (the client's local store) gives the message a reply or reaction is
about, to quote it; without it (or when the message is not kept) it is "message MID".
"""
import re
import time

from .chat_text import conv_label, group_label, hhmm, text_of

QUOTE_CHARS = 40

#: @name words of a text: a user name, or "all"
MENTION = re.compile(r"(?<![\w@])@([a-z0-9_][a-z0-9_.-]{1,31})", re.I)


def who(user, me):
    return "you" if user == me else user


def quote(mid, lookup, me=None):
    """'alice: "hello there"' for a kept message, else 'message 42'."""
    msg = lookup(mid) if lookup is not None and mid is not None else None
    if msg is None:
        return f"message {mid}"
    if msg.get("recalled"):
        return f"{who(msg.get('from'), me)}: a recalled message"
    text = text_of(msg.get("body"))
    if len(text) > QUOTE_CHARS:
        text = text[:QUOTE_CHARS - 3] + "..."
    return f'{who(msg.get("from"), me)}: "{text}"'


def mentions_me(msg, me):
    mentions = msg.get("mentions") or ()
    return msg.get("from") != me and (me in mentions or "all" in mentions)


def message_text(msg, me, lookup=None):
    """The part after ``[conversation] ``: who, and what (a message in its current
    state, or a change entry)."""
    kind = msg.get("kind")
    sender = msg.get("from")
    if kind == "recall" or msg.get("recalled"):
        return f"{who(sender, me)} recalled a message"
    if kind == "reaction":
        body = msg.get("body") if isinstance(msg.get("body"), dict) else {}
        about = quote(msg.get("ref"), lookup, me)
        about = about.split(": ", 1)[1] if ": " in about else about   # the text is enough here
        if body.get("on", True):
            return f"{who(sender, me)} reacted {body.get('emoji')} to {about}"
        return f"{who(sender, me)} took back {body.get('emoji')} from {about}"
    text = text_of(msg.get("body"))
    if kind == "edit" or msg.get("edited"):
        text = "(edited) " + text
    if msg.get("reply_to") is not None:
        text = f"(reply to {quote(msg['reply_to'], lookup, me)}) " + text
    if mentions_me(msg, me):
        text += "  (mentions you)"
    reactions = msg.get("reactions")
    if reactions:
        text += "  [" + "; ".join(f"{e} {', '.join(users)}" for e, users in reactions.items()) + "]"
    return f"{'me' if sender == me else sender}: {text}"


def entry_line(msg, me, names=None, lookup=None):
    """One line for an inbox entry that is not a group event (see the module docstring)."""
    return f"{hhmm(msg.get('ts'))} [{conv_label(msg, me, names)}] {message_text(msg, me, lookup)}"


def find_mentions(text, members):
    """The mentions of a group message: ["all"] if it says @all, else the members it
    names with @name (in order, once each; a name followed by punctuation counts), or
    None."""
    found = []
    for match in MENTION.finditer(text):
        name = match.group(1).lower()
        if name == "all":
            return ["all"]
        while name not in members and name[-1:] in ".-":
            name = name[:-1]
        if name in members and name not in found:
            found.append(name)
    return found or None


# ---------------------------------------------------------------------- group events
#: "for good" in a group mute (the protocol's group_mute takes a time): 9999-12-31
FOREVER_MS = 253402300799000


def until_text(until):
    if until == -1 or (isinstance(until, int) and until >= FOREVER_MS):
        return "until further notice"
    try:
        when = time.localtime(until / 1000.0)
    except (TypeError, ValueError, OverflowError):
        return f"until {until}"
    today = time.localtime()
    fmt = "%H:%M" if when[:3] == today[:3] else "%Y-%m-%d %H:%M"
    return "until " + time.strftime(fmt, when)


def group_event_line(msg, names, me, members_of=None, live=True):
    """A ``group_event`` inbox entry -> a notice (None if it is not one).  ``members_of(gid)``
    -> the other members, for "(with ...)" when I was added.  ``live``: the event just
    happened (not from history): a leave of mine that this client did not do was done on
    another device."""
    if msg.get("kind") != "group_event" or not isinstance(msg.get("body"), dict):
        return None
    body = msg["body"]
    event, user, by = body.get("event"), body.get("user"), body.get("by")
    gid = msg.get("group")
    where = group_label(gid, names)[1:]
    subject, actor = who(user, me), who(by, me)
    others = members_of(gid) if members_of is not None else []
    with_ = f" (with {', '.join(others)})" if others else ""
    if event == "created":
        if by == me:
            return f"* you created group {where}"
        return f"* you were added to group {where}{with_} by {by}"
    if event == "invited":
        if user == me:
            return f"* you were added to group {where}{with_} by {actor}"
        if by == me:
            return f"* you added {user} to {where}"
        return f"* {user} joined {where} (added by {actor})"
    if event == "left" and user == me and live:
        return f"* you are no longer in group {where} (you left it on another device)"
    if event == "updated":
        said = []
        if body.get("name") is not None:
            said.append(f"renamed group {where} to {body['name']}")
        if body.get("notice") is not None:
            said.append(f"set the notice of {body.get('name') or where}: {body['notice']}")
        return f"* {actor} " + ("; ".join(said) or f"updated group {where}")
    if event == "role":
        if body.get("role") == "admin":
            return f"* {actor} made {subject} an admin of {where}"
        return f"* {actor} removed {subject} as admin of {where}"
    if event in ("muted", "unmuted"):
        target = subject if user is not None else "everyone but the owner and admins"
        if event == "unmuted":
            target = subject if user is not None else "everyone"
            return f"* {actor} unmuted {target} in {where}"
        return f"* {actor} muted {target} in {where} {until_text(body.get('until'))}"
    lines = {
        "joined": f"* {subject} joined {where}",
        "left": f"* {subject} left {where}",
        "kicked": f"* {actor} removed {subject} from {where}",
        "transferred": f"* {actor} handed group {where} over to {subject}",
        "dissolved": f"* {actor} dissolved group {where}",
    }
    return lines.get(event, f"* group {where}: {event}")


# ---------------------------------------------------------------------- the conversation list
def conversation_lines(convs, me, names=None, lookup=None, now_ms=None):
    """The lines of ``/convs`` (and of the start screen): one per conversation, most
    recent first: ``  @bob   2 unread  16:56 bob: hi`` (``, mentions you``, ``, muted``)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    labels = [("#" + str((names or {}).get(c["group"]) or c["group"])) if c.get("group") is not None
              else "@" + str(c.get("with")) for c in convs]
    width = max((len(label) for label in labels), default=0)
    lines = []
    for label, conv in zip(labels, convs):
        state = f"{conv.get('unread', 0)} unread"
        if conv.get("mentioned"):
            state += ", mentions you"
        muted = conv.get("muted_until") or 0
        if muted == -1 or muted > now_ms:
            state += ", muted"
        last = conv.get("last")
        if last is None:
            preview = ""
        elif last.get("kind") == "group_event":
            preview = f"{hhmm(last.get('ts'))} " + (group_event_line(last, names, me) or "")[2:]
        else:
            preview = f"{hhmm(last.get('ts'))} {message_text(last, me, lookup)}"
        lines.append(f"  {label.ljust(width)}  {state}  {preview}".rstrip())
    return lines
