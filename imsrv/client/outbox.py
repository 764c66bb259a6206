"""The outbox half of :class:`~imsrv.client.Client`: transmitting unacked sends in order,
handling their replies, and dropping what the server will never take.

The outbox carries every request that the server stores as an inbox entry, acks with
mid/seq and dedupes by cmid: ``send``, and protocol v1.1's ``recall``, ``edit`` and
``react`` (:mod:`imsrv.client.entries`).  They share one order and one set of rules:

* :meth:`_enqueue` (``send``, ``recall``, ...) puts an entry in the outbox (memory and
  store) first; :meth:`_pump` transmits,
  in outbox order, every entry not yet sent on the current connection (all of them again
  after a reconnect, with the same cmids: the server stores each once).
* An ``ack`` removes the entry and feeds the entry it made (our inbox seq) to the inbox
  path (:func:`~imsrv.client.entries.own_entry`; a change of a message the local store
  does not have is fetched with a ``sync`` instead).
* ``rate_limited`` / ``unavailable``: the entry is held for ``retry_after`` and resent.
* Any other error is final (:mod:`.limits`): :meth:`_drop` removes the entry, fails its
  ``send()`` and reports ``send_failed``.  So do entries over a size limit, found before
  they are sent (:meth:`_drop_oversized`) or when the server closes the connection with
  ``too_large`` without saying which frame it was (:meth:`_frame_refused`).

A mixin: it owns the Client's ``_outbox``, ``_waiters``, ``_pump_lock``, ``_pump_timer``,
``_frame_ok`` and ``_learned_max``, and uses its ``store``, ``_link``, ``max_frame``,
``_events`` (send_failed) and ``_inbox`` (our own message at its seq).  A send in
progress is a :class:`SendHandle`.
"""
import logging
import uuid
from functools import partial

import gevent
from gevent.event import AsyncResult

from . import limits
from .entries import own_entry
from .errors import ConnectionLost, MessageTooLarge, ServerError, Timeout
from .logfmt import kv as logkv
from .network import ReplyCallback, monotonic


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


class Outbox:
    def _enqueue(self, op, to, group, body, extra, cmid=None, wait=True, timeout=None):
        """Queue outbox op ``op`` (see OutboxEntry) and pump -> the ack, or a SendHandle
        with ``wait=False``.  MessageTooLarge at once (nothing queued) for a body or a
        request over its limit."""
        self._require_login()
        if self._link.stopped.is_set():
            raise self._stop_error()
        cmid = cmid if cmid is not None else uuid.uuid4().hex
        fields = {"cmid": cmid}
        if op in ("send", "edit"):
            fields["body"] = body
        if op == "send":
            fields["group" if group is not None else "to"] = group if group is not None else to
        fields.update(extra)
        limits.check_send(fields, self.max_frame, op)   # MessageTooLarge: nothing queued, nothing sent
        entry = self.store.outbox_add(cmid, to, group, body, op=op, extra=extra)
        result = AsyncResult()
        self._waiters[entry.id] = result
        self._outbox[entry.id] = entry
        self._pump()
        handle = SendHandle(entry.cmid, result)
        return handle.get(timeout) if wait else handle

    def _pump(self, conn=None):
        """Transmit, in outbox order, every unacked send not yet sent on this connection."""
        if conn is None:
            conn = self._link.conn if self._link is not None else None
        if conn is None or conn.closed or not getattr(conn, "ready", False):
            return
        with self._pump_lock:
            now = monotonic()
            for entry in list(self._outbox.values()):
                if entry.id <= conn.sent_upto:
                    continue
                if entry.hold_until > now:
                    self._pump_later(entry.hold_until - now)
                    return
                if entry.id not in self._outbox:
                    continue
                waiter = ReplyCallback(partial(self._on_send_reply, conn, entry))
                try:
                    conn.request_async(entry.op, waiter=waiter, **entry.fields())
                except ConnectionLost:
                    return
                except MessageTooLarge as exc:   # over a limit learned after it was queued
                    self._drop(entry, exc)
                    continue
                conn.sent_upto = entry.id

    def _pump_later(self, delay):
        """Pump again in ``delay`` s, unless a pump timer is already waiting.  The timer
        that is running right now (this very pump) is not waiting any more: without
        that exception a held entry found by the timer's own pump would never be sent."""
        timer = self._pump_timer
        if timer is None or timer.dead or timer is gevent.getcurrent():
            self._pump_timer = gevent.spawn_later(delay, self._pump)

    def _on_send_reply(self, conn, entry, reply, exc):
        if exc is not None or entry.id not in self._outbox:
            return  # connection lost (resent on the next one), or a duplicate reply
        op = reply.get("op")
        if op == "ack":
            del self._outbox[entry.id]
            self.store.outbox_remove(entry.id)
            self._frame_ok = max(self._frame_ok, _entry_size(entry))
            ack = {"mid": reply.get("mid"), "seq": reply.get("seq"), "ts": reply.get("ts"), "cmid": entry.cmid}
            waiter = self._waiters.pop(entry.id, None)
            if waiter is not None:
                waiter.set(ack)
            seq = reply.get("seq")
            if type(seq) is int and seq > 0:
                # our own entry is in our inbox at seq: deliver it in order like any other
                msg = own_entry(entry, ack, self.user)
                if msg is not None:
                    self._inbox.take([msg])
                else:
                    gevent.spawn(self._gap_sync)
            return
        code = reply.get("code")
        if op == "error" and not limits.is_final(code):
            delay = reply.get("retry_after")
            delay = float(delay) if isinstance(delay, (int, float)) and delay > 0 else 1.0
            entry.hold_until = monotonic() + delay
            if getattr(conn, "sent_upto", 0) >= entry.id:
                conn.sent_upto = entry.id - 1
            self._pump_later(delay)
            return
        # refused for good: nothing was stored
        self._drop(entry, ServerError(reply, entry.op))

    def _drop(self, entry, err):
        """An outbox entry that must never be sent again: out of the outbox (memory and
        store), its send() fails with ``err``, and a ``send_failed`` event reports it."""
        if self._outbox.pop(entry.id, None) is None:
            return
        self.store.outbox_remove(entry.id)
        waiter = self._waiters.pop(entry.id, None)
        if waiter is not None and not waiter.ready():
            waiter.set_exception(err)
        code = getattr(err, "code", "too_large")
        message = err.message if isinstance(err, ServerError) else str(err)
        logkv(logging.WARNING, "send_dropped", user=self.user, device=self.device, op=entry.op, cmid=entry.cmid,
              code=code, message=message)
        data = {"cmid": entry.cmid, "body": entry.body, "code": code, "message": message}
        if isinstance(err, MessageTooLarge):
            data.update(size=err.size, limit=err.limit)
        if entry.group is not None:
            data["group"] = entry.group
        elif entry.to is not None or entry.op == "send":
            data["to"] = entry.to
        if entry.op != "send":
            data["op"] = entry.op
            data.update(entry.extra)
        self._events.emit("send_failed", data)

    def _drop_oversized(self):
        for entry in list(self._outbox.values()):
            exc = limits.oversized(entry, self.max_frame)
            if exc is not None:
                self._drop(entry, exc)

    def _frame_refused(self, conn):
        """The server closes ``conn`` because a frame we sent was too large, without
        saying which.  Its max_frame is below the largest send in flight on it that is
        bigger than anything it ever acked: drop that one, and remember the bound (the
        pump re-checks the rest against it on the next connection)."""
        sent_upto = getattr(conn, "sent_upto", 0)
        suspects = [e for e in self._outbox.values()
                    if e.id <= sent_upto and _entry_size(e) > self._frame_ok]
        if not suspects:
            logkv(logging.WARNING, "frame_refused", user=self.user, device=self.device, suspect="none")
            return
        worst = max(suspects, key=_entry_size)
        size = _entry_size(worst)
        self._learned_max = size - 1 if self._learned_max is None else min(self._learned_max, size - 1)
        self.max_frame = min(self.max_frame, self._learned_max)
        self._drop(worst, MessageTooLarge("frame", size, None))


def _entry_size(entry):
    """The size of an outbox entry's request frame (cached on the entry)."""
    if entry.size is None:
        entry.size = limits.frame_size(entry.op, entry.fields())
    return entry.size
