"""The distributed deployment's internal messages: what gateways, forwarders and API daemons
say to each other through Redis.  Clients never see these; every process of one
deployment runs the same version (no compatibility with other layouts in 0.x).  Sans-IO:
encode and decode of each message side by side; the Redis calls are the servers' and
imsrv/backends/redis_hub.py's.  All are JSON (``P`` = the key prefix); one PUBLISH on a
gateway's channel carries a JSON array of channel messages (acks, pushes, kicks,
catch-ups: what one forwarder batch or one hub call has for that gateway), applied in
order:

=============  ======================  ========================  ===================================
message        where                   from -> to                layout
=============  ======================  ========================  ===================================
ingress entry  stream ``P:ingress``    a gateway -> one          ``{"gateway": id, "key": forward
               (group "forwarders"),   forwarder                 key, "sender": user, "device",
               its one field ``entry``                           "generation", "sends": [send,
                                                                 ...]}``: the sends of one read of
                                                                 one connection (one session)
send           in an ingress entry                               ``[body JSON text, to, group,
                                                                 cmid]`` (null where absent),
                                                                 and a fifth element, an object,
                                                                 only for a send with v1.1 fields:
                                                                 ``{"kind", "ref", "reply_to",
                                                                 "mentions"}`` (those it has)
ack            channel ``P:gw:<id>``   forwarder -> the entry's  ``{"type": "ack", "key": forward
                                       gateway                   key, "results": [result, ...]}``
                                                                 (one per send, in entry order)
result         in an ack                                         a stored send ``[mid, seq, ts]``
                                                                 (the reply ``{"op": "ack", "mid",
                                                                 "seq", "ts"}``), another reply as
                                                                 is, or an error ``{"error": code,
                                                                 "message", ...extra fields}``
push           channel ``P:gw:<id>``   any hub.push -> the       ``{"type": "push", "deliveries":
                                       gateways of the users'    [[user, object, skip device, skip
                                       sessions                  generation], ...]}``
kick           channel ``P:gw:<id>``   any hub -> the session's  ``{"type": "kick", "user",
                                       gateway                   "device", "generation", "reason"}``
catch-up       channel ``P:gw:<id>``   forwarder (sends it took  ``{"type": "catchup", "users":
                                       over) -> gateways         [user, ...]}``
=============  ======================  ========================  ===================================

A push's skip (device, generation) is the session that sent the message: it gets no push
(the ack of its send makes it skip the seq), only the user's other sessions do; a gateway
holding no other session of the user gets no push at all.  A kick hits only that
generation of the device (never a newer session).  A catch-up makes those users'
sessions read what they missed from their inboxes (a forwarder that died may have stored
sends without publishing them).

The forward key (``"<pid>.<ms at start>.<counter>"``) is unique per forward() call of a
gateway run: the gateway matches the ack to its waiting senders by it, and the forwarder
makes the implicit dedup key of a send without a cmid from (gateway, key, index).

The fault tests read the cmids of pending ingress entries through :func:`entry_cmids`.
"""
from .. import jsonlib
from .errors import ImError

if jsonlib.BACKEND == "orjson":
    from orjson import Fragment as _Fragment
else:
    _Fragment = None

INGRESS_FIELD = "entry"    # the stream entry's one field: the JSON entry
_SENDS = "sends"           # the entry's sends

ACK = "ack"
PUSH = "push"
KICK = "kick"
CATCH_UP = "catchup"


# ---------------------------------------------------------------- ingress entries
#: the v1.1 fields of a send (SendRequest attributes) its fifth element carries
SEND_EXTRAS = ("kind", "ref", "reply_to", "mentions")


def encode_ingress_entry(gateway, key, reqs):
    """The stream fields (for XADD) of the entry holding ``reqs`` (SendRequests of one
    session of ``gateway``, in order: what one forward() gets).  A recall, edit or
    reaction travels as a send whose fifth element names its kind and ref."""
    first = reqs[0]
    session, sender = first.session, first.sender
    sends = []
    for req in reqs:
        if req.session is not session or req.sender != sender:
            raise ValueError("the sends of one ingress entry come from one session")
        if req.notify_to is not None:
            raise ValueError("a notify or group_event is stored where it is made, never sent to a forwarder")
        send = [req.body_json, req.to, req.group, req.cmid]
        if req.kind is not None or req.reply_to is not None or req.mentions is not None:
            send.append({name: getattr(req, name) for name in SEND_EXTRAS if getattr(req, name) is not None})
        sends.append(send)
    return {INGRESS_FIELD: jsonlib.dumps({"gateway": gateway, "key": key, "sender": sender,
                                          "device": session.device, "generation": session.generation,
                                          _SENDS: sends})}


def decode_ingress_entry(fields):
    """The stream fields of an entry -> (gateway, key, sender, device, generation, sends),
    each send a list [body JSON text, to, group, cmid] or [body JSON text, to, group,
    cmid, {v1.1 fields}] (see :func:`send_extras`)."""
    entry = jsonlib.loads(fields[INGRESS_FIELD])
    return (entry["gateway"], entry["key"], entry["sender"], entry["device"], entry["generation"],
            entry[_SENDS])


def send_extras(send):
    """The v1.1 fields of a decoded send -> {SendRequest attribute: value} (empty for a
    plain send).  ValueError for anything but those fields."""
    if len(send) == 4:
        return {}
    extras = send[4]
    if type(extras) is not dict or not set(extras) <= set(SEND_EXTRAS):
        raise ValueError(f"a send's fifth element holds {', '.join(SEND_EXTRAS)} only")
    return extras


def entry_cmids(fields):
    """The cmids of the sends of an ingress entry (its stream fields, str or bytes keys)."""
    raw = fields.get(INGRESS_FIELD)
    if raw is None:
        raw = fields[INGRESS_FIELD.encode()]
    return [send[3] for send in jsonlib.loads(raw)[_SENDS] if send[3] is not None]


def raw_body(body_json):
    """A send's body (its JSON text) as the value to put in a push object: with orjson,
    a Fragment (the text goes into the push as it is, never parsed and encoded again),
    else the decoded value."""
    if _Fragment is not None:
        return _Fragment(body_json)
    return jsonlib.loads(body_json)


# ---------------------------------------------------------------- gateway channel messages
def encode(msgs):
    """Channel messages for one gateway -> the bytes to PUBLISH (a JSON array)."""
    return jsonlib.dumps(msgs)


def decode(raw):
    """PUBLISHed bytes -> the channel messages (dicts; the "type" of each says which).
    ValueError if it is not such an array."""
    msgs = jsonlib.loads(raw)
    if type(msgs) is not list:
        raise ValueError(f"a channel publish holds a JSON array, not {type(msgs).__name__}")
    return msgs


def ack_message(key, reqs):
    """The ack of the ingress entry ``key``: the results of its sends (``reqs``, in entry
    order)."""
    return {"type": ACK, "key": key, "results": [result_to_wire(req.result) for req in reqs]}


def result_to_wire(result):
    """A send's result (a reply dict or an ImError) -> its form in an ack."""
    if isinstance(result, ImError):
        return {"error": result.code, "message": result.message, **result.extra}
    if type(result) is dict and result.get("op") == "ack" and len(result) == 4:
        return [result["mid"], result["seq"], result["ts"]]
    return result


def result_from_wire(result):
    """The form in an ack -> the send's result (a reply dict or an ImError)."""
    if type(result) is list:
        mid, seq, ts = result
        return {"op": "ack", "mid": mid, "seq": seq, "ts": ts}
    if "error" in result:
        err = ImError(result.get("message", ""))
        err.code = result["error"]
        err.extra = {k: v for k, v in result.items() if k not in ("error", "message")}
        return err
    return result


def push_message(deliveries):
    """Pushes for one gateway: ``deliveries`` = [[user, push object, skip device, skip
    generation], ...] (skip: the sending session, which gets no push)."""
    return {"type": PUSH, "deliveries": deliveries}


def kick_message(user, device, generation, reason):
    """Kick the session (user, device) of that generation (a newer one is never hit)."""
    return {"type": KICK, "user": user, "device": device, "generation": generation, "reason": reason}


def catch_up_message(users):
    """Make these users' sessions read what they missed from their inboxes."""
    return {"type": CATCH_UP, "users": users}
