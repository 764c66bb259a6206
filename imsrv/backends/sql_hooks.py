"""The SQL side of the hook queues (imsrv/core/hooks.py says what the rows hold).

- :class:`SqlHookQueue`: the durable queue (a transactional outbox) of both deployments,
  table ``hook_queue(id SERIAL, hook, n, payload)`` (schema version 6).
  :meth:`SqlHookQueue.write` is given to the store as ``store.hook_rows``: ``MessagesSql._write_batch`` calls it inside the send
  batch's transaction, so the rows commit (or roll back) with the entries they are about;
  with no queued hook on, ``hook_rows`` stays None and a batch writes nothing more.
  :meth:`take` / :meth:`delete` are the delivery worker's (embedded) or the stream
  filler's (distributed), imsrv/servers/hook_queue.py.
"""
from .sql_dialect import IN_CHUNK, chunks


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
