"""Protocol v1.1 retention, on both deployments: with ``[retention] days`` set, a background
purge (embedded: in the server; distributed: in the API daemon, under a Redis lease)
deletes the messages older than the cutoff in batches of ``purge_batch`` while senders
keep sending: no send fails, nothing newer than the cutoff is lost, the old ones leave
sync, history and search, and seqs are never reused.

``days`` is a few seconds here (fractions of a day are allowed) and ``purge_interval`` a
tenth of a second, so the purge runs many times while the senders send.

Contract: PROTOCOL.md v1.1 "Profiles, remarks, search, retention (API)".
"""
import threading
import time

import pytest

from harness.procs import wait_until
from harness.users import befriend, new_user

pytestmark = pytest.mark.timeout(120)

RETENTION_S = 2.0
CONFIG = {
    "retention": {"days": RETENTION_S / 86400, "purge_interval": 0.1, "purge_batch": 10},
    "limits": {"user_send_rate": 1000.0, "user_send_burst": 1000},
}
SEND_FOR = 3 * RETENTION_S   # seconds the senders send (the duration of what is tested)
SLACK_MS = 50                # clock granularity between the test and the server


def found(user, q):
    return [m["mid"] for m in user.call("search", q=q, limit=100)["msgs"]]


def test_retention_purge_while_sending(config_server):
    srv = config_server(CONFIG, name="retention")
    a, b = new_user(srv, "ra"), new_user(srv, "rb")
    befriend(a, b)
    with a.connect() as ga:
        old = [ga.send_msg({"text": f"ancient {i}"}, to=b.name) for i in range(20)]
    old_mids = {x["mid"] for x in old}
    wait_until(lambda: found(b, "ancient"), timeout=20, what="the old messages indexed")

    acks, errors = {a.name: [], b.name: []}, []

    def sender(user, to):
        try:
            with user.connect(device="sender") as g:
                end = time.monotonic() + SEND_FOR
                i = 0
                while time.monotonic() < end:
                    rep = g.send_msg({"text": f"fresh {user.name} {i}"}, to=to.name, expect=None)
                    if rep.get("op") != "ack":
                        errors.append(rep)
                        return
                    acks[user.name].append(rep)
                    i += 1
                    time.sleep(0.01)   # pacing: ~100 sends/s each, well within one sync page
        except Exception as exc:      # reported below, in the test's thread
            errors.append(repr(exc))

    threads = [threading.Thread(target=sender, args=(a, b)), threading.Thread(target=sender, args=(b, a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert srv.count("event=retention_purge") > 0, "the purge never ran while they sent"

    # one snapshot of b's inbox: everything acked since (now - retention) is in it
    read_start = time.time() * 1000
    with b.connect() as gb:
        rep = gb.sync(0, 1000)
    assert not rep["more"]
    have = {m["mid"]: m for m in rep["msgs"]}
    recent = [x for xs in acks.values() for x in xs if x["ts"] >= read_start - RETENTION_S * 1000 + SLACK_MS]
    assert recent, "nothing was sent within the retention window"
    missing = [x for x in recent if x["mid"] not in have]
    assert missing == [], f"lost {len(missing)} messages newer than the cutoff"
    seqs = [m["seq"] for m in rep["msgs"]]
    assert seqs == sorted(set(seqs)) and (not seqs or seqs[-1] == rep["head"])
    if "oldest" in rep:   # read apart from the entries: the purge may move it meanwhile
        assert 1 <= rep["oldest"] <= rep["head"], rep["oldest"]
    # some of what was sent while the purge ran is gone by now, and the old ones
    sent = acks[a.name]
    wait_until(lambda: not old_mids & {m["mid"] for m in b.call("history", **{"with": a.name}, limit=200)["msgs"]},
               timeout=20, what="the old messages purged from history")
    with b.connect() as gb:
        msgs, head = gb.sync_all(0)
    assert not old_mids & {m["mid"] for m in msgs}
    assert sent[0]["mid"] not in {m["mid"] for m in msgs}
    wait_until(lambda: found(b, "ancient") == [], timeout=20, what="the old messages gone from search")
    b.call("conversations")      # still answered, its rows' older entries purged
    # seqs are never reused: the next message gets the next seq of each inbox
    with a.connect() as ga:
        nxt = ga.send_msg({"text": "after the purge"}, to=b.name)
    with b.connect() as gb:
        after = gb.sync(head)
    assert [m["seq"] for m in after["msgs"]] == [head + 1] and after["msgs"][0]["mid"] == nxt["mid"]
    a_seqs = [x["seq"] for x in old + acks[a.name]] + [nxt["seq"]]
    assert a_seqs == sorted(set(a_seqs))
    wait_until(lambda: found(b, "purge") == [nxt["mid"]], timeout=20, what="the new message indexed")
