"""Busy senders and live watchers for the fault tests, and the checks run after a fault.

A :class:`Sender` is one thread holding one gateway connection of one user (device
``snd``): it sends 1:1 and group messages one after the other (message k+1 only once k is
acked), each with a cmid of its own (``<user>-<k>``), and records the ack it gets.  A send
that gets ``unavailable``, no reply in time, or a closed connection is NOT acked: it is sent
again with the SAME cmid (dedup makes it exactly once), reconnecting as needed (the
gateway it was on first, then the other), until it is acked or ``give_up`` seconds have
passed (then the sender fails).

A :class:`Watcher` is one thread holding a connection that only reads: it records every
``msg`` push it is given, per connection.

:func:`check_delivery` then reads every inbox from seq 0 on a fresh connection and checks
the delivery guarantees of PROTOCOL.md on what was acked:

- every inbox is gapless: seqs 1..head, no repeats (guarantee 1);
- every acked message is in the inbox of its sender and of every recipient, exactly once,
  and nothing else of these senders is (2, 4); the sender's entry is at the acked seq;
- the messages of one sender keep their send order in every inbox (5), and a sender's own
  acked seqs only go up (seq counters never go back);
- pushes on every live connection came in seq order, never twice, with no entry missing
  below the last one pushed (the device's own sends excepted: it got their ack), and
  what each device holds (pushes, acks, and a sync from its cursor after every connect,
  as a client does) has no hole (3).

Retries are recorded, not only done: every agent keeps ``retry_log`` [(monotonic time,
kind, cmid or None)], one entry per send tried again or connection (re)made after a
failure; :func:`retry_kinds` counts them per kind within a time window, and
:func:`check_retries` asserts that none happened before the fault and that those after it
are of the kinds the fault explains.  Kinds: ``unavailable`` / ``rate_limited`` (a send
refused with that code), ``Closed`` (the connection dropped under a send, no bye),
``bye:<reason>`` (the gateway said bye, then closed), ``FrameTimeout`` (no reply within
reply_timeout), ``ProtocolViolation``, ``connect:<exception>``, ``auth:<code>``,
``sync:<code or exception>`` (reconnecting), ``drop:<...>`` (a watcher's connection
ended: ``Closed`` or ``bye:<reason>``).
"""
import collections
import fnmatch
import itertools
import threading
import time

from harness.wire import Closed, FrameTimeout, ProtocolViolation

#: config for fault tests: no rate limit in the way of busy senders, short cluster timings
#: (a dead forwarder's work is claimed after 1 s; a send not stored within 4 s is refused
#: `unavailable` (a forwarder rolls back a transaction still open then); a send no
#: forwarder answered within 6 s gets bye overloaded, the outcome being unknown), short
#: shutdown drain
FAST_CLUSTER = {
    "limits": {
        "user_send_rate": 100000.0, "user_send_burst": 100000,
        "conn_rate": 100000.0, "conn_burst": 100000,
        "login_user_attempts": 100000, "login_addr_attempts": 100000,
        "login_user_global_attempts": 100000,
        "shutdown_grace": 2.0, "retry_after": 1.0,
    },
    "cluster": {"claim_idle": 1.0, "entry_ttl": 4.0, "send_timeout": 6.0, "load_report_every": 0.5},
}

RETRY_CODES = ("unavailable", "rate_limited")
BACKOFF = 0.1  # seconds between retries of a refused send or a failed connection attempt


class Conn:
    """What one connection of a sender or watcher saw: the gateway, the head at auth, and
    every msg push (seq, mid) in arrival order."""

    def __init__(self, gateway, head):
        self.gateway = gateway
        self.head = head
        self.pushed = []
        self.closed = None  # why it ended ("Closed", "FrameTimeout"...), None while live

    def __repr__(self):
        return f"<Conn gw{self.gateway} head={self.head} pushed={len(self.pushed)} closed={self.closed}>"


class _Connecting:
    """Gateway connection handling shared by Sender and Watcher."""

    device = "dev"

    def __init__(self, dep, user, gateway, reply_timeout):
        self.dep = dep
        self.user = user
        self.gateway = gateway            # index of the gateway to try first
        self.reply_timeout = reply_timeout
        self.client = None
        self.conn = None
        self.conns = []                   # every Conn, in order
        self.events = []                  # (monotonic time, what happened), for failure messages
        self.seen = {}                    # seq -> mid of every inbox entry this device holds
        self.cursor = 0                   # it holds every seq up to this one
        self.retry_log = []               # (monotonic time, kind, cmid or None): see retry_kinds
        self.stop_event = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._main, daemon=True, name=f"{type(self).__name__}-{user.name}")

    def note(self, what):
        self.events.append((round(time.monotonic(), 3), what))

    def retry_event(self, kind, cmid=None):
        """Record one retry (a send tried again, or a connection made again) of ``kind``."""
        self.retry_log.append((time.monotonic(), kind, cmid))

    @staticmethod
    def closed_kind(client, exc):
        """What ended a connection: ``bye:<reason>`` if the server said bye first, else the
        exception's name (``Closed``: a drop with no word)."""
        byes = [p for p in client.pushes if p.get("op") == "bye"]
        return f"bye:{byes[-1].get('reason')}" if byes else type(exc).__name__

    def _main(self):
        try:
            self.run()
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc
        finally:
            self._drop(None)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        """Ask the thread to finish (a sender finishes the message it is sending first)."""
        self.stop_event.set()

    def join(self, timeout):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self!r} still running after {timeout:g}s; events {self.events[-8:]}"
        if self.error is not None:
            raise AssertionError(f"{self!r} failed: {self.error!r}; events {self.events[-8:]}") from self.error

    def _connect(self, deadline):
        """A live authenticated connection, reconnecting as needed: the gateway it was on
        first, then the other, in turn."""
        if self.client is not None:
            return self.client
        n = len(self.dep.gateway_ports)
        order = itertools.count(self.gateway)
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.user.name}: no gateway took us before the deadline; events {self.events[-8:]}")
            i = next(order) % n
            c = None
            try:
                c = self.dep.gateway(timeout=self.reply_timeout, index=i)
                c.label = f"{self.user.name}/{self.device}@gw{i}"
                rep = c.request("auth", token=self.user.token, device=self.device)
            except (Closed, FrameTimeout, ProtocolViolation, OSError) as exc:
                self.note(f"connect gw{i}: {type(exc).__name__}")
                self.retry_event(f"connect:{type(exc).__name__}")
                if c is not None:
                    c.close()
                time.sleep(BACKOFF)
                continue
            if rep.get("op") != "ok":
                c.close()
                if rep.get("op") == "error" and rep.get("code") in RETRY_CODES:
                    self.note(f"auth gw{i}: {rep.get('code')}")
                    self.retry_event(f"auth:{rep.get('code')}")
                    time.sleep(BACKOFF)
                    continue
                raise AssertionError(f"{self.user.name}: auth on gw{i} answered {rep!r}")
            self.gateway = i
            self.client = c
            self.conn = Conn(i, rep["head"])
            self.conns.append(self.conn)
            self.note(f"connected gw{i} head={rep['head']}")
            why = self._sync()
            if why is None:
                return c
            self.retry_event(why.replace(": ", ":"))
            self._drop(why)
            time.sleep(BACKOFF)

    def _sync(self):
        """What a client does after auth: sync from the last seq it holds without a gap
        (its cursor).  -> None, or why it failed (the connection is then dropped)."""
        since = self.cursor
        try:
            while True:
                rep = self.client.request("sync", since=since, limit=1000)
                if rep.get("op") != "sync":
                    if rep.get("op") == "error" and rep.get("code") in RETRY_CODES:
                        return f"sync: {rep['code']}"
                    raise AssertionError(f"{self.user.name}: sync since {since} answered {rep!r:.300}")
                for m in rep["msgs"]:
                    self.saw(m["seq"], m["mid"])
                if not rep["more"]:
                    break
                assert rep["msgs"], f"sync said more but returned nothing: {rep!r:.300}"
                since = rep["msgs"][-1]["seq"]
        except (Closed, FrameTimeout, ProtocolViolation) as exc:
            return f"sync: {type(exc).__name__}"
        finally:
            if self.client is not None:
                self._collect()
        return None

    def saw(self, seq, mid):
        """This device holds inbox entry ``seq`` (pushed, synced, or its own acked send)."""
        prev = self.seen.setdefault(seq, mid)
        assert prev == mid, f"{self.user.name}: seq {seq} was {prev}, now {mid}"
        while self.cursor + 1 in self.seen:
            self.cursor += 1

    def _collect(self):
        """Move the msg pushes the client filed into the current Conn."""
        for p in self.client.take_pushes():
            if p.get("op") == "msg":
                self.conn.pushed.append((p["seq"], p["mid"]))
                self.saw(p["seq"], p["mid"])

    def _drop(self, why):
        if self.client is None:
            return
        try:
            self._collect()
        except Exception:
            pass
        self.client.close()
        self.client = None
        if why is not None:
            self.note(f"dropped gw{self.conn.gateway}: {why}")
        self.conn.closed = why or "finished"
        self.conn = None


class Sender(_Connecting):
    """Sends to ``targets`` ([("to", user name) or ("group", group id)], in turn) until
    stopped; ``acks`` holds (k, cmid, target, ack) in send order, ``acked_at`` the
    monotonic time each ack was read, ``sent_at`` {cmid: monotonic time of its first
    try}, ``refusals`` [(monotonic time, cmid, code, message)] every error reply."""

    device = "snd"

    def __init__(self, dep, user, targets, gateway=0, reply_timeout=15.0, give_up=45.0):
        super().__init__(dep, user, gateway, reply_timeout)
        self.targets = list(targets)
        self.give_up = give_up
        self.acks = []
        self.attempts = 0                 # sends written (first tries and retries)
        self.retried = {}                 # cmid -> why each retry happened
        self.refused_ms = {}              # cmid -> wall-clock ms of its last `unavailable`
        self.acked_at = []                # monotonic time of each ack, parallel to acks
        self.sent_at = {}                 # cmid -> monotonic time of its first try
        self.refusals = []                # (monotonic time, cmid, code, message) of each error reply
        self._progress = threading.Condition()

    def __repr__(self):
        return f"<Sender {self.user.name} acked={len(self.acks)}>"

    def run(self):
        for k in itertools.count(1):
            if self.stop_event.is_set():
                break
            self._send_until_acked(k)
        # Done sending: the ack of our last send can come before the pushes of entries
        # other senders stored just before it (another forwarder publishes those), so
        # hang up the way a client does, after a sync from our cursor.  check_pushes
        # still checks every push this connection did get.
        if self.client is not None:
            why = self._sync()
            if why is not None:
                self._drop(why)

    def _send_until_acked(self, k):
        cmid = f"{self.user.name}-{k}"
        kind, dest = target = self.targets[k % len(self.targets)]
        fields = {kind: dest, "body": {"from": self.user.name, "k": k}, "cmid": cmid}
        deadline = time.monotonic() + self.give_up
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"{cmid} not acked within {self.give_up:g}s: {self.retried.get(cmid)}")
            c = self._connect(deadline)
            self.attempts += 1
            self.sent_at.setdefault(cmid, time.monotonic())
            try:
                rid = c.send_request("send", **fields)
                reply = c.read_reply(rid, timeout=self.reply_timeout)
            except (Closed, FrameTimeout, ProtocolViolation) as exc:
                self._retry(cmid, type(exc).__name__, self.closed_kind(c, exc))
                self._drop(type(exc).__name__)
                continue
            finally:
                if self.client is not None:
                    self._collect()
            if reply.get("op") == "ack":
                self.saw(reply["seq"], reply["mid"])
                with self._progress:
                    self.acks.append((k, cmid, target, reply))
                    self.acked_at.append(time.monotonic())
                    self._progress.notify_all()
                return
            if reply.get("op") == "error":
                self.refusals.append((time.monotonic(), cmid, reply.get("code"), reply.get("message")))
            if reply.get("op") == "error" and reply.get("code") in RETRY_CODES:
                if reply["code"] == "unavailable":
                    self.refused_ms[cmid] = int(time.time() * 1000)
                self._retry(cmid, reply["code"])
                time.sleep(BACKOFF)
                continue
            raise AssertionError(f"{cmid} to {target}: unexpected reply {reply!r}")

    def _retry(self, cmid, why, kind=None):
        """``cmid`` will be sent again because of ``why`` (``retried`` and the events keep
        that; ``retry_log`` the finer ``kind``, e.g. ``bye:overloaded`` for a Closed)."""
        self.retried.setdefault(cmid, []).append(why)
        self.retry_event(kind or why, cmid)
        self.note(f"{cmid}: {why}")

    def ack_times(self):
        """[(cmid, monotonic time of its first try, of its ack)] in send order."""
        return [(cmid, self.sent_at[cmid], at) for (_, cmid, _, _), at in zip(self.acks, self.acked_at)]

    def wait_acks(self, n, timeout):
        """Wait until ``n`` messages in all are acked (or the sender failed)."""
        deadline = time.monotonic() + timeout
        with self._progress:
            while len(self.acks) < n and self.error is None and self.thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._progress.wait(min(left, 0.2))
        if self.error is not None:
            raise AssertionError(f"{self!r} failed: {self.error!r}; events {self.events[-8:]}") from self.error
        assert len(self.acks) >= n, f"{self!r}: {n} acks expected within {timeout:g}s; events {self.events[-8:]}"


class Watcher(_Connecting):
    """Reads pushes on one connection (device ``watch``) until stopped; reconnects after a
    close only if ``reconnect`` (else it stays closed: see ``conns[-1].closed``)."""

    device = "watch"

    def __init__(self, dep, user, gateway=0, reconnect=True, reply_timeout=10.0):
        super().__init__(dep, user, gateway, reply_timeout)
        self.reconnect = reconnect

    def __repr__(self):
        return f"<Watcher {self.user.name} conns={self.conns}>"

    def connect(self, timeout=20.0):
        """Connect now (in the caller's thread), before start()."""
        self._connect(time.monotonic() + timeout)
        return self

    def run(self):
        while not self.stop_event.is_set():
            if self.client is None:
                if not self.reconnect and self.conns:
                    return
                self._connect(time.monotonic() + 30.0)
            try:
                frame = self.client.read_frame(timeout=0.2)
            except FrameTimeout:
                continue
            except (Closed, ProtocolViolation) as exc:
                self.retry_event(f"drop:{self.closed_kind(self.client, exc)}")
                self._drop(type(exc).__name__)
                continue
            if frame.get("op") == "msg":
                self.conn.pushed.append((frame["seq"], frame["mid"]))
                self.saw(frame["seq"], frame["mid"])
            elif frame.get("op") in ("bye", "kicked"):
                self.client.pushes.append(frame)   # closed_kind() reads it
                self.note(f"{frame!r}")

    def caught_up(self, head):
        """Its live connection has everything up to ``head`` (pushed, or in the head it
        authenticated with)."""
        conn = self.conns[-1]
        last = conn.pushed[-1][0] if conn.pushed else 0
        return max(conn.head, last) >= head


# ----------------------------------------------------------------------------- checks
def start_all(agents):
    for a in agents:
        a.start()
    return agents


def stop_all(agents, timeout=60.0):
    """Stop every sender/watcher, wait for them (bounded), raise the first failure."""
    for a in agents:
        a.stop()
    deadline = time.monotonic() + timeout
    errors = []
    for a in agents:
        try:
            a.join(max(0.1, deadline - time.monotonic()))
        except AssertionError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def retry_kinds(agents, since=None, until=None):
    """Counter {kind: n} of the retries of ``agents`` made in [since, until) (monotonic
    times; None = unbounded)."""
    return collections.Counter(
        kind for a in agents for t, kind, _ in a.retry_log
        if (since is None or t >= since) and (until is None or t < until))


def check_retries(agents, fault_at, allowed):
    """Retries must not hide failures: none before ``fault_at`` (the healthy phase, traffic
    flowing before the fault), and after it only of the kinds in ``allowed`` (fnmatch
    patterns, e.g. ``connect:*``): the ones the fault explains.  -> (Counter before,
    Counter after)."""
    before = retry_kinds(agents, until=fault_at)
    after = retry_kinds(agents, since=fault_at)
    assert not before, f"retries before the fault, while all was healthy: {dict(before)}; " \
        f"events {[(a, a.events[-6:]) for a in agents if a.retry_log and a.retry_log[0][0] < fault_at][:3]}"
    unexplained = {k: n for k, n in after.items() if not any(fnmatch.fnmatchcase(k, pat) for pat in allowed)}
    assert not unexplained, f"retries the fault does not explain: {unexplained} (allowed {sorted(allowed)}," \
        f" all {dict(after)})"
    return before, after


def progress(senders, more, timeout):
    """Wait until every sender has ``more`` acks beyond what it has now."""
    marks = [(s, len(s.acks) + more) for s in senders]
    deadline = time.monotonic() + timeout
    for s, n in marks:
        s.wait_acks(n, max(0.1, deadline - time.monotonic()))


def read_inboxes(users, timeout=20.0):
    """{user name: [msgs]} read by sync from seq 0 on a fresh connection of each user
    (device ``check``), asserting seqs 1..head with no gap and no repeat."""
    out = {}
    for u in users:
        with u.connect(device="check", timeout=timeout) as c:
            msgs, head = c.sync_all(0, timeout=timeout)
        seqs = [m["seq"] for m in msgs]
        assert seqs == list(range(1, head + 1)), \
            f"inbox of {u.name}: head {head}, seqs not 1..head: {_gaps(seqs, head)}"
        out[u.name] = msgs
    return out


def _gaps(seqs, head):
    seen, dups = set(), []
    for s in seqs:
        if s in seen:
            dups.append(s)
        seen.add(s)
    missing = sorted(set(range(1, head + 1)) - seen)
    return f"{len(seqs)} entries, missing {missing[:20]}, repeated {dups[:20]}"


def check_delivery(senders, inboxes, members, watchers=(), stats=None):
    """Check what the senders had acked against ``inboxes`` (from read_inboxes);
    ``members`` = {group id: [user names]}.  -> the number of acked messages.  ``stats``
    (a dict, optional) gets ``refused_then_acked``: the cmids answered `unavailable` and
    acked later, whose ack ts was compared with the refusal."""
    names = {s.user.name for s in senders}
    expected = {u: {} for u in inboxes}   # recipient -> {(sender, cmid): (k, mid)}
    own = {}                              # user -> set of seqs acked to that user's sends
    compared = []                         # cmids refused `unavailable`, then acked
    total = 0
    for s in senders:
        me = s.user.name
        seqs = [ack["seq"] for _, _, _, ack in s.acks]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), \
            f"{me}: own acked seqs went back or repeated: {seqs[:60]}"
        own[me] = set(seqs)
        by_seq = {m["seq"]: m for m in inboxes[me]}
        for k, cmid, (kind, dest), ack in s.acks:
            total += 1
            # `unavailable` means nothing was stored (PROTOCOL.md): the copy that was
            # finally stored is a retry made after the refusal, so its server-assigned ts
            # is not older than the refusal (same machine, same clock; 1 ms of rounding)
            refused = s.refused_ms.get(cmid)
            if refused is not None:
                assert ack["ts"] >= refused - 1, \
                    f"{me}: {cmid} was answered unavailable at {refused} but stored at ts {ack['ts']}"
                compared.append(cmid)
            entry = by_seq.get(ack["seq"])
            assert entry is not None and entry["mid"] == ack["mid"], \
                f"{me}: acked {cmid} {ack!r} is not at seq {ack['seq']} of its own inbox: {entry!r}"
            recipients = set(members[dest]) if kind == "group" else {me, dest}
            for r in recipients | {me}:
                if r in expected:
                    expected[r][(me, cmid)] = (k, ack["mid"])
    for user, msgs in inboxes.items():
        got = {}
        for m in msgs:
            if m["from"] not in names or m.get("kind"):   # group_event entries (v1.1) are not sends
                continue
            key = (m["from"], m.get("cmid"))
            assert key not in got, f"inbox of {user}: {key} stored twice (seqs {got.get(key)} and {m['seq']})"
            got[key] = (m["body"]["k"], m["mid"], m["seq"])
        want = expected[user]
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        assert not missing, f"inbox of {user}: {len(missing)} acked messages missing, e.g. {missing[:10]}"
        assert not extra, f"inbox of {user}: {len(extra)} messages nobody acked, e.g. {extra[:10]}"
        for key, (k, mid) in want.items():
            assert got[key][:2] == (k, mid), f"inbox of {user}: {key} is {got[key]}, acked as k={k} mid={mid}"
        for sender in names:
            ks = [got[key][0] for key in sorted((x for x in got if x[0] == sender), key=lambda x: got[x][2])]
            assert ks == sorted(ks), f"inbox of {user}: messages of {sender} out of send order: {ks[:60]}"
    for agent in list(senders) + list(watchers):
        me = agent.user.name
        mids = {m["seq"]: m["mid"] for m in inboxes[me]}
        for conn in agent.conns:
            check_pushes(me, conn, mids, own.get(me, set()))
        # what the device holds (pushes, syncs after each connect, acks) has no hole and
        # matches the inbox: sync from its cursor gave it what the pushes missed
        top = max(agent.seen, default=0)
        holes = sorted(set(range(1, top + 1)) - set(agent.seen))
        assert not holes, f"{me} ({agent.device}): holds up to seq {top} but never got {holes[:20]}"
        wrong = [seq for seq, mid in agent.seen.items() if mids.get(seq) != mid]
        assert not wrong, f"{me} ({agent.device}): seqs {wrong[:20]} differ from the inbox"
    if stats is not None:
        stats["refused_then_acked"] = compared
    return total


def check_pushes(user, conn, mids, own_seqs):
    """Pushes of one connection: in seq order, each once, matching the inbox, and none
    missing below the last one pushed (this user's own acked sends excepted)."""
    seqs = [s for s, _ in conn.pushed]
    assert all(a < b for a, b in zip(seqs, seqs[1:])), \
        f"{user} {conn!r}: pushes out of order or repeated: {seqs[:80]}"
    assert not seqs or seqs[0] > conn.head, f"{user} {conn!r}: pushed seq {seqs[0]} <= head at auth"
    for seq, mid in conn.pushed:
        assert mids.get(seq) == mid, f"{user} {conn!r}: pushed seq {seq} mid {mid}, inbox has {mids.get(seq)}"
    if seqs:
        missed = sorted(set(range(conn.head + 1, seqs[-1] + 1)) - set(seqs) - own_seqs)
        assert not missed, f"{user} {conn!r}: never pushed {missed[:20]} (below the last push {seqs[-1]})"


def wait_watchers_caught_up(watchers, inboxes, timeout=15.0):
    """Wait until each running watcher's live connection was pushed its whole inbox (as
    read by read_inboxes once the senders stopped)."""
    deadline = time.monotonic() + timeout
    for w in watchers:
        head = len(inboxes[w.user.name])
        while not w.caught_up(head):
            assert w.thread.is_alive() and w.error is None, f"{w!r} ended: {w.error!r}; events {w.events[-8:]}"
            assert time.monotonic() < deadline, f"{w!r}: inbox head {head} not pushed after {timeout:g}s"
            time.sleep(0.05)
