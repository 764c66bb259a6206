"""The ejabberd peer of ``imsrv bench pairs --peer ejabberd``: the same pairs shape as
imsrv's, over XMPP against a private ejabberd (Debian package ``ejabberd``, 23.x).

``Peer(workdir)``; ``start()`` (a private node on free 127.0.0.1 ports); ``run_pairs(...)``
as many rounds as the bench wants; ``stop()``.

The private node: :data:`CONFIG` in ``workdir/ejabberd.yml`` (plain c2s on loopback, no
TLS; no shaper and ``max_fsm_queue`` raised, so nothing throttles or drops a fast client;
mod_offline, mod_stream_mgmt, and mod_register open to 127.0.0.0/8 with
``registration_timeout: infinity``, i.e. no per-IP registration rate limit; passwords
stored plain so SASL PLAIN costs no hashing), Mnesia in ``workdir/spool``, logs in
``workdir/logs``, its own node name and a random cookie.  It is started as
``ejabberdctl foreground`` would start it (``erl ... -mnesia dir SPOOL -s ejabberd`` with
the package's ``ERL_LIBS``), but by :func:`subprocess.Popen` directly, as the current
user: run by root, ejabberdctl switches to the ``ejabberd`` user (``su``), which cannot
read the bench's private (0700) temp dir, and the node would be su's child, not ours to
wait for; run by anyone else it refuses.  Erlang distribution listens on a free loopback port of its own
(``-erl_epmd_port``, no epmd), so the node never meets another one (a RabbitMQ, the
packaged ejabberd), and ``ejabberdctl --ctl-config workdir/ejabberdctl.cfg CMD`` reaches
it: ``stop()`` uses that (``ejabberdctl ... stop``), then SIGTERM, then SIGKILL.

The shape: pair ``i`` is a recipient ``r<run>x<i>`` (logged in, initial presence sent and
processed before the clock starts) and a sender ``s<run>x<i>``, both registered in-band
(XEP-0077; ``ejabberdctl register`` costs an Erlang VM start, ~0.25 s, per account).  The
sender enables XEP-0198 stream management and sends ``messages`` ``<message type='chat'>``
stanzas to the recipient's bare JID, ``batch`` per socket write, at most ``window`` not
yet acked; it asks for an ack (``<r/>``) at least every ``max(batch, window //
ACK_FRACTION)`` stanzas, and whenever the next batch would not fit the window, and counts
``<a h='N'/>`` (the server handled the first N stanzas) as acks.  The body is ``size``
characters: ``<send time, µs>:xxx...`` (longer when ``size`` is below ~14); the recipient
takes send -> delivery latency from it.

Measured on this 2-core box, another ~1 core busy with other work (50 pairs x 4000
messages, batch 10, window 1000, size 120, 2 workers): ~18-21k delivered/s, beam.smp at
~85-90 % of a core (~45 µs of CPU per message), the two workers at ~19 % each (~18 µs per
message together): the server is the bottleneck, not this client.
"""
import glob
import multiprocessing
import os
import re
import secrets
import subprocess
import time
from itertools import count

from imsrv.bench.peer_common import (SETUP_TIMEOUT, PeerShard, free_port, log_tail, run_peer_shards,
                                      wait_listening)
from imsrv.bench.workers import split

#: the Erlang runtime and the package's control script (Debian packages erlang-base, ejabberd)
ERL = "/usr/bin/erl"
EJABBERDCTL = "/usr/sbin/ejabberdctl"
#: seconds the node has to accept c2s connections after it is started (it takes ~1.5 s)
START_TIMEOUT = 60.0
#: seconds for ``ejabberdctl stop``, then for the node to exit after it, then after SIGTERM
STOP_TIMEOUT = 20.0
#: senders ask for an ack at least every max(batch, window // ACK_FRACTION) stanzas
ACK_FRACTION = 10
#: the XMPP domain the private node serves, and every account's password
DOMAIN = "bench.localhost"
PASSWORD = "bench"

#: the private node's config
CONFIG = """\
# imsrv bench: private ejabberd (written by imsrv.bench.peer_ejabberd)
hosts: ["{domain}"]
loglevel: warning
log_rotate_count: 0
auth_method: internal
# SASL PLAIN against plain stored passwords: no PBKDF2 per login or registration
auth_password_format: plain
# no per-IP limit on in-band registrations (default: one per 600 s)
registration_timeout: infinity
# a c2s process with more queued Erlang messages than this is killed (default 10000)
max_fsm_queue: 10000000
acme:
  auto: false
acl:
  loopback:
    ip: ["127.0.0.0/8", "::1/128"]
access_rules:
  register:
    allow: all
  from_loopback:
    allow: loopback
shaper_rules:
  max_user_sessions: infinity
listen:
  - port: {port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    # plain XMPP: no TLS, STARTTLS neither offered nor required
    starttls: false
    starttls_required: false
    # no traffic shaper (the packaged config has 3,000 B/s, bursts of 20,000)
    shaper: none
    max_stanza_size: 262144
    max_fsm_queue: 10000000
modules:
  # stores messages for offline recipients (Mnesia); online ones get them directly
  mod_offline: {{}}
  # XEP-0198; no limit on stanzas unacked by a client (default 5000: the session is closed)
  mod_stream_mgmt:
    max_ack_queue: infinity
  # XEP-0077 in-band registration, from loopback only
  mod_register:
    access: register
    ip_access: from_loopback
"""

#: ejabberdctl's own config: how it reaches the private node (it sources this file)
CTL_CONFIG = """\
ERLANG_NODE={node}
ERL_DIST_PORT={dist_port}
ERL_OPTIONS="-setcookie {cookie}"
"""

_runs = count(1)


class Peer:
    name = "ejabberd"
    promise = ("XEP-0198 <a h='N'/>: ejabberd has handled the first N stanzas, i.e. routed "
               "them to the online recipient's session (in memory); nothing written to disk for "
               "online delivery (mod_offline stores only for offline recipients), no fsync")

    def __init__(self, workdir, erl=ERL, ejabberdctl=EJABBERDCTL):
        self.workdir = workdir
        self.erl, self.ejabberdctl = erl, ejabberdctl
        self.proc = None
        self.port = self.dist_port = None
        self.node = None
        self._log = None

    # ------------------------------------------------------------------ server

    def _path(self, *parts):
        return os.path.join(self.workdir, *parts)

    def start(self):
        """Start the private node; return once it accepts c2s connections."""
        for path, package in ((self.erl, "erlang-base"), (self.ejabberdctl, "ejabberd")):
            if not os.access(path, os.X_OK):
                raise RuntimeError(f"{path} not found: apt-get install ejabberd (it brings {package})")
        erl_libs = _erl_libs(self.ejabberdctl)
        for sub in ("spool", "logs"):
            os.makedirs(self._path(sub), exist_ok=True)
        for attempt in range(3):  # a free port can be taken between probe and bind
            self.port, self.dist_port = free_port(), free_port()
            self.node = f"imsrvbench{os.getpid()}x{secrets.token_hex(3)}@127.0.0.1"
            cookie = secrets.token_hex(16)
            with open(self._path("ejabberd.yml"), "w") as f:
                f.write(CONFIG.format(domain=DOMAIN, port=self.port))
            with open(self._path("ejabberdctl.cfg"), "w") as f:
                f.write(CTL_CONFIG.format(node=self.node, dist_port=self.dist_port, cookie=cookie))
            env = dict(os.environ, HOME=self.workdir, ERL_LIBS=erl_libs,
                       EJABBERD_CONFIG_PATH=self._path("ejabberd.yml"),
                       EJABBERD_LOG_PATH=self._path("logs", "ejabberd.log"),
                       ERL_CRASH_DUMP=self._path("logs", "erl_crash.dump"),
                       ERL_MAX_PORTS="32000", ERL_MAX_ETS_TABLES="1400")
            cmd = [self.erl, "-name", self.node, "-setcookie", cookie,
                   "-erl_epmd_port", str(self.dist_port), "-start_epmd", "false",
                   "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
                   "+K", "true", "+P", "250000", "-env", "ERL_CRASH_DUMP_BYTES", "0",
                   "-noinput", "-mnesia", "dir", '"%s"' % self._path("spool"), "-s", "ejabberd"]
            self._log = open(self._path("logs", "console.log"), "ab")
            self.proc = subprocess.Popen(cmd, cwd=self._path("spool"), env=env,
                                         stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT)
            if self._wait_ready():
                return
            tail = self.log_tail()
            self.stop()
            if "eaddrinuse" not in tail.lower():
                break
        raise RuntimeError(f"private ejabberd did not accept c2s connections on 127.0.0.1:{self.port} "
                           f"within {START_TIMEOUT:.0f} s; its console log:\n{tail}")

    def _wait_ready(self):
        return wait_listening(self.proc, self.port, START_TIMEOUT, poll=0.1)

    def log_tail(self, lines=30):
        return log_tail(self._path("logs", "console.log"), lines)

    def ctl(self, *args, timeout=STOP_TIMEOUT):
        """``ejabberdctl CMD ...`` against the private node -> CompletedProcess."""
        return subprocess.run([self.ejabberdctl, "--ctl-config", self._path("ejabberdctl.cfg"),
                               "--config", self._path("ejabberd.yml"), "--logs", self._path("logs"),
                               *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)

    def stop(self):
        """Stop the node: ``ejabberdctl stop``, then SIGTERM, then SIGKILL, each given
        STOP_TIMEOUT seconds; wait for it."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                stopping = self.ctl("stop").returncode == 0
            except (OSError, subprocess.SubprocessError):
                stopping = False  # (not root nor the ejabberd user: exit 7) the signals will do
            if not stopping:
                proc.terminate()  # beam.smp's SIGTERM handler: init:stop(), as ejabberdctl's
            for escalate in ([proc.terminate] if stopping else []) + [proc.kill]:
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                    break
                except subprocess.TimeoutExpired:
                    escalate()
            proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    # ------------------------------------------------------------------ load

    def run_pairs(self, pairs, messages, batch, window, size, workers, progress, timeout):
        """Run the pairs shape (module docstring) -> {"sent", "acked", "delivered",
        "errors", "seconds", "acked_per_s", "delivered_per_s", "latency_ms": {"p50",
        "p90", "p99", "max"}, "problems": [the first errors]}.  ``errors`` counts connection
        and protocol errors plus one per sender or recipient unfinished ``timeout`` seconds
        after the start (registering and logging in get SETUP_TIMEOUT on top); ``seconds``
        runs from the senders' start to the last ack or delivery."""
        if self.proc is None:
            raise RuntimeError("Peer.run_pairs before Peer.start")
        if pairs < 1 or messages < 1 or window < 1:
            raise ValueError(f"pairs {pairs}, messages {messages}, window {window}: all must be at least 1")
        groups = split(list(range(pairs)), workers)
        barrier = multiprocessing.get_context("spawn").Barrier(len(groups))
        run = f"{os.getpid()}x{next(_runs)}"
        batch = max(1, min(batch, window))
        shards = [{"port": self.port, "domain": DOMAIN, "run": run, "pairs": g,
                   "messages": messages, "batch": batch, "window": window, "size": size,
                   "ack_every": max(batch, window // ACK_FRACTION), "barrier": barrier,
                   "timeout": timeout} for g in groups]
        return run_peer_shards(drive_shard, shards, progress, timeout)


def _erl_libs(ejabberdctl):
    """The ERL_LIBS ejabberdctl sets (where the package put ejabberd's applications)."""
    try:
        with open(ejabberdctl) as f:
            m = re.search(r"^ERL_LIBS='([^']+)'", f.read(), re.M)
        if m:
            return m.group(1)
    except OSError:
        pass
    hits = glob.glob("/usr/lib/*/ejabberd-*/ebin") + glob.glob("/usr/lib/ejabberd-*/ebin")
    if not hits:
        raise RuntimeError(f"cannot tell where ejabberd's Erlang applications are (no ERL_LIBS "
                           f"in {ejabberdctl}, no /usr/lib/*/ejabberd-*/ebin)")
    return os.path.dirname(os.path.dirname(hits[0]))


# ---------------------------------------------------------------------- in the workers


def drive_shard(shard, report):
    """run_shards' worker function: one shard of pairs (module docstring)."""
    import gevent
    from gevent.event import Event
    from imsrv.bench import xmpp
    st = PeerShard(shard)
    run, domain, messages = shard["run"], shard["domain"], shard["messages"]
    batch, window, ack_every, size = shard["batch"], shard["window"], shard["ack_every"], shard["size"]
    clients, greenlets = [], []

    def open_client(user):
        c = xmpp.Client("127.0.0.1", shard["port"], domain, timeout=SETUP_TIMEOUT)
        clients.append(c)
        c.connect()
        c.register(user, PASSWORD)  # False (it existed) is fine too
        c.login(user, PASSWORD)
        return c

    def recipient(c):
        got, latency = 0, st.latency.append
        MESSAGE, BODY = xmpp.MESSAGE, xmpp.BODY
        for elements in c.elements():
            now_us = time.monotonic_ns() // 1000
            n = 0
            for el in elements:
                if el.tag == MESSAGE:
                    body = el.find(BODY)
                    if el.attrs.get("type") == "error" or body is None:
                        st.error(f"recipient {c.jid}: unexpected {el!r}")
                        continue
                    text = body.text
                    latency(now_us - int(text[:text.index(":")]))
                    n += 1
                elif el.tag == xmpp.STREAM_ERROR:
                    st.error(f"recipient {c.jid}: stream error {el!r}")
            got += n
            st.delivered += n
            if got >= messages:
                return st.finish()
        st.error(f"recipient {c.jid}: the server closed the stream after {got} messages")

    def sender(c, to):
        head = b"<message type='chat' to='%s'><body>" % to.encode()
        tail = b"</body></message>"
        room = Event()
        state = {"acked": 0, "reading": True}

        def reader():
            inbound = 0  # stanzas the server sent us since <enable/>: our answer to its <r/>
            try:
                for elements in c.elements():
                    for el in elements:
                        if el.tag == xmpp.SM_A:
                            h = int(el.attrs.get("h", ""))
                            st.acked += h - state["acked"]
                            state["acked"] = h
                        elif el.tag == xmpp.SM_R:
                            c.write(xmpp.SM_ACK % inbound)
                        elif el.tag in (xmpp.MESSAGE, xmpp.PRESENCE, xmpp.IQ):
                            inbound += 1
                            if el.attrs.get("type") == "error":
                                st.error(f"sender {c.jid}: error {el!r}")
                        elif el.tag == xmpp.STREAM_ERROR:
                            st.error(f"sender {c.jid}: stream error {el!r}")
                    room.set()
                    if state["acked"] >= messages:
                        return st.finish()
                st.error(f"sender {c.jid}: the server closed the stream after {state['acked']} acks")
            finally:
                state["reading"] = False  # no ack will come any more: the sender gives up
                room.set()

        greenlets.append(gevent.spawn(st.guard, reader))
        sent = requested = 0
        while sent < messages:
            n = min(batch, messages - sent)
            while sent - state["acked"] + n > window and state["reading"]:
                room.clear()
                room.wait()
            if not state["reading"]:
                return
            t_us = time.monotonic_ns() // 1000
            stamp = b"%d:" % t_us
            stanza = head + stamp + b"x" * (size - len(stamp)) + tail
            parts = [stanza] * n
            sent += n
            following = min(batch, messages - sent)
            if (sent - requested >= ack_every or sent == messages
                    or sent - state["acked"] + following > window):
                parts.append(xmpp.SM_REQUEST)  # the ack that will make room comes from it
                requested = sent
            c.write(b"".join(parts))
            st.sent += n

    try:
        recipients, senders = [], []
        for i in shard["pairs"]:
            c = open_client(f"r{run}x{i}")
            c.write(b"<presence/>")
            c.sync("initial presence")  # processed: the recipient is available
            recipients.append(c)
        for i in shard["pairs"]:
            c = open_client(f"s{run}x{i}")
            c.enable_sm()
            senders.append(c)
        st.start(shard["barrier"])
        greenlets += [gevent.spawn(st.guard, recipient, c) for c in recipients]
        greenlets += [gevent.spawn(st.guard, sender, c, f"r{run}x{i}@{domain}")
                      for c, i in zip(senders, shard["pairs"])]
        st.wait(report)
        return st.result()
    finally:
        gevent.killall(greenlets, block=True, timeout=5)
        for c in clients:
            c.close()
