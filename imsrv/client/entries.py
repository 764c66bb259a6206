"""Inbox entries of protocol v1.1 as the SDK handles them: the kinds, the requests that
make them (``recall``, ``edit``, ``react``: outbox ops like ``send``), and what a change
entry does to the local copy of the message it is about.

* Every inbox entry reaches the application as a ``message`` event, in seq order, exactly
  once, whatever its ``kind`` (absent: an ordinary message; ``recall``, ``edit``,
  ``reaction``: a change of the message whose mid is ``ref``; ``group_event``: a group
  change, body ``{"event", "by", "user"?, ...}``).  A v1 application that ignores ``kind``
  sees them as messages, as the protocol says.
* The local store keeps every entry and applies a change entry to its copy of the message
  (:func:`apply_change`), so ``local_history`` shows messages in their current state, like
  the server's ``history``: a recalled one with ``"recalled": true`` and body null, an
  edited one with its latest body and ``"edited": ts``, ``"reactions": {emoji: [user,
  ...]}`` when it has any; the change entries themselves are not listed.
* Our own recall / edit / react is acked with the entry's mid and seq (our inbox seq):
  :func:`own_entry` makes the inbox entry from the outbox entry and the ack, so it is
  delivered at its seq like an own message (the conversation is the message's, from the
  local store; when the store does not have the message the client syncs instead).
"""
RECALL, EDIT, REACTION, GROUP_EVENT = "recall", "edit", "reaction", "group_event"
#: entries that change another message (``ref``): applied to it, not listed by local_history
CHANGE_KINDS = frozenset((RECALL, EDIT, REACTION))
#: outbox op -> the kind of the entry it makes
KIND_OF_OP = {"recall": RECALL, "edit": EDIT, "react": REACTION}
#: the ops that go through the outbox (stored, acked with mid/seq, idempotent by cmid)
OUTBOX_OPS = frozenset(("send",)) | frozenset(KIND_OF_OP)
#: outbox ops whose request carries a body checked against the 16 KiB limit
BODY_OPS = frozenset(("send", "edit"))


def is_change(msg):
    """True for a recall, edit or reaction entry."""
    return msg.get("kind") in CHANGE_KINDS


def apply_change(orig, entry):
    """-> a copy of message ``orig`` (as the local store keeps it) with change entry
    ``entry`` applied, as ``history`` shows it (see the module docstring).  A recalled
    message stays recalled (an edit or reaction after it changes nothing); a reaction
    ``on`` adds its sender to the emoji's list once, ``off`` removes them."""
    msg = dict(orig)
    kind = entry.get("kind")
    if kind == RECALL:
        msg["body"] = None
        msg["recalled"] = True
        msg.pop("edited", None)
        msg.pop("reactions", None)
    elif msg.get("recalled"):
        return msg
    elif kind == EDIT:
        msg["body"] = entry.get("body")
        msg["edited"] = entry.get("ts")
    elif kind == REACTION:
        body = entry.get("body") if isinstance(entry.get("body"), dict) else {}
        emoji, on, who = body.get("emoji"), body.get("on", True), entry.get("from")
        if not isinstance(emoji, str):
            return msg
        reactions = {e: list(users) for e, users in (msg.get("reactions") or {}).items()}
        users = reactions.setdefault(emoji, [])
        if on and who not in users:
            users.append(who)
        elif not on and who in users:
            users.remove(who)
        if not users:
            del reactions[emoji]
        if reactions:
            msg["reactions"] = reactions
        else:
            msg.pop("reactions", None)
    return msg


def request_extra(op, mid=None, emoji=None, on=True, reply_to=None, mentions=None):
    """The fields of an outbox op besides body, cmid and to/group (kept with the entry)."""
    if op == "send":
        extra = {}
        if reply_to is not None:
            extra["reply_to"] = reply_to
        if mentions is not None:
            extra["mentions"] = list(mentions)
        return extra
    extra = {"mid": mid}
    if op == "react":
        extra.update(emoji=emoji, on=bool(on))
    return extra


def own_entry(entry, ack, me):
    """The inbox entry our own outbox ``entry`` made, from its ``ack`` ({mid, seq, ts,
    cmid}) -> a message dict, or None when its conversation is not known (a change of a
    message the local store does not have: the caller syncs to get it)."""
    if entry.group is None and entry.to is None:
        return None
    msg = {"seq": ack["seq"], "mid": ack["mid"], "from": me}
    if entry.group is not None:
        msg["group"] = entry.group
    else:
        msg["to"] = entry.to
    extra = entry.extra or {}
    kind = KIND_OF_OP.get(entry.op)
    if kind is None:
        msg["body"] = entry.body
    elif kind == REACTION:
        msg["body"] = {"emoji": extra.get("emoji"), "on": extra.get("on", True)}
    elif kind == EDIT:
        msg["body"] = entry.body
    else:
        msg["body"] = None
    msg["ts"] = ack["ts"]
    msg["cmid"] = entry.cmid
    if kind is not None:
        msg["kind"] = kind
        msg["ref"] = extra.get("mid")
    for field in ("reply_to", "mentions"):
        if extra.get(field) is not None:
            msg[field] = extra[field]
    return msg


def conversation_for_change(orig, me):
    """(to, group) of the entry a change of message ``orig`` makes in our inbox: the
    message's group, or the other user of its 1:1 conversation."""
    if orig.get("group") is not None:
        return None, orig["group"]
    peer = orig.get("to") if orig.get("from") == me else orig.get("from")
    return peer, None
