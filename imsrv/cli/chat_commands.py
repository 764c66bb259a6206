"""The slash commands of `imsrv chat`: one table, one small function each (those of
protocol v1.1 are in :mod:`.chat_commands_v11`, registered in the same table).

A command function gets the interactive session ``ui`` (its ``client``, ``say``,
``open``, ``groups`` tracker, ``ask`` / ``ask_secret`` prompts), the words after the
command, and the raw text after the command name.  Server refusals propagate as
ServerError and are shown by the session in people's words; a usage mistake raises
:class:`Usage`.
"""


class Usage(ValueError):
    pass


COMMANDS = {}     # "/name" -> Command
ORDER = []        # for /help


class Command:
    def __init__(self, names, usage, help, fn, min_args=0):
        self.names = names
        self.usage = usage
        self.help = help
        self.fn = fn
        self.min_args = min_args


def command(names, usage, help, min_args=0):
    def register(fn):
        cmd = Command(names.split(), usage, help, fn, min_args)
        for name in cmd.names:
            COMMANDS[name] = cmd
        ORDER.append(cmd)
        return fn
    return register


def run(ui, line):
    """Run one slash command line."""
    name, _, rest = line.partition(" ")
    cmd = COMMANDS.get(name.lower())
    if cmd is None:
        ui.say(f"! unknown command {name}; /help lists them")
        return
    argv = rest.split()
    if len(argv) < cmd.min_args:
        raise Usage(f"usage: {cmd.usage}")
    cmd.fn(ui, argv, rest.strip())


def help_lines():
    """/help: every command, in the order registered, /help and /quit last."""
    last = [c for c in ORDER if c.names[0] in ("/help", "/quit")]
    cmds = [c for c in ORDER if c not in last] + last
    width = max(len(c.usage) for c in cmds)
    return ["commands:"] + [f"  {c.usage.ljust(width)}  {c.help}" for c in cmds]


def _user(text):
    return text.lower().lstrip("@")


def _rest_after(rest, n):
    """The text after the first ``n`` words of ``rest`` (None if there is none)."""
    parts = rest.split(None, n)
    return parts[n] if len(parts) > n else None


# ---------------------------------------------------------------------- contacts
@command("/friends", "/friends", "your friends and their presence")
def friends(ui, argv, rest):
    friends = ui.client.friends()
    if not friends:
        ui.say("* no friends yet: /add USER")
    for friend in friends:
        name = f" ({friend['name']})" if friend.get("name") and friend["name"] != friend["user"] else ""
        ui.say(f"  {friend['user']}{name}  {friend['status']}")


@command("/add", "/add USER [MESSAGE]", "ask USER to be friends", 1)
def add(ui, argv, rest):
    ui.client.friend_request(_user(argv[0]), _rest_after(rest, 1))
    ui.say(f"* friend request sent to {_user(argv[0])}")


@command("/requests", "/requests", "friend requests waiting for you")
def requests(ui, argv, rest):
    reqs = ui.client.friend_requests()
    if not reqs:
        ui.say("* no friend requests")
    for request in reqs:
        msg = f': "{request["message"]}"' if request.get("message") else ""
        ui.say(f"  {request['from']}{msg}")


def _simple(names, usage, help, call, done):
    @command(names, usage, help, 1)
    def fn(ui, argv, rest):
        user = _user(argv[0])
        getattr(ui.client, call)(user)
        ui.say(f"* {done} {user}")
    return fn


_simple("/accept", "/accept USER", "accept a friend request", "friend_accept", "accepted")
_simple("/reject", "/reject USER", "reject a friend request", "friend_reject", "rejected")
_simple("/remove", "/remove USER", "remove a friend", "friend_remove", "removed")
_simple("/block", "/block USER", "block USER (no messages, requests or presence)", "block", "blocked")
_simple("/unblock", "/unblock USER", "unblock USER", "unblock", "unblocked")


# ---------------------------------------------------------------------- conversations
@command("/open", "/open USER", "open the conversation with USER (plain lines go there)", 1)
def open_user(ui, argv, rest):
    from ..client import ServerError
    user = _user(argv[0])
    if user != ui.me:
        try:
            ui.client.profile(user)
        except ServerError as exc:
            if exc.code == "not_found":
                raise Usage(f"there is no user {user}; {ui.still_open()}") from None
            raise
    ui.open(("user", user))


@command("/group", "/group GROUP", "open a group conversation (group id or name)", 1)
def open_group(ui, argv, rest):
    gid = ui.groups.resolve(argv[0])
    if gid is None:
        raise Usage(f"you are not in a group called {argv[0].lstrip('#')} (/groups lists yours); "
                    f"{ui.still_open()}")
    ui.open(("group", gid))


@command("/close", "/close", "close the conversation")
def close(ui, argv, rest):
    ui.conv = None
    ui.set_prompt()


@command("/history", "/history [N]", "scrollback: N (20) earlier messages of the open conversation")
def history(ui, argv, rest):
    try:
        count = int(argv[0]) if argv else 20
    except ValueError:
        raise Usage("usage: /history [N] (N a number)") from None
    ui.history(count)


@command("/msg", "/msg USER TEXT", "send TEXT to USER without opening the conversation", 2)
def msg(ui, argv, rest):
    ui.send_text(_rest_after(rest, 1), conv=("user", _user(argv[0])))


# ---------------------------------------------------------------------- groups
@command("/groups", "/groups", "your groups")
def groups(ui, argv, rest):
    ui.groups.refresh_groups()
    if not ui.groups.names:
        ui.say("* no groups: /newgroup NAME [USER...]")
    for gid, name in ui.groups.names.items():
        ui.say(f"  {name}  (id {gid})")


@command("/members", "/members", "members of the open group")
def members(ui, argv, rest):
    gid = ui.group_open()
    ui.groups.refresh_members(gid)
    ui.say("  " + " ".join(sorted(ui.groups.members.get(gid, ()))))


@command("/newgroup", "/newgroup NAME [USER..]", "create a group", 1)
def newgroup(ui, argv, rest):
    users = [_user(u) for u in argv[1:]]
    with ui.groups.expecting(("created", None, {"name": argv[0]})):
        gid = ui.client.group_create(argv[0], users)
    ui.groups.created(gid, argv[0], users)
    ui.say(f"* created group {argv[0]} (id {gid})")
    ui.open(("group", gid))


@command("/invite", "/invite USER..", "invite people to the open group", 1)
def invite(ui, argv, rest):
    gid = ui.group_open()
    users = [_user(u) for u in argv]
    with ui.groups.expecting(*[("invited", gid, {"user": u}) for u in users]):
        ui.client.group_invite(gid, users)
    ui.groups.invited(gid, users)
    ui.say(f"* invited {', '.join(users)} to {ui.groups.names.get(gid, gid)}")


@command("/leave", "/leave", "leave the open group")
def leave(ui, argv, rest):
    gid = ui.group_open()
    name = ui.groups.names.get(gid, gid)   # before the poller may forget it
    with ui.groups.leaving(gid), ui.groups.expecting(("left", gid, {"user": ui.me})):
        ui.client.group_leave(gid)
    ui.say(f"* you left {name}")
    ui.conv = None
    ui.set_prompt()


# ---------------------------------------------------------------------- you
@command("/status", "/status online|away|busy [TEXT]", "your presence, as your friends see it", 1)
def status(ui, argv, rest):
    text = _rest_after(rest, 1)
    ui.client.set_status(argv[0], text)
    ui.say(f"* status: {argv[0]}" + (f" ({text})" if text else ""))


@command("/who", "/who [USER]", "a profile")
def who(ui, argv, rest):
    profile = ui.client.profile(_user(argv[0]) if argv else None)
    text = f" - {profile['text']}" if profile.get("text") else ""
    ui.say(f"  {profile['user']} ({profile.get('name')}) {profile.get('status')}{text}")


@command("/passwd", "/passwd", "change your password (asks without showing what you type)")
def passwd(ui, argv, rest):
    current = ui.ask_secret("current password: ")
    if not current:
        return ui.say("* cancelled; the password is unchanged")
    new = ui.ask_secret("new password: ")
    if not new:
        return ui.say("* cancelled; the password is unchanged")
    again = ui.ask_secret("new password again: ")
    if again != new:
        return ui.say("! the two new passwords differ; the password is unchanged")
    ui.client.change_password(current, new)
    ui.say("* password changed; your other devices were logged out, this one stays logged in")


@command("/delete-account", "/delete-account", "delete your account for good (asks to confirm)")
def delete_account(ui, argv, rest):
    ui.say(f"* this deletes the account {ui.me} for good: you leave every group and every "
           f"friend list, and nobody can take the name")
    typed = ui.ask(f"type {ui.me} to confirm: ")
    if typed.strip().lower() != ui.me:
        return ui.say("* cancelled; nothing was deleted")
    password = ui.ask_secret("password: ")
    if not password:
        return ui.say("* cancelled; nothing was deleted")
    ui.leaving = True
    try:
        ui.client.delete_account(password)
    except Exception:
        ui.leaving = False
        raise
    ui.say(f"* the account {ui.me} is deleted; goodbye")
    ui.quit = True


@command("/help /?", "/help", "this list")
def help_(ui, argv, rest):
    for ln in help_lines():
        ui.say(ln)


@command("/quit /exit /q", "/quit", "exit (Ctrl-D also)")
def quit_(ui, argv, rest):
    ui.quit = True


from . import chat_commands_v11  # noqa: E402,F401  (registers the v1.1 commands in COMMANDS)
