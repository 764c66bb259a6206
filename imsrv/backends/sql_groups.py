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

The group event outbox (schema version 8, ``group_event_queue``): each write that changes
what members are told takes ``events=(actor, recipients, bodies)`` and then inserts one
queue row in the same transaction as the change (a write that changes nothing, or rolls
back, leaves none); ``recipients`` None means the members after the change (plus, for
remove_member, the user removed: the members before it), read inside the transaction.  With
``events`` a write returns ``(what it returns without, the queue row or None)``, the row as
:meth:`GroupsSql.take_group_events` gives it (the recipients and bodies as written).
imsrv.core.group_events posts the rows and deletes them (:meth:`GroupsSql.take_group_events`,
:meth:`GroupsSql.delete_group_events`).
"""
import time

from .. import jsonlib
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

    # ------------------------------------------------------------------ the event outbox
    def _queue_events(self, cur, group, events, removed=None, added=None):
        """Inside a group write's transaction: the queue row of ``events`` = (actor,
        recipients, bodies) -> the row ({"id", "group", "actor", "recipients", "bodies",
        "ts"}), or None (no events, nobody to tell or nothing to say).  ``bodies`` may be a
        function of ``added`` (invite_members: the users added)."""
        if events is None:
            return None
        actor, recipients, bodies = events
        if callable(bodies):
            bodies = bodies(added)
        if recipients is None:
            cur.execute(self.dialect.render("SELECT user FROM group_members WHERE grp = ? ORDER BY user"), (group,))
            recipients = [row[0] for row in cur.fetchall()]
            if removed is not None:
                recipients.append(removed)
        recipients = list(dict.fromkeys(recipients))
        bodies = list(bodies or [])
        if not recipients or not bodies:
            return None
        ts = int(time.time() * 1000)
        cur.execute(self.dialect.render("INSERT INTO group_event_queue (grp, actor, recipients, bodies, ts)"
                                        " VALUES (?, ?, ?, ?, ?)"),
                    (group, actor, jsonlib.dumps(recipients).decode("utf-8"),
                     jsonlib.dumps(bodies).decode("utf-8"), ts))
        return {"id": cur.lastrowid, "group": group, "actor": actor, "recipients": recipients,
                "bodies": bodies, "ts": ts}

    def _guarded(self, what, sql, params, group, events, removed=None):
        """One guarded write (an UPDATE / DELETE whose rowcount says if it applied) ->
        True if it did; with ``events``: (that, the queue row or None), the row written
        in the same transaction, only if the write applied."""
        if events is None:
            return self._run(what, sql, params) > 0
        return self._retrying(lambda: self._guarded_queued(what, sql, params, group, events, removed))

    def _guarded_queued(self, what, sql, params, group, events, removed):
        with self.transaction(what) as cur:
            cur.execute(self.dialect.render(sql), params)
            if cur.rowcount <= 0:
                return False, None
            return True, self._queue_events(cur, group, events, removed=removed)

    def take_group_events(self, limit, after=0):
        """The oldest ``limit`` queue rows with an id above ``after`` -> [{"id", "group",
        "actor", "recipients", "bodies", "ts"}], by id (a range of the primary key)."""
        rows = self._run("group_event_queue take",
                         "SELECT id, grp, actor, recipients, bodies, ts FROM group_event_queue"
                         " WHERE id > ? ORDER BY id LIMIT ?", (after, limit), "all")
        return [{"id": r[0], "group": r[1], "actor": r[2], "recipients": jsonlib.loads(r[3]),
                 "bodies": jsonlib.loads(r[4]), "ts": r[5]} for r in rows]

    def delete_group_events(self, ids):
        """Delete the queue rows ``ids`` (posted) -> the number deleted.  One statement a
        row, by primary key (a post deletes its one row; a redelivery round, a few)."""
        deleted = 0
        for queue_id in dict.fromkeys(ids):
            deleted += self._run(f"group_event_queue delete {queue_id}",
                                 "DELETE FROM group_event_queue WHERE id = ?", (queue_id,))
        return deleted

    def _lock_group(self, cur, group):
        """Lock ``group``'s row for this transaction -> (owner, dissolved), or None."""
        cur.execute(self.dialect.render("SELECT owner, dissolved FROM groups_ WHERE grp = ?"
                                        + self.dialect.for_update), (group,))
        row = cur.fetchone()
        return None if row is None else (row[0], row[1])

    # ------------------------------------------------------------------ create, read
    def create_group(self, group, name, owner, members, ts, events=None):
        with self.transaction(f"create_group {group!r}") as cur:
            cur.execute(self.dialect.render(
                "INSERT INTO groups_ (grp, name, owner, created) VALUES (?, ?, ?, ?)"),
                (group, name, owner, ts))
            cur.executemany(self._member_insert_sql(),
                            [(group, u, ts, OWNER if u == owner else MEMBER)
                             for u in dict.fromkeys([owner] + list(members))])
            queued = self._queue_events(cur, group, events)
        return None if events is None else (None, queued)

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

    def invite_members(self, group, users, ts, max_members=None, events=None):
        return self._retrying(lambda: self._invite_members(group, users, ts, max_members, events))

    def _invite_members(self, group, users, ts, max_members, events=None):
        users = list(dict.fromkeys(users))
        r = self.dialect.render
        queued = None
        with self.transaction(f"invite_members {group!r}") as cur:
            if self._lock_group(cur, group) is None:
                return [] if events is None else ([], None)
            present = set()
            for part in chunks(users, IN_CHUNK):
                cur.execute(r("SELECT user FROM group_members"
                              f" WHERE grp = ? AND user IN ({self._in(len(part))})"), [group] + part)
                present.update(row[0] for row in cur.fetchall())
            new = [u for u in users if u not in present]
            if new and max_members is not None:
                cur.execute(r("SELECT COUNT(*) FROM group_members WHERE grp = ?"), (group,))
                if cur.fetchone()[0] + len(new) > max_members:
                    return None if events is None else (None, None)
            if new:
                cur.executemany(self._member_insert_sql(), [(group, u, ts, MEMBER) for u in new])
                queued = self._queue_events(cur, group, events, added=new)
        return new if events is None else (new, queued)

    def remove_member(self, group, user, roles=None, events=None):
        what = f"remove_member {group!r} {user!r}"
        if roles is None:
            return self._guarded(what, "DELETE FROM group_members WHERE grp = ? AND user = ?",
                                 (group, user), group, events, removed=user)
        roles = list(roles)
        return self._guarded(what, "DELETE FROM group_members WHERE grp = ? AND user = ?"
                             f" AND role IN ({self._in(len(roles))})", [group, user] + roles,
                             group, events, removed=user)

    # ------------------------------------------------------------------ roles, mutes, settings
    def set_member_role(self, group, user, role, events=None):
        return self._guarded(f"set_member_role {group!r} {user!r}",
                             "UPDATE group_members SET role = ? WHERE grp = ? AND user = ?"
                             " AND role <> ? AND role <> ?", (role, group, user, OWNER, role), group, events)

    def mute_member(self, group, user, until, roles, events=None):
        roles = list(roles)
        return self._guarded(f"mute_member {group!r} {user!r}",
                             "UPDATE group_members SET muted_until = ? WHERE grp = ? AND user = ?"
                             f" AND muted_until <> ? AND role IN ({self._in(len(roles))})",
                             [until, group, user, until] + roles, group, events)

    def set_muted_all(self, group, until, events=None):
        return self._guarded(f"set_muted_all {group!r}",
                             "UPDATE groups_ SET muted_all = ? WHERE grp = ? AND muted_all <> ?",
                             (until, group, until), group, events)

    def update_group(self, group, name=None, notice=None, events=None):
        sets, params = [], []
        if name is not None:
            sets.append("name = ?")
            params.append(name)
        if notice is not None:
            sets.append("notice = ?")
            params.append(notice)
        if not sets:
            return None if events is None else (None, None)
        sql = f"UPDATE groups_ SET {', '.join(sets)} WHERE grp = ?"
        if events is None:
            self._run(f"update_group {group!r}", sql, params + [group])
            return None

        def write():
            with self.transaction(f"update_group {group!r}") as cur:
                cur.execute(self.dialect.render(sql), params + [group])
                # (MySQL counts a row set to what it was as unchanged: the group's row
                # itself says whether there is a group)
                cur.execute(self.dialect.render("SELECT 1 FROM groups_ WHERE grp = ?"), (group,))
                if cur.fetchone() is None:
                    return None, None
                return None, self._queue_events(cur, group, events)
        return self._retrying(write)

    # ------------------------------------------------------------------ owner changes
    def transfer_group(self, group, old_owner, new_owner, events=None):
        return self._retrying(lambda: self._transfer_group(group, old_owner, new_owner, events))

    def _transfer_group(self, group, old_owner, new_owner, events):
        r = self.dialect.render
        undone = False if events is None else (False, None)
        with self.transaction(f"transfer_group {group!r} to {new_owner!r}") as cur:
            state = self._lock_group(cur, group)
            if state is None or state != (old_owner, 0) or new_owner == old_owner:
                return undone
            cur.execute(r("SELECT 1 FROM group_members WHERE grp = ? AND user = ?"), (group, new_owner))
            if cur.fetchone() is None:
                return undone
            cur.execute(r("UPDATE groups_ SET owner = ? WHERE grp = ?"), (new_owner, group))
            cur.execute(r("UPDATE group_members SET role = ? WHERE grp = ? AND user = ?"),
                        (OWNER, group, new_owner))
            cur.execute(r("UPDATE group_members SET role = ? WHERE grp = ? AND user = ?"),
                        (ADMIN, group, old_owner))
            queued = self._queue_events(cur, group, events)
        return True if events is None else (True, queued)

    def dissolve_group(self, group, owner, ts, events=None):
        return self._guarded(f"dissolve_group {group!r}",
                             "UPDATE groups_ SET dissolved = ? WHERE grp = ? AND owner = ?"
                             " AND dissolved = 0", (ts, group, owner), group, events)

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
