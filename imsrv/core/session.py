"""A live, authenticated (user, device) on a gateway, and the order its pushes go out in.

Sans-IO: a :class:`Session` writes to an injected connection (anything with ``send(obj)``,
``close_with(obj)``, ``closing`` and ``peer``; the gateway's Connection) and arms its gap
timer through an injected ``schedule(delay, fn) -> cancel`` (the gateway passes a gevent
one, tests a fake clock they advance by hand).  The hubs (imsrv.backends.memory,
imsrv.backends.redis_hub) read ``user``, ``device``, ``generation``, ``token_hash``,
``status``, ``text`` and call ``push``, ``own`` and ``kick``.
"""
from .. import logs

GAP_WAIT = 0.5  # seconds a missing seq may take to arrive before it is fetched from the inbox
_OWN = object()  # placeholder for a seq this device sent itself (it got the ack, not a push)


class Session:
    """A live, authenticated (user, device) on a gateway.

    Message pushes go out strictly in inbox-seq order (guarantee 3): a push that arrives
    ahead of a missing seq is held; if the gap does not fill within GAP_WAIT (a push lost
    or delayed by another forwarder), the missing entries are read from the inbox
    (``fetch(user, since, limit)`` -> msg push objects).  Without ``fetch`` or
    ``schedule`` a gap is only filled by :meth:`catch_up`.

    The session is reachable by pushes from the moment it is attached to the hub, before
    the auth reply is written, and the reply must be the first frame on the connection:
    until :meth:`start_at` (called once the reply is queued), other pushes and a kick wait
    in ``early``, in arrival order, and ``msg`` pushes in ``held``.
    """

    __slots__ = ("conn", "user", "device", "token_hash", "generation", "status", "text",
                 "next_seq", "held", "cancel_gap_timer", "fetch", "schedule", "early")

    def __init__(self, conn, user, device, token_hash, fetch=None, schedule=None):
        self.conn = conn
        self.user = user
        self.device = device
        self.token_hash = token_hash
        self.generation = 0
        self.status = "online"
        self.text = None
        self.next_seq = None  # unknown until auth has read the head: hold pushes until then
        self.held = {}
        self.cancel_gap_timer = None  # set while a gap timer is armed: calling it disarms it
        self.fetch = fetch        # fetch(user, since, limit) -> msg push objects, from the inbox
        self.schedule = schedule  # schedule(delay, fn) -> a function that cancels the timer
        self.early = []           # pushes (and a kick) that came before the auth reply went out

    def start_at(self, head):
        """The auth reply (with ``head``) is queued: send what waited for it, in order."""
        early, self.early = self.early, None
        self.next_seq = head + 1
        for seq in [s for s in self.held if s <= head]:
            del self.held[seq]
        for obj in early or ():
            if isinstance(obj, str):   # a kick: it ends the session, nothing after it
                self.kick(obj)
                return
            self.conn.send(obj)
        self._drain()

    def push(self, obj):
        if obj.get("op") == "msg":
            self._arrive(obj["seq"], obj)
        elif self.early is not None:
            self.early.append(obj)
        else:
            self.conn.send(obj)

    def own(self, seq):
        """This device sent inbox entry ``seq`` itself: skip it in the push order."""
        self._arrive(seq, _OWN)

    def _arrive(self, seq, obj):
        next_seq = self.next_seq
        if next_seq is not None:
            if seq < next_seq:
                return  # already delivered (a duplicate, or fetched from the inbox before)
            if seq == next_seq and not self.held:
                # the usual case, in order with nothing held (so no gap timer either)
                if obj is not _OWN:
                    self.conn.send(obj)
                self.next_seq = seq + 1
                return
        self.held[seq] = obj
        if self.next_seq is None:
            return  # auth has not read the head yet: start_at() drains
        if seq == self.next_seq:
            self._drain()
        elif self.cancel_gap_timer is None and self.fetch is not None:
            self._arm_gap_timer()

    def _arm_gap_timer(self):
        if self.schedule is not None:
            self.cancel_gap_timer = self.schedule(GAP_WAIT, self.fill_gap)

    def _drain(self):
        held = self.held
        while self.next_seq in held:
            obj = held.pop(self.next_seq)
            if obj is not _OWN:
                self.conn.send(obj)
            self.next_seq += 1
        if not held and self.cancel_gap_timer is not None:
            cancel, self.cancel_gap_timer = self.cancel_gap_timer, None
            cancel()

    def fill_gap(self):
        """The gap timer went off: read what is still missing from the inbox."""
        self.cancel_gap_timer = None
        if self.held and self.next_seq is not None and not self.conn.closing:
            self.catch_up(min(self.held) - self.next_seq)

    def catch_up(self, limit=1000):
        """Read what this device has not been pushed from the inbox (after a gap, or when
        the gateway may have lost pushes) and push it in order."""
        if self.next_seq is None or self.fetch is None:
            return
        for obj in self.fetch(self.user, self.next_seq - 1, max(1, limit)):
            if obj["seq"] >= self.next_seq and obj["seq"] not in self.held:
                self.held[obj["seq"]] = obj
        self._drain()
        if self.held and self.cancel_gap_timer is None:
            self._arm_gap_timer()

    def kick(self, reason):
        if self.early is not None:   # replaced before our auth reply went out: after it
            self.early.append(reason)
            return
        logs.info("kicked", user=self.user, device=self.device, reason=reason, addr=self.conn.peer)
        self.conn.close_with({"op": "kicked", "reason": reason})
