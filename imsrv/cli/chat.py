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

The SDK's own log stays off the screen: ``--log FILE`` appends it to FILE (key=value
lines), ``--verbose`` adds debug lines (to stderr without --log).

Exit status: 0 ok, 1 error (refused, unreachable, kicked), 2 usage.

The commands live in :mod:`.chat_commands`, what is printed for each event in
:mod:`.chat_text`, the group names and join/leave notices in :mod:`.chat_groups`.
"""
import argparse
import codecs
import getpass
import json
import logging
import os
import re
import signal
import sys
import time

from . import chat_commands
from .chat_groups import group_event_line
from .chat_text import Narrator, error_text, format_message, sent_failed_text

DEFAULT_API = "127.0.0.1:7001"
TYPING_EVERY = 3.0      # seconds between typing hints while typing
TYPING_SHOWN_FOR = 3.0  # seconds one "is typing" line stays valid


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
    p.add_argument("--group-poll", type=float, default=30.0, metavar="S",
                   help="interactive: look for group changes (joins, leaves, new groups) every S "
                        "seconds (default 30; 0: only when a group message arrives)")
    p.add_argument("--log", metavar="FILE", help="append the SDK's log (key=value lines) to FILE")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="debug lines in the SDK's log; without --log they go to stderr")


def setup_logging(args):
    """The SDK logs to the ``imsrv.client`` logger; never onto the chat screen unless asked."""
    log = logging.getLogger("imsrv.client")
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
    if args.log:
        try:
            handler = logging.FileHandler(args.log, encoding="utf-8")
        except OSError as exc:
            raise _UsageError(f"cannot open the log file {args.log}: {exc.strerror}") from None
    elif args.verbose:
        handler = logging.StreamHandler(sys.stderr)
    else:
        log.addHandler(logging.NullHandler())
        log.setLevel(logging.CRITICAL + 1)
        return
    fmt = logging.Formatter("ts=%(asctime)s.%(msecs)03dZ level=%(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    fmt.converter = time.gmtime
    handler.setFormatter(fmt)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)


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
        setup_logging(args)
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
        if scripted and not listen:
            # a message an earlier run left queued and that can never be sent is dropped on login
            client.on("send_failed", lambda d: _err(sent_failed_text(d)[2:] + " (queued by an earlier run)"))
        try:
            client.login(args.user, password)
        except ServerError as exc:
            _err(f"login as {args.user} at {args.api} failed: {exc.code}: {exc.message}")
            return 1
        if not scripted:
            return Interactive(client, group_poll=args.group_poll).run()
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
        _err(error_text(exc)[2:])
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
    from ..client import MessageTooLarge, ServerError
    try:
        ack = client.send(to, {"text": text}, group=group, timeout=args.connect_timeout)
    except ServerError as exc:
        _err(f"send to {to or '#' + group} refused: {exc.code}: {exc.message}")
        return 1
    except MessageTooLarge as exc:
        _err(f"not sent to {to or '#' + group}: {exc}")
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
    narrator = Narrator(client.user)
    while True:
        tick = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
        for ev in client.events(types, timeout=tick):
            if args.json:
                print(json.dumps(ev.as_dict(), ensure_ascii=False), flush=True)
            else:
                line = narrator.line(ev)
                if line is not None:
                    print(line, flush=True)
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


# ====================================================================== interactive
class Screen:
    """Output that keeps the line being typed at the bottom (on a terminal)."""

    def __init__(self, out, tty):
        self.out = out
        self.tty = tty
        self.prompt = "> "
        self.buf = ""
        self.secret = False     # a password is being typed: the line is not shown

    def _typed(self):
        return "" if self.secret else self.buf

    def line(self, text):
        if self.tty:
            self.out.write("\r\x1b[K" + text + "\n" + self.prompt + self._typed())
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def enter(self):
        """Enter: what was typed stays on the screen after its prompt (a password does
        not), and a fresh prompt line starts below."""
        if self.tty:
            self.out.write("\r\x1b[K" + self.prompt + self._typed() + "\n")
        self.buf = ""
        self.redraw()

    def redraw(self):
        if self.tty:
            self.out.write("\r\x1b[K" + self.prompt + self._typed())
            self.out.flush()


class Interactive:
    """The interactive session: reads lines (or prompts) from the terminal, shows events
    as they come, runs the slash commands of :mod:`.chat_commands`."""

    def __init__(self, client, stdin=None, stdout=None, group_poll=30.0):
        from .chat_groups import GroupTracker
        self.client = client
        self.me = client.user
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.fd = self.stdin.fileno()
        self.tty = os.isatty(self.fd)
        self.screen = Screen(self.stdout, self.tty)
        self.groups = GroupTracker(client, self.show, poll=group_poll)
        self.narrator = Narrator(self.me, self.groups.names)
        self.conv = None            # ("user", name) or ("group", gid)
        self.oldest_mid = {}        # conv -> oldest mid shown by /history
        self.last_typing_sent = 0.0
        self.quit = False
        self.leaving = False        # the account is being deleted: the kick that follows is expected
        self.rc = 0
        self.pending = []
        self._chars = ""            # typed but not consumed yet (after an Enter in the same read)
        self._dec = codecs.getincrementaldecoder("utf-8")("replace")
        self._esc = False
        self._held = None           # event lines waiting for the running command's output

    # ------------------------------------------------------------------ output
    def say(self, text):
        self.screen.line(text)

    def show(self, text):
        """A line about something that happened (an event, a group notice): while a
        command runs it waits until the command's own lines are out, so the screen
        reads in the same order every time."""
        if self._held is not None:
            self._held.append(text)
        else:
            self.say(text)

    def _release(self):
        held, self._held = self._held, None
        for text in held or ():
            self.say(text)

    def set_prompt(self):
        if self.conv is None:
            self.screen.prompt = f"{self.me}> "
        elif self.conv[0] == "user":
            self.screen.prompt = f"{self.me}@{self.conv[1]}> "
        else:
            self.screen.prompt = f"{self.me}#{self.groups.names.get(self.conv[1], self.conv[1])}> "
        self.screen.redraw()

    def on_event(self, ev):
        import gevent
        if ev.type == "message":
            msg = ev.data
            self.groups.before_message(msg)
            line = group_event_line(msg, self.groups.names, self.me) or \
                format_message(msg, self.me, self.groups.names)
            self.show(line)
            self.groups.after_message(msg)
            if msg.get("from") != self.me and self._in_conv(msg):
                gevent.spawn(self._mark_read, msg)
            return
        if self.leaving and ev.type in ("kicked", "state"):
            return
        line = self.narrator.line(ev)
        if line is not None:
            self.show(line)
        if ev.type == "kicked" or (ev.type == "state" and ev["state"] in ("auth_failed", "failed")):
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
        old = None
        if self.tty:
            # before the first line is shown: TCSANOW keeps what was typed already
            import termios
            import tty
            old = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd, termios.TCSANOW)
        try:
            gevent.signal_handler(signal.SIGINT, self._sigint)
        except Exception:
            pass
        try:
            self.groups.start()
            self.say(f"* logged in as {self.me}; /help for commands")
            self.set_prompt()
            self.client.on("*", self.on_event)
            while not self.quit:
                line = self.read_line()
                if line is None:
                    break
                self.handle_line(line)
        finally:
            self.groups.stop()
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

    # ------------------------------------------------------------------ input
    def read_line(self, secret=False):
        """The next line typed (None at the end of input or on quit).  ``secret``: what
        is typed is not shown (and sends no typing hints)."""
        while not self.quit:
            line = self._take_line(secret)
            if line is not None:
                return line
            data = self._read_chunk()
            if not data:
                rest, self._chars = self._chars, ""
                if not self.tty and rest.strip():
                    return rest
                return None
            self._chars += self._dec.decode(data)
        return None

    def _take_line(self, secret):
        """Consume typed characters up to an Enter -> the line, or None (need more)."""
        if not self.tty:
            if "\n" not in self._chars:
                return None
            line, self._chars = self._chars.split("\n", 1)
            return line.rstrip("\r")
        while self._chars:
            ch, self._chars = self._chars[0], self._chars[1:]
            if self._esc:
                # skip an escape sequence (arrow keys, ...): ESC [ ... final byte
                if ch.isalpha() or ch == "~":
                    self._esc = False
                continue
            if ch == "\x1b":
                self._esc = True
            elif ch in ("\r", "\n"):
                line = self.screen.buf
                self.screen.enter()
                return line
            elif ch in ("\x7f", "\x08"):
                self.screen.buf = self.screen.buf[:-1]
                self.screen.redraw()
            elif ch == "\x15":  # Ctrl-U
                self.screen.buf = ""
                self.screen.redraw()
            elif ch == "\x04":  # Ctrl-D
                if not self.screen.buf:
                    self.quit = True
                    return None
            elif ch == "\x03":
                self.quit = True
                return None
            elif ch >= " ":
                self.screen.buf += ch
                if not secret:
                    self.stdout.write(ch)
                    self.stdout.flush()
                    self._typing_hint()
        return None

    def ask(self, prompt, secret=False):
        """Ask a question on the prompt line -> the answer ("" if none)."""
        self._release()             # what happened so far shows before the question
        saved = self.screen.prompt
        self.screen.prompt = prompt
        self.screen.secret = secret
        self.screen.redraw()
        try:
            answer = self.read_line(secret=secret)
            self._held = []
        finally:
            self.screen.prompt = saved
            self.screen.secret = False
            self.screen.redraw()
        return answer or ""

    def ask_secret(self, prompt):
        return self.ask(prompt, secret=True)

    def _typing_hint(self):
        if self.conv is None or self.conv[0] != "user" or self.screen.buf.startswith("/"):
            return
        now = time.monotonic()
        if now - self.last_typing_sent >= TYPING_EVERY:
            self.last_typing_sent = now
            self.client.typing(self.conv[1])

    # ------------------------------------------------------------------ commands
    def handle_line(self, line):
        from ..client import ClientError
        line = line.strip()
        if not line:
            return
        self._held = []
        try:
            if line.startswith("/"):
                chat_commands.run(self, line)
            else:
                self.send_text(line)
        except (ClientError, ValueError) as exc:
            self.say(error_text(exc))
        finally:
            self._release()

    def send_text(self, text, conv=None):
        conv = conv or self.conv
        if conv is None:
            self.say("! no conversation open: /open USER or /group GROUP (or /msg USER TEXT)")
            return
        kind, key = conv
        queued = not self.client.online
        h = self.client.send(key if kind == "user" else None, {"text": text},
                             group=key if kind == "group" else None, wait=False)
        if queued:
            self.say("* offline: the message is queued and sent when the connection is back")
        self.pending = [p for p in self.pending if not p.ready()] + [h]
        self.last_typing_sent = 0.0

    def group_open(self):
        if self.conv is None or self.conv[0] != "group":
            raise ValueError("open a group first: /group GROUP")
        return self.conv[1]

    def still_open(self):
        """What stays open after a failed /open or /group (for its message)."""
        if self.conv is None:
            return "no conversation is open"
        kind, key = self.conv
        label = "@" + key if kind == "user" else "#" + self.groups.names.get(key, key)
        return f"plain lines still go to {label}"

    def open(self, conv):
        self.conv = conv
        self.oldest_mid.pop(conv, None)
        label = "@" + conv[1] if conv[0] == "user" else "#" + self.groups.names.get(conv[1], conv[1])
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
            self.say("  " + format_message(m, self.me, self.groups.names))
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
