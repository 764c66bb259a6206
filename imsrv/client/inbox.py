"""The inbox of the client SDK: every inbox entry reaches the application once, in seq
order.

Inbox entries come from three places: pushed ``msg``\\ s, ``sync`` results, and the acks
of our own sends (which carry our inbox seq).  All go through :meth:`Inbox.take`:
anything at or below what was already queued, or already held, is a duplicate and
dropped; the rest is held until it is the next seq, then queued for the application
(:class:`~imsrv.client.events.EventDispatcher`) in seq order.  A gap that does not close
by itself within ``gap_sync_delay`` seconds (a push lost on the way) calls ``on_gap``,
which asks the server (:meth:`Inbox.sync`).

A server with ``retention.days`` deletes old entries; seqs are never reused, and a
``sync`` reply says ``oldest``, the lowest seq still stored (0: none).  Entries below it
that were never queued can never come: :meth:`Inbox.sync` steps over them
(:meth:`Inbox.skip_to`), so the next stored entry is not held for ever.
"""
import logging

import gevent

from .errors import ServerError
from .logfmt import kv as logkv

#: the most inbox entries one ``sync`` request asks for
SYNC_PAGE = 1000


class Inbox:
    """``events``: where messages are queued in order.  ``store``: its cursor is reset
    when the server's inbox is behind ours.  ``on_gap()``: called (in a greenlet of its
    own) when entries are held for a missing seq for ``gap_sync_delay`` seconds."""

    #: seconds a gap may stay open before ``on_gap`` is called
    gap_sync_delay = 0.5

    def __init__(self, events, store, on_gap):
        self.events = events
        self.store = store
        self.on_gap = on_gap
        self.queued_upto = 0     # highest seq queued for the application
        self.held = {}           # seq -> message received out of order
        self.closed = False
        self._gap_timer = None

    def resume(self, cursor):
        """Start from the store's cursor (a login)."""
        self.queued_upto = cursor
        self.held = {}

    def take(self, messages):
        """Take inbox entries from any source; queue the next ones in seq order."""
        for message in messages:
            seq = message.get("seq")
            if type(seq) is not int or seq <= self.queued_upto or seq in self.held:
                continue
            self.held[seq] = message
        held = self.held
        while self.queued_upto + 1 in held:
            self.queued_upto += 1
            self.events.emit("message", held.pop(self.queued_upto))
        if held and self._gap_timer is None and not self.closed:
            self._gap_timer = gevent.spawn_later(self.gap_sync_delay, self._gap_timer_fired)

    def _gap_timer_fired(self):
        self._gap_timer = None
        if not self.held or self.closed:
            return
        self.on_gap()

    def sync(self, conn, timeout):
        """Fetch everything after what was queued, over ``conn`` (``sync`` requests,
        page by page), into :meth:`take`.  -> the server's inbox head."""
        since = self.queued_upto
        while True:
            reply = conn.request("sync", timeout=timeout, since=since, limit=SYNC_PAGE)
            if reply.get("op") != "sync":
                raise ServerError(reply, "sync")
            messages = reply.get("msgs") or []
            self._skip_purged(reply.get("oldest"), reply.get("head"), messages)
            self.take(messages)
            if not reply.get("more") or not messages:
                return reply.get("head")
            since = messages[-1]["seq"]

    def _skip_purged(self, oldest, head, messages):
        """A sync reply's ``oldest`` (and ``head``): step over the seqs the server no
        longer stores (see the module docstring)."""
        if type(oldest) is not int or type(head) is not int:
            return
        if oldest == 0:                    # nothing stored: everything up to head is gone
            gone_upto = head if not messages else messages[0]["seq"] - 1
        else:
            gone_upto = oldest - 1
        if gone_upto > self.queued_upto:
            self.skip_to(gone_upto)

    def skip_to(self, seq):
        """The entries up to ``seq`` will never come (retention): queue from seq + 1 on."""
        logkv(logging.INFO, "inbox_skip", user=self.store.user, device=self.store.device,
              after=self.queued_upto, to=seq)
        self.queued_upto = seq
        for old in [s for s in self.held if s <= seq]:
            del self.held[old]
        self.take([])

    def follow_server_head(self, head, user, device):
        """At (re)connection: if the server has fewer inbox entries than we have seen
        (another server, or one restored from an old backup), follow the server rather
        than wait for ever, and say so with an ``error`` event (code cursor_ahead)."""
        if not isinstance(head, int) or head >= self.queued_upto:
            return
        logkv(logging.WARNING, "cursor_ahead", user=user, device=device, cursor=self.queued_upto,
              head=head)
        self.events.emit("error", {"code": "cursor_ahead", "cursor": self.queued_upto, "head": head,
                                   "message": f"this device had seen {self.queued_upto} messages of your "
                                              f"inbox, the server has {head}; continuing from the server's"})
        self.queued_upto = head
        self.held.clear()
        self.events.drop_queued_messages()
        self.store.set_cursor(head)

    def close(self):
        self.closed = True
        timer = self._gap_timer
        if timer is not None:
            timer.kill(block=False)
