"""Micro-benchmark: SqliteStore.store_messages throughput (pytest-benchmark).

    .venv/bin/python -m pytest bench/bench_store.py            # or: python bench/bench_store.py

Not collected by the test suite (it lives outside tests/).  Each round stores one batch of
1, 16 or 128 one-to-one messages (sender keeps a copy, every message has a cmid, so a
message is 1 messages row with its unique (sender, cmid) entry + 2 inbox rows + counter
and conversation upserts) into a fresh
SQLite file in a temporary directory, with synchronous=FULL (fsync per commit, the
default) and NORMAL.  The messages/second figure is in the ``extra_info`` column and is
printed at the end.
"""
import itertools
import json
import random

import pytest

from imsrv.backends.sqlite import SqliteStore

USERS = [f"user{i:04d}" for i in range(1000)]
RESULTS = []


def make_batches(size, seed=7):
    rng = random.Random(seed)
    counter = itertools.count()

    def batch():
        out = []
        for _ in range(size):
            n = next(counter)
            a, b = rng.sample(USERS, 2)
            lo, hi = sorted((a, b))
            out.append({"sender": a, "to": b, "group": None, "conv": f"u:{lo}:{hi}",
                        "body": json.dumps({"text": f"message number {n} " + "x" * 60}),
                        "ts": 1_700_000_000_000 + n, "cmid": f"cm-{n}", "recipients": [a, b]})
        return out
    return batch


@pytest.fixture(params=["FULL", "NORMAL"])
def store(request, tmp_path):
    s = SqliteStore(str(tmp_path / "bench.db"), synchronous=request.param)
    s.migrate()
    # warm up: every user already has a counter, as in a running server
    s.store_messages([{"sender": "system", "to": u, "group": None, "conv": f"u:{u}:system",
                       "body": "{}", "ts": 0, "cmid": None, "recipients": [u]} for u in USERS])
    yield s
    s.close()


@pytest.mark.parametrize("size", [1, 16, 128])
def test_store_messages(benchmark, store, size):
    batch = make_batches(size)
    rounds = {1: 300, 16: 150, 128: 60}[size]
    benchmark.group = f"store_messages synchronous={store.synchronous}"
    benchmark.pedantic(store.store_messages, setup=lambda: ((batch(),), {}), rounds=rounds,
                       iterations=1, warmup_rounds=3)
    mean = benchmark.stats.stats.mean
    rate = size / mean
    benchmark.extra_info["messages_per_s"] = round(rate)
    RESULTS.append((store.synchronous, size, mean * 1e3, rate))


def teardown_module(module):
    if RESULTS:
        print("\nstore_messages throughput (mean per batch):")
        for sync, size, ms, rate in RESULTS:
            print(f"  synchronous={sync:<6} batch={size:<4} {ms:8.3f} ms/batch  "
                  f"{rate:10,.0f} messages/s")


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q", "-s", "-p", "no:cacheprovider"]))
