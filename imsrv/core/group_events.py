"""The ``group_event`` inbox entries of protocol v1.1: what a group change tells its members.

Each change of a group (:mod:`imsrv.core.groups`) is committed first, then its events are
posted through the send path (``App.forward``): one entry per event in the inbox of every
recipient, with the next seq of each, sender = the actor, ``group`` = the group, kind
``group_event`` and a body ``{"event": E, "by": actor, "user"?: the subject, "role"? /
"until"? / "name"? / "notice"?}``.  Posting comes after the change on purpose: if it fails
(the store or the forwarder down), the change stands and the request is still answered
``ok`` (``unavailable`` would claim that nothing was changed); the failure is logged
``event=group_event_failed`` with the group, the events and the error, and the members
learn the new state from group_info / group_members.
"""
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


def event(what, by, user=None, **fields):
    """The body of one group_event entry (fields whose value is None are left out)."""
    assert what in EVENTS, what
    body = {"event": what, "by": by}
    if user is not None:
        body["user"] = user
    body.update((k, v) for k, v in fields.items() if v is not None)
    return body


class GroupEvents:
    """Posts group events through ``forward`` (``App.forward``: a list of SendRequests,
    returns once each has its result)."""

    def __init__(self, forward):
        self.forward = forward

    def post(self, group, actor, recipients, bodies):
        """Store and push ``bodies`` (event dicts, in order) as group_event entries of
        ``group`` from ``actor`` in the inbox of each of ``recipients``.  Never raises: a
        failure is logged (group_event_failed) and the events are lost (see module doc).
        -> True if every event was stored."""
        recipients = list(dict.fromkeys(recipients))
        if not recipients or not bodies:
            return True
        reqs = [SendRequest(actor, b, encode_body(b), group=group, kind=KIND, notify_to=recipients)
                for b in bodies]
        failed = None
        try:
            for i in range(0, len(reqs), POST_BATCH):
                self.forward(reqs[i:i + POST_BATCH])
        except Exception as exc:   # the change is committed: it stands, whatever happens here
            failed = exc
        if failed is None:
            bad = [r.result for r in reqs if not isinstance(r.result, dict)]
            if not bad:
                return True
            failed = bad[0]
        events = ",".join(b["event"] for b in bodies)
        error = f"{failed.code}: {failed.message}" if isinstance(failed, ImError) else repr(failed)
        logs.warning("group_event_failed", group=group, by=actor, events=events, recipients=len(recipients),
                     error=error)
        return False
