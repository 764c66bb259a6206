"""`search` (the API op) and the background indexer that keeps its index.

What matches and how the index finds it: :mod:`imsrv.core.search_text`.  The store keeps
one document per searchable message (an ordinary message, not recalled, with a text) and
answers "the newest messages of this user's inbox whose documents hold these tokens"
(Store.search); :class:`Search` checks each candidate against the rule itself, so the
index may over-approximate but the reply is exact.

**Scope.**  With ``with`` or ``group`` the candidates are that conversation's (its
conversation token).  Without, the user's own messages: a 1:1 message carries a token for
each of its two users, a group message its group's conversation token, so the user's
scope is their participant token or the token of any group conversation they have
entries in (Store.inbox_group_convs).  Either way the store joins the user's inbox row of
each candidate (``inbox_conv``: (user, conv, mid)), which makes "in the user's inbox"
exact.

**Indexing is not on the send path.**  :class:`SearchIndexer` reads the messages stored
after its position in mid order, in batches, and writes their documents with its new
position in one transaction; its loop (imsrv/servers/maintenance.py) runs every
``INDEX_INTERVAL`` seconds, so a message is searchable about that long after its ack.
With a backlog it runs again soon, within the share of time the deployment gives it (a
burst of sends is indexed a little later rather than slowed down).
An ``edit`` entry re-indexes the message it edits from its latest body
(messages.edited_body), a ``recall`` entry drops its document (search also skips recalled
messages, so neither waits for the indexer to be exact).
"""
import time

from .. import logs
from ..protocol.errors import BadRequest
from .msgs import history_obj
from .policy import conv_key, group_conv
from .search_text import (conv_token, index_doc, matches, message_text_json, participant_token, query_terms,
                          query_tokens)

INDEX_INTERVAL = 0.25   # seconds between two indexer passes when it has caught up
INDEX_BATCH = 128       # messages read per pass (one transaction of documents; ~3 ms on the loop)
HOLE_TTL = 120.0        # seconds a missing mid is looked for again (see SearchIndexer)
MAX_GAP = 5000          # a longer run of missing mids is not an in-flight batch
MAX_HOLES = 50000
SYSTEM = "system"


class Search:
    def __init__(self, store, policy, messaging):
        self.store = store
        self.policy = policy
        self.messaging = messaging   # history's items and reply budget

    def handlers(self):
        """{op: fn(who, args)} of the protocol v1.1 ops this area answers (see App)."""
        return {"search": lambda who, args: self.search(who.user, args)}

    def search(self, user, args):
        """The `search` op -> {"msgs": [history items, newest first]}."""
        if "with" in args and "group" in args:
            raise BadRequest("at most one of the fields 'with' and 'group' may be given")
        query = query_terms(args["q"])
        if query is None:
            raise BadRequest("field 'q': no word to search for (letters, digits or CJK characters)")
        group, with_ = args.get("group"), args.get("with")
        if group is not None:
            self.policy.require_member(group, user)
            conv = group_conv(group)
            scope = [conv_token(conv)]
        elif with_ is not None:
            if with_ != SYSTEM and with_ != user:
                self.policy.require_exists(with_, deleted_ok=True)
            conv = conv_key(user, with_)
            scope = [conv_token(conv)]
        else:
            conv = None
            scope = [participant_token(user)] + [conv_token(c) for c in self.store.inbox_group_convs(user)]
        recs = self.find(user, query, scope, conv, args.get("before"), args.get("limit", 20))
        msgs = self.messaging._fit([history_obj(r) for r in recs])
        for m in msgs:
            del m["op"]
        return {"msgs": msgs}

    def find(self, user, query, scope, conv, before, limit):
        """Up to ``limit`` records of ``user``'s inbox that match ``query``, newest first:
        the store's candidates, a page at a time, checked against the rule."""
        tokens = query_tokens(query)
        page = limit + 10
        out = []
        while True:
            recs = self.store.search(user, tokens, scope, conv, before, page)
            for rec in recs:
                if matches(query, message_text_json(rec["edited_body"] if rec["edited"] else rec["body"])):
                    out.append(rec)
                    if len(out) == limit:
                        return out
            if len(recs) < page:
                return out
            before = recs[-1]["mid"]


class SearchIndexer:
    """Brings the search index up to date, a batch per :meth:`step`.

    ``position``: every message with a lower or equal mid has been looked at.  A pass reads
    up to ``batch`` messages above it (Store.search_sources) and writes their documents
    and the new position in one transaction (Store.search_apply).  In MySQL two send
    transactions may commit out of mid order, so a pass can see mid 12 before mid 11 is
    committed: missing mids below the highest one seen are *holes*, looked for again on
    every pass for ``hole_ttl`` seconds (a send transaction never stays open that long:
    its deadline is the send timeout) and given up after (a rolled-back batch's mids never
    come).  The position stored is the one below the lowest hole, so a restarted indexer
    looks at the holes again (documents are written idempotently).  ``clock``: monotonic
    seconds."""

    def __init__(self, store, batch=INDEX_BATCH, hole_ttl=HOLE_TTL, clock=time.monotonic):
        self.store = store
        self.batch = batch
        self.hole_ttl = hole_ttl
        self.clock = clock
        self.position = None    # read from the store at the first step
        self.stored = None      # the position the store has
        self.holes = {}         # mid -> when first missed

    def reset(self):
        """Forget the position and holes: the next step reads the position from the store
        (after a failure, or when another process has been indexing meanwhile)."""
        self.position = self.stored = None
        self.holes = {}

    def step(self):
        """One pass -> the number of messages read above the position (``batch``: there
        may be more)."""
        store = self.store
        if self.position is None:
            self.position = self.stored = store.search_position()
        now = self.clock()
        rows = store.search_sources(after=self.position, limit=self.batch)
        found = store.search_sources(mids=list(self.holes)) if self.holes else []
        for r in found:
            self.holes.pop(r["mid"], None)
        position = self._note_holes(rows, now)
        docs, drop, refs = {}, set(), set()
        for r in found + rows:
            if r["kind"] is None:
                if not r["recalled"]:
                    doc = self._doc(r)
                    if doc is not None:
                        docs[r["mid"]] = doc
            elif r["kind"] in ("edit", "recall") and r["ref"]:
                refs.add(r["ref"])
        if refs:
            seen = set()
            for r in store.search_sources(mids=refs):
                seen.add(r["mid"])
                doc = self._doc(r) if r["kind"] is None and not r["recalled"] else None
                if doc is None:
                    docs.pop(r["mid"], None)
                    drop.add(r["mid"])
                else:
                    docs[r["mid"]] = doc
            drop.update(refs - seen)
        for mid, since in list(self.holes.items()):
            if now - since > self.hole_ttl:
                del self.holes[mid]
        safe = min(self.holes) - 1 if self.holes else position
        if docs or drop or safe != self.stored:
            store.search_apply(docs, drop, safe)
            self.stored = safe
        self.position = position
        return len(rows)

    def _note_holes(self, rows, now):
        """Record the mids missing between the position and the rows read -> the new
        position (the highest mid read)."""
        expect = self.position + 1
        for r in rows:
            mid = r["mid"]
            if mid - expect > MAX_GAP:
                logs.info("search_index_gap", after=expect - 1, next=mid)
            else:
                for m in range(expect, mid):
                    if len(self.holes) < MAX_HOLES:
                        self.holes.setdefault(m, now)
            expect = mid + 1
        return expect - 1

    @staticmethod
    def _doc(r):
        body = r["edited_body"] if r["edited_body"] is not None else r["body"]
        return index_doc(message_text_json(body), r["conv"])
