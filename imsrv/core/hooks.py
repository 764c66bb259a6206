"""Hooks to business services (protocol v1.1, PROTOCOL.md "Hooks to business services"):
what is POSTed, how it is signed, what a ``before_send`` answer means, and what the
``after_send`` / ``offline`` queues hold.  Sans-IO: the HTTP client is given
(``post(url, body, headers, timeout) -> (status, reply bytes)``, raising
:class:`HookFailure`; imsrv/servers/hook_client.py), the queues are the servers'
(imsrv/servers/hook_queue.py, imsrv/backends/sql_hooks.py, imsrv/backends/redis_hooks.py).

Every POST carries ``X-Imsrv-Signature: sha256=<hex HMAC-SHA256 of the body, keyed with
hooks.secret>`` (:func:`sign`).

**before_send** (:class:`BeforeSend`), asked by the gateway before a ``send`` (to a user
or a group) or an ``edit`` enters the send path; not for recall, react (the contract's
list), group_event entries or ``notify`` (made by the server).  Request, every key always
present::

    {"from", "to" | "group", "kind" (null for a send, "edit"), "body", "mentions", "reply_to"}
    (+ "ref": the edited mid, for an edit)

Answers: ``{"action": "allow"}``; ``{"action": "reject", "reason": R}`` -> ``forbidden``
with message R (a string; absent: "rejected by the before_send hook"); ``{"action":
"replace", "body": B}`` -> B is stored and pushed (B must be a valid body: at most 16 KiB
encoded).  A failure: no answer within ``hooks.timeout``, a refused connection, a status
other than 2xx, a reply that is not one of those objects, a replacement body over the
limit.  Then ``hooks.fail_open`` decides: true allows the original, false answers
``unavailable`` (nothing stored).

**after_send / offline** queues hold *rows* made from a store batch
(:meth:`HookRows.rows`), each ``(hook, n, payload)``: ``payload`` the JSON text of a list
of ``n`` (1 <= n <= hooks.batch) objects, in batch order:

- ``after_send``: one event per stored entry (every kind): the entry's message object
  without ``op`` and ``seq`` (a seq is per inbox): {mid, from, to | group, body, ts,
  cmid?, kind?, ref?, reply_to?, mentions?} (:func:`event_of`);
- ``offline``: one *candidate* per ordinary message (kind absent) with recipients other
  than its sender: {mid, from, to | group, conv, seqs: {user: seq}, preview, mentions}.
  Whether a recipient gets a notification is decided when the worker takes the row
  (:func:`notifications`): no online device at that moment, conversation not muted.

A delivery takes rows in queue order up to ``hooks.batch`` objects (:func:`take_prefix`)
and POSTs ``{"events": [...]}`` (sorted by mid: the order the entries were stored in,
conversation by conversation) or ``{"notifications": [...]}`` in POSTs of at most
``hooks.batch``, each retried with :func:`retry_wait` until a 2xx.
"""
import hashlib
import hmac
import random
from urllib.parse import urlsplit

from .. import jsonlib, logs
from ..protocol.errors import BadRequest, Forbidden, Unavailable
from ..protocol.fields import ALL
from .msgs import IMPLICIT, add_entry_fields, encode_body

BEFORE_SEND, AFTER_SEND, OFFLINE = "before_send", "after_send", "offline"
QUEUED_HOOKS = (AFTER_SEND, OFFLINE)
SIGNATURE_HEADER = "X-Imsrv-Signature"
PREVIEW_CHARS = 100
FIRST_RETRY = 0.5      # seconds before the first retry of a failed batch POST (then doubling)
BATCH_TIMEOUT = 10.0   # seconds one after_send / offline POST may take
REJECTED = "rejected by the before_send hook"


class HookFailure(Exception):
    """A hook POST got no valid answer (timeout, connection refused or cut, not 2xx, a
    reply that is not what the hook answers)."""


def sign(secret, body):
    """The X-Imsrv-Signature value of ``body`` (bytes): ``sha256=`` + lower-case hex
    HMAC-SHA256 keyed with ``secret`` (its UTF-8 bytes)."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def headers(secret, body):
    return {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)}


class HookSettings:
    """``[hooks]`` of the config, checked: each URL "" (off) or http(s)://host...;
    ``secret`` required when a hook is on; timeout, retry_max > 0; batch >= 1.
    ValueError naming the key and the rule."""

    def __init__(self, section):
        self.urls = {}
        for hook in (BEFORE_SEND, AFTER_SEND, OFFLINE):
            url = getattr(section, hook)
            if url:
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise ValueError(f"[hooks] {hook} = {url!r}: not an http:// or https:// URL")
                self.urls[hook] = url
        self.secret = section.secret
        if self.urls and not self.secret:
            raise ValueError(f"[hooks] secret is empty: it is required when a hook is set"
                             f" ({', '.join(self.urls)})")
        self.timeout = float(section.timeout)
        self.retry_max = float(section.retry_max)
        self.batch = int(section.batch)
        self.fail_open = bool(section.fail_open)
        for key, value in (("timeout", self.timeout), ("retry_max", self.retry_max)):
            if not value > 0:
                raise ValueError(f"[hooks] {key} = {value!r}: must be > 0 seconds")
        if self.batch < 1:
            raise ValueError(f"[hooks] batch = {self.batch!r}: must be at least 1")

    @property
    def queued(self):
        """The queued hooks that are on (after_send, offline), in that order."""
        return [h for h in QUEUED_HOOKS if h in self.urls]


# ---------------------------------------------------------------- before_send
def decide(status, reply):
    """A before_send answer (HTTP status, body bytes) -> ("allow", None), ("reject",
    reason) or ("replace", body).  HookFailure for anything else."""
    if not 200 <= status < 300:
        raise HookFailure(f"HTTP status {status}")
    try:
        obj = jsonlib.loads(reply)
    except ValueError:
        raise HookFailure("the reply is not JSON") from None
    action = obj.get("action") if type(obj) is dict else None
    if action == "allow":
        return "allow", None
    if action == "reject":
        reason = obj.get("reason")
        return "reject", reason if isinstance(reason, str) and reason else REJECTED
    if action == "replace":
        if "body" not in obj:
            raise HookFailure("a replace answer without 'body'")
        return "replace", obj["body"]
    raise HookFailure(f"'action' is {action!r}: not allow, reject or replace")


class BeforeSend:
    """Asks the before_send hook (``settings``: HookSettings; ``post``: the HTTP client).
    Blocks the calling greenlet for at most ``settings.timeout`` (the client's bound)."""

    def __init__(self, settings, post, monotonic):
        self.url = settings.urls[BEFORE_SEND]
        self.settings = settings
        self.post = post
        self.monotonic = monotonic
        self.failures = 0
        self.last_log = None

    def ask(self, fields, body, body_json):
        """``fields``: the request (:func:`send_fields` / :meth:`edit_fields`); ``body``,
        ``body_json``: what the client sent.  -> (body, body_json) to store: the same, or
        the replacement.  Raises Forbidden (reject) or Unavailable (failure, fail_open
        false)."""
        raw = jsonlib.dumps(fields)
        s = self.settings
        try:
            status, reply = self.post(self.url, raw, headers(s.secret, raw), s.timeout)
            action, value = decide(status, reply)
            if action == "replace":
                try:
                    return value, encode_body(value)
                except BadRequest as exc:
                    raise HookFailure(f"replacement body refused: {exc.message}") from None
        except HookFailure as exc:
            return self._failed(exc, body, body_json, fields)
        if action == "reject":
            raise Forbidden(value)
        return body, body_json

    def _failed(self, exc, body, body_json, fields):
        s = self.settings
        self.failures += 1
        now = self.monotonic()
        if self.last_log is None or now - self.last_log >= 10.0:   # one line per 10 s
            logs.warning("hook_failed", hook=BEFORE_SEND, url=self.url, user=fields["from"],
                         decision="allow" if s.fail_open else "unavailable", failures=self.failures,
                         error=str(exc))
            self.last_log, self.failures = now, 0
        if s.fail_open:
            return body, body_json
        raise Unavailable(f"the before_send hook did not answer ({exc}); nothing was stored")

    @staticmethod
    def edit_fields(store, user, mid, body):
        """The request of an edit of ``mid`` by ``user``, or None when the send path will
        refuse it anyway (not in the user's inbox, not a message): not asked."""
        orig = store.held_messages([(user, mid)]).get((user, mid))
        if orig is None or orig["kind"] is not None:
            return None
        if orig["group"] is not None:
            where = {"group": orig["group"]}
        else:
            where = {"to": orig["to"] if orig["from"] == user else orig["from"]}
        return {"from": user, **where, "kind": "edit", "body": body, "mentions": None, "reply_to": None,
                "ref": mid}


def send_fields(user, args):
    """The before_send request of a gateway ``send`` (its checked fields ``args``)."""
    where = {"group": args["group"]} if "group" in args else {"to": args["to"]}
    return {"from": user, **where, "kind": None, "body": args["body"], "mentions": args.get("mentions"),
            "reply_to": args.get("reply_to")}


def before_send_of(cfg, post=None, monotonic=None):
    """The BeforeSend of config ``cfg`` or None (hook off).  ``post`` None: the servers'
    cooperative client (imsrv/servers/hook_client.py)."""
    settings = HookSettings(cfg.hooks)
    if BEFORE_SEND not in settings.urls:
        return None
    if post is None:
        from ..servers.hook_client import HookClient   # the I/O lives with the servers
        post = HookClient().post
    if monotonic is None:
        import time
        monotonic = time.monotonic
    return BeforeSend(settings, post, monotonic)


# ---------------------------------------------------------------- the queues' rows
def text_of(body):
    """The text of a message body: body.text when body is an object with a string text,
    else body when it is a string, else None."""
    if type(body) is dict:
        text = body.get("text")
        return text if isinstance(text, str) else None
    return body if isinstance(body, str) else None


def preview_of(body):
    """The first PREVIEW_CHARS characters of the text ("" when the body has none)."""
    text = text_of(body)
    return "" if text is None else text[:PREVIEW_CHARS]


def event_of(item, res, body):
    """The after_send event of store item ``item`` stored as ``res`` ({mid, ts, seqs});
    ``body``: its body, decoded."""
    ev = {"mid": res["mid"], "from": item["sender"]}
    if item.get("group") is not None:
        ev["group"] = item["group"]
    else:
        ev["to"] = item["to"]
    ev["body"] = body
    ev["ts"] = res["ts"]
    cmid = item.get("cmid")
    if cmid is not None and not cmid.startswith(IMPLICIT):
        ev["cmid"] = jsonlib.loads(cmid)
    add_entry_fields(ev, item.get("kind"), item.get("ref"), item.get("reply_to"), item.get("mentions"))
    return ev


def candidate_of(item, res, body):
    """The offline candidate of a stored item (``body`` decoded), or None (an entry with a
    kind; nobody but the sender got it)."""
    if item.get("kind") is not None:
        return None
    sender = item["sender"]
    seqs = {u: s for u, s in res["seqs"].items() if u != sender}
    if not seqs:
        return None
    c = {"mid": res["mid"], "from": sender}
    if item.get("group") is not None:
        c["group"] = item["group"]
    else:
        c["to"] = item["to"]
    c["conv"] = item["conv"]
    c["seqs"] = seqs
    c["preview"] = preview_of(body)
    c["mentions"] = item.get("mentions")
    return c


class HookRows:
    """The queue rows of a store batch, for the queued hooks that are on."""

    def __init__(self, settings):
        self.after_send = AFTER_SEND in settings.urls
        self.offline = OFFLINE in settings.urls
        self.batch = settings.batch

    def rows(self, items, results):
        """Store items and their store_messages results -> [(hook, n, payload JSON text)]."""
        events, cands = [], []
        for item, res in zip(items, results):
            body = jsonlib.loads(item["body"])
            if self.after_send:
                events.append(event_of(item, res, body))
            if self.offline:
                c = candidate_of(item, res, body)
                if c is not None:
                    cands.append(c)
        return self._pack(AFTER_SEND, events) + self._pack(OFFLINE, cands)

    def _pack(self, hook, objs):
        b = self.batch
        return [(hook, len(objs[i:i + b]), jsonlib.dumps(objs[i:i + b]).decode("utf-8"))
                for i in range(0, len(objs), b)]


# ---------------------------------------------------------------- delivery
def take_prefix(rows, batch):
    """The longest prefix of queue ``rows`` (each (key, n, payload)) holding at most
    ``batch`` objects; at least one row."""
    total = 0
    for i, (_, n, _) in enumerate(rows):
        total += n
        if total > batch and i > 0:
            return rows[:i]
    return rows


def events_body(payloads):
    """The after_send POST body of rows' payloads: their events, in mid order."""
    events = [ev for p in payloads for ev in jsonlib.loads(p)]
    events.sort(key=lambda ev: ev["mid"])
    return jsonlib.dumps({"events": events})


def candidates(payloads):
    cands = [c for p in payloads for c in jsonlib.loads(p)]
    cands.sort(key=lambda c: c["mid"])
    return cands


def notify_pairs(cands):
    """[(user, conv)] of every recipient of the candidates (the mute lookup)."""
    return [(u, c["conv"]) for c in cands for u in c["seqs"]]


def notifications(cands, online, muted, badges):
    """The offline notifications of ``cands``: one per recipient not in ``online`` (a set
    of users) whose (user, conv) is not in ``muted``; ``badges`` {user: total unread}."""
    out = []
    for c in cands:
        mentions = c.get("mentions") or ()
        where = ("group", c["group"]) if "group" in c else ("to", c["to"])
        for user, seq in c["seqs"].items():
            if user in online or (user, c["conv"]) in muted:
                continue
            out.append({"user": user, "from": c["from"], where[0]: where[1], "mid": c["mid"], "seq": seq,
                        "preview": c["preview"], "mentioned": user in mentions or ALL in mentions,
                        "badge": badges.get(user, 0)})
    return out


def notification_bodies(notes, batch):
    """The offline POST bodies: ``notes`` in chunks of at most ``batch``."""
    return [jsonlib.dumps({"notifications": notes[i:i + batch]}) for i in range(0, len(notes), batch)]


def retry_wait(failures, retry_max, rand=random.random):
    """Seconds to wait after the ``failures``-th failure in a row of one POST: FIRST_RETRY
    doubling each time, at most ``retry_max``, times a jitter factor in [0.5, 1)."""
    wait = min(retry_max, FIRST_RETRY * (2 ** min(failures - 1, 30)))
    return wait * (0.5 + rand() / 2)
