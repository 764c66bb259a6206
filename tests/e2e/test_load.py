"""Load: 200 concurrent gateway connections exchanging messages; every message delivered
exactly once (push and inbox), on a dedicated server with policy.require_friends = false.

Contract: PROTOCOL.md "Contact rules" (require_friends) and "Delivery guarantees" 1, 3, 5.
"""

import threading
import time

import pytest

from harness.servers import running_server
from harness.users import PASSWORD, User, unique_name

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]

N_USERS = 200
PER_USER = 5


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    config = {"policy": {"require_friends": False}}
    with running_server("embedded", tmp_path_factory.mktemp("load"), config, name="load") as srv:
        yield srv


def make_users(srv, n, prefix):
    """Register and log in n users, pipelined over a few API connections."""
    names = [unique_name(prefix) for _ in range(n)]
    users = []
    chunk = 50
    for start in range(0, n, chunk):
        part = names[start:start + chunk]
        with srv.api(timeout=60) as c:
            for name in part:
                c.send_request("register", user=name, password=PASSWORD)
            for name in part:
                c.send_request("login", user=name, password=PASSWORD)
            regs = [c.read_frame(60) for _ in part]
            logins = [c.read_frame(60) for _ in part]
        assert all(r["op"] == "ok" for r in regs), [r for r in regs if r["op"] != "ok"][:3]
        assert all(r["op"] == "ok" for r in logins), [r for r in logins if r["op"] != "ok"][:3]
        users += [User(srv, name, PASSWORD, r["token"], r) for name, r in zip(part, logins)]
    return users


def test_require_friends_false_lets_strangers_talk(open_server):
    a, b = make_users(open_server, 2, "st")
    with a.connect() as ga, b.connect() as gb:
        ack = ga.send_msg("hi stranger", to=b.name)
        assert gb.wait_push("msg")["mid"] == ack["mid"]
        # a block still stops messages with require_friends = false
        b.call("block", user=a.name)
        ga.error("send", "forbidden", to=b.name, body="blocked")
        gb.error("send", "forbidden", to=a.name, body="blocked")


def test_200_connections_exactly_once(open_server):
    users = make_users(open_server, N_USERS, "ld")
    conns = [None] * N_USERS
    ready = threading.Barrier(N_USERS + 1, timeout=60)
    errors = []
    results = {}

    def worker(i):
        try:
            u = users[i]
            g = u.connect(timeout=40)
            conns[i] = g
            ready.wait()
            peer = users[(i + 1) % N_USERS].name
            ids = [g.send_request("send", to=peer, body={"from": i, "k": k}, cmid=f"{i}:{k}")
                   for k in range(PER_USER)]
            acks = [g.read_reply(rid, 40) for rid in ids]
            assert all(a["op"] == "ack" for a in acks), acks
            got = g.wait_pushes("msg", PER_USER, timeout=40)
            results[i] = (acks, got)
        except BaseException as exc:  # noqa: BLE001
            errors.append((i, exc))
            try:
                ready.abort()
            except Exception:
                pass

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(N_USERS)]
    t0 = time.monotonic()
    try:
        for t in threads:
            t.start()
        ready.wait()
        for t in threads:
            t.join(max(0.1, 90 - (time.monotonic() - t0)))
        assert not errors, f"{len(errors)} workers failed, first: {errors[0]!r}"
        assert len(results) == N_USERS
        mids_sent = {}
        for i, (acks, got) in results.items():
            ack_seqs = [a["seq"] for a in acks]
            assert ack_seqs == sorted(ack_seqs), (i, acks)
            # own sent + received entries share one gapless inbox
            assert sorted(ack_seqs + [p["seq"] for p in got]) == list(range(1, 2 * PER_USER + 1)), (i, acks, got)
            for a in acks:
                mids_sent[a["mid"]] = i
        assert len(mids_sent) == N_USERS * PER_USER
        # each user got exactly its predecessor's messages, once, in order
        for i, (_, got) in results.items():
            prev = (i - 1) % N_USERS
            assert [p["body"] for p in got] == [{"from": prev, "k": k} for k in range(PER_USER)], (i, got)
            assert [mids_sent[p["mid"]] for p in got] == [prev] * PER_USER
            seqs = [p["seq"] for p in got]
            assert seqs == sorted(seqs) and len(set(seqs)) == PER_USER
        # no duplicate pushes anywhere, and the inboxes hold exactly sent + received
        for i, g in enumerate(conns):
            g.sync_point()
            pushed = [p["mid"] for p in g.all_pushes if p["op"] == "msg"]
            assert len(pushed) == PER_USER, (i, pushed)
        for i in range(0, N_USERS, 10):  # spot-check inboxes
            msgs, head = conns[i].sync_all(0)
            assert head == 2 * PER_USER and [m["seq"] for m in msgs] == list(range(1, 2 * PER_USER + 1))
        assert time.monotonic() - t0 < 60, "load exchange took too long"
    finally:
        for g in conns:
            if g is not None:
                g.close()
