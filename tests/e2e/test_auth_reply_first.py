"""The reply to `auth` is the first frame the server sends on a connection: no push
precedes it (PROTOCOL.md "Gateway ops"), however busy the user's friends are.

Found in a churn run of the distributed deployment (issue 9, defect 12): the session was
attached to the hub (and so reachable by pushes) before the reply was written, so a
`presence` push of a friend changing status could go out first.
"""
import threading

import pytest

from harness.users import new_user

pytestmark = pytest.mark.timeout(180)

USERS = 50        # users that reconnect over and over
FLIPPERS = 3      # online friends of every one of them, changing status all the time
ROUNDS = 8        # reconnects per user
THREADS = 10      # concurrent reconnecting clients


def _befriend_all(server, flippers, users):
    for f in flippers:  # one connection per flipper: within the per-connection burst
        with server.api() as c:
            for u in users:
                c.call("friend_request", token=f.token, to=u.name)
                c.call("friend_accept", token=u.token, user=f.name)


def test_auth_reply_is_the_first_frame_while_friends_change_status(server):
    flippers = [new_user(server, "flip") for _ in range(FLIPPERS)]
    users = [new_user(server, "churn") for _ in range(USERS)]
    _befriend_all(server, flippers, users)
    stop = threading.Event()
    flips = [0] * FLIPPERS
    errors = []

    def flip(i, user):
        try:
            with user.connect(device="flipper") as g:
                statuses = ("away", "online", "busy", "online")
                while not stop.is_set():
                    g.call("status", status=statuses[flips[i] % len(statuses)])
                    flips[i] += 1
                    g.take_pushes()  # the churning users' own presence: not kept
        except Exception as exc:  # reported by the main thread
            errors.append(f"flipper {user.name}: {exc!r}")

    bad = []      # (user, first frame) where the first frame was not the auth reply
    auths = [0]
    lock = threading.Lock()

    def churn(mine):
        try:
            for _ in range(ROUNDS):
                for u in mine:
                    with server.gateway() as g:
                        g.send_frame({"op": "auth", "id": "a1", "token": u.token, "device": "churn"})
                        first = g.read_frame(10)
                        with lock:
                            auths[0] += 1
                            if first.get("op") != "ok" or first.get("id") != "a1":
                                bad.append((u.name, first))
        except Exception as exc:
            errors.append(f"churn: {exc!r}")

    flippers_t = [threading.Thread(target=flip, args=(i, f), daemon=True) for i, f in enumerate(flippers)]
    for t in flippers_t:
        t.start()
    per = USERS // THREADS
    churners = [threading.Thread(target=churn, args=(users[k * per:(k + 1) * per],), daemon=True)
                for k in range(THREADS)]
    for t in churners:
        t.start()
    for t in churners:
        t.join(150)
    stop.set()
    for t in flippers_t:
        t.join(20)
    assert not errors, errors
    assert auths[0] == USERS * ROUNDS, auths
    assert sum(flips) > 0, "the friends never changed status: the test proved nothing"
    assert not bad, (f"{len(bad)} of {auths[0]} auths got another frame before their reply "
                     f"(status changes: {sum(flips)}), e.g. {bad[:3]!r}")
