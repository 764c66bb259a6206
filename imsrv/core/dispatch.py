"""The one dispatcher: every op of the API service and of the gateway, ``send`` included,
is run by :meth:`Dispatcher.dispatch`, in these steps:

1. the request id (echoed in an error reply even when it is invalid, so the client can
   match it);
2. the op and its schema (:mod:`imsrv.protocol.schemas`); for an API op that needs one,
   the token (absent: ``unauthorized``; resolved to the calling user);
3. the handler (:class:`imsrv.core.app.App` ``api_<op>`` / ``gw_<op>`` / ``check_send``);
4. the error-to-reply translation, the same for every path (:meth:`Dispatcher.error_reply`,
   also used by a gateway's ``auth``): an :class:`ImError` is answered with its code; an
   exception a backend declares as "unavailable" (``unavailable_errors``) is answered
   ``unavailable`` and logged ``event=backend_unavailable``; anything else is a bug:
   ``internal``, logged ``event=internal_error`` with the traceback, service, op, user and
   request id (imsrv.logs.exception).

A ``send`` handler returns its :class:`~imsrv.core.messaging.SendRequest` instead of a
reply: the gateway hands the sends of one read to the send path together, then
:func:`replies_in_order` turns their results into replies.

What it counts (:class:`Counts`, and ``Op.calls``) costs an integer add per request; the
process's /metrics reads the numbers at scrape time (imsrv/metrics.py).
"""
from .. import logs
from ..backends.base import OutcomeUnknown
from ..protocol.errors import BadRequest, ImError, Internal, Unauthorized, Unavailable, UnknownOp
from ..protocol.fields import echo_id, req_id, validate
from ..protocol.schemas import API_SCHEMAS, GATEWAY_SCHEMAS, TOKEN_SCHEMA

# What a handler returns (Op.returns):
OK_FIELDS = "ok_fields"    # the fields of an {"op": "ok"} reply (API ops)
REPLY = "reply"            # the whole reply, or None for no reply (gateway ops)
SEND = "send"              # a SendRequest, answered once the send path set its result


class TestHookError(RuntimeError):
    """Raised instead of running a handler that ``[test] raise_in`` names: a bug on purpose
    (test suite only; see imsrv.config.TEST_HOOKS_ENV)."""

    __test__ = False  # not a pytest test class, whatever its name


def test_hook_ops(cfg):
    """The op names of ``[test] raise_in`` (empty unless IMSRV_TEST_HOOKS=1 let it be set)."""
    test = getattr(cfg, "test", None)
    raw = getattr(test, "raise_in", "") if test is not None else ""
    return frozenset(op.strip() for op in raw.split(",") if op.strip())


class Op:
    """One op of a service: its schema, its handler ``handler(caller, clean_fields)``, whether
    it needs a token (API ops but register, login, notify) and what the handler returns.
    ``calls``: requests of this op dispatched so far (valid or not)."""

    __slots__ = ("schema", "handler", "needs_token", "returns", "calls")

    def __init__(self, schema, handler, needs_token=False, returns=REPLY):
        self.schema = schema
        self.handler = handler
        self.needs_token = needs_token
        self.returns = returns
        self.calls = 0


#: the op names an error is counted under (any other name a client sends: "other"), so a
#: client cannot make new label values
KNOWN_OPS = frozenset(API_SCHEMAS) | frozenset(GATEWAY_SCHEMAS) | {"auth", "frame"}
#: a gateway SendRequest's kind -> the op that made it
_SEND_KIND_OP = {None: "send", "recall": "recall", "edit": "edit", "reaction": "react"}


def backend_of(exc):
    """The backend an "unavailable" exception comes from: "redis" (redis-py's errors) or
    "store" (the SQL store's)."""
    return "redis" if type(exc).__module__.split(".", 1)[0] == "redis" else "store"


class Counts:
    """What the core counts, read at scrape time (imsrv/metrics.py); plain ints and dicts
    changed on the event loop only:

    - ``errors``: {(code, op): error replies}: of the dispatcher (every code, ``internal``
      and ``unavailable`` included), of the send path's results (:func:`replies_in_order`)
      and of the gateways (a connection over its rate; op "frame": a frame that could not
      be decoded);
    - ``acks``: sends (send, recall, edit, react) answered ok;
    - ``backend_errors``: {"redis" | "store": failures of a backend met by a request or by
      a background loop (:meth:`backend_error`)}."""

    __slots__ = ("errors", "acks", "backend_errors")

    def __init__(self):
        self.errors = {}
        self.acks = 0
        self.backend_errors = {}

    def error(self, code, op):
        key = (code, op if type(op) is str and op in KNOWN_OPS else "other")
        self.errors[key] = self.errors.get(key, 0) + 1

    def backend_error(self, exc):
        backend = backend_of(exc)
        self.backend_errors[backend] = self.backend_errors.get(backend, 0) + 1


class OpTable(dict):
    """op name -> :class:`Op`, for one service.  ``service`` names it in the logs, ``where``
    in the unknown_op message; ``log_context(caller)`` -> the caller's log fields (user,
    device, addr)."""

    def __init__(self, service, where, log_context):
        super().__init__()
        self.service = service
        self.where = where
        self.log_context = log_context


class ApiCaller:
    """Who sent an API request: the address, and once its token is resolved the user and
    the token."""

    __slots__ = ("addr", "user", "token")

    def __init__(self, addr):
        self.addr = addr
        self.user = None
        self.token = None


class Dispatcher:
    """``resolve_token(token)`` -> (user, device, token hash) or Unauthorized;
    ``backend_errors``: the exception classes meaning "a backend is down"; ``raise_in``:
    the ops whose handlers the test hook replaces by a TestHookError."""

    def __init__(self, resolve_token, backend_errors, raise_in=frozenset()):
        self.resolve_token = resolve_token
        self.backend_errors = backend_errors
        self.raise_in = raise_in
        self.counts = Counts()

    def dispatch(self, ops, frame, caller):
        """Run one request frame (a dict) of ``ops``' service for ``caller`` (an ApiCaller,
        or the gateway Session) -> the reply dict, a SendRequest (``send``) or None (no
        reply).  Never raises."""
        rid = echo_id(frame)
        op = frame.get("op")
        try:
            rid = req_id(frame)
            if not isinstance(op, str):
                raise BadRequest("field 'op' is missing or not a string")
            entry = ops.get(op)
            if entry is None:
                raise UnknownOp(f"unknown op {op[:64]!r} on {ops.where}")
            entry.calls += 1
            if entry.needs_token:
                # "unauthorized: no valid token" (the contract's error table): an absent one
                # too, not bad_request; only a token that is not a string is a bad request
                if frame.get("token") is None:
                    raise Unauthorized(f"op {op!r} needs a token: log in first")
                token = validate(TOKEN_SCHEMA, frame)["token"]
                caller.user = self.resolve_token(token)[0]
                caller.token = token
            clean = validate(entry.schema, frame)
            if op in self.raise_in:
                raise TestHookError(f"test hook: [test] raise_in names op {op!r}")
            result = entry.handler(caller, clean)
        except Exception as exc:
            return self.error_reply(exc, ops.service, op, rid, **ops.log_context(caller))
        returns = entry.returns
        if returns is SEND:
            result.rid = rid
            return result
        if returns is REPLY:
            if result is not None and rid is not None:
                result["id"] = rid
            return result
        out = {"op": "ok"}
        if rid is not None:
            out["id"] = rid
        out.update(result)
        return out

    def error_reply(self, exc, service, op, rid, **context):
        """The error reply for an exception a handler raised (logged unless it is an
        ImError: those are answers, not failures)."""
        counts = self.counts
        if isinstance(exc, ImError):
            counts.error(exc.code, op)
            return exc.reply(rid)
        if isinstance(exc, self.backend_errors):
            counts.error(Unavailable.code, op)
            counts.backend_error(exc)
            logs.warning("backend_unavailable", service=service, op=op, id=rid, error=repr(exc), **context)
            return Unavailable(f"a backend is unavailable, retry later ({type(exc).__name__})").reply(rid)
        # a bug: logged with its traceback and the request id, answered `internal`
        counts.error(Internal.code, op)
        logs.exception("internal_error", exc, service=service, op=op, **context, id=rid)
        return Internal(f"internal error handling request id={rid}").reply(rid)


def replies_in_order(slots, counts=None):
    """The replies to one read's requests, in request order.  ``slots``: reply dicts, and
    SendRequests whose send path has set their results.  -> (replies, unknown): ``unknown``
    is the first send whose outcome is unknown (stored or not: no true reply exists) and
    ``replies`` what comes before it; else None and every reply.  ``counts`` (the
    dispatcher's :class:`Counts`): the sends' acks and errors are counted there."""
    out = []
    acks = 0
    for slot in slots:
        if type(slot) is dict:
            out.append(slot)
            continue
        result = slot.result
        if isinstance(result, ImError):
            if counts is not None:
                counts.error(result.code, _SEND_KIND_OP.get(slot.kind, "send"))
            out.append(result.reply(slot.rid))
        elif isinstance(result, OutcomeUnknown):
            break
        else:
            acks += 1
            reply = dict(result)  # in-batch duplicates share their first send's result
            if slot.rid is not None:
                reply["id"] = slot.rid
            out.append(reply)
    else:
        slot = None
    if counts is not None:
        counts.acks += acks
    return out, slot
