"""Protocol v1.1 "Hooks to business services" on both deployments, against a REAL HTTP
receiver this test starts (http.server in a thread, on a free port; HTTP/1.1 keep-alive),
which checks every request's X-Imsrv-Signature and records what it got.

- before_send: reject (forbidden with the reason, nothing stored), replace (the stored and
  pushed body is the replacement; edits too), a hook slower than hooks.timeout with
  fail_open true (allowed) and false (unavailable, nothing stored);
- after_send: an event per stored entry (sends, edits, recalls), in order per
  conversation, batched (hooks.batch);
- offline: a notification for a recipient with no online device, none for an online one
  or a muted conversation;
- the receiver down for a while, then up: every after_send / offline object arrives at
  least once;
- the embedded server SIGKILLed with events queued: delivered after its restart;
- distributed: the forwarder delivering the hooks SIGKILLed with events queued: the other
  forwarder delivers them.

"Nothing arrives" is shown with a marker: a later entry whose event or notification does
arrive (each queue is delivered in order).
"""
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from harness.procs import wait_until
from harness.servers import DEPLOYMENTS, running_server
from harness.users import befriend, heads, make_group, new_user

from imsrv.core.hooks import sign

pytestmark = pytest.mark.timeout(180)

SECRET = "hook-secret-\u2713"
SLOW = 1.5   # seconds the receiver takes to answer a before_send marked "slow" (> hooks.timeout)
HOOKS = ("before_send", "after_send", "offline")


class Receiver:
    """The business service: POST /before_send, /after_send, /offline.  before_send
    answers by the body's text: "spam" -> reject, "replace me" -> replace, "slow" -> allow
    after SLOW seconds, else allow.  ``status[path]``: the status of after_send / offline
    answers (200; 503 = "not taken").  ``down()`` closes the port (connections refused),
    ``up()`` listens on it again."""

    def __init__(self):
        self.lock = threading.Lock()
        self.got = {h: [] for h in HOOKS}     # hook -> [request body (dict)], signature checked
        self.attempts = {h: 0 for h in HOOKS}
        self.bad_signatures = 0
        self.status = {"after_send": 200, "offline": 200}
        self.conns = set()    # open connections (kept alive): down() cuts them too
        self.server = None
        self.port = None
        self.up()

    def up(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True   # headers and body are two writes

            def setup(self):
                super().setup()
                with receiver.lock:
                    receiver.conns.add(self.connection)

            def finish(self):
                with receiver.lock:
                    receiver.conns.discard(self.connection)
                super().finish()

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook = self.path.strip("/")
                if self.headers.get("X-Imsrv-Signature") != sign(SECRET, body) or hook not in HOOKS:
                    with receiver.lock:
                        receiver.bad_signatures += 1
                    return self.answer(401, {})
                obj = json.loads(body)
                if hook == "before_send":
                    with receiver.lock:
                        receiver.got[hook].append(obj)
                    return self.answer(200, receiver.decide(obj))
                with receiver.lock:
                    receiver.attempts[hook] += 1
                    status = receiver.status[hook]
                    if status == 200:
                        receiver.got[hook].append(obj)
                self.answer(status, {})

            def answer(self, status, obj):
                out = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass   # a client that gave up (before_send timeout), or down() cut it

        self.server = Server(("127.0.0.1", self.port or 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self):
        """Connections refused, and those open cut."""
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            conns, self.conns = list(self.conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def url(self, hook):
        return f"http://127.0.0.1:{self.port}/{hook}"

    @staticmethod
    def decide(req):
        body = req.get("body")
        text = body.get("text", "") if isinstance(body, dict) else str(body)
        if "spam" in text:
            return {"action": "reject", "reason": "no spam, please"}
        if "replace me" in text:
            return {"action": "replace", "body": {"text": "[replaced]", "was": len(text)}}
        if "slow" in text:
            time.sleep(SLOW)   # the service's own slowness (what the test is about), in its thread
        return {"action": "allow"}

    # -- what arrived
    def before_sends(self, sender):
        with self.lock:
            return [r for r in self.got["before_send"] if r["from"] == sender]

    def events(self):
        with self.lock:
            return [e for post in self.got["after_send"] for e in post["events"]]

    def event(self, mid):
        return next((e for e in self.events() if e["mid"] == mid), None)

    def notes(self, user=None):
        with self.lock:
            return [n for post in self.got["offline"] for n in post["notifications"]
                    if user is None or n["user"] == user]

    def wait_events(self, mids, timeout=20):
        mids = set(mids)
        return wait_until(lambda: mids <= {e["mid"] for e in self.events()} and self.events(), timeout=timeout,
                          what=f"after_send events of mids {sorted(mids)}")

    def wait_note(self, user, mid, timeout=20):
        return wait_until(lambda: next((n for n in self.notes(user) if n["mid"] == mid), None), timeout=timeout,
                          what=f"an offline notification of mid {mid} for {user}")


def hook_config(receiver, **hooks):
    cfg = {h: receiver.url(h) for h in HOOKS}
    cfg.update({"secret": SECRET, "timeout": 0.5, "retry_max": 0.4, "batch": 5})
    cfg.update(hooks)
    return {"hooks": cfg, "cluster": {"claim_idle": 1.0}}


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def hooked(request, tmp_path_factory):
    """(server, receiver): a server of each deployment with every hook on the receiver."""
    receiver = Receiver()
    with running_server(request.param, tmp_path_factory.mktemp(f"hooks-{request.param}"), hook_config(receiver),
                        name="hooks") as srv:
        yield srv, receiver
    receiver.down()
    assert receiver.bad_signatures == 0


def in_conversation_order(events, mids):
    """The mids ``mids`` (one conversation) appear, first occurrences, in mid order."""
    seen = []
    for e in events:
        if e["mid"] in mids and e["mid"] not in seen:
            seen.append(e["mid"])
    return seen == sorted(mids)


# ---------------------------------------------------------------- before_send
def test_before_send_reject_stores_nothing(hooked):
    srv, rec = hooked
    alice, bob = new_user(srv, "hr"), new_user(srv, "hr")
    befriend(alice, bob)
    with alice.connect() as ga, bob.connect() as gb:
        before = heads(alice, bob)
        err = ga.error("send", "forbidden", to=bob.name, body={"text": "cheap spam here"}, cmid="s1")
        assert err["message"] == "no spam, please"
        assert rec.before_sends(alice.name)[-1] == {
            "from": alice.name, "to": bob.name, "kind": None, "body": {"text": "cheap spam here"},
            "mentions": None, "reply_to": None}
        assert heads(alice, bob) == before
        marker = ga.send_msg("marker", to=bob.name)
        assert gb.wait_push("msg", mid=marker["mid"])["seq"] == before[bob.name] + 1
        rec.wait_events([marker["mid"]])
        assert [e["body"] for e in rec.events() if e["from"] == alice.name] == ["marker"]
        # the same cmid after the rejection: asked again, and stored if allowed now
        first = ga.send_msg("fine now", to=bob.name, cmid="s1")
        assert first["mid"] > marker["mid"]
        # a resend of a stored cmid gets its first ack even when the hook now refuses it
        # (sends are idempotent: a refusal would say "not stored" of a stored send)
        after = heads(alice, bob)
        again = ga.call("send", expect="ack", to=bob.name, body={"text": "now spam"}, cmid="s1")
        assert (again["mid"], again["seq"]) == (first["mid"], first["seq"])
        assert heads(alice, bob) == after


def test_before_send_replace_is_stored_and_pushed(hooked):
    srv, rec = hooked
    alice, bob, carol = (new_user(srv, "hp") for _ in range(3))
    befriend(alice, bob)
    gid = make_group(alice, [bob, carol])
    with alice.connect() as ga, alice.connect(device="tablet") as ga2, bob.connect() as gb:
        sent = ga.send_msg({"text": "please replace me"}, to=bob.name)
        want = {"text": "[replaced]", "was": len("please replace me")}
        assert gb.wait_push("msg", mid=sent["mid"])["body"] == want
        assert ga2.wait_push("msg", mid=sent["mid"])["body"] == want
        # a group send: the request names the group, mentions and reply_to
        g = ga.send_msg("hello all", group=gid)
        gsent = ga.call("send", expect="ack", group=gid, body={"text": "x replace me"}, mentions=[bob.name],
                        reply_to=g["mid"])
        assert gb.wait_push("msg", mid=gsent["mid"])["body"] == {"text": "[replaced]", "was": 12}
        assert rec.before_sends(alice.name)[-1] == {
            "from": alice.name, "group": gid, "kind": None, "body": {"text": "x replace me"},
            "mentions": [bob.name], "reply_to": g["mid"]}
        # an edit is asked too (kind "edit", ref the edited mid) and may be replaced
        plain = ga.send_msg("plain", to=bob.name)
        edit = ga.call("edit", expect="ack", mid=plain["mid"], body={"text": "now replace me"})
        assert gb.wait_push("msg", mid=edit["mid"])["body"] == {"text": "[replaced]", "was": 14}
        assert rec.before_sends(alice.name)[-1] == {
            "from": alice.name, "to": bob.name, "kind": "edit", "body": {"text": "now replace me"},
            "mentions": None, "reply_to": None, "ref": plain["mid"]}
        # recall and react are not asked
        asked = len(rec.before_sends(alice.name))
        ga.call("recall", expect="ack", mid=plain["mid"])
        gb.call("react", expect="ack", mid=sent["mid"], emoji="+1")
        assert len(rec.before_sends(alice.name)) == asked and not rec.before_sends(bob.name)
    hist = {m["mid"]: m for m in bob.call("history", **{"with": alice.name})["msgs"]}
    assert hist[sent["mid"]]["body"] == want
    rec.wait_events([sent["mid"], gsent["mid"], edit["mid"]])
    assert rec.event(sent["mid"])["body"] == want and rec.event(edit["mid"])["body"]["text"] == "[replaced]"


def test_before_send_slower_than_timeout_fails_open(hooked):
    srv, rec = hooked
    alice, bob = new_user(srv, "ht"), new_user(srv, "ht")
    befriend(alice, bob)
    with alice.connect() as ga, bob.connect() as gb:
        t0 = time.monotonic()
        sent = ga.send_msg({"text": "slow one"}, to=bob.name)
        took = time.monotonic() - t0
        assert 0.4 <= took < SLOW, took      # hooks.timeout (0.5 s), not the service's 1.5 s
        assert gb.wait_push("msg", mid=sent["mid"])["body"] == {"text": "slow one"}
    wait_until(lambda: srv.count("event=hook_failed") >= 1, what="the before_send failure logged")


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_before_send_fail_closed(deployment, tmp_path):
    """fail_open = false: a hook slower than timeout, or down: unavailable, nothing stored."""
    rec = Receiver()
    try:
        with running_server(deployment, tmp_path, hook_config(rec, fail_open=False), name="closed") as srv:
            alice, bob = new_user(srv, "hc"), new_user(srv, "hc")
            befriend(alice, bob)
            with alice.connect() as ga, bob.connect() as gb:
                before = heads(alice, bob)
                ga.error("send", "unavailable", to=bob.name, body={"text": "slow"}, cmid="c1")
                rec.down()
                ga.error("send", "unavailable", to=bob.name, body="hook down", cmid="c2")
                assert heads(alice, bob) == before
                rec.up()
                sent = ga.send_msg("hook back", to=bob.name, cmid="c2")   # the resend is stored now
                assert gb.wait_push("msg", mid=sent["mid"])["seq"] == before[bob.name] + 1
            rec.wait_events([sent["mid"]])
            assert [e["mid"] for e in rec.events() if e["from"] == alice.name] == [sent["mid"]]
    finally:
        rec.down()
    assert rec.bad_signatures == 0


# ---------------------------------------------------------------- after_send
def test_after_send_events_of_sends_edits_recalls(hooked):
    srv, rec = hooked
    alice, bob = new_user(srv, "ha"), new_user(srv, "ha")
    befriend(alice, bob)
    with alice.connect() as ga, bob.connect() as gb:
        m1 = ga.send_msg({"text": "one"}, to=bob.name, cmid="a1")
        m2 = gb.send_msg("two", to=alice.name)
        ed = ga.call("edit", expect="ack", mid=m1["mid"], body={"text": "one!"}, cmid="a2")
        rc = ga.call("recall", expect="ack", mid=m1["mid"])
        more = [ga.send_msg(f"n{i}", to=bob.name)["mid"] for i in range(8)]
    mids = [m1["mid"], m2["mid"], ed["mid"], rc["mid"]] + more
    rec.wait_events(mids)
    assert rec.event(m1["mid"]) == {"mid": m1["mid"], "from": alice.name, "to": bob.name, "body": {"text": "one"},
                                    "ts": m1["ts"], "cmid": "a1"}
    assert rec.event(m2["mid"]) == {"mid": m2["mid"], "from": bob.name, "to": alice.name, "body": "two",
                                    "ts": m2["ts"]}
    assert rec.event(ed["mid"]) == {"mid": ed["mid"], "from": alice.name, "to": bob.name, "body": {"text": "one!"},
                                    "ts": ed["ts"], "cmid": "a2", "kind": "edit", "ref": m1["mid"]}
    assert rec.event(rc["mid"]) == {"mid": rc["mid"], "from": alice.name, "to": bob.name, "body": None,
                                    "ts": rc["ts"], "kind": "recall", "ref": m1["mid"]}
    assert in_conversation_order(rec.events(), mids)
    with rec.lock:
        assert all(len(post["events"]) <= 5 for post in rec.got["after_send"])   # hooks.batch


def test_after_send_events_of_group_events(hooked):
    """The group events the API stores (distributed: the API daemon, through its
    hook_queue table and the streams) reach after_send like any entry."""
    srv, rec = hooked
    alice, bob = new_user(srv, "hg"), new_user(srv, "hg")
    befriend(alice, bob)
    gid = make_group(alice, [bob])
    with alice.connect() as ga:
        created = [m for m in ga.sync(0)["msgs"] if m.get("kind") == "group_event"]
    assert [m["body"]["event"] for m in created][:1] == ["created"]
    rec.wait_events([m["mid"] for m in created])
    got = rec.event(created[0]["mid"])
    assert (got["group"], got["kind"], got["from"]) == (gid, "group_event", alice.name)


# ---------------------------------------------------------------- offline
def test_offline_notifications(hooked):
    srv, rec = hooked
    alice, bob, carol = (new_user(srv, "ho") for _ in range(3))
    befriend(alice, bob)
    befriend(alice, carol)
    gid = make_group(alice, [bob, carol])
    with alice.connect() as ga, carol.connect() as gc:          # bob has no online device
        m1 = ga.send_msg({"text": "x" * 150}, to=bob.name)
        n = rec.wait_note(bob.name, m1["mid"])
        assert n == {"user": bob.name, "from": alice.name, "to": bob.name, "mid": m1["mid"], "seq": n["seq"],
                     "preview": "x" * 100, "mentioned": False, "badge": 1}
        g1 = ga.call("send", expect="ack", group=gid, body="hi @bob", mentions=[bob.name])
        n = rec.wait_note(bob.name, g1["mid"])
        assert (n["group"], n["mentioned"], n["badge"], n["preview"]) == (gid, True, 2, "hi @bob")
        assert "to" not in n
        assert gc.wait_push("msg", mid=g1["mid"])
        # bob mutes alice: nothing for that conversation; carol (online) never gets one
        bob.call("mute", **{"with": alice.name, "until": -1})
        muted = ga.send_msg("while muted", to=bob.name)
        marker = ga.send_msg("to the group", group=gid)
        rec.wait_note(bob.name, marker["mid"])
        assert muted["mid"] not in {x["mid"] for x in rec.notes(bob.name)}
        assert not rec.notes(carol.name) and not rec.notes(alice.name)


def test_receiver_down_then_up_loses_nothing(hooked):
    srv, rec = hooked
    alice, bob = new_user(srv, "hd"), new_user(srv, "hd")
    befriend(alice, bob)
    rec.down()
    try:
        with alice.connect() as ga:
            t0 = time.monotonic()
            mids = [ga.send_msg(f"while down {i}", to=bob.name)["mid"] for i in range(12)]
            assert time.monotonic() - t0 < 5, "acks never wait for the hooks"
        wait_until(lambda: srv.count("event=hook_failed") >= 2, what="failed hook POSTs logged")
    finally:
        rec.up()
    rec.wait_events(mids)
    assert in_conversation_order(rec.events(), mids)
    wait_until(lambda: set(mids) <= {n["mid"] for n in rec.notes(bob.name)}, timeout=20,
               what="every offline notification")
    seqs = sorted({n["seq"] for n in rec.notes(bob.name) if n["mid"] in mids})
    assert seqs == list(range(seqs[0], seqs[0] + 12))


# ---------------------------------------------------------------- crashes
def test_embedded_restart_delivers_queued_events(server_factory):
    rec = Receiver()
    rec.status.update(after_send=503, offline=503)
    try:
        srv = server_factory(hook_config(rec))
        alice, bob = new_user(srv, "hk"), new_user(srv, "hk")
        befriend(alice, bob)
        with alice.connect() as ga:
            mids = [ga.send_msg(f"queued {i}", to=bob.name)["mid"] for i in range(7)]
        wait_until(lambda: rec.attempts["after_send"] >= 2 and rec.attempts["offline"] >= 2,
                   what="the queued hooks tried (and refused)")
        srv.kill()
        rec.status.update(after_send=200, offline=200)
        srv.restart()
        rec.wait_events(mids)
        wait_until(lambda: set(mids) <= {n["mid"] for n in rec.notes(bob.name)}, timeout=20,
                   what="the offline notifications after the restart")
        assert in_conversation_order(rec.events(), mids)
    finally:
        rec.down()
    assert rec.bad_signatures == 0


def test_forwarder_sigkill_with_queued_events(deployment_factory):
    """The forwarder holding the hooks' lease is SIGKILLed while the receiver refuses
    (events pending in the stream); supervisord's restart of it is stopped, so the other
    forwarder must take the lease and deliver.  How this proves the fault happened: the
    lease named the killed forwarder, and the other one logged hook_lease_taken after."""
    rec = Receiver()
    rec.status.update(after_send=503, offline=503)
    try:
        dep = deployment_factory(config=hook_config(rec))
        alice, bob = new_user(dep, "hf"), new_user(dep, "hf")
        befriend(alice, bob)
        with alice.connect() as ga:
            mids = [ga.send_msg(f"queued {i}", to=bob.name)["mid"] for i in range(9)]
        wait_until(lambda: rec.attempts["after_send"] >= 2, what="the after_send POSTs refused")
        r = redis.Redis.from_url(dep.redis_url, decode_responses=True)
        holder = r.get(f"{dep.redis_prefix}:hooks:after_send:lease")
        assert holder and holder.startswith("fw"), holder
        victim = "forwarder-%s" % holder[2:].split(".")[0]
        other = "forwarder-1" if victim == "forwarder-0" else "forwarder-0"
        taken = dep.log(other).count("event=hook_lease_taken")
        dep.sigkill(victim)
        dep.supervisorctl("stop", f"forwarder:{victim}")
        rec.status.update(after_send=200, offline=200)
        rec.wait_events(mids, timeout=30)
        wait_until(lambda: set(mids) <= {n["mid"] for n in rec.notes(bob.name)}, timeout=30,
                   what="the offline notifications")
        assert dep.log(other).count("event=hook_lease_taken") > taken
        assert in_conversation_order(rec.events(), mids)
    finally:
        rec.down()
    assert rec.bad_signatures == 0
