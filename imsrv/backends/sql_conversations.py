"""Conversations, unread counts, read positions and muting in SQL (protocol v1.1), mixed
into :class:`~imsrv.backends.sql.SqlStore` (it uses its ``transaction``, ``_run``, ``_in``
and ``dialect``) and so into the MySQL engine.

One row per user and conversation: ``conversations(user, conv, peer, grp, last_mid,
last_ts, unread, mentioned, read_seq, muted_until)`` (schema version 4).  It is kept AS
ENTRIES ARRIVE, in the send batch's own transaction: :meth:`_write_conversations` is called
by ``MessagesSql._write_batch`` once per batch, after the inbox rows, and writes every
(user, conv) the batch touches with ONE multi-row upsert in key order.  So the listing
never counts anything (it reads the user's rows by the primary key and sorts them by
activity), and the
counts are exactly those of the inbox whatever the concurrency: a batch's increments commit
or roll back with its inbox rows, and two batches that share a row share its user, whose
seq counter row they lock first (``user_seq``), so they run one after the other.

What an entry does to its recipients' rows (``kind`` and ``mentions`` of the batch item):

- an ordinary message (kind None) and a ``group_event`` are new items of the
  conversation: ``last_mid`` / ``last_ts`` become theirs (activity order), creating the row
  on the first one;
- an ordinary message from someone else adds 1 to ``unread`` (not the sender's own copy),
  and sets ``mentioned`` when its mentions name the user or ``"all"``;
- ``recall``, ``edit`` and ``reaction`` entries change a message already listed: they
  touch no row (neither count nor activity; the listing shows ``last`` in its current
  state).  A recalled message still counts as unread until it is read.

``read_seq`` only ever moves forward (:meth:`mark_read`, which recounts ``unread`` and
``mentioned`` over the inbox above it, in a transaction that holds the user's counter row
so that no batch of theirs commits meanwhile); ``muted_until`` is written by
:meth:`set_muted` and read in bulk by :meth:`muted_conversations` (the offline hook).
"""
from .. import jsonlib
from .sql_dialect import IN_CHUNK, PAIR_CHUNK, chunks
from .sql_messages import _MSG_COLS, _record

_ALL = "all"   # the mention of everyone
#: SQLite: rows that share all but their user, from this many on, are written by one
#: statement (ConversationsSql._upsert_shared)
USERS_UPSERT_MIN = 32
_GROUP_EVENT = "group_event"
_KINDS_WITH_ACTIVITY = (None, _GROUP_EVENT)   # batch item kinds that are conversation items

_CONV_COLS = "c.conv, c.peer, c.grp, c.last_ts, c.unread, c.mentioned, c.read_seq, c.muted_until"
_STATE_COLS = "m.recalled, m.edited, m.edited_body"   # the last message's current state
# a row, then its last entry as the user's inbox holds it (as in sync), and its state
_ROW_FROM = (f"SELECT {_CONV_COLS}, {_STATE_COLS}, {_MSG_COLS} FROM conversations c"
             " LEFT JOIN inbox i ON i.user = c.user AND i.conv = c.conv AND i.mid = c.last_mid"
             " LEFT JOIN messages m ON m.mid = c.last_mid")
_LIST_FROM = _ROW_FROM + " WHERE c.user = ? AND c.last_mid > 0"
_LIST_ORDER = " ORDER BY c.last_ts DESC, c.conv DESC"


def mentions_user(mentions, user):
    """True if ``mentions`` (a list of user names, or the JSON text of one, or None) names
    ``user`` or ``"all"``."""
    if not mentions:
        return False
    if isinstance(mentions, str):
        try:
            mentions = jsonlib.loads(mentions)
        except ValueError:
            return False
        if not isinstance(mentions, list):
            return False
    return user in mentions or _ALL in mentions


def _conv_row(row):
    conv, peer, grp, last_ts, unread, mentioned, read_seq, muted_until, recalled, edited, edited_body = row[:11]
    last = None
    if recalled is not None and row[11] is not None:   # the message and the inbox row are there
        last = _record(row[11:])
        last.update(recalled=recalled, edited=edited, edited_body=edited_body)
    return {"conv": conv, "with": peer, "group": grp, "ts": last_ts, "unread": unread,
            "mentioned": bool(mentioned), "read_seq": read_seq, "muted_until": muted_until, "last": last}


class _Statements:
    """The SQL text of this mixin for one dialect (built once per store, on first use)."""

    def __init__(self, d):
        r = d.render
        cols = ("user", "conv", "peer", "grp", "last_mid", "last_ts", "unread", "mentioned")
        marks = ", ".join("?" * len(cols))
        head = f"INSERT INTO conversations ({', '.join(cols)}) VALUES ({marks})"
        if d.upsert_style == "on_conflict":
            new = "excluded.{}".format
            tail = " ON CONFLICT (user, conv) DO UPDATE SET "
        else:
            new = "VALUES({})".format
            tail = " ON DUPLICATE KEY UPDATE "
        # unread adds up; mentioned stays set once set (until mark_read recounts it)
        update = tail + ", ".join((
            f"last_mid = {new('last_mid')}", f"last_ts = {new('last_ts')}",
            f"unread = unread + {new('unread')}",
            f"mentioned = CASE WHEN {new('mentioned')} = 1 THEN 1 ELSE mentioned END"))
        self.batch_upsert = r(head + update)
        # SQLite: the rows of many users that share everything else (a group message's
        # recipients) in one statement over a JSON array of the users; "WHERE true" keeps
        # SQLite's parser from reading ON CONFLICT as a join's ON
        self.users_upsert = None
        if d.name == "sqlite":
            self.users_upsert = r(f"INSERT INTO conversations ({', '.join(cols)})"
                                  " SELECT value, ?, ?, ?, ?, ?, ?, ? FROM json_each(?) WHERE true" + update)
        self.mute_upsert = r(d.upsert("conversations", ("user", "conv", "peer", "grp", "muted_until"),
                                      ("user", "conv"), ("muted_until",)))
        self.lock_counter = r("SELECT last_seq FROM user_seq WHERE user = ?" + d.for_update)
        self.entry = r("SELECT mid, conv FROM inbox WHERE user = ? AND seq = ?")
        self.read_pos = r("SELECT read_seq FROM conversations WHERE user = ? AND conv = ?" + d.for_update)
        # above the read position: the inbox_conv range (user, conv, mid > the read entry's
        # mid; a user's mids grow with their seqs), seq > read_seq the exact rule
        above = (" FROM inbox i JOIN messages m ON m.mid = i.mid WHERE i.user = ? AND i.conv = ?"
                 " AND i.mid > ? AND i.seq > ? AND m.kind IS NULL AND m.sender <> ?")
        self.count_unread = r("SELECT COUNT(*)" + above)
        self.unread_mentions = r("SELECT m.mentions" + above + " AND m.mentions IS NOT NULL")
        self.set_read = r("UPDATE conversations SET read_seq = ?, unread = ?, mentioned = ?"
                          " WHERE user = ? AND conv = ?")
        self.latest = r("SELECT i.mid, m.ts FROM inbox i JOIN messages m ON m.mid = i.mid"
                        " WHERE i.user = ? AND i.conv = ? AND (m.kind IS NULL OR m.kind = ?)"
                        " ORDER BY i.mid DESC LIMIT 1")
        self.insert_read = r("INSERT INTO conversations (user, conv, peer, grp, last_mid, last_ts,"
                             " unread, mentioned, read_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
        self.list_first = r(_LIST_FROM + _LIST_ORDER + " LIMIT ?")
        self.list_before = r(_LIST_FROM + " AND c.last_ts < ?" + _LIST_ORDER + " LIMIT ?")
        self.list_at = r(_LIST_FROM + " AND c.last_ts = ?" + _LIST_ORDER)
        self.one = r(_ROW_FROM + " WHERE c.user = ? AND c.conv = ?")


class ConversationsSql:
    def _conv_sql(self):
        sql = self.__dict__.get("_conv_statements")
        if sql is None:
            sql = self._conv_statements = _Statements(self.dialect)
        return sql

    def _retrying(self, fn):
        """Run one transaction ``fn()``; the MySQL engine's own _retrying (first in its
        MRO) runs it again after a deadlock or lock wait timeout."""
        return fn()

    # ------------------------------------------------------------------ the send batch
    def _write_conversations(self, cur, batch, results):
        """Inside store_messages' transaction, after the inbox rows: raise the
        conversations rows of every recipient of ``batch`` (the store items) by what
        ``results`` (their store_messages results) gave them, as the module doc says: the
        batch is aggregated per (user, conv), then ONE multi-row upsert in key order."""
        rows = {}     # (user, conv) -> [user, conv, peer, grp, last_mid, last_ts, unread, mentioned]
        get = rows.get
        for item, res in zip(batch, results):
            kind = item.get("kind")
            if kind is not None and kind not in _KINDS_WITH_ACTIVITY:
                continue
            sender, conv, mid, ts = item["sender"], item["conv"], res["mid"], res["ts"]
            counts = kind is None   # from others: unread (and maybe mentioned)
            mentions = item.get("mentions") if counts else None
            for user in res["seqs"]:
                row = get((user, conv))
                if row is None:
                    grp = item["group"]
                    peer = None if grp is not None else (sender if user != sender else item["to"])
                    rows[(user, conv)] = row = [user, conv, peer, grp, mid, ts, 0, 0]
                else:   # a later entry of the batch: a later seq of this user
                    row[4] = mid
                    row[5] = ts
                if counts and user != sender:
                    row[6] += 1
                    if mentions and (user in mentions or _ALL in mentions):
                        row[7] = 1
        if not rows:
            return
        sql = self._conv_sql()
        rows = rows.values()
        if sql.users_upsert is not None and len(rows) >= USERS_UPSERT_MIN:
            rows = self._upsert_shared(cur, sql.users_upsert, rows)
        if rows:
            # key order (user, conv): the rows are unique on it, so sorting the rows sorts the keys
            cur.executemany(sql.batch_upsert, sorted(rows))

    @staticmethod
    def _upsert_shared(cur, users_upsert, rows):
        """SQLite: write the rows that share all but their user with USERS_UPSERT_MIN - 1
        others or more (a group message's recipients) by one statement a set, ~3x less CPU
        than a row each (measured: 0.26 against 0.80 ms for 500 rows).  -> the other rows."""
        shared = {}
        for row in rows:
            shared.setdefault(tuple(row[1:]), []).append(row[0])
        rest = []
        for values, users in shared.items():
            if len(users) >= USERS_UPSERT_MIN:
                cur.execute(users_upsert, values + (jsonlib.dumps(users).decode("utf-8"),))
            else:
                rest.extend([user, *values] for user in users)
        return rest

    # ------------------------------------------------------------------ reads
    def list_conversations(self, user, before_ts=None, limit=50):
        sql = self._conv_sql()
        if before_ts is None:
            rows = self._run(f"list_conversations {user!r}", sql.list_first, (user, limit + 1), "all")
        else:
            rows = self._run(f"list_conversations {user!r}", sql.list_before,
                             (user, before_ts, limit + 1), "all")
        if len(rows) > limit:
            # a page never ends inside a run of equal activity times (the next page starts
            # below the last one's): its last rows go to the next page, unless the run
            # fills the whole page, which then holds the whole run
            edge = rows[limit - 1][3]
            if rows[limit][3] != edge:
                rows = rows[:limit]
            else:
                kept = [r for r in rows[:limit] if r[3] != edge]
                rows = kept or self._run(f"list_conversations {user!r}", sql.list_at,
                                         (user, edge), "all")
        return [_conv_row(r) for r in rows]

    def get_conversation(self, user, conv):
        row = self._run(f"get_conversation {user!r} {conv!r}", self._conv_sql().one, (user, conv), "one")
        return None if row is None else _conv_row(row)

    def muted_conversations(self, pairs, now):
        pairs = list(dict.fromkeys(pairs))
        muted = set()
        for part in chunks(pairs, PAIR_CHUNK):
            where = " OR ".join(["(user = ? AND conv = ?)"] * len(part))
            params = [v for pair in part for v in pair]
            for user, conv, until in self._run(
                    "muted_conversations", "SELECT user, conv, muted_until FROM conversations"
                    f" WHERE muted_until <> 0 AND ({where})", params, "all"):
                if until == -1 or until > now:
                    muted.add((user, conv))
        return muted

    def unread_totals(self, users):
        users = list(dict.fromkeys(users))
        totals = dict.fromkeys(users, 0)
        for part in chunks(users, IN_CHUNK):
            for user, total in self._run(
                    "unread_totals", f"SELECT user, SUM(unread) FROM conversations"
                    f" WHERE user IN ({self._in(len(part))}) GROUP BY user", part, "all"):
                totals[user] = int(total or 0)
        return totals

    # ------------------------------------------------------------------ writes
    def set_muted(self, user, conv, peer, grp, until):
        self._run(f"set_muted {user!r} {conv!r}", self._conv_sql().mute_upsert, (user, conv, peer, grp, until))

    def mark_read(self, user, conv, seq, peer=None, grp=None):
        return self._retrying(lambda: self._mark_read(user, conv, seq, peer, grp))

    def _mark_read(self, user, conv, seq, peer, grp):
        sql = self._conv_sql()
        with self.transaction(f"mark_read {user!r} {conv!r} {seq}") as cur:
            # the user's counter row first, as a send batch takes it: none of their
            # batches commits until we do, so the recount below is exact
            cur.execute(sql.lock_counter, (user,))
            cur.fetchall()
            cur.execute(sql.entry, (user, seq))
            entry = cur.fetchone()
            if entry is None:
                return None
            mid, entry_conv = entry
            out = {"conv": entry_conv, "mid": mid, "moved": False}
            if entry_conv != conv:
                return out
            cur.execute(sql.read_pos, (user, conv))
            pos = cur.fetchone()
            if pos is not None and pos[0] >= seq:
                return out   # never backwards; nothing changes
            cur.execute(sql.count_unread, (user, conv, mid, seq, user))
            unread = cur.fetchone()[0]
            cur.execute(sql.unread_mentions, (user, conv, mid, seq, user))
            mentioned = int(any(mentions_user(m, user) for (m,) in cur.fetchall()))
            if pos is not None:
                cur.execute(sql.set_read, (seq, unread, mentioned, user, conv))
            else:   # an entry older than the conversations table: the row starts here
                cur.execute(sql.latest, (user, conv, _GROUP_EVENT))
                last_mid, last_ts = cur.fetchone() or (0, 0)
                cur.execute(sql.insert_read, (user, conv, peer, grp, last_mid, last_ts, unread,
                                              mentioned, seq))
            out.update(moved=True, read_seq=seq, unread=unread, mentioned=bool(mentioned))
            return out
