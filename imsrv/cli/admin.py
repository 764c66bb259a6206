"""`imsrv admin`: the admin ops of the API (imsrv/core/admin.py), as tables.

    imsrv admin users [--q PREFIX] [--limit N] [--after USER]
    imsrv admin ban USER [--until MS | --for DURATION] --reason TEXT    (neither: for ever)
    imsrv admin unban USER
    imsrv admin kick USER [--device D]
    imsrv admin stats

The API is --api HOST:PORT, else $IMSRV_API, else the configuration's [server] host and
api_port (--config FILE or $IMSRV_CONFIG, then the IMSRV_* variables); the admin key is
the configuration's [server] admin_key, so $IMSRV_ADMIN_KEY (never a command-line flag:
other users of the machine can read those).  Over TLS: --tls (the server's certificate
and host name checked against the system's CAs) or --ca-file FILE (trust that
certificate, e.g. the imsrv.crt of `imsrv cert`; implies --tls).  DURATION: a number and
a unit, s m h d w, several in a row (90m, 1h30m, 7d).  --json prints the server's reply
as it is.  --config, --api, --timeout, --json, --tls and --ca-file may come before or
after the command (imsrv admin --tls stats, imsrv admin stats --tls).

Exit status: 0 done; 1 the server answered an error (its code and message on stderr) or
could not be reached (TLS: a certificate not trusted included); 2 a usage or
configuration error (no admin key, a CA file that cannot be read).
"""
import argparse
import json
import os
import re
import sys
import time

from .. import config
from .tlsopts import add_tls_options

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"(\d+)([smhdw])")


def parse_duration(text):
    """``"1h30m"`` -> seconds; ValueError unless the whole text is number+unit pairs."""
    text = text.strip().lower()
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"duration {text!r}: expected a number and a unit (s, m, h, d, w), e.g. 30m, 1h30m, 7d")
    return sum(int(n) * DURATION_UNITS[u] for n, u in parts)


def format_time(ms):
    """A ban's until: -1 for ever, else the UTC time."""
    if ms == -1:
        return "for ever"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms // 1000))


def table(header, rows):
    """Left-aligned columns, two spaces apart -> the lines."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


# ---------------------------------------------------------------------------- the ops
def op_users(args):
    fields = {}
    if args.q:
        fields["q"] = args.q
    if args.limit is not None:
        fields["limit"] = args.limit
    if args.after:
        fields["after"] = args.after
    return "admin_users", fields


def show_users(reply, args):
    rows = []
    for u in reply["users"]:
        banned = "-"
        if u.get("banned_until"):
            banned = f"{format_time(u['banned_until'])}: {u.get('ban_reason', '')}"
        rows.append((u["user"], u.get("name") or "", "yes" if u["online"] else "no",
                     ",".join(u["devices"]) or "-", banned))
    lines = table(("USER", "NAME", "ONLINE", "DEVICES", "BANNED"), rows)
    lines.append(f"({len(rows)} user{'s' if len(rows) != 1 else ''})")
    if reply.get("more") and rows:
        lines.append(f"more: imsrv admin users --after {rows[-1][0]}"
                     + (f" --q {args.q}" if args.q else ""))
    return lines


def op_ban(args):
    if args.for_ is not None:
        until = int(time.time() * 1000) + parse_duration(args.for_) * 1000
    elif args.until is not None:
        until = args.until
    else:
        until = -1
    return "admin_ban", {"user": args.user, "until": until, "reason": args.reason}


def show_ban(reply, args, fields):
    kicked = reply.get("kicked", 0)
    until = fields["until"]
    when = format_time(until) if until == -1 else "until " + format_time(until)
    return [f"banned {args.user} {when}: {args.reason}"
            f" ({kicked} session{'s' if kicked != 1 else ''} kicked)"]


def op_unban(args):
    return "admin_unban", {"user": args.user}


def show_unban(reply, args, fields):
    return [f"unbanned {args.user}"]


def op_kick(args):
    fields = {"user": args.user}
    if args.device:
        fields["device"] = args.device
    return "admin_kick", fields


def show_kick(reply, args, fields):
    kicked = reply.get("kicked", 0)
    who = f"{args.user} (device {args.device})" if args.device else args.user
    return [f"kicked {kicked} session{'s' if kicked != 1 else ''} of {who}"]


def op_stats(args):
    return "admin_stats", {}


def show_stats(reply, args, fields):
    lines = table(("users", "online_users", "messages_last_minute"),
                  [(reply["users"], reply["online_users"], reply["messages_last_minute"])])
    conns = reply.get("connections") or {}
    lines.append("")
    lines += table(("GATEWAY", "CONNECTIONS"), sorted(conns.items()) or [("-", 0)])
    return lines


COMMANDS = {
    "users": (op_users, lambda reply, args, fields: show_users(reply, args)),
    "ban": (op_ban, show_ban),
    "unban": (op_unban, show_unban),
    "kick": (op_kick, show_kick),
    "stats": (op_stats, show_stats),
}


# ---------------------------------------------------------------------------- entry
def _settings(args):
    """-> (API address, admin key), or an error text."""
    try:
        cfg = config.load(args.config or os.environ.get("IMSRV_CONFIG") or None)
    except (config.ConfigError, ValueError) as exc:
        return None, None, str(exc)
    api = args.api or os.environ.get("IMSRV_API")
    if not api:
        host = cfg.server.host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        api = f"{host}:{cfg.server.api_port}"
    key = cfg.server.admin_key
    if not key:
        return api, None, ("no admin key: set IMSRV_ADMIN_KEY, or [server] admin_key in the file of"
                           " --config / $IMSRV_CONFIG")
    return api, key, None


def cmd_admin(args):
    from ..client.errors import ConnectionLost, Timeout
    from ..client.network import api_call, tls_context

    api, key, problem = _settings(args)
    if problem:
        print(f"imsrv admin: {problem}", file=sys.stderr)
        return 2
    make, show = COMMANDS[args.admin_command]
    try:
        op, fields = make(args)
    except ValueError as exc:
        print(f"imsrv admin: {exc}", file=sys.stderr)
        return 2
    try:
        tls = tls_context(args.tls, args.ca_file)
    except OSError as exc:
        print(f"imsrv admin: cannot use the CA file {args.ca_file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        reply = api_call(api, op, timeout=args.timeout, raw=True, tls=tls, admin_key=key, **fields)
    except (ConnectionLost, Timeout, OSError, ValueError) as exc:
        print(f"imsrv admin: cannot reach the API at {api}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reply, ensure_ascii=False))
    if reply.get("op") != "ok":
        print(f"imsrv admin: {op}: {reply.get('code', 'internal')}: {reply.get('message', '')}",
              file=sys.stderr)
        return 1
    if not args.json:
        for line in show(reply, args, fields):
            print(line)
    return 0


def add_common_options(parser, suppress=False):
    """The options of every command: --config, --api, --timeout, --json, --tls, --ca-file.
    On `imsrv admin` itself with their defaults; again on each command with ``suppress``
    (no defaults: an option given before the command is not reset by the command's)."""
    def default(value):
        return argparse.SUPPRESS if suppress else value
    parser.add_argument("--config", "-c", default=default(None),
                        help="TOML config file (the admin key and the API address)")
    parser.add_argument("--api", metavar="HOST:PORT", default=default(None),
                        help="the API service (default $IMSRV_API, else [server] host and api_port)")
    parser.add_argument("--timeout", type=float, default=default(10.0), metavar="S",
                        help="seconds to wait (default 10)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print the server's reply as JSON")
    add_tls_options(parser, suppress=suppress)


def add_parser(subparsers):
    p = subparsers.add_parser("admin", help="admin ops: users, ban, unban, kick, stats (needs the admin key)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(p)
    sub = p.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")
    commands = []

    def command(name, **kw):
        c = sub.add_parser(name, **kw)
        commands.append(c)
        return c

    u = command("users", help="list users (name, online devices, ban)")
    u.add_argument("--q", metavar="PREFIX", help="only names starting with PREFIX")
    u.add_argument("--limit", type=int, metavar="N", help="at most N users (1..1000, default 50)")
    u.add_argument("--after", metavar="USER", help="the page after USER (the last one listed)")

    b = command("ban", help="ban a user: tokens revoked, sessions kicked, login refused")
    b.add_argument("user", metavar="USER")
    when = b.add_mutually_exclusive_group()
    when.add_argument("--until", type=int, metavar="MS", help="until this time (ms since the epoch)")
    when.add_argument("--for", dest="for_", metavar="DURATION", help="for this long (30m, 1h30m, 7d)")
    b.add_argument("--reason", required=True, help="told to the user when a login is refused")

    n = command("unban", help="lift a user's ban")
    n.add_argument("user", metavar="USER")

    k = command("kick", help="close a user's live sessions (the tokens keep working)")
    k.add_argument("user", metavar="USER")
    k.add_argument("--device", metavar="D", help="only the session of this device")

    command("stats", help="users, online users, connections per gateway, messages in the last minute")
    for c in commands:   # the options of `imsrv admin` after the command too
        add_common_options(c, suppress=True)
    p.set_defaults(fn=cmd_admin)
    return p
