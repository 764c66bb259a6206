"""Groups: create, invite, leave, members, list.  Only members may invite or list members."""
import secrets

from ..protocol.errors import Conflict, Forbidden, NotFound
from .accounts import now_ms


class Groups:
    def __init__(self, store, policy):
        self.store = store
        self.policy = policy

    def _require_users(self, users):
        found = self.store.existing_users(users)
        for u in users:
            if u not in found:
                raise NotFound(f"no such user {u!r}")

    def create(self, me, name, members=None):
        members = [u for u in (members or []) if u != me]
        self._require_users(members)
        group = "g" + secrets.token_hex(8)
        self.store.create_group(group, name, me, [me] + members, now_ms())
        return {"group": group}

    def invite(self, me, group, users):
        self.policy.require_member(group, me)
        self._require_users(users)
        added = self.store.add_members(group, users, now_ms())
        if not added:
            raise Conflict(f"already a member of group {group!r}: {', '.join(users)}")
        return {}

    def leave(self, me, group):
        self.policy.require_group(group)
        if not self.store.remove_member(group, me):
            raise Forbidden(f"you are not a member of group {group!r}")
        return {}

    def members(self, me, group):
        self.policy.require_member(group, me)
        return {"members": self.store.list_members(group)}

    def list(self, me):
        return {"groups": self.store.list_groups(me)}
