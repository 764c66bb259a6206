"""Messages: the send pipeline (dedup, policy, seqs, store, ack, push), sync, history, receipts.

:meth:`Messaging.process_batch` is the forwarder's job: it takes a batch of send/notify
requests (and the v1.1 entries with a kind: recall, edit, reaction, group_event), stores
all the entries that pass in ONE store transaction, and only then returns acks and pushes
them to the recipients' live sessions.  An exception from the store fails the whole batch
with ``unavailable`` and stores nothing.  Who may do what, and each kind's store item:
imsrv/core/entries.py.
"""
from .. import jsonlib, logs
from ..backends.base import DuplicateKey, OutcomeUnknown, StoreError
from ..protocol.errors import BadRequest, ImError, NotFound, Unavailable
from . import entries
from .accounts import now_ms
from .entries import CHANGE_KINDS, GROUP_EVENT, RECALL, SYSTEM
from .msgs import (IMPLICIT, SendRequest, ack, ack_of_dedup, add_entry_fields, encode_body, history_obj,
                   message_obj)
from .policy import conv_key, group_conv

__all__ = ["IMPLICIT", "SYSTEM", "Messaging", "SendRequest", "ack", "encode_body", "history_obj", "message_obj"]


class Messaging:
    def handlers(self):
        """{op: fn(who, args)} of the protocol v1.1 ops this area answers (see App)."""
        return {}

    def __init__(self, store, hub, policy, max_reply_bytes=65536, recall_window=120, edit_window=86400):
        self.store = store
        self.hub = hub
        self.policy = policy
        # sync/history replies are cut so their frame stays within the peer's max_frame
        self.max_reply_bytes = max_reply_bytes
        self.changes = entries.ChangeRules(policy, recall_window, edit_window)
        # the after_send / offline queues (imsrv/servers/hook_queue.py), set by the server
        # when one is on: ``stored(items, results)`` after each stored batch,
        # ``stored_before(mid)`` for each send found stored already (dedup)
        self.hook_sink = None

    # ------------------------------------------------------------------ the send pipeline
    def process_batch(self, reqs, deadline=None, _second_try=False):
        """Store every acceptable request of ``reqs`` in one transaction; set each .result.
        ``deadline`` (time.monotonic()): past it at commit time, nothing is stored and every
        request gets `unavailable` (its sender is being told so; see the forwarder)."""
        items = []      # store items
        owners = []     # (req, index into items, count) for stored requests
        seen = {}       # (sender, cmid_json) -> req first seen in this batch
        dups = []       # (req, first_req) in-batch duplicates
        recalled = set()    # mids recalled by items of this batch
        # one batched lookup each for dedup records, referred messages, 1:1 policy and
        # group states, not one per message (imsrv/core/entries.py)
        keys = [self.dedup_key(req) for req in reqs]
        try:
            lk = entries.lookup(self.store, self.policy, reqs, keys)
        except StoreError as exc:
            logs.warning("store_unavailable", op="send", stage="lookup", requests=len(reqs), error=repr(exc))
            err = Unavailable(f"message store unavailable: {exc}")
            for req in reqs:
                req.result = err
            return
        known_dedup = lk.dedups
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
                        if self.hook_sink is not None:
                            self.hook_sink.stored_before(prev["mid"])
                        continue
                    seen[key] = req
                start = len(items)
                ts = now_ms()
                kind = req.kind
                if kind is None:
                    if req.notify_to is not None:
                        found = self.store.existing_users(req.notify_to)
                        for u in req.notify_to:
                            if u not in found:
                                raise NotFound(f"no such user {u!r}")
                        for u in req.notify_to:
                            items.append({"sender": SYSTEM, "to": u, "group": None, "conv": conv_key(SYSTEM, u),
                                          "body": req.body_json, "ts": ts, "cmid": None, "recipients": [u],
                                          "kind": None, "ref": None, "reply_to": None, "mentions": None})
                    elif req.group is not None:
                        items.append(entries.group_item(req, lk, ts, cmid_json))
                    else:
                        items.append(entries.direct_item(req, lk, ts, cmid_json, self.policy))
                elif kind == GROUP_EVENT:
                    items.append(entries.group_event_item(req, ts, cmid_json))
                else:
                    items.append(self.changes.item(req, lk, ts, cmid_json, recalled))
                    if kind == RECALL:
                        recalled.add(req.ref)
                owners.append((req, start, len(items) - start))
            except (ImError, StoreError) as exc:
                # a lookup (existing users) failed: this request gets `unavailable` and
                # nothing of it is stored; the rest of the batch goes on
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
            if self.hook_sink is not None:
                self.hook_sink.stored(items, stored)
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
            if prev and self.hook_sink is not None:
                self.hook_sink.stored_before(prev["mid"])

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
            if req.notify_to is not None and req.kind is None:
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
        if req.kind is not None or req.reply_to is not None or req.mentions is not None:
            add_entry_fields(base, req.kind, req.ref, req.reply_to, req.mentions)
        for user, seq in stored["seqs"].items():
            m = dict(base)
            m["seq"] = seq
            self.hub.push(user, m, skip=req.session if user == req.sender else None)

    def catch_up_users(self, reqs):
        """The users whose inboxes the stored requests ``reqs`` (results set, errors
        skipped) wrote to, as far as can be told now (a forwarder that took sends over asks
        their sessions to catch up): a group's members, both users of a 1:1 send, the
        recipients of the message a recall / edit / reaction is about.  StoreError
        propagates."""
        users, refs = [], []
        for req in reqs:
            if isinstance(req.result, ImError) or req.result is None:
                continue
            if req.kind in CHANGE_KINDS:
                refs.append((req.sender, req.ref))
            elif req.notify_to is not None:
                users.extend(req.notify_to)
            elif req.group is not None:
                users.extend(self.store.list_members(req.group))
            else:
                users.extend((req.sender, req.to))
        if refs:
            for (actor, _), orig in self.store.held_messages(refs).items():
                if orig["group"] is not None:
                    users.extend(self.store.list_members(orig["group"]))
                else:
                    users.extend(u for u in (actor, entries.peer_of(orig, actor)) if u != SYSTEM)
        return list(dict.fromkeys(users))

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
        """The `sync` reply: entries as stored (seq order, all > since), head, more, and
        ``oldest``: the lowest seq still in the inbox (0 when it is empty)."""
        head, oldest = self.store.head_and_oldest(user)
        recs = self.store.inbox_since(user, since, limit) if since < head else []
        msgs = self._fit([message_obj(r) for r in recs])
        for m in msgs:
            del m["op"]
        last = msgs[-1]["seq"] if msgs else since
        # more: entries are stored after the last one given (the limit or the frame size
        # cut the reply); not when fewer came back than asked (the rest below head was
        # purged by retention: seqs are never reused, so nothing will fill them)
        more = last < head and (len(msgs) < len(recs) or len(recs) == limit)
        return {"op": "sync", "msgs": msgs, "head": head, "more": more, "oldest": oldest}

    def history(self, user, with_=None, group=None, before=None, limit=50):
        """The messages (and group_event entries) of a conversation in ``user``'s inbox,
        newest first, each in its current state (history_obj); recall, edit and reaction
        entries are not listed."""
        if group is not None:
            self.policy.require_member(group, user)
            conv = group_conv(group)
        else:
            if with_ != SYSTEM and with_ != user:
                self.policy.require_exists(with_, deleted_ok=True)
            conv = conv_key(user, with_)
        recs = self.store.history(user, conv, before, limit)
        msgs = self._fit([history_obj(r) for r in recs])
        for m in msgs:
            del m["op"]
        return {"msgs": msgs}

    def read(self, user, session, with_=None, group=None, seq=0):
        """``user`` has read their conversation with ``with_`` (or ``group``) up to inbox seq
        ``seq`` (the gateway's ``read``, the ``mark_read`` op; ``session``: the reader's
        session, None from the API).  The durable read position (store.mark_read) moves
        forward to ``seq`` and the conversation's unread count and mention flag are counted
        again above it; then the other side (1:1: the peer unless blocked either way;
        group: the other members) and the reader's other devices (all of them from the
        API) get ``receipt`` {from, with or group, seq, mid}.  A position already at or
        past ``seq`` stays: ok, nothing changes, no receipt.  NotFound: no entry ``seq`` in
        the inbox, or (for an entry of another conversation) no such user or group;
        BadRequest: entry ``seq`` is in another conversation."""
        conv = group_conv(group) if group is not None else conv_key(user, with_)
        out = self.store.mark_read(user, conv, seq, with_, group)
        if out is None:
            raise NotFound(f"no message with seq {seq} in the inbox of {user!r}")
        if out["conv"] != conv:
            if group is not None:
                self.policy.require_group(group)
                raise BadRequest(f"field 'seq': message {seq} is not in group {group!r}")
            if with_ != SYSTEM and with_ != user:
                self.policy.require_exists(with_, deleted_ok=True)
            raise BadRequest(f"field 'seq': message {seq} is not in the conversation with {with_!r}")
        if not out["moved"]:
            return {}
        receipt = {"op": "receipt", "from": user, "seq": seq, "mid": out["mid"]}
        if group is not None:
            receipt["group"] = group
            targets = [m for m in self.store.list_members(group) if m != user]
        else:
            receipt["with"] = with_
            targets = [] if with_ == user or self.store.blocked_either(user, with_) else [with_]
        for t in targets:
            self.hub.push(t, receipt)
        self.hub.push(user, receipt, skip=session)  # the reader's other devices
        return {}
