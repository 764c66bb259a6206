"""Business layer of the client SDK: :class:`Client`.

The delivery rules it keeps (see the package docstring for the user's view):

* Inbox entries (pushed ``msg``\\ s, ``sync`` results, and the acks of our own sends,
  which carry our inbox seq) all go through :meth:`Client._incoming`: anything at or below
  the cursor, or already held, is a duplicate and dropped; the rest is held until it is
  the next seq, then queued for the application in seq order.  A gap that does not close
  by itself (a push lost on the way) triggers a ``sync``.
* One dispatcher greenlet hands queued events to the application (callbacks, iterators)
  and only then moves the cursor in the store, together with the message (one
  transaction).  Nothing is handed out before the application registered a handler or an
  iterator: until then events wait (messages are not lost: the cursor did not move).
* ``send`` writes the message to the outbox (store) with its cmid before it touches the
  network.  The outbox is transmitted in order on every (re)connection, before new sends;
  an ack removes the entry.  The server dedupes by cmid, so a resend is stored once.
  That half of the class lives in :mod:`imsrv.client.outbox` (the ``Outbox`` mixin).
"""
import itertools
import logging
import os
import uuid
from collections import OrderedDict, deque
from functools import partial

import gevent
from gevent.event import AsyncResult, Event as GEvent
from gevent.lock import Semaphore

from . import limits
from .logfmt import kv as logkv, log
from .errors import (ClientClosed, ClientError, ConnectionLost, Kicked, MessageTooLarge, NotConnected,
                     ServerError, Timeout)
from .network import BINARY, FRAME_REFUSED, Backoff, Link, api_call
from .outbox import Outbox
from .store import open_store, BaseStore


DEFAULT_API = "127.0.0.1:7001"
#: event types an application can subscribe to
EVENT_TYPES = ("message", "presence", "typing", "receipt", "friend_request", "friend_added",
               "kicked", "bye", "state", "send_failed", "error")
#: send errors after which the same send is tried again later (nothing was stored)
RETRY_SEND_CODES = limits.RETRY_SEND_CODES


class Event:
    """One thing that happened: ``type`` (see EVENT_TYPES) and ``data`` (a dict: for a
    ``message`` the message itself: seq, mid, from, to or group, body, ts, cmid?)."""

    __slots__ = ("type", "data")

    def __init__(self, type, data):
        self.type = type
        self.data = data

    def __getitem__(self, key):
        return self.data[key]

    def get(self, key, default=None):
        return self.data.get(key, default)

    def as_dict(self):
        """{"event": type, ...data} (what `imsrv chat --json` prints)."""
        out = {"event": self.type}
        out.update(self.data)
        return out

    def __repr__(self):
        return f"Event({self.type!r}, {self.data!r})"


class SendHandle:
    """A send in progress (``send(..., wait=False)``): ``cmid``, ``get(timeout)`` -> ack."""

    def __init__(self, cmid, result):
        self.cmid = cmid
        self._result = result

    def ready(self):
        return self._result.ready()

    def get(self, timeout=None):
        """-> the ack {mid, seq, ts, cmid}; ServerError if the server refused the message;
        Timeout if not acked in time (the message stays in the outbox and is still sent)."""
        try:
            return self._result.get(timeout=timeout)
        except gevent.Timeout:
            raise Timeout(f"send {self.cmid!r} not acked within {timeout}s; it stays in the outbox "
                          f"and is resent until the server acks it") from None

    def __repr__(self):
        return f"<SendHandle {self.cmid!r} {'done' if self.ready() else 'pending'}>"


class _Subscriber:
    """An iterator's end of the dispatcher: one event at a time, handed over and then
    waited for until the consumer comes back for the next one."""

    def __init__(self, types):
        self.types = None if types is None else frozenset([types] if isinstance(types, str) else types)
        self.queue = deque()
        self.wake = GEvent()
        self.done = GEvent()
        self.taken = False
        self.closed = False

    def wants_type(self, type):
        return not self.closed and (self.types is None or type in self.types)

    def wants(self, ev):
        return self.wants_type(ev.type)

    def offer(self, ev):
        self.done.clear()
        self.taken = False
        self.queue.append(ev)
        self.wake.set()


class Client(Outbox):
    """An imsrv client: one user on one device.

    ``api``: "host:port" of the API service (default: $IMSRV_API, else 127.0.0.1:7001).  ``device``: this device's name (one live
    session per (user, device): a second login with the same pair kicks the first).
    ``store``: None (memory), a path (SQLite file, survives restarts) or a store object.
    ``mode``: framing, "binary" or "line".  ``timeout``: seconds for one request.
    ``heartbeat`` / ``heartbeat_timeout``: ping after that many idle seconds, give the
    connection up as dead when the pong is that late.  ``backoff_base`` /
    ``backoff_max``: reconnect delays.  ``keep_password``: remember the password in memory
    to log in again when the token expires (and to ask login for a gateway after ``bye``).
    """

    gap_sync_delay = 0.5

    def __init__(self, api=None, device="default", store=None, *, mode=BINARY,
                 timeout=10.0, heartbeat=30.0, heartbeat_timeout=10.0, backoff_base=0.5,
                 backoff_max=30.0, keep_password=True):
        self.api = api or os.environ.get("IMSRV_API") or DEFAULT_API
        self.device = device
        self._own_store = not isinstance(store, BaseStore)
        self.store = open_store(store)
        self.mode = mode
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.heartbeat_timeout = heartbeat_timeout
        self.backoff = Backoff(backoff_base, backoff_max)
        self.keep_password = keep_password
        self.user = None
        self.token = None
        self.gateway = None
        self.gateways = []
        self.state = "offline"
        self._password = None
        self._link = None
        self._handlers = {}          # type -> [(fn, wants_event)]
        self._subs = []
        self._msgq = deque()         # (n, Event) messages waiting for the application
        self._evq = deque()          # (n, Event) other events waiting for the application
        self._counter = itertools.count()
        self._wake = GEvent()
        self._closed = False
        self._closed_evt = GEvent()
        self._dispatcher = None
        self._held = {}              # seq -> message received out of order
        self._queued = 0             # highest seq queued for the application
        self._outbox = OrderedDict()  # id -> OutboxEntry, not acked yet
        self._waiters = {}           # outbox id -> AsyncResult of the send() call
        self._pump_lock = Semaphore()
        self._pump_timer = None
        self._gap_timer = None
        self._status = None          # (status, text) to re-apply after a reconnect
        self._gw_index = 0
        #: the largest frame the server accepts (its login/auth replies say; else the default)
        self.max_frame = limits.DEFAULT_MAX_FRAME
        self._frame_ok = 0           # the largest send frame the server has acked
        self._learned_max = None     # below the smallest frame it refused without saying why

    def __repr__(self):
        return f"<Client {self.user or '-'}/{self.device} api={self.api} {self.state}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ================================================================== API plumbing
    def _api(self, op, **fields):
        return api_call(self.api, op, mode=self.mode, timeout=self.timeout, **fields)

    def _authed(self, op, **fields):
        self._require_login()
        try:
            return self._api(op, token=self.token, **fields)
        except ServerError as exc:
            if exc.code == "unauthorized" and self._password is not None:
                self._relogin()
                return self._api(op, token=self.token, **fields)
            raise

    def _apply_login(self, reply):
        self.token = reply["token"]
        self.user = reply.get("user", self.user)
        gws = [g for g in (reply.get("gateways") or []) if isinstance(g, str)]
        gw = reply.get("gateway") or (gws[0] if gws else None)
        if not gw:
            raise ClientError(f"login at {self.api} named no gateway: {reply!r}")
        self.gateway = gw
        self.gateways = gws or [gw]
        self._gw_index = 0
        self._learn_max_frame(reply)

    def _learn_max_frame(self, reply):
        announced = limits.frame_limit(reply)
        if announced is not None:
            self.max_frame = announced
        if self._learned_max is not None and self._learned_max < self.max_frame:
            self.max_frame = self._learned_max

    def _relogin(self):
        reply = self._api("login", user=self.user, password=self._password, device=self.device)
        self._apply_login(reply)
        return reply

    def _credentials(self, refresh):
        """Link callback: the token and gateway to use (a fresh login when asked)."""
        if refresh:
            if self._password is not None:
                self._relogin()
            elif len(self.gateways) > 1:
                self._gw_index = (self._gw_index + 1) % len(self.gateways)
                self.gateway = self.gateways[self._gw_index]
        return self.token, self.gateway

    def _require_login(self):
        if self._closed:
            raise ClientClosed("the client is closed")
        if self.token is None or self._link is None:
            raise ClientError("not logged in: call login() first")

    # ================================================================== accounts
    def register(self, user, password, name=None):
        """Create an account (API ``register``) -> {"user": ...}.  Does not log in."""
        fields = {"user": user, "password": password}
        if name is not None:
            fields["name"] = name
        return _strip(self._api("register", **fields))

    def login(self, user, password, device=None, wait=True, timeout=None):
        """Log in through the API, then go online on the gateway that login names.

        Resumes the store of (user, device): its cursor (sync continues after it) and its
        outbox (unacked sends are resent with their cmids).  With ``wait`` (default),
        returns once online; NotConnected if the gateway did not come up in ``timeout``
        (the client keeps trying in the background).  -> the login reply."""
        if self._closed:
            raise ClientClosed("the client is closed")
        if self._link is not None:
            raise ClientError("already logged in; call logout() or close() first")
        if device is not None:
            self.device = device
        reply = self._api("login", user=user, password=password, device=self.device)
        self._apply_login(reply)
        if self.keep_password:
            self._password = password
        self.store.bind(self.user, self.device)
        self._queued = self.store.cursor()
        self._held = {}
        self._outbox = OrderedDict((e.id, e) for e in self.store.outbox())
        self._drop_oversized()       # an older run may have queued what can never be sent
        self._dispatcher = gevent.spawn(self._dispatch_loop)
        self._link = Link(self.device, self._credentials, self._on_online, self._on_push, self._on_state,
                          mode=self.mode, heartbeat=self.heartbeat, heartbeat_timeout=self.heartbeat_timeout,
                          connect_timeout=self.timeout, backoff=self.backoff)
        self._link.start()
        if wait:
            self.wait_online(self.timeout if timeout is None else timeout)
        return _strip(reply)

    def wait_online(self, timeout=None):
        """Block until the gateway connection is up.  NotConnected on timeout (the client
        keeps trying in the background); the link's error (ServerError / Kicked /
        ClientClosed) if it stopped for good."""
        self._require_login()
        if self._link.wait_online(timeout):
            return True
        if self._link.stopped.is_set():
            raise self._stop_error()
        why = self._link.last_error
        raise NotConnected(f"could not get online at gateway {self.gateway} within {timeout}s"
                           + (f" ({why})" if why is not None else ""))

    @property
    def online(self):
        """True while the gateway connection is up."""
        return self._link is not None and self._link.online.is_set()

    @property
    def stopped(self):
        """True once the client gave up for good (kicked, login refused, closed)."""
        return self._closed or (self._link is not None and self._link.stopped.is_set())

    def stop_error(self):
        """The exception that says why the client stopped (Kicked, ServerError, ...)."""
        if self._link is None:
            return ClientClosed("not logged in")
        return self._stop_error()

    def logout(self):
        """End this login: the token stops working, the gateway session ends, and this
        Client is done (make a new one to log in again).  The store keeps the cursor and
        any unacked sends for the next login of this (user, device)."""
        if self.token is not None and self._link is not None and not self._closed:
            try:
                self._api("logout", token=self.token)
            except ServerError as exc:
                if exc.code != "unauthorized":
                    raise
        self._password = None
        self._shutdown(ClientClosed("logged out"))
        self.token = None

    def change_password(self, password, new_password):
        """Change the password (``password`` is the current one).  The server ends every
        other login of the user (their sessions get ``kicked`` ``logout``); this client
        keeps its token and its connection, and remembers the new password for re-logins.
        ServerError ``unauthorized`` if ``password`` is wrong, ``bad_request`` if the new
        one is not acceptable (8..128 characters)."""
        self._require_login()
        # not _authed: a wrong current password is unauthorized too, and must not re-login
        self._api("change_password", token=self.token, password=password, new_password=new_password)
        if self._password is not None:
            self._password = new_password

    def delete_account(self, password):
        """Delete the account for good (the server ends its sessions, removes it from
        friends lists and groups, keeps the name reserved), then stop this client like
        logout().  The local store keeps what it received.  ServerError ``unauthorized``
        if ``password`` is wrong (nothing is deleted)."""
        self._require_login()
        self._api("delete_account", token=self.token, password=password)
        self._password = None
        self._shutdown(ClientClosed("the account was deleted"))
        self.token = None

    def close(self):
        """Disconnect and stop (no logout: the token stays valid).  Safe to call twice."""
        self._shutdown(ClientClosed("the client was closed"))
        if self._own_store:
            self.store.close()

    def _shutdown(self, exc):
        if self._closed:
            return
        self._closed = True
        self._closed_evt.set()
        for timer in (self._gap_timer, self._pump_timer):
            if timer is not None:
                timer.kill(block=False)
        if self._link is not None:
            self._link.stop("closed")
        self._fail_waiters(exc)
        self._wake.set()
        for sub in self._subs:
            sub.wake.set()
        d = self._dispatcher
        if d is not None and d is not gevent.getcurrent():
            d.join(timeout=10)
            if not d.dead:
                d.kill(block=True, timeout=2)

    def _fail_waiters(self, exc):
        waiters, self._waiters = self._waiters, {}
        for w in waiters.values():
            if not w.ready():
                w.set_exception(exc)

    def _stop_error(self):
        link = self._link
        if link.stop_reason == "kicked":
            return Kicked(link.kick_reason)
        if isinstance(link.last_error, ServerError) and link.stop_reason in ("auth_failed", "refused"):
            return link.last_error
        return ClientClosed(f"the client is stopped ({link.stop_reason})")

    # ================================================================== profile, contacts
    def profile(self, user=None):
        """-> {user, name, status, text} of ``user`` (default: yourself)."""
        return _strip(self._authed("profile", **_opt(user=user)))

    def set_profile(self, name=None, text=None):
        self._authed("set_profile", **_opt(name=name, text=text))

    def friends(self):
        """-> [{user, name, status}]"""
        return self._authed("friends")["friends"]

    def friend_request(self, to, message=None):
        """Ask ``to`` to be friends (if ``to`` already asked you, you are friends now)."""
        self._authed("friend_request", to=to, **_opt(message=message))

    def friend_requests(self):
        """-> [{from, message, ts}] requests waiting for your answer."""
        return self._authed("friend_requests")["requests"]

    def friend_accept(self, user):
        self._authed("friend_accept", user=user)

    def friend_reject(self, user):
        self._authed("friend_reject", user=user)

    def friend_remove(self, user):
        self._authed("friend_remove", user=user)

    def block(self, user):
        self._authed("block", user=user)

    def unblock(self, user):
        self._authed("unblock", user=user)

    # ================================================================== groups
    def group_create(self, name, members=None):
        """-> the new group's id."""
        return self._authed("group_create", name=name, **_opt(members=_users(members)))["group"]

    def group_invite(self, group, users):
        self._authed("group_invite", group=group, users=_users(users))

    def group_leave(self, group):
        self._authed("group_leave", group=group)

    def group_members(self, group):
        return self._authed("group_members", group=group)["members"]

    def groups(self):
        """-> [{group, name}]"""
        return self._authed("groups")["groups"]

    # ================================================================== messages
    def history(self, user=None, group=None, before=None, limit=50):
        """Server-side history of the conversation with ``user`` or of ``group``, newest
        first; ``before`` is a mid (page backwards with the oldest mid you have)."""
        if (user is None) == (group is None):
            raise ValueError("exactly one of user= and group= is required")
        fields = {"limit": limit}
        if user is not None:
            fields["with"] = user
        else:
            fields["group"] = group
        if before is not None:
            fields["before"] = before
        return self._authed("history", **fields)["msgs"]

    def local_history(self, user=None, group=None, before_seq=None, limit=50):
        """Messages of a conversation (or all) from the local store, newest first."""
        self._require_login()
        return self.store.messages(user=user, group=group, before_seq=before_seq, limit=limit)

    def send(self, to=None, body=None, *, group=None, cmid=None, wait=True, timeout=None):
        """Send ``body`` (any JSON value) to user ``to`` or to ``group``.

        The message goes to the outbox (the store) first, with a cmid, and is sent and,
        after any reconnect, resent until the server acks it; the server stores it once.
        -> the ack {mid, seq, ts, cmid} (seq: the message's seq in your own inbox).
        ``wait=False`` -> a SendHandle at once.  MessageTooLarge at once (nothing queued)
        if the body is over 16 KiB encoded or the request over the server's max_frame;
        ServerError if the server refuses it for good (forbidden, not_found, bad_request);
        Timeout if ``timeout`` passes first."""
        if (to is None) == (group is None):
            raise ValueError("exactly one of to= and group= is required")
        if body is None:
            raise ValueError("body is required")
        self._require_login()
        if self._link.stopped.is_set():
            raise self._stop_error()
        cmid = cmid if cmid is not None else uuid.uuid4().hex
        fields = {"body": body, "cmid": cmid}
        fields["group" if group is not None else "to"] = group if group is not None else to
        limits.check_send(fields, self.max_frame)   # MessageTooLarge: nothing queued, nothing sent
        entry = self.store.outbox_add(cmid, to, group, body)
        result = AsyncResult()
        self._waiters[entry.id] = result
        self._outbox[entry.id] = entry
        self._pump()
        handle = SendHandle(entry.cmid, result)
        return handle.get(timeout) if wait else handle

    def pending_sends(self):
        """-> [OutboxEntry] sends not acked yet, oldest first."""
        return list(self._outbox.values())

    @property
    def cursor(self):
        """The highest inbox seq delivered to the application (as stored)."""
        self._require_login()
        return self.store.cursor()

    def sync(self, timeout=None):
        """Fetch everything after the cursor now (new messages arrive through the event
        stream, in order, as usual).  -> the server's inbox head."""
        conn = self._online_conn(timeout)
        return self._sync_conn(conn, timeout)

    def presence(self, users):
        """-> {user: status} for friends (``forbidden`` for others)."""
        if isinstance(users, str):
            users = [users]
        return self._gw_request("presence", timeout=None, users=list(users))["statuses"]

    def set_status(self, status, text=None):
        """online, away or busy (+ a text); re-applied after every reconnect."""
        self._status = (status, text)
        self._gw_request("status", timeout=None, status=status, **_opt(text=text))

    def typing(self, to):
        """Tell ``to`` you are typing (a transient hint: dropped when offline).
        -> True if it was sent."""
        self._require_login()
        conn = self._link.conn
        if conn is None or not getattr(conn, "ready", False):
            return False
        try:
            conn.hint("typing", on_error=partial(self._hint_refused, to), to=to)
        except (ConnectionLost, MessageTooLarge):
            return False
        return True

    def _hint_refused(self, to, reply):
        """A typing hint the server refused (not friends, no such user): an ``error``
        event naming it, never a push that looks like something else went wrong."""
        logkv(logging.DEBUG, "typing_refused", user=self.user, to=to, code=reply.get("code"))
        self._emit("error", {"op": "typing", "to": to, "code": reply.get("code"),
                             "message": reply.get("message")})

    def read(self, msg_or_seq, user=None, group=None):
        """Mark a conversation read up to a message: ``read(msg)`` for a received
        message, or ``read(seq, user=...)`` / ``read(seq, group=...)`` with an inbox seq.
        The other side gets a ``receipt``."""
        if isinstance(msg_or_seq, dict):
            msg = msg_or_seq
            seq = msg["seq"]
            if msg.get("group") is not None:
                group = msg["group"]
            else:
                user = msg.get("to") if msg.get("from") == self.user else msg.get("from")
        else:
            seq = msg_or_seq
        if (user is None) == (group is None):
            raise ValueError("exactly one of user= and group= is required")
        fields = {"seq": seq}
        if user is not None:
            fields["with"] = user
        else:
            fields["group"] = group
        self._gw_request("read", timeout=None, **fields)

    # ================================================================== events
    def on(self, type, fn=None):
        """Register a callback: ``on("message", fn)`` calls ``fn(msg)``; other types get
        the event's data dict; ``on("*", fn)`` gets every Event.  Usable as a decorator.
        Callbacks run one at a time, in order, in the client's dispatcher greenlet."""
        if type != "*" and type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}; one of {', '.join(EVENT_TYPES)} or '*'")
        if fn is None:
            return lambda f: self.on(type, f)
        self._handlers.setdefault(type, []).append((fn, type == "*"))
        self._wake.set()
        return fn

    def off(self, type, fn):
        self._handlers[type] = [h for h in self._handlers.get(type, []) if h[0] != fn]
        if not self._handlers[type]:
            del self._handlers[type]

    def events(self, types=None, timeout=None):
        """Iterate over events (all, or those of ``types``), in order, as they happen.

        A message counts as delivered (the cursor moves) when you come back for the next
        event, or leave the loop.  Ends when the client closes, or after ``timeout``
        seconds without an event."""
        sub = _Subscriber(types)
        self._subs.append(sub)
        self._wake.set()
        try:
            while True:
                if not sub.queue:
                    if self._closed:
                        return
                    sub.wake.clear()
                    gevent.wait([sub.wake, self._closed_evt], timeout=timeout, count=1)
                    if not sub.queue:
                        return
                ev = sub.queue.popleft()
                sub.taken = True
                yield ev
                sub.done.set()
        finally:
            sub.closed = True
            if sub in self._subs:
                self._subs.remove(sub)
            sub.done.set()

    def messages(self, timeout=None):
        """Iterate over incoming messages only (the message dicts)."""
        for ev in self.events(("message",), timeout=timeout):
            yield ev.data

    def _add_subscriber(self, sub):
        """For adapters (ThreadedClient): an object like _Subscriber."""
        self._subs.append(sub)
        self._wake.set()

    def _remove_subscriber(self, sub):
        if sub in self._subs:
            self._subs.remove(sub)

    def _emit(self, type, data):
        item = (next(self._counter), Event(type, data))
        (self._msgq if type == "message" else self._evq).append(item)
        self._wake.set()

    def _has_consumer(self, type=None):
        if type is None:
            return bool(self._handlers or self._subs)
        return type in self._handlers or "*" in self._handlers or any(s.wants_type(type) for s in self._subs)

    def _next_item(self):
        """The next event to hand out: messages wait until something consumes messages;
        other events until anything at all is registered; both keep their mutual order
        whenever both can go."""
        msg_ok = bool(self._msgq) and self._has_consumer("message")
        ev_ok = bool(self._evq) and self._has_consumer()
        if msg_ok and (not ev_ok or self._msgq[0][0] < self._evq[0][0]):
            return self._msgq
        if ev_ok:
            return self._evq
        return None

    def _dispatch_loop(self):
        while not self._closed:
            q = self._next_item()
            if q is None:
                self._wake.clear()
                self._wake.wait()
                continue
            item = q.popleft()
            ev = item[1]
            if not self._deliver(ev):
                if not self._closed:
                    q.appendleft(item)  # offered, but its iterator went away: keep it
                continue
            if ev.type == "message":
                try:
                    self.store.delivered(ev.data)
                except Exception:
                    log.exception("event=store_error op=delivered seq=%s", ev.data.get("seq"))
        self._msgq.clear()
        self._evq.clear()

    def _deliver(self, ev):
        """Hand ``ev`` to every callback and iterator that wants it.  -> False if it was
        offered to iterators only and none took it (it stays queued)."""
        handled = False
        for fn, wants_event in list(self._handlers.get(ev.type, ())) + list(self._handlers.get("*", ())):
            handled = True
            try:
                fn(ev if wants_event else ev.data)
            except Exception:
                log.exception("event=handler_error type=%s handler=%r", ev.type, fn)
        offered = False
        for sub in list(self._subs):
            if not sub.wants(ev):
                continue
            offered = True
            sub.offer(ev)
            gevent.wait([sub.done, self._closed_evt], count=1)
            handled = handled or sub.taken
        return handled or not offered

    # ================================================================== link callbacks
    def _on_state(self, state, info):
        self.state = state
        data = {"state": state}
        data.update({k: (str(v) if isinstance(v, BaseException) else v) for k, v in info.items()})
        self._emit("state", data)
        if state == "kicked":
            self._fail_waiters(Kicked(info.get("reason")))
        elif state in ("auth_failed", "failed"):
            self._fail_waiters(self._stop_error())
        elif state == "stopped":
            self._fail_waiters(self._stop_error() if not self._closed else ClientClosed("the client was closed"))

    def _on_push(self, conn, frame):
        op = frame.get("op")
        data = {k: v for k, v in frame.items() if k != "op"}
        if op == "msg":
            self._incoming([data])
        elif op in ("presence", "typing", "receipt", "friend_request", "friend_added", "kicked", "bye"):
            self._emit(op, data)
        elif op == "error":
            code = frame.get("code")
            logkv(logging.WARNING, "gateway_error", user=self.user, device=self.device, code=code,
                  message=frame.get("message"))
            if code in FRAME_REFUSED and frame.get("id") is None:
                self._frame_refused(conn)   # reported as send_failed, if it was a send
            else:
                self._emit("error", data)
        else:
            logkv(logging.DEBUG, "unknown_push", op=op)

    def _on_online(self, conn, reply):
        self._learn_max_frame(reply)
        conn.max_send = self.max_frame
        self._drop_oversized()
        head = reply.get("head")
        if isinstance(head, int) and head < self._queued:
            # The server has fewer inbox entries than we have seen: another server, or
            # one restored from an old backup.  Follow the server rather than wait forever.
            logkv(logging.WARNING, "cursor_ahead", user=self.user, device=self.device, cursor=self._queued,
                  head=head)
            self._emit("error", {"code": "cursor_ahead", "cursor": self._queued, "head": head,
                                 "message": f"this device had seen {self._queued} messages of your inbox, "
                                            f"the server has {head}; continuing from the server's"})
            self._queued = head
            self._held.clear()
            self._msgq.clear()
            self.store.set_cursor(head)
        conn.sent_upto = 0
        conn.ready = True
        self._pump(conn)
        if self._status is not None:
            status, text = self._status
            reply = conn.request("status", timeout=self.timeout, status=status, **_opt(text=text))
            if reply.get("op") == "error":
                logkv(logging.WARNING, "status_reapply_failed", user=self.user, code=reply.get("code"),
                      message=reply.get("message"))
        self._sync_conn(conn)

    # ================================================================== inbox
    def _incoming(self, msgs):
        """Take inbox entries from any source; queue the next ones in seq order."""
        for m in msgs:
            seq = m.get("seq")
            if type(seq) is not int or seq <= self._queued or seq in self._held:
                continue
            self._held[seq] = m
        held = self._held
        while self._queued + 1 in held:
            self._queued += 1
            self._emit("message", held.pop(self._queued))
        if held and self._gap_timer is None and not self._closed:
            self._gap_timer = gevent.spawn_later(self.gap_sync_delay, self._gap_sync)

    def _gap_sync(self):
        self._gap_timer = None
        if not self._held or self._closed:
            return
        conn = self._link.conn if self._link else None
        if conn is None or not getattr(conn, "ready", False):
            return  # the next connection syncs anyway
        try:
            self._sync_conn(conn)
        except ClientError as exc:
            logkv(logging.INFO, "gap_sync_failed", user=self.user, error=exc)

    def _sync_conn(self, conn, timeout=None):
        since = self._queued
        while True:
            rep = conn.request("sync", timeout=timeout or self.timeout, since=since, limit=1000)
            if rep.get("op") != "sync":
                raise ServerError(rep, "sync")
            msgs = rep.get("msgs") or []
            self._incoming(msgs)
            if not rep.get("more") or not msgs:
                return rep.get("head")
            since = msgs[-1]["seq"]

    # ================================================================== gateway requests
    def _online_conn(self, timeout=None):
        self._require_login()
        self.wait_online(self.timeout if timeout is None else timeout)
        conn = self._link.conn
        if conn is None:
            raise NotConnected(f"{self.user}/{self.device}: not connected to the gateway")
        return conn

    def _gw_request(self, op, timeout=None, **fields):
        """A gateway request, retried once on a fresh connection if the first one died."""
        for attempt in (1, 2):
            conn = self._online_conn(timeout)
            try:
                reply = conn.request(op, timeout=timeout or self.timeout, **fields)
            except ConnectionLost:
                if attempt == 2:
                    raise
                continue
            if reply.get("op") == "error":
                raise ServerError(reply, op)
            return reply


def _strip(reply):
    return {k: v for k, v in reply.items() if k not in ("op", "id")}


def _opt(**fields):
    return {k: v for k, v in fields.items() if v is not None}


def _users(users):
    if users is None:
        return None
    if isinstance(users, str):
        return [users]
    return list(users)

