"""The messages part of the durable-store interface (:class:`~imsrv.backends.base.Store`
inherits it): the send batch, dedup lookups, inboxes, history, the message state of
protocol v1.1's entries, the search index and the retention purge.  Conventions (message
records, conversation keys, timestamps, atomicity): imsrv.backends.base; the errors
named here (DuplicateKey, DeadlinePassed, StoreError) are defined there."""


class MessagesInterface:
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
