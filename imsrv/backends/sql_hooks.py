"""The SQL side of the hook queues (imsrv/core/hooks.py says what the rows hold).

- :class:`SqlHookQueue`: the embedded server's durable queue, table ``hook_queue(id
  SERIAL, hook, n, payload)`` (schema version 6).  :meth:`SqlHookQueue.write` is given to
  the store as ``store.hook_rows``: ``MessagesSql._write_batch`` calls it inside the send
  batch's transaction, so the rows commit (or roll back) with the entries they are about;
  with no queued hook on, ``hook_rows`` stays None and a batch writes nothing more.
  :meth:`take` / :meth:`delete` are the delivery worker's (imsrv/servers/hook_queue.py).
- :func:`stored_entries`: the store items and results of stored messages, read again by
  mid: the distributed deployment queues the hook rows of a send that a forwarder finds
  stored already (a run again after a crash between the commit and the stream write).
"""
from .. import jsonlib
from .sql_dialect import IN_CHUNK, chunks

_TRIPLE_CHUNK = 150   # (user, conv, mid) probes per OR-of-equalities statement


class SqlHookQueue:
    """The ``hook_queue`` table of ``store`` (a SqlStore); ``make_rows(items, results)``
    -> [(hook, n, payload)] (imsrv.core.hooks.HookRows.rows)."""

    def __init__(self, store, make_rows):
        self.store = store
        self.make_rows = make_rows
        self._insert = store.dialect.render("INSERT INTO hook_queue (hook, n, payload) VALUES (?, ?, ?)")

    def write(self, cur, batch, results):
        """Inside store_messages' transaction (cursor ``cur``): the rows of ``batch`` (store
        items) stored as ``results``."""
        rows = self.make_rows(batch, results)
        if rows:
            cur.executemany(self._insert, rows)

    def take(self, hook, limit):
        """The first ``limit`` rows of ``hook``, oldest first -> [(id, n, payload)]."""
        return [tuple(r) for r in self.store._run(
            f"hook_queue take {hook}", "SELECT id, n, payload FROM hook_queue WHERE hook = ? ORDER BY id LIMIT ?",
            (hook, limit), "all")]

    def delete(self, ids):
        """Delete delivered rows (one transaction)."""
        ids = list(ids)
        if ids:
            with self.store.transaction(f"hook_queue delete {len(ids)} rows") as cur:
                for part in chunks(ids, IN_CHUNK):
                    cur.execute(self.store.dialect.render(
                        f"DELETE FROM hook_queue WHERE id IN ({self.store._in(len(part))})"), part)

    def count(self, hook):
        return self.store._run(f"hook_queue count {hook}", "SELECT COUNT(*) FROM hook_queue WHERE hook = ?",
                               (hook,), "one")[0]


def stored_entries(store, mids):
    """The messages ``mids`` as store items and store_messages results, in mid order ->
    (items, results); mids no longer stored are left out.  The results' seqs are those of
    the inboxes that still hold the entry (a 1:1 entry: its two users; a group entry: the
    users with a conversations row of the group).  StoreError propagates."""
    mids = sorted(set(mids))
    msgs = []
    for part in chunks(mids, IN_CHUNK):
        msgs.extend(store._run(
            "hook entries", "SELECT mid, sender, to_user, grp, conv, body, ts, cmid, kind, ref, reply_to, mentions"
            f" FROM messages WHERE mid IN ({store._in(len(part))})", part, "all"))
    probes = []
    group_convs = {}
    for mid, sender, to, grp, conv, *_ in msgs:
        if grp is None:
            probes.extend((u, conv, mid) for u in dict.fromkeys((sender, to)) if u is not None)
        else:
            group_convs.setdefault(conv, []).append(mid)
    for part in chunks(list(group_convs), IN_CHUNK):
        for user, conv in store._run(
                "hook entries users", f"SELECT user, conv FROM conversations WHERE conv IN ({store._in(len(part))})",
                part, "all"):
            probes.extend((user, conv, mid) for mid in group_convs[conv])
    seqs = {}
    for part in chunks(probes, _TRIPLE_CHUNK):
        where = " OR ".join(["(user = ? AND conv = ? AND mid = ?)"] * len(part))
        for user, seq, mid in store._run("hook entries seqs", f"SELECT user, seq, mid FROM inbox WHERE {where}",
                                         [v for p in part for v in p], "all"):
            seqs.setdefault(mid, {})[user] = seq
    items, results = [], []
    for mid, sender, to, grp, conv, body, ts, cmid, kind, ref, reply_to, mentions in sorted(msgs):
        items.append({"sender": sender, "to": to, "group": grp, "conv": conv, "body": body, "ts": ts, "cmid": cmid,
                      "kind": kind, "ref": ref, "reply_to": reply_to,
                      "mentions": None if mentions is None else jsonlib.loads(mentions)})
        results.append({"mid": mid, "ts": ts, "seqs": seqs.get(mid, {})})
    return items, results
