"""Messages, inboxes and send dedup lookups in SQL, mixed into
:class:`~imsrv.backends.sql.SqlStore` (it uses its ``_run``, ``_in``, ``transaction`` and
``dialect``).

A batch of sends is one transaction (:meth:`MessagesSql.store_messages`): 1. read and lock
the recipients' seq counters, 2. hand out the seqs, 3. insert the messages, each with its
sender's seq, 4. write the inbox and counter rows (steps 2-4: :meth:`MessagesSql._write_batch`,
which the MySQL engine reuses in its own store_messages).  The caller's COMMIT ends it: a
seq is only ever seen by a reader once all of the batch is durable, and seqs stay gapless.

The dedup record of a send is its message row: (sender, cmid) -> (mid, sender_seq, ts),
kept unique by the index ``messages_dedup`` (schema version 3), so a (sender, cmid) stays
deduplicated as long as its message is stored.

Entries with a kind (schema version 4: ``messages.kind``, ``ref``, ``reply_to``,
``mentions``) go in with the others; the state a recall / edit / reaction changes is
written in the same transaction (:mod:`imsrv.backends.sql_entries`).
"""
from .base import check_deadline
from .sql_dialect import IN_CHUNK, PAIR_CHUNK, chunks
from .sql_entries import STATE_KINDS, EntriesSql, mentions_json

_MSG_COLS = "i.seq, m.mid, m.sender, m.to_user, m.grp, m.body, m.ts, m.cmid, m.kind, m.ref, m.reply_to, m.mentions"
# history's: the message's current state too
_HISTORY_COLS = _MSG_COLS + ", m.recalled, m.edited, m.edited_body"
# the message columns of an insert: a row of an ordinary message without reply_to or
# mentions has the first 8 (the others stay NULL: binding them costs SQLite ~20 % of the
# insert), any other row all 12 (a row's [4] is the body, [11] the mentions' JSON text)
MSG_COLUMNS = "sender, to_user, grp, conv, body, ts, cmid, sender_seq, kind, ref, reply_to, mentions"
PLAIN_COLUMNS = 8


def _record(row):
    seq, mid, sender, to, grp, body, ts, cmid, kind, ref, reply_to, mentions = row[:12]
    return {"seq": seq, "mid": mid, "from": sender, "to": to, "group": grp,
            "body": body, "ts": ts, "cmid": cmid, "kind": kind, "ref": ref, "reply_to": reply_to,
            "mentions": mentions}


class MessagesSql(EntriesSql):
    #: the embedded server's hook queue writer, ``hook_rows(cur, batch, results)``, called
    #: in the batch's transaction (imsrv/backends/sql_hooks.py); None: no queued hook
    hook_rows = None

    def _prepare_messages_sql(self, d):
        self._sql_seq_put = d.render(d.upsert(
            "user_seq", ("user", "last_seq"), ("user",), ("last_seq",)))
        columns = MSG_COLUMNS.split(", ")
        self._sql_msg_insert = d.render(   # one per row length: [8 columns, 12 columns]
            f"INSERT INTO messages ({', '.join(columns[:PLAIN_COLUMNS])}) VALUES ({self._in(PLAIN_COLUMNS)})")
        self._sql_msg_insert_v11 = d.render(
            f"INSERT INTO messages ({MSG_COLUMNS}) VALUES ({self._in(len(columns))})")
        self._sql_inbox_insert = d.render(
            "INSERT INTO inbox (user, seq, mid, conv) VALUES (?, ?, ?, ?)")
        self._prepare_entries_sql(d)

    def _insert_messages(self, cur, rows):
        """Insert message rows (the first 8 or all 12 of MSG_COLUMNS: sender, to_user, grp,
        conv, body, ts, cmid, sender_seq, kind, ref, reply_to, mentions) in order and return
        their mids in the same order; a (sender, cmid) already stored raises the driver's
        IntegrityError (the transaction turns it into DuplicateKey).  Portable version: one
        INSERT per message and the driver's lastrowid (sqlite3 and PyMySQL both provide it)."""
        mids = []
        plain, v11 = self._sql_msg_insert, self._sql_msg_insert_v11
        for row in rows:
            cur.execute(plain if len(row) == PLAIN_COLUMNS else v11, row)
            mids.append(cur.lastrowid)
        return mids

    def store_messages(self, batch, deadline=None):
        if not batch:
            return []
        users = list(dict.fromkeys(u for item in batch for u in item["recipients"]))
        what = self._batch_what(batch)
        with self.transaction(what) as cur:
            # 1. the durable counters of every recipient, locked for the transaction
            #    (BEGIN IMMEDIATE in SQLite; the MySQL engine overrides store_messages to
            #    create missing counter rows first and lock them FOR UPDATE).  No row = 0.
            last = self._read_counters(cur, users)
            # 2, 3 and 4.
            return self._write_batch(cur, batch, users, last, deadline, what)

    @staticmethod
    def _batch_what(batch):
        n_recipients = sum(len(item["recipients"]) for item in batch)
        return f"store_messages ({len(batch)} messages, {n_recipients} inbox entries)"

    def _read_counters(self, cur, users):
        """-> {user: highest seq} for every user (0 if no counter row), read with the
        dialect's locking suffix (FOR UPDATE in MySQL), in the order of ``users``."""
        last = dict.fromkeys(users, 0)
        for part in chunks(users, IN_CHUNK):
            cur.execute(self.dialect.render(
                f"SELECT user, last_seq FROM user_seq WHERE user IN ({self._in(len(part))})"
                + self.dialect.for_update), part)
            for user, seq in cur.fetchall():
                last[user] = seq
        return last

    def _write_batch(self, cur, batch, users, last, deadline=None, what="store_messages"):
        """Steps 2-4 of store_messages inside its transaction: hand out the seqs (``last``
        is updated in place), insert the messages with their sender's seq, write the inbox
        and counter rows, then check ``deadline`` (the caller's COMMIT follows).  An item
        whose (sender, cmid) is already stored, or is an earlier item's in the batch, fails
        the whole batch with DuplicateKey (the unique index messages_dedup; the
        transaction rolls back).  -> the store_messages result."""
        # 2. seqs, in batch order (they do not depend on the mids)
        all_seqs = []
        for item in batch:
            seqs = {}
            for user in item["recipients"]:
                seq = last[user] + 1
                last[user] = seq
                seqs[user] = seq
            all_seqs.append(seqs)
        # 3. the messages, in batch order, each with its own dedup record: (sender, cmid)
        #    -> (mid, sender's seq or 0, ts); then the state the entries of a kind change
        rows, changes = [], []
        for item, seqs in zip(batch, all_seqs):
            kind, reply_to, mentions = item.get("kind"), item.get("reply_to"), item.get("mentions")
            row = (item["sender"], item.get("to"), item.get("group"), item["conv"], item["body"], item["ts"],
                   item.get("cmid"), seqs.get(item["sender"], 0))
            if kind is not None or reply_to is not None or mentions is not None:
                row += (kind, item.get("ref"), reply_to, None if mentions is None else mentions_json(mentions))
                if kind in STATE_KINDS:
                    changes.append((item, len(rows)))
            rows.append(row)
        mids = self._insert_messages(cur, rows)
        if changes:
            self._apply_changes(cur, [(item, mids[i]) for item, i in changes])
        # 4. inbox rows (they need the mids) and counters
        inbox, results = [], []
        for item, seqs, mid in zip(batch, all_seqs, mids):
            conv = item["conv"]
            inbox.extend([(user, seq, mid, conv) for user, seq in seqs.items()])
            results.append({"mid": mid, "ts": item["ts"], "seqs": seqs})
        # rows in key order: consecutive inserts land in the same b-tree pages (measured:
        # ~10 % less CPU for store_messages' batches of 600 sends over 100 users)
        if inbox:
            inbox.sort()
            cur.executemany(self._sql_inbox_insert, inbox)
            cur.executemany(self._sql_seq_put, [(u, last[u]) for u in sorted(users)])
            self._write_conversations(cur, batch, results)   # sql_conversations.py
        if self.hook_rows is not None:
            self.hook_rows(cur, batch, results)   # sql_hooks.py
        check_deadline(deadline, what)
        return results

    def get_dedup(self, sender, cmid, settled=False):
        row = self._run(f"get_dedup {sender!r}",
                        "SELECT mid, sender_seq, ts FROM messages WHERE sender = ? AND cmid = ?"
                        + (self.dialect.lock_shared if settled else ""),
                        (sender, cmid), "one")
        if row is None:
            return None
        return {"mid": row[0], "seq": row[1], "ts": row[2]}

    def get_dedups(self, keys):
        keys = list(dict.fromkeys(keys))
        found = {}
        for part in chunks(keys, PAIR_CHUNK):
            # an OR of equalities on the unique index messages_dedup: each engine answers
            # it with index probes
            where = " OR ".join(["(sender = ? AND cmid = ?)"] * len(part))
            params = [v for pair in part for v in pair]
            for sender, cmid, mid, seq, ts in self._run(
                    "get_dedups", f"SELECT sender, cmid, mid, sender_seq, ts FROM messages WHERE {where}",
                    params, "all"):
                found[(sender, cmid)] = {"mid": mid, "seq": seq, "ts": ts}
        return found

    def head(self, user):
        row = self._run(f"head {user!r}", "SELECT last_seq FROM user_seq WHERE user = ?",
                        (user,), "one")
        return row[0] if row else 0

    def head_and_oldest(self, user):
        row = self._run(f"head_and_oldest {user!r}",
                        "SELECT (SELECT last_seq FROM user_seq WHERE user = ?),"
                        " (SELECT MIN(seq) FROM inbox WHERE user = ?)", (user, user), "one")
        return row[0] or 0, row[1] or 0

    def head_if_token(self, user, token_hash):
        row = self._run(f"head_if_token {user!r}",
                        "SELECT (SELECT last_seq FROM user_seq WHERE user = ?),"
                        " (SELECT COUNT(*) FROM tokens WHERE token_hash = ?)",
                        (user, token_hash), "one")
        if not row[1]:
            return None
        return row[0] or 0

    def inbox_since(self, user, since, limit):
        rows = self._run(f"inbox_since {user!r}",
                         f"SELECT {_MSG_COLS} FROM inbox i JOIN messages m ON m.mid = i.mid"
                         " WHERE i.user = ? AND i.seq > ? ORDER BY i.seq LIMIT ?",
                         (user, since, limit), "all")
        return [_record(r) for r in rows]

    def history(self, user, conv, before_mid, limit):
        # the entries of a kind that change another message are not listed (group_event
        # entries are); the messages come in their current state, with their reactions
        sql = (f"SELECT {_HISTORY_COLS} FROM inbox i JOIN messages m ON m.mid = i.mid"
               " WHERE i.user = ? AND i.conv = ?" + ("" if before_mid is None else " AND i.mid < ?")
               + " AND (m.kind IS NULL OR m.kind = ?) ORDER BY i.mid DESC LIMIT ?")
        params = (user, conv, "group_event", limit) if before_mid is None else \
            (user, conv, before_mid, "group_event", limit)
        recs = []
        for row in self._run(f"history {user!r} {conv!r}", sql, params, "all"):
            rec = _record(row)
            rec["recalled"], rec["edited"], rec["edited_body"] = row[12:15]
            rec["reactions"] = None
            recs.append(rec)
        shown = [r["mid"] for r in recs if r["kind"] is None and not r["recalled"]]
        if shown:
            reactions = self._reactions(shown)
            for rec in recs:
                rec["reactions"] = reactions.get(rec["mid"])
        return recs
