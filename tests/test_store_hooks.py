"""The SQL side of the hook queues (imsrv/backends/sql_hooks.py) on SQLite and MySQL/MariaDB:
the rows written in the send batch's transaction (store.hook_rows), taken oldest first,
deleted; the distributed deployment's lease holder moving them to the streams in table
order; and why table order is each conversation's order on MariaDB (two batches of one
conversation: the second writes its rows after the first committed)."""
import json
import threading

import pytest

from imsrv.backends.base import StoreError
from imsrv.backends.sql_hooks import SqlHookQueue
from imsrv.core import hooks as H

from test_store import backend, count_rows, msg, mysql_admin, store  # noqa: F401 (fixtures)


class Section:
    before_send = ""
    after_send = "http://h/a"
    offline = "http://h/o"
    secret = "s"
    timeout = 1.0
    fail_open = True
    batch = 2
    retry_max = 1.0


def test_rows_commit_with_their_batch_and_come_out_in_order(store):
    queue = SqlHookQueue(store, H.HookRows(H.HookSettings(Section())).rows)
    store.hook_rows = queue.write
    try:
        store.create_group("g1", "g", "alice", ["bob", "carol"], 1)
        stored = store.store_messages([msg("alice", "bob", cmid='"c1"'), msg("bob", "alice"),
                                       msg("alice", group="g1", recipients=["alice", "bob", "carol"])])
        rows = queue.take("after_send", 10)
        assert [n for _, n, _ in rows] == [2, 1]
        assert [e["mid"] for _, _, p in rows for e in json.loads(p)] == [r["mid"] for r in stored]
        offline = queue.take("offline", 10)
        cands = [c for _, _, p in offline for c in json.loads(p)]
        assert [(c["mid"], c["seqs"]) for c in cands] == [
            (stored[0]["mid"], {"bob": 1}), (stored[1]["mid"], {"alice": 2}),
            (stored[2]["mid"], {"bob": 3, "carol": 1})]
        # a batch that fails writes no rows
        with pytest.raises(StoreError):
            store.store_messages([msg("alice", "bob", cmid='"c1"')])
        assert queue.count("after_send") == 2 and queue.count("offline") == 2
        queue.delete([rows[0][0]])
        assert queue.take("after_send", 10) == rows[1:]
        assert queue.take("after_send", 1) == rows[1:]
        queue.delete([k for k, _, _ in rows + offline])
        assert count_rows(store, "hook_queue") == 0
    finally:
        store.hook_rows = None
    store.store_messages([msg("alice", "bob")])
    assert count_rows(store, "hook_queue") == 0    # off: nothing written


class Stream:
    """A StreamSource's part that LeasedSource.move uses."""
    hook, lease_ms = "after_send", 3000


def test_the_lease_holder_moves_every_processs_rows_to_the_stream_in_table_order(store, redis_url):
    """StreamHooks (imsrv/servers/hook_queue.py): a process that stores (forwarder, API
    daemon) writes its rows into the table in the batch's transaction; the lease holder
    moves them to the hook's stream in table order and deletes them; rows a holder moved
    but did not delete (it died in between) are moved again by the next one."""
    import redis as redislib

    from imsrv.backends.redis_hooks import HookStreams, stream_key
    from imsrv.servers.hook_queue import LeasedSource, StreamHooks

    r = redislib.Redis.from_url(str(redis_url), decode_responses=True)
    prefix = redis_url.prefix + "movehooks"
    StreamHooks(H.HookSettings(Section()), store, r, prefix)     # a writer: no deliveries
    try:
        assert store.hook_rows is not None
        store.create_group("g1", "g", "alice", ["bob"], 1)
        stored = store.store_messages([msg("alice", group="g1", recipients=["alice", "bob"]),
                                       msg("alice", group="g1", recipients=["alice", "bob"]),
                                       msg("alice", group="g1", recipients=["alice", "bob"])])
        queue = SqlHookQueue(store, None)
        holder = LeasedSource(Stream(), queue, HookStreams(r, prefix))
        assert count_rows(store, "hook_queue") == 4     # rows of 2 + 1 objects (batch 2) for each hook
        assert holder.move() == 2 and holder.move() == 0  # after_send's: offline has its own holder
        events = [e for _, f in r.xrange(stream_key(prefix, "after_send")) for e in json.loads(f["p"])]
        assert [e["mid"] for e in events] == [s["mid"] for s in stored]
        assert queue.count("after_send") == 0 and queue.count("offline") == 2
        # a holder that died between adding and deleting: the next one adds them again
        store.store_messages([msg("alice", group="g1", recipients=["alice", "bob"])])
        queue.delete = lambda keys: None
        assert holder.move() == 1
        del queue.delete
        assert holder.move() == 1 and r.xlen(stream_key(prefix, "after_send")) == 4
    finally:
        store.hook_rows = None
        r.delete(stream_key(prefix, "after_send"), stream_key(prefix, "offline"))


def test_a_conversations_rows_are_in_commit_order_on_mariadb(tmp_path, mysql_url, mysql_admin):
    """Why one mover keeps each conversation in order: a batch writes its hook rows last,
    after it locked the seq counters of its recipients, so a second batch with entries of
    the same conversation (the same recipients) waits for the first to commit before it
    writes any row: its rows get the higher ids, and its messages the higher mids."""
    from harness.procs import wait_until
    from test_store import Backend
    backend = Backend("mysql", tmp_path, mysql_url, mysql_admin)   # SQLite: one writer at a time
    first, second = backend.open(), backend.open()
    rows = H.HookRows(H.HookSettings(Section())).rows
    inside, release = threading.Event(), threading.Event()

    def held(cur, batch, results):   # the first batch waits (its locks held), then writes its rows
        inside.set()
        release.wait(30)
        SqlHookQueue(first, rows).write(cur, batch, results)

    first.hook_rows = held
    second.hook_rows = SqlHookQueue(second, rows).write
    results = {}
    t1 = threading.Thread(target=lambda: results.setdefault(1, first.store_messages([msg("alice", "bob")])))
    t1.start()
    assert inside.wait(30)
    t2 = threading.Thread(target=lambda: results.setdefault(2, second.store_messages([msg("bob", "alice")])))
    t2.start()
    with backend.admin.autocommit("lock waits") as cur:
        def waiting():   # on the server, inside its counter upsert (other tests may share it)
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE()"
                        " AND INFO LIKE 'INSERT INTO user_seq%'")
            return cur.fetchone()[0] == 1
        wait_until(waiting, timeout=30, what="the second batch waiting for the first one's locks")
    release.set()
    t1.join(30)
    t2.join(30)
    ids = [(key, json.loads(p)[0]["mid"]) for key, _, p in SqlHookQueue(first, rows).take("after_send", 10)]
    assert [mid for _, mid in sorted(ids)] == [results[1][0]["mid"], results[2][0]["mid"]]
    assert results[1][0]["mid"] < results[2][0]["mid"]
    backend.close()
