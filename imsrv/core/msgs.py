"""The objects of the send path: :class:`SendRequest` (what a gateway, the API or the server
hands the send path), the ``ack`` reply, and the ``msg`` object of an inbox entry (pushes,
sync and history items).  imsrv.core.messaging re-exports them.
"""
from .. import jsonlib
from ..protocol.errors import BadRequest
from ..protocol.fields import MAX_BODY_BYTES

IMPLICIT = "!"  # prefix of server-made dedup keys; a client cmid is stored as JSON text


def encode_body(body):
    """-> JSON text of a message body; BadRequest if it is over the 16 KiB limit."""
    try:
        raw = jsonlib.dumps(body)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"field 'body': cannot be encoded as JSON ({exc})") from None
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"field 'body': {len(raw)} bytes encoded, more than {MAX_BODY_BYTES}")
    return raw.decode("utf-8")


def ack(mid, seq, ts):
    """The reply to a stored send (and the ack a forwarder sends its gateway)."""
    return {"op": "ack", "mid": mid, "seq": seq, "ts": ts}


def ack_of_dedup(record):
    """The first ack of a send stored before, from its dedup record."""
    return ack(record["mid"], record["seq"], record["ts"])


class SendRequest:
    """One queued send, notify, recall, edit, reaction or group_event, with the slot its
    result goes to.

    - ``send`` (gateway): ``SendRequest(user, body, body_json, to= or group=, cmid=,
      session=, reply_to=, mentions=)`` (App.check_send).
    - ``recall`` / ``edit`` / ``react`` (gateway): ``kind`` "recall" / "edit" /
      "reaction", ``ref`` = the mid; body null / the new body / {"emoji": E, "on": bool}
      (App.check_change).  ``to`` and ``group`` stay None: the conversation is the
      referred message's.
    - ``notify`` (API, admin): ``SendRequest("system", body, body_json, notify_to=[users])``;
      result ``{"seqs": {user: seq}}``.
    - ``group_event`` (the server, on a group change)::

          req = SendRequest(actor, body, encode_body(body), group=g, kind="group_event",
                            notify_to=[recipients])
          app.forward([req])     # returns once req.result is set

      stored with sender = actor, group = g (the group's conversation), kind
      group_event, one inbox entry (the next seq) for each of ``notify_to`` (duplicates
      dropped; the actor only if listed), no membership or other check; deduplicated by
      its ``implicit`` key when set (a queued event: ``ge<queue id>.<index>``, so posting
      a queue row again answers each event with its first ack); pushed
      as a ``msg`` with ``"kind": "group_event"`` to every recipient's live devices.
      Result: ``{"op": "ack", "mid", "seq" (the actor's seq, 0 if not a recipient),
      "ts"}``, or an ImError (``unavailable``: nothing stored).  Only through the send
      path of a process that serves the API (embedded: the LocalForwarder; the API
      daemon: StoreInProcess): a distributed gateway's ingress carries gateway sends only.

    The send path may carry a request to another process (imsrv/protocol/cluster.py
    carries kind, ref, reply_to and mentions; not notify_to)."""

    __slots__ = ("sender", "session", "to", "group", "body", "body_json", "cmid", "notify_to", "result", "rid",
                 "implicit", "kind", "ref", "reply_to", "mentions")

    def __init__(self, sender, body, body_json, to=None, group=None, cmid=None, session=None, notify_to=None,
                 kind=None, ref=None, reply_to=None, mentions=None):
        self.sender = sender
        self.session = session      # the sending session: gets the ack, not a push
        self.to = to
        self.group = group
        self.body = body
        self.body_json = body_json
        self.cmid = cmid
        self.notify_to = notify_to  # list of users: admin notify, or a group_event's recipients
        self.result = None          # reply dict or ImError, set by process_batch
        self.rid = None             # the request id to echo in the reply
        # a dedup key for sends without a cmid (made from the ingress entry's gateway and
        # key in the distributed deployment), so a send re-run after a forwarder crash is
        # stored once; never shown
        self.implicit = None
        self.kind = kind            # None (an ordinary message), recall, edit, reaction, group_event
        self.ref = ref              # the mid a recall / edit / reaction is about
        self.reply_to = reply_to    # send: the mid replied to
        self.mentions = mentions    # send to a group: [user, ...] or ["all"]


def add_entry_fields(m, kind, ref, reply_to, mentions):
    """Add the v1.1 fields of an entry to message object ``m`` (only those it has)."""
    if kind is not None:
        m["kind"] = kind
        if ref is not None:
            m["ref"] = ref
    if reply_to is not None:
        m["reply_to"] = reply_to
    if mentions is not None:
        m["mentions"] = mentions


_STORED = object()


def message_obj(rec, body=_STORED):
    """Build the `msg` push / sync entry from a message record (as stored: an edit entry
    carries its new body, the edited message its first one); ``body``: another body to
    show instead of the stored one."""
    m = {"op": "msg", "seq": rec["seq"], "mid": rec["mid"], "from": rec["from"]}
    if rec.get("group") is not None:
        m["group"] = rec["group"]
    else:
        m["to"] = rec["to"]
    m["body"] = jsonlib.loads(rec["body"]) if body is _STORED else body
    m["ts"] = rec["ts"]
    cmid = rec.get("cmid")
    if cmid is not None and not cmid.startswith(IMPLICIT):
        m["cmid"] = jsonlib.loads(cmid)
    mentions = rec.get("mentions")
    add_entry_fields(m, rec.get("kind"), rec.get("ref"), rec.get("reply_to"),
            None if mentions is None else jsonlib.loads(mentions))
    return m


def history_obj(rec):
    """A history item: the message object in its current state (a record of
    Store.history): recalled -> ``"recalled": true``, body null, no mentions, no
    reactions; edited -> the latest body and ``"edited": ts``; ``"reactions": {emoji:
    [user, ...]}`` when it has any."""
    if rec.get("recalled"):
        m = message_obj(rec, body=None)
        m.pop("mentions", None)   # nothing of a recalled message's content stays
        m["recalled"] = True
        return m
    if rec.get("edited"):
        m = message_obj(rec, body=jsonlib.loads(rec["edited_body"]))
        m["edited"] = rec["edited"]
    else:
        m = message_obj(rec)
    if rec.get("reactions"):
        m["reactions"] = rec["reactions"]
    return m
