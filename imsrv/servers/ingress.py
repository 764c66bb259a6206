"""A distributed gateway's send path (imsrv.core.interfaces.SendPath): the sends go out as
entries of the Redis ingress stream, their acks come back on the gateway's channel (the
messages: imsrv/protocol/cluster.py).

``forward`` blocks the calling greenlet (one connection's) until the ack of its entry
arrives (:meth:`IngressSendPath.on_ack`, called by the gateway's channel subscriber) or
``cluster.send_timeout`` passes: then the sends' outcome is unknown (a forwarder may store
them yet), never `unavailable` ("nothing was stored") unless the entry surely never
reached Redis.
"""
import itertools
import os
import time

import redis
from gevent.event import Event

from .. import logs
from ..backends.base import OutcomeUnknown
from ..protocol import cluster
from ..protocol.errors import ImError, Unavailable


def _never_sent(exc):
    """True when a redis-py error says the command never left this process: the
    connection could not even be made (``Error 111 connecting to ...``)."""
    return isinstance(exc, redis.ConnectionError) and " connecting to " in str(exc)


class WaitingForward:
    """One forward() call waiting for its ack: its requests, its ingress entry (the stream
    fields, and the entry id Redis gave it), and the Event the ack sets."""

    __slots__ = ("reqs", "fields", "entry_id", "started", "done")

    def __init__(self, reqs, fields):
        self.reqs = reqs
        self.fields = fields
        self.entry_id = None
        self.started = time.monotonic()
        self.done = Event()


class IngressSendPath:
    """``stream``: the ingress stream's key; ``gateway_id``: ours (the forwarders publish
    the acks on our channel); ``cluster_cfg``: the [cluster] config section."""

    def __init__(self, redis_client, stream, gateway_id, cluster_cfg):
        self.redis = redis_client
        self.stream = stream
        self.gateway_id = gateway_id
        self.send_timeout = cluster_cfg.send_timeout
        self.entry_ttl = cluster_cfg.entry_ttl
        self.waiting = {}  # forward key -> WaitingForward
        self.counter = itertools.count(1)
        self.run = f"{os.getpid()}.{int(time.time() * 1000)}"  # this run of the gateway

    def forward(self, reqs):
        """Hand ``reqs`` (the consecutive sends of one read of one connection) to the
        forwarders as ONE ingress entry, and wait for its ack.

        One entry, not one per send: forwarders read the stream concurrently, so separate
        entries could be split between two forwarders and stored in either order, breaking
        the send order of pipelined sends (guarantee 5).  One entry is stored by one
        forwarder, in one batch, in order."""
        key = f"{self.run}.{next(self.counter)}"
        waiting = WaitingForward(reqs, cluster.encode_ingress_entry(self.gateway_id, key, reqs))
        self.waiting[key] = waiting
        outcome = None
        try:
            waiting.entry_id = self.redis.xadd(self.stream, waiting.fields)
            if not waiting.done.wait(timeout=self.send_timeout):
                outcome = OutcomeUnknown(f"no forwarder answered within {self.send_timeout:g}s")
        except redis.RedisError as exc:
            logs.warning("ingress_unavailable", gateway=self.gateway_id, error=repr(exc))
            if _never_sent(exc):
                outcome = Unavailable("the message queue (Redis) is unavailable; nothing was stored")
            else:   # the XADD may have reached Redis: a forwarder may store it yet
                outcome = OutcomeUnknown(f"adding to the ingress stream failed: {exc!r}")
        finally:
            self.waiting.pop(key, None)
            for req in reqs:
                if req.result is None:
                    req.result = outcome or OutcomeUnknown("no answer")

    def on_ack(self, msg):
        """An ack message from our channel: the results of one entry's sends."""
        waiting = self.waiting.pop(msg["key"], None)
        if waiting is None:
            return  # we gave up on it already (or restarted), or a copy was acked first
        for req, result in zip(waiting.reqs, msg["results"]):
            req.result = result = cluster.result_from_wire(result)
            if not isinstance(result, ImError) and req.session is not None and "seq" in result:
                req.session.own(result["seq"])
        waiting.done.set()

    def readd_waiting(self):
        """After our subscription was cut: the acks of the sends we wait for may have been
        published meanwhile (lost), or their ingress entries lost with Redis.  Add each one
        that is no longer in the stream again, so it is answered now instead of at
        send_timeout.  Safe: the copy carries the same key, so a forwarder stores each send
        once (cmid, or the implicit dedup key made from the key) and answers a send stored
        already with its first ack.  Only while a forwarder can still store the copy before
        we give up (the copy is fresh for entry_ttl more seconds)."""
        latest = time.monotonic() - max(0.0, self.send_timeout - self.entry_ttl)
        readded = 0
        for waiting in list(self.waiting.values()):
            if waiting.entry_id is None or waiting.started < latest or waiting.done.is_set():
                continue
            try:
                if self.redis.xrange(self.stream, waiting.entry_id, waiting.entry_id):
                    continue  # still queued (or pending in a forwarder): its ack will come
                waiting.entry_id = self.redis.xadd(self.stream, waiting.fields)
                readded += 1
            except redis.RedisError as exc:
                logs.warning("sends_not_readded", gateway=self.gateway_id, error=repr(exc))
                return
        if readded:
            logs.info("sends_readded", gateway=self.gateway_id, entries=readded)
