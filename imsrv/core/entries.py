"""Inbox entries with a kind (protocol v1.1): who may recall, edit and react, and the store
items of every kind of request of a send batch.

:class:`~imsrv.core.messaging.Messaging.process_batch` reads what a batch needs with
:func:`lookup` (one query per kind of lookup per batch, whatever its size; none that an
ordinary send without ``reply_to``/``mentions`` does not need), then turns each request
into its store item with :func:`group_item`, :func:`direct_item`,
:func:`group_event_item` or :meth:`ChangeRules.item`, which raise the request's error
(NotFound, Forbidden, BadRequest).  The rules, exactly:

- **send to a group**: the group exists (else not_found), is not dissolved
  (``groups_.dissolved != 0``: forbidden), the sender is a member (forbidden), not muted
  (``group_members.muted_until`` -1 or in the future: forbidden) and, when the group is
  muted for everyone but its owner and admins (``groups_.muted_all``), an owner or admin.
  Recipients: the current members.  ``mentions``: member user names (another name:
  bad_request), or ``["all"]``, which only the owner and admins may use (forbidden).
- **send** with ``reply_to``: a message (an entry without a kind) in the sender's inbox in
  the same conversation, else not_found.
- **recall / edit / react** (``ref`` = the mid they are about): the mid must be in the
  actor's inbox (else not_found) and be an ordinary message (an entry with a kind:
  bad_request).  recall: the message's sender within ``messages.recall_window`` seconds of
  its ts, or an owner/admin of its group at any time; edit: only its sender, within
  ``messages.edit_window``; neither on a recalled message; react: anyone who has it, not
  on a recalled message.  Else forbidden.  On a group message the actor must still be a
  member and the group not dissolved; a muted member may recall but not edit or react.  On
  a 1:1 message edit and react follow the rules of a send to the peer (a block, or not
  friends when policy.require_friends: forbidden); recall does not (it only takes back).
  Recipients of the entry: those of the original message now: both users of a 1:1
  conversation (a deleted account or ``system`` left out), the current members of a
  group.
- **group_event** (made by the server, never by a client): sender = the actor, the group's
  conversation, recipients = ``notify_to`` as given, no check at all.
"""
from .. import jsonlib
from ..protocol.errors import BadRequest, Forbidden, NotFound
from ..protocol.fields import ALL
from .policy import conv_key, group_conv

SYSTEM = "system"
RECALL, EDIT, REACTION, GROUP_EVENT = "recall", "edit", "reaction", "group_event"
CHANGE_KINDS = frozenset((RECALL, EDIT, REACTION))   # entries about another message (ref)
OWNER, ADMIN = "owner", "admin"
MANAGERS = frozenset((OWNER, ADMIN))


def muted(until, now):
    """``group_members.muted_until`` or ``groups_.muted_all`` (0 no, -1 forever, else muted
    while ``now`` (ms) < the value) at ``now``."""
    return until == -1 or until > now


class Lookups:
    """What the checks of one batch read (see :func:`lookup`)."""

    __slots__ = ("dedups", "held", "known", "groups")

    def __init__(self, dedups, held, known, groups):
        self.dedups = dedups    # {(sender, dedup key): record}
        self.held = held        # {(user, mid): message state} (Store.held_messages)
        self.known = known      # Policy.prefetch of the 1:1 pairs
        self.groups = groups    # {group: state} (Store.group_states)


def peer_of(orig, actor):
    """The other user of the 1:1 conversation of message ``orig`` (``actor`` has it)."""
    return orig["to"] if orig["from"] == actor else orig["from"]


def lookup(store, policy, reqs, keys):
    """Everything the requests ``reqs`` (dedup keys ``keys``) need, in at most five
    queries: dedup records; the messages referred to (``ref``, ``reply_to``) as their
    actors hold them (only if some request refers to one); existing users and relations of
    the 1:1 pairs; the groups' states.  StoreError propagates."""
    dedups = store.get_dedups([(r.sender, k) for r, k in zip(reqs, keys) if k is not None])
    pairs, groups, held_keys, changes = [], set(), [], []
    for r in reqs:
        if r.notify_to is not None:
            continue
        if r.kind is None:
            if r.group is not None:
                groups.add(r.group)
            elif r.to is not None:
                pairs.append((r.sender, r.to))
            if r.reply_to is not None:
                held_keys.append((r.sender, r.reply_to))
        elif r.kind in CHANGE_KINDS:
            held_keys.append((r.sender, r.ref))
            changes.append(r)
    held = store.held_messages(held_keys) if held_keys else {}
    for r in changes:
        orig = held.get((r.sender, r.ref))
        if orig is None:
            continue
        if orig["group"] is not None:
            groups.add(orig["group"])
        else:
            peer = peer_of(orig, r.sender)
            if peer != SYSTEM:
                pairs.append((r.sender, peer))
    known = policy.prefetch(pairs)
    states = store.group_states(sorted(groups)) if groups else {}
    return Lookups(dedups, held, known, states)


def _item(req, to, group, conv, ts, cmid_json, recipients):
    return {"sender": req.sender, "to": to, "group": group, "conv": conv, "body": req.body_json, "ts": ts,
            "cmid": cmid_json, "recipients": recipients, "kind": req.kind, "ref": req.ref,
            "reply_to": req.reply_to, "mentions": req.mentions}


def _group_state(lk, group):
    st = lk.groups.get(group)
    if st is None:
        raise NotFound(f"no such group {group!r}")
    return st


def _require_voice(st, group, user, now):
    """The checks of a send to ``group`` (state ``st``) by ``user``: dissolved, member,
    muted, muted for all -> Forbidden naming the rule; -> the user's role."""
    if st["dissolved"]:
        raise Forbidden(f"group {group!r} is dissolved: no more messages")
    member = st["members"].get(user)
    if member is None:
        raise Forbidden(f"user {user!r} is not a member of group {group!r}")
    role, until = member
    if until and muted(until, now):
        raise Forbidden(f"you are muted in group {group!r} (until {until})")
    if st["muted_all"] and role not in MANAGERS and muted(st["muted_all"], now):
        raise Forbidden(f"group {group!r} is muted for everyone but its owner and admins")
    return role


def _check_reply_to(req, lk, conv):
    orig = lk.held.get((req.sender, req.reply_to))
    if orig is None or orig["kind"] is not None or orig["conv"] != conv:
        raise NotFound(f"field 'reply_to': no message {req.reply_to} in this conversation")


def group_item(req, lk, ts, cmid_json):
    """The store item of an ordinary send to a group; raises its error."""
    group = req.group
    st = _group_state(lk, group)
    role = _require_voice(st, group, req.sender, ts)
    conv = group_conv(group)
    mentions = req.mentions
    if mentions is not None:
        if mentions == [ALL]:
            if role not in MANAGERS:
                raise Forbidden(f"only the owner and admins of group {group!r} may mention \"all\"")
        else:
            members = st["members"]
            for name in mentions:
                if name not in members:
                    raise BadRequest(f"field 'mentions': {name!r} is not a member of group {group!r}")
    if req.reply_to is not None:
        _check_reply_to(req, lk, conv)
    return _item(req, None, group, conv, ts, cmid_json, st["list"])


def direct_item(req, lk, ts, cmid_json, policy):
    """The store item of an ordinary 1:1 send; raises its error."""
    to, sender = req.to, req.sender
    if req.mentions is not None:
        raise BadRequest("field 'mentions': only a send to a group may mention users")
    policy.check_direct(sender, to, lk.known)
    conv = conv_key(sender, to)
    if req.reply_to is not None:
        _check_reply_to(req, lk, conv)
    return _item(req, to, None, conv, ts, cmid_json, [to] if to == sender else [to, sender])


def group_event_item(req, ts, cmid_json=None):
    """The store item of a group_event (no check: the server made it); ``cmid_json``: its
    dedup key (the implicit one of a queued event, imsrv/core/group_events.py), or None."""
    recipients = list(dict.fromkeys(req.notify_to))
    return _item(req, None, req.group, group_conv(req.group), ts, cmid_json, recipients)


class ChangeRules:
    """The checks of recall / edit / react; ``recall_window`` and ``edit_window`` in
    seconds (config [messages])."""

    def __init__(self, policy, recall_window, edit_window):
        self.policy = policy
        self.recall_ms = int(recall_window * 1000)
        self.edit_ms = int(edit_window * 1000)
        self.recall_window = recall_window
        self.edit_window = edit_window

    def item(self, req, lk, ts, cmid_json, recalled_now):
        """The store item of a recall / edit / reaction entry; raises its error.
        ``recalled_now``: the mids recalled by earlier items of the same batch."""
        kind, actor, mid = req.kind, req.sender, req.ref
        orig = lk.held.get((actor, mid))
        if orig is None:
            raise NotFound(f"no message {mid} in the inbox of {actor!r}")
        if orig["kind"] is not None:
            raise BadRequest(f"field 'mid': entry {mid} is not a message but an entry of kind {orig['kind']}")
        if orig["recalled"] or mid in recalled_now:
            raise Forbidden(f"message {mid} was recalled: it cannot be {_DONE[kind]}")
        group = orig["group"]
        role = None
        if group is not None:
            st = _group_state(lk, group)
            if kind == RECALL:
                if st["dissolved"]:
                    raise Forbidden(f"group {group!r} is dissolved: no more messages")
                member = st["members"].get(actor)
                if member is None:
                    raise Forbidden(f"user {actor!r} is not a member of group {group!r}")
                role = member[0]
            else:
                role = _require_voice(st, group, actor, ts)
        age = ts - orig["ts"]
        if kind == RECALL:
            if role not in MANAGERS and not (orig["from"] == actor and age <= self.recall_ms):
                if orig["from"] != actor:
                    raise Forbidden(f"you may not recall message {mid}: only its sender"
                                    " or an owner or admin of its group may")
                raise Forbidden(f"message {mid} was sent more than {self.recall_window:g} s ago"
                                " (messages.recall_window): too late to recall it")
        elif kind == EDIT:
            if orig["from"] != actor:
                raise Forbidden(f"you may not edit message {mid}: only its sender may")
            if age > self.edit_ms:
                raise Forbidden(f"message {mid} was sent more than {self.edit_window:g} s ago"
                                " (messages.edit_window): too late to edit it")
        if group is not None:
            item = _item(req, None, group, orig["conv"], ts, cmid_json, st["list"])
        else:
            peer = peer_of(orig, actor)
            recipients = [actor]
            if peer != actor and peer != SYSTEM and peer in lk.known["users"]:
                if kind != RECALL:
                    self.policy.check_direct(actor, peer, lk.known)
                recipients.insert(0, peer)
            item = _item(req, peer, None, orig["conv"], ts, cmid_json, recipients)
        if kind == REACTION:
            item["reaction"] = reaction_of(req.body_json)
        return item


_DONE = {RECALL: "recalled again", EDIT: "edited", REACTION: "reacted to"}


def reaction_body(emoji, on):
    """The body of a reaction entry."""
    return {"emoji": emoji, "on": on}


def reaction_of(body_json):
    """(emoji, on) of a reaction entry's body (JSON text)."""
    body = jsonlib.loads(body_json)
    if type(body) is not dict or not isinstance(body.get("emoji"), str) or type(body.get("on")) is not bool:
        raise BadRequest("a reaction's body is {\"emoji\": E, \"on\": true or false}")
    return body["emoji"], body["on"]
