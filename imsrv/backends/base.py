"""The durable-store interface every storage engine implements (SQLite, MySQL).

Engines are chosen by URL (see :func:`imsrv.backends.open_store`).  All methods are
blocking; each one is atomic on its own (one transaction).  Timestamps are integer
milliseconds since the Unix epoch.  User names are already validated and lower-cased by
the core; the store never validates input, it only keeps it.

Conversation keys (``conv``) are computed by the core and stored opaquely:
``"u:<a>:<b>"`` with a < b for a 1:1 conversation, ``"g:<group>"`` for a group.

A message *record* returned by the inbox/history methods is a dict::

    {"seq": int, "mid": int, "from": str, "to": str | None, "group": str | None,
     "body": str (the JSON text of the body, as stored), "ts": int, "cmid": str | None,
     "kind": None | "recall" | "edit" | "reaction" | "group_event", "ref": int | None,
     "reply_to": int | None, "mentions": str (JSON text of a list) | None}

(``seq`` is the seq of that message in the inbox the record was read from; ``kind`` None
is an ordinary message.)
"""
import time

from .base_groups import GroupsInterface
from .base_messages import MessagesInterface


class StoreError(Exception):
    """The backend failed (disk, connection lost, locked too long).  Maps to ``unavailable``."""


class OutcomeUnknown(StoreError):
    """A write whose outcome is unknown: it may or may not be durable.  The one name for it
    on every layer: the store raises it when COMMIT failed at the connection level (lost,
    timed out); a forwarder when it cannot tell whether sends are stored (their entries
    stay pending and are looked at again); a gateway sets it as the result of a send that
    got no answer in time (it closes the connection, and the client resends with its cmid,
    which stores the send once).  Never answered `unavailable` ("nothing was changed"):
    someone must find out later (a dedup lookup) what happened."""


class DeadlinePassed(StoreError):
    """store_messages reached its deadline before COMMIT and rolled back: nothing stored."""


def check_deadline(deadline, what):
    """Raise DeadlinePassed when ``deadline`` (time.monotonic(); None = none) is behind us.
    Called right before COMMIT, so a batch whose senders were (about to be) answered
    `unavailable` is not stored after all."""
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlinePassed(f"{what}: too late to commit (the senders were answered"
                             " unavailable); rolled back, nothing stored")


class DuplicateKey(StoreError):
    """An insert hit a unique key (user name taken, already a member...)."""


def unavailable_errors(*backends):
    """The exception classes that mean "a backend is down, retry later" (answered
    `unavailable`, not `internal`) for these backends: each declares its own in
    ``unavailable_errors`` (a store: StoreError; the Redis hub: redis-py's errors)."""
    errors = []
    for backend in backends:
        for exc in getattr(backend, "unavailable_errors", ()):
            if exc not in errors:
                errors.append(exc)
    return tuple(errors)


class Store(GroupsInterface, MessagesInterface):
    """The whole interface: users, tokens, contacts and conversations here; groups in
    :mod:`imsrv.backends.base_groups`; messages, inboxes, search and retention in
    :mod:`imsrv.backends.base_messages`."""
    url = None
    #: exceptions of this backend that mean it is down (see unavailable_errors)
    unavailable_errors = (StoreError,)

    # ------------------------------------------------------------------ lifecycle
    def migrate(self):
        """Create the schema or bring it up to the current version.  Idempotent."""
        raise NotImplementedError

    def schema_version(self):
        raise NotImplementedError

    def close(self):
        raise NotImplementedError

    # ------------------------------------------------------------------ users
    def create_user(self, user, pw_hash, name, ts):
        """Insert a user.  Raises DuplicateKey if the name is taken."""
        raise NotImplementedError

    def get_user(self, user):
        """-> {"user", "pw_hash", "name", "text", "created", "deleted", "avatar"} or None.
        ``deleted`` is 0, or the time the account was deleted (its row stays: the name stays
        taken); ``avatar`` the avatar URL or None."""
        raise NotImplementedError

    def existing_users(self, users):
        """-> set of the names in ``users`` that exist and are not deleted."""
        raise NotImplementedError

    def set_password(self, user, old_hash, new_hash, keep_token_hash=None):
        """Atomically: if ``user`` is live and its pw_hash is still ``old_hash``, store
        ``new_hash`` and delete every token of the user except ``keep_token_hash``.
        -> number of tokens deleted, or None (wrong old_hash, no such user, deleted: nothing
        changed)."""
        raise NotImplementedError

    def delete_user(self, user, old_hash, ts, group_events=None):
        """Atomically, if ``user`` is live and its pw_hash is still ``old_hash``: mark the row
        deleted at ``ts`` (pw_hash, name and text cleared; the name stays taken), delete the
        user's tokens, friendships (both directions), friend requests (sent and received),
        blocks (theirs and of them), group memberships and inbox entries (the messages stay
        in the other inboxes).  Each group the user owned passes to its oldest remaining
        admin, else its oldest remaining member (earliest joined, then name), whose member
        row gets the role 'owner'; an emptied group keeps no members (and its owner).
        -> {"friends": [former friends], "groups": {group: new owner or None},
        "tokens": number deleted}, or None (nothing changed).  ``group_events``: None, or
        fn(group, new owner or None) -> the event bodies to tell the members that remain in
        each live (not dissolved) group the user was in; their group_event_queue rows are
        written in the same transaction (base_groups.py) and listed as "events" (the rows,
        those with somebody left to tell)."""
        raise NotImplementedError

    def set_profile(self, user, name=None, text=None, avatar=None):
        """Update the display name, profile text and/or avatar URL (None = leave as is;
        avatar "" = none: get_user's avatar None)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ tokens
    # Only a hash of each token is stored (token_hash: hex sha256 of the token).
    def add_token(self, token_hash, user, device, expires, pw_hash=None):
        """Insert a token.  With ``pw_hash``: only if ``user`` is live and that is still its
        password hash (a login racing set_password / delete_user gets no token).
        -> True if inserted."""
        raise NotImplementedError

    def get_token(self, token_hash):
        """-> {"user", "device", "expires"} or None."""
        raise NotImplementedError

    def delete_token(self, token_hash):
        """-> True if a token was deleted."""
        raise NotImplementedError

    def purge_tokens(self, now):
        """Delete tokens with expires <= now.  -> number deleted."""
        raise NotImplementedError

    # ------------------------------------------------------------------ admin (bans, listings)
    # A ban is ``banned_until`` on the users row: 0 none, -1 for ever, else ms; it is in
    # effect at ``now`` when it is -1 or > now (imsrv/backends/sql_accounts.py).
    def add_login_token(self, token_hash, user, device, expires, pw_hash, now):
        """A login's token: add_token guarded by ``pw_hash`` (see add_token) and by the ban:
        inserted only if ``user`` is live, ``pw_hash`` is still its password hash and no ban
        is in effect at ``now``, in one statement (a ban_user in flight is waited for, or
        deletes the token it finds).  -> True if inserted."""
        raise NotImplementedError

    def get_ban(self, user, now):
        """-> {"until": -1 or ms, "reason": str} of the ban of ``user`` in effect at ``now``,
        or None (not banned, the ban ran out, no such user)."""
        raise NotImplementedError

    def ban_user(self, user, until, reason):
        """Atomically, if ``user`` is live: set its ban (``until`` -1 or ms, ``reason``)
        and delete every token of the user.  -> number of tokens deleted, or None (no such
        user, or deleted: nothing changed)."""
        raise NotImplementedError

    def unban_user(self, user, now):
        """Clear the ban of ``user``.  -> True if a ban in effect at ``now`` was lifted,
        False if there was none, None if there is no such live user."""
        raise NotImplementedError

    def list_users(self, prefix="", after=None, limit=50, now=0):
        """Live (not deleted) users whose names start with ``prefix`` ("" every user) and
        come after ``after`` (a name, exclusive; None: from the first), by name, at most
        ``limit``: [{"user", "name", "banned_until", "ban_reason"}] (``banned_until`` 0
        and ``ban_reason`` None unless a ban is in effect at ``now``).  A range of the
        primary key, not a scan."""
        raise NotImplementedError

    def count_users(self):
        """-> the number of live (not deleted) accounts."""
        raise NotImplementedError

    def count_messages_since(self, ts):
        """-> how many messages (every stored entry: sends, notify, recall, edit, reaction,
        group_event) have ``ts`` >= ``ts``: found by a search of the primary key (mids grow
        with ts), not by a scan of the table (see sql_accounts.py for how it counts)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ friend requests
    def put_request(self, frm, to, message, ts):
        """Insert or replace the pending request frm -> to."""
        raise NotImplementedError

    def get_request(self, frm, to):
        """-> {"from", "to", "message", "ts"} or None."""
        raise NotImplementedError

    def delete_request(self, frm, to):
        """-> True if a pending request frm -> to existed."""
        raise NotImplementedError

    def list_requests(self, to):
        """Pending requests to ``to``, oldest first: [{"from", "message", "ts"}]."""
        raise NotImplementedError

    # ------------------------------------------------------------------ friends (symmetric)
    def make_friends(self, a, b, ts):
        """Atomically: delete pending requests a->b and b->a, record the friendship both ways.
        Idempotent if they are already friends."""
        raise NotImplementedError

    def remove_friends(self, a, b):
        """-> True if they were friends."""
        raise NotImplementedError

    def are_friends(self, a, b):
        raise NotImplementedError

    def list_friends(self, user):
        """[{"user", "name", "remark"}] sorted by user name (remark: ``user``'s own, or None)."""
        raise NotImplementedError

    def set_remark(self, user, friend, remark):
        """Set ``user``'s private remark on ``friend`` (None clears it); kept with the
        friendship (friend_remove forgets it).  -> False if they are not friends (nothing
        changed)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ blocks (directed)
    def add_block(self, a, b, ts):
        """a blocks b.  Also deletes pending requests between them both ways.  Idempotent."""
        raise NotImplementedError

    def remove_block(self, a, b):
        """-> True if a had blocked b."""
        raise NotImplementedError

    def blocked_either(self, a, b):
        """True if a blocked b or b blocked a."""
        raise NotImplementedError

    def list_blocked(self, user):
        """Names ``user`` has blocked, sorted."""
        raise NotImplementedError

    # ------------------------------------------------------------------ conversations
    # One row per user and conversation (conv key as above), kept by store_messages in the
    # batch's own transaction (imsrv/backends/sql_conversations.py): an ordinary message
    # (kind None) or a group_event entry makes it the conversation's ``last`` (activity
    # time ``ts`` = the entry's ts); an ordinary message from someone else adds 1 to the
    # recipient's ``unread`` and, if its mentions name them or "all", sets ``mentioned``;
    # recall, edit and reaction entries change no row.  A conversation *row* is a dict::
    #
    #     {"conv": str, "with": str | None (1:1: the other user, the user themself for
    #      notes to self), "group": str | None, "ts": int (activity), "unread": int,
    #      "mentioned": bool, "read_seq": int, "muted_until": int (0 no, -1 forever, else
    #      ms), "last": message record (seq = the user's) with the message's current state
    #      "recalled", "edited" (ts or 0) and "edited_body", or None (no longer stored)}
    def list_conversations(self, user, before_ts=None, limit=50):
        """``user``'s conversation rows with at least one entry, most recent activity first
        (ts, then conv, descending), only those with ts < ``before_ts`` if given.  At most
        ``limit`` rows, except that a page never ends inside a run of rows of equal ts:
        the run's rows go to the next page, unless the run fills the whole page, which then
        holds the whole run (more than ``limit`` rows)."""
        raise NotImplementedError

    def get_conversation(self, user, conv):
        """-> the conversation row of (user, conv), or None (muted but never written to:
        a row without ``last``, ts 0)."""
        raise NotImplementedError

    def mark_read(self, user, conv, seq, peer=None, grp=None):
        """Atomically move ``user``'s read position in ``conv`` forward to inbox seq
        ``seq`` and count ``unread`` / ``mentioned`` again over the inbox above it (no send
        batch of the user commits meanwhile).  ``peer`` / ``grp``: the row's peer or group,
        should it have to be created (an entry older than the table).
        -> None: no entry ``seq`` in the inbox (nothing changed);
        {"conv": the entry's conv, "mid": its mid, "moved": False}: the entry is in another
        conversation, or the position is already at or past ``seq`` (nothing changed);
        {"conv", "mid", "moved": True, "read_seq", "unread", "mentioned"}: moved."""
        raise NotImplementedError

    def set_muted(self, user, conv, peer, grp, until):
        """Set ``muted_until`` of (user, conv) to ``until`` (0, -1 or ms), creating the row
        (no ``last``: not listed until an entry arrives) if there is none."""
        raise NotImplementedError

    def muted_conversations(self, pairs, now):
        """-> the set of the (user, conv) ``pairs`` muted at ``now`` (ms): muted_until -1
        or > now.  Chunked lookups, not one per pair (the offline hook asks per batch)."""
        raise NotImplementedError

    def unread_totals(self, users):
        """-> {user: the sum of their conversations' unread} for every user in ``users``
        (0 for none)."""
        raise NotImplementedError
