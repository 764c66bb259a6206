"""Account safety in SQL (schema version 2): the password change and the account
deletion of :class:`~imsrv.backends.base.Store`, mixed into
:class:`~imsrv.backends.sql.SqlStore` (it uses its ``transaction`` and ``dialect``);
and the admin ops' part (schema version 7): bans, the login's token insert that a ban
refuses, the user listing and the counts of admin_stats.

Both are one transaction guarded by the password hash the core just verified
(``UPDATE users ... WHERE pw_hash = ?``): a concurrent change makes the second one change
nothing (None), never half of it.  A deleted account keeps its ``users`` row (``deleted``
= when, pw_hash :data:`DELETED_HASH`, name and text cleared) so that its name stays taken;
everything that linked others to it goes.
"""

# pw_hash of a deleted account: no argon2 hash, so nothing ever verifies against it
DELETED_HASH = "!deleted"

# A ban in effect at ``now`` (the second parameter): banned_until -1 (for ever) or later
_BANNED = "(banned_until = -1 OR banned_until > ?)"
# list_users' upper bound of a name prefix P: every name starting with P sorts below P + "~"
# (names are made of a-z 0-9 _ . -, all below "~" in the byte order both engines compare in)
_PREFIX_END = "~"
# count_messages_since counts the rows themselves up to this many mids, else takes the
# difference of the mids (see there)
EXACT_COUNT_UP_TO = 10000


class AccountSafetySql:
    def set_password(self, user, old_hash, new_hash, keep_token_hash=None):
        with self.transaction(f"set_password {user!r}") as cur:
            cur.execute(self.dialect.render(
                "UPDATE users SET pw_hash = ? WHERE user = ? AND pw_hash = ? AND deleted = 0"),
                (new_hash, user, old_hash))
            if cur.rowcount != 1:
                return None
            cur.execute(self.dialect.render(
                "DELETE FROM tokens WHERE user = ? AND token_hash <> ?"), (user, keep_token_hash or ""))
            return cur.rowcount

    def delete_user(self, user, old_hash, ts, group_events=None):
        r = self.dialect.render
        with self.transaction(f"delete_user {user!r}") as cur:
            cur.execute(r("UPDATE users SET pw_hash = ?, name = NULL, text = '', avatar = NULL, deleted = ?"
                          " WHERE user = ? AND pw_hash = ? AND deleted = 0"),
                        (DELETED_HASH, ts, user, old_hash))
            if cur.rowcount != 1:
                return None
            cur.execute(r("DELETE FROM tokens WHERE user = ?"), (user,))
            tokens = cur.rowcount
            cur.execute(r("SELECT friend FROM friends WHERE user = ? ORDER BY friend"), (user,))
            friends = [row[0] for row in cur.fetchall()]
            cur.execute(r("DELETE FROM friends WHERE user = ?"), (user,))
            if friends:  # the other direction, by primary key
                cur.executemany(r("DELETE FROM friends WHERE user = ? AND friend = ?"),
                                [(f, user) for f in friends])
            cur.execute(r("DELETE FROM friend_requests WHERE frm = ?"), (user,))
            cur.execute(r("DELETE FROM friend_requests WHERE to_user = ?"), (user,))
            cur.execute(r("DELETE FROM blocks WHERE user = ?"), (user,))
            cur.execute(r("DELETE FROM blocks WHERE blocked = ?"), (user,))
            live = []
            if group_events is not None:   # the live groups the user leaves, told below
                cur.execute(r("SELECT m.grp FROM group_members m JOIN groups_ g ON g.grp = m.grp"
                              " WHERE m.user = ? AND g.dissolved = 0 ORDER BY m.grp"), (user,))
                live = [row[0] for row in cur.fetchall()]
            cur.execute(r("DELETE FROM group_members WHERE user = ?"), (user,))
            groups = self._pass_owned_groups(cur, user)   # sql_groups.py
            # the group event outbox (sql_groups.py): each live group's events, queued in
            # this transaction for the members that remain
            queued = [self._queue_events(cur, grp, (user, None, group_events(grp, groups.get(grp))))
                      for grp in live]
            cur.execute(r("DELETE FROM inbox WHERE user = ?"), (user,))
            cur.execute(r("DELETE FROM conversations WHERE user = ?"), (user,))
        out = {"friends": friends, "groups": groups, "tokens": tokens}
        if group_events is not None:
            out["events"] = [row for row in queued if row is not None]
        return out

    # ------------------------------------------------------------------ admin (version 7)
    def add_login_token(self, token_hash, user, device, expires, pw_hash, now):
        # add_token's guarded insert with the ban as one more condition: one statement, the
        # users row read with a share lock (MySQL), so a ban_user in flight is waited for
        return self._run(f"add_login_token for {user!r}",
                         "INSERT INTO tokens (token_hash, user, device, expires)"
                         " SELECT ?, ?, ?, ? FROM users WHERE user = ? AND pw_hash = ?"
                         f" AND deleted = 0 AND NOT {_BANNED}" + self.dialect.lock_shared,
                         (token_hash, user, device, expires, user, pw_hash, now)) > 0

    def get_ban(self, user, now):
        row = self._run(f"get_ban {user!r}",
                        f"SELECT banned_until, ban_reason FROM users WHERE user = ? AND {_BANNED}",
                        (user, now), "one")
        if row is None:
            return None
        return {"until": row[0], "reason": row[1] or ""}

    def ban_user(self, user, until, reason):
        r = self.dialect.render
        with self.transaction(f"ban_user {user!r}") as cur:
            # the row first (MySQL's rowcount of an UPDATE that changes nothing, a ban given
            # again, is 0)
            cur.execute(r("SELECT 1 FROM users WHERE user = ? AND deleted = 0" + self.dialect.for_update), (user,))
            if cur.fetchone() is None:
                return None
            cur.execute(r("UPDATE users SET banned_until = ?, ban_reason = ? WHERE user = ?"), (until, reason, user))
            cur.execute(r("DELETE FROM tokens WHERE user = ?"), (user,))
            return cur.rowcount

    def unban_user(self, user, now):
        r = self.dialect.render
        with self.transaction(f"unban_user {user!r}") as cur:
            cur.execute(r("SELECT banned_until FROM users WHERE user = ? AND deleted = 0" + self.dialect.for_update),
                        (user,))
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute(r("UPDATE users SET banned_until = 0, ban_reason = NULL WHERE user = ?"), (user,))
            return row[0] == -1 or row[0] > now

    def list_users(self, prefix="", after=None, limit=50, now=0):
        where, params = ["deleted = 0"], []
        if prefix:
            where.append("user >= ? AND user < ?")
            params += [prefix, prefix + _PREFIX_END]
        if after is not None:
            where.append("user > ?")
            params.append(after)
        rows = self._run("list_users",
                         "SELECT user, name, banned_until, ban_reason FROM users"
                         f" WHERE {' AND '.join(where)} ORDER BY user LIMIT ?", params + [limit], "all")
        out = []
        for user, name, until, reason in rows:
            banned = until == -1 or until > now
            out.append({"user": user, "name": name, "banned_until": until if banned else 0,
                        "ban_reason": (reason or "") if banned else None})
        return out

    def count_users(self):
        return self._run("count_users", "SELECT COUNT(*) FROM users WHERE deleted = 0", (), "one")[0]

    def count_messages_since(self, ts):
        """There is no index on messages.ts (it would cost every send), but mids grow with
        ts: the first mid at or after ``ts`` is found by a binary search of the primary key
        (each step a probe of the first row at or after a mid: ~log2(mids) probes).  Up to
        EXACT_COUNT_UP_TO mids from there, the rows are counted (a short range of the key);
        above, the answer is the difference of the mids, which also counts mids a rolled-back
        batch took and left unused (MySQL only; SQLite's AUTOINCREMENT rolls back with the
        batch).  In the distributed deployment the forwarders' clocks and interleaved
        commits make ts only nearly ordered by mid: the boundary may be off by the few
        messages of that instant."""
        r = self.dialect.render
        probe = r("SELECT mid, ts FROM messages WHERE mid >= ? ORDER BY mid LIMIT 1")
        with self.autocommit("count_messages_since") as cur:
            # one aggregate per statement: SQLite reads MIN or MAX of the key at one end,
            # but scans the whole table for both in one SELECT
            cur.execute("SELECT MAX(mid) FROM messages")
            hi = cur.fetchone()[0]
            if hi is None:
                return 0
            cur.execute("SELECT MIN(mid) FROM messages")
            lo = cur.fetchone()[0]
            cur.execute(probe, (hi,))
            if cur.fetchone()[1] < ts:
                return 0
            # the first row at or after position ``hi`` is at or after ts; find the lowest
            # such position (rows before the first one at or after ts are older)
            while lo < hi:
                m = (lo + hi) // 2
                cur.execute(probe, (m,))
                row_mid, row_ts = cur.fetchone()
                if row_ts >= ts:
                    hi = m
                else:
                    lo = row_mid + 1
            cur.execute(probe, (lo,))
            first = cur.fetchone()[0]
            cur.execute("SELECT MAX(mid) FROM messages")
            newest = cur.fetchone()[0]
            if newest - first + 1 > EXACT_COUNT_UP_TO:
                return newest - first + 1
            cur.execute(r("SELECT COUNT(*) FROM messages WHERE mid >= ?"), (first,))
            return cur.fetchone()[0]
