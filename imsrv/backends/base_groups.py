"""The groups part of the durable-store interface (:class:`~imsrv.backends.base.Store`
inherits it): groups, members, roles, mutes, transfer and dissolution (protocol v1.1's
groups with roles).  Conventions (timestamps, names, atomicity): imsrv.backends.base.

The group event outbox: every write below that takes ``events=(actor, recipients, bodies)``
(create_group, invite_members, remove_member, set_member_role, mute_member, set_muted_all,
update_group, transfer_group, dissolve_group) then also writes one ``group_event_queue``
row in the same transaction as the change, only if the change applied: the group, the
actor, the recipients (None: the group's members after the change, read in the
transaction; remove_member adds the user removed, i.e. the members before it) and the
event bodies (a list of dicts; invite_members: a function of the users added -> that
list).  No row when nobody is to be told or there is nothing to say.  With ``events`` the
write returns ``(what it returns without events, the row or None)``, the row as
take_group_events gives it: {"id", "group", "actor", "recipients", "bodies", "ts"}.  The rows are
posted and deleted by imsrv.core.group_events (take_group_events, delete_group_events).
"""


class GroupsInterface:
    # ------------------------------------------------------------------ groups
    # A member's role is "owner", "admin" or "member": the owner's row says "owner" and
    # get_group's "owner" names it (they change together).  muted_until (a member) and
    # muted_all (a group: everyone but its owner and admins): 0 not muted, -1 forever,
    # else ms since the epoch (muted while now < it).  dissolved: 0, or when the group was
    # dissolved; its member rows stay (the former members may still read it).
    def create_group(self, group, name, owner, members, ts, events=None):
        """Create a group; ``owner`` (the "owner" role) and ``members`` (the "member" role;
        the owner may be listed too, duplicates are one) join at ts.  DuplicateKey if the
        group id exists (nothing changed)."""
        raise NotImplementedError

    def get_group(self, group):
        """-> {"group", "name", "owner", "created"} or None."""
        raise NotImplementedError

    def group_info(self, group):
        """-> {"group", "name", "owner", "created", "notice" ("" if never set), "muted_all",
        "dissolved", "size" (number of member rows)} or None."""
        raise NotImplementedError

    def add_members(self, group, users, ts):
        """Add users not yet members (role "member").  -> list of the ones actually added,
        in the order given."""
        raise NotImplementedError

    def invite_members(self, group, users, ts, max_members=None, events=None):
        """add_members, atomically against concurrent invites of the same group: if the group
        would have more than ``max_members`` members (None: no cap) with the new ones, add
        nobody and return None.  -> list of the users added (in the order given; [] when all
        were members, or there is no such group)."""
        raise NotImplementedError

    def remove_member(self, group, user, roles=None, events=None):
        """Delete ``user``'s member row (only if its role is one of ``roles``, when given).
        -> True if a row was deleted."""
        raise NotImplementedError

    def is_member(self, group, user):
        raise NotImplementedError

    def get_members(self, group, users):
        """-> {user: {"role", "muted_until", "joined"}} for those of ``users`` who are
        members of ``group``."""
        raise NotImplementedError

    def list_members(self, group):
        """Member names, sorted."""
        raise NotImplementedError

    def list_member_details(self, group):
        """[{"user", "role", "muted_until"}] of every member, sorted by user name."""
        raise NotImplementedError

    def set_member_role(self, group, user, role, events=None):
        """Set a member's role ("admin" or "member"); never the owner's row.  -> True if it
        changed (False: not a member, the owner, or already that role)."""
        raise NotImplementedError

    def mute_member(self, group, user, until, roles, events=None):
        """Set a member's muted_until to ``until``, only if its role is one of ``roles``.
        -> True if it changed (False: not a member, another role, or already so)."""
        raise NotImplementedError

    def set_muted_all(self, group, until, events=None):
        """Set the group's muted_all.  -> True if it changed."""
        raise NotImplementedError

    def update_group(self, group, name=None, notice=None, events=None):
        """Set the name and/or the notice (None: leave as is).  With ``events``: a row
        unless there is no such group or nothing to set."""
        raise NotImplementedError

    def transfer_group(self, group, old_owner, new_owner, events=None):
        """Atomically, if ``old_owner`` owns the group, it is not dissolved and
        ``new_owner`` (another user) is a member: ``new_owner`` becomes the owner (role
        "owner") and ``old_owner`` an admin.  -> True if done (False: nothing changed)."""
        raise NotImplementedError

    def dissolve_group(self, group, owner, ts, events=None):
        """Mark the group dissolved at ``ts`` if ``owner`` owns it and it is not dissolved
        yet (member rows stay).  -> True if done."""
        raise NotImplementedError

    def list_groups(self, user):
        """[{"group", "name"}] of the groups ``user`` is in, sorted by group id."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the event outbox
    def take_group_events(self, limit, after=0):
        """The oldest ``limit`` queue rows with an id above ``after``, by id -> [{"id",
        "group", "actor", "recipients", "bodies", "ts" (ms, when written)}]."""
        raise NotImplementedError

    def delete_group_events(self, ids):
        """Delete the queue rows ``ids`` (a missing one is no error) -> the number deleted."""
        raise NotImplementedError
