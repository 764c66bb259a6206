"""Groups as `imsrv chat` shows them: by name, with notices when people join or leave.

A v1.1 server (its login reply says ``"protocol": "1.1"``) writes a ``group_event``
entry to every member's inbox for each change: :meth:`GroupTracker.event_line` turns one
into a notice (:func:`.chat_entries.group_event_line`) and applies it to what the tracker
knows (names, members).  The tracker still looks (start, ``poll``, an unknown group),
silently: the events say what changed.  The events of the user's own commands
(/newgroup, /invite, /leave, the admin commands) are not shown again: the command said
it (:meth:`GroupTracker.expecting`); the same change made on another device is shown.

Protocol v1 tells a member nothing when a group changes, so against a v1 server the
client finds out by looking (`groups`, `group_members`) and compares with what it saw
before:

* a message from a group it does not know -> it was added: ``* you were added to group
  NAME (with alice, bob)``, printed before that message;
* after a group message from someone else, and every ``poll`` seconds (all groups) ->
  ``* bob joined NAME`` / ``* bob left NAME`` / ``* you were added to group NAME`` /
  ``* you are no longer in group NAME``;
* the user's own /newgroup, /invite and /leave update it without a notice of their own.

The first look (at startup) is silent: it is the baseline.
"""
import time
from contextlib import contextmanager

import gevent

from .chat_entries import group_event_line

#: seconds an expected echo of the user's own command waits for its group_event
ECHO_TTL = 30.0


def speaks_v11(client):
    """True if the server's login reply named protocol 1.1 or later."""
    try:
        return tuple(int(p) for p in str(client.protocol or "1").split(".")) >= (1, 1)
    except ValueError:
        return False


class GroupTracker:
    def __init__(self, client, say, poll=30.0):
        self.client = client
        self.me = client.user
        self.say = say
        self.poll = poll
        self.names = {}          # gid -> name (also read by the screen for labels)
        self.former = {}         # gid -> name of groups forgotten (labels of late events)
        self.members = {}        # gid -> set of users, once looked at
        self.v11 = speaks_v11(client)   # group_event entries say what changed
        self._echo = []          # [deadline, gid or None, event, fields] of own commands
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

    def refresh_groups(self, announce=None):
        """Look at my groups; say what changed (``announce``; default: against a v1
        server only)."""
        from ..client import ClientError
        if announce is None:
            announce = not self.v11
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

    def refresh_members(self, gid, announce=None):
        """Compare the members of ``gid`` with what we saw; say who joined and left
        (``announce``: default against a v1 server only).  Runs once at a time per group
        (a request meanwhile runs once more after)."""
        from ..client import ClientError, ServerError
        if announce is None:
            announce = not self.v11
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
        """Called before an entry is shown: an unknown group means we were added (a
        group event says so itself; a message says it here)."""
        gid = msg.get("group")
        if gid is None or gid in self.names:
            return
        event = msg.get("kind") == "group_event"
        body = msg.get("body") if event and isinstance(msg.get("body"), dict) else {}
        if event and gid in self.former and not (body.get("event") == "invited" and body.get("user") == self.me):
            return   # about a group I just left: its name is kept in ``former``
        if not self.refresh_groups(announce=not event) or gid not in self.names:
            self.names.setdefault(gid, gid)   # could not look: show the id for now

    def after_message(self, msg):
        """A group message from someone else, from a v1 server: look for joins and
        leaves (in the background)."""
        gid = msg.get("group")
        if gid is not None and msg.get("from") != self.me and not msg.get("kind") and not self.v11:
            gevent.spawn(self.refresh_members, gid)

    def event_line(self, msg):
        """A ``group_event`` entry that just arrived -> its notice (None for the echo of
        my own command), applied to the names and members known."""
        body = msg["body"] if isinstance(msg.get("body"), dict) else {}
        gid, event, user = msg.get("group"), body.get("event"), body.get("user")
        line = None
        if body.get("by") != self.me or not self._take_echo(gid, body):
            line = group_event_line(msg, self.label_names(), self.me, self.others)
        if event in ("joined", "invited") and user and gid in self.members:
            self.members[gid].add(user)
        elif event in ("left", "kicked") and user:
            if user == self.me:
                self.forget(gid)
            elif gid in self.members:
                self.members[gid].discard(user)
        elif event == "updated" and body.get("name") and gid in self.names:
            self.names[gid] = body["name"]
        return line

    def label_names(self):
        """{gid: name} of the groups I am in and of those I was in (for labels)."""
        return {**self.former, **self.names}

    def others(self, gid):
        """The other members of ``gid`` as last seen, sorted."""
        return sorted(self.members.get(gid, set()) - {self.me})

    @contextmanager
    def expecting(self, *echoes):
        """The block runs my own group change(s): the group_event entries it makes (each
        ``(event, gid or None, {field: value})`` of the event's body) are not shown, as the
        command says what it did.  Forgotten if the block fails, or after ECHO_TTL."""
        added = [[time.monotonic() + ECHO_TTL, gid, event, fields] for event, gid, fields in echoes]
        self._echo.extend(added)
        try:
            yield
        except BaseException:
            self._echo = [e for e in self._echo if not any(e is a for a in added)]
            raise

    def _take_echo(self, gid, body):
        now = time.monotonic()
        self._echo = [e for e in self._echo if e[0] > now]
        for echo in self._echo:
            _, want_gid, event, fields = echo
            if event == body.get("event") and want_gid in (None, gid) and \
                    all(body.get(k) == v for k, v in fields.items()):
                self._echo.remove(echo)
                return True
        return False

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
        if gid in self.names:
            self.former[gid] = self.names.pop(gid)
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
