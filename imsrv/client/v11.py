"""The calls protocol v1.1 added, as a mixin of :class:`~imsrv.client.Client`.

* **Changes of a message**: :meth:`V11.recall`, :meth:`V11.edit`, :meth:`V11.react` are
  gateway requests that the server stores as inbox entries (kinds ``recall``, ``edit``,
  ``reaction``), acks with mid and seq and dedupes by cmid, exactly like ``send``: they go
  through the same outbox (written to the store first, sent in order with the sends,
  resent with the same cmid after a reconnect or a restart, dropped with ``send_failed``
  when refused for good).  Their ack comes back like a send's ({mid, seq, ts, cmid}: the
  entry's mid and its seq in our inbox); the entry itself reaches the application as a
  ``message`` event with ``kind`` and ``ref`` (:mod:`imsrv.client.entries`).
* **Conversations**: :meth:`V11.conversations`, :meth:`V11.read` (``mark_read``) and
  :meth:`V11.mute` use the gateway connection while online (no extra connection, no
  token check) and the API otherwise; the server treats both alike.
* **Groups with roles, remarks, search**: API requests with the token (:meth:`_authed`),
  like the v1 calls of the Client.

A mixin: it uses the Client's ``store``, ``user``, ``online``, ``_authed``,
``_gw_request``, ``_require_login`` and the outbox's ``_enqueue``.
"""
from .entries import conversation_for_change, request_extra
from .errors import ConnectionLost, NotConnected
from .session import non_none


def strip_reply(reply):
    """A reply without its ``op`` and ``id``."""
    return {k: v for k, v in reply.items() if k not in ("op", "id")}


def users_list(users):
    """None, one user name or an iterable of them -> None or a list."""
    if users is None:
        return None
    if isinstance(users, str):
        return [users]
    return list(users)


def conv_fields(user, group):
    """{"with": user} or {"group": group}; ValueError unless exactly one is given."""
    if (user is None) == (group is None):
        raise ValueError("exactly one of user= and group= is required")
    return {"with": user} if user is not None else {"group": group}


class V11:
    # ================================================================== changes of a message
    def recall(self, mid, *, cmid=None, wait=True, timeout=None):
        """Take message ``mid`` back for everyone who has it: your own message within the
        server's ``recall_window`` (default 120 s), or any message of a group you own or
        administer.  -> the ack {mid, seq, ts, cmid} of the recall entry (``wait=False``: a
        SendHandle).  ServerError ``forbidden`` (too late, not yours, already recalled),
        ``not_found`` (not in your inbox)."""
        return self._change("recall", mid, None, request_extra("recall", mid=mid), cmid, wait, timeout)

    def edit(self, mid, body, *, cmid=None, wait=True, timeout=None):
        """Replace the body of your message ``mid`` (within ``edit_window``, default a
        day; not once recalled) -> the ack of the edit entry (see :meth:`recall`)."""
        if body is None:
            raise ValueError("body is required")
        return self._change("edit", mid, body, request_extra("edit", mid=mid), cmid, wait, timeout)

    def react(self, mid, emoji, on=True, *, cmid=None, wait=True, timeout=None):
        """Add (``on``) or take back (``on=False``) reaction ``emoji`` (1..16 characters)
        on message ``mid`` of your inbox -> the ack of the reaction entry."""
        if not isinstance(emoji, str) or not emoji:
            raise ValueError("emoji must be a non-empty string")
        extra = request_extra("react", mid=mid, emoji=emoji, on=on)
        return self._change("react", mid, None, extra, cmid, wait, timeout)

    def _change(self, op, mid, body, extra, cmid, wait, timeout):
        self._require_login()
        orig = self.store.message(mid)
        to, group = conversation_for_change(orig, self.user) if orig is not None else (None, None)
        return self._enqueue(op, to, group, body, extra, cmid, wait, timeout)

    def local_message(self, mid):
        """Message ``mid`` from the local store, in its current state (recalled, edited,
        reactions applied), or None if this device does not have it."""
        self._require_login()
        return self.store.message(mid)

    # ================================================================== conversations
    def conversations(self, limit=None, before=None):
        """-> [{with or group, last, unread, read_seq, muted_until, mentioned, ts}], most
        recent activity first (``limit``: default 50, max 200; ``before``: the ``ts`` of
        the last item of the previous page)."""
        return self._conv_op("conversations", **non_none(limit=limit, before=before))["convs"]

    def read(self, msg_or_seq, user=None, group=None):
        """Mark a conversation read up to a message: ``read(msg)`` for a received
        message, or ``read(seq, user=...)`` / ``read(seq, group=...)`` with an inbox seq.
        The read position is durable and shared by your devices (the others get a
        ``receipt``, as does the other side).  Online: the gateway's ``read``; offline:
        the API's ``mark_read``."""
        if isinstance(msg_or_seq, dict):
            msg = msg_or_seq
            seq = msg["seq"]
            if msg.get("group") is not None:
                group = msg["group"]
            else:
                user = msg.get("to") if msg.get("from") == self.user else msg.get("from")
        else:
            seq = msg_or_seq
        fields = conv_fields(user, group)
        fields["seq"] = seq
        self._conv_op("mark_read", _gateway_op="read", **fields)

    def mark_read(self, msg_or_seq, user=None, group=None):
        """The same as :meth:`read`."""
        self.read(msg_or_seq, user=user, group=group)

    def mute(self, user=None, group=None, until=-1):
        """Mute a conversation until ``until`` (ms since the epoch; -1, the default:
        until unmuted; 0 unmutes).  Delivery does not change: the server stops only its
        ``offline`` notifications, and ``conversations`` reports ``muted_until``."""
        self._conv_op("mute", until=until, **conv_fields(user, group))

    def unmute(self, user=None, group=None):
        self.mute(user=user, group=group, until=0)

    def _conv_op(self, op, _gateway_op=None, **fields):
        """A conversation op: on the gateway while online, else (or if the connection
        just died) through the API."""
        if self.online:
            try:
                return self._gw_request(_gateway_op or op, timeout=None, **fields)
            except (ConnectionLost, NotConnected):
                pass
        return self._authed(op, **fields)

    # ================================================================== groups with roles
    def group_info(self, group):
        """-> {group, name, notice, owner, size, max_members, muted_all, ...}"""
        return strip_reply(self._authed("group_info", group=group))

    def group_roles(self, group):
        """-> {members: [user], roles: {user: role}, muted: {user: until}} (group_members
        in full; :meth:`group_members` returns the list only)."""
        return strip_reply(self._authed("group_members", group=group))

    def group_update(self, group, name=None, notice=None):
        """Rename the group and/or set its notice (owner and admins)."""
        if name is None and notice is None:
            raise ValueError("at least one of name= and notice= is required")
        self._authed("group_update", group=group, **non_none(name=name, notice=notice))

    def group_set_role(self, group, user, role):
        """Make ``user`` an "admin" or a "member" again (the owner only)."""
        self._authed("group_set_role", group=group, user=user, role=role)

    def group_kick(self, group, user):
        """Remove ``user`` (the owner; admins may remove members only)."""
        self._authed("group_kick", group=group, user=user)

    def group_mute(self, group, until, user=None):
        """Mute ``user`` (or, without one, everyone but the owner and admins) until
        ``until`` (ms since the epoch; 0 unmutes) (owner and admins)."""
        self._authed("group_mute", group=group, until=until, **non_none(user=user))

    def group_unmute(self, group, user=None):
        self.group_mute(group, 0, user=user)

    def group_transfer(self, group, user):
        """Hand the group over to member ``user`` (the owner only; you become an admin)."""
        self._authed("group_transfer", group=group, user=user)

    def group_dissolve(self, group):
        """End the group (the owner only): no more sends; members keep its history."""
        self._authed("group_dissolve", group=group)

    # ================================================================== remarks, search
    def set_remark(self, user, remark):
        """Your private note on friend ``user`` (<= 64 characters; "" clears it); shown as
        ``remark`` in :meth:`friends`."""
        self._authed("set_remark", user=user, remark=remark)

    def search(self, q, user=None, group=None, before=None, limit=20):
        """Messages of your inbox whose text has every word of ``q`` (case-insensitive),
        newest first, in their current state: all conversations, or the one with ``user``
        or of ``group``; ``before`` a mid (page with the oldest mid you have)."""
        fields = {"q": q, "limit": limit}
        if user is not None or group is not None:
            fields.update(conv_fields(user, group))
        if before is not None:
            fields["before"] = before
        return self._authed("search", **fields)["msgs"]
