"""How long one store_messages batch takes on the SQLite store of a server (writer thread
on, as in ``imsrv serve``), and how the WAL checkpoints show in its tail.

    .venv/bin/python bench/checkpoint_latency.py                          # checkpointer thread, every 1 s
    .venv/bin/python bench/checkpoint_latency.py --checkpoint-interval 5
    .venv/bin/python bench/checkpoint_latency.py --sqlite-autocheckpoint  # SQLite's own, inside a COMMIT

Stores ``--sends`` one-to-one sends with cmids between 100 users, in batches of
``--batch``, into a fresh file in a temporary directory (synchronous=FULL), and prints
sends/s and the batch time p50/p99/p99.9/max.  ``--sqlite-autocheckpoint`` is how the
store worked before the checkpointer thread: ``wal_autocheckpoint`` 10000 pages on the
writer's connection, so the COMMIT that crosses it also copies the WAL into the database
file and fsyncs it, and its batch waits for that.
"""
import gevent.monkey

gevent.monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_store import USERS, make_batches  # noqa: E402

from imsrv.backends.sqlite import SqliteStore  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sends", type=int, default=100000, help="sends to store (default 100000)")
    ap.add_argument("--batch", type=int, default=40, help="sends per store_messages call (default 40)")
    ap.add_argument("--checkpoint-interval", type=float, default=1.0,
                    help="seconds between the checkpointer thread's rounds (default 1.0)")
    ap.add_argument("--sqlite-autocheckpoint", action="store_true",
                    help="no checkpointer thread: SQLite checkpoints inside the COMMIT at 10000 pages")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="imsrv-ckpt-")
    try:
        store = SqliteStore(os.path.join(tmp, "bench.db"), writer_thread=True,
                            checkpoint_interval=args.checkpoint_interval)
        if args.sqlite_autocheckpoint:   # back to SQLite's own checkpoints
            store._checkpointer.committed = lambda: None
            store._writer_conn.execute("PRAGMA wal_autocheckpoint = 10000")
        store.migrate()
        users = USERS[:100]
        make = make_batches(args.batch)
        rng = random.Random(11)
        times = []
        start = time.perf_counter()
        for _ in range(args.sends // args.batch):
            batch = make()
            for item in batch:   # 100 users, so that pages are shared as in a busy server
                sender, to = rng.sample(users, 2)
                lo, hi = sorted((sender, to))
                item.update(sender=sender, to=to, conv=f"u:{lo}:{hi}", recipients=[sender, to])
            t = time.perf_counter()
            store.store_messages(batch)
            times.append((time.perf_counter() - t) * 1000)
        elapsed = time.perf_counter() - start
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    times.sort()
    n = len(times)
    mode = ("SQLite autocheckpoint 10000 pages" if args.sqlite_autocheckpoint
            else f"checkpointer thread every {args.checkpoint_interval:g} s")
    print(f"| {mode} | {n * args.batch / elapsed:.0f} | {times[n // 2]:.2f} | {times[int(n * .99)]:.2f} "
          f"| {times[int(n * .999)]:.2f} | {times[-1]:.2f} |")


if __name__ == "__main__":
    main()
