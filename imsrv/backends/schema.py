"""The versioned schema of the durable store.

``MIGRATIONS`` is an ordered list; version 1 is the whole initial schema.  A later change
appends a migration (never edits an applied one).  Each migration is rendered for a
:class:`~imsrv.backends.sql_dialect.Dialect` and applied in its own transaction together
with the row that records it in ``schema_version``, so :func:`migrate` is idempotent and a crash
leaves the database at the previous version.  (SQLite DDL is transactional; MySQL commits
DDL implicitly, which is why every statement is also written ``IF NOT EXISTS``.)

Tables, and the queries each index serves (every query of the Store interface uses one):

- ``users(user PK, pw_hash, name, text, created)``
- ``user_seq(user PK, last_seq)``: the highest inbox seq handed out per user, the durable
  counter seqs come from.  Kept apart from ``users`` so that any inbox (``system``, a
  user created by another process a moment ago) gets a counter on its first message.
- ``tokens(token_hash PK, user, device, expires)``; index user (logout everywhere),
  index expires (purge_tokens)
- ``friend_requests(frm, to_user, message, ts)`` PK (frm, to_user); index
  (to_user, ts, frm) (list_requests, oldest first)
- ``friends(user, friend, ts)`` PK (user, friend), both directions stored
- ``blocks(user, blocked, ts)`` PK (user, blocked)
- ``groups_(grp PK, name, owner, created)`` (``groups`` is reserved in MySQL 8)
- ``group_members(grp, user, joined)`` PK (grp, user); index (user, grp) (list_groups)
- ``messages(mid auto-increment PK, sender, to_user, grp, conv, body, ts, cmid,
  sender_seq)``; UNIQUE index ``messages_dedup`` (sender, cmid) (get_dedup, get_dedups;
  a second send with a stored (sender, cmid) fails with DuplicateKey)
- ``inbox(user, seq, mid, conv)`` PK (user, seq) (inbox_since); index (user, conv, mid)
  (history, newest first)

Version 2 (account deletion): ``users.deleted`` (0, or when the account was deleted: the
row stays so the name stays taken); index ``blocks_blocked`` (blocked, user) and index
``groups_owner`` (owner), so delete_user finds the blocks of a user and the groups they own
without a scan.

Version 3 (the send-dedup record folded into the message row): ``messages.sender_seq``
(the sender's own inbox seq of the message, 0 when the sender is not a recipient) and the
unique index ``messages_dedup`` replace version 1's table ``dedup(sender, cmid, mid, seq,
ts)`` (PK (sender, cmid), index ts), which is dropped: a cmid now stays deduplicated as
long as its message is stored.  sender_seq is filled from the dedup record where one is
left, else from the sender's inbox row of the message.  A (sender, cmid) stored twice
(sent again after version 1's record had expired) keeps its cmid on its newest message
only; the older ones get cmid NULL (NULLs never collide in a unique index).

Version 4 (protocol v1.1): ``messages`` gains ``kind`` (NULL for an ordinary message;
recall, edit, reaction, group_event), ``ref`` (the mid a kind is about), ``reply_to``,
``mentions`` (JSON list), and the message's current state: ``recalled`` and ``edited``
(ts or 0) and ``edited_body``; tables ``reactions(mid, emoji, user, ts)`` and
``conversations(user, conv, peer, grp, last_mid, last_ts, unread, mentioned, read_seq,
muted_until)`` (PK (user, conv), no index on activity: see the migration; filled from the inboxes already
stored, everything in them read); ``groups_`` gains ``notice``,
``muted_all``, ``dissolved``; ``group_members`` gains ``role`` (owner, admin, member; the
owner's row is set from ``groups_.owner``) and ``muted_until``; ``users.avatar``,
``friends.remark``.

Version 5 (search and retention): the search documents, one per searchable message
(imsrv/core/search_text.py says what a document holds): in SQLite the FTS5 table
``search_fts(doc)`` whose rowid is the mid (``ascii`` tokenizer, ``detail=none``,
``columnsize=0``), in MySQL ``search_docs(mid PK, doc)`` and the inverted index
``search_post(token, mid)`` PK (token, mid) (search: posting lists walked newest first,
probed by key; imsrv/backends/mysql_search.py);
``search_state(name PK, value)``: ``indexed``, the background indexer's position (the mid
up to which it has looked at every message); index ``conversations_conv`` (conv, user):
the users who have entries in a conversation, for the retention purge, which deletes
their inbox rows of it.

Version 6 (hooks): ``hook_queue(id SERIAL, hook, n, payload)``, index (hook, id): the
embedded server's durable after_send / offline queue, oldest first per hook (rows of ``n``
events or notification candidates, JSON text ``payload``; imsrv/backends/sql_hooks.py),
written in the transaction of the send batch they are about and deleted once delivered.
The distributed deployment queues in Redis streams instead (the table stays empty there).

Version 7 (admin bans): ``users.banned_until`` (0 not banned, -1 for ever, else ms since
the epoch: banned while now < it; a ban that ran out needs no clean-up) and
``users.ban_reason`` (what a refused login is told).  No index: a ban is read with its
users row (the login's token insert, admin_users), never searched for.

Version 8 (the group event outbox): ``group_event_queue(id SERIAL, grp, actor, recipients,
bodies, ts)``: the ``group_event`` entries of one group change (JSON lists: the recipients,
the event bodies), written in the change's transaction (imsrv/backends/sql_groups.py) and
deleted once posted into the inboxes (imsrv/core/group_events.py); rows left by a failed
post are posted again, oldest first (read by primary key: no other index).

Version 9 (reaction order): ``reactions.entry``, the mid of the reaction entry that added
the row; history lists the users of an emoji by it (then ts, for rows of before it).
"""
import time

from .schema_steps import AddColumn, AddIndex, Migration, Sql, Table, _table_exists


def _search_documents(dialect):
    """Version 5's search documents: an FTS5 table (rowid = mid) in SQLite; documents and
    an inverted index of plain tables in MySQL (see imsrv/backends/mysql_search.py)."""
    if dialect.name == "sqlite":
        return ["CREATE VIRTUAL TABLE IF NOT EXISTS search_fts USING fts5("
                "doc, tokenize = 'ascii', detail = none, columnsize = 0)"]
    return (Table("search_docs", ["mid {INT} NOT NULL", "doc {BODY} NOT NULL"], primary_key=("mid",)).render(dialect)
            + Table("search_post", ["token {INT} NOT NULL", "mid {INT} NOT NULL"],
                    primary_key=("token", "mid")).render(dialect))


def _fill_conversations(dialect):
    """Migration 4's rows of ``conversations`` for the inbox rows already stored."""
    insert = "INSERT IGNORE INTO" if dialect.insert_ignore_prefix else "INSERT OR IGNORE INTO"
    return [f"{insert} conversations (user, conv, peer, grp, last_mid, last_ts, read_seq)"
            " SELECT t.user, t.conv, CASE WHEN m.grp IS NOT NULL THEN NULL WHEN m.sender <> t.user"
            " THEN m.sender ELSE COALESCE(m.to_user, m.sender) END, m.grp, t.last_mid, m.ts, t.last_seq"
            " FROM (SELECT user, conv, MAX(mid) AS last_mid, MAX(seq) AS last_seq FROM inbox"
            " GROUP BY user, conv) t JOIN messages m ON m.mid = t.last_mid"]


VERSION_TABLE = Table("schema_version", [
    "version {INT} NOT NULL",
    "applied {INT} NOT NULL",
], primary_key=("version",))


MIGRATIONS = [
    Migration(1, "initial schema", [
        Table("users", [
            "user {USER} NOT NULL",
            "pw_hash {TEXT} NOT NULL",
            "name {TEXT}",
            "text {TEXT} NOT NULL",
            "created {INT} NOT NULL",
        ], primary_key=("user",)),
        Table("user_seq", [
            "user {USER} NOT NULL",
            "last_seq {INT} NOT NULL",
        ], primary_key=("user",)),
        Table("tokens", [
            "token_hash {HASH} NOT NULL",
            "user {USER} NOT NULL",
            "device {SHORT} NOT NULL",
            "expires {INT} NOT NULL",
        ], primary_key=("token_hash",), indexes={
            "tokens_user": ("user",),
            "tokens_expires": ("expires",),
        }),
        Table("friend_requests", [
            "frm {USER} NOT NULL",
            "to_user {USER} NOT NULL",
            "message {TEXT}",
            "ts {INT} NOT NULL",
        ], primary_key=("frm", "to_user"), indexes={
            "friend_requests_to": ("to_user", "ts", "frm"),
        }),
        Table("friends", [
            "user {USER} NOT NULL",
            "friend {USER} NOT NULL",
            "ts {INT} NOT NULL",
        ], primary_key=("user", "friend")),
        Table("blocks", [
            "user {USER} NOT NULL",
            "blocked {USER} NOT NULL",
            "ts {INT} NOT NULL",
        ], primary_key=("user", "blocked")),
        Table("groups_", [
            "grp {GROUP} NOT NULL",
            "name {TEXT}",
            "owner {USER} NOT NULL",
            "created {INT} NOT NULL",
        ], primary_key=("grp",)),
        Table("group_members", [
            "grp {GROUP} NOT NULL",
            "user {USER} NOT NULL",
            "joined {INT} NOT NULL",
        ], primary_key=("grp", "user"), indexes={
            "group_members_user": ("user", "grp"),
        }),
        Table("messages", [
            "mid {SERIAL}",
            "sender {USER} NOT NULL",
            "to_user {USER}",
            "grp {GROUP}",
            "conv {CONV} NOT NULL",
            "body {BODY} NOT NULL",
            "ts {INT} NOT NULL",
            "cmid {CMID}",
        ]),
        Table("inbox", [
            "user {USER} NOT NULL",
            "seq {INT} NOT NULL",
            "mid {INT} NOT NULL",
            "conv {CONV} NOT NULL",
        ], primary_key=("user", "seq"), indexes={
            "inbox_conv": ("user", "conv", "mid"),
        }),
        Table("dedup", [
            "sender {USER} NOT NULL",
            "cmid {CMID} NOT NULL",
            "mid {INT} NOT NULL",
            "seq {INT} NOT NULL",
            "ts {INT} NOT NULL",
        ], primary_key=("sender", "cmid"), indexes={
            "dedup_ts": ("ts",),
        }),
    ]),
    Migration(2, "account deletion: users.deleted; indexes for blocks of and groups owned by a user", [
        AddColumn("users", "deleted {INT} NOT NULL DEFAULT 0"),
        AddIndex("blocks", "blocks_blocked", ("blocked", "user")),
        AddIndex("groups_", "groups_owner", ("owner",)),
    ]),
    Migration(3, "send dedup in the message row: messages.sender_seq, unique index"
                 " messages_dedup (sender, cmid), table dedup dropped", [
        AddColumn("messages", "sender_seq {INT} NOT NULL DEFAULT 0"),
        # the seq of a message's dedup record (a primary-key probe per message)...
        Sql("UPDATE messages SET sender_seq = COALESCE((SELECT d.seq FROM dedup d"
            " WHERE d.sender = messages.sender AND d.cmid = messages.cmid"
            " AND d.mid = messages.mid), 0) WHERE cmid IS NOT NULL", if_table="dedup"),
        # ... else the sender's own inbox row of it (a probe of index inbox_conv); none
        # (the sender is not a recipient, or deleted their account): 0
        Sql("UPDATE messages SET sender_seq = COALESCE((SELECT i.seq FROM inbox i"
            " WHERE i.user = messages.sender AND i.conv = messages.conv"
            " AND i.mid = messages.mid), 0) WHERE sender_seq = 0"),
        # a (sender, cmid) stored twice keeps its cmid on the newest message only.  MySQL
        # cannot UPDATE a table it reads in a subquery, only a derived table of it that is
        # materialised first (DISTINCT: never merged into the UPDATE)
        Sql("UPDATE messages SET cmid = NULL WHERE mid IN (SELECT mid FROM ("
            "SELECT DISTINCT m.mid FROM messages m JOIN ("
            "SELECT sender, cmid, MAX(mid) AS newest FROM messages WHERE cmid IS NOT NULL"
            " GROUP BY sender, cmid HAVING COUNT(*) > 1) d"
            " ON m.sender = d.sender AND m.cmid = d.cmid AND m.mid < d.newest) AS older)"),
        AddIndex("messages", "messages_dedup", ("sender", "cmid"), unique=True),
        "DROP TABLE IF EXISTS dedup",
    ]),
    Migration(4, "protocol v1.1: entry kinds and message state, conversations, group roles,"
                 " avatars and remarks", [
        # inbox entries with a kind (NULL: an ordinary message): recall, edit, reaction,
        # group_event; ref = the mid they are about; reply_to / mentions (JSON list) of a send
        AddColumn("messages", "kind {SHORT}"),
        AddColumn("messages", "ref {INT}"),
        AddColumn("messages", "reply_to {INT}"),
        AddColumn("messages", "mentions {TEXT}"),
        # the current state of a message, kept on its own row: recalled (ts or 0), edited
        # (ts of the latest edit or 0) and that edit's body (history shows it)
        AddColumn("messages", "recalled {INT} NOT NULL DEFAULT 0"),
        AddColumn("messages", "edited {INT} NOT NULL DEFAULT 0"),
        AddColumn("messages", "edited_body {BODY}"),
        Table("reactions", [
            "mid {INT} NOT NULL",
            "emoji {SHORT} NOT NULL",
            "user {USER} NOT NULL",
            "ts {INT} NOT NULL",
        ], primary_key=("mid", "emoji", "user")),
        # one row per user and conversation, written in the same transaction as the inbox:
        # peer = the other user (1:1) or NULL; grp = the group or NULL; last_mid / last_ts
        # = the latest entry (activity order); unread = ordinary messages from others above
        # read_seq; mentioned = one of them mentions the user or "all"; muted_until: 0 no,
        # -1 forever, else ms.  No index on (user, last_ts): every message raises two rows,
        # and keeping that index cost ~4.5 us of store CPU per send (random 1:1 pairs,
        # batches of 600: 27 us with it, 22.5 without); the listing reads the user's rows
        # by the primary key and sorts them (a user has hundreds of conversations, not
        # millions)
        Table("conversations", [
            "user {USER} NOT NULL",
            "conv {CONV} NOT NULL",
            "peer {USER}",
            "grp {GROUP}",
            "last_mid {INT} NOT NULL DEFAULT 0",
            "last_ts {INT} NOT NULL DEFAULT 0",
            "unread {INT} NOT NULL DEFAULT 0",
            "mentioned {INT} NOT NULL DEFAULT 0",
            "read_seq {INT} NOT NULL DEFAULT 0",
            "muted_until {INT} NOT NULL DEFAULT 0",
        ], primary_key=("user", "conv")),
        # the conversations of the inboxes written before version 4: one row per (user,
        # conv), its latest entry as last, everything up to it read (an upgrade makes
        # nothing unread); a row already there is left as is (a run again)
        _fill_conversations,
        # groups with roles (imsrv/backends/sql_groups.py): notice (NULL: none), muted_all
        # (everyone but the owner and admins) and a member's muted_until: 0 not muted, -1
        # forever, else ms since the epoch, muted while now < it (group_mute writes 0, -1 or
        # a future ms: an until already past unmutes); dissolved: 0 or when (the member rows
        # stay: former members keep reading); a member's role (owner, admin, member)
        AddColumn("groups_", "notice {TEXT}"),
        AddColumn("groups_", "muted_all {INT} NOT NULL DEFAULT 0"),
        AddColumn("groups_", "dissolved {INT} NOT NULL DEFAULT 0"),
        AddColumn("group_members", "role {SHORT} NOT NULL DEFAULT 'member'"),
        AddColumn("group_members", "muted_until {INT} NOT NULL DEFAULT 0"),
        Sql("UPDATE group_members SET role = 'owner' WHERE EXISTS (SELECT 1 FROM groups_ g"
            " WHERE g.grp = group_members.grp AND g.owner = group_members.user)"),
        # profiles and contacts
        AddColumn("users", "avatar {TEXT}"),
        AddColumn("friends", "remark {TEXT}"),
    ]),
    Migration(5, "search index and retention: search documents, search_state, index"
                 " conversations_conv", [
        _search_documents,
        Table("search_state", [
            "name {SHORT} NOT NULL",
            "value {INT} NOT NULL",
        ], primary_key=("name",)),
        # the users of a conversation (the retention purge deletes their inbox rows of it)
        AddIndex("conversations", "conversations_conv", ("conv", "user")),
    ]),
    Migration(6, "hook queue: hook_queue", [
        # the embedded server's after_send / offline queue (imsrv/backends/sql_hooks.py):
        # rows written in the send batch's transaction, deleted once POSTed
        Table("hook_queue", [
            "id {SERIAL}",
            "hook {SHORT} NOT NULL",
            "n {INT} NOT NULL",
            "payload {BODY} NOT NULL",
        ], indexes={"hook_queue_hook": ("hook", "id")}),
    ]),
    Migration(7, "admin bans: users.banned_until, users.ban_reason", [
        # imsrv/backends/sql_accounts.py: ban_user / unban_user, and the login's token
        # insert, which a ban in effect refuses
        AddColumn("users", "banned_until {INT} NOT NULL DEFAULT 0"),
        AddColumn("users", "ban_reason {TEXT}"),
    ]),
    Migration(8, "group event outbox: group_event_queue", [
        # imsrv/backends/sql_groups.py: one row per group change, written in the change's
        # transaction (recipients, bodies: JSON lists); imsrv/core/group_events.py posts it
        # and deletes it, or re-posts it later (redeliver), oldest first by id
        Table("group_event_queue", [
            "id {SERIAL}",
            "grp {GROUP} NOT NULL",
            "actor {USER} NOT NULL",
            "recipients {BODY} NOT NULL",
            "bodies {BODY} NOT NULL",
            "ts {INT} NOT NULL",
        ]),
    ]),
    Migration(9, "reaction order: reactions.entry", [
        # the mid of the reaction entry that added the row: history lists an emoji's users
        # in this order (a ts can be the same for two reactions of one millisecond; rows of
        # before this version have 0 and keep the order of their ts)
        AddColumn("reactions", "entry {INT} NOT NULL DEFAULT 0"),
    ]),
]

LATEST_VERSION = MIGRATIONS[-1].version


def _max_version(cur, dialect):
    if not _table_exists(cur, dialect, VERSION_TABLE.name):
        return 0
    cur.execute("SELECT MAX(version) FROM schema_version")
    row = cur.fetchone()
    return (row[0] if row else None) or 0


def current_version(store):
    """The highest applied migration, 0 for an empty database."""
    with store.autocommit("schema_version") as cur:
        return _max_version(cur, store.dialect)


def migrate(store, migrations=None):
    """Apply the migrations the database lacks, each in its own transaction.

    Safe to run concurrently from several processes on SQLite (BEGIN IMMEDIATE serialises
    them and the version is re-read under the lock).  Raises StoreError if the database was
    migrated by a newer imsrv than this one.  -> the version the database is now at."""
    from .base import StoreError

    migrations = MIGRATIONS if migrations is None else migrations
    latest = migrations[-1].version
    dialect = store.dialect
    with store.transaction("migrate: schema_version table") as cur:
        for stmt in VERSION_TABLE.render(dialect):
            cur.execute(stmt)
        version = _max_version(cur, dialect)
    if version > latest:
        raise StoreError(f"{store.url}: database schema version {version} is newer than "
                         f"this imsrv supports ({latest}); upgrade imsrv")
    for m in migrations:
        if m.version <= version:
            continue
        with store.transaction(f"migrate to version {m.version} ({m.description})") as cur:
            version = _max_version(cur, dialect)  # another process may have done it
            if m.version <= version:
                continue
            m.apply(cur, dialect)
            cur.execute(dialect.render(
                "INSERT INTO schema_version (version, applied) VALUES (?, ?)"),
                (m.version, int(time.time() * 1000)))
            version = m.version
    return version
