"""The ``group_event`` inbox entries of protocol v1.1: what a group change tells its members.

Each change of a group (:mod:`imsrv.core.groups`) writes its events durably WITH the change:
the store inserts one ``group_event_queue`` row (the group, the actor, the recipients, the
event bodies) in the change's own transaction (imsrv/backends/sql_groups.py, a
transactional outbox), so a change that commits has its events queued and one that rolls
back has none.  Then :meth:`GroupEvents.post` posts the row through the send path
(``App.forward``): one entry per event in the inbox of every recipient, with the next seq of
each, sender = the actor, ``group`` = the group, kind ``group_event`` and a body ``{"event":
E, "by": actor, "user"?: the subject, "role"? / "until"? / "name"? / "notice"?}``; once
every entry has its result, the row is deleted.

Exactly once into each inbox: entry ``i`` of row ``id`` is sent with the implicit dedup key
``ge.<group>.<id>.<i>`` (never shown to clients; the group is part of it so that a row id
handed out again, after the table emptied on an engine that does not keep its counter,
cannot collide with an old entry of the same actor).  Posting a row a second time (it was
stored, but the row's delete failed, or two posts overlapped) is answered by the send path
from the first entries' dedup records and stores nothing more.

If the post fails (the store or the forwarder down, the process killed between commit and
post), the change stands and the request is still answered ``ok`` (``unavailable`` would
claim that nothing was changed); the failure is logged ``event=group_event_failed`` and the
row stays.  :meth:`GroupEvents.redeliver` (run every ``REDELIVER_EVERY`` seconds by the
deployment's maintenance, imsrv/servers/maintenance.py) posts the rows older than
``REDELIVER_AFTER`` seconds again, oldest first, so the events arrive at least once and are
stored exactly once, possibly after the reply and after entries of later changes.
"""
import time

from .. import logs
from ..protocol.errors import ImError
from .msgs import SendRequest, encode_body

#: the events a group_event body may carry (PROTOCOL.md v1.1 "Inbox entries with a kind").
#: "joined" is never written: there is no op by which a user joins on their own; an invite
#: writes one "invited" per user added (subject: that user, by: the inviter)
EVENTS = ("created", "joined", "invited", "left", "kicked", "role", "muted", "unmuted", "updated",
          "transferred", "dissolved")

KIND = "group_event"

#: events per forward() call: an invite of many users into a big group makes one entry per
#: invited user in every member's inbox, stored in batches of this many events
POST_BATCH = 50

#: seconds a queue row is left to the post of the op that wrote it before the redelivery
#: takes it (an op's own post takes milliseconds: a row this old was not, or not wholly,
#: delivered; posting it twice would still store nothing twice)
REDELIVER_AFTER = 5.0
#: seconds between two redelivery rounds, and rows per round (the rest: the next round)
REDELIVER_EVERY = 2.0
REDELIVER_BATCH = 100


def event(what, by, user=None, **fields):
    """The body of one group_event entry (fields whose value is None are left out)."""
    assert what in EVENTS, what
    body = {"event": what, "by": by}
    if user is not None:
        body["user"] = user
    body.update((k, v) for k, v in fields.items() if v is not None)
    return body


def dedup_key(group, queue_id, index):
    """The implicit dedup key of event ``index`` of queue row ``queue_id`` of ``group``."""
    return f"ge.{group}.{queue_id}.{index}"


class GroupEvents:
    """Posts group events through ``forward`` (``App.forward``: a list of SendRequests,
    returns once each has its result); ``store`` holds the queue rows."""

    def __init__(self, forward, store=None, batch=REDELIVER_BATCH, min_age=REDELIVER_AFTER):
        self.forward = forward
        self.store = store
        self.batch = batch          # rows per redeliver() round
        self.min_age = min_age      # seconds a row is left to its op's own post

    def post(self, group, actor, recipients, bodies, queue_id=None):
        """Store and push ``bodies`` (event dicts, in order) as group_event entries of
        ``group`` from ``actor`` in the inbox of each of ``recipients``; ``queue_id``: their
        queue row (deduplicated by it, and deleted once every entry is stored), or None.
        Never raises: a failure is logged (group_event_failed) and the row, if any, stays
        for :meth:`redeliver`.  -> True if every event was stored."""
        recipients = list(dict.fromkeys(recipients))
        if not recipients or not bodies:
            return True
        reqs = [SendRequest(actor, b, encode_body(b), group=group, kind=KIND, notify_to=recipients)
                for b in bodies]
        if queue_id is not None:
            for i, req in enumerate(reqs):
                req.implicit = dedup_key(group, queue_id, i)
        failed = None
        try:
            for i in range(0, len(reqs), POST_BATCH):
                self.forward(reqs[i:i + POST_BATCH])
        except Exception as exc:   # the change is committed: it stands, whatever happens here
            failed = exc
        if failed is None:
            bad = [r.result for r in reqs if not isinstance(r.result, dict)]
            if not bad:
                if queue_id is not None:
                    self._delete(group, queue_id)
                return True
            failed = bad[0]
        events = ",".join(b["event"] for b in bodies)
        error = f"{failed.code}: {failed.message}" if isinstance(failed, ImError) else repr(failed)
        logs.warning("group_event_failed", group=group, by=actor, events=events, recipients=len(recipients),
                     queued=queue_id, error=error)
        return False

    def post_row(self, row):
        """:meth:`post` of a queue row (as the store gives it; None: nothing to post)."""
        if row is None:
            return True
        return self.post(row["group"], row["actor"], row["recipients"], row["bodies"], row["id"])

    def _delete(self, group, queue_id):
        try:
            self.store.delete_group_events([queue_id])
        except Exception as exc:   # stored all the same: a post again of the row stores nothing
            logs.warning("group_event_queue_delete_failed", group=group, queued=queue_id, error=repr(exc))

    def redeliver(self, limit=None, min_age=None):
        """Post again the queue rows older than ``min_age`` seconds (None: ``self.min_age``),
        oldest first, at most ``limit`` (None: ``self.batch``); stops at the first that fails (the store or the forwarder is down: the
        next round tries again from it).  StoreError of reading the rows propagates.
        -> the number of rows delivered."""
        cutoff = int((time.time() - (self.min_age if min_age is None else min_age)) * 1000)
        done = 0
        for row in self.store.take_group_events(self.batch if limit is None else limit):
            if row["ts"] > cutoff:
                break   # this one (and those after it) may still be in their op's post
            if not self.post_row(row):
                break
            done += 1
        if done:
            logs.info("group_events_redelivered", rows=done)
        return done
