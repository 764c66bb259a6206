"""Presence: combined status over a user's devices, pushed to online friends on change."""


class Presence:
    def __init__(self, store, hub, policy):
        self.store = store
        self.hub = hub
        self.policy = policy

    def status_of(self, viewer, user):
        """What ``viewer`` sees of ``user``: offline across a block."""
        if self.store.blocked_either(viewer, user):
            return "offline"
        return self.hub.presence(user)[0]

    def changed(self, user):
        """Call after any session of ``user`` came, went or changed status."""
        status, text = self.hub.presence(user)
        # the hub remembers what was last announced (shared by every process in the
        # distributed deployment), so each change is announced once
        if self.hub.swap_announced(user, status, text) == (status, text):
            return
        push = {"op": "presence", "user": user, "status": status}
        if text:
            push["text"] = text
        for f in self.store.list_friends(user):
            friend = f["user"]
            if self.hub.is_online(friend) and not self.store.blocked_either(user, friend):
                self.hub.push(friend, push)

    def tell(self, viewer, user, status=None):
        """Push ``user``'s current presence to ``viewer`` (e.g. on becoming friends, block)."""
        if not self.hub.is_online(viewer):
            return
        if status is None:
            status, text = self.hub.presence(user)
        else:
            text = None
        push = {"op": "presence", "user": user, "status": status}
        if text:
            push["text"] = text
        self.hub.push(viewer, push)
