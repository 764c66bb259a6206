"""The distributed deployment's internal messages: what gateways, forwarders and API daemons
say to each other through Redis.  Clients never see these; every process of one
deployment runs the same version (no compatibility with other layouts in 0.x).  Sans-IO:
encode and decode of each message side by side; the Redis calls are the servers' and
imsrv/backends/redis_hub.py's.  All are JSON objects (``P`` = the key prefix):

=============  ======================  ========================  ===================================
message        where                   from -> to                layout
=============  ======================  ========================  ===================================
ingress entry  stream ``P:ingress``    a gateway -> one          ``{"gateway": id, "key": forward
               (group "forwarders"),   forwarder                 key, "sends": [send,...]}``:
               its one field ``entry``                           the sends of one read of a connection
send           in an ingress entry                               ``{"sender", "device",
                                                                 "generation", "body": JSON text,
                                                                 "to"?, "group"?, "cmid"?}``
ack            channel ``P:gw:<id>``   forwarder -> the entry's  ``{"type": "ack", "key": forward
                                       gateway                   key, "results": [result, ...]}``
                                                                 (one per send, in entry order)
result         in an ack                                         a reply ``{"op": "ack", "mid",
                                                                 "seq", "ts"}`` or an error
                                                                 ``{"error": code, "message",
                                                                 ...extra fields}``
push           channel ``P:gw:<id>``   any hub.push -> the       ``{"type": "push", "deliveries":
                                       gateways of the users'    [[user, object, skip device, skip
                                       sessions                  generation], ...]}``
kick           channel ``P:gw:<id>``   any hub -> the session's  ``{"type": "kick", "user",
                                       gateway                   "device", "generation", "reason"}``
catch-up       channel ``P:gw:<id>``   forwarder (sends it took  ``{"type": "catchup", "users":
                                       over) -> gateways         [user, ...]}``
=============  ======================  ========================  ===================================

A push's skip (device, generation) is the session that sent the message: it gets
``own(seq)`` instead of the push.  A kick hits only that generation of the device (never
a newer session).  A catch-up makes those users' sessions read what they missed from
their inboxes (a forwarder that died may have stored sends without publishing them).

The forward key (``"<pid>.<ms at start>.<counter>"``) is unique per forward() call of a
gateway run: the gateway matches the ack to its waiting senders by it, and the forwarder
makes the implicit dedup key of a send without a cmid from (gateway, key, index).

The fault tests read the cmids of pending ingress entries through :func:`entry_cmids`.
"""
from .. import jsonlib
from .errors import ImError

INGRESS_FIELD = "entry"    # the stream entry's one field: the JSON entry
_SENDS = "sends"           # the entry's sends
_CMID = "cmid"             # a send's client message id

ACK = "ack"
PUSH = "push"
KICK = "kick"
CATCH_UP = "catchup"


# ---------------------------------------------------------------- ingress entries
def encode_ingress_entry(gateway, key, reqs):
    """The stream fields (for XADD) of the entry holding ``reqs`` (SendRequests of
    sessions of ``gateway``, in order)."""
    sends = []
    for req in reqs:
        session = req.session
        send = {"sender": req.sender, "device": session.device, "generation": session.generation,
                "body": req.body_json}
        if req.to is not None:
            send["to"] = req.to
        if req.group is not None:
            send["group"] = req.group
        if req.cmid is not None:
            send[_CMID] = req.cmid
        sends.append(send)
    return {INGRESS_FIELD: jsonlib.dumps({"gateway": gateway, "key": key, _SENDS: sends})}


def decode_ingress_entry(fields, make_send):
    """The stream fields of an entry -> (gateway, key, [make_send(...) for each send]), with
    ``make_send(gateway, key, index, sender, device, generation, body_json, to, group,
    cmid)`` (so a forwarder builds its requests directly, nothing in between)."""
    entry = jsonlib.loads(fields[INGRESS_FIELD])
    gateway, key = entry["gateway"], entry["key"]
    return gateway, key, [make_send(gateway, key, i, s["sender"], s["device"], s["generation"], s["body"],
                                    s.get("to"), s.get("group"), s.get(_CMID))
                          for i, s in enumerate(entry[_SENDS])]


def entry_cmids(fields):
    """The cmids of the sends of an ingress entry (its stream fields, str or bytes keys)."""
    raw = fields.get(INGRESS_FIELD)
    if raw is None:
        raw = fields[INGRESS_FIELD.encode()]
    return [s[_CMID] for s in jsonlib.loads(raw)[_SENDS] if _CMID in s]


# ---------------------------------------------------------------- gateway channel messages
def encode(msg):
    """A channel message -> the bytes to PUBLISH."""
    return jsonlib.dumps(msg)


def decode(raw):
    """PUBLISHed bytes -> the channel message (a dict; its "type" says which)."""
    return jsonlib.loads(raw)


def ack_message(key, reqs):
    """The ack of the ingress entry ``key``: the results of its sends (``reqs``, in entry
    order)."""
    return {"type": ACK, "key": key, "results": [result_to_wire(req.result) for req in reqs]}


def result_to_wire(result):
    """A send's result (a reply dict or an ImError) -> its form in an ack."""
    if isinstance(result, ImError):
        return {"error": result.code, "message": result.message, **result.extra}
    return result


def result_from_wire(result):
    """The form in an ack -> the send's result (a reply dict or an ImError)."""
    if "error" in result:
        err = ImError(result.get("message", ""))
        err.code = result["error"]
        err.extra = {k: v for k, v in result.items() if k not in ("error", "message")}
        return err
    return result


def push_message(deliveries):
    """Pushes for one gateway: ``deliveries`` = [[user, push object, skip device, skip
    generation], ...] (skip: the sending session, which gets own(seq) instead)."""
    return {"type": PUSH, "deliveries": deliveries}


def kick_message(user, device, generation, reason):
    """Kick the session (user, device) of that generation (a newer one is never hit)."""
    return {"type": KICK, "user": user, "device": device, "generation": generation, "reason": reason}


def catch_up_message(users):
    """Make these users' sessions read what they missed from their inboxes."""
    return {"type": CATCH_UP, "users": users}
