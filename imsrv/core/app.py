"""The business core wired together, and the op tables of the API and the gateway.

No sockets here: servers decode frames, call :meth:`App.api_request` or the gateway
handlers, and encode what comes back.  ``forward`` is how sends reach the forwarder
(in-process queue in embedded mode): it takes a list of SendRequest and returns once each
has its ``result``.
"""
import hmac
import time

from ..protocol import fields as F
from ..protocol.errors import (BadRequest, Forbidden, ImError, Internal, RateLimited, Unauthorized, Unavailable,
                               UnknownOp)
from ..backends.base import StoreError
from .. import logs
from .accounts import Accounts, short_hash
from .contacts import Contacts
from .groups import Groups
from .messaging import Messaging, SendRequest, encode_body
from .policy import Policy
from .presence import Presence
from .passwords import token_hash
from .ratelimit import BucketMap, LogGate, retry_seconds

R, O = True, False  # required, optional


class TestHookError(RuntimeError):
    """Raised by a handler that ``[test] raise_in`` names: a bug on purpose (test suite only;
    see imsrv.config.TEST_HOOKS_ENV)."""

    __test__ = False  # not a pytest test class, whatever its name


def test_hook_ops(cfg):
    """The op names of ``[test] raise_in`` (empty unless IMSRV_TEST_HOOKS=1 let it be set)."""
    test = getattr(cfg, "test", None)
    raw = getattr(test, "raise_in", "") if test is not None else ""
    return frozenset(op.strip() for op in raw.split(",") if op.strip())


def _backend_errors():
    """Exceptions meaning "a backend is down": answered with `unavailable`, not `internal`."""
    errors = [StoreError]
    try:
        import redis.exceptions
        errors.append(redis.exceptions.RedisError)
    except ImportError:
        pass
    return tuple(errors)


BACKEND_ERRORS = _backend_errors()

API_SCHEMAS = {
    "register": {"user": (F.user_name, R), "password": (F.password, R), "name": (F.display_name, O)},
    "login": {"user": (F.user_name, R), "password": (F.given_password, R), "device": (F.device, O)},
    "logout": {},
    "change_password": {"password": (F.given_password, R), "new_password": (F.password, R)},
    "delete_account": {"password": (F.given_password, R)},
    "profile": {"user": (F.user_name, O)},
    "set_profile": {"name": (F.display_name, O), "text": (F.text, O)},
    "friend_request": {"to": (F.user_name, R), "message": (F.text, O)},
    "friend_requests": {},
    "friend_accept": {"user": (F.user_name, R)},
    "friend_reject": {"user": (F.user_name, R)},
    "friend_remove": {"user": (F.user_name, R)},
    "friends": {},
    "block": {"user": (F.user_name, R)},
    "unblock": {"user": (F.user_name, R)},
    "group_create": {"name": (F.group_name, R), "members": (F.user_list, O)},
    "group_invite": {"group": (F.group_id, R), "users": (F.user_list, R)},
    "group_leave": {"group": (F.group_id, R)},
    "group_members": {"group": (F.group_id, R)},
    "groups": {},
    "history": {"with": (F.user_name, O), "group": (F.group_id, O),
                "before": (F.positive_int, O), "limit": (F.limit_up_to(200), O)},
    "notify": {"admin_key": (F.admin_key, R), "to": (F.user_or_list, R), "body": (F.any_json, R)},
}
NO_TOKEN = frozenset(("register", "login", "notify"))

GATEWAY_SCHEMAS = {
    "auth": {"token": (F.token, R), "device": (F.device, O)},
    "ping": {},
    "send": {"to": (F.user_name, O), "group": (F.group_id, O), "body": (F.any_json, R), "cmid": (F.cmid, O)},
    "sync": {"since": (F.non_negative_int, R), "limit": (F.limit_up_to(1000), O)},
    "presence": {"users": (F.user_list, R)},
    "status": {"status": (F.status, R), "text": (F.text, O)},
    "typing": {"to": (F.user_name, R)},
    "read": {"with": (F.user_name, O), "group": (F.group_id, O), "seq": (F.positive_int, R)},
}


class App:
    def __init__(self, cfg, store, hub, forward=None, offload=None, monotonic=time.monotonic):
        self.cfg = cfg
        self.store = store
        self.hub = hub
        self.forward = forward
        self.monotonic = monotonic
        self.policy = Policy(store, cfg.policy.require_friends)
        self.accounts = Accounts(store, cfg, offload=offload, monotonic=monotonic)
        self.presence = Presence(store, hub, self.policy)
        self.contacts = Contacts(store, hub, self.policy, self.presence)
        self.groups = Groups(store, self.policy)
        self.messaging = Messaging(store, hub, self.policy, max_reply_bytes=cfg.limits.max_frame)
        self.send_buckets = BucketMap(cfg.limits.user_send_rate, cfg.limits.user_send_burst)
        self.send_limit_log = LogGate(10.0)  # one rate_limited line per user per 10 s
        self.raise_in = test_hook_ops(cfg)

    def test_hook(self, op):
        """Make the handler of ``op`` fail like a bug would, if ``[test] raise_in`` names it
        (only ever in the test suite: the config refuses [test] without IMSRV_TEST_HOOKS=1)."""
        if op in self.raise_in:
            raise TestHookError(f"test hook: [test] raise_in names op {op!r}")

    # ------------------------------------------------------------------ API service
    def api_request(self, frame, addr):
        """Handle one API frame (already a dict) -> reply dict.  Never raises."""
        rid = F.echo_id(frame)
        op = frame.get("op")
        me = None
        try:
            rid = F.req_id(frame)
            if not isinstance(op, str):
                raise BadRequest("field 'op' is missing or not a string")
            schema = API_SCHEMAS.get(op)
            if schema is None:
                raise UnknownOp(f"unknown op {op[:64]!r} on the API service")
            token = None
            if op not in NO_TOKEN:
                # "unauthorized: no valid token" (the contract's error table): an absent one
                # too, not bad_request; only a token that is not a string is a bad request
                if frame.get("token") is None:
                    raise Unauthorized(f"op {op!r} needs a token: log in first")
                token = F.validate({"token": (F.token, R)}, frame)["token"]
                me, _, _ = self.accounts.resolve(token)
            clean = F.validate(schema, frame)
            self.test_hook(op)
            reply = getattr(self, "api_" + op)(me, clean, addr, token)
            out = {"op": "ok"}
            if rid is not None:
                out["id"] = rid
            out.update(reply)
            return out
        except ImError as exc:
            return exc.reply(rid)
        except BACKEND_ERRORS as exc:
            logs.warning("backend_unavailable", service="api", op=op, id=rid, error=repr(exc))
            return Unavailable(f"a backend is unavailable, retry later ({type(exc).__name__})").reply(rid)
        except Exception as exc:  # a bug: log it with the request id, answer `internal`
            logs.exception("internal_error", exc, service="api", op=op, user=me, id=rid, addr=addr)
            return Internal(f"internal error handling request id={rid}").reply(rid)

    def api_register(self, me, c, addr, token):
        return self.accounts.register(c["user"], c["password"], c.get("name"), addr)

    def api_login(self, me, c, addr, token):
        out = self.accounts.login(c["user"], c["password"], c.get("device", "default"), addr)
        out["max_frame"] = self.cfg.limits.max_frame  # so clients learn the frame limit
        out.update(self.gateway_choice())
        return out

    def gateway_choice(self):
        """Overridden by the server: {"gateway": "host:port", "gateways": [...]}."""
        return {"gateway": None, "gateways": []}

    def api_logout(self, me, c, addr, token):
        th = self.accounts.logout(token)
        self.hub.kick_token(th, "logout", user=me)
        logs.info("logout", user=me, addr=addr, th=short_hash(th))
        return {}

    def api_change_password(self, me, c, addr, token):
        th = token_hash(token)
        revoked = self.accounts.change_password(me, c["password"], c["new_password"], th, addr)
        kicked = self.hub.kick_user(me, "logout", keep_token_hash=th)
        logs.info("password_changed", user=me, addr=addr, th=short_hash(th), tokens_revoked=revoked,
                  sessions_kicked=kicked)
        return {}

    def api_delete_account(self, me, c, addr, token):
        out = self.accounts.delete_account(me, c["password"], addr)
        # the friends will not hear the offline from the sessions' end: no friends by then
        if self.hub.is_online(me):
            for f in out["friends"]:
                self.presence.tell(f, me, "offline")
        kicked = self.hub.kick_user(me, "logout")
        transferred = {g: o for g, o in out["groups"].items() if o}
        logs.info("account_deleted", user=me, addr=addr, tokens_revoked=out["tokens"], sessions_kicked=kicked,
                  friends=len(out["friends"]), groups_passed=len(transferred),
                  groups_emptied=len(out["groups"]) - len(transferred))
        return {}

    def api_profile(self, me, c, addr, token):
        user = c.get("user", me)
        row = self.accounts.require_user(user)
        if user == me or self.policy.may_see_presence(me, user):
            status = self.hub.presence(user)[0]
        else:
            status = "offline"  # presence is for friends only, and cut by blocks
        return {"user": user, "name": row["name"], "status": status, "text": row["text"]}

    def api_set_profile(self, me, c, addr, token):
        self.accounts.set_profile(me, c.get("name"), c.get("text"))
        return {}

    def api_friend_request(self, me, c, addr, token):
        return self.contacts.request(me, c["to"], c.get("message"))

    def api_friend_requests(self, me, c, addr, token):
        return self.contacts.list_requests(me)

    def api_friend_accept(self, me, c, addr, token):
        return self.contacts.accept(me, c["user"])

    def api_friend_reject(self, me, c, addr, token):
        return self.contacts.reject(me, c["user"])

    def api_friend_remove(self, me, c, addr, token):
        return self.contacts.remove(me, c["user"])

    def api_friends(self, me, c, addr, token):
        return self.contacts.friends(me)

    def api_block(self, me, c, addr, token):
        return self.contacts.block(me, c["user"])

    def api_unblock(self, me, c, addr, token):
        return self.contacts.unblock(me, c["user"])

    def api_group_create(self, me, c, addr, token):
        return self.groups.create(me, c["name"], c.get("members"))

    def api_group_invite(self, me, c, addr, token):
        return self.groups.invite(me, c["group"], c["users"])

    def api_group_leave(self, me, c, addr, token):
        return self.groups.leave(me, c["group"])

    def api_group_members(self, me, c, addr, token):
        return self.groups.members(me, c["group"])

    def api_groups(self, me, c, addr, token):
        return self.groups.list(me)

    def api_history(self, me, c, addr, token):
        F.one_of(c, "with", "group")
        return self.messaging.history(me, c.get("with"), c.get("group"), c.get("before"), c.get("limit", 50))

    def api_notify(self, me, c, addr, token):
        key = self.cfg.server.admin_key
        if not key:
            raise Unauthorized("notify is disabled: no admin_key is configured on this server")
        if not hmac.compare_digest(c["admin_key"].encode("utf-8"), key.encode("utf-8")):
            logs.warning("notify_refused", addr=addr, reason="wrong admin_key")
            raise Unauthorized("wrong admin_key")
        req = SendRequest("system", c["body"], encode_body(c["body"]), notify_to=c["to"])
        self.forward([req])
        if isinstance(req.result, ImError):
            logs.info("notify", by="admin_key", addr=addr, recipients=len(c["to"]), result=req.result.code)
            raise req.result
        logs.info("notify", by="admin_key", addr=addr, recipients=len(c["to"]), result="ok")
        return req.result

    # ------------------------------------------------------------------ gateway ops (after auth)
    def check_send(self, session, c):
        """Validate a send and charge the user's send bucket -> SendRequest."""
        F.one_of(c, "to", "group")
        now = self.monotonic()
        wait = self.send_buckets.take(session.user, now)
        if wait:
            retry = retry_seconds(wait)
            refused = self.send_limit_log.due(session.user, now)
            if refused is not None:
                logs.warning("rate_limited", op="send", user=session.user, device=session.device,
                             retry_after=retry, refused=refused)
            raise RateLimited(f"user {session.user!r} is sending too fast", retry)
        return SendRequest(session.user, c["body"], encode_body(c["body"]), to=c.get("to"),
                           group=c.get("group"), cmid=c.get("cmid"), session=session)

    def gw_ping(self, session, c):
        return {"op": "pong"}

    def gw_sync(self, session, c):
        return self.messaging.sync(session.user, c["since"], c.get("limit", 100))

    def gw_presence(self, session, c):
        statuses = {}
        for u in c["users"]:
            if u == session.user:
                statuses[u] = self.hub.presence(u)[0]
                continue
            if not self.policy.may_see_presence(session.user, u):
                raise Forbidden(f"you may not see the presence of {u!r}: not a friend")
            statuses[u] = self.hub.presence(u)[0]
        return {"op": "presence", "statuses": statuses}

    def gw_status(self, session, c):
        session.status = c["status"]
        session.text = c.get("text")
        self.hub.update(session)
        self.presence.changed(session.user)
        return {"op": "ok"}

    def gw_typing(self, session, c):
        to = c["to"]
        self.policy.check_direct(session.user, to)
        if to != session.user:
            self.hub.push(to, {"op": "typing", "from": session.user})
        return None  # no reply: a transient hint

    def gw_read(self, session, c):
        F.one_of(c, "with", "group")
        self.messaging.read(session.user, session, c.get("with"), c.get("group"), c["seq"])
        return {"op": "ok"}
