"""The in-process forwarder of the embedded server: the core's send path there
(imsrv.core.interfaces.SendPath).

Gateways and the API call :meth:`LocalForwarder.forward` with a list of SendRequests; one
greenlet takes everything queued since its last round (up to ``max_batch`` requests) and
runs the core's :meth:`Messaging.process_batch` on it (given to :meth:`start`): one store
transaction per round, however many connections sent meanwhile.  FIFO, single consumer:
per-sender order is kept.  Each round's size and seconds go to ``stats`` (the
imsrv_store_batch_* histograms of /metrics).
"""
import time
from collections import deque

import gevent
from gevent.event import Event

from .. import logs
from ..metrics import BatchStats
from ..protocol.errors import Internal, Unavailable


class LocalForwarder:
    def __init__(self, max_batch=512):
        self.process_batch = None   # the core's Messaging.process_batch, given to start()
        self.max_batch = max_batch
        self.pending = deque()   # (reqs, done Event)
        self.wake = Event()
        self.stopping = False
        self.greenlet = None
        self.batches = 0
        self.messages = 0
        self.stats = BatchStats()

    def start(self, process_batch):
        """Start storing: ``process_batch(reqs)`` stores a batch and sets each result."""
        self.process_batch = process_batch
        self.greenlet = gevent.spawn(self._loop)

    def forward(self, reqs):
        """Queue reqs and block (this greenlet only) until each has its .result."""
        if self.greenlet is None or self.greenlet.dead:
            err = Unavailable("message forwarder is not running")
            for r in reqs:
                r.result = err
            return
        done = Event()
        self.pending.append((reqs, done))
        self.wake.set()
        done.wait()

    def queued(self):
        """Send requests waiting for a round (read by /metrics)."""
        return sum(len(reqs) for reqs, _ in self.pending)

    def _take(self):
        batch, waiters = [], []
        while self.pending and len(batch) < self.max_batch:
            reqs, done = self.pending.popleft()
            batch.extend(reqs)
            waiters.append(done)
        return batch, waiters

    def _loop(self):
        while True:
            self.wake.wait()
            self.wake.clear()
            while self.pending:
                batch, waiters = self._take()
                started = time.perf_counter()
                try:
                    self.process_batch(batch)
                except Exception as exc:  # a bug: fail this batch loudly, keep serving
                    logs.exception("internal_error", exc, service="forwarder", batch=len(batch))
                    err = Internal("internal error storing the message")
                    for r in batch:
                        if r.result is None:
                            r.result = err
                self.stats.observe(len(batch), time.perf_counter() - started)
                self.batches += 1
                self.messages += len(batch)
                for done in waiters:
                    done.set()
                gevent.sleep(0)  # let the woken senders reply before the next round
            if self.stopping and not self.pending:
                return

    def stop(self, timeout=10):
        """Finish what is queued, then end the loop."""
        self.stopping = True
        self.wake.set()
        if self.greenlet is not None:
            self.greenlet.join(timeout=timeout)
