"""Friend requests, friends and blocks in SQL (groups: sql_groups.py), mixed into
:class:`~imsrv.backends.sql.SqlStore` (it uses its ``_run``, ``transaction`` and
``dialect``).  The statements whose text depends on the dialect are built once per store
by :meth:`ContactsSql._prepare_contacts_sql`.
"""
from .sql_dialect import PAIR_CHUNK, chunks


class ContactsSql:
    def _prepare_contacts_sql(self, d):
        self._sql_request_put = d.render(d.upsert(
            "friend_requests", ("frm", "to_user", "message", "ts"), ("frm", "to_user"),
            ("message", "ts")))
        self._sql_friend_add = d.render(d.insert_ignore("friends", ("user", "friend", "ts")))
        self._sql_block_add = d.render(d.insert_ignore("blocks", ("user", "blocked", "ts")))

    # ------------------------------------------------------------------ friend requests
    def put_request(self, frm, to, message, ts):
        self._run(f"put_request {frm!r} -> {to!r}", self._sql_request_put,
                  (frm, to, message, ts))

    def get_request(self, frm, to):
        row = self._run(f"get_request {frm!r} -> {to!r}",
                        "SELECT message, ts FROM friend_requests"
                        " WHERE frm = ? AND to_user = ?", (frm, to), "one")
        if row is None:
            return None
        return {"from": frm, "to": to, "message": row[0], "ts": row[1]}

    def delete_request(self, frm, to):
        return self._run(f"delete_request {frm!r} -> {to!r}",
                         "DELETE FROM friend_requests WHERE frm = ? AND to_user = ?",
                         (frm, to)) > 0

    def list_requests(self, to):
        rows = self._run(f"list_requests to {to!r}",
                         "SELECT frm, message, ts FROM friend_requests WHERE to_user = ?"
                         " ORDER BY ts, frm", (to,), "all")
        return [{"from": r[0], "message": r[1], "ts": r[2]} for r in rows]

    def _delete_requests_both_ways(self, cur, a, b):
        sql = self.dialect.render("DELETE FROM friend_requests WHERE frm = ? AND to_user = ?")
        cur.execute(sql, (a, b))
        cur.execute(sql, (b, a))

    # ------------------------------------------------------------------ friends
    def make_friends(self, a, b, ts):
        with self.transaction(f"make_friends {a!r} {b!r}") as cur:
            self._delete_requests_both_ways(cur, a, b)
            cur.execute(self._sql_friend_add, (a, b, ts))
            cur.execute(self._sql_friend_add, (b, a, ts))

    def remove_friends(self, a, b):
        sql = self.dialect.render("DELETE FROM friends WHERE user = ? AND friend = ?")
        with self.transaction(f"remove_friends {a!r} {b!r}") as cur:
            cur.execute(sql, (a, b))
            n = cur.rowcount
            cur.execute(sql, (b, a))
            n += cur.rowcount
        return n > 0

    def are_friends(self, a, b):
        return self._run(f"are_friends {a!r} {b!r}",
                         "SELECT 1 FROM friends WHERE user = ? AND friend = ?",
                         (a, b), "one") is not None

    def list_friends(self, user):
        # LEFT JOIN: a friend whose account row is missing is still listed (name None).
        rows = self._run(f"list_friends {user!r}",
                         "SELECT f.friend, u.name, f.remark FROM friends f"
                         " LEFT JOIN users u ON u.user = f.friend"
                         " WHERE f.user = ? ORDER BY f.friend", (user,), "all")
        return [{"user": r[0], "name": r[1], "remark": r[2]} for r in rows]

    def set_remark(self, user, friend, remark):
        # user's own row of the friendship: the remark is theirs alone.  MySQL counts the
        # rows changed, not matched: the same remark again changes none
        changed = self._run(f"set_remark {user!r} {friend!r}",
                            "UPDATE friends SET remark = ? WHERE user = ? AND friend = ?",
                            (remark, user, friend))
        return changed > 0 or self.are_friends(user, friend)

    # ------------------------------------------------------------------ blocks
    def add_block(self, a, b, ts):
        with self.transaction(f"add_block {a!r} {b!r}") as cur:
            cur.execute(self._sql_block_add, (a, b, ts))
            self._delete_requests_both_ways(cur, a, b)

    def remove_block(self, a, b):
        return self._run(f"remove_block {a!r} {b!r}",
                         "DELETE FROM blocks WHERE user = ? AND blocked = ?", (a, b)) > 0

    def blocked_either(self, a, b):
        # Two primary-key probes (a UNION ALL keeps both on the index in every engine).
        rows = self._run(f"blocked_either {a!r} {b!r}",
                         "SELECT 1 FROM blocks WHERE user = ? AND blocked = ?"
                         " UNION ALL SELECT 1 FROM blocks WHERE user = ? AND blocked = ?",
                         (a, b, b, a), "all")
        return bool(rows)

    def list_blocked(self, user):
        rows = self._run(f"list_blocked {user!r}",
                         "SELECT blocked FROM blocks WHERE user = ? ORDER BY blocked",
                         (user,), "all")
        return [r[0] for r in rows]

    def relations(self, pairs):
        pairs = list(dict.fromkeys(pairs))
        friends, blocked = set(), set()
        for part in chunks(pairs, PAIR_CHUNK):
            params = [v for pair in part for v in pair]
            where = " OR ".join(["(user = ? AND friend = ?)"] * len(part))
            friends.update(tuple(r) for r in self._run(
                "relations", f"SELECT user, friend FROM friends WHERE {where}", params, "all"))
            both = part + [(b, a) for a, b in part]
            where = " OR ".join(["(user = ? AND blocked = ?)"] * len(both))
            blocked.update(tuple(r) for r in self._run(
                "relations", f"SELECT user, blocked FROM blocks WHERE {where}",
                [v for pair in both for v in pair], "all"))
        return {(a, b): ((a, b) in friends, (a, b) in blocked or (b, a) in blocked) for a, b in pairs}
