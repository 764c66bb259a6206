"""The business core wired together, and the handler of every op of the API and the gateway.

No sockets here: servers decode frames and hand them to :meth:`App.api_request` (API), to
:meth:`App.open_session` (a gateway connection's first frame) and to the dispatcher with
:attr:`App.gateway_ops` (every later gateway frame); they encode what comes back.  What
differs between deployments is given at construction (imsrv.core.interfaces): the send
path, the choice of gateway at login, the limits, the timer of the sessions.
"""
import time

from .. import jsonlib, logs
from ..backends.base import unavailable_errors
from ..protocol.errors import BadRequest, Forbidden, ImError, RateLimited, Unauthorized, Unavailable
from ..protocol.fields import echo_id, one_of, req_id, validate
from ..protocol.schemas import API_SCHEMAS, GATEWAY_SCHEMAS, NO_TOKEN, PROTOCOL_VERSION, SEND_OPS
from .accounts import Accounts, short_hash
from .admin import Admin
from .contacts import Contacts
from .conversations import Conversations
from . import hooks
from .dispatch import OK_FIELDS, REPLY, SEND, ApiCaller, Dispatcher, Op, OpTable, TestHookError, test_hook_ops
from .groups import Groups
from .interfaces import StoreInProcess, no_gateway
from .entries import EDIT, RECALL, REACTION, reaction_body
from .messaging import Messaging, SendRequest, encode_body
from .passwords import token_hash
from .policy import Policy
from .search import Search
from .presence import Presence
from .ratelimit import Limits, LogGate, retry_seconds
from .session import Session

__all__ = ["App", "TestHookError"]


def _api_log_context(caller):
    return {"user": caller.user, "addr": caller.addr}


def _gateway_log_context(session):
    return {"user": session.user, "device": session.device, "addr": session.conn.peer}


class App:
    """``send_path``: a SendPath (None: store in this process); ``choose_gateway``: the
    gateway a login names (None: none); ``limits``: a ratelimit.Limits (None: in-process);
    ``schedule``: the sessions' timer; ``offload(fn, *args)``: runs password hashing off the
    event loop.  See imsrv.core.interfaces."""

    def __init__(self, cfg, store, hub, send_path=None, choose_gateway=None, limits=None, schedule=None,
                 offload=None, monotonic=time.monotonic):
        self.cfg = cfg
        self.store = store
        self.hub = hub
        self.monotonic = monotonic
        self.schedule = schedule
        self.limits = limits if limits is not None else Limits.in_process(cfg.limits)
        self.policy = Policy(store, cfg.policy.require_friends)
        self.accounts = Accounts(store, cfg, offload=offload, monotonic=monotonic,
                                 throttle=self.limits.login_throttle)
        self.presence = Presence(store, hub, self.policy)
        self.contacts = Contacts(store, hub, self.policy, self.presence)
        self.messaging = Messaging(store, hub, self.policy, max_reply_bytes=cfg.limits.max_frame,
                                   recall_window=cfg.messages.recall_window, edit_window=cfg.messages.edit_window)
        # the before_send hook (None: off), asked by check_send and gw_edit (core/hooks.py)
        self.before_send = hooks.before_send_of(cfg, monotonic=monotonic)
        self.send_path = send_path if send_path is not None else StoreInProcess(self.messaging)
        self.forward = self.send_path.forward   # forward([SendRequest]): returns once each has its result
        # after forward: group changes post their group_event entries through it
        self.groups = Groups(store, self.policy, self.forward, max_members=cfg.groups.max_members)
        self.choose_gateway = choose_gateway if choose_gateway is not None else no_gateway
        self.send_limit_log = LogGate(10.0)  # one rate_limited line per user per 10 s
        self.backend_errors = unavailable_errors(store, hub)
        self.dispatcher = Dispatcher(self.accounts.resolve, self.backend_errors, test_hook_ops(cfg))
        # The handlers of protocol v1.1's ops live with their area: ``handlers()`` of each
        # -> {op: fn(who, args)}, ``who`` being the API caller or the gateway session (both
        # have .user).  An op defined both ways (conversations, mark_read, mute) has one
        # handler for the API and the gateway.  The send ops (SEND_OPS) return a SendRequest.
        self.handlers = {}
        self.search = Search(store, self.policy, self.messaging)
        self.conversations = Conversations(store, self.policy, self.messaging, cfg.limits.max_frame)
        # the admin ops (admin_key, no token); the embedded server sets admin.connections
        self.admin = Admin(cfg, store, hub, throttle=self.limits.login_throttle, monotonic=monotonic)
        for area in (self.accounts, self.contacts, self.groups, self.messaging, self.search, self.conversations,
                     self.admin):
            self.handlers.update(area.handlers())
        self.api_ops = OpTable("api", "the API service", _api_log_context)
        for op, schema in API_SCHEMAS.items():
            fn = getattr(self, "api_" + op, None) or self.handlers.get(op)
            if fn is not None:
                self.api_ops[op] = Op(schema, fn, op not in NO_TOKEN, OK_FIELDS)
        self.gateway_ops = OpTable("gateway", "the gateway", _gateway_log_context)
        for op, schema in GATEWAY_SCHEMAS.items():
            if op == "send":
                self.gateway_ops[op] = Op(schema, self.check_send, returns=SEND)
                continue
            fn = getattr(self, "gw_" + op, None) or self.handlers.get(op)
            if fn is not None:
                self.gateway_ops[op] = Op(schema, fn, returns=SEND if op in SEND_OPS else REPLY)

    # ------------------------------------------------------------------ API service
    def api_request(self, frame, addr):
        """Handle one API frame (already a dict) from address ``addr`` -> reply dict.
        Never raises."""
        return self.dispatcher.dispatch(self.api_ops, frame, ApiCaller(addr))

    def api_register(self, caller, args):
        return self.accounts.register(args["user"], args["password"], args.get("name"), caller.addr)

    def api_login(self, caller, args):
        out = self.accounts.login(args["user"], args["password"], args.get("device", "default"), caller.addr)
        out["max_frame"] = self.cfg.limits.max_frame  # so clients learn the frame limit
        out["protocol"] = PROTOCOL_VERSION
        out.update(self.choose_gateway())
        return out

    def api_logout(self, caller, args):
        th = self.accounts.logout(caller.token)
        self.hub.kick_token(th, "logout", user=caller.user)
        logs.info("logout", user=caller.user, addr=caller.addr, th=short_hash(th))
        return {}

    def api_change_password(self, caller, args):
        me, addr = caller.user, caller.addr
        th = token_hash(caller.token)
        revoked = self.accounts.change_password(me, args["password"], args["new_password"], th, addr)
        kicked = self.hub.kick_user(me, "logout", keep_token_hash=th)
        logs.info("password_changed", user=me, addr=addr, th=short_hash(th), tokens_revoked=revoked,
                  sessions_kicked=kicked)
        return {}

    def api_delete_account(self, caller, args):
        me = caller.user
        out = self.accounts.delete_account(me, args["password"], caller.addr,
                                           group_events=self.groups.departure_events(me))
        # the friends will not hear the offline from the sessions' end: no friends by then
        if self.hub.is_online(me):
            for f in out["friends"]:
                self.presence.tell(f, me, "offline")
        kicked = self.hub.kick_user(me, "logout")
        transferred = {g: o for g, o in out["groups"].items() if o}
        logs.info("account_deleted", user=me, addr=caller.addr, tokens_revoked=out["tokens"],
                  sessions_kicked=kicked, friends=len(out["friends"]), groups_passed=len(transferred),
                  groups_emptied=len(out["groups"]) - len(transferred))
        self.groups.account_deleted(out["events"])   # group_event entries; never raises
        return {}

    def api_profile(self, caller, args):
        me = caller.user
        user = args.get("user", me)
        row = self.accounts.require_user(user)
        if user == me or self.policy.may_see_presence(me, user):
            status = self.hub.presence(user)[0]
        else:
            status = "offline"  # presence is for friends only, and cut by blocks
        return {"user": user, "name": row["name"], "status": status, "text": row["text"],
                "avatar": row["avatar"]}

    def api_set_profile(self, caller, args):
        self.accounts.set_profile(caller.user, args.get("name"), args.get("text"), args.get("avatar"))
        return {}

    def api_friend_request(self, caller, args):
        return self.contacts.request(caller.user, args["to"], args.get("message"))

    def api_friend_requests(self, caller, args):
        return self.contacts.list_requests(caller.user)

    def api_friend_accept(self, caller, args):
        return self.contacts.accept(caller.user, args["user"])

    def api_friend_reject(self, caller, args):
        return self.contacts.reject(caller.user, args["user"])

    def api_friend_remove(self, caller, args):
        return self.contacts.remove(caller.user, args["user"])

    def api_friends(self, caller, args):
        return self.contacts.friends(caller.user)

    def api_block(self, caller, args):
        return self.contacts.block(caller.user, args["user"])

    def api_unblock(self, caller, args):
        return self.contacts.unblock(caller.user, args["user"])

    def api_history(self, caller, args):
        one_of(args, "with", "group")
        return self.messaging.history(caller.user, args.get("with"), args.get("group"), args.get("before"),
                                      args.get("limit", 50))

    def api_notify(self, caller, args):
        # the admin ops' check: the same key, the same throttling of wrong ones per address
        self.admin.key.check("notify", caller, args, event="notify_refused")
        req = SendRequest("system", args["body"], encode_body(args["body"]), notify_to=args["to"])
        self.forward([req])
        if isinstance(req.result, ImError):
            logs.info("notify", by="admin_key", addr=caller.addr, recipients=len(args["to"]),
                      result=req.result.code)
            raise req.result
        logs.info("notify", by="admin_key", addr=caller.addr, recipients=len(args["to"]), result="ok")
        return req.result

    # ------------------------------------------------------------------ gateway sessions
    def open_session(self, conn, frame, service="gateway"):
        """The first frame of a gateway connection ``conn``: check it is a valid ``auth``,
        resolve its token, attach a Session to the hub, answer (the reply is the first frame
        on the connection, then what was pushed meanwhile).  -> the Session, or None: the
        client was answered with the error, and the connection closed unless the frame
        was merely malformed (bad_request: the client may try again)."""
        rid = echo_id(frame)
        try:
            rid = req_id(frame)
            if frame.get("op") != "auth":
                raise Unauthorized("the first frame must be auth")
            if frame.get("token") is None:
                # "unauthorized: no valid token", as on the API; like any auth the server
                # does not accept, the connection is closed
                raise Unauthorized("auth needs a token: log in first")
            args = validate(GATEWAY_SCHEMAS["auth"], frame)
        except BadRequest as exc:
            conn.send(exc.reply(rid))
            return None
        except Unauthorized as exc:
            conn.close_with(exc.reply(rid))
            return None
        attached = None
        try:
            user, token_device, th = self.accounts.resolve(args["token"])
            session = Session(conn, user, args.get("device", token_device), th, self.messaging.fetch,
                              self.schedule)
            first = self.hub.attach(session)
            attached = session
            # after attach: anything newer than the head is pushed to us
            head = self.store.head_if_token(user, th)
            if head is None:
                # logout / change_password revoked the token between resolve and attach:
                # its kick went out before this session was in the hub, so refuse it here
                raise Unauthorized("invalid or revoked token")
        except Exception as exc:
            conn.close_with(self.dispatcher.error_reply(exc, service, "auth", rid, addr=conn.peer))
            if attached is not None:  # the route must not outlive this connection
                self.close_session(attached)
            return None
        # max_frame: the SDK learns the frame limit of this server
        reply = {"op": "ok", "user": user, "head": head, "max_frame": self.cfg.limits.max_frame}
        if rid is not None:
            reply["id"] = rid
        conn.send(reply)
        session.start_at(head)  # only now: pushes that came meanwhile follow the reply
        logs.info("online", user=user, device=session.device, generation=session.generation, addr=conn.peer)
        if first:
            try:
                self.presence.changed(user)
            except self.backend_errors as exc:   # the session lives on; friends learn it later
                logs.warning("presence_not_announced", user=user, error=repr(exc))
        return session

    def close_session(self, session):
        """Remove the session from the hub; announce the user offline if it was the last."""
        try:
            if self.hub.detach(session):
                self.presence.changed(session.user)
        except Exception as exc:
            # Redis or the store down: the route stays behind until the gateway's next
            # check of its routes (forget_stale_routes), but the socket must be closed
            # whatever happens here
            logs.warning("detach_failed", user=session.user, device=session.device, error=repr(exc))

    # ------------------------------------------------------------------ gateway ops (after auth)
    def _take_send_token(self, session, op):
        """Charge one request to the user's send bucket (send, recall, edit, react share
        it); RateLimited when it is empty."""
        now = self.monotonic()
        wait = self.limits.send_buckets.take(session.user, now)
        if wait:
            retry = retry_seconds(wait)
            refused = self.send_limit_log.due(session.user, now)
            if refused is not None:
                logs.warning("rate_limited", op=op, user=session.user, device=session.device,
                             retry_after=retry, refused=refused)
            raise RateLimited(f"user {session.user!r} is sending too fast", retry)

    def check_send(self, session, args):
        """The `send` handler: check it and charge the user's send bucket -> SendRequest
        (the gateway hands it to the send path with the other sends of the same read).
        ``mentions`` on a send to a user: bad_request (group sends only)."""
        one_of(args, "to", "group")
        if "mentions" in args and "group" not in args:
            raise BadRequest("field 'mentions': only a send to a group may mention users")
        self._take_send_token(session, "send")
        body, body_json = args["body"], encode_body(args["body"])
        if self.before_send is not None:   # blocks this connection's greenlet up to hooks.timeout
            body, body_json = self._ask_before_send(session, args, hooks.send_fields(session.user, args),
                                                    body, body_json)
        return SendRequest(session.user, body, body_json, to=args.get("to"),
                           group=args.get("group"), cmid=args.get("cmid"), session=session,
                           reply_to=args.get("reply_to"), mentions=args.get("mentions"))

    def _ask_before_send(self, session, args, fields, body, body_json):
        """The before_send hook's answer -> (body, body_json); Forbidden (rejected) or
        Unavailable (failed, fail_open false).  A refusal is no answer for a resend whose
        cmid is stored already: the send path gives it its first ack (idempotent sends)."""
        try:
            return self.before_send.ask(fields, body, body_json)
        except (Forbidden, Unavailable):
            cmid = args.get("cmid")
            if cmid is not None:
                try:
                    stored = self.store.get_dedup(session.user, jsonlib.dumps(cmid).decode("utf-8"))
                except self.backend_errors:
                    stored = None
                if stored is not None:
                    return body, body_json
            raise

    def gw_recall(self, session, args):
        """`recall` -> a SendRequest of kind recall (body null); the rules: core/entries.py."""
        self._take_send_token(session, "recall")
        return SendRequest(session.user, None, "null", cmid=args.get("cmid"), session=session, kind=RECALL,
                           ref=args["mid"])

    def gw_edit(self, session, args):
        """`edit` -> a SendRequest of kind edit carrying the new body."""
        body, body_json = args["body"], encode_body(args["body"])
        self._take_send_token(session, "edit")
        if self.before_send is not None:   # not asked when the send path refuses it anyway
            fields = self.before_send.edit_fields(self.store, session.user, args["mid"], body)
            if fields is not None:
                body, body_json = self._ask_before_send(session, args, fields, body, body_json)
        return SendRequest(session.user, body, body_json, cmid=args.get("cmid"), session=session, kind=EDIT,
                           ref=args["mid"])

    def gw_react(self, session, args):
        """`react` -> a SendRequest of kind reaction, body {"emoji": E, "on": bool}."""
        self._take_send_token(session, "react")
        body = reaction_body(args["emoji"], args.get("on", True))
        return SendRequest(session.user, body, encode_body(body), cmid=args.get("cmid"), session=session,
                           kind=REACTION, ref=args["mid"])

    def gw_auth(self, session, args):
        raise BadRequest("already authenticated on this connection")

    def gw_ping(self, session, args):
        return {"op": "pong"}

    def gw_sync(self, session, args):
        return self.messaging.sync(session.user, args["since"], args.get("limit", 100))

    def gw_presence(self, session, args):
        statuses = {}
        for u in args["users"]:
            if u == session.user:
                statuses[u] = self.hub.presence(u)[0]
                continue
            if not self.policy.may_see_presence(session.user, u):
                raise Forbidden(f"you may not see the presence of {u!r}: not a friend")
            statuses[u] = self.hub.presence(u)[0]
        return {"op": "presence", "statuses": statuses}

    def gw_status(self, session, args):
        session.status = args["status"]
        session.text = args.get("text")
        self.hub.update(session)
        self.presence.changed(session.user)
        return {"op": "ok"}

    def gw_typing(self, session, args):
        to = args["to"]
        self.policy.check_direct(session.user, to)
        if to != session.user:
            self.hub.push(to, {"op": "typing", "from": session.user})
        return None  # no reply: a transient hint

    def gw_read(self, session, args):
        one_of(args, "with", "group")
        self.messaging.read(session.user, session, args.get("with"), args.get("group"), args["seq"])
        return {"op": "ok"}
