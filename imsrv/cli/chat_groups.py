"""Groups as `imsrv chat` shows them: by name, with notices when people join or leave.

Protocol v1 tells a member nothing when a group changes, so the client finds out by
looking (`groups`, `group_members`) and compares with what it saw before:

* a message from a group it does not know -> it was added: ``* you were added to group
  NAME (with alice, bob)``, printed before that message;
* after a group message from someone else, and every ``poll`` seconds (all groups) ->
  ``* bob joined NAME`` / ``* bob left NAME`` / ``* you were added to group NAME`` /
  ``* you are no longer in group NAME``;
* the user's own /newgroup, /invite and /leave update it without a notice of their own.

The first look (at startup) is silent: it is the baseline.  v1.1 servers write
``group_event`` inbox entries; :func:`group_event_line` turns one into a notice.
"""
from contextlib import contextmanager

import gevent

from .chat_text import group_label


class GroupTracker:
    def __init__(self, client, say, poll=30.0):
        self.client = client
        self.me = client.user
        self.say = say
        self.poll = poll
        self.names = {}          # gid -> name (also read by the screen for labels)
        self.members = {}        # gid -> set of users, once looked at
        self._busy = set()       # gids with a member refresh running
        self._again = set()      # ... and asked for once more meanwhile
        self._leaving = set()    # gids of the user's own /leave in progress: no notice
        self._poller = None

    # ------------------------------------------------------------------ looking
    def start(self):
        """The silent baseline, then the periodic look (if poll > 0)."""
        self.refresh_groups(announce=False)
        for gid in list(self.names):
            self.refresh_members(gid, announce=False)
        if self.poll and self.poll > 0:
            self._poller = gevent.spawn(self._poll_loop)

    def stop(self):
        if self._poller is not None:
            self._poller.kill(block=False)

    def _poll_loop(self):
        while True:
            gevent.sleep(self.poll)
            self.refresh_all()

    def refresh_all(self):
        self.refresh_groups()
        for gid in list(self.names):
            self.refresh_members(gid)

    def refresh_groups(self, announce=True):
        from ..client import ClientError
        try:
            groups = self.client.groups()
        except ClientError:
            return False
        listed = {g["group"]: g.get("name") or g["group"] for g in groups}
        for gid, name in listed.items():
            if gid not in self.names:
                self.names[gid] = name
                self.refresh_members(gid, announce=False)
                if announce:
                    self.say(f"* you were added to group {name}{self._with(gid)}")
            else:
                self.names[gid] = name
        for gid in [g for g in self.names if g not in listed]:
            if announce and gid not in self._leaving:
                self.say(f"* you are no longer in group {self.names[gid]}")
            self.forget(gid)
        return True

    def refresh_members(self, gid, announce=True):
        """Compare the members of ``gid`` with what we saw; say who joined and left.
        Runs once at a time per group (a request meanwhile runs once more after)."""
        from ..client import ClientError, ServerError
        if gid in self._busy:
            self._again.add(gid)
            return
        self._busy.add(gid)
        try:
            while True:
                self._again.discard(gid)
                try:
                    now = set(self.client.group_members(gid))
                except ServerError as exc:
                    if exc.code in ("forbidden", "not_found") and gid in self.names:
                        if announce and gid not in self._leaving:
                            self.say(f"* you are no longer in group {self.names[gid]}")
                        self.forget(gid)
                    return
                except ClientError:
                    return
                before = self.members.get(gid)
                self.members[gid] = now
                if announce and before is not None and gid in self.names:
                    name = self.names[gid]
                    for user in sorted(now - before - {self.me}):
                        self.say(f"* {user} joined {name}")
                    for user in sorted(before - now - {self.me}):
                        self.say(f"* {user} left {name}")
                if gid not in self._again:
                    return
        finally:
            self._busy.discard(gid)

    def _with(self, gid):
        others = sorted(self.members.get(gid, set()) - {self.me})
        return f" (with {', '.join(others)})" if others else ""

    # ------------------------------------------------------------------ events
    def before_message(self, msg):
        """Called before a message is shown: an unknown group means we were added."""
        gid = msg.get("group")
        if gid is None or gid in self.names:
            return
        if not self.refresh_groups() or gid not in self.names:
            self.names.setdefault(gid, gid)   # could not look: show the id for now

    def after_message(self, msg):
        """A group message from someone else: look for joins and leaves (in the background)."""
        gid = msg.get("group")
        if gid is not None and msg.get("from") != self.me and not msg.get("kind"):
            gevent.spawn(self.refresh_members, gid)

    # ------------------------------------------------------------------ own actions
    def created(self, gid, name, members):
        self.names[gid] = name
        self.members[gid] = set(members) | {self.me}

    def invited(self, gid, users):
        self.members.setdefault(gid, {self.me}).update(users)

    @contextmanager
    def leaving(self, gid):
        """The block runs the user's own group_leave: a look that finds the group gone
        meanwhile says nothing (the caller says "you left"); forgotten once it succeeded."""
        self._leaving.add(gid)
        try:
            yield
            self.forget(gid)
        finally:
            self._leaving.discard(gid)

    def forget(self, gid):
        self.names.pop(gid, None)
        self.members.pop(gid, None)

    def resolve(self, text):
        """A group id or name (of one of my groups) -> its id, or None."""
        text = text.lstrip("#")
        if text in self.names:
            return text
        named = [g for g, n in self.names.items() if n == text]
        if len(named) == 1:
            return named[0]
        self.refresh_groups()
        if text in self.names:
            return text
        named = [g for g, n in self.names.items() if n == text]
        return named[0] if len(named) == 1 else None


def group_event_line(msg, names, me):
    """A v1.1 ``group_event`` inbox entry -> a notice (None if it is not one)."""
    if msg.get("kind") != "group_event" or not isinstance(msg.get("body"), dict):
        return None
    body = msg["body"]
    event, user, by = body.get("event"), body.get("user"), body.get("by")
    where = group_label(msg.get("group"), names)[1:]
    who = "you" if user == me else user
    actor = "you" if by == me else by
    lines = {
        "created": f"* {actor} created group {where}",
        "joined": f"* {who} joined {where}",
        "invited": f"* {actor} added {who} to {where}",
        "left": f"* {who} left {where}",
        "kicked": f"* {actor} removed {who} from {where}",
        "role": f"* {actor} made {who} {body.get('role')} of {where}",
        "muted": f"* {actor} muted {who or 'everyone'} in {where}",
        "unmuted": f"* {actor} unmuted {who or 'everyone'} in {where}",
        "updated": f"* {actor} updated group {where}",
        "transferred": f"* {actor} handed group {where} over to {who}",
        "dissolved": f"* {actor} dissolved group {where}",
    }
    return lines.get(event, f"* group {where}: {event}")
