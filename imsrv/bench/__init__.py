"""``imsrv bench SCENARIO``: the load generator that measures a deployment (issue 12).

Modules, one job each:

- ``cli``: the ``imsrv bench`` command line, one subcommand per scenario;
- ``deploy``: the deployment measured (a throwaway embedded server, the supervisord set,
  or a running server), stopped and removed at the end;
- ``workers``: worker processes (the scenarios' connections are split into shards, one
  process each), their counters and the progress callback;
- ``client``: a minimal pipelining wire client on imsrv.codec, and account setup;
- ``report``: progress line, markdown tables, the machine/date/commit header, ``--json``;
- ``plot``: the SVG plots (matplotlib, the ``bench`` extra);
- scenarios: ``pairs`` (sender/recipient pairs; ``--rate`` paces them; ``--peer``
  alternates rounds against ``peer_mosquitto`` / ``peer_ejabberd``), ``sweep`` (pairs at
  the maximum rate, then at fractions of it: latency against throughput), ``group``
  (fan-out to K members), ``idle`` (held connections: RSS per connection, connect rate; its tables
  in ``idle_report``),
  ``storm`` (every client reconnecting after a gateway restart).  ``sweep`` and ``idle``
  open their deployments themselves (``OPENS_DEPLOYMENTS``: one per measurement, fresh).

The small things several scenarios share are here: :data:`SETUP_TIMEOUT`,
:func:`barrier`, :func:`unique_prefix` and :class:`Conductor` (workers and parent in step,
for the scenarios that act on the deployment mid-run).
"""
import multiprocessing
import secrets
import threading

#: seconds the setup of a scenario (accounts, connections) may take, on top of --timeout
SETUP_TIMEOUT = 600.0


def barrier(parties):
    """A barrier for ``parties`` worker processes (the spawn context run_shards uses); put
    it in every shard.  Its ``wait`` blocks the whole worker process, which is what a
    phase boundary wants: every worker starts measuring at the same moment."""
    return multiprocessing.get_context("spawn").Barrier(parties)


def unique_prefix(tag):
    """A user-name prefix no earlier run used (``tag`` + 6 hex digits), so scenarios can
    run again against the same server."""
    return f"{tag}{secrets.token_hex(3)}"


class Conductor:
    """Worker processes that move through phases in step with the parent.

    ``run_shards`` runs in a thread of the parent; every shard gets ``shard["barrier"]``,
    a barrier of the workers *and* the parent.  Worker and parent call ``wait`` at each
    phase boundary; between two, the parent may act on the deployment (restart it, read
    its memory) while every worker waits.  A worker that fails breaks the barrier, so
    :meth:`step` raises the failure instead of waiting for it."""

    def __init__(self, fn, shards, progress, timeout):
        from .workers import run_shards
        self.gate = barrier(len(shards) + 1)
        for shard in shards:
            shard["barrier"] = self.gate
        self.outcome = {}

        def run():
            try:
                self.outcome["results"] = run_shards(fn, shards, progress=progress, timeout=timeout)
            except BaseException as exc:   # handed to the parent's thread by step / results
                self.outcome["error"] = exc
                self.gate.abort()

        self.thread = threading.Thread(target=run, name="bench-workers", daemon=True)
        self.thread.start()

    def step(self, timeout=SETUP_TIMEOUT):
        """Wait at the next phase boundary with the workers."""
        try:
            self.gate.wait(timeout)
        except threading.BrokenBarrierError:
            if "error" in self.outcome:   # set before the worker thread broke the barrier
                raise self.outcome["error"] from None
            from .client import BenchError
            raise BenchError(f"the workers did not reach the next phase within {timeout:.0f} s") from None

    def results(self):
        """The workers' results, once they all returned."""
        self.thread.join()
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["results"]
