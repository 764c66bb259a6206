"""The relationship chain: friend requests, friends, blocks."""
from ..protocol.errors import BadRequest, Conflict, Forbidden, NotFound
from .accounts import now_ms


class Contacts:
    def handlers(self):
        """{op: fn(who, args)} of the protocol v1.1 ops this area answers (see App)."""
        return {"set_remark": lambda who, args: self.set_remark(who.user, args["user"], args["remark"])}

    def __init__(self, store, hub, policy, presence):
        self.store = store
        self.hub = hub
        self.policy = policy
        self.presence = presence

    def _other(self, me, user):
        if user == me:
            raise BadRequest("field 'user': cannot be yourself")
        self.policy.require_exists(user)

    def request(self, me, to, message=None):
        if to == me:
            raise BadRequest("field 'to': cannot be yourself")
        self.policy.require_exists(to)
        if self.store.blocked_either(me, to):
            raise Forbidden(f"cannot send a friend request to {to!r}: blocked")
        if self.store.are_friends(me, to):
            raise Conflict(f"already friends with {to!r}")
        if self.store.get_request(to, me) is not None:
            self._befriend(me, to)  # they asked us already: friends at once
            return {}
        ts = now_ms()
        self.store.put_request(me, to, message or "", ts)
        self.hub.push(to, {"op": "friend_request", "from": me, "message": message or ""})
        return {}

    def list_requests(self, me):
        return {"requests": self.store.list_requests(me)}

    def accept(self, me, user):
        self._other(me, user)
        if self.store.get_request(user, me) is None:
            if self.store.are_friends(me, user):
                raise Conflict(f"already friends with {user!r}")
            raise NotFound(f"no friend request from {user!r}")
        if self.store.blocked_either(me, user):
            raise Forbidden(f"cannot accept {user!r}: blocked")
        self._befriend(me, user)
        return {}

    def _befriend(self, a, b):
        self.store.make_friends(a, b, now_ms())
        self.hub.push(a, {"op": "friend_added", "user": b})
        self.hub.push(b, {"op": "friend_added", "user": a})
        self.presence.tell(a, b)
        self.presence.tell(b, a)

    def reject(self, me, user):
        self._other(me, user)
        if not self.store.delete_request(user, me):
            raise NotFound(f"no friend request from {user!r}")
        return {}

    def remove(self, me, user):
        self._other(me, user)
        if not self.store.remove_friends(me, user):
            raise NotFound(f"{user!r} is not your friend")
        return {}

    def friends(self, me):
        out = []
        for f in self.store.list_friends(me):
            out.append({"user": f["user"], "name": f["name"],
                        "status": self.presence.status_of(me, f["user"]), "remark": f["remark"]})
        return {"friends": out}

    def set_remark(self, me, user, remark):
        """``me``'s private note on their friend ``user`` ("" clears it: ``remark`` null in
        `friends`).  Yourself: bad_request; no such user: not_found; not a friend:
        forbidden (the contract's "not friends")."""
        self._other(me, user)
        if not self.store.set_remark(me, user, remark or None):
            raise Forbidden(f"cannot set a remark on {user!r}: not your friend")
        return {}

    def block(self, me, user):
        self._other(me, user)
        self.store.add_block(me, user, now_ms())
        if self.store.are_friends(me, user):
            # presence is cut both ways from now on
            self.presence.tell(user, me, "offline")
            self.presence.tell(me, user, "offline")
        return {}

    def unblock(self, me, user):
        self._other(me, user)
        if not self.store.remove_block(me, user):
            raise NotFound(f"{user!r} is not blocked")
        if self.store.are_friends(me, user) and not self.store.blocked_either(me, user):
            self.presence.tell(user, me)
            self.presence.tell(me, user)
        return {}
