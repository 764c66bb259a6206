"""The API daemon's hook rows (distributed deployment): it stores the ``group_event``
entries and ``notify`` messages itself, not through a forwarder, so their after_send and
offline rows are written with them into the store's ``hook_queue`` table (the send
batch's transaction, as in the embedded server) and a greenlet moves them to the hooks'
Redis streams (imsrv/servers/hook_queue.py's StreamHooks deliver from there)."""
import time

import gevent
from gevent.event import Event

from .. import logs
from ..backends.redis_hooks import HookStreams
from ..backends.sql_hooks import SqlHookQueue
from ..core import hooks as H
from .hook_queue import _BACKEND_ERRORS, IDLE_WAIT, LOG_EVERY, RETRY


class ApiHooks:
    """The queued hooks of the API daemon (distributed), which stores the ``group_event``
    entries and ``notify`` messages: their rows go into the store's ``hook_queue`` table in
    the batch's own transaction (as in the embedded server), and a greenlet moves them to
    the hooks' Redis streams, where a forwarder delivers them: added to the stream, then
    deleted from the table, so a daemon that dies in between adds them again at its next
    start (at least once)."""

    def __init__(self, settings, store, redis, prefix):
        self.queue = SqlHookQueue(store, H.HookRows(settings).rows)
        store.hook_rows = self.queue.write   # rows in the send batch's transaction
        self.hooks = settings.queued
        self.streams = HookStreams(redis, prefix)
        self.batch = settings.batch
        self.wake = Event()
        self.stopped = Event()
        self.greenlet = None
        self._last_log = None

    # -- Messaging's hook_sink
    def stored(self, items, results):
        self.wake.set()

    def stored_before(self, mid):
        """A send found stored already: its rows were written with it."""

    # -- the mover
    def start(self):
        self.greenlet = gevent.spawn(self._loop)

    def stop(self, timeout=2.0):
        self.stopped.set()
        self.wake.set()
        if self.greenlet is not None:
            self.greenlet.join(timeout)
            self.greenlet.kill(block=False)

    def _loop(self):
        while not self.stopped.is_set():
            self.wake.clear()
            try:
                moved = self.move()
            except _BACKEND_ERRORS as exc:
                now = time.monotonic()
                if self._last_log is None or now - self._last_log >= LOG_EVERY:
                    self._last_log = now
                    logs.warning("hook_rows_not_moved", error=repr(exc))
                self.stopped.wait(RETRY)
                continue
            if not moved:
                self.wake.wait(IDLE_WAIT)

    def move(self):
        """Move up to a batch of rows of each hook from the table to its stream -> the
        number moved."""
        moved = 0
        for hook in self.hooks:
            rows = self.queue.take(hook, self.batch)
            if rows:
                self.streams.add_now([(hook, n, payload) for _, n, payload in rows])
                self.queue.delete([key for key, _, _ in rows])
                moved += len(rows)
        return moved


def api_hooks(cfg, store, redis):
    """ApiHooks of ``cfg`` or None (no after_send / offline hook)."""
    settings = H.HookSettings(cfg.hooks)
    return ApiHooks(settings, store, redis, cfg.cluster.redis_prefix) if settings.queued else None
