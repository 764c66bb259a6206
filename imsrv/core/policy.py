"""Who may talk to whom: the contact rules of protocol v1."""
from ..protocol.errors import Forbidden, NotFound


def conv_key(a, b):
    """Conversation key of a 1:1 chat (the same from both sides)."""
    return f"u:{a}:{b}" if a <= b else f"u:{b}:{a}"


def group_conv(group):
    return f"g:{group}"


class Policy:
    def __init__(self, store, require_friends=True):
        self.store = store
        self.require_friends = require_friends

    def require_exists(self, user, deleted_ok=False):
        """NotFound unless ``user`` has a live account (``deleted_ok``: or had one that was
        deleted: its messages stay readable in the other users' history)."""
        if deleted_ok:
            found = self.store.get_user(user) is not None
        else:
            found = bool(self.store.existing_users([user]))
        if not found:
            raise NotFound(f"no such user {user!r}")

    def check_direct(self, sender, to, known=None):
        """May ``sender`` message (or type to) ``to``?  Raises NotFound / Forbidden.

        ``known`` (optional, from :meth:`prefetch`) answers from a batch lookup."""
        if sender == to:
            return
        if known is not None:
            exists = to in known["users"]
            friends, blocked = known["relations"].get((sender, to), (False, False))
        else:
            exists = bool(self.store.existing_users([to]))
            friends = blocked = None
        if not exists:
            raise NotFound(f"no such user {to!r}")
        if blocked is None:
            blocked = self.store.blocked_either(sender, to)
        if blocked:
            raise Forbidden(f"you cannot message {to!r}: blocked")
        if self.require_friends:
            if friends is None:
                friends = self.store.are_friends(sender, to)
            if not friends:
                raise Forbidden(f"you cannot message {to!r}: not friends")

    def prefetch(self, pairs):
        """Everything check_direct needs for many (sender, to) pairs, in two round trips."""
        pairs = [(a, b) for a, b in pairs if a != b]
        return {"users": self.store.existing_users([b for _, b in pairs]),
                "relations": self.store.relations(pairs)}

    def require_group(self, group):
        g = self.store.get_group(group)
        if g is None:
            raise NotFound(f"no such group {group!r}")
        return g

    def require_member(self, group, user):
        self.require_group(group)
        if not self.store.is_member(group, user):
            raise Forbidden(f"user {user!r} is not a member of group {group!r}")

    def may_see_presence(self, a, b):
        """a may see b's presence: friends and no block either way."""
        return self.store.are_friends(a, b) and not self.store.blocked_either(a, b)
