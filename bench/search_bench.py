"""Search over a large store: fill it, index it, time typical queries (p50/p99 ms).

    .venv/bin/python bench/search_bench.py --engine sqlite                 # 1,000,000 messages
    .venv/bin/python bench/search_bench.py --engine mysql --url mysql://root@127.0.0.1:3306/imsrv_search_bench
    .venv/bin/python bench/search_bench.py --engine sqlite --messages 100000 --reuse

The store is filled with bulk INSERTs straight into ``messages``, ``inbox`` and
``user_seq`` (what store_messages would write, minus the per-batch work): ``--users``
users, each with ``--friends`` friends, ``--groups`` groups of ``--group-size`` members;
``--group-share`` of the messages go to a group, the rest 1:1.  Texts: ``--cjk-share`` of
them 4..24 CJK characters, the others 3..14 words, both drawn with a Zipf law (s = 1.1)
from a 20,000-word vocabulary / 3,000 characters, so a few words are in most messages and
most words in few.  Then the background indexer (imsrv.core.search.SearchIndexer) runs
until it has caught up (its rate is printed), and each query type runs ``--queries`` times
through the core's Search (what the `search` op does below its socket: the store query and
the check of each candidate) for random users:

- ``common``: one of the 5 most frequent words, no ``with``
- ``rare``: a word of frequency rank 5,000 to 20,000 of a text the user has, no ``with``
- ``two words``: two words of rank 10 to 300 of one text the user has, no ``with``
- ``cjk``: two or three adjacent characters of a CJK text the user has, no ``with``
- ``common, with``: a common word in one conversation with a friend
- ``common, group``: a common word in a group of the user's
- ``common, page 2``: the second page (``before`` = the last mid of the first)

``--reuse``: keep a store filled by an earlier run (same URL/path) and only query it.
"""
import argparse
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from imsrv.backends import open_store  # noqa: E402
from imsrv.core.search import Search, SearchIndexer  # noqa: E402

VOCAB = 20_000
CJK_CHARS = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
T0 = 1_700_000_000_000


def word(rank):
    """A made-up word of frequency rank ``rank`` (0 = the most frequent)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    n, out = rank + 1, []
    while n:
        n, r = divmod(n, 26)
        out.append(letters[r])
    return "w" + "".join(out) + "x"


def zipf_sampler(rng, n, s=1.1):
    weights = [1.0 / (k + 1) ** s for k in range(n)]
    total = sum(weights)
    cum, acc = [], 0.0
    for w in weights:
        acc += w / total
        cum.append(acc)
    import bisect

    def sample():
        return min(bisect.bisect_left(cum, rng.random()), n - 1)
    return sample


class World:
    def __init__(self, args, rng):
        self.users = [f"user{i:05d}" for i in range(args.users)]
        self.friends = {u: set() for u in self.users}
        for u in self.users:
            while len(self.friends[u]) < args.friends:
                v = rng.choice(self.users)
                if v != u:
                    self.friends[u].add(v)
                    self.friends[v].add(u)
        self.friends = {u: sorted(f) for u, f in self.friends.items()}
        self.groups = {f"grp{i:04d}": rng.sample(self.users, args.group_size) for i in range(args.groups)}
        self.groups_of = {}
        for g, members in self.groups.items():
            for m in members:
                self.groups_of.setdefault(m, []).append(g)


def fill(store, args, world, rng):
    words = zipf_sampler(rng, VOCAB)
    chars = zipf_sampler(rng, len(CJK_CHARS))
    d = store.dialect.render
    seqs = dict.fromkeys(world.users, 0)
    group_names = list(world.groups)
    mid = 0
    t = time.perf_counter()
    chunk = 10_000
    while mid < args.messages:
        msgs, inbox = [], []
        for _ in range(min(chunk, args.messages - mid)):
            mid += 1
            if rng.random() < args.cjk_share:
                text = "".join(CJK_CHARS[chars()] for _ in range(rng.randint(4, 24)))
            else:
                text = " ".join(word(words()) for _ in range(rng.randint(3, 14)))
            body = json.dumps({"text": text}, ensure_ascii=False)
            if rng.random() < args.group_share:
                g = rng.choice(group_names)
                members = world.groups[g]
                sender = rng.choice(members)
                to, grp, conv, recipients = None, g, f"g:{g}", members
            else:
                sender = rng.choice(world.users)
                to = rng.choice(world.friends[sender])
                a, b = sorted((sender, to))
                grp, conv, recipients = None, f"u:{a}:{b}", (sender, to)
            for u in recipients:
                seqs[u] += 1
                inbox.append((u, seqs[u], mid, conv))
            msgs.append((mid, sender, to, grp, conv, body, T0 + mid, seqs.get(sender, 0)))
        with store.transaction("bench fill") as cur:
            for part in _parts(msgs, 1000):
                cur.execute(d("INSERT INTO messages (mid, sender, to_user, grp, conv, body, ts, sender_seq) VALUES "
                              + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(part))),
                            [v for row in part for v in row])
            inbox.sort()
            for part in _parts(inbox, 2000):
                cur.execute(d("INSERT INTO inbox (user, seq, mid, conv) VALUES "
                              + ", ".join(["(?, ?, ?, ?)"] * len(part))), [v for row in part for v in row])
        print(f"\rfilled {mid:,} messages", end="", flush=True)
    with store.transaction("bench counters") as cur:
        cur.executemany(d("INSERT INTO user_seq (user, last_seq) VALUES (?, ?)"), sorted(seqs.items()))
    took = time.perf_counter() - t
    print(f"\rfilled {mid:,} messages, {sum(seqs.values()):,} inbox rows in {took:.0f} s")


def _parts(rows, n):
    for i in range(0, len(rows), n):
        yield rows[i:i + n]


def index(store):
    ix = SearchIndexer(store, batch=5000)
    t = time.perf_counter()
    n = total = 0
    while True:
        n = ix.step()
        total += n
        if n < ix.batch:
            break
        el = time.perf_counter() - t
        print(f"\rindexed {total:,} messages ({total / el:,.0f}/s)", end="", flush=True)
    took = time.perf_counter() - t
    print(f"\rindexed {total:,} messages in {took:.0f} s ({total / max(took, 1e-9):,.0f}/s)")


class _Policy:     # the bench's users and groups exist: no checks
    def require_exists(self, *a, **k):
        pass

    def require_member(self, *a):
        pass


class _Messaging:
    def _fit(self, msgs):
        return msgs


def user_texts(store, user):
    """The texts of (up to) 500 random messages in ``user``'s inbox."""
    with store.autocommit("bench texts") as cur:
        cur.execute(store.dialect.render("SELECT last_seq FROM user_seq WHERE user = ?"), (user,))
        head = cur.fetchone()[0]
        cur.execute(store.dialect.render(
            "SELECT m.body FROM inbox i JOIN messages m ON m.mid = i.mid WHERE i.user = ? AND i.seq > ?"
            " ORDER BY i.seq LIMIT 500"), (user, random.randrange(max(1, head - 500))))
        return [json.loads(r[0])["text"] for r in cur.fetchall()]


def pick(store, user, rng, kind):
    """A query of ``kind`` made from a text in ``user``'s inbox (None: no such text)."""
    texts = user_texts(store, user)
    cjk = [t for t in texts if "\u4e00" <= t[0] <= "\u9fff"]
    latin = [t.split() for t in texts if t not in cjk]
    if kind == "cjk":
        if not cjk:
            return None
        t = rng.choice(cjk)
        n = rng.choice((2, 3))
        i = rng.randrange(0, len(t) - n + 1)
        return t[i:i + n]
    ranked = [(w, _rank(w)) for ws in latin for w in ws]
    if kind == "rare":
        rare = [w for w, r in ranked if r >= 5000]
        return rng.choice(rare) if rare else None
    # two words of one message, of rank 10 to 300
    pairs = [ws for ws in latin if sum(10 <= _rank(w) < 300 for w in set(ws)) >= 2]
    if not pairs:
        return None
    ws = rng.choice(pairs)
    a, b = rng.sample(sorted({w for w in ws if 10 <= _rank(w) < 300}), 2)
    return f"{a} {b}"


def _rank(w):
    n = 0
    for ch in w[1:-1][::-1]:
        n = n * 26 + (ord(ch) - 97)
    return n - 1


def queries(store, args, world, rng):
    search = Search(store, _Policy(), _Messaging())
    kinds = ["common", "rare", "two words", "cjk", "common, with", "common, group", "common, page 2"]
    results = {k: [] for k in kinds}
    found = {k: 0 for k in kinds}
    for _ in range(args.queries):
        for kind in kinds:
            user = rng.choice(world.users)
            req = {}
            if kind.startswith("common"):
                req["q"] = word(rng.randrange(5))
            else:
                req["q"] = pick(store, user, rng, kind) or word(0)
            if kind == "common, with":
                req["with"] = rng.choice(world.friends[user])
            elif kind == "common, group":
                user = rng.choice(world.groups[rng.choice(list(world.groups))])
                req["group"] = rng.choice(world.groups_of[user])
            elif kind == "common, page 2":
                first = search.search(user, dict(req))["msgs"]
                if first:
                    req["before"] = first[-1]["mid"]
            t = time.perf_counter()
            out = search.search(user, req)["msgs"]
            results[kind].append((time.perf_counter() - t) * 1000)
            found[kind] += len(out)
    print()
    print("| query | p50 ms | p99 ms | max ms | results (mean) |")
    print("|---|---:|---:|---:|---:|")
    for kind in kinds:
        xs = sorted(results[kind])
        p = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
        print(f"| {kind} | {p(0.5):.1f} | {p(0.99):.1f} | {xs[-1]:.1f} | {found[kind] / len(xs):.1f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", choices=("sqlite", "mysql"), default="sqlite")
    ap.add_argument("--url", help="store URL (default: a file in a temporary directory / "
                                  "mysql://root@127.0.0.1:3306/imsrv_search_bench)")
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--friends", type=int, default=20)
    ap.add_argument("--groups", type=int, default=100)
    ap.add_argument("--group-size", type=int, default=10)
    ap.add_argument("--group-share", type=float, default=0.2)
    ap.add_argument("--cjk-share", type=float, default=0.1)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reuse", action="store_true", help="query a store filled by an earlier run")
    args = ap.parse_args(argv)
    url = args.url
    if url is None:
        url = (f"sqlite:///{tempfile.gettempdir()}/imsrv_search_bench.db" if args.engine == "sqlite"
               else "mysql://root@127.0.0.1:3306/imsrv_search_bench")
    rng = random.Random(args.seed)
    world = World(args, rng)
    if not args.reuse:
        if args.engine == "sqlite":
            path = url[len("sqlite:///"):]
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)
        else:
            import pymysql

            from imsrv.backends.mysql import MysqlStore, initdb
            admin = MysqlStore(url)
            conn = pymysql.connect(**admin._connect_args(database=False))
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{admin.database}`")
            conn.close()
            initdb(url)
    store = open_store(url)
    store.migrate()
    print(f"store {store.url}: {args.messages:,} messages, {args.users:,} users, {args.groups} groups"
          f" of {args.group_size}")
    if not args.reuse:
        fill(store, args, world, rng)
        index(store)
    queries(store, args, world, random.Random(args.seed + 1))
    store.close()


if __name__ == "__main__":
    main()
