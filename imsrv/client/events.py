"""Events of the client SDK: :class:`Event`, and the :class:`EventDispatcher` that hands
them to the application.

* Everything that happens (a message in inbox order, a presence change, a state change
  of the link, a send dropped for good, ...) is queued with :meth:`EventDispatcher.emit`.
* One dispatcher greenlet hands queued events to the application, one at a time and in
  order: to every callback registered with ``on()`` and to every iterator of
  ``events()`` / ``messages()`` that wants the type.  Only once a ``message`` was handed
  out does it move the cursor in the store, together with the message (one
  transaction): ``store.delivered(msg)``.
* Nothing is handed out before the application registered a handler or an iterator:
  until then events wait (messages are not lost: the cursor did not move).  Messages
  wait until something consumes messages; other events until anything at all is
  registered; both keep their mutual order whenever both can go.
"""
import itertools
from collections import deque

import gevent
from gevent.event import Event as GEvent

from .logfmt import log

#: event types an application can subscribe to
EVENT_TYPES = ("message", "presence", "typing", "receipt", "friend_request", "friend_added",
               "kicked", "bye", "state", "send_failed", "error")


class Event:
    """One thing that happened: ``type`` (see EVENT_TYPES) and ``data`` (a dict: for a
    ``message`` the inbox entry itself: seq, mid, from, to or group, body, ts, cmid?, and
    with protocol v1.1 reply_to?, mentions?, and kind + ref for entries that are not
    ordinary messages: recall / edit / reaction of message ``ref``, group_event; see
    :mod:`imsrv.client.entries`)."""

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


class Subscription:
    """What the dispatcher asks of every subscriber: which event types it takes (``types``:
    one name, several, or None for all) and whether it is still open.  Subclasses add
    ``offer``, ``done`` and ``taken`` (the hand-over)."""

    def __init__(self, types):
        self.types = None if types is None else frozenset([types] if isinstance(types, str) else types)
        self.taken = False
        self.closed = False

    def wants_type(self, type):
        return not self.closed and (self.types is None or type in self.types)

    def wants(self, event):
        return self.wants_type(event.type)


class IteratorSubscriber(Subscription):
    """An iterator's end of the dispatcher: one event at a time, handed over and then
    waited for until the consumer comes back for the next one.

    Adapters (:class:`~imsrv.client.threaded.ThreadedClient`) subclass
    :class:`Subscription` with their own ``offer``, ``done`` and ``taken``."""

    def __init__(self, types):
        super().__init__(types)
        self.queue = deque()
        self.wake = GEvent()
        self.done = GEvent()

    def offer(self, event):
        self.done.clear()
        self.taken = False
        self.queue.append(event)
        self.wake.set()


class EventDispatcher:
    """The queue of events waiting for the application, and the greenlet that hands
    them out (see the module docstring).  ``store``: where a handed-out message is
    marked delivered (``store.delivered(msg)`` moves the cursor)."""

    def __init__(self, store):
        self.store = store
        self.handlers = {}              # type -> [(fn, wants_event)]
        self.subscribers = []           # IteratorSubscriber (or an adapter's equivalent)
        self.message_queue = deque()    # (order, Event) messages waiting for the application
        self.event_queue = deque()      # (order, Event) other events waiting for the application
        self._order = itertools.count()
        self._wake = GEvent()
        self.closed = False
        self.closed_event = GEvent()
        self._greenlet = None

    # ------------------------------------------------------------------ registration
    def on(self, type, fn=None):
        """Client.on(): register a callback (a decorator without ``fn``)."""
        if type != "*" and type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}; one of {', '.join(EVENT_TYPES)} or '*'")
        if fn is None:
            return lambda f: self.on(type, f)
        self.handlers.setdefault(type, []).append((fn, type == "*"))
        self._wake.set()
        return fn

    def off(self, type, fn):
        self.handlers[type] = [h for h in self.handlers.get(type, []) if h[0] != fn]
        if not self.handlers[type]:
            del self.handlers[type]

    def iterate(self, types=None, timeout=None):
        """Client.events(): a generator of events (all, or those of ``types``)."""
        subscriber = IteratorSubscriber(types)
        self.subscribers.append(subscriber)
        self._wake.set()
        try:
            while True:
                if not subscriber.queue:
                    if self.closed:
                        return
                    subscriber.wake.clear()
                    gevent.wait([subscriber.wake, self.closed_event], timeout=timeout, count=1)
                    if not subscriber.queue:
                        return
                event = subscriber.queue.popleft()
                subscriber.taken = True
                yield event
                subscriber.done.set()
        finally:
            subscriber.closed = True
            if subscriber in self.subscribers:
                self.subscribers.remove(subscriber)
            subscriber.done.set()

    def add_subscriber(self, subscriber):
        self.subscribers.append(subscriber)
        self._wake.set()

    def remove_subscriber(self, subscriber):
        if subscriber in self.subscribers:
            self.subscribers.remove(subscriber)

    # ------------------------------------------------------------------ queueing
    def emit(self, type, data):
        """Queue an event for the application."""
        item = (next(self._order), Event(type, data))
        (self.message_queue if type == "message" else self.event_queue).append(item)
        self._wake.set()

    def drop_queued_messages(self):
        """Forget the messages not handed out yet (the inbox follows the server's head)."""
        self.message_queue.clear()

    # ------------------------------------------------------------------ the dispatcher greenlet
    def start(self):
        self._greenlet = gevent.spawn(self._dispatch_loop)

    def mark_closed(self):
        """The client is closing: iterators end, the dispatcher stops handing out."""
        self.closed = True
        self.closed_event.set()

    def stop(self):
        """Wake everything that waits and wait for the dispatcher greenlet to end
        (after :meth:`mark_closed`)."""
        self._wake.set()
        for subscriber in self.subscribers:
            subscriber.wake.set()
        dispatcher = self._greenlet
        if dispatcher is not None and dispatcher is not gevent.getcurrent():
            dispatcher.join(timeout=10)
            if not dispatcher.dead:
                dispatcher.kill(block=True, timeout=2)

    def _has_consumer(self, type=None):
        if type is None:
            return bool(self.handlers or self.subscribers)
        return (type in self.handlers or "*" in self.handlers
                or any(s.wants_type(type) for s in self.subscribers))

    def _next_queue(self):
        """The queue whose head goes out next (see the module docstring), or None."""
        message_ok = bool(self.message_queue) and self._has_consumer("message")
        event_ok = bool(self.event_queue) and self._has_consumer()
        if message_ok and (not event_ok or self.message_queue[0][0] < self.event_queue[0][0]):
            return self.message_queue
        if event_ok:
            return self.event_queue
        return None

    def _dispatch_loop(self):
        while not self.closed:
            queue = self._next_queue()
            if queue is None:
                self._wake.clear()
                self._wake.wait()
                continue
            item = queue.popleft()
            event = item[1]
            if not self._deliver(event):
                if not self.closed:
                    queue.appendleft(item)  # offered, but its iterator went away: keep it
                continue
            if event.type == "message":
                try:
                    self.store.delivered(event.data)
                except Exception:
                    log.exception("event=store_error op=delivered seq=%s", event.data.get("seq"))
        self.message_queue.clear()
        self.event_queue.clear()

    def _deliver(self, event):
        """Hand ``event`` to every callback and iterator that wants it.  -> False if it was
        offered to iterators only and none took it (it stays queued)."""
        handled = False
        for fn, wants_event in list(self.handlers.get(event.type, ())) + list(self.handlers.get("*", ())):
            handled = True
            try:
                fn(event if wants_event else event.data)
            except Exception:
                log.exception("event=handler_error type=%s handler=%r", event.type, fn)
        offered = False
        for subscriber in list(self.subscribers):
            if not subscriber.wants(event):
                continue
            offered = True
            subscriber.offer(event)
            gevent.wait([subscriber.done, self.closed_event], count=1)
            handled = handled or subscriber.taken
        return handled or not offered
