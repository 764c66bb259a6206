"""Load-generator worker processes for ``imsrv bench`` and its peers.

One machine, two cores: a single Python process cannot drive a C broker (or imsrv's
gateways) to their limit, so every scenario splits its connections into *shards* and runs
each shard in a worker process of its own (the ``spawn`` start method: a fresh
interpreter, gevent-patched by the worker itself, never a fork of the parent's hub).

    results = run_shards(drive_pairs, shards, progress=print_line, timeout=120)

``fn(shard, report)`` runs in the worker.  ``report(**counters)`` sends the worker's
*cumulative* counters (ints) to the parent; call it as often as convenient, it sends at
most ``REPORT_INTERVAL`` apart (the last call before returning is always sent).  ``fn``
returns a picklable value (a dict of counters and latency samples, say) that comes back in
``results`` in shard order.  The parent sums the latest counters of all workers and calls
``progress(totals, elapsed)`` about once a second.

A worker that raises makes ``run_shards`` raise :class:`WorkerFailed` naming the shard
and carrying the worker's traceback; the others are terminated.  Past ``timeout`` seconds
every worker is terminated and :class:`WorkerFailed` says so.  Workers never outlive the
call.
"""
import multiprocessing
import time
import traceback

#: seconds between two counter reports of one worker
REPORT_INTERVAL = 0.25
#: seconds between two progress calls in the parent
PROGRESS_INTERVAL = 1.0


class WorkerFailed(RuntimeError):
    """A worker process raised, died or ran past the timeout."""


def _worker_main(fn, shard, index, conn):
    import gevent.monkey
    gevent.monkey.patch_all()
    last = [0.0]

    def report(**counters):
        now = time.monotonic()
        if now - last[0] >= REPORT_INTERVAL:
            last[0] = now
            conn.send(("counters", index, counters))
        report.latest = counters

    report.latest = None
    try:
        result = fn(shard, report)
    except BaseException:
        conn.send(("error", index, traceback.format_exc()))
        return
    if report.latest is not None:
        conn.send(("counters", index, report.latest))
    conn.send(("result", index, result))


def run_shards(fn, shards, progress=None, timeout=300.0):
    """Run ``fn(shard, report)`` for every shard, one worker process each -> the list of
    their return values, in shard order (see the module docstring)."""
    ctx = multiprocessing.get_context("spawn")
    procs, conns = [], []
    try:
        for index, shard in enumerate(shards):
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_main, args=(fn, shard, index, child), daemon=True)
            proc.start()
            child.close()
            procs.append(proc)
            conns.append(parent)
        return _collect(procs, conns, progress, timeout)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in conns:
            conn.close()


def _collect(procs, conns, progress, timeout):
    from multiprocessing.connection import wait
    start = time.monotonic()
    deadline = start + timeout
    next_progress = start + PROGRESS_INTERVAL
    counters = [{} for _ in procs]
    results = [None] * len(procs)
    pending = set(range(len(procs)))
    live = {conn: index for index, conn in enumerate(conns)}
    while pending:
        now = time.monotonic()
        if now >= deadline:
            raise WorkerFailed(f"{len(pending)} of {len(procs)} workers still running after "
                               f"{timeout:.0f} s (shards {sorted(pending)})")
        for conn in wait(list(live), timeout=min(deadline, next_progress) - now):
            index = live[conn]
            try:
                kind, _, payload = conn.recv()
            except EOFError:
                del live[conn]
                if index in pending:
                    raise WorkerFailed(f"worker {index} exited without a result "
                                       f"(exit code {procs[index].exitcode})") from None
                continue
            if kind == "counters":
                counters[index] = payload
            elif kind == "error":
                raise WorkerFailed(f"worker {index} failed:\n{payload}")
            else:
                results[index] = payload
                pending.discard(index)
        if progress is not None and time.monotonic() >= next_progress:
            next_progress += PROGRESS_INTERVAL
            progress(sum_counters(counters), time.monotonic() - start)
    return results


def sum_counters(dicts):
    """The per-key sum of a list of counter dicts."""
    total = {}
    for counters in dicts:
        for key, value in counters.items():
            total[key] = total.get(key, 0) + value
    return total


def split(items, parts):
    """``items`` dealt into ``parts`` lists of near-equal length (none empty)."""
    parts = max(1, min(parts, len(items)))
    return [items[i::parts] for i in range(parts)]


def percentiles(samples, points=(50, 90, 99)):
    """{"p50": .., "p90": .., "p99": .., "max": ..} of a list of numbers (None when empty)."""
    if not samples:
        return {**{f"p{p}": None for p in points}, "max": None}
    ordered = sorted(samples)
    out = {f"p{p}": ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] for p in points}
    out["max"] = ordered[-1]
    return out
