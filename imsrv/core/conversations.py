"""Conversations (protocol v1.1): the list with unread counts, ``mark_read`` and ``mute``,
each an API op (with a token) and a gateway op (without), one handler for both.

The store keeps one row per user and conversation as entries arrive (see
:mod:`imsrv.backends.sql_conversations`), so the list reads rows and counts nothing.

- ``conversations``: ``{"convs": [...]}``, most recent activity first, ``limit`` (default
  50, max 200) rows with activity time (``ts``) below ``before`` when given.  Each item:
  ``with`` (the other user of a 1:1 conversation, the user themself for notes to self,
  ``system`` for admin notices) or ``group``; ``last``: the latest message or group event
  (``seq`` in the user's inbox) in its current state, as ``history`` shows it (recalled:
  body null and ``recalled``; edited: the latest body and ``edited``; no ``reactions``),
  null if it is no longer stored; ``unread``;
  ``read_seq``; ``muted_until``; ``mentioned``; and ``ts``, the activity time ``before``
  pages by (that of ``last``).  A page never ends inside a run of conversations of equal
  ``ts``: the next page (``before`` = the last item's ``ts``) starts with the rest of the
  run (a run longer than ``limit`` comes whole).  The reply is cut, the same way, to what
  fits one frame (max_frame), and the next page holds the rest.
- ``mark_read``: :meth:`Messaging.read` (the gateway's ``read``): the durable read position,
  shared by the user's devices, each of the others getting the ``receipt``.
- ``mute``: ``until`` (ms since the epoch; 0 unmutes; -1 forever) on the user's row of the
  conversation, reported in the list; it changes no delivery (the offline hook reads it
  with ``store.muted_conversations``).  1:1: the other user must exist or have existed
  (else not_found), as for ``history``; group: the user must be a member (not_found for an
  unknown group, forbidden for a non-member).
"""
from .. import jsonlib, logs
from ..protocol.fields import one_of
from .dispatch import ApiCaller
from .messaging import SYSTEM, history_obj
from .policy import conv_key, group_conv

DEFAULT_LIMIT = 50


class Conversations:
    def __init__(self, store, policy, messaging, max_reply_bytes=65536):
        self.store = store
        self.policy = policy
        self.messaging = messaging
        self.max_reply_bytes = max_reply_bytes

    def handlers(self):
        """{op: fn(who, args)}: ``who`` is the API caller or the gateway session.  Each
        returns the whole reply (``op`` ok), which the API dispatcher also accepts."""
        return {"conversations": self.list, "mark_read": self.mark_read, "mute": self.mute}

    # ------------------------------------------------------------------ ops
    def list(self, who, args):
        rows = self.store.list_conversations(who.user, args.get("before"), args.get("limit", DEFAULT_LIMIT))
        return {"op": "ok", "convs": self._fit([conv_item(r) for r in rows])}

    def mark_read(self, who, args):
        one_of(args, "with", "group")
        session = None if isinstance(who, ApiCaller) else who   # the API: every device hears
        self.messaging.read(who.user, session, args.get("with"), args.get("group"), args["seq"])
        return {"op": "ok"}

    def mute(self, who, args):
        one_of(args, "with", "group")
        me, until = who.user, args["until"]
        group = args.get("group")
        if group is not None:
            self.policy.require_member(group, me)
            conv, peer = group_conv(group), None
        else:
            peer = args["with"]
            if peer != SYSTEM and peer != me:
                self.policy.require_exists(peer, deleted_ok=True)
            conv = conv_key(me, peer)
        self.store.set_muted(me, conv, peer, group, until)
        logs.info("conversation_muted", user=me, conv=conv, until=until)
        return {"op": "ok"}

    # ------------------------------------------------------------------ the reply
    def _fit(self, items, overhead=128):
        """The longest prefix of ``items`` whose encoding fits max_reply_bytes (at least
        one item), not ending inside a run of equal ``ts`` unless the run is all it has."""
        budget = self.max_reply_bytes - overhead
        size = 0
        for i, item in enumerate(items):
            size += len(jsonlib.dumps(item)) + 1
            if size > budget and i > 0:
                edge = items[i]["ts"]
                keep = i
                while keep > 0 and items[keep - 1]["ts"] == edge:
                    keep -= 1
                return items[:keep or i]
        return items


def conv_item(row):
    """One item of the ``conversations`` reply from a store row (list_conversations)."""
    item = {"group": row["group"]} if row["group"] is not None else {"with": row["with"]}
    last = row["last"]
    if last is not None:   # in its current state, as history shows it (no reactions)
        last = history_obj(last)
        del last["op"]
    item.update(last=last, unread=row["unread"], read_seq=row["read_seq"],
                muted_until=row["muted_until"], mentioned=row["mentioned"], ts=row["ts"])
    return item
