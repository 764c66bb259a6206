"""Inbox entries with a kind (protocol v1.1) in SQL, mixed into
:class:`~imsrv.backends.sql_messages.MessagesSql` (it uses the store's ``_run``, ``_in``
and ``dialect``): the send path's batched lookups (the messages a batch refers to, as
their actors hold them; the state of the groups it sends to), the message state a
recall / edit / reaction entry changes (written inside the batch's transaction), and the
reactions history shows.

The state of a message lives on its own row (schema version 4): ``messages.recalled``
(ts or 0), ``messages.edited`` (ts of the latest edit or 0) and ``edited_body``; its
reactions are rows of ``reactions(mid, emoji, user, ts, entry)``.
"""
from .. import jsonlib
from .sql_dialect import IN_CHUNK, PAIR_CHUNK, chunks

RECALL, EDIT, REACTION = "recall", "edit", "reaction"
#: the kinds whose entry changes the state of the message it refers to
STATE_KINDS = frozenset((RECALL, EDIT, REACTION))
_TRIPLE_CHUNK = PAIR_CHUNK * 2 // 3   # (a, b, c) triples per OR-of-equalities statement


def mentions_json(mentions):
    """The stored form of a send's mentions (JSON text), None for none."""
    return None if mentions is None else jsonlib.dumps(mentions).decode("utf-8")


class EntriesSql:
    def _prepare_entries_sql(self, d):
        self._sql_recall = d.render("UPDATE messages SET recalled = ? WHERE mid = ?")
        self._sql_edit = d.render("UPDATE messages SET edited = ?, edited_body = ? WHERE mid = ?")
        self._sql_reaction_add = d.render(d.insert_ignore("reactions", ("mid", "emoji", "user", "ts", "entry")))
        self._sql_reaction_del = d.render("DELETE FROM reactions WHERE mid = ? AND emoji = ? AND user = ?")

    def _apply_changes(self, cur, changes):
        """Inside store_messages' transaction: the state changes of ``changes`` ((item, the
        mid of its entry) of the items of a kind in STATE_KINDS), in batch order: recall ->
        recalled = ts; edit -> edited = ts, edited_body = the entry's body; reaction on -> a
        reactions row whose ``entry`` is the reaction entry's mid, the order history lists
        them in (kept as it was if there is one), off -> none."""
        for item, entry in changes:
            kind, ref = item["kind"], item["ref"]
            if kind == RECALL:
                cur.execute(self._sql_recall, (item["ts"], ref))
            elif kind == EDIT:
                cur.execute(self._sql_edit, (item["ts"], item["body"], ref))
            else:
                emoji, on = item["reaction"]
                if on:
                    cur.execute(self._sql_reaction_add, (ref, emoji, item["sender"], item["ts"], entry))
                else:
                    cur.execute(self._sql_reaction_del, (ref, emoji, item["sender"]))

    def held_messages(self, keys):
        keys = list(dict.fromkeys(keys))
        msgs = {}
        for part in chunks(list(dict.fromkeys(mid for _, mid in keys)), IN_CHUNK):
            for mid, sender, to, grp, conv, ts, kind, recalled, edited in self._run(
                    "held_messages",
                    "SELECT m.mid, m.sender, m.to_user, m.grp, m.conv, m.ts, m.kind, m.recalled, m.edited"
                    f" FROM messages m WHERE m.mid IN ({self._in(len(part))})", part, "all"):
                msgs[mid] = {"mid": mid, "from": sender, "to": to, "group": grp, "conv": conv, "ts": ts,
                             "kind": kind, "recalled": recalled, "edited": edited}
        probes = [(user, msgs[mid]["conv"], mid) for user, mid in keys if mid in msgs]
        held = set()
        for part in chunks(probes, _TRIPLE_CHUNK):
            # probes of the index inbox_conv (user, conv, mid)
            where = " OR ".join(["(user = ? AND conv = ? AND mid = ?)"] * len(part))
            held.update(tuple(r) for r in self._run(
                "held_messages", f"SELECT user, mid FROM inbox WHERE {where}",
                [v for probe in part for v in probe], "all"))
        return {key: msgs[key[1]] for key in keys if key in held}

    def group_states(self, groups):
        out = {}
        for part in chunks(list(dict.fromkeys(groups)), IN_CHUNK):
            for grp, owner, muted_all, dissolved, user, role, until in self._run(
                    "group_states",
                    "SELECT g.grp, g.owner, g.muted_all, g.dissolved, m.user, m.role, m.muted_until"
                    " FROM groups_ g LEFT JOIN group_members m ON m.grp = g.grp"
                    f" WHERE g.grp IN ({self._in(len(part))})", part, "all"):
                st = out.get(grp)
                if st is None:
                    st = out[grp] = {"owner": owner, "muted_all": muted_all, "dissolved": dissolved,
                                     "members": {}, "list": []}
                if user is not None:
                    st["members"][user] = ("owner" if user == owner else role, until)
        for st in out.values():
            st["list"] = sorted(st["members"])
        return out

    def _reactions(self, mids):
        """{mid: {emoji: [user, ...]}} of the messages ``mids`` that have reactions (users
        in the order they reacted)."""
        rows = []
        for part in chunks(mids, IN_CHUNK):
            rows.extend(self._run("reactions", "SELECT mid, emoji, user, entry, ts FROM reactions"
                                  f" WHERE mid IN ({self._in(len(part))})", part, "all"))
        out = {}
        # by the reaction entries' mids: the order they were stored in (ts: equal within a ms)
        for mid, emoji, user, _, _ in sorted(rows, key=lambda r: (r[0], r[3], r[4], r[2])):
            out.setdefault(mid, {}).setdefault(emoji, []).append(user)
        return out
