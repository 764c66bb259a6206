"""Groups in SQL (protocol v1 groups and v1.1 roles), mixed into
:class:`~imsrv.backends.sql.SqlStore` (it uses its ``_run``, ``transaction`` and
``dialect``).  The contracts are the groups section of :class:`~imsrv.backends.base.Store`.

Columns (schema.py, versions 1 and 4): ``groups_(grp, name, owner, created, notice,
muted_all, dissolved)``, ``group_members(grp, user, joined, role, muted_until)``.  A
member's ``role`` is owner, admin or member; the owner's row always says 'owner' and
``groups_.owner`` names it (both are changed in one transaction).  ``muted_until`` and
``muted_all``: 0 not muted, -1 forever, else muted while now (ms) < the value.
``dissolved``: 0, or when the group was dissolved (its member rows stay: the former members
keep reading its history).

The writes that read before they write (invite_members, transfer_group) run in one
transaction that first locks the group's ``groups_`` row (MySQL ``FOR UPDATE``; SQLite
has one writer at a time), so concurrent changes of one group are applied one after the
other.  Each multi-statement write goes through ``self._retrying`` (the MySQL engine's
deadlock / lock-wait-timeout retry; a single attempt elsewhere).
"""
from .sql_dialect import IN_CHUNK, chunks

OWNER, ADMIN, MEMBER = "owner", "admin", "member"


class GroupsSql:
    def _retrying(self, fn):
        """Run the transaction ``fn()`` once (engines whose transactions can be rolled back
        for a deadlock override this with a retrying one: MysqlStore)."""
        return fn()

    def _member_insert_sql(self):
        d = self.dialect
        return d.render(d.insert_ignore("group_members", ("grp", "user", "joined", "role")))

    def _lock_group(self, cur, group):
        """Lock ``group``'s row for this transaction -> (owner, dissolved), or None."""
        cur.execute(self.dialect.render("SELECT owner, dissolved FROM groups_ WHERE grp = ?"
                                        + self.dialect.for_update), (group,))
        row = cur.fetchone()
        return None if row is None else (row[0], row[1])

    # ------------------------------------------------------------------ create, read
    def create_group(self, group, name, owner, members, ts):
        with self.transaction(f"create_group {group!r}") as cur:
            cur.execute(self.dialect.render(
                "INSERT INTO groups_ (grp, name, owner, created) VALUES (?, ?, ?, ?)"),
                (group, name, owner, ts))
            cur.executemany(self._member_insert_sql(),
                            [(group, u, ts, OWNER if u == owner else MEMBER)
                             for u in dict.fromkeys([owner] + list(members))])

    def get_group(self, group):
        row = self._run(f"get_group {group!r}",
                        "SELECT name, owner, created FROM groups_ WHERE grp = ?",
                        (group,), "one")
        if row is None:
            return None
        return {"group": group, "name": row[0], "owner": row[1], "created": row[2]}

    def group_info(self, group):
        row = self._run(f"group_info {group!r}",
                        "SELECT g.name, g.owner, g.created, g.notice, g.muted_all, g.dissolved,"
                        " (SELECT COUNT(*) FROM group_members m WHERE m.grp = g.grp)"
                        " FROM groups_ g WHERE g.grp = ?", (group,), "one")
        if row is None:
            return None
        return {"group": group, "name": row[0], "owner": row[1], "created": row[2],
                "notice": row[3] or "", "muted_all": row[4], "dissolved": row[5], "size": row[6]}

    def is_member(self, group, user):
        return self._run(f"is_member {group!r} {user!r}",
                         "SELECT 1 FROM group_members WHERE grp = ? AND user = ?",
                         (group, user), "one") is not None

    def get_members(self, group, users):
        users = list(dict.fromkeys(users))
        out = {}
        for part in chunks(users, IN_CHUNK):
            rows = self._run(f"get_members {group!r}",
                             "SELECT user, role, muted_until, joined FROM group_members"
                             f" WHERE grp = ? AND user IN ({self._in(len(part))})",
                             [group] + part, "all")
            for r in rows:
                out[r[0]] = {"role": r[1], "muted_until": r[2], "joined": r[3]}
        return out

    def list_members(self, group):
        rows = self._run(f"list_members {group!r}",
                         "SELECT user FROM group_members WHERE grp = ? ORDER BY user",
                         (group,), "all")
        return [r[0] for r in rows]

    def list_member_details(self, group):
        rows = self._run(f"list_member_details {group!r}",
                         "SELECT user, role, muted_until FROM group_members WHERE grp = ?"
                         " ORDER BY user", (group,), "all")
        return [{"user": r[0], "role": r[1], "muted_until": r[2]} for r in rows]

    def list_groups(self, user):
        rows = self._run(f"list_groups {user!r}",
                         "SELECT g.grp, g.name FROM group_members m"
                         " JOIN groups_ g ON g.grp = m.grp"
                         " WHERE m.user = ? ORDER BY m.grp", (user,), "all")
        return [{"group": r[0], "name": r[1]} for r in rows]

    # ------------------------------------------------------------------ membership
    def add_members(self, group, users, ts):
        # one attempt: the MySQL engine wraps add_members in its retry itself
        return self._invite_members(group, users, ts, None)

    def invite_members(self, group, users, ts, max_members=None):
        return self._retrying(lambda: self._invite_members(group, users, ts, max_members))

    def _invite_members(self, group, users, ts, max_members):
        users = list(dict.fromkeys(users))
        r = self.dialect.render
        with self.transaction(f"invite_members {group!r}") as cur:
            if self._lock_group(cur, group) is None:
                return []
            present = set()
            for part in chunks(users, IN_CHUNK):
                cur.execute(r("SELECT user FROM group_members"
                              f" WHERE grp = ? AND user IN ({self._in(len(part))})"), [group] + part)
                present.update(row[0] for row in cur.fetchall())
            new = [u for u in users if u not in present]
            if new and max_members is not None:
                cur.execute(r("SELECT COUNT(*) FROM group_members WHERE grp = ?"), (group,))
                if cur.fetchone()[0] + len(new) > max_members:
                    return None
            if new:
                cur.executemany(self._member_insert_sql(), [(group, u, ts, MEMBER) for u in new])
        return new

    def remove_member(self, group, user, roles=None):
        if roles is None:
            return self._run(f"remove_member {group!r} {user!r}",
                             "DELETE FROM group_members WHERE grp = ? AND user = ?",
                             (group, user)) > 0
        roles = list(roles)
        return self._run(f"remove_member {group!r} {user!r}",
                         "DELETE FROM group_members WHERE grp = ? AND user = ?"
                         f" AND role IN ({self._in(len(roles))})", [group, user] + roles) > 0

    # ------------------------------------------------------------------ roles, mutes, settings
    def set_member_role(self, group, user, role):
        return self._run(f"set_member_role {group!r} {user!r}",
                         "UPDATE group_members SET role = ? WHERE grp = ? AND user = ?"
                         " AND role <> ? AND role <> ?", (role, group, user, OWNER, role)) > 0

    def mute_member(self, group, user, until, roles):
        roles = list(roles)
        return self._run(f"mute_member {group!r} {user!r}",
                         "UPDATE group_members SET muted_until = ? WHERE grp = ? AND user = ?"
                         f" AND muted_until <> ? AND role IN ({self._in(len(roles))})",
                         [until, group, user, until] + roles) > 0

    def set_muted_all(self, group, until):
        return self._run(f"set_muted_all {group!r}",
                         "UPDATE groups_ SET muted_all = ? WHERE grp = ? AND muted_all <> ?",
                         (until, group, until)) > 0

    def update_group(self, group, name=None, notice=None):
        sets, params = [], []
        if name is not None:
            sets.append("name = ?")
            params.append(name)
        if notice is not None:
            sets.append("notice = ?")
            params.append(notice)
        if not sets:
            return
        self._run(f"update_group {group!r}",
                  f"UPDATE groups_ SET {', '.join(sets)} WHERE grp = ?", params + [group])

    # ------------------------------------------------------------------ owner changes
    def transfer_group(self, group, old_owner, new_owner):
        return self._retrying(lambda: self._transfer_group(group, old_owner, new_owner))

    def _transfer_group(self, group, old_owner, new_owner):
        r = self.dialect.render
        with self.transaction(f"transfer_group {group!r} to {new_owner!r}") as cur:
            state = self._lock_group(cur, group)
            if state is None or state != (old_owner, 0) or new_owner == old_owner:
                return False
            cur.execute(r("SELECT 1 FROM group_members WHERE grp = ? AND user = ?"), (group, new_owner))
            if cur.fetchone() is None:
                return False
            cur.execute(r("UPDATE groups_ SET owner = ? WHERE grp = ?"), (new_owner, group))
            cur.execute(r("UPDATE group_members SET role = ? WHERE grp = ? AND user = ?"),
                        (OWNER, group, new_owner))
            cur.execute(r("UPDATE group_members SET role = ? WHERE grp = ? AND user = ?"),
                        (ADMIN, group, old_owner))
        return True

    def dissolve_group(self, group, owner, ts):
        return self._run(f"dissolve_group {group!r}",
                         "UPDATE groups_ SET dissolved = ? WHERE grp = ? AND owner = ?"
                         " AND dissolved = 0", (ts, group, owner)) > 0

    def _pass_owned_groups(self, cur, user):
        """delete_user's group part, after the user's member rows are deleted: each group
        ``user`` owns passes to its oldest admin, else its oldest member (earliest joined,
        then name), whose row becomes the owner's.  -> {group: heir or None}."""
        r = self.dialect.render
        cur.execute(r("SELECT grp FROM groups_ WHERE owner = ? ORDER BY grp"), (user,))
        groups = {}
        for (grp,) in cur.fetchall():
            # a group's members, by primary key (at most max_members rows), chosen here
            cur.execute(r("SELECT user, role, joined FROM group_members WHERE grp = ?"), (grp,))
            rows = cur.fetchall()
            heir = min(rows, key=lambda m: (m[1] != ADMIN, m[2], m[0]))[0] if rows else None
            groups[grp] = heir
            if heir is not None:
                cur.execute(r("UPDATE groups_ SET owner = ? WHERE grp = ?"), (heir, grp))
                cur.execute(r("UPDATE group_members SET role = ? WHERE grp = ? AND user = ?"),
                            (OWNER, grp, heir))
        return groups
