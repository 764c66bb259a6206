"""The slash commands of `imsrv chat` for protocol v1.1, in the table of
:mod:`.chat_commands`: the conversation list, recall / edit / reactions / replies (on the
N-th last message of the open conversation, 1 the last, counted in its history: messages
only, recalled ones left out), search, and the group admin commands of the open group.

Recall, edit, react and reply go through the outbox like a plain line: the entry they make
comes back as a line of the conversation ("alice recalled a message", "me: (edited) ...",
"bob reacted 👍 to ...", "me: (reply to ...) ..."), a refusal as a line of its own.  A
group admin command says what it did; the group_event entry it makes is then not shown
again (:meth:`.chat_groups.GroupTracker.expecting`); the other members see the event.
"""
import time

from .chat_commands import Usage, _rest_after, _user, command
from .chat_entries import FOREVER_MS, until_text

HISTORY_LOOK = 200    # messages of the conversation looked at to count back N


def _number(text):
    try:
        n = int(text)
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def _nth(ui, n, mine, what):
    """The ``n``-th last message (1: the last) of the open conversation, of mine only if
    ``mine``, not recalled -> the history item; Usage if there are fewer."""
    kind, key = ui.conv_open()
    msgs = ui.client.history(user=key if kind == "user" else None, group=key if kind == "group" else None,
                             limit=HISTORY_LOOK)
    msgs = [m for m in msgs if not m.get("kind") and not m.get("recalled")
            and (not mine or m.get("from") == ui.me)]
    if len(msgs) < n:
        whose = " of yours" if mine else ""
        have = f"only {len(msgs)} message{'s' if len(msgs) != 1 else ''}{whose}" if msgs else f"no message{whose}"
        raise Usage(f"there is {have} here to {what}" + (" (N counts back from the last, 1)" if msgs else ""))
    return msgs[n - 1]


# ---------------------------------------------------------------------- conversations
@command("/convs", "/convs [N]", "your conversations, most recent first, with unread counts")
def convs(ui, argv, rest):
    n = _number(argv[0]) if argv else 20
    if n is None:
        raise Usage("usage: /convs [N] (N a number)")
    ui.show_conversations(min(n, 200))


@command("/recall", "/recall [N]", "take back your last message here (or your N-th last)")
def recall(ui, argv, rest):
    n = _number(argv[0]) if argv else 1
    if n is None:
        raise Usage("usage: /recall [N] (N a number: 1 is your last message)")
    msg = _nth(ui, n, True, "recall")
    ui.queue(lambda: ui.client.recall(msg["mid"], wait=False), "the recall")


@command("/edit", "/edit [N] TEXT", "replace the text of your last message here (or your N-th last)", 1)
def edit(ui, argv, rest):
    n = _number(argv[0]) if len(argv) > 1 else None
    text = _rest_after(rest, 1) if n is not None else rest
    msg = _nth(ui, n or 1, True, "edit")
    body = msg.get("body")
    body = dict(body, text=text) if isinstance(body, dict) else {"text": text}
    ui.queue(lambda: ui.client.edit(msg["mid"], body, wait=False), "the edit")


def _react(ui, argv, on):
    n = _number(argv[1]) if len(argv) > 1 else 1
    if n is None:
        raise Usage(f"usage: /{'react' if on else 'unreact'} EMOJI [N] (N a number: 1 is the last message)")
    msg = _nth(ui, n, False, "react to")
    ui.queue(lambda: ui.client.react(msg["mid"], argv[0], on=on, wait=False), "the reaction")


@command("/react", "/react EMOJI [N]", "react to the last message here (or the N-th last)", 1)
def react(ui, argv, rest):
    _react(ui, argv, True)


@command("/unreact", "/unreact EMOJI [N]", "take your reaction back", 1)
def unreact(ui, argv, rest):
    _react(ui, argv, False)


@command("/reply", "/reply N TEXT", "reply to the N-th last message here (1: the last)", 2)
def reply(ui, argv, rest):
    n = _number(argv[0])
    if n is None:
        raise Usage("usage: /reply N TEXT (N a number: 1 is the last message)")
    msg = _nth(ui, n, False, "reply to")
    ui.send_text(_rest_after(rest, 1), reply_to=msg["mid"])


@command("/search", "/search WORDS", "your messages with all these words", 1)
def search(ui, argv, rest):
    msgs = ui.client.search(rest, limit=20)
    if not msgs:
        ui.say(f'* no messages with "{rest}"')
        return
    ui.say(f'* {len(msgs)} message{"s" if len(msgs) != 1 else ""} with "{rest}"'
           + (" (the newest 20)" if len(msgs) == 20 else "") + ":")
    for msg in reversed(msgs):
        ui.say("  " + ui.history_line(msg))


# ---------------------------------------------------------------------- group admin
def _name(ui, gid):
    return ui.groups.label_names().get(gid, gid)


def _change(ui, echo, call, done):
    """A change of the open group: ``call(gid)``, then ``done(name)`` said; the group
    event it makes (``echo``: (event, {field: value})) is not shown again."""
    gid = ui.group_open()
    event, fields = echo
    with ui.groups.expecting((event, gid, fields)):
        call(gid)
    ui.say(done(_name(ui, gid)))
    return gid


def _until(text):
    """MINUTES (or "forever") -> ms since the epoch (FOREVER_MS for forever: the group
    mute of the protocol takes a time, not -1)."""
    if text in ("forever", "-1"):
        return FOREVER_MS
    try:
        minutes = float(text)
    except ValueError:
        minutes = 0
    if minutes <= 0:
        raise Usage("MINUTES must be a number above 0, or forever")
    return int(time.time() * 1000 + minutes * 60000)


@command("/info", "/info", "the open group: name, notice, owner, admins, size, muting")
def info(ui, argv, rest):
    gid = ui.group_open()
    data = ui.client.group_info(gid)
    roles = ui.client.group_roles(gid).get("roles") or {}
    admins = sorted(u for u, role in roles.items() if role == "admin")
    ui.say(f"  {data.get('name')} (id {gid}): {data.get('size')} members (at most {data.get('max_members')}), "
           f"owner {data.get('owner')}" + (f", admins {', '.join(admins)}" if admins else ""))
    if data.get("notice"):
        ui.say(f"  notice: {data['notice']}")
    if data.get("muted_all"):
        ui.say(f"  everyone but the owner and admins is muted {until_text(data['muted_all'])}")
    if data.get("dissolved"):
        ui.say("  dissolved: no more messages")


@command("/notice", "/notice TEXT", "set the notice of the open group (owner, admins)", 1)
def notice(ui, argv, rest):
    _change(ui, ("updated", {"notice": rest}), lambda gid: ui.client.group_update(gid, notice=rest),
            lambda name: f"* you set the notice of {name}: {rest}")


@command("/rename", "/rename NAME", "rename the open group (owner, admins)", 1)
def rename(ui, argv, rest):
    old = _name(ui, ui.group_open())
    gid = _change(ui, ("updated", {"name": rest}), lambda gid: ui.client.group_update(gid, name=rest),
                  lambda name: f"* you renamed group {old} to {rest}")
    ui.groups.names[gid] = rest
    ui.set_prompt()


def _role(names, usage, help, role, done):
    @command(names, usage, help, 1)
    def fn(ui, argv, rest):
        user = _user(argv[0])
        _change(ui, ("role", {"user": user, "role": role}), lambda gid: ui.client.group_set_role(gid, user, role),
                lambda name: done.format(user=user, name=name))
    return fn


_role("/admin", "/admin USER", "make USER an admin of the open group (owner)", "admin",
      "* you made {user} an admin of {name}")
_role("/unadmin", "/unadmin USER", "make admin USER a plain member again (owner)", "member",
      "* you removed {user} as admin of {name}")


@command("/kick", "/kick USER", "remove USER from the open group (owner; admins: members)", 1)
def kick(ui, argv, rest):
    user = _user(argv[0])
    gid = _change(ui, ("kicked", {"user": user}), lambda gid: ui.client.group_kick(gid, user),
                  lambda name: f"* you removed {user} from {name}")
    ui.groups.members.get(gid, set()).discard(user)


@command("/mute", "/mute USER MINUTES", "mute USER in the open group for MINUTES (or forever)", 2)
def mute(ui, argv, rest):
    user, until = _user(argv[0]), _until(argv[1])
    _change(ui, ("muted", {"user": user}), lambda gid: ui.client.group_mute(gid, until, user),
            lambda name: f"* you muted {user} in {name} {until_text(until)}")


@command("/unmute", "/unmute USER", "let USER talk again in the open group", 1)
def unmute(ui, argv, rest):
    user = _user(argv[0])
    _change(ui, ("unmuted", {"user": user}), lambda gid: ui.client.group_unmute(gid, user),
            lambda name: f"* you unmuted {user} in {name}")


@command("/muteall", "/muteall [MINUTES]", "only the owner and admins may talk in the open group")
def muteall(ui, argv, rest):
    until = _until(argv[0]) if argv else FOREVER_MS
    _change(ui, ("muted", {"user": None}), lambda gid: ui.client.group_mute(gid, until),
            lambda name: f"* you muted everyone but the owner and admins in {name} {until_text(until)}")


@command("/unmuteall", "/unmuteall", "everyone may talk again in the open group")
def unmuteall(ui, argv, rest):
    _change(ui, ("unmuted", {"user": None}), lambda gid: ui.client.group_unmute(gid),
            lambda name: f"* you unmuted everyone in {name}")


@command("/transfer", "/transfer USER", "hand the open group over to USER (owner; you become an admin)", 1)
def transfer(ui, argv, rest):
    user = _user(argv[0])
    _change(ui, ("transferred", {"user": user}), lambda gid: ui.client.group_transfer(gid, user),
            lambda name: f"* you handed group {name} over to {user}; you are an admin of it now")


@command("/dissolve", "/dissolve", "end the open group for good (owner; asks to confirm)")
def dissolve(ui, argv, rest):
    name = _name(ui, ui.group_open())
    typed = ui.ask(f"this ends group {name} for everyone; type {name} to confirm: ")
    if typed.strip() != name:
        return ui.say(f"* cancelled; {name} goes on")
    _change(ui, ("dissolved", {}), lambda gid: ui.client.group_dissolve(gid),
            lambda name: f"* you dissolved group {name}; its members keep its history")
