"""The message writes of the MySQL / MariaDB store (:class:`imsrv.backends.mysql.MysqlStore`
mixes this in before :class:`~imsrv.backends.sql.SqlStore`): a forwarder's batch in as
few statements and locks as the server allows.

- **Seqs.** store_messages reserves the recipients' seqs with one multi-row ``INSERT ...
  ON DUPLICATE KEY UPDATE last_seq = last_seq + n`` in sorted user order (it creates a
  user's counter row on their first message; two batches sharing users lock the rows in
  the same order, so they queue instead of deadlocking) and reads the new values back.
  Only those rows are locked, whatever the plan (see ``_take_seqs``).  Messages go in as
  multi-row INSERTs (see *mids* below), each row with its sender's seq (its dedup record,
  kept unique by the index ``messages_dedup``), inbox and counter rows as multi-row
  INSERTs (PyMySQL's executemany); one commit per batch.
- **mids of a multi-row insert.** Chosen per connection from what the server guarantees.
  With ``innodb_autoinc_lock_mode`` 0 or 1 (MariaDB's default is 1) the values one INSERT
  gets are consecutive (a "simple insert" reserves them all at once), so mid i of a
  multi-row INSERT is ``lastrowid + i * auto_increment_increment``.  With mode 2
  ("interleaved": MySQL 8's default, required by Galera) that is not promised, so MariaDB
  >= 10.5 uses ``INSERT ... RETURNING mid`` (exact) and anything else one INSERT per
  message.  Measured on MariaDB 10.11 (local, fsync per commit), messages/s for batches
  of 1 / 16 / 128: one INSERT each ~600 / 2700 / 3700, multi-row ~600 / 3300 / 8200,
  RETURNING ~500 / 3500 / 7400.
- **Dedup lookups.** One ``sender = ? AND cmid IN (...)`` per sender (ranges of the
  unique index ``messages_dedup``), not an OR of a batch's thousands of (sender, cmid)
  pairs (which the server takes longer to plan than to look up).
"""
from .base import StoreError
from .sql_dialect import chunks
from .sql_messages import MSG_COLUMNS, PLAIN_COLUMNS

# the row tuples of SqlStore._insert_messages: 8 columns (an ordinary message without
# reply_to or mentions) or 12 (row[4] is the body, row[11] the mentions); a statement
# holding a 12-column row gives its 8-column rows 4 NULLs
_ALL_COLUMNS = MSG_COLUMNS.split(", ")
_INSERT = {n: (", ".join(_ALL_COLUMNS[:n]), "(" + ", ".join(["%s"] * n) + ")")
           for n in (PLAIN_COLUMNS, len(_ALL_COLUMNS))}
_NULLS = (None,) * (len(_ALL_COLUMNS) - PLAIN_COLUMNS)
_MAX_ROWS_PER_INSERT = 500
_DEDUP_KEYS_PER_SELECT = 2000


class MysqlMessages:
    """store_messages, get_dedups and _insert_messages of the MySQL engine (it uses the
    engine's ``transaction``, ``autocommit``, ``_retrying`` and ``_write_batch``)."""

    def get_dedups(self, keys):
        """One ``sender = ? AND cmid IN (...)`` per sender (ranges of the unique index
        messages_dedup) in statements of up to _DEDUP_KEYS_PER_SELECT keys: an OR of a
        batch's thousands of (sender, cmid) equalities costs the server more to plan than
        to look up."""
        by_sender = {}
        for sender, cmid in dict.fromkeys(keys):
            by_sender.setdefault(sender, []).append(cmid)
        found, where, params = {}, [], []
        for sender, cmids in by_sender.items():
            for part in chunks(cmids, _DEDUP_KEYS_PER_SELECT):
                where.append("(sender = %s AND cmid IN (" + ", ".join(["%s"] * len(part)) + "))")
                params.append(sender)
                params.extend(part)
                if len(params) - len(where) >= _DEDUP_KEYS_PER_SELECT:
                    self._get_dedups(where, params, found)
                    where, params = [], []
        if where:
            self._get_dedups(where, params, found)
        return found

    def _get_dedups(self, where, params, found):
        # the text goes to the cursor as is (never through the dialect's render cache)
        sql = "SELECT sender, cmid, mid, sender_seq, ts FROM messages WHERE " + " OR ".join(where)

        def select():
            with self.autocommit("get_dedups") as cur:
                cur.execute(sql, params)
                return cur.fetchall()

        for sender, cmid, mid, seq, ts in self._retrying(select):
            found[(sender, cmid)] = {"mid": mid, "seq": seq, "ts": ts}

    def store_messages(self, batch, deadline=None):
        if not batch:
            return []
        counts = {}   # user -> inbox entries this batch gives them
        for item in batch:
            for user in item["recipients"]:
                counts[user] = counts.get(user, 0) + 1
        users = sorted(counts)
        what = self._batch_what(batch)

        def attempt():
            with self.transaction(what) as cur:
                last = self._take_seqs(cur, users, counts)
                return self._write_batch(cur, batch, users, last, deadline, what)

        return self._retrying(attempt)

    def _take_seqs(self, cur, users, counts):
        """Reserve ``counts[user]`` seqs of each of ``users`` (sorted) -> {user: last seq
        before the batch}.  One upsert raises (or creates) their counter rows, locking
        exactly those rows whatever plan the server picks (a locking SELECT ... IN of half
        a small table is run as a scan that locks every row, and two forwarders then take
        turns); a plain SELECT reads the new values back (a transaction sees its own
        writes)."""
        for part in chunks(users, 500):
            cur.execute("INSERT INTO user_seq (user, last_seq) VALUES " + ", ".join(["(%s, %s)"] * len(part))
                        + " ON DUPLICATE KEY UPDATE last_seq = last_seq + VALUES(last_seq)",
                        [v for user in part for v in (user, counts[user])])
        last = {}
        for part in chunks(users, 500):
            cur.execute("SELECT user, last_seq FROM user_seq WHERE user IN ("
                        + ", ".join(["%s"] * len(part)) + ")", part)
            for user, seq in cur.fetchall():
                last[user] = seq - counts[user]
        if len(last) != len(users):
            raise StoreError(f"store_messages: {self.url}: {len(users) - len(last)} counter rows"
                             " not found after raising them")
        return last

    def _insert_messages(self, cur, rows):
        conn = cur.connection
        strategy = self._mid_strategy or conn.imsrv_mids
        if strategy == "single":
            return super()._insert_messages(cur, rows)
        mids = []
        budget = conn.imsrv_chunk_chars
        start = 0
        while start < len(rows):
            # as many rows as fit the statement budget (at least one)
            end, size = start, 0
            while end < len(rows) and end - start < _MAX_ROWS_PER_INSERT:
                row = rows[end]
                size += len(row[4]) + (len(row[11] or "") if len(row) > PLAIN_COLUMNS else 0) + 256
                if size > budget and end > start:
                    break
                end += 1
            chunk = rows[start:end]
            width = max(len(row) for row in chunk)
            if width > PLAIN_COLUMNS:
                chunk = [row if len(row) == width else row + _NULLS for row in chunk]
            columns, one_row = _INSERT[width]
            sql = f"INSERT INTO messages ({columns}) VALUES " + ", ".join([one_row] * len(chunk))
            params = [v for row in chunk for v in row]
            if strategy == "returning":
                cur.execute(sql + " RETURNING mid", params)
                got = [r[0] for r in cur.fetchall()]
            else:
                cur.execute(sql, params)
                first, inc = cur.lastrowid, conn.imsrv_increment
                got = [first + i * inc for i in range(len(chunk))]
            if len(got) != len(chunk) or not got[0]:
                raise StoreError(f"store_messages: {self.url}: inserted {len(chunk)} messages"
                                 f" but got mids {got[:3]}...")
            mids.extend(got)
            start = end
        return mids
