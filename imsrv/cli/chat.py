"""`imsrv chat`: the terminal client, built on the SDK (imsrv.client).

Interactive (the default)::

    imsrv chat --user alice                 # password: --password-file, $IMSRV_PASSWORD or a prompt
    imsrv chat --user alice --register      # create the account first

then ``/help`` for the commands: friends with presence, friend requests, conversations
and groups, history scrollback, status.  Plain lines go to the open conversation; incoming
messages, typing hints and read receipts show up as they happen.

Scriptable::

    imsrv chat --user alice --password-file pw --send bob "hello"          # prints the ack
    imsrv chat --user alice --password-file pw --send-group team "hi all"
    imsrv chat --user bob --password-file pw --json [--count N] [--timeout S]
        # prints incoming messages as JSON lines until interrupted (or N messages / S seconds)

Exit status: 0 ok, 1 error (refused, unreachable, kicked), 2 usage.
"""
import argparse
import codecs
import getpass
import json
import os
import re
import signal
import sys
import time

DEFAULT_API = "127.0.0.1:7001"
TYPING_EVERY = 3.0      # seconds between typing hints while typing
TYPING_SHOWN_FOR = 3.0  # seconds one "is typing" line stays valid

HELP = """\
commands:
  /friends                 your friends and their presence
  /add USER [MESSAGE]      ask USER to be friends
  /requests                friend requests waiting for you
  /accept USER             accept a friend request      /reject USER   reject it
  /remove USER             remove a friend               /block USER, /unblock USER
  /open USER               open the conversation with USER (plain lines go there)
  /group GROUP             open a group conversation (group id or name)
  /groups                  your groups                   /members    members of the open group
  /newgroup NAME [USER..]  create a group                /invite USER..   invite to the open group
  /leave                   leave the open group
  /history [N]             scrollback: N (20) earlier messages of the open conversation
  /msg USER TEXT           send TEXT to USER without opening the conversation
  /status online|away|busy [TEXT]
  /who [USER]              a profile
  /close                   close the conversation
  /quit                    exit (Ctrl-D also)"""


def add_parser(subparsers):
    p = subparsers.add_parser(
        "chat", help="terminal chat client (interactive, or scriptable with --send / --json)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(fn=cmd_chat)
    return p


def _add_arguments(p):
    p.add_argument("--api", default=os.environ.get("IMSRV_API", DEFAULT_API),
                   help=f"API service host:port (default $IMSRV_API or {DEFAULT_API})")
    p.add_argument("--user", "-u", help="user name (asked for when interactive)")
    p.add_argument("--password-file", metavar="FILE",
                   help="file whose first line is the password (else $IMSRV_PASSWORD, else a prompt)")
    p.add_argument("--device", help="device name (default: chat; chat-send for --send without --listen)")
    p.add_argument("--store", metavar="PATH",
                   help="local store (SQLite file; ':memory:' for none); default "
                        "$IMSRV_CHAT_STORE or ~/.local/share/imsrv/chat-HOST_PORT.db")
    p.add_argument("--register", action="store_true", help="register the user first (name taken is fine)")
    p.add_argument("--name", help="display name for --register")
    p.add_argument("--send", nargs=2, metavar=("USER", "TEXT"), action="append", default=[],
                   help="send TEXT to USER, print the ack, exit (repeatable)")
    p.add_argument("--send-group", nargs=2, metavar=("GROUP", "TEXT"), action="append", default=[],
                   help="send TEXT to GROUP (id or name), print the ack, exit (repeatable)")
    p.add_argument("--listen", action="store_true",
                   help="print incoming messages until interrupted (or --count / --timeout)")
    p.add_argument("--json", action="store_true",
                   help="JSON lines output; without --send it means --listen")
    p.add_argument("--count", type=int, metavar="N", help="listen: stop after N messages")
    p.add_argument("--timeout", type=float, metavar="S", help="listen: stop after S seconds")
    p.add_argument("--events", default="message", metavar="TYPES",
                   help="listen: comma-separated event types to print (message, presence, typing, "
                        "receipt, friend_request, friend_added, state, ...) or 'all' (default: message)")
    p.add_argument("--mode", choices=("binary", "line"), default="binary", help="framing (default binary)")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the server (default 10)")


def default_store_path(api):
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", api)
    return os.path.join(base, "imsrv", f"chat-{safe}.db")


def _err(msg):
    print(f"imsrv chat: {msg}", file=sys.stderr, flush=True)


class _UsageError(Exception):
    pass


def _read_password(args, interactive):
    """--password-file (first line), else $IMSRV_PASSWORD, else a prompt on a terminal."""
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                line = f.readline()
        except OSError as exc:
            raise _UsageError(f"cannot read the password file {args.password_file}: {exc.strerror}") from None
        return line.rstrip("\r\n")
    env = os.environ.get("IMSRV_PASSWORD")
    if env:
        return env
    if interactive and sys.stdin.isatty():
        return getpass.getpass(f"password for {args.user}: ")
    raise _UsageError("no password: use --password-file FILE or set IMSRV_PASSWORD")


def _usage(msg):
    _err(msg)
    return 2


def text_of(body):
    if isinstance(body, dict) and isinstance(body.get("text"), str):
        return body["text"]
    if isinstance(body, str):
        return body
    return json.dumps(body, ensure_ascii=False)


def cmd_chat(args):
    from ..client import Client, ClientError, ServerError

    listen = args.listen or (args.json and not (args.send or args.send_group))
    scripted = bool(args.send or args.send_group or listen)
    if scripted and not args.user:
        return _usage("--user is required with --send, --send-group, --listen and --json")
    if not scripted:
        if not args.user:
            if not sys.stdin.isatty():
                return _usage("--user is required when stdin is not a terminal")
            try:
                args.user = input("user: ").strip()
            except EOFError:
                return 2
    try:
        password = _read_password(args, interactive=not scripted)
    except _UsageError as exc:
        return _usage(str(exc))
    device = args.device or ("chat-send" if scripted and not listen else "chat")
    store = args.store or os.environ.get("IMSRV_CHAT_STORE") or default_store_path(args.api)
    try:
        client = Client(args.api, device=device, store=store, mode=args.mode, timeout=args.connect_timeout)
    except Exception as exc:
        _err(f"cannot open the local store {store}: {exc}")
        return 1
    try:
        if args.register:
            try:
                client.register(args.user, password, args.name)
                if not scripted:
                    print(f"* registered {args.user}", flush=True)
            except ServerError as exc:
                if exc.code != "conflict":
                    raise
        try:
            client.login(args.user, password)
        except ServerError as exc:
            _err(f"login as {args.user} at {args.api} failed: {exc.code}: {exc.message}")
            return 1
        if not scripted:
            return Interactive(client).run()
        rc = 0
        for dest, text in args.send:
            rc = max(rc, _send(client, args, text, to=dest))
        for dest, text in args.send_group:
            gid = resolve_group(client, dest)
            if gid is None:
                _err(f"no group {dest!r} among your groups")
                rc = 1
                continue
            rc = max(rc, _send(client, args, text, group=gid))
        if listen:
            rc = max(rc, _listen(client, args))
        return rc
    except ClientError as exc:
        _err(str(exc))
        return 1
    finally:
        client.close()


def resolve_group(client, name):
    groups = client.groups()
    for g in groups:
        if g["group"] == name:
            return name
    named = [g["group"] for g in groups if g.get("name") == name]
    return named[0] if len(named) == 1 else None


def _send(client, args, text, to=None, group=None):
    from ..client import ServerError
    try:
        ack = client.send(to, {"text": text}, group=group, timeout=args.connect_timeout)
    except ServerError as exc:
        _err(f"send to {to or '#' + group} refused: {exc.code}: {exc.message}")
        return 1
    if args.json:
        out = {"event": "ack"}
        out.update(ack)
        out["to" if to else "group"] = to or group
        print(json.dumps(out, ensure_ascii=False), flush=True)
    else:
        print(f"sent to {to or '#' + group}: mid={ack['mid']} seq={ack['seq']}", flush=True)
    return 0


def _listen(client, args):
    import gevent
    from gevent.event import Event as GEvent
    types = None if args.events == "all" else [t.strip() for t in args.events.split(",") if t.strip()]
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    stop = GEvent()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            gevent.signal_handler(sig, stop.set)
        except Exception:
            pass
    printed = 0
    while True:
        tick = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
        for ev in client.events(types, timeout=tick):
            if args.json:
                print(json.dumps(ev.as_dict(), ensure_ascii=False), flush=True)
            else:
                print(describe(ev, client.user), flush=True)
            if ev.type == "message":
                printed += 1
                if args.count is not None and printed >= args.count:
                    return 0
            if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                return 0
        if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
            return 0
        if client.stopped:
            _err(f"stopped: {client.stop_error()}")
            return 1


def _hhmm(ts):
    try:
        return time.strftime("%H:%M", time.localtime(ts / 1000.0))
    except (TypeError, ValueError, OverflowError):
        return "--:--"


def conv_label(msg, me, group_names=None):
    if msg.get("group") is not None:
        g = msg["group"]
        return "#" + ((group_names or {}).get(g) or g)
    peer = msg.get("to") if msg.get("from") == me else msg.get("from")
    return "@" + str(peer)


def format_message(msg, me, group_names=None):
    sender = "me" if msg.get("from") == me else msg.get("from")
    return f"{_hhmm(msg.get('ts'))} [{conv_label(msg, me, group_names)}] {sender}: {text_of(msg.get('body'))}"


def describe(ev, me, group_names=None):
    """One human-readable line for an event."""
    d = ev.data
    t = ev.type
    if t == "message":
        return format_message(d, me, group_names)
    if t == "typing":
        return f"* {d.get('from')} is typing..."
    if t == "receipt":
        if d.get("group"):
            where = "#" + ((group_names or {}).get(d["group"]) or d["group"])
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
        dest = d.get("to") or "#" + str(d.get("group"))
        return f"! message to {dest} was refused: {d.get('code')}: {d.get('message')}"
    if t == "kicked":
        return f"! the server ended this session: {d.get('reason')}"
    if t == "bye":
        return f"* the server is going away ({d.get('reason')}); back in {d.get('retry_after')}s"
    if t == "state":
        s = d.get("state")
        if s == "online":
            return f"* online as {d.get('user')} (gateway {d.get('gateway')})"
        if s == "reconnecting":
            return f"* reconnecting in {d.get('delay')}s"
        if s == "offline":
            return f"* offline: {d.get('error')}"
        if s == "bye":
            return f"* reconnecting in {d.get('retry_after')}s (the server said bye: {d.get('reason')})"
        if s == "auth_failed":
            return f"! cannot log in: {d.get('error')}"
        return f"* {s}"
    if t == "error":
        return f"! {d.get('code')}: {d.get('message', '')}"
    return f"* {t}: {json.dumps(d, ensure_ascii=False)}"


# ====================================================================== interactive
class Screen:
    """Output that keeps the line being typed at the bottom (on a terminal)."""

    def __init__(self, out, tty):
        self.out = out
        self.tty = tty
        self.prompt = "> "
        self.buf = ""

    def line(self, text):
        if self.tty:
            self.out.write("\r\x1b[K" + text + "\n" + self.prompt + self.buf)
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def redraw(self):
        if self.tty:
            self.out.write("\r\x1b[K" + self.prompt + self.buf)
            self.out.flush()


class Interactive:
    def __init__(self, client, stdin=None, stdout=None):
        self.client = client
        self.me = client.user
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.fd = self.stdin.fileno()
        self.tty = os.isatty(self.fd)
        self.screen = Screen(self.stdout, self.tty)
        self.conv = None            # ("user", name) or ("group", gid)
        self.group_names = {}
        self.oldest_mid = {}        # conv -> oldest mid shown by /history
        self.last_typing_sent = 0.0
        self.quit = False
        self.rc = 0
        self.pending = []

    # ------------------------------------------------------------------ output
    def say(self, text):
        self.screen.line(text)

    def set_prompt(self):
        if self.conv is None:
            self.screen.prompt = f"{self.me}> "
        elif self.conv[0] == "user":
            self.screen.prompt = f"{self.me}@{self.conv[1]}> "
        else:
            self.screen.prompt = f"{self.me}#{self.group_names.get(self.conv[1], self.conv[1])}> "
        self.screen.redraw()

    def on_event(self, ev):
        import gevent
        if ev.type == "state" and ev["state"] in ("connecting", "stopped", "bye", "kicked"):
            return
        if ev.type == "message":
            msg = ev.data
            if msg.get("group") is not None and msg["group"] not in self.group_names:
                self.group_names[msg["group"]] = msg["group"]
            self.say(format_message(msg, self.me, self.group_names))
            if msg.get("from") != self.me and self._in_conv(msg):
                gevent.spawn(self._mark_read, msg)
            return
        self.say(describe(ev, self.me, self.group_names))
        if ev.type == "kicked" or (ev.type == "state" and ev["state"] == "auth_failed"):
            self.rc = 1
            self.quit = True   # the input loop notices within half a second

    def _in_conv(self, msg):
        if self.conv is None:
            return False
        if msg.get("group") is not None:
            return self.conv == ("group", msg["group"])
        return self.conv == ("user", msg.get("from"))

    def _mark_read(self, msg):
        from ..client import ClientError
        try:
            self.client.read(msg)
        except ClientError:
            pass

    # ------------------------------------------------------------------ main loop
    def run(self):
        import gevent
        from ..client import ClientError
        try:
            for g in self.client.groups():
                self.group_names[g["group"]] = g["name"]
        except ClientError:
            pass
        self.say(f"* logged in as {self.me}; /help for commands")
        self.set_prompt()
        self.client.on("*", self.on_event)
        try:
            gevent.signal_handler(signal.SIGINT, self._sigint)
        except Exception:
            pass
        old = None
        if self.tty:
            import termios
            import tty
            old = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        try:
            self._input_loop()
        finally:
            if old is not None:
                import termios
                termios.tcsetattr(self.fd, termios.TCSADRAIN, old)
                self.stdout.write("\n")
                self.stdout.flush()
        self._finish_sends()
        return self.rc

    def _sigint(self):
        self.quit = True

    def _finish_sends(self):
        for h in self.pending:
            try:
                h.get(timeout=5)
            except Exception:
                pass

    def _read_chunk(self):
        from gevent.socket import wait_read
        while not self.quit:
            try:
                wait_read(self.fd, timeout=0.5)
            except Exception:  # timeout: look at self.quit again
                continue
            try:
                return os.read(self.fd, 4096)
            except BlockingIOError:
                continue
            except OSError:
                return b""
        return None

    def _input_loop(self):
        dec = codecs.getincrementaldecoder("utf-8")("replace")
        pending_esc = False
        line_buf = ""
        while not self.quit:
            data = self._read_chunk()
            if not data:
                if line_buf.strip():
                    self.handle_line(line_buf)
                return
            text = dec.decode(data)
            if not self.tty:
                line_buf += text
                while "\n" in line_buf:
                    line, line_buf = line_buf.split("\n", 1)
                    self.handle_line(line.rstrip("\r"))
                    if self.quit:
                        return
                continue
            for ch in text:
                if pending_esc:
                    # skip an escape sequence (arrow keys, ...): ESC [ ... final byte
                    if ch.isalpha() or ch == "~":
                        pending_esc = False
                    continue
                if ch == "\x1b":
                    pending_esc = True
                    continue
                if ch in ("\r", "\n"):
                    line = self.screen.buf
                    self.screen.buf = ""
                    self.screen.redraw()
                    self.handle_line(line)
                    if self.quit:
                        return
                elif ch in ("\x7f", "\x08"):
                    self.screen.buf = self.screen.buf[:-1]
                    self.screen.redraw()
                elif ch == "\x15":  # Ctrl-U
                    self.screen.buf = ""
                    self.screen.redraw()
                elif ch == "\x04":  # Ctrl-D
                    if not self.screen.buf:
                        self.quit = True
                        return
                elif ch == "\x03":
                    self.quit = True
                    return
                elif ch >= " ":
                    self.screen.buf += ch
                    self.stdout.write(ch)
                    self.stdout.flush()
                    self._typing_hint()

    def _typing_hint(self):
        if self.conv is None or self.conv[0] != "user" or self.screen.buf.startswith("/"):
            return
        now = time.monotonic()
        if now - self.last_typing_sent >= TYPING_EVERY:
            self.last_typing_sent = now
            self.client.typing(self.conv[1])

    # ------------------------------------------------------------------ commands
    def handle_line(self, line):
        from ..client import ClientError, ServerError
        line = line.strip()
        if not line:
            return
        try:
            if line.startswith("/"):
                self.command(line)
            else:
                self.send_text(line)
        except ServerError as exc:
            self.say(f"! {exc.code}: {exc.message}")
        except ClientError as exc:
            self.say(f"! {exc}")
        except ValueError as exc:
            self.say(f"! {exc}")

    def send_text(self, text, conv=None):
        conv = conv or self.conv
        if conv is None:
            self.say("! no conversation open: /open USER or /group GROUP (or /msg USER TEXT)")
            return
        kind, key = conv
        if not self.client.online:
            self.say("* offline: the message is queued and sent when the connection is back")
        h = self.client.send(key if kind == "user" else None, {"text": text},
                             group=key if kind == "group" else None, wait=False)
        self.pending = [p for p in self.pending if not p.ready()] + [h]
        self.last_typing_sent = 0.0

    def command(self, line):
        parts = line.split()
        cmd, argv = parts[0].lower(), parts[1:]
        c = self.client

        def need(n, usage):
            if len(argv) < n:
                raise ValueError(f"usage: {usage}")

        if cmd in ("/quit", "/exit", "/q"):
            self.quit = True
        elif cmd in ("/help", "/?"):
            for ln in HELP.splitlines():
                self.say(ln)
        elif cmd == "/friends":
            friends = c.friends()
            if not friends:
                self.say("* no friends yet: /add USER")
            for f in friends:
                name = f" ({f['name']})" if f.get("name") and f["name"] != f["user"] else ""
                self.say(f"  {f['user']}{name}  {f['status']}")
        elif cmd == "/add":
            need(1, "/add USER [MESSAGE]")
            msg = line.split(None, 2)[2] if len(argv) > 1 else None
            c.friend_request(argv[0], msg)
            self.say(f"* friend request sent to {argv[0]}")
        elif cmd == "/requests":
            reqs = c.friend_requests()
            if not reqs:
                self.say("* no friend requests")
            for r in reqs:
                msg = f': "{r["message"]}"' if r.get("message") else ""
                self.say(f"  {r['from']}{msg}")
        elif cmd == "/accept":
            need(1, "/accept USER")
            c.friend_accept(argv[0])
            self.say(f"* accepted {argv[0]}")
        elif cmd == "/reject":
            need(1, "/reject USER")
            c.friend_reject(argv[0])
            self.say(f"* rejected {argv[0]}")
        elif cmd == "/remove":
            need(1, "/remove USER")
            c.friend_remove(argv[0])
            self.say(f"* removed {argv[0]}")
        elif cmd == "/block":
            need(1, "/block USER")
            c.block(argv[0])
            self.say(f"* blocked {argv[0]}")
        elif cmd == "/unblock":
            need(1, "/unblock USER")
            c.unblock(argv[0])
            self.say(f"* unblocked {argv[0]}")
        elif cmd == "/open":
            need(1, "/open USER")
            self.open(("user", argv[0].lower().lstrip("@")))
        elif cmd == "/group":
            need(1, "/group GROUP")
            gid = resolve_group(c, argv[0].lstrip("#"))
            if gid is None:
                raise ValueError(f"no group {argv[0]!r} among your groups (/groups)")
            self.open(("group", gid))
        elif cmd == "/groups":
            groups = c.groups()
            if not groups:
                self.say("* no groups: /newgroup NAME [USER...]")
            for g in groups:
                self.group_names[g["group"]] = g["name"]
                self.say(f"  {g['name']}  (id {g['group']})")
        elif cmd == "/newgroup":
            need(1, "/newgroup NAME [USER...]")
            gid = c.group_create(argv[0], argv[1:])
            self.group_names[gid] = argv[0]
            self.say(f"* created group {argv[0]} (id {gid})")
            self.open(("group", gid))
        elif cmd == "/invite":
            need(1, "/invite USER...")
            gid = self._group_open()
            c.group_invite(gid, argv)
            self.say(f"* invited {', '.join(argv)}")
        elif cmd == "/leave":
            gid = self._group_open()
            c.group_leave(gid)
            self.say(f"* left #{self.group_names.get(gid, gid)}")
            self.conv = None
            self.set_prompt()
        elif cmd == "/members":
            gid = self._group_open()
            self.say("  " + " ".join(c.group_members(gid)))
        elif cmd == "/history":
            n = int(argv[0]) if argv else 20
            self.history(n)
        elif cmd == "/msg":
            need(2, "/msg USER TEXT")
            self.send_text(line.split(None, 2)[2], conv=("user", argv[0].lower()))
        elif cmd == "/status":
            need(1, "/status online|away|busy [TEXT]")
            text = line.split(None, 2)[2] if len(argv) > 1 else None
            c.set_status(argv[0], text)
            self.say(f"* status: {argv[0]}" + (f" ({text})" if text else ""))
        elif cmd == "/who":
            p = c.profile(argv[0] if argv else None)
            text = f" - {p['text']}" if p.get("text") else ""
            self.say(f"  {p['user']} ({p.get('name')}) {p.get('status')}{text}")
        elif cmd == "/close":
            self.conv = None
            self.set_prompt()
        else:
            self.say(f"! unknown command {cmd}; /help lists them")

    def _group_open(self):
        if self.conv is None or self.conv[0] != "group":
            raise ValueError("open a group first: /group GROUP")
        return self.conv[1]

    def open(self, conv):
        self.conv = conv
        self.oldest_mid.pop(conv, None)
        label = "@" + conv[1] if conv[0] == "user" else "#" + self.group_names.get(conv[1], conv[1])
        self.say(f"* conversation {label} (plain lines are sent there; /history for more)")
        self.history(10, quiet_empty=True)
        self.set_prompt()

    def history(self, n, quiet_empty=False):
        if self.conv is None:
            raise ValueError("no conversation open")
        kind, key = self.conv
        before = self.oldest_mid.get(self.conv)
        msgs = self.client.history(user=key if kind == "user" else None,
                                   group=key if kind == "group" else None, before=before, limit=max(1, min(n, 200)))
        if not msgs:
            if not quiet_empty:
                self.say("* no earlier messages")
            return
        self.oldest_mid[self.conv] = msgs[-1]["mid"]
        for m in reversed(msgs):
            self.say("  " + format_message(m, self.me, self.group_names))
        newest = msgs[0]
        if newest.get("from") != self.me and newest.get("seq"):
            import gevent
            gevent.spawn(self._mark_read, newest)


def main(argv=None):
    """`python -m imsrv.cli.chat ...` (the same as `imsrv chat ...`)."""
    parser = argparse.ArgumentParser(prog="imsrv")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["chat"] + list(sys.argv[1:] if argv is None else argv))
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
