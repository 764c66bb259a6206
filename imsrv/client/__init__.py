"""imsrv.client: the Python SDK for imsrv servers (full guide: docs/CLIENT.md).

It handles framing (binary or line), request/reply matching, heartbeats, dead
connections, reconnects with backoff and jitter, ``bye`` retry_after, re-login when a
token expired, and following the gateway that login names.  It also keeps a local
store (cursor, received messages, outbox of unacked sends with their cmids), so the
application sees every inbox message exactly once and in seq order, across reconnects,
server crashes and restarts of its own process.

Ten lines, against a fresh server (``imsrv serve``)::

    from imsrv.client import Client

    carol, dave = Client(), Client()                 # the API at $IMSRV_API or 127.0.0.1:7001
    carol.register("carol", "carol-pass1"); dave.register("dave", "dave-pass12")
    carol.login("carol", "carol-pass1"); dave.login("dave", "dave-pass12")
    carol.friend_request("dave", "hi!"); dave.friend_accept("carol")
    ack = carol.send("dave", {"text": "hello dave"})  # returns once the server has stored it
    msg = next(dave.messages(timeout=10))            # or dave.on("message", callback)
    print(f"{msg['from']} -> {msg['to']}: {msg['body']['text']} (mid {ack['mid']})")
    carol.close(); dave.close()

Layers:

- network: Conn, api_call (imsrv.client.network), Heartbeat (imsrv.client.heartbeat),
  Link, Backoff (imsrv.client.link).
- data (imsrv.client.store): SQLiteStore(path), MemoryStore(), one (user, device) each.
- business: Client (imsrv.client.client, the facade), its inbox (imsrv.client.inbox),
  events (imsrv.client.events), outbox (imsrv.client.outbox) and login session with the
  gateway link's callbacks (imsrv.client.session).

Client calls:

- Accounts: ``register``, ``login``, ``logout``, ``close``, ``profile``, ``set_profile``
  (name, text, avatar), ``change_password``, ``delete_account``.
- Contacts: ``friends``, ``friend_request``, ``friend_requests``, ``friend_accept``,
  ``friend_reject``, ``friend_remove``, ``block``, ``unblock``, ``set_remark``.
- Groups: ``group_create``, ``group_invite``, ``group_leave``, ``group_members``, ``groups``;
  with roles (protocol v1.1): ``group_info``, ``group_roles``, ``group_update``,
  ``group_set_role``, ``group_kick``, ``group_mute``, ``group_unmute``, ``group_transfer``,
  ``group_dissolve``.
- Messages and presence: ``send(to=... | group=..., body, reply_to=, mentions=)`` returns
  the ack; ``recall``, ``edit``, ``react`` (through the outbox like sends); ``sync``,
  ``history``, ``local_history``, ``local_message``, ``search``, ``presence``,
  ``set_status``, ``typing``, ``read`` (``mark_read``); ``conversations`` (unread counts),
  ``mute``, ``unmute``.
- Events: ``on(type, fn)`` for callbacks, ``events()`` and ``messages()`` for
  iterators.  The types are message, presence, typing, receipt, friend_request,
  friend_added, kicked, bye, state, send_failed, error.  Every inbox entry is a message
  event; protocol v1.1 entries carry ``kind`` (recall, edit, reaction with ``ref``;
  group_event) and messages may carry ``reply_to`` and ``mentions``.

Exactly once: a message counts as delivered (the cursor moves on disk) after your
callback returns, or when your iterator asks for the next event.  Messages wait, not
lost, until something consumes them.  ``send`` puts the message and its cmid in the
outbox before it touches the network.  After any reconnect or restart, the outbox is
resent in order with the same cmids, then the client syncs from its cursor.  A message
the server would refuse for its size (body over 16 KiB encoded, request over the
server's max_frame) raises ``MessageTooLarge`` and is never queued; a send refused for
good leaves the outbox with a ``send_failed`` event.  The SDK logs key=value lines to the
``imsrv.client`` logger and never prints.

gevent and threads: the SDK is plain gevent, so in a gevent program use a Client from
greenlets of one thread.  A program built on threads should use
``imsrv.client.threaded.ThreadedClient``: it runs the Client in its own thread, and its
methods (and the blocking ``messages()`` / ``events()`` iterators) can be called from any
thread.  Callbacks registered with ``on()`` run in the client's thread.

The terminal client on this SDK is ``imsrv chat``.  Two people chatting, each in their
own terminal::

    $ imsrv chat --user alice --register          $ imsrv chat --user bob --register
    alice> /add bob hi, it's alice                * friend request from alice: "hi, it's alice" ...
                                                  bob> /accept alice
    alice> /open bob                              * you and alice are now friends
    alice@bob> hello bob!                         16:56 [@alice] alice: hello bob!
    * bob is typing...                            bob> /open alice
    16:56 [@bob] bob: hi alice, how are you?      bob@alice> hi alice, how are you?

Scripts::

    imsrv chat --user alice --password-file pw --send bob "text"     (prints the ack)
    imsrv chat --user bob --password-file pw --json [--count N] [--timeout S]
        (prints incoming messages as JSON lines)
"""
from .client import Client
from .events import Event
from .outbox import SendHandle
from .errors import (ClientClosed, ClientError, ConnectionLost, Kicked, MessageTooLarge, NotConnected,
                     ServerError, Timeout)
from .store import MemoryStore, SQLiteStore, open_store

__all__ = ["Client", "Event", "SendHandle", "ClientError", "ServerError", "ConnectionLost", "Timeout",
           "NotConnected", "Kicked", "ClientClosed", "MessageTooLarge", "MemoryStore", "SQLiteStore", "open_store"]
