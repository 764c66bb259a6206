"""The admin ops of protocol v1.1 ("Operations"): admin_users, admin_ban, admin_unban,
admin_kick, admin_stats.  API ops (not on the gateway), each authenticated by ``admin_key``
like ``notify``: the server's ``server.admin_key``, compared in constant time; an empty
server key refuses every one (``unauthorized``); wrong keys are throttled per caller
address (``rate_limited``, imsrv/core/adminkey.py, shared with ``notify``).  ``imsrv
admin`` (imsrv/cli/admin.py) calls them.

Contracts (those of the protocol, and what this server decided where it is silent;
docs/PROTOCOL.md section 13 says the same for clients):

- ``admin_users`` {q?, limit?, after?} -> {users: [{user, name, online, devices,
  banned_until, ban_reason?}], more}: live accounts (deleted ones are gone) whose names
  start with ``q`` (a name prefix, lower-cased; absent: everyone), by name, at most
  ``limit`` (1..1000, default 50); ``after``: the last name of the previous page;
  ``devices``: the sorted device names of the user's live sessions, ``online``: there is
  one; ``banned_until``: 0, -1 or ms of the ban in effect, ``ban_reason`` with it.
- ``admin_ban`` {user, until, reason} -> {kicked}: ``until`` -1 (for ever) or a time in
  the future (ms; 0 or a past time: bad_request), ``reason`` 1..256 characters.  The ban
  is stored with the user, every token of the user is revoked (as by logout: no API call,
  no gateway auth with them), every live session gets ``kicked`` reason ``admin``;
  ``kicked`` says how many.  While it is in effect, a login with the right password is
  answered ``unauthorized`` with the reason (core/accounts.py banned_error); it runs out
  at ``until`` by itself.  A ban given again replaces the first.
- ``admin_unban`` {user} -> {}: lifts the ban (none: nothing to do, still ok).
- ``admin_kick`` {user, device?} -> {kicked}: the live sessions of the user (of that
  device only, if given) get ``kicked`` reason ``admin``; the tokens keep working (the
  client may come back: ban to keep someone out).  No session: kicked 0.
- ``admin_stats`` {} -> {users, online_users, connections, messages_last_minute}: live
  accounts; users with a live session; {gateway address: open connections} (embedded: its
  gateway and WebSocket listeners; distributed: each live gateway's last load report);
  messages (every stored entry) whose ts is within the last 60 s
  (Store.count_messages_since: a search of the primary key, nothing on the send path).

An unknown or deleted ``user`` is ``not_found`` (ban, unban, kick).
"""
import re
import time

from .. import logs
from ..protocol.errors import BadRequest, NotFound
from .adminkey import AdminKeyCheck
from .ratelimit import LoginThrottle

MAX_REASON = 256
MINUTE_MS = 60_000
PREFIX_RE = re.compile(r"[a-z0-9_.-]{1,32}")


def now_ms():
    return int(time.time() * 1000)


class Admin:
    """The admin ops.  ``connections()`` -> {gateway address: open connections}, for
    admin_stats: by default the hub's (the Redis hub: the gateways' load reports); the
    embedded server sets its own (its listeners).  ``throttle``: the server's
    LoginThrottle (``Limits.login_throttle``; None: one of this object's own), which
    :attr:`key` (the admin_key check, also ``notify``'s) counts wrong keys in;
    ``monotonic``: its clock."""

    def __init__(self, cfg, store, hub, clock_ms=now_ms, throttle=None, monotonic=time.monotonic):
        self.cfg = cfg
        self.store = store
        self.hub = hub
        self.clock_ms = clock_ms
        self.connections = hub.gateway_connections
        self.key = AdminKeyCheck(cfg, throttle if throttle is not None else LoginThrottle(cfg.limits), monotonic)

    def handlers(self):
        """{op: fn(caller, args)} (see App)."""
        return {"admin_users": self.users, "admin_ban": self.ban, "admin_unban": self.unban,
                "admin_kick": self.kick, "admin_stats": self.stats}

    # ------------------------------------------------------------------ checks
    def check_key(self, op, caller, args):
        """Unauthorized unless ``args["admin_key"]`` is the server's (empty: refused);
        RateLimited while the caller's address is throttled (:class:`AdminKeyCheck`)."""
        self.key.check(op, caller, args)

    def _require_user(self, user):
        row = self.store.get_user(user)
        if row is None or row.get("deleted"):
            raise NotFound(f"no such user {user!r}")
        return row

    # ------------------------------------------------------------------ ops
    def users(self, caller, args):
        self.check_key("admin_users", caller, args)
        prefix = args.get("q", "").lower()
        if prefix and not PREFIX_RE.fullmatch(prefix):
            raise BadRequest(f"field 'q': {args['q'][:40]!r} is not the start of a user name "
                             "(1-32 of a-z 0-9 _ . -)")
        limit = args.get("limit", 50)
        rows = self.store.list_users(prefix, args.get("after"), limit + 1, self.clock_ms())
        more = len(rows) > limit
        rows = rows[:limit]
        devices = self.hub.devices([r["user"] for r in rows]) if rows else {}
        out = []
        for r in rows:
            devs = devices.get(r["user"], [])
            item = {"user": r["user"], "name": r["name"], "online": bool(devs), "devices": devs,
                    "banned_until": r["banned_until"]}
            if r["banned_until"]:
                item["ban_reason"] = r["ban_reason"]
            out.append(item)
        return {"users": out, "more": more}

    def ban(self, caller, args):
        self.check_key("admin_ban", caller, args)
        user, until, reason = args["user"], args["until"], args["reason"]
        now = self.clock_ms()
        if until != -1 and until <= now:
            raise BadRequest(f"field 'until': {until} is not in the future: must be -1 (for ever)"
                             " or a later time in ms since the epoch")
        if not reason.strip() or len(reason) > MAX_REASON:
            raise BadRequest(f"field 'reason': must be 1 to {MAX_REASON} characters, not blank")
        revoked = self.store.ban_user(user, until, reason)
        if revoked is None:
            raise NotFound(f"no such user {user!r}")
        # after the tokens are gone: a session attaching meanwhile finds its token revoked
        # (App.open_session's head_if_token), one attached before is kicked here
        kicked = self.hub.kick_user(user, "admin")
        logs.info("admin_ban", user=user, until=until, reason=reason, tokens_revoked=revoked,
                  sessions_kicked=kicked, addr=caller.addr)
        return {"kicked": kicked}

    def unban(self, caller, args):
        self.check_key("admin_unban", caller, args)
        user = args["user"]
        lifted = self.store.unban_user(user, self.clock_ms())
        if lifted is None:
            raise NotFound(f"no such user {user!r}")
        logs.info("admin_unban", user=user, lifted=lifted, addr=caller.addr)
        return {}

    def kick(self, caller, args):
        self.check_key("admin_kick", caller, args)
        user, device = args["user"], args.get("device")
        self._require_user(user)
        kicked = self.hub.kick_user(user, "admin", device=device)
        logs.info("admin_kick", user=user, device=device or "-", sessions_kicked=kicked, addr=caller.addr)
        return {"kicked": kicked}

    def stats(self, caller, args):
        self.check_key("admin_stats", caller, args)
        return {"users": self.store.count_users(), "online_users": self.hub.online_users(),
                "connections": self.connections(),
                "messages_last_minute": self.store.count_messages_since(self.clock_ms() - MINUTE_MS)}
