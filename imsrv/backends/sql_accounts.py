"""Account safety in SQL (schema version 2): the password change and the account
deletion of :class:`~imsrv.backends.base.Store`, mixed into
:class:`~imsrv.backends.sql.SqlStore` (it uses its ``transaction`` and ``dialect``).

Both are one transaction guarded by the password hash the core just verified
(``UPDATE users ... WHERE pw_hash = ?``): a concurrent change makes the second one change
nothing (None), never half of it.  A deleted account keeps its ``users`` row (``deleted``
= when, pw_hash :data:`DELETED_HASH`, name and text cleared) so that its name stays taken;
everything that linked others to it goes.
"""

# pw_hash of a deleted account: no argon2 hash, so nothing ever verifies against it
DELETED_HASH = "!deleted"


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

    def delete_user(self, user, old_hash, ts):
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
            cur.execute(r("DELETE FROM group_members WHERE user = ?"), (user,))
            groups = self._pass_owned_groups(cur, user)   # sql_groups.py
            cur.execute(r("DELETE FROM inbox WHERE user = ?"), (user,))
            cur.execute(r("DELETE FROM conversations WHERE user = ?"), (user,))
        return {"friends": friends, "groups": groups, "tokens": tokens}
