"""The SQLite store's checkpointer: WAL checkpoints on a thread of their own.

A checkpoint copies the pages changed since the last one from the WAL into the database
file and fsyncs it.  Left to SQLite (``wal_autocheckpoint``), it runs inside the COMMIT
that crosses the threshold, and every send of that batch waits for it: measured with
``imsrv bench sweep`` at half the maximum rate, a p99 send-to-push latency of 63 ms where
the median was 6 ms.  Here a real OS thread (not a greenlet: the copy and the fsync block
the thread that runs them) with a connection of its own runs ``PRAGMA
wal_checkpoint(PASSIVE)`` every ``interval`` seconds when something was committed since
the last one.  PASSIVE takes no lock a writer needs: commits go on while it copies, and it
copies only what no reader still needs.  The writer marks each commit with
:meth:`Checkpointer.committed` (a flag, no call into SQLite).

A failed checkpoint is logged (at most once per ``interval``) and tried again at the next
round; the data is safe in the WAL meanwhile.  :meth:`stop` ends the thread and waits for
a checkpoint in progress; the store then closes the connection.
"""
import sqlite3

from gevent.monkey import get_original

from .. import logs

_allocate_lock = get_original("_thread", "allocate_lock")
_start_new_thread = get_original("_thread", "start_new_thread")

#: seconds stop() waits for a checkpoint in progress to end
STOP_WAIT = 30.0


class Checkpointer:
    def __init__(self, conn, interval, url):
        self.conn = conn
        self.interval = interval
        self.url = url
        self.dirty = False          # a commit since the last checkpoint
        self.checkpoints = 0        # rounds that ran a checkpoint (tests, stats)
        self._stop = _allocate_lock()
        self._stop.acquire()        # released by stop(): the thread's wake-up and exit
        self._ended = _allocate_lock()
        self._ended.acquire()       # released by the thread as it ends
        _start_new_thread(self._run, ())

    def committed(self):
        """A write transaction committed: checkpoint at the next round."""
        self.dirty = True

    def _run(self):
        try:
            while not self._stop.acquire(timeout=self.interval):
                if self.dirty:
                    self.dirty = False
                    self.checkpoint()
        finally:
            self._ended.release()

    def checkpoint(self):
        """One PASSIVE checkpoint -> (busy, frames in the WAL, frames checkpointed), or
        None when it failed (logged)."""
        try:
            row = self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            logs.warning("checkpoint_failed", store=self.url, error=repr(exc))
            return None
        self.checkpoints += 1
        return row

    def stop(self):
        """End the thread (after a checkpoint in progress) -> True if it ended in time."""
        self._stop.release()
        return self._ended.acquire(timeout=STOP_WAIT)
