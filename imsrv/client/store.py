"""Data layer of the client SDK: the local store of one (user, device).

It holds what a client must not forget across reconnects and restarts of its process:

* the inbox **cursor**: the highest inbox seq delivered to the application (sync resumes
  after it, and anything at or below it is a duplicate);
* the **received messages** (a local cache, for scrollback without the server): every
  inbox entry; a recall, edit or reaction entry is also applied to the store's copy of
  the message it is about (:func:`imsrv.client.entries.apply_change`), and
  :meth:`BaseStore.messages` lists messages in their current state without those change
  entries, as the server's ``history`` does;
* the **outbox**: sends, recalls, edits and reactions not acked yet, with their cmids, in
  the order they were made (resent with the same cmid after a reconnect, so the server
  stores each once);
* small key/value **meta** data (last gateway, ...).

Two engines with one API: :class:`MemoryStore` (lives as long as the object) and
:class:`SQLiteStore` (a file; survives the process).  One store (file) can hold several
(user, device) accounts: :meth:`bind` picks the one the other methods act on.
:func:`open_store` turns ``None`` / ``":memory:"`` / a path / a store into a store.
SQLiteStore lives in :mod:`imsrv.client.store_sqlite` (importable from here too).

Durability: SQLiteStore commits each change before returning, in WAL mode with
``synchronous=NORMAL`` by default: safe against a crash of the process (the guarantee the
SDK relies on); pass ``synchronous="FULL"`` to also survive a power loss, at the cost of
an fsync per delivered message.
"""
import os
import time

from .. import jsonlib
from .entries import apply_change, is_change


def _dumps(obj):
    return jsonlib.dumps(obj).decode("utf-8")


def _loads(text):
    return jsonlib.loads(text)


def conversation_of(msg, me):
    """-> ("group", gid) or ("user", peer) for a message as seen by ``me``."""
    if msg.get("group") is not None:
        return "group", msg["group"]
    sender = msg.get("from")
    return "user", (msg.get("to") if sender == me else sender)


class OutboxEntry:
    """One unacked request of the outbox.  ``op``: ``send``, or ``recall`` / ``edit`` /
    ``react`` (protocol v1.1); ``to`` / ``group``: the conversation (for a change: the
    message's, when the local store knew it, else both None); ``body``: the message's
    (send), the new one (edit), None otherwise; ``extra``: the op's other fields (send:
    reply_to?, mentions?; recall / edit: mid; react: mid, emoji, on).  ``id`` orders the
    outbox; ``hold_until`` (monotonic seconds, memory only) delays a resend after
    ``rate_limited``/``unavailable``; ``size`` caches the request frame's size (memory
    only, filled by the client)."""

    __slots__ = ("id", "cmid", "to", "group", "body", "created", "hold_until", "size", "op", "extra")

    def __init__(self, id, cmid, to, group, body, created, op="send", extra=None):
        self.id = id
        self.cmid = cmid
        self.to = to
        self.group = group
        self.body = body
        self.created = created
        self.hold_until = 0.0
        self.size = None
        self.op = op
        self.extra = extra or {}

    def fields(self):
        """The request's fields (without op/id)."""
        out = {}
        if self.op in ("send", "edit"):
            out["body"] = self.body
        out["cmid"] = self.cmid
        if self.op == "send":
            if self.group is not None:
                out["group"] = self.group
            else:
                out["to"] = self.to
        out.update(self.extra)
        return out

    def __repr__(self):
        dest = f"group={self.group!r}" if self.group is not None else f"to={self.to!r}"
        about = f" mid={self.extra.get('mid')}" if self.op != "send" else ""
        return f"<OutboxEntry #{self.id} {self.op}{about} cmid={self.cmid!r} {dest}>"


class StoreError(Exception):
    pass


class BaseStore:
    """The store API.  Call :meth:`bind` first."""

    user = None
    device = None

    def bind(self, user, device):
        raise NotImplementedError

    def _require_bound(self):
        if self.user is None:
            raise StoreError("store not bound to a (user, device): call bind() (Client.login does)")

    # cursor and received messages
    def cursor(self):
        raise NotImplementedError

    def set_cursor(self, seq):
        raise NotImplementedError

    def delivered(self, msg):
        """Keep inbox entry ``msg`` and move the cursor to its seq, atomically; a recall,
        edit or reaction entry is also applied to the kept copy of the message its
        ``ref`` names (when there is one), in the same transaction."""
        raise NotImplementedError

    def messages(self, user=None, group=None, before_seq=None, limit=50):
        """Received messages (and group events) of one conversation (or all), newest
        first, each in its current state; recall, edit and reaction entries are not
        listed."""
        raise NotImplementedError

    def message(self, mid):
        """The received message ``mid`` in its current state, or None if not kept."""
        raise NotImplementedError

    # outbox
    def outbox(self):
        """-> [OutboxEntry] oldest first."""
        raise NotImplementedError

    def outbox_add(self, cmid, to, group, body, op="send", extra=None):
        """Append a request to the outbox -> its OutboxEntry (see there for the fields)."""
        raise NotImplementedError

    def outbox_remove(self, entry_id):
        raise NotImplementedError

    # meta
    def get_meta(self, key, default=None):
        raise NotImplementedError

    def set_meta(self, key, value):
        raise NotImplementedError

    def close(self):
        pass


class _Account:
    def __init__(self):
        self.cursor = 0
        self.messages = {}   # seq -> msg
        self.mids = {}       # mid -> seq, of the messages that are not change entries
        self.outbox = {}     # id -> OutboxEntry
        self.meta = {}


class MemoryStore(BaseStore):
    """Everything in memory: survives reconnects (and a new Client given the same store
    object), not the process.  Keeps the last ``max_messages`` received messages."""

    def __init__(self, max_messages=10000):
        self.max_messages = max_messages
        self._accounts = {}
        self._acc = None
        self._next_id = 1
        self.path = ":memory:"

    def bind(self, user, device):
        self.user, self.device = user, device
        self._acc = self._accounts.setdefault((user, device), _Account())

    def cursor(self):
        self._require_bound()
        return self._acc.cursor

    def set_cursor(self, seq):
        self._require_bound()
        self._acc.cursor = int(seq)

    def delivered(self, msg):
        self._require_bound()
        acc = self._acc
        messages = acc.messages
        messages[msg["seq"]] = dict(msg)
        if is_change(msg):
            seq = acc.mids.get(msg.get("ref"))
            if seq is not None and seq in messages:
                messages[seq] = apply_change(messages[seq], msg)
        elif msg.get("mid") is not None:
            acc.mids[msg["mid"]] = msg["seq"]
        if msg["seq"] > acc.cursor:
            acc.cursor = msg["seq"]
        while len(messages) > self.max_messages:
            old = messages.pop(next(iter(messages)))  # inserted in seq order
            if acc.mids.get(old.get("mid")) == old.get("seq"):
                del acc.mids[old["mid"]]

    def messages(self, user=None, group=None, before_seq=None, limit=50):
        self._require_bound()
        out = []
        for seq in sorted(self._acc.messages, reverse=True):
            if before_seq is not None and seq >= before_seq:
                continue
            m = self._acc.messages[seq]
            if is_change(m):
                continue
            kind, key = conversation_of(m, self.user)
            if group is not None and (kind != "group" or key != group):
                continue
            if user is not None and (kind != "user" or key != user):
                continue
            out.append(dict(m))
            if len(out) >= limit:
                break
        return out

    def message(self, mid):
        self._require_bound()
        seq = self._acc.mids.get(mid)
        msg = self._acc.messages.get(seq) if seq is not None else None
        return dict(msg) if msg is not None else None

    def outbox(self):
        self._require_bound()
        return [self._acc.outbox[i] for i in sorted(self._acc.outbox)]

    def outbox_add(self, cmid, to, group, body, op="send", extra=None):
        self._require_bound()
        _dumps(body)  # same failure as the SQLite store for a body that is not JSON
        _dumps(extra)
        entry = OutboxEntry(self._next_id, cmid, to, group, body, int(time.time() * 1000), op, dict(extra or {}))
        self._next_id += 1
        self._acc.outbox[entry.id] = entry
        return entry

    def outbox_remove(self, entry_id):
        self._require_bound()
        self._acc.outbox.pop(entry_id, None)

    def get_meta(self, key, default=None):
        self._require_bound()
        return self._acc.meta.get(key, default)

    def set_meta(self, key, value):
        self._require_bound()
        self._acc.meta[key] = value


from .store_sqlite import SQLiteStore  # noqa: E402  (it builds on BaseStore above)


def open_store(spec=None, **kwargs):
    """None or ":memory:" -> MemoryStore; a path -> SQLiteStore; a store -> itself."""
    if spec is None or spec == ":memory:":
        return MemoryStore()
    if isinstance(spec, BaseStore):
        return spec
    if isinstance(spec, (str, bytes, os.PathLike)):
        return SQLiteStore(spec, **kwargs)
    raise TypeError(f"store must be None, ':memory:', a path or a store object, not {spec!r}")
