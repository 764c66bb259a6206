"""Reconnects, crashes and restarts: the application sees every message exactly once, in
seq order, whatever happens to the server, the connection or the client process.

The client process tests use ``server``, the rate and idle limit tests ``config_server``:
both deployments.  The others need an embedded server of their own (``server_factory``):
they SIGKILL, stop or restart its one process (crash, bye, token expiry), or advertise one
gateway through a proxy; the distributed counterparts of the server crashes are in
tests/dist.

No fixed sleep stands for an event: "nothing more arrives" is shown by a marker message
sent after the others (delivered in seq order, so last) or by the receiver's inbox head
(``sync()``), which counts every message the server stored for it.  The sleeps left are
durations under test (an idle timeout) or pacing, each commented."""
import sqlite3
import sys
import time
from pathlib import Path

import gevent
import pytest
from gevent import socket as gsocket
from gevent.server import StreamServer

from imsrv.client import ServerError
from imsrv.client.network import api_call

from .conftest import befriend
from harness.procs import LineProc, free_ports, wait_until
from harness.users import PASSWORD, unique_name

pytestmark = pytest.mark.timeout(90)

FAST = dict(backoff_base=0.05, backoff_max=0.5)


def collect_msgs(client):
    got = []
    client.on("message", got.append)
    return got


def check_stream(msgs, expected_by_sender):
    """seqs 1..n without gaps or repeats; each sender's bodies complete and in order."""
    seqs = [m["seq"] for m in msgs]
    assert seqs == list(range(1, len(msgs) + 1)), f"seqs not contiguous/unique: {seqs}"
    for sender, expected in expected_by_sender.items():
        texts = [m["body"]["text"] for m in msgs if m["from"] == sender]
        assert texts == expected, f"{sender}: got {len(texts)} of {len(expected)}; first diff at " \
            f"{next((i for i, (x, y) in enumerate(zip(texts, expected)) if x != y), min(len(texts), len(expected)))}"


def all_history(client, peer):
    msgs, before = [], None
    while True:
        page = client.history(user=peer, before=before, limit=200)
        msgs.extend(page)
        if len(page) < 200:
            return msgs
        before = page[-1]["mid"]


def test_server_sigkilled_and_restarted_mid_conversation(server_factory, make_client, tmp_path):
    srv = server_factory(name="crash")   # embedded only: SIGKILL of the one process (distributed: tests/dist)
    a = make_client(srv, store=str(tmp_path / "a.db"), **FAST)
    b = make_client(srv, store=str(tmp_path / "b.db"), **FAST)
    befriend(a, b)
    got_a, got_b = collect_msgs(a), collect_msgs(b)
    n = 150
    handles = []

    def talk(c, peer, prefix):
        for i in range(n):
            handles.append(c.send(peer, {"text": f"{prefix}{i}"}, wait=False))
            gevent.sleep(0.003)  # pacing, not a wait: spreads the sends over the crash

    talkers = [gevent.spawn(talk, a, b.user, "a"), gevent.spawn(talk, b, a.user, "b")]
    wait_until(lambda: len(got_b) >= 40, what="conversation under way")
    srv.kill()                      # SIGKILL with sends in flight; the talkers keep queueing
    wait_until(lambda: not a.online and not b.online, what="clients noticed the crash")
    wait_until(lambda: a.pending_sends() and b.pending_sends(), what="unacked sends on both sides")
    srv.start()                     # same ports, same data dir
    gevent.joinall(talkers, raise_error=True)
    acks = [h.get(30) for h in handles]
    assert len(acks) == 2 * n
    wait_until(lambda: len(got_a) >= 2 * n and len(got_b) >= 2 * n, timeout=30, what="every message at both ends")
    assert a.pending_sends() == [] and b.pending_sends() == []
    # anything extra (a message stored twice) has a lower seq than a marker sent now, so
    # it would be delivered before the marker
    end = a.send(b.user, {"text": "end"})
    wait_until(lambda: any(m["mid"] == end["mid"] for m in got_a) and any(m["mid"] == end["mid"] for m in got_b),
             what="the marker at both ends")
    expected = {a.user: [f"a{i}" for i in range(n)] + ["end"], b.user: [f"b{i}" for i in range(n)]}
    check_stream(got_a, expected)
    check_stream(got_b, expected)
    assert len(got_a) == len(got_b) == 2 * n + 1
    # and the server stored each message once
    texts = [m["body"]["text"] for m in all_history(a, b.user)]
    assert sorted(texts) == sorted(expected[a.user] + expected[b.user])
    assert srv.count("event=ready") == 2


def test_bye_retry_after_is_honoured(server_factory, make_client):
    # embedded only: SIGTERM of the one process, restarted on the same ports
    srv = server_factory({"limits": {"retry_after": 1.0, "shutdown_grace": 3.0}}, name="bye")
    a = make_client(srv, **FAST)
    log = []
    a.on("*", lambda ev: log.append((time.monotonic(), ev)))
    logins = srv.count(f"event=login user={a.user} ")
    srv.terminate()                  # graceful: every client gets bye shutdown + retry_after
    assert srv.wait(15) == 0
    srv.start()

    def back_online():
        bye = [i for i, (_, ev) in enumerate(log) if ev.type == "bye"]
        return bye and any(ev.type == "state" and ev["state"] == "online" for _, ev in log[bye[0]:])

    wait_until(back_online, timeout=20, what="back online after bye")
    byes = [(t, ev) for t, ev in log if ev.type == "bye"]
    assert len(byes) == 1 and byes[0][1]["reason"] == "shutdown"
    t_bye, retry_after = byes[0][0], byes[0][1]["retry_after"]
    assert retry_after >= 1
    attempts = [t for t, ev in log if ev.type == "state" and ev["state"] == "connecting" and t > t_bye]
    assert attempts, log
    assert attempts[0] - t_bye >= retry_after - 0.05, (attempts[0] - t_bye, retry_after)
    # it came back through a new login (login names the gateway)
    assert srv.count(f"event=login user={a.user} ") == logins + 1


def wait_expired(srv, token):
    """Wait until the server refuses ``token`` (its lifetime is up), asking the API with
    it directly (the client under test does not see these calls)."""
    wait_until(lambda: api_call(srv.api_address, "friends", raw=True, token=token).get("code") == "unauthorized",
             timeout=10, what="the token expired", interval=0.05)


def test_token_expiry_relogin(server_factory, make_client):
    srv = server_factory({"accounts": {"token_ttl": 1}}, name="ttl")   # embedded only: kill + restart
    a = make_client(srv, **FAST)
    b = make_client(srv, **FAST)
    befriend(a, b)
    got = collect_msgs(a)
    logins = lambda: srv.count(f"event=login user={a.user} ")  # noqa: E731
    before = logins()
    wait_expired(srv, a.token)
    assert a.friends()[0]["user"] == b.user   # API: unauthorized -> log in again -> retried
    assert logins() == before + 1
    wait_expired(srv, a.token)                # the new token expires too
    srv.kill()                               # the gateway session ends; the token is stale
    srv.start()
    wait_until(lambda: a.online and b.online, timeout=20, what="both back online")
    assert logins() >= before + 2            # the gateway refused the old token: new login
    b.send(a.user, {"text": "after expiry"})
    wait_until(lambda: got, what="message after expiry")
    assert got[0]["body"] == {"text": "after expiry"} and got[0]["seq"] == 1


def test_token_expiry_without_password_stops(server_factory, make_client):
    srv = server_factory({"accounts": {"token_ttl": 1}}, name="ttl2")   # embedded only: kill + restart
    a = make_client(srv, keep_password=False, **FAST)
    states = []
    a.on("state", states.append)
    wait_expired(srv, a.token)
    srv.kill()
    srv.start()
    wait_until(lambda: a.stopped, timeout=20, what="client gives up")
    err = a.stop_error()
    assert isinstance(err, ServerError) and err.code == "unauthorized"
    assert any(s["state"] == "auth_failed" for s in states)


class BlackholeProxy:
    """TCP proxy; freeze() makes the open connections silently drop everything (a dead
    network path that still looks open), new connections work."""

    def __init__(self):
        self.target = None
        self.accepted = 0
        self.conns = []
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = self.server.address[1]

    def _handle(self, sock, addr):
        self.accepted += 1
        up = gsocket.create_connection(self.target)
        state = {"frozen": False, "socks": (sock, up)}
        self.conns.append(state)
        g = gevent.spawn(self._pipe, up, sock, state)
        self._pipe(sock, up, state)
        g.join()

    def _pipe(self, src, dst, state):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not state["frozen"]:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in state["socks"]:
                try:
                    s.close()
                except OSError:
                    pass

    def freeze(self):
        for c in self.conns:
            c["frozen"] = True

    def stop(self):
        self.server.stop(timeout=1)
        for c in self.conns:
            for s in c["socks"]:
                s.close()


def test_dead_connection_detected_and_login_names_the_gateway(server_factory, make_client):
    proxy = BlackholeProxy()
    try:
        # embedded only: one gateway advertised through the proxy (the set has two)
        srv = server_factory({"server": {"advertise": f"127.0.0.1:{proxy.port}"}}, name="proxy")
        proxy.target = ("127.0.0.1", srv.gateway_port)
        a = make_client(srv, heartbeat=0.3, heartbeat_timeout=0.5, **FAST)
        b = make_client(srv, heartbeat=0.3, heartbeat_timeout=0.5, **FAST)
        assert a.gateway == f"127.0.0.1:{proxy.port}"   # the gateway that login named
        assert proxy.accepted == 2                      # both went through the proxy
        befriend(a, b)
        got = collect_msgs(a)
        states = []
        a.on("state", states.append)
        b.send(a.user, {"text": "before"})
        wait_until(lambda: got, what="first message")
        proxy.freeze()
        t0 = time.monotonic()
        wait_until(lambda: any(s["state"] == "offline" and "dead connection" in str(s.get("error")) for s in states),
                 timeout=5, what="dead connection detected")
        assert time.monotonic() - t0 < 3
        b.send(a.user, {"text": "during"}, wait=False)   # b's link froze too: resent after b reconnects
        wait_until(lambda: len(got) == 2, timeout=30, what="message sent across the outage")
        assert [m["body"]["text"] for m in got] == ["before", "during"]
        assert [m["seq"] for m in got] == [1, 2]
        assert proxy.accepted >= 3
    finally:
        proxy.stop()


# ------------------------------------------------------------------ the client process dies
CLIENT_PROC = str(Path(__file__).with_name("client_proc.py"))


def start_proc(tmp_path, srv, user, store, *extra, name="proc"):
    cmd = [sys.executable, CLIENT_PROC, "--api", srv.api_address, "--user", user, "--password", PASSWORD,
           "--store", str(store)] + [str(x) for x in extra]
    return LineProc(cmd, tmp_path, name=name)


def store_state(path, user, device="proc"):
    db = sqlite3.connect(str(path))
    try:
        cur = db.execute("SELECT cursor FROM account WHERE user = ? AND device = ?", (user, device)).fetchone()
        out = db.execute("SELECT COUNT(*) FROM outbox WHERE user = ? AND device = ?", (user, device)).fetchone()
        return (cur[0] if cur else 0), out[0]
    finally:
        db.close()


def test_receiving_client_process_killed_and_restarted(server, make_client, tmp_path):
    srv = server
    a = make_client(srv, **FAST)
    r = make_client(srv, login=False)
    r.login(r.user, PASSWORD)
    befriend(a, r)
    r.close()
    store = tmp_path / "r.db"
    p1 = start_proc(tmp_path, srv, r.user, store, "--recv", name="r1")
    p1.wait_until(lambda: p1.events("online"), what="online")
    for i in range(10):
        a.send(r.user, {"text": f"x{i}"})
    p1.wait_until(lambda: len(p1.events("message")) == 10, what="10 messages")
    wait_until(lambda: store_state(store, r.user)[0] == 10, what="cursor 10 on disk")
    p1.kill()                                        # SIGKILL
    for i in range(10, 20):                          # while it is dead
        a.send(r.user, {"text": f"x{i}"})
    p2 = start_proc(tmp_path, srv, r.user, store, "--recv", name="r2")
    p2.wait_until(lambda: p2.events("online"), what="online again")
    assert p2.events("online")[0]["cursor"] == 10    # the store resumed where it was
    for i in range(20, 25):                          # and while it is back
        a.send(r.user, {"text": f"x{i}"})
    p2.wait_until(lambda: len(p2.events("message")) == 15, what="15 more messages")
    a.send(r.user, {"text": "x25"})                  # the marker: nothing came between
    p2.wait_until(lambda: len(p2.events("message")) == 16, what="the marker")
    p2.kill()
    seen = p1.events("message") + p2.events("message")
    assert [m["seq"] for m in seen] == list(range(1, 27))
    assert [m["body"]["text"] for m in seen] == [f"x{i}" for i in range(26)]


def test_sending_client_process_killed_with_unacked_sends(server, make_client, tmp_path):
    srv = server
    b = make_client(srv, **FAST)
    s = make_client(srv, login=False)
    s.login(s.user, PASSWORD)
    befriend(s, b)
    s.close()
    got = collect_msgs(b)
    store = tmp_path / "s.db"
    p1 = start_proc(tmp_path, srv, s.user, store, "--peer", b.user, "--send", 30, "--die-after-queue", name="s1")
    assert p1.wait() == -9                            # killed itself right after queueing
    cursor, unacked = store_state(store, s.user)
    assert unacked == 30                              # nothing acked as far as the store knows
    stored_before_restart = b.sync()                  # b's inbox head: what the dead process got stored
    p2 = start_proc(tmp_path, srv, s.user, store, name="s2")
    p2.wait_until(lambda: p2.events("outbox_empty"), what="outbox resent and acked")
    assert p2.wait() == 0
    assert store_state(store, s.user)[1] == 0
    assert b.sync() == 30                             # every send acked: the server stored each once
    wait_until(lambda: len(got) >= 30, what="30 messages at b")
    check_stream(got, {s.user: [f"p{i}" for i in range(30)]})
    assert len(got) == 30
    print(f"messages stored before the sender's restart: {stored_before_restart}")
    # what the server may already have stored before the kill was not stored twice
    texts = [m["body"]["text"] for m in all_history(b, s.user)]
    assert sorted(texts) == sorted(f"p{i}" for i in range(30))


def test_unused_free_ports_helper():
    ports = free_ports(3)
    assert len(set(ports)) == 3 and unique_name() != unique_name()


def test_rate_limited_sends_are_retried_and_delivered_once(config_server, make_client):
    srv = config_server({"limits": {"user_send_rate": 50.0, "user_send_burst": 10}}, name="ratelimit")
    a, b = make_client(srv, **FAST), make_client(srv, **FAST)
    befriend(a, b)
    got = collect_msgs(b)
    handles = [a.send(b.user, {"text": f"r{i}"}, wait=False) for i in range(30)]
    acks = [h.get(20) for h in handles]
    assert len({ack["mid"] for ack in acks}) == 30
    assert b.sync() == 30                    # every send acked: b's inbox holds 30, no more
    wait_until(lambda: len(got) >= 30, timeout=20, what="30 messages")
    assert [m["seq"] for m in got] == list(range(1, 31))
    # each exactly once (under rate limiting, pipelined sends may be stored out of send order)
    assert sorted(m["body"]["text"] for m in got) == sorted(f"r{i}" for i in range(30))


def test_heartbeat_keeps_an_idle_connection_open(config_server, make_client):
    srv = config_server({"limits": {"idle_timeout": 1.0}}, name="idle")
    quiet = make_client(srv, heartbeat=0.3, heartbeat_timeout=1.0, **FAST)
    states = []
    quiet.on("state", states.append)
    gevent.sleep(2.5)   # the duration under test: more than twice the server's idle timeout
    assert quiet.online
    assert [s["state"] for s in states if s["state"] != "online"] == ["connecting"]
    assert srv.count("event=idle_timeout") == 0
