"""The durable-store interface every storage engine implements (SQLite, MySQL).

Engines are chosen by URL (see :func:`imsrv.backends.open_store`).  All methods are
blocking; each one is atomic on its own (one transaction).  Timestamps are integer
milliseconds since the Unix epoch.  User names are already validated and lower-cased by
the core; the store never validates input, it only keeps it.

Conversation keys (``conv``) are computed by the core and stored opaquely:
``"u:<a>:<b>"`` with a < b for a 1:1 conversation, ``"g:<group>"`` for a group.

A message *record* returned by the inbox/history methods is a dict::

    {"seq": int, "mid": int, "from": str, "to": str | None, "group": str | None,
     "body": str (the JSON text of the body, as stored), "ts": int, "cmid": str | None}

(``seq`` is the seq of that message in the inbox the record was read from.)
"""
import time


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


class Store:
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
        """-> {"user", "pw_hash", "name", "text", "created", "deleted"} or None.  ``deleted``
        is 0, or the time the account was deleted (its row stays: the name stays taken)."""
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

    def delete_user(self, user, old_hash, ts):
        """Atomically, if ``user`` is live and its pw_hash is still ``old_hash``: mark the row
        deleted at ``ts`` (pw_hash, name and text cleared; the name stays taken), delete the
        user's tokens, friendships (both directions), friend requests (sent and received),
        blocks (theirs and of them), group memberships and inbox entries (the messages stay
        in the other inboxes).  Each group the user owned passes to its oldest remaining
        member (earliest joined, then name); an emptied group keeps no members.
        -> {"friends": [former friends], "groups": {group: new owner or None},
        "tokens": number deleted}, or None (nothing changed)."""
        raise NotImplementedError

    def set_profile(self, user, name=None, text=None):
        """Update the display name and/or profile text (None = leave as is)."""
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
        """[{"user", "name"}] sorted by user name."""
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

    # ------------------------------------------------------------------ groups
    def create_group(self, group, name, owner, members, ts):
        """Create a group; ``members`` (a list that includes the owner) join at ts."""
        raise NotImplementedError

    def get_group(self, group):
        """-> {"group", "name", "owner", "created"} or None."""
        raise NotImplementedError

    def add_members(self, group, users, ts):
        """Add users not yet members.  -> list of the ones actually added."""
        raise NotImplementedError

    def remove_member(self, group, user):
        """-> True if user was a member."""
        raise NotImplementedError

    def is_member(self, group, user):
        raise NotImplementedError

    def list_members(self, group):
        """Member names, sorted."""
        raise NotImplementedError

    def list_groups(self, user):
        """[{"group", "name"}] of the groups ``user`` is in, sorted by group id."""
        raise NotImplementedError

    # ------------------------------------------------------------------ messages and inboxes
    def store_messages(self, batch, deadline=None):
        """Store a batch of new messages in ONE transaction and give every recipient the next
        seq of their inbox.  ``deadline`` (a time.monotonic() value, optional): when it has
        passed at COMMIT time the transaction is rolled back and DeadlinePassed raised.

        ``batch`` is a list of dicts::

            {"sender": str, "to": str | None, "group": str | None, "conv": str,
             "body": str (JSON text), "ts": int, "cmid": str | None,
             "recipients": [user, ...]}   # every inbox that gets a copy, sender included
                                          # when the sender keeps a copy; no duplicates

        Items are applied in list order, so per-inbox seqs follow the batch order.  For each
        item with a cmid, the dedup record (sender, cmid) -> (mid, sender's seq or 0, ts) is
        written in the same transaction.  Seqs come from the durable per-user counter
        (highest seq per user), so they are gapless and never repeat, even across crashes:
        either the whole batch is stored or nothing is.

        -> list (same order) of {"mid": int, "ts": int, "seqs": {user: seq}}.
        Raises StoreError (and stores nothing) on failure.
        """
        raise NotImplementedError

    def get_dedup(self, sender, cmid, settled=False):
        """-> {"mid", "seq", "ts"} of the first message ``sender`` sent with ``cmid``, or None.
        ``settled``: if a transaction that writes this record is still open (a COMMIT in
        flight on another connection), wait for it to end, so that None really means
        "not stored" (bounded by the engine's lock wait timeout: StoreError)."""
        raise NotImplementedError

    def get_dedups(self, keys):
        """Batch form of get_dedup: keys = [(sender, cmid), ...] ->
        {(sender, cmid): {"mid", "seq", "ts"}} for the keys that have a record."""
        raise NotImplementedError

    def relations(self, pairs):
        """For pairs = [(a, b), ...] -> {(a, b): (are_friends, blocked_either)}, one round trip
        per chunk instead of two queries per pair (the forwarder checks a whole batch)."""
        raise NotImplementedError

    def purge_dedup(self, before_ts):
        """Delete dedup records older than before_ts.  -> number deleted."""
        raise NotImplementedError

    def head(self, user):
        """Highest seq of user's inbox, 0 if empty."""
        raise NotImplementedError

    def head_if_token(self, user, token_hash):
        """``head(user)``, read in the same statement as a check that the token with
        ``token_hash`` still exists -> the head, or None if the token is gone (one round
        trip for the gateway's auth, which reads both after attaching the session)."""
        raise NotImplementedError

    def inbox_since(self, user, since, limit):
        """Up to ``limit`` message records of user's inbox with seq > since, in seq order."""
        raise NotImplementedError

    def history(self, user, conv, before_mid, limit):
        """Up to ``limit`` records of user's inbox in conversation ``conv`` with
        mid < before_mid (no bound if None), newest (highest mid) first."""
        raise NotImplementedError
