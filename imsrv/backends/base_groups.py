"""The groups part of the durable-store interface (:class:`~imsrv.backends.base.Store`
inherits it): groups, members, roles, mutes, transfer and dissolution (protocol v1.1's
groups with roles).  Conventions (timestamps, names, atomicity): imsrv.backends.base."""


class GroupsInterface:
    # ------------------------------------------------------------------ groups
    # A member's role is "owner", "admin" or "member": the owner's row says "owner" and
    # get_group's "owner" names it (they change together).  muted_until (a member) and
    # muted_all (a group: everyone but its owner and admins): 0 not muted, -1 forever,
    # else ms since the epoch (muted while now < it).  dissolved: 0, or when the group was
    # dissolved; its member rows stay (the former members may still read it).
    def create_group(self, group, name, owner, members, ts):
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

    def invite_members(self, group, users, ts, max_members=None):
        """add_members, atomically against concurrent invites of the same group: if the group
        would have more than ``max_members`` members (None: no cap) with the new ones, add
        nobody and return None.  -> list of the users added (in the order given; [] when all
        were members, or there is no such group)."""
        raise NotImplementedError

    def remove_member(self, group, user, roles=None):
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

    def set_member_role(self, group, user, role):
        """Set a member's role ("admin" or "member"); never the owner's row.  -> True if it
        changed (False: not a member, the owner, or already that role)."""
        raise NotImplementedError

    def mute_member(self, group, user, until, roles):
        """Set a member's muted_until to ``until``, only if its role is one of ``roles``.
        -> True if it changed (False: not a member, another role, or already so)."""
        raise NotImplementedError

    def set_muted_all(self, group, until):
        """Set the group's muted_all.  -> True if it changed."""
        raise NotImplementedError

    def update_group(self, group, name=None, notice=None):
        """Set the name and/or the notice (None: leave as is)."""
        raise NotImplementedError

    def transfer_group(self, group, old_owner, new_owner):
        """Atomically, if ``old_owner`` owns the group, it is not dissolved and
        ``new_owner`` (another user) is a member: ``new_owner`` becomes the owner (role
        "owner") and ``old_owner`` an admin.  -> True if done (False: nothing changed)."""
        raise NotImplementedError

    def dissolve_group(self, group, owner, ts):
        """Mark the group dissolved at ``ts`` if ``owner`` owns it and it is not dissolved
        yet (member rows stay).  -> True if done."""
        raise NotImplementedError

    def list_groups(self, user):
        """[{"group", "name"}] of the groups ``user`` is in, sorted by group id."""
        raise NotImplementedError
