"""Groups with roles (protocol v1 groups, v1.1 "Groups with roles").

Roles: ``owner`` (the creator, then whoever it is transferred to), ``admin``, ``member``.
Every op names a group: an unknown one is ``not_found``, a caller who is not a member
``forbidden``.  A dissolved group keeps its member rows (its former members): they may
still read it (group_info, group_members, history) and leave it; every other op on it is
``forbidden`` ("group ... is dissolved").  The user an op names (kick, set_role, mute,
transfer) must exist and be a member, else ``not_found``.  A role rule broken is
``forbidden``; a change to what already is (set_role to the same role) is ``conflict``, as
an invite of members only is.  Mute and update are idempotent: setting what already is
answers ok and posts nothing.

Every change writes its ``group_event`` entries into the store's outbox in the change's own
transaction (``events=(actor, recipients, bodies)`` of the store's group writes), then
posts them to the members (imsrv.core.group_events: a failure there is logged, the reply is
still ok, and the queued events are posted again later).  Who gets them, decided by the
store inside that transaction (recipients None): the members after the change, plus the
subject who left or was kicked (the members before it); a leave from a dissolved group:
only the leaver.

The store writes are guarded (a kick only removes a row whose role the actor may kick, a
transfer only happens while the actor is the owner, an invite counts the members under a
lock of the group), so two concurrent changes never break a rule; the losing one is
answered from a fresh read.
"""
import secrets

from ..protocol.errors import BadRequest, Conflict, Forbidden, NotFound
from .accounts import now_ms
from .group_events import GroupEvents, event

OWNER, ADMIN, MEMBER = "owner", "admin", "member"
MANAGERS = (OWNER, ADMIN)


def effective_until(until, now):
    """A mute's end as stored: 0 (not muted) for 0 or a time already past; -1 forever."""
    if until == -1 or until > now:
        return until
    return 0


class Groups:
    def __init__(self, store, policy, forward, max_members=500):
        self.store = store
        self.policy = policy
        self.events = GroupEvents(forward, store)
        self.max_members = max_members

    def handlers(self):
        """{op: fn(who, args)} of every group op (see App): ``who.user`` is the caller."""
        return {
            "group_create": lambda who, a: self.create(who.user, a["name"], a.get("members")),
            "group_invite": lambda who, a: self.invite(who.user, a["group"], a["users"]),
            "group_leave": lambda who, a: self.leave(who.user, a["group"]),
            "group_members": lambda who, a: self.members(who.user, a["group"]),
            "groups": lambda who, a: self.list(who.user),
            "group_info": lambda who, a: self.info(who.user, a["group"]),
            "group_update": lambda who, a: self.update(who.user, a["group"], a.get("name"), a.get("notice")),
            "group_set_role": lambda who, a: self.set_role(who.user, a["group"], a["user"], a["role"]),
            "group_kick": lambda who, a: self.kick(who.user, a["group"], a["user"]),
            "group_mute": lambda who, a: self.mute(who.user, a["group"], a.get("user"), a["until"]),
            "group_transfer": lambda who, a: self.transfer(who.user, a["group"], a["user"]),
            "group_dissolve": lambda who, a: self.dissolve(who.user, a["group"]),
        }

    # ------------------------------------------------------------------ checks
    def _require_users(self, users):
        found = self.store.existing_users(users)
        for u in users:
            if u not in found:
                raise NotFound(f"no such user {u!r}")

    def _group(self, group):
        info = self.store.group_info(group)
        if info is None:
            raise NotFound(f"no such group {group!r}")
        return info

    def _caller(self, group, me, changes=True, target=None):
        """The group's info, and the member rows of ``me`` and ``target`` -> (info, my role,
        target's row or None).  NotFound: no such group; Forbidden: ``me`` is not a member,
        or (``changes``) the group is dissolved."""
        info = self._group(group)
        rows = self.store.get_members(group, [me] if target is None else [me, target])
        if me not in rows:
            raise Forbidden(f"user {me!r} is not a member of group {group!r}")
        if changes and info["dissolved"]:
            raise Forbidden(f"group {group!r} is dissolved: it can only be read or left")
        return info, rows[me]["role"], rows.get(target)

    @staticmethod
    def _require_role(group, me, role, allowed, what):
        if role not in allowed:
            who = "the owner" if allowed == (OWNER,) else "the owner or an admin"
            raise Forbidden(f"only {who} of group {group!r} may {what}; {me!r} is {role_name(role)}")

    def _require_target(self, group, user, row):
        """NotFound unless ``user`` (with member row ``row``) exists and is a member."""
        if row is None:
            self._require_users([user])
            raise NotFound(f"user {user!r} is not a member of group {group!r}")
        return row

    # ------------------------------------------------------------------ v1 ops
    def create(self, me, name, members=None):
        members = [u for u in dict.fromkeys(members or []) if u != me]
        self._require_users(members)
        if 1 + len(members) > self.max_members:
            raise Forbidden(f"group is full: {1 + len(members)} members (you and members) are more than"
                            f" groups.max_members ({self.max_members})")
        group = "g" + secrets.token_hex(8)
        _, queued = self.store.create_group(group, name, me, [me] + members, now_ms(),
                                            events=(me, None, [event("created", me, name=name)]))
        self.events.post_row(queued)
        return {"group": group}

    def invite(self, me, group, users):
        self._caller(group, me)
        self._require_users(users)
        added, queued = self.store.invite_members(
            group, users, now_ms(), self.max_members,
            events=(me, None, lambda added: [event("invited", me, u) for u in added]))
        if added is None:
            raise Forbidden(f"group is full: adding {', '.join(users)} would put group {group!r} over"
                            f" groups.max_members ({self.max_members}); nobody was added")
        if not added:
            raise Conflict(f"already a member of group {group!r}: {', '.join(users)}")
        self.events.post_row(queued)
        return {}

    def leave(self, me, group):
        info, role, _ = self._caller(group, me, changes=False)
        if info["dissolved"]:
            _, queued = self.store.remove_member(group, me, events=(me, [me], [event("left", me, me)]))
            self.events.post_row(queued)
            return {}
        if role == OWNER:
            raise Forbidden(f"the owner cannot leave group {group!r}: transfer it (group_transfer) or"
                            " dissolve it (group_dissolve) first")
        done, queued = self.store.remove_member(group, me, roles=(ADMIN, MEMBER),
                                                events=(me, None, [event("left", me, me)]))
        if not done:
            # it changed meanwhile (made owner, left on another device): answer as it is now
            self._caller(group, me, changes=False)
            raise Forbidden(f"the owner cannot leave group {group!r}: transfer it or dissolve it first")
        self.events.post_row(queued)
        return {}

    def members(self, me, group):
        """``muted``: every member whose send is refused now, with the end of that: the
        later of their own mute and the group's mute of everyone but the owner and admins
        (-1, for ever, is the latest)."""
        info, _, _ = self._caller(group, me, changes=False)
        rows = self.store.list_member_details(group)
        now = now_ms()
        everyone = effective_until(info["muted_all"], now)
        muted = {}
        for r in rows:
            until = effective_until(r["muted_until"], now)
            if everyone and r["role"] not in MANAGERS:
                until = -1 if -1 in (until, everyone) else max(until, everyone)
            if until:
                muted[r["user"]] = until
        return {"members": [r["user"] for r in rows],
                "roles": {r["user"]: r["role"] for r in rows}, "muted": muted}

    def list(self, me):
        return {"groups": self.store.list_groups(me)}

    # ------------------------------------------------------------------ v1.1 ops
    def info(self, me, group):
        info, _, _ = self._caller(group, me, changes=False)
        return {"group": group, "name": info["name"], "notice": info["notice"], "owner": info["owner"],
                "size": info["size"], "max_members": self.max_members,
                "muted_all": effective_until(info["muted_all"], now_ms()), "dissolved": info["dissolved"]}

    def update(self, me, group, name=None, notice=None):
        if name is None and notice is None:
            raise BadRequest("at least one of the fields 'name' and 'notice' is required")
        info, role, _ = self._caller(group, me)
        self._require_role(group, me, role, MANAGERS, "update it")
        name = name if name is not None and name != info["name"] else None
        notice = notice if notice is not None and notice != info["notice"] else None
        if name is None and notice is None:
            return {}   # nothing changes: nothing to tell
        _, queued = self.store.update_group(group, name=name, notice=notice,
                                            events=(me, None, [event("updated", me, name=name, notice=notice)]))
        self.events.post_row(queued)
        return {}

    def set_role(self, me, group, user, role):
        def check():
            _, mine, row = self._caller(group, me, target=user)
            self._require_role(group, me, mine, (OWNER,), "set roles")
            row = self._require_target(group, user, row)
            if row["role"] == OWNER:
                raise Forbidden(f"the owner's role in group {group!r} cannot be set: use group_transfer")
            if row["role"] == role:
                raise Conflict(f"user {user!r} is already {role_name(role)} of group {group!r}")

        check()
        done, queued = self.store.set_member_role(group, user, role,
                                                  events=(me, None, [event("role", me, user, role=role)]))
        if not done:
            check()   # raises what changed meanwhile
            raise Conflict(f"group {group!r} changed meanwhile; try again")
        self.events.post_row(queued)
        return {}

    def _managed_target(self, group, me, user, verb, done):
        """The checks of kick and mute: the caller is the owner or an admin, ``user`` is a
        member other than the owner, and an admin acts on members only.  -> (the target's
        member row, the roles it may have for the change to apply: checked again by the
        store's write, so a role changed meanwhile is no longer acted on)."""
        _, mine, row = self._caller(group, me, target=user)
        self._require_role(group, me, mine, MANAGERS, f"{verb} members")
        row = self._require_target(group, user, row)
        if row["role"] == OWNER:
            raise Forbidden(f"the owner of group {group!r} cannot be {done}")
        if mine == ADMIN and row["role"] == ADMIN:
            raise Forbidden(f"an admin of group {group!r} may {verb} members only; {user!r} is an admin")
        return row, (ADMIN, MEMBER) if mine == OWNER else (MEMBER,)

    def kick(self, me, group, user):
        def check():
            return self._managed_target(group, me, user, "kick", "kicked")[1]

        kickable = check()
        done, queued = self.store.remove_member(group, user, roles=kickable,
                                                events=(me, None, [event("kicked", me, user)]))
        if not done:
            check()
            raise Conflict(f"group {group!r} changed meanwhile; try again")
        self.events.post_row(queued)
        return {}

    def mute(self, me, group, user, until):
        until = effective_until(until, now_ms())
        if user is None:
            info, mine, _ = self._caller(group, me)
            self._require_role(group, me, mine, MANAGERS, "mute members")
            if effective_until(info["muted_all"], now_ms()) == until:
                return {}   # already so
            body = event("muted", me, until=until) if until else event("unmuted", me)
            _, queued = self.store.set_muted_all(group, until, events=(me, None, [body]))
            self.events.post_row(queued)   # None: set to the same meanwhile, nothing to tell
            return {}

        def check():
            return self._managed_target(group, me, user, "mute", "muted")

        row, mutable = check()
        if effective_until(row["muted_until"], now_ms()) == until:
            return {}   # already so
        body = event("muted", me, user, until=until) if until else event("unmuted", me, user)
        done, queued = self.store.mute_member(group, user, until, mutable, events=(me, None, [body]))
        if not done:
            check()
            return {}   # set to the same by someone else meanwhile
        self.events.post_row(queued)
        return {}

    def transfer(self, me, group, user):
        def check():
            _, mine, row = self._caller(group, me, target=user)
            self._require_role(group, me, mine, (OWNER,), "transfer it")
            if user == me:
                raise BadRequest(f"field 'user': you own group {group!r} already")
            self._require_target(group, user, row)

        check()
        done, queued = self.store.transfer_group(group, me, user, events=(me, None, [event("transferred", me, user)]))
        if not done:
            check()
            raise Conflict(f"group {group!r} changed meanwhile; try again")
        self.events.post_row(queued)
        return {}

    def dissolve(self, me, group):
        def check():
            _, mine, _ = self._caller(group, me)
            self._require_role(group, me, mine, (OWNER,), "dissolve it")

        check()
        done, queued = self.store.dissolve_group(group, me, now_ms(), events=(me, None, [event("dissolved", me)]))
        if not done:
            check()
            raise Conflict(f"group {group!r} changed meanwhile; try again")
        self.events.post_row(queued)
        return {}

    # ------------------------------------------------------------------ account deletion
    @staticmethod
    def departure_events(user):
        """delete_account's events for the store (Store.delete_user ``group_events``):
        fn(group, new owner or None) -> the bodies told to the members that remain in each
        live group ``user`` was in: they left, and where ownership passed."""
        def bodies(group, heir):
            out = [event("left", user, user)]
            if heir:
                out.append(event("transferred", user, heir))
            return out
        return bodies

    def account_deleted(self, queued):
        """After delete_account: post the group events the deletion queued in its own
        transaction (``queued``: the store's rows), like a change's: a failed post is
        logged (group_event_failed) and redelivered.  Never raises."""
        for row in queued:
            self.events.post_row(row)


def role_name(role):
    return {OWNER: "the owner", ADMIN: "an admin", MEMBER: "a member"}.get(role, role)
