"""The distributed deployment as operators run it: the REAL supervisord with the repo's
supervisord.conf (2 gateways, 2 forwarders, 1 API, initdb first), over MariaDB and Redis.

- supervisorctl shows the whole set RUNNING and initdb EXITED with status 0; `imsrv
  initdb` run again (by hand, and by supervisord) is idempotent and keeps the data;
- login names a live gateway, the least-loaded one by the gateways' load reports;
- users on different gateways exchange 1:1 and group messages, presence, typing,
  receipts, and a device moving between gateways replaces its old session;
- `supervisorctl stop gateway:gateway-0` (SIGTERM) says `bye` shutdown with retry_after
  to its clients, login stops naming it, and it comes back with `start`;
- every Redis key and pub/sub channel the deployment uses is under its prefix.
"""
import re
import subprocess
import time

import pytest
import redis as redis_lib

import services
from harness.procs import wait_until
from harness.users import PASSWORD, befriend, login, make_group, new_user

pytestmark = pytest.mark.timeout(120)

FAST = {
    "limits": {"shutdown_grace": 2.0, "retry_after": 1.0,
               "login_user_attempts": 100000, "login_addr_attempts": 100000,
               "login_user_global_attempts": 100000},
    "cluster": {"load_report_every": 0.2},
}

SET = {"gateway:gateway-0", "gateway:gateway-1", "forwarder:forwarder-0", "forwarder:forwarder-1", "api"}


def status(dep):
    """{supervisor name: state} from `supervisorctl status`."""
    out = {}
    for line in dep.supervisorctl("status").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out[parts[0]] = parts[1]
    return out


def addresses(dep):
    return [f"127.0.0.1:{p}" for p in dep.gateway_ports]


def connect(dep, user, index, device=None):
    """A connection of ``user`` authenticated on gateway ``index``."""
    c = dep.gateway(index=index)
    c.label = f"{user.name}/{device or '-'}@gw{index}"
    c.auth(user.token, device)
    return c


def initdb_exits(dep):
    return dep.log("supervisord").count("exited: initdb (exit status 0; expected)")


# ---------------------------------------------------------------- supervisord, initdb
def test_supervisord_runs_the_set_and_initdb_is_idempotent(deployment_factory):
    dep = deployment_factory(config=FAST)
    # gateways and the rest count as RUNNING after startsecs (2 s): wait for it
    wait_until(lambda: all(status(dep).get(p) == "RUNNING" for p in SET), timeout=20,
               what=f"the whole set RUNNING: {status(dep)}")
    st = status(dep)
    assert set(st) == SET | {"initdb"}, st
    assert st["initdb"] == "EXITED", st
    assert initdb_exits(dep) == 1, dep.log("supervisord")
    assert "imsrv initdb:" not in dep.log("initdb"), dep.log("initdb")
    # data, then initdb again: by hand (twice) and by supervisord
    a, b = new_user(dep, "idb"), new_user(dep, "idb")
    befriend(a, b)
    with connect(dep, a, 0) as ga:
        ack = ga.send_msg("before initdb", to=b.name, cmid="idb-1")
    cmd = [str(dep.workdir / ".venv" / "bin" / "imsrv"), "initdb"]
    runs = [subprocess.run(cmd, cwd=str(dep.workdir), env=dep.environment(), capture_output=True, text=True, timeout=60)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, f"imsrv initdb -> {r.returncode}: {r.stdout}{r.stderr}"
    assert runs[0].stdout == runs[1].stdout, (runs[0].stdout, runs[1].stdout)
    dep.supervisorctl("start", "initdb")
    wait_until(lambda: initdb_exits(dep) == 2, timeout=30, what="initdb to run again under supervisord")
    assert status(dep)["initdb"] == "EXITED"
    # nothing was lost or reset: accounts, friends, inbox, dedup records, seqs
    assert login(dep, a.name)["user"] == a.name
    with connect(dep, b, 1) as gb:
        msgs, head = gb.sync_all(0)
        assert [m["mid"] for m in msgs] == [ack["mid"]] and head == 1
    with connect(dep, a, 1) as ga:
        again = ga.send_msg("before initdb", to=b.name, cmid="idb-1")
        assert (again["mid"], again["seq"]) == (ack["mid"], ack["seq"])
        assert ga.send_msg("after initdb", to=b.name)["seq"] == ack["seq"] + 1
    # every daemon still runs (none restarted meanwhile)
    assert all(dep.ready_count(p) == 1 for p in ("gateway-0", "gateway-1", "forwarder-0", "forwarder-1", "api"))


# ---------------------------------------------------------------- login: least-loaded gateway
def test_login_names_the_least_loaded_live_gateway(deployment_factory):
    dep = deployment_factory(config=FAST)
    gw0, gw1 = addresses(dep)
    users = [new_user(dep, "ld") for _ in range(6)]
    # both gateways report their load from their start on
    rep = wait_until(lambda: (lambda r: r if sorted(r["gateways"]) == sorted([gw0, gw1]) else None)(
        login(dep, users[0].name)), timeout=10, what="login to list both gateways")
    assert rep["gateway"] in (gw0, gw1)
    conns = []
    try:
        # three sessions on gateway 0: once it reported them, login names gateway 1
        conns += [connect(dep, u, 0) for u in users[:3]]
        wait_until(lambda: login(dep, users[0].name)["gateway"] == gw1, timeout=10,
                   what="login to name gateway 1 once gateway 0 reported 3 sessions")
        # five on gateway 1 (more than gateway 0 has): login names gateway 0 again
        conns += [connect(dep, u, 1, device=f"d{i}") for i, u in enumerate(users[:5])]
        wait_until(lambda: login(dep, users[5].name)["gateway"] == gw0, timeout=10,
                   what="login to name gateway 0 once gateway 1 reported 5 sessions")
        # and the client can use the gateway it was given (not necessarily gateway 0
        # now: the API counts the logins above, which it named gateway 0 for)
        rep = login(dep, users[5].name, device="given")
        host, port = rep["gateway"].rsplit(":", 1)
        with connect(dep, users[5], dep.gateway_ports.index(int(port)), device="given") as c:
            assert c.call("ping", expect="pong")
    finally:
        for c in conns:
            c.close()


def test_a_burst_of_logins_is_spread_over_the_gateways(deployment_factory):
    """Between two load reports the API counts the logins it hands out, so a burst of
    logins (a reconnect storm, a load test) does not all name the gateway that was least
    loaded at the last report."""
    dep = deployment_factory(config={"cluster": {"load_report_every": 4.0}})
    gw0, gw1 = addresses(dep)
    user = new_user(dep, "burst")
    wait_until(lambda: sorted(login(dep, user.name)["gateways"]) == sorted([gw0, gw1]),
               timeout=15, what="login to list both gateways")
    named = [login(dep, user.name)["gateway"] for _ in range(12)]
    assert named.count(gw0) >= 4 and named.count(gw1) >= 4, named


# ---------------------------------------------------------------- across gateways
def test_users_on_different_gateways(deployment_factory):
    dep = deployment_factory(config=FAST)
    a, b, c = new_user(dep, "xa"), new_user(dep, "xb"), new_user(dep, "xc")
    befriend(a, b)
    befriend(a, c)
    befriend(b, c)
    gid = make_group(a, [b, c], name="across")
    gb = connect(dep, b, 1)
    gc = connect(dep, c, 1)
    ga = connect(dep, a, 0)
    try:
        # presence: a came online on gateway 0, b and c (gateway 1) are told
        gb.wait_push("presence", user=a.name, status="online")
        gc.wait_push("presence", user=a.name, status="online")
        # 1:1 both ways
        ack = ga.send_msg({"t": "hi b"}, to=b.name, cmid="x-1")
        m = gb.wait_push("msg", mid=ack["mid"])
        assert (m["from"], m["to"], m["body"], m["cmid"]) == (a.name, b.name, {"t": "hi b"}, "x-1")
        back = gb.send_msg("hi a", to=a.name)
        assert ga.wait_push("msg", mid=back["mid"])["from"] == b.name
        # group: both members on the other gateway get it
        gack = ga.send_msg("to the group", group=gid)
        for g in (gb, gc):
            assert g.wait_push("msg", mid=gack["mid"])["group"] == gid
        # typing and read receipts cross gateways too
        ga.send_frame({"op": "typing", "to": b.name})
        gb.wait_push("typing", **{"from": a.name})
        gb.call("read", seq=m["seq"], **{"with": a.name})
        assert ga.wait_push("receipt", **{"from": b.name})["mid"] == ack["mid"]
        # status changes and presence queries across gateways
        gb.call("status", status="away", text="lunch")
        p = ga.wait_push("presence", user=b.name, status="away")
        assert p.get("text") == "lunch"
        assert ga.call("presence", expect="presence", users=[b.name, c.name])["statuses"] == \
            {b.name: "away", c.name: "online"}
        # a second device of a on gateway 1 gets a's own later sends and b's messages
        ga2 = connect(dep, a, 1, device="phone")
        try:
            own = ga.send_msg("from my laptop", to=c.name)
            assert ga2.wait_push("msg", mid=own["mid"])["seq"] == own["seq"]
            to_a = gb.send_msg("to both devices", to=a.name)
            on_phone = ga2.wait_push("msg", mid=to_a["mid"])
            assert on_phone["from"] == b.name
            assert ga.wait_push("msg", mid=to_a["mid"])["seq"] == on_phone["seq"]
            # the same device authenticating on the other gateway replaces the old session
            moved = connect(dep, a, 0, device="phone")
            try:
                frames = ga2.expect_close(timeout=10)
                assert {"op": "kicked", "reason": "replaced"} in frames, frames
                assert moved.call("ping", expect="pong")
            finally:
                moved.close()
        finally:
            ga2.close()
        # c goes offline: a (gateway 0) and b (gateway 1) are told
        gc.close()
        ga.wait_push("presence", user=c.name, status="offline")
        gb.wait_push("presence", user=c.name, status="offline")
    finally:
        for g in (ga, gb, gc):
            g.close()


# ---------------------------------------------------------------- SIGTERM of a gateway
def test_stopping_a_gateway_says_bye(deployment_factory):
    dep = deployment_factory(config=FAST)
    gw0, gw1 = addresses(dep)
    users = [new_user(dep, "by") for _ in range(3)]
    on0 = [connect(dep, u, 0) for u in users[:2]]
    on1 = connect(dep, users[2], 1)
    try:
        dep.supervisorctl("stop", "gateway:gateway-0")      # SIGTERM; returns once it exited
        for c in on0:
            frames = c.expect_close(timeout=10)
            byes = [f for f in frames if f.get("op") == "bye"]
            assert len(byes) == 1, frames
            assert byes[0]["reason"] == "shutdown", byes
            assert isinstance(byes[0]["retry_after"], (int, float)) and byes[0]["retry_after"] > 0, byes
        assert status(dep)["gateway:gateway-0"] == "STOPPED"
        assert "event=shutdown" in dep.log("gateway-0")
        assert on1.is_open(), "a client of the other gateway was disconnected"
        # login names the gateway still running only, and the clients reconnect there
        rep = login(dep, users[0].name)
        assert (rep["gateway"], rep["gateways"]) == (gw1, [gw1]), rep
        with connect(dep, users[0], 1) as back:
            assert back.call("ping", expect="pong")
        # started again, it takes clients and login names it again
        dep.supervisorctl("start", "gateway:gateway-0")
        dep.wait_ready("gateway-0", runs=2, timeout=30)
        wait_until(lambda: sorted(login(dep, users[1].name)["gateways"]) == sorted([gw0, gw1]), timeout=10,
                   what="login to list the restarted gateway")
        with connect(dep, users[1], 0) as again:
            assert again.call("ping", expect="pong")
    finally:
        for c in on0 + [on1]:
            c.close()


# ---------------------------------------------------------------- Redis key prefix
def test_every_redis_key_is_under_the_prefix(deployment_factory):
    """On a private Redis with keyspace notifications on, so that every key the deployment
    writes, even briefly, is seen: after accounts, logins (one failed), sessions on both
    gateways, 1:1 and group messages, presence, typing, receipts and a logout, every key
    written and every pub/sub channel starts with the deployment's prefix."""
    priv = services.need(services.private_redis, "a private redis-server")
    priv.start()
    dep = None
    r = redis_lib.Redis.from_url(priv.url, decode_responses=True, socket_timeout=5)
    events = r.pubsub()
    try:
        r.config_set("notify-keyspace-events", "KEA")
        events.psubscribe("__keyevent@0__:*")
        dep = deployment_factory(config=FAST, redis=priv.url)
        a, b = new_user(dep, "pa"), new_user(dep, "pb")
        befriend(a, b)
        gid = make_group(a, [b], name="prefix")
        with dep.api() as api:
            api.error("login", "unauthorized", user=a.name, password=PASSWORD + "-wrong")
        ga, gb = connect(dep, a, 0), connect(dep, b, 1)
        try:
            ack = ga.send_msg("dm", to=b.name, cmid="p-1")
            dm = gb.wait_push("msg", mid=ack["mid"])
            gack = gb.send_msg("group", group=gid)
            ga.wait_push("msg", mid=gack["mid"])
            gb.call("status", status="busy")
            ga.wait_push("presence", user=b.name, status="busy")
            ga.send_frame({"op": "typing", "to": b.name})
            gb.wait_push("typing", **{"from": a.name})
            gb.call("read", seq=dm["seq"], **{"with": a.name})
            ga.wait_push("receipt", **{"from": b.name})
            channels = set(r.pubsub_channels("*"))
        finally:
            ga.close()
            gb.close()
        b.call("logout")
        ga2 = connect(dep, a, 1)
        ga2.close()
        wait_until(lambda: not r.exists(f"{dep.redis_prefix}:sess:{{{a.name}}}"), timeout=10,
                   what="a's sessions to detach")
        # every key event up to now, ended by one of our own (outside the prefix)
        sentinel = "test-sentinel-" + services.random_name("")
        r.set(sentinel, 1)
        keys = set()
        while sentinel not in keys:
            m = events.get_message(timeout=5)
            assert m is not None, "no keyspace event for the sentinel key within 5 s"
            if m["type"] == "pmessage":
                keys.add(m["data"])
        keys.discard(sentinel)
        r.delete(sentinel)
        prefix = dep.redis_prefix + ":"
        assert {f"{prefix}ingress", f"{prefix}gateways", f"{prefix}gwinfo"} <= keys, sorted(keys)
        assert any(re.match(re.escape(prefix) + r"sess:", k) for k in keys), sorted(keys)
        outside = sorted(k for k in keys if not k.startswith(prefix))
        assert not outside, f"Redis keys outside the prefix {prefix!r}: {outside}"
        assert set(r.keys("*")) <= keys, "a key exists that no event announced"
        assert channels == {f"{prefix}gw:gw0", f"{prefix}gw:gw1"}, channels
    finally:
        events.close()
        r.close()
        if dep is not None:
            dep.kill()
        priv.cleanup()


# ---------------------------------------------------------------- shared send limit
def test_a_users_send_limit_holds_across_gateways(deployment_factory):
    """limits.user_send_rate / user_send_burst count a user's sends on every gateway
    together (the bucket is in Redis; gateways lease tokens from it a few at a time):
    alternating between devices on both gateways buys no more than the burst."""
    burst, rate = 10, 0.5
    dep = deployment_factory(config={"limits": {"user_send_burst": burst, "user_send_rate": rate}})
    a, b = new_user(dep, "lim"), new_user(dep, "rcv")
    befriend(a, b)
    c0, c1 = connect(dep, a, 0, device="d0"), connect(dep, a, 1, device="d1")
    try:
        start = time.monotonic()
        replies = [(c0, c1)[k % 2].send_msg(k, to=b.name, expect=None) for k in range(30)]
        elapsed = time.monotonic() - start
        acked = [r for r in replies if r["op"] == "ack"]
        limited = [r for r in replies if r["op"] == "error"]
        assert all(r["code"] == "rate_limited" and r["retry_after"] > 0 for r in limited), limited
        assert burst - 7 <= len(acked) <= burst + int(rate * elapsed) + 1, (len(acked), elapsed)
        assert len(acked) + len(limited) == 30
        # a limited send changed nothing: b's inbox holds exactly the acked ones
        with connect(dep, b, 0) as cb:
            msgs, head = cb.sync_all()
        assert sorted(m["body"] for m in msgs) == sorted(r_k for r_k, r in enumerate(replies) if r["op"] == "ack")
    finally:
        c0.close()
        c1.close()
