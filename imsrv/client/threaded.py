"""Using the SDK from threads: :class:`ThreadedClient`.

A :class:`~imsrv.client.Client` lives in one thread's gevent hub: its greenlets (reader,
heartbeat, reconnect, dispatcher) only run while that thread runs its hub.  Programs that
use plain threads and never monkey-patch should not call a Client from several threads.
:class:`ThreadedClient` does the right thing for them: it starts a thread that owns a
Client (and a hub that runs all the time), and every method call made from any other
thread is carried over to that thread and its result (or exception) carried back.

    tc = ThreadedClient(api="127.0.0.1:7001", device="worker", store="worker.db")
    tc.login("alice", "secret-password")
    tc.send("bob", {"text": "hi"})               # from any thread; returns the ack
    for msg in tc.messages(timeout=30):           # a blocking iterator for a thread
        print(msg["from"], msg["body"])
    tc.close()

``events()`` / ``messages()`` keep the exactly-once rule: a message counts as delivered
when the consuming thread comes back for the next one (or leaves the loop).  Callbacks
registered with ``on()`` run in the client's thread: keep them short, or hand work to
your own queue.
"""
import concurrent.futures
import queue
import threading

import gevent
from gevent.event import Event as GEvent

from .client import Client
from .errors import ClientClosed
from .events import Subscription

_CLOSED = object()


class _ThreadSubscriber(Subscription):
    """The dispatcher side lives in the client's thread; the consumer in another."""

    def __init__(self, types, loop):
        super().__init__(types)
        self.queue = queue.Queue()
        self.done = GEvent()     # set in the client's thread (via run_callback_threadsafe)
        self._loop = loop

    def offer(self, event):
        self.done.clear()
        self.taken = False
        self.queue.put(event)

    def mark_done(self):
        try:
            self._loop.run_callback_threadsafe(self.done.set)
        except Exception:
            pass  # the client's hub is gone


class ThreadedClient:
    """A Client running in its own thread; the same methods, callable from any thread.
    Takes the same arguments as :class:`~imsrv.client.Client`."""

    def __init__(self, *args, **kwargs):
        self._ready = threading.Event()
        self._init_error = None
        self._client = None
        self._hub = None
        self._subs = []
        self._closed = False
        self._thread = threading.Thread(target=self._main, args=(args, kwargs), daemon=True,
                                        name="imsrv-client")
        self._thread.start()
        self._ready.wait()
        if self._init_error is not None:
            raise self._init_error

    def _main(self, args, kwargs):
        try:
            self._hub = gevent.get_hub()
            self._stop = GEvent()
            self._client = Client(*args, **kwargs)
        except BaseException as exc:
            self._init_error = exc
            self._ready.set()
            return
        # A started (referenced) async watcher keeps this hub's loop alive while it
        # waits for calls from other threads (which arrive via run_callback_threadsafe).
        keepalive = self._hub.loop.async_()
        keepalive.start(lambda: None)
        self._ready.set()
        try:
            self._stop.wait()
        finally:
            keepalive.stop()
            keepalive.close()

    def _run(self, fn, *args, **kwargs):
        """Run fn(*args, **kwargs) in the client's thread; return/raise its outcome."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        if not self._thread.is_alive():
            raise ClientClosed("the client thread has ended")
        fut = concurrent.futures.Future()

        def call():
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # carried back to the calling thread
                fut.set_exception(exc)

        self._hub.loop.run_callback_threadsafe(gevent.spawn, call)
        return fut.result()

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if callable(attr):
            def proxy(*args, **kwargs):
                return self._run(attr, *args, **kwargs)
            proxy.__name__ = name
            proxy.__doc__ = getattr(attr, "__doc__", None)
            return proxy
        return attr

    def events(self, types=None, timeout=None):
        """Blocking iterator for a thread (see Client.events)."""
        sub = _ThreadSubscriber(types, self._hub.loop)
        self._subs.append(sub)
        self._run(self._client._add_subscriber, sub)
        try:
            while True:
                try:
                    event = sub.queue.get(timeout=timeout)
                except queue.Empty:
                    return
                if event is _CLOSED:
                    return
                sub.taken = True
                yield event
                sub.mark_done()
        finally:
            sub.closed = True
            if sub in self._subs:
                self._subs.remove(sub)
            if not self._closed and self._thread.is_alive():
                self._run(self._client._remove_subscriber, sub)
            sub.mark_done()

    def messages(self, timeout=None):
        for event in self.events(("message",), timeout=timeout):
            yield event.data

    def close(self):
        """Close the client and end its thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._client.close)
        finally:
            for sub in list(self._subs):
                sub.queue.put(_CLOSED)
            if self._thread.is_alive():
                self._hub.loop.run_callback_threadsafe(self._stop.set)
                self._thread.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
