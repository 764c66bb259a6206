"""The SQL side of the hook queues (imsrv/backends/sql_hooks.py) on SQLite and MySQL/MariaDB:
the rows written in the send batch's transaction (store.hook_rows), taken oldest first,
deleted; and the stored entries read again by mid (the distributed deployment's re-queue
of a send found stored already)."""
import json

import pytest

from imsrv.backends.base import StoreError
from imsrv.backends.sql_hooks import SqlHookQueue, stored_entries
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


def test_stored_entries_read_again_by_mid(store):
    store.create_group("g1", "g", "alice", ["bob", "carol"], 1)
    items = [msg("alice", "bob", cmid='"c1"', ts=5),
             msg("alice", group="g1", recipients=["alice", "bob", "carol"], ts=6)]
    items[1]["mentions"] = ["bob"]
    stored = store.store_messages(items)
    got_items, got_results = stored_entries(store, [stored[1]["mid"], stored[0]["mid"], 10 ** 9])
    assert [r["mid"] for r in got_results] == [stored[0]["mid"], stored[1]["mid"]]
    assert [r["seqs"] for r in got_results] == [r["seqs"] for r in stored]
    assert [(i["sender"], i["to"], i["group"], i["conv"], i["body"], i["ts"], i["cmid"], i["mentions"])
            for i in got_items] == [(i["sender"], i["to"], i["group"], i["conv"], i["body"], i["ts"], i["cmid"],
                                     i.get("mentions")) for i in items]
    rows = H.HookRows(H.HookSettings(Section())).rows
    assert rows(got_items, got_results) == rows(items, stored)
    assert stored_entries(store, []) == ([], [])


class FakePipe:
    def __init__(self):
        self.added = []

    def xadd(self, key, fields):
        self.added.append((key, fields))


def test_stream_rows_of_a_batch_and_of_sends_found_stored(store):
    """The distributed deployment's sink (imsrv/servers/hook_queue.py StreamHooks): the rows
    of a batch are collected for the forwarder's pipeline; a send found stored already (a
    run again after a crash) has its rows made again from the store, ahead of the new ones."""
    from imsrv.servers.hook_queue import StreamHooks
    settings = H.HookSettings(Section())
    hooks = StreamHooks(settings, store, redis=None, prefix="P")
    first = [msg("alice", "bob", cmid='"c1"')]
    old = store.store_messages(first)
    new_items = [msg("bob", "alice")]
    with hooks.batch() as rows:
        hooks.stored_before(old[0]["mid"])
        new = store.store_messages(new_items)
        hooks.stored(new_items, new)
    want = H.HookRows(settings).rows
    assert rows == want(first, old) + want(new_items, new)
    pipe = FakePipe()
    hooks.add(pipe, rows)
    assert [k for k, _ in pipe.added] == ["P:hooks:after_send", "P:hooks:offline", "P:hooks:after_send",
                                          "P:hooks:offline"]
    assert pipe.added[0][1] == {"n": 1, "p": rows[0][2]}
    with pytest.raises(RuntimeError):          # a failed batch collects nothing
        with hooks.batch() as rows:
            hooks.stored(new_items, new)
            raise RuntimeError("store failed")
    assert rows == [] and hooks._collected is None


def test_the_api_daemons_rows_commit_with_their_batch_then_move_to_the_streams(store, redis_url):
    """ApiHooks (imsrv/servers/hook_mover.py): the rows of what the API daemon stores
    (group events, notify) are written in the batch's transaction, then moved to the
    hooks' streams and deleted from the table; rows a daemon left behind (it died after
    its commit) are moved at the next start."""
    import redis as redislib

    from imsrv.backends.redis_hooks import stream_key
    from imsrv.servers.hook_mover import ApiHooks

    r = redislib.Redis.from_url(str(redis_url), decode_responses=True)
    prefix = redis_url.prefix + "apihooks"
    hooks = ApiHooks(H.HookSettings(Section()), store, r, prefix)
    try:
        store.create_group("g1", "g", "alice", ["bob"], 1)
        stored = store.store_messages([msg("alice", group="g1", recipients=["alice", "bob"]),
                                       msg("alice", group="g1", recipients=["alice", "bob"]),
                                       msg("alice", group="g1", recipients=["alice", "bob"])])
        assert count_rows(store, "hook_queue") == 4     # after_send rows of 2 + 1, offline 1
        assert hooks.move() == 4 and hooks.move() == 0  # the table empties into the streams
        events = [e for _, f in r.xrange(stream_key(prefix, "after_send")) for e in json.loads(f["p"])]
        assert [e["mid"] for e in events] == [s["mid"] for s in stored]
        assert count_rows(store, "hook_queue") == 0
        # a daemon that died between its commit and the move: the next one moves the rows
        store.store_messages([msg("alice", group="g1", recipients=["alice", "bob"])])
        again = ApiHooks(H.HookSettings(Section()), store, r, prefix)
        assert again.move() == 2 and r.xlen(stream_key(prefix, "after_send")) == 3
    finally:
        store.hook_rows = None
        r.delete(stream_key(prefix, "after_send"), stream_key(prefix, "offline"))
