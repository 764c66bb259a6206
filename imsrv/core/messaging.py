"""Messages: the send pipeline (dedup, policy, seqs, store, ack, push), sync, history, receipts.

:meth:`Messaging.process_batch` is the forwarder's job: it takes a batch of send/notify
requests, stores all the messages that pass in ONE store transaction, and only then
returns acks and pushes the messages to the recipients' live sessions.  An exception from
the store fails the whole batch with ``unavailable`` and stores nothing.
"""
from .. import jsonlib, logs
from ..backends.base import DuplicateKey, OutcomeUnknown, StoreError
from ..protocol.errors import BadRequest, ImError, NotFound, Unavailable
from ..protocol.fields import MAX_BODY_BYTES
from .accounts import now_ms
from .policy import conv_key, group_conv

SYSTEM = "system"
IMPLICIT = "!"  # prefix of server-made dedup keys; a client cmid is stored as JSON text


def encode_body(body):
    """-> JSON text of a message body; BadRequest if it is over the 16 KiB limit."""
    try:
        raw = jsonlib.dumps(body)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"field 'body': cannot be encoded as JSON ({exc})") from None
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"field 'body': {len(raw)} bytes encoded, more than {MAX_BODY_BYTES}")
    return raw.decode("utf-8")


def ack(mid, seq, ts):
    """The reply to a stored send (and the ack a forwarder sends its gateway)."""
    return {"op": "ack", "mid": mid, "seq": seq, "ts": ts}


def ack_of_dedup(record):
    """The first ack of a send stored before, from its dedup record."""
    return ack(record["mid"], record["seq"], record["ts"])


class SendRequest:
    """One queued send or notify, with the slot its result goes to."""

    __slots__ = ("sender", "session", "to", "group", "body", "body_json", "cmid", "notify_to", "result", "rid",
                 "implicit")

    def __init__(self, sender, body, body_json, to=None, group=None, cmid=None, session=None, notify_to=None):
        self.sender = sender
        self.session = session      # the sending session: gets the ack, not a push
        self.to = to
        self.group = group
        self.body = body
        self.body_json = body_json
        self.cmid = cmid
        self.notify_to = notify_to  # list of users, for admin notify
        self.result = None          # reply dict or ImError, set by process_batch
        self.rid = None             # the request id to echo in the reply
        # a dedup key for sends without a cmid (made from the ingress entry's gateway and
        # key in the distributed deployment), so a send re-run after a forwarder crash is
        # stored once; never shown
        self.implicit = None


def message_obj(rec, body=None):
    """Build the `msg` push / sync entry from a message record."""
    m = {"op": "msg", "seq": rec["seq"], "mid": rec["mid"], "from": rec["from"]}
    if rec.get("group") is not None:
        m["group"] = rec["group"]
    else:
        m["to"] = rec["to"]
    m["body"] = jsonlib.loads(rec["body"]) if body is None else body
    m["ts"] = rec["ts"]
    cmid = rec.get("cmid")
    if cmid is not None and not cmid.startswith(IMPLICIT):
        m["cmid"] = jsonlib.loads(cmid)
    return m


class Messaging:
    def __init__(self, store, hub, policy, max_reply_bytes=65536):
        self.store = store
        self.hub = hub
        self.policy = policy
        # sync/history replies are cut so their frame stays within the peer's max_frame
        self.max_reply_bytes = max_reply_bytes

    # ------------------------------------------------------------------ the send pipeline
    def process_batch(self, reqs, deadline=None, _second_try=False):
        """Store every acceptable request of ``reqs`` in one transaction; set each .result.
        ``deadline`` (time.monotonic()): past it at commit time, nothing is stored and every
        request gets `unavailable` (its sender is being told so; see the forwarder)."""
        items = []      # store items
        owners = []     # (req, index into items, count) for stored requests
        seen = {}       # (sender, cmid_json) -> req first seen in this batch
        dups = []       # (req, first_req) in-batch duplicates
        members_cache = {}
        # one batched lookup each for dedup records and 1:1 policy, not two per message
        keys = [self.dedup_key(req) for req in reqs]
        try:
            known_dedup = self.store.get_dedups([(r.sender, k) for r, k in zip(reqs, keys) if k is not None])
            known = self.policy.prefetch([(r.sender, r.to) for r in reqs
                                          if r.to is not None and r.notify_to is None])
        except StoreError as exc:
            logs.warning("store_unavailable", op="send", stage="lookup", requests=len(reqs), error=repr(exc))
            err = Unavailable(f"message store unavailable: {exc}")
            for req in reqs:
                req.result = err
            return
        for req, cmid_json in zip(reqs, keys):
            try:
                if cmid_json is not None:
                    key = (req.sender, cmid_json)
                    if key in seen:
                        dups.append((req, seen[key]))
                        continue
                    prev = known_dedup.get(key)
                    if prev is not None:
                        req.result = ack_of_dedup(prev)
                        continue
                    seen[key] = req
                start = len(items)
                ts = now_ms()
                if req.notify_to is not None:
                    found = self.store.existing_users(req.notify_to)
                    for u in req.notify_to:
                        if u not in found:
                            raise NotFound(f"no such user {u!r}")
                    for u in req.notify_to:
                        items.append({"sender": SYSTEM, "to": u, "group": None, "conv": conv_key(SYSTEM, u),
                                      "body": req.body_json, "ts": ts, "cmid": None, "recipients": [u]})
                elif req.group is not None:
                    members = members_cache.get(req.group)
                    if members is None:
                        self.policy.require_member(req.group, req.sender)
                        members = members_cache[req.group] = self.store.list_members(req.group)
                    elif req.sender not in members:
                        self.policy.require_member(req.group, req.sender)
                    items.append({"sender": req.sender, "to": None, "group": req.group,
                                  "conv": group_conv(req.group), "body": req.body_json, "ts": ts,
                                  "cmid": cmid_json, "recipients": members})
                else:
                    self.policy.check_direct(req.sender, req.to, known)
                    recipients = [req.to] if req.to == req.sender else [req.to, req.sender]
                    items.append({"sender": req.sender, "to": req.to, "group": None,
                                  "conv": conv_key(req.sender, req.to), "body": req.body_json, "ts": ts,
                                  "cmid": cmid_json, "recipients": recipients})
                owners.append((req, start, len(items) - start))
            except (ImError, StoreError) as exc:
                # a lookup (members, existing users, relations) failed: this request gets
                # `unavailable` and nothing of it is stored; the rest of the batch goes on
                req.result = exc if isinstance(exc, ImError) else Unavailable(f"message store unavailable: {exc}")
                if cmid_json is not None:
                    seen.pop((req.sender, cmid_json), None)
        if items:
            try:
                stored = self.store.store_messages(items, deadline)
            except DuplicateKey:
                if _second_try:
                    raise
                # A dedup record committed by someone else since our lookup: in the
                # distributed deployment, a forwarder that took this entry over while its
                # first reader was still storing it.  Nothing of ours was stored; run the
                # batch again, and the lookup now answers that send with its first ack.
                # (Answering `unavailable` instead would be a lie: the send IS stored.)
                for req in reqs:
                    req.result = None
                return self.process_batch(reqs, deadline, _second_try=True)
            except OutcomeUnknown:
                raise   # stored or not: the caller finds out later, it must not answer now
            except StoreError as exc:
                logs.warning("store_unavailable", op="send", stage="store", requests=len(reqs), error=repr(exc))
                err = Unavailable(f"message store unavailable: {exc}")
                for req, _, _ in owners:
                    req.result = err
                for req, _ in dups:
                    req.result = err
                return
            with self.hub.batch():
                self._ack_and_push(items, stored, owners)
        for req, first in dups:
            req.result = first.result

    def answer_late(self, reqs):
        """Sends that waited too long for a forwarder: their gateway answers `unavailable`
        ("nothing was stored") at its send timeout, so nothing new may be stored for them.
        A send that an earlier forwarder stored already (before dying, or in a COMMIT whose
        outcome it never learnt) still gets its first ack; the others `unavailable`.
        OutcomeUnknown when the lookup fails: we cannot say which (the caller must not
        answer them now)."""
        for req in reqs:
            try:
                # settled: waits for a forwarder still inside the COMMIT of this send
                prev = self.store.get_dedup(req.sender, self.dedup_key(req), settled=True)
            except StoreError as exc:
                raise OutcomeUnknown(f"dedup lookup failed: {exc}") from exc
            req.result = (ack_of_dedup(prev) if prev
                          else Unavailable("the send waited too long for a forwarder; nothing was stored"))

    @staticmethod
    def dedup_key(req):
        """The dedup record key of a send: its cmid as JSON text, or the implicit key."""
        if req.cmid is not None:
            return jsonlib.dumps(req.cmid).decode("utf-8")
        if req.implicit is not None:
            return IMPLICIT + req.implicit
        return None

    def _ack_and_push(self, items, stored, owners):
        for req, start, count in owners:
            if req.notify_to is not None:
                seqs = {}
                for i in range(start, start + count):
                    seqs.update(stored[i]["seqs"])
                req.result = {"seqs": seqs}
            else:
                r = stored[start]
                req.result = ack(r["mid"], r["seqs"].get(req.sender, 0), r["ts"])
            for i in range(start, start + count):
                self._push(items[i], stored[i], req)

    def _push(self, item, stored, req):
        base = {"op": "msg", "seq": 0, "mid": stored["mid"], "from": item["sender"]}
        if item["group"] is not None:
            base["group"] = item["group"]
        else:
            base["to"] = item["to"]
        base["body"] = req.body
        base["ts"] = stored["ts"]
        if req.cmid is not None:
            base["cmid"] = req.cmid
        for user, seq in stored["seqs"].items():
            m = dict(base)
            m["seq"] = seq
            self.hub.push(user, m, skip=req.session if user == req.sender else None)

    # ------------------------------------------------------------------ reading
    def fetch(self, user, since, limit):
        """`msg` push objects of user's inbox after ``since`` (gap filling, catch-up)."""
        return [message_obj(r) for r in self.store.inbox_since(user, since, limit)]

    def _fit(self, msgs, overhead=128):
        """Keep the longest prefix of msgs whose encoding fits in max_reply_bytes."""
        budget = self.max_reply_bytes - overhead
        size = 0
        for i, m in enumerate(msgs):
            size += len(jsonlib.dumps(m)) + 1
            if size > budget and i > 0:
                return msgs[:i]
        return msgs

    def sync(self, user, since, limit):
        head = self.store.head(user)
        recs = self.store.inbox_since(user, since, limit) if since < head else []
        msgs = self._fit([message_obj(r) for r in recs])
        for m in msgs:
            del m["op"]
        last = msgs[-1]["seq"] if msgs else since
        return {"op": "sync", "msgs": msgs, "head": head, "more": last < head}

    def history(self, user, with_=None, group=None, before=None, limit=50):
        if group is not None:
            self.policy.require_member(group, user)
            conv = group_conv(group)
        else:
            if with_ != SYSTEM and with_ != user:
                self.policy.require_exists(with_, deleted_ok=True)
            conv = conv_key(user, with_)
        recs = self.store.history(user, conv, before, limit)
        msgs = self._fit([message_obj(r) for r in recs])
        for m in msgs:
            del m["op"]
        return {"msgs": msgs}

    def read(self, user, session, with_=None, group=None, seq=0):
        recs = self.store.inbox_since(user, seq - 1, 1) if seq > 0 else []
        if not recs or recs[0]["seq"] != seq:
            raise NotFound(f"no message with seq {seq} in the inbox of {user!r}")
        rec = recs[0]
        receipt = {"op": "receipt", "from": user, "seq": seq, "mid": rec["mid"]}
        if group is not None:
            if rec.get("group") != group:
                raise BadRequest(f"field 'seq': message {seq} is not in group {group!r}")
            receipt["group"] = group
            targets = [m for m in self.store.list_members(group) if m != user]
        else:
            if conv_key(user, with_) != conv_key(rec["from"], rec["to"] or rec["from"]) or rec.get("group"):
                raise BadRequest(f"field 'seq': message {seq} is not in the conversation with {with_!r}")
            receipt["with"] = with_
            targets = [] if with_ == user or self.store.blocked_either(user, with_) else [with_]
        for t in targets:
            self.hub.push(t, receipt)
        self.hub.push(user, receipt, skip=session)  # the reader's other devices
        return {}
