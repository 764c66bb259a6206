"""`imsrv chat`: the terminal client, built on the SDK (imsrv.client).

Interactive (the default)::

    imsrv chat --user alice                 # password: --password-file, $IMSRV_PASSWORD or a prompt
    imsrv chat --user alice --register      # create the account first

then ``/help`` for the commands: friends with presence, friend requests, conversations
(listed with unread counts at start and by /convs) and groups, history scrollback, recall,
edit, reactions, replies, search, group administration, status.  Plain lines go to the
open conversation (``@name`` in a group mentions a member); incoming messages, changes,
group events, typing hints and read receipts show up as they happen.

Scriptable::

    imsrv chat --user alice --password-file pw --send bob "hello"          # prints the ack
    imsrv chat --user alice --password-file pw --send-group team "hi all"
    imsrv chat --user bob --password-file pw --json [--count N] [--timeout S]
        # prints incoming messages as JSON lines until interrupted (or N messages / S seconds)

Over TLS: ``--tls`` (the server's certificate and host name checked against the system's
CAs) or ``--ca-file imsrv.crt`` (trust that certificate, e.g. the one `imsrv cert` wrote).

The SDK's own log stays off the screen: ``--log FILE`` appends it to FILE (key=value
lines), ``--verbose`` adds debug lines (to stderr without --log).

Exit status: 0 ok, 1 error (refused, unreachable, kicked), 2 usage.

This module reads the options and starts one of the modes: the interactive session
(:mod:`.chat_session`, its line editor :mod:`.chat_editor`, the slash commands
:mod:`.chat_commands`) or the scripted ``--send`` / ``--listen`` (:mod:`.chat_script`).
What is printed for each event is in :mod:`.chat_text` (protocol v1.1 entries, group
events and the conversation list: :mod:`.chat_entries`), the group names and notices in
:mod:`.chat_groups`; the v1.1 commands in :mod:`.chat_commands_v11`.
"""
import argparse
import getpass
import logging
import os
import re
import sys
import time

from .chat_script import listen, print_error, resolve_group, send_and_print
from .chat_session import Interactive
from .chat_text import error_text, sent_failed_text
from .tlsopts import add_tls_options

DEFAULT_API = "127.0.0.1:7001"


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "chat", help="terminal chat client (interactive, or scriptable with --send / --json)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    parser.set_defaults(fn=cmd_chat)
    return parser


def _add_arguments(parser):
    parser.add_argument("--api", default=os.environ.get("IMSRV_API", DEFAULT_API),
                   help=f"API service host:port (default $IMSRV_API or {DEFAULT_API})")
    parser.add_argument("--user", "-u", help="user name (asked for when interactive)")
    parser.add_argument("--password-file", metavar="FILE",
                   help="file whose first line is the password (else $IMSRV_PASSWORD, else a prompt)")
    parser.add_argument("--device", help="device name (default: chat; chat-send for --send without --listen)")
    parser.add_argument("--store", metavar="PATH",
                   help="local store (SQLite file; ':memory:' for none); default "
                        "$IMSRV_CHAT_STORE or ~/.local/share/imsrv/chat-HOST_PORT.db")
    parser.add_argument("--register", action="store_true", help="register the user first (name taken is fine)")
    parser.add_argument("--name", help="display name for --register")
    parser.add_argument("--send", nargs=2, metavar=("USER", "TEXT"), action="append", default=[],
                   help="send TEXT to USER, print the ack, exit (repeatable)")
    parser.add_argument("--send-group", nargs=2, metavar=("GROUP", "TEXT"), action="append", default=[],
                   help="send TEXT to GROUP (id or name), print the ack, exit (repeatable)")
    parser.add_argument("--listen", action="store_true",
                   help="print incoming messages until interrupted (or --count / --timeout)")
    parser.add_argument("--json", action="store_true",
                   help="JSON lines output; without --send it means --listen")
    parser.add_argument("--count", type=int, metavar="N", help="listen: stop after N messages")
    parser.add_argument("--timeout", type=float, metavar="S", help="listen: stop after S seconds")
    parser.add_argument("--events", default="message", metavar="TYPES",
                   help="listen: comma-separated event types to print (message, presence, typing, "
                        "receipt, friend_request, friend_added, state, ...) or 'all' (default: message)")
    parser.add_argument("--mode", choices=("binary", "line", "ws"), default="binary",
                        help="framing (default binary); ws: the gateway's WebSocket port, which login names")
    parser.add_argument("--ws", dest="mode", action="store_const", const="ws", help="the same as --mode ws")
    add_tls_options(parser)
    parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the server (default 10)")
    parser.add_argument("--group-poll", type=float, default=30.0, metavar="S",
                   help="interactive: look for group changes (joins, leaves, new groups) every S "
                        "seconds (default 30; 0: only when a group message arrives)")
    parser.add_argument("--log", metavar="FILE", help="append the SDK's log (key=value lines) to FILE")
    parser.add_argument("--verbose", "-v", action="store_true",
                   help="debug lines in the SDK's log; without --log they go to stderr")


def setup_logging(args):
    """The SDK logs to the ``imsrv.client`` logger; never onto the chat screen unless asked."""
    log = logging.getLogger("imsrv.client")
    log.propagate = False
    for old_handler in list(log.handlers):
        log.removeHandler(old_handler)
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


class _UsageError(Exception):
    pass


def _read_password(args, interactive):
    """--password-file (first line), else $IMSRV_PASSWORD, else a prompt on a terminal."""
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as password_file:
                line = password_file.readline()
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
    print_error(msg)
    return 2


def cmd_chat(args):
    from ..client import Client, ClientError, ServerError
    from ..client.network import tls_context

    listen_mode = args.listen or (args.json and not (args.send or args.send_group))
    scripted = bool(args.send or args.send_group or listen_mode)
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
    device = args.device or ("chat-send" if scripted and not listen_mode else "chat")
    store = args.store or os.environ.get("IMSRV_CHAT_STORE") or default_store_path(args.api)
    try:
        tls = tls_context(args.tls, args.ca_file)
    except OSError as exc:   # unreadable, or no certificate in it (ssl.SSLError is an OSError)
        print_error(f"cannot use the CA file {args.ca_file}: {exc.strerror or exc}")
        return 1
    try:
        client = Client(args.api, device=device, store=store, mode=args.mode, timeout=args.connect_timeout,
                        tls=tls)
    except Exception as exc:
        print_error(f"cannot open the local store {store}: {exc}")
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
        if scripted and not listen_mode:
            # a message an earlier run left queued and that can never be sent is dropped on login
            client.on("send_failed", lambda failed: print_error(sent_failed_text(failed)[2:]
                                                                + " (queued by an earlier run)"))
        try:
            client.login(args.user, password)
        except ServerError as exc:
            print_error(f"login as {args.user} at {args.api} failed: {exc.code}: {exc.message}")
            return 1
        if not scripted:
            return Interactive(client, group_poll=args.group_poll).run()
        rc = 0
        for dest, text in args.send:
            rc = max(rc, send_and_print(client, args, text, to=dest))
        for dest, text in args.send_group:
            gid = resolve_group(client, dest)
            if gid is None:
                print_error(f"no group {dest!r} among your groups")
                rc = 1
                continue
            rc = max(rc, send_and_print(client, args, text, group=gid))
        if listen_mode:
            rc = max(rc, listen(client, args))
        return rc
    except ClientError as exc:
        print_error(error_text(exc)[2:])
        return 1
    finally:
        client.close()


def main(argv=None):
    """`python -m imsrv.cli.chat ...` (the same as `imsrv chat ...`)."""
    parser = argparse.ArgumentParser(prog="imsrv")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["chat"] + list(sys.argv[1:] if argv is None else argv))
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
