"""Business layer of the client SDK: :class:`Client`, the facade an application uses.

The delivery rules it keeps (see the package docstring for the user's view) live in one
module each; this class holds the state and the public calls:

* :mod:`imsrv.client.inbox`: inbox entries (pushes, sync results, the acks of our own
  sends) reach the application once, in seq order; a gap that does not close by itself
  triggers a ``sync``.
* :mod:`imsrv.client.events`: one dispatcher greenlet hands events to the application
  (callbacks, iterators) and only then moves the cursor in the store, together with the
  message (one transaction).  Nothing is handed out before the application registered a
  handler or an iterator.
* :mod:`imsrv.client.outbox` (the ``Outbox`` mixin): ``send`` writes the message to the
  outbox (store) with its cmid before it touches the network; the outbox is transmitted
  in order on every (re)connection, before new sends; an ack removes the entry.  The
  server dedupes by cmid, so a resend is stored once.
* :mod:`imsrv.client.session` (the ``Session`` mixin): API requests with the token and
  re-login, the gateway link's callbacks, gateway requests, shutdown.
* :mod:`imsrv.client.v11` (the ``V11`` mixin): the calls protocol v1.1 added (recall,
  edit, react, conversations, read positions and muting, group roles, remarks, search);
  :mod:`imsrv.client.entries`: the inbox entries with a kind they make.
"""
import os
from collections import OrderedDict
from functools import partial

from gevent.lock import Semaphore

from . import limits
from .errors import ClientClosed, ClientError, ConnectionLost, MessageTooLarge, NotConnected, ServerError
from .events import EventDispatcher
from .inbox import Inbox
from .link import Backoff, Link
from .network import BINARY, tls_context
from .entries import request_extra
from .outbox import Outbox
from .session import Session, non_none
from .store import open_store, BaseStore
from .v11 import V11, strip_reply as _strip, users_list as _users


DEFAULT_API = "127.0.0.1:7001"


class Client(Session, Outbox, V11):
    """An imsrv client: one user on one device.

    ``api``: "host:port" of the API service (default: $IMSRV_API, else 127.0.0.1:7001).  ``device``: this device's name (one live
    session per (user, device): a second login with the same pair kicks the first).
    ``store``: None (memory), a path (SQLite file, survives restarts) or a store object.
    ``mode``: framing, "binary" or "line".  ``timeout``: seconds for one request.
    ``heartbeat`` / ``heartbeat_timeout``: ping after that many idle seconds, give the
    connection up as dead when the pong is that late.  ``backoff_base`` /
    ``backoff_max``: reconnect delays.  ``keep_password``: remember the password in memory
    to log in again when the token expires (and to ask login for a gateway after ``bye``).
    ``tls``: True (TLS, the system's CAs), an ``ssl.SSLContext``, or None (plain);
    ``ca_file``: trust the CA certificates of that PEM file (implies TLS).  The API and
    the gateways a login names are reached with it, certificate and host name checked
    (:func:`imsrv.client.network.tls_context`).
    """

    def __init__(self, api=None, device="default", store=None, *, mode=BINARY,
                 timeout=10.0, heartbeat=30.0, heartbeat_timeout=10.0, backoff_base=0.5,
                 backoff_max=30.0, keep_password=True, tls=None, ca_file=None):
        self.api = api or os.environ.get("IMSRV_API") or DEFAULT_API
        self.device = device
        self.tls = tls_context(tls, ca_file)   # an SSLContext, or None
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
        self.protocol = None         # the protocol version the server's login reply names
        self._password = None
        self._link = None
        self._closed = False
        self._events = EventDispatcher(self.store)
        self._inbox = Inbox(self._events, self.store, on_gap=self._gap_sync)
        self._outbox = OrderedDict()  # id -> OutboxEntry, not acked yet
        self._waiters = {}           # outbox id -> AsyncResult of the send() call
        self._pump_lock = Semaphore()
        self._pump_timer = None
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
        self._inbox.resume(self.store.cursor())
        self._outbox = OrderedDict((e.id, e) for e in self.store.outbox())
        self._drop_oversized()       # an older run may have queued what can never be sent
        self._events.start()
        self._link = Link(self.device, self._credentials, self._on_online, self._on_push, self._on_state,
                          mode=self.mode, heartbeat=self.heartbeat, heartbeat_timeout=self.heartbeat_timeout,
                          connect_timeout=self.timeout, backoff=self.backoff, tls=self.tls)
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

    # ================================================================== profile, contacts
    def profile(self, user=None):
        """-> {user, name, status, text, avatar?} of ``user`` (default: yourself)."""
        return _strip(self._authed("profile", **non_none(user=user)))

    def set_profile(self, name=None, text=None, avatar=None):
        """Change what is given: display name, status text, avatar (an http(s) URL)."""
        self._authed("set_profile", **non_none(name=name, text=text, avatar=avatar))

    def friends(self):
        """-> [{user, name, status, remark?}]"""
        return self._authed("friends")["friends"]

    def friend_request(self, to, message=None):
        """Ask ``to`` to be friends (if ``to`` already asked you, you are friends now)."""
        self._authed("friend_request", to=to, **non_none(message=message))

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
        return self._authed("group_create", name=name, **non_none(members=_users(members)))["group"]

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

    def send(self, to=None, body=None, *, group=None, reply_to=None, mentions=None, cmid=None, wait=True,
             timeout=None):
        """Send ``body`` (any JSON value) to user ``to`` or to ``group``; ``reply_to``: the
        mid of a message of the same conversation it answers; ``mentions`` (group sends
        only): member user names, or ["all"] (owner and admins only).

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
        if mentions is not None and group is None:
            raise ValueError("mentions= is for group sends only")
        extra = request_extra("send", reply_to=reply_to, mentions=_users(mentions))
        return self._enqueue("send", to, group, body, extra, cmid, wait, timeout)

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
        return self._inbox.sync(conn, timeout or self.timeout)

    def presence(self, users):
        """-> {user: status} for friends (``forbidden`` for others)."""
        if isinstance(users, str):
            users = [users]
        return self._gw_request("presence", timeout=None, users=list(users))["statuses"]

    def set_status(self, status, text=None):
        """online, away or busy (+ a text); re-applied after every reconnect."""
        self._status = (status, text)
        self._gw_request("status", timeout=None, status=status, **non_none(text=text))

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

    # ================================================================== events
    def on(self, type, fn=None):
        """Register a callback: ``on("message", fn)`` calls ``fn(msg)``; other types get
        the event's data dict; ``on("*", fn)`` gets every Event.  Usable as a decorator.
        Callbacks run one at a time, in order, in the client's dispatcher greenlet."""
        return self._events.on(type, fn)

    def off(self, type, fn):
        self._events.off(type, fn)

    def events(self, types=None, timeout=None):
        """Iterate over events (all, or those of ``types``), in order, as they happen.

        A message counts as delivered (the cursor moves) when you come back for the next
        event, or leave the loop.  Ends when the client closes, or after ``timeout``
        seconds without an event."""
        return self._events.iterate(types, timeout)

    def messages(self, timeout=None):
        """Iterate over incoming messages only (the message dicts)."""
        for event in self.events(("message",), timeout=timeout):
            yield event.data

    def _add_subscriber(self, sub):
        """For adapters (ThreadedClient): an object like events.IteratorSubscriber."""
        self._events.add_subscriber(sub)

    def _remove_subscriber(self, sub):
        self._events.remove_subscriber(sub)
