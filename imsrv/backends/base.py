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

    def delete_user(self, user, old_hash, ts):
        """Atomically, if ``user`` is live and its pw_hash is still ``old_hash``: mark the row
        deleted at ``ts`` (pw_hash, name and text cleared; the name stays taken), delete the
        user's tokens, friendships (both directions), friend requests (sent and received),
        blocks (theirs and of them), group memberships and inbox entries (the messages stay
        in the other inboxes).  Each group the user owned passes to its oldest remaining
        admin, else its oldest remaining member (earliest joined, then name), whose member
        row gets the role 'owner'; an emptied group keeps no members (and its owner).
        -> {"friends": [former friends], "groups": {group: new owner or None},
        "tokens": number deleted}, or None (nothing changed)."""
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

    # ------------------------------------------------------------------ groups
    # A member's role is "owner", "admin" or "member": the owner's row says "owner" and
    # get_group's "owner" names it (they change together).  muted_until (a member) and
    # muted_all (a group: everyone but its owner and admins): 0 not muted, -1 forever,
    # else ms since the epoch (muted while now < it).  dissolved: 0, or when the group was
    # dissolved; its member rows stay (the former members may still read it).
    def create_group(self, group, name, owner, members, ts):
        """Create a group; ``owner`` (the "owner" role) and ``members`` (the "member" role;
        the owner may be listed too, duplicates are one) join at ts.  DuplicateKey if the
        group id exists (nothing changed)."""
        raise NotImplementedError

    def get_group(self, group):
        """-> {"group", "name", "owner", "created"} or None."""
        raise NotImplementedError

    def group_info(self, group):
        """-> {"group", "name", "owner", "created", "notice" ("" if never set), "muted_all",
        "dissolved", "size" (number of member rows)} or None."""
        raise NotImplementedError

    def add_members(self, group, users, ts):
        """Add users not yet members (role "member").  -> list of the ones actually added,
        in the order given."""
        raise NotImplementedError

    def invite_members(self, group, users, ts, max_members=None):
        """add_members, atomically against concurrent invites of the same group: if the group
        would have more than ``max_members`` members (None: no cap) with the new ones, add
        nobody and return None.  -> list of the users added (in the order given; [] when all
        were members, or there is no such group)."""
        raise NotImplementedError

    def remove_member(self, group, user, roles=None):
        """Delete ``user``'s member row (only if its role is one of ``roles``, when given).
        -> True if a row was deleted."""
        raise NotImplementedError

    def is_member(self, group, user):
        raise NotImplementedError

    def get_members(self, group, users):
        """-> {user: {"role", "muted_until", "joined"}} for those of ``users`` who are
        members of ``group``."""
        raise NotImplementedError

    def list_members(self, group):
        """Member names, sorted."""
        raise NotImplementedError

    def list_member_details(self, group):
        """[{"user", "role", "muted_until"}] of every member, sorted by user name."""
        raise NotImplementedError

    def set_member_role(self, group, user, role):
        """Set a member's role ("admin" or "member"); never the owner's row.  -> True if it
        changed (False: not a member, the owner, or already that role)."""
        raise NotImplementedError

    def mute_member(self, group, user, until, roles):
        """Set a member's muted_until to ``until``, only if its role is one of ``roles``.
        -> True if it changed (False: not a member, another role, or already so)."""
        raise NotImplementedError

    def set_muted_all(self, group, until):
        """Set the group's muted_all.  -> True if it changed."""
        raise NotImplementedError

    def update_group(self, group, name=None, notice=None):
        """Set the name and/or the notice (None: leave as is)."""
        raise NotImplementedError

    def transfer_group(self, group, old_owner, new_owner):
        """Atomically, if ``old_owner`` owns the group, it is not dissolved and
        ``new_owner`` (another user) is a member: ``new_owner`` becomes the owner (role
        "owner") and ``old_owner`` an admin.  -> True if done (False: nothing changed)."""
        raise NotImplementedError

    def dissolve_group(self, group, owner, ts):
        """Mark the group dissolved at ``ts`` if ``owner`` owns it and it is not dissolved
        yet (member rows stay).  -> True if done."""
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
             "recipients": [user, ...],   # every inbox that gets a copy, sender included
                                          # when the sender keeps a copy; no duplicates
             # protocol v1.1 (absent = None):
             "kind": None | "recall" | "edit" | "reaction" | "group_event",
             "ref": int | None,           # the mid a recall / edit / reaction is about
             "reply_to": int | None, "mentions": [str] | None,   # a send's
             "reaction": (emoji, on)}     # a reaction's (on: bool), only for those

        Each item's state change is written in the same transaction, in batch order: a
        recall sets ``recalled`` = its ts on message ``ref``; an edit sets ``edited`` = its
        ts and ``edited_body`` = its body; a reaction on adds the reactions row (mid, emoji,
        sender) unless there is one (its ts stays the first), off deletes it.

        Items are applied in list order, so per-inbox seqs follow the batch order.  Every
        message is stored with its sender's seq (0 when the sender is not a recipient), so
        an item with a cmid is its own dedup record (sender, cmid) -> (mid, sender's seq or
        0, ts), stored in the same transaction and kept as long as the message is.  Seqs
        come from the durable per-user counter (highest seq per user), so they are gapless
        and never repeat, even across crashes: either the whole batch is stored or nothing
        is.

        -> list (same order) of {"mid": int, "ts": int, "seqs": {user: seq}}.
        Raises DuplicateKey (and stores nothing) when an item's (sender, cmid) is already
        stored or is an earlier item's in the batch; StoreError (and stores nothing) on any
        other failure.
        """
        raise NotImplementedError

    def get_dedup(self, sender, cmid, settled=False):
        """-> {"mid", "seq", "ts"} of the message ``sender`` stored with ``cmid`` (there is at
        most one: store_messages refuses a second), or None.  ``seq`` is the sender's inbox
        seq of it, 0 when the sender is not a recipient.  A record lives as long as its
        message: there is no expiry.  ``settled``: if a transaction that writes this record
        is still open (a COMMIT in flight on another connection), wait for it to end, so
        that None really means "not stored" (bounded by the engine's lock wait timeout:
        StoreError)."""
        raise NotImplementedError

    def get_dedups(self, keys):
        """Batch form of get_dedup: keys = [(sender, cmid), ...] ->
        {(sender, cmid): {"mid", "seq", "ts"}} for the keys that have a record."""
        raise NotImplementedError

    def relations(self, pairs):
        """For pairs = [(a, b), ...] -> {(a, b): (are_friends, blocked_either)}, one round trip
        per chunk instead of two queries per pair (the forwarder checks a whole batch)."""
        raise NotImplementedError

    def head(self, user):
        """Highest seq of user's inbox, 0 if empty."""
        raise NotImplementedError

    def head_and_oldest(self, user):
        """-> (head, oldest): ``head(user)`` and the lowest seq still in user's inbox (0 when
        it is empty), in one round trip (sync)."""
        raise NotImplementedError

    def held_messages(self, keys):
        """The send path's lookup of the messages a batch refers to (a recall / edit /
        reaction's ``ref``, a send's ``reply_to``): keys = [(user, mid), ...] ->
        {(user, mid): {"mid", "from", "to", "group", "conv", "ts", "kind", "recalled",
        "edited"}} for the keys whose message exists AND is in that user's inbox (others
        are left out).  A constant number of round trips per chunk of keys."""
        raise NotImplementedError

    def group_states(self, groups):
        """The send path's lookup of the groups a batch sends to, one round trip per chunk
        of groups -> {group: {"owner": str, "muted_all": int, "dissolved": int,
        "members": {user: (role, muted_until)}, "list": [user, ...] (sorted)}} for those
        that exist.  ``role`` is "owner" for groups_.owner whatever its row says, else the
        row's (admin, member); muted_until / muted_all: 0 no, -1 forever, else ms."""
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
        mid < before_mid (no bound if None), newest (highest mid) first: ordinary messages
        and group_event entries (recall, edit and reaction entries are left out), each
        record with its message's current state: ``"recalled"`` and ``"edited"`` (ts or 0),
        ``"edited_body"`` (JSON text or None) and ``"reactions"`` ({emoji: [user, ...]} in
        the order they reacted; None when none, or when recalled)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ search index
    # One document per searchable message: an opaque string of space-separated ASCII
    # tokens made by the core (imsrv/core/search_text.py); SQL: imsrv/backends/sql_search.py.
    def search_position(self):
        """The indexer's stored position (see search_apply), 0 before its first batch."""
        raise NotImplementedError

    def search_sources(self, after=None, limit=None, mids=None):
        """What the indexer reads of messages: up to ``limit`` with mid > ``after`` in mid
        order, or (``mids`` given) those of ``mids`` that exist, in mid order; each
        {"mid", "conv", "kind", "ref", "body", "edited_body", "recalled"} (bodies as JSON
        text, edited_body None unless edited)."""
        raise NotImplementedError

    def search_apply(self, docs, drop, position):
        """In one transaction: store ``docs`` ({mid: document}, replacing a mid's document),
        delete the documents of the mids in ``drop`` (those absent are ignored), and store
        ``position`` as the indexer's position."""
        raise NotImplementedError

    def inbox_group_convs(self, user):
        """The group conversation keys ("g:...") that ``user`` has inbox entries in."""
        raise NotImplementedError

    def search(self, user, tokens, scope, conv=None, before=None, limit=20):
        """Up to ``limit`` message records of ``user``'s inbox whose document holds every
        token of ``tokens`` and at least one of ``scope``, of ordinary messages (kind NULL)
        not recalled, in conversation ``conv`` (if given), with mid < ``before`` (if
        given), newest (highest mid) first; fewer than ``limit`` only when there are no
        more.  The records are history's (its current state:
        recalled, edited, edited_body, reactions); the caller checks the query against
        each one's latest body."""
        raise NotImplementedError

    # ------------------------------------------------------------------ retention
    def purge_messages(self, cutoff, limit):
        """One retention batch, in one transaction: the longest run of the lowest mids
        whose ts < ``cutoff`` (stopping at the first that is not: mids follow time), of at
        most ``limit`` messages (and about 10 inbox rows per message of ``limit``; at least
        one message), deleted with their inbox rows, reactions and search documents.
        Counters are untouched: seqs are never reused.  -> {"messages": number deleted,
        "inbox": inbox rows deleted, "last_mid": the highest mid deleted or None}."""
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
