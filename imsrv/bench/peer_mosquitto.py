"""The Mosquitto peer of ``imsrv bench pairs --peer mosquitto``: the same pairs shape as
imsrv's, over MQTT 3.1.1 QoS 1 against a private Mosquitto.

``Peer(workdir)``; ``start()`` (a private broker on a free 127.0.0.1 port); ``run_pairs(...)``
as many rounds as the bench wants; ``stop()``.

Why a private broker: the shared service on 127.0.0.1:1883 keeps Mosquitto's defaults
(max_inflight_messages 20, max_queued_messages 1000: the window would be capped, queued
messages past 1000 dropped, and it has persistence on), and the bench must never
reconfigure or stop it.  The private one runs :data:`CONFIG`.

The shape: pair ``i`` is a recipient subscribed at QoS 1 to ``u/<run>/<i>`` (SUBACK
awaited; the workers meet at a barrier before any sender starts) and a sender that
publishes ``messages`` PUBLISHes there at QoS 1, ``batch`` per socket write, at most
``window`` without a PUBACK.  The payload is an imsrv-like JSON body
``{"t":<send time, µs>,"k":<n>,"text":"x"*size}`` (``size``: the body text length, as in
imsrv's pairs); the recipient PUBACKs it and takes publish -> delivery latency from ``t``.

The client, ``Peer(client=...)`` or ``IMSRV_BENCH_MQTT_CLIENT`` (default ``"raw"``):

- ``"raw"``: :mod:`imsrv.bench.mqtt`, pipelined, ``batch`` PUBLISHes per write, the
  PUBACKs of one read in one write;
- ``"paho"``: paho-mqtt 2 (``pip install paho-mqtt``), ``loop_start`` per connection (a
  greenlet in the gevent-patched workers); it reads every packet with 3+ ``recv()`` calls
  (one per header byte) and writes one packet per ``send()`` whatever ``batch`` is.

Measured on this 2-core box (50 pairs x 4000 messages, batch 10, window 1000, size 120, 2
workers, alternating): paho ~12k delivered/s, its workers at ~75 % CPU each, the broker at
~30 %: paho is the bottleneck.  raw ~40k/s, the broker at ~90 % of its one core, mostly
system time (Mosquitto 2.0.11 spends ~17 syscalls per message: it reads header bytes one
by one and toggles EPOLLOUT per write), the workers at ~47 %: the broker is.  Hence raw.
"""
import importlib.util
import multiprocessing
import os
import subprocess
import time
from itertools import count

from imsrv.bench.peer_common import (SETUP_TIMEOUT, PeerShard, free_port, log_tail, run_peer_shards,
                                      wait_listening)
from imsrv.bench.workers import split

#: the broker binary (Debian package ``mosquitto``)
MOSQUITTO = "/usr/sbin/mosquitto"
#: seconds the broker has to accept connections after it is started
START_TIMEOUT = 10.0
#: "raw" (imsrv.bench.mqtt) or "paho" (paho-mqtt); see the module docstring
DEFAULT_CLIENT = "raw"
CLIENT_ENV = "IMSRV_BENCH_MQTT_CLIENT"
CLIENTS = ("raw", "paho")
#: MQTT packet ids are 16 bits, so at most this many PUBLISHes can be unacknowledged
MAX_WINDOW = 65535

#: the private broker's config
CONFIG = """\
# imsrv bench: private Mosquitto (written by imsrv.bench.peer_mosquitto)
listener {port} 127.0.0.1
allow_anonymous true
# QoS 1 messages live in memory only: nothing is written to disk, nothing is fsync'd
persistence false
# no cap on PUBLISHes in flight to one subscriber (default 20) nor on its queue (1000),
# so the senders' window is the only limit
max_inflight_messages 0
max_queued_messages 0
# as imsrv's gateway: without it Nagle and delayed ACKs stall small windows by 40 ms
# (window 7: 460 msgs/s instead of 16k); large windows lose some throughput with it
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
connection_messages false
"""

_runs = count(1)


class Peer:
    name = "mosquitto"
    promise = ("PUBACK (QoS 1): the broker has the message in memory and queued for the "
               "subscriber; persistence false, nothing written to disk, no fsync")

    def __init__(self, workdir, client=None, binary=MOSQUITTO):
        self.workdir = workdir
        self.client = client or os.environ.get(CLIENT_ENV) or DEFAULT_CLIENT
        if self.client not in CLIENTS:
            raise ValueError(f"MQTT client {self.client!r} ({CLIENT_ENV}?): one of {', '.join(CLIENTS)}")
        if self.client == "paho" and importlib.util.find_spec("paho") is None:
            raise RuntimeError("MQTT client paho: pip install 'paho-mqtt>=2,<3' (imsrv's test extra)")
        self.binary = binary
        self.proc = None
        self.port = None
        self._log = None

    # ------------------------------------------------------------------ broker

    def start(self):
        """Start the private broker; return once it accepts connections."""
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"mosquitto not found at {self.binary}: apt-get install mosquitto")
        for attempt in range(3):  # the free port can be taken between probe and bind
            self.port = free_port()
            conf = os.path.join(self.workdir, "mosquitto.conf")
            with open(conf, "w") as f:
                f.write(CONFIG.format(port=self.port))
            self._log = open(os.path.join(self.workdir, "mosquitto.log"), "ab")
            self.proc = subprocess.Popen([self.binary, "-c", conf], stdin=subprocess.DEVNULL,
                                         stdout=self._log, stderr=subprocess.STDOUT)
            if self._wait_ready():
                return
            tail = self.log_tail()
            self.stop()
            if "in use" not in tail:
                break
        raise RuntimeError(f"private mosquitto did not accept connections on 127.0.0.1:{self.port} "
                           f"within {START_TIMEOUT:.0f} s; its log:\n{tail}")

    def _wait_ready(self):
        return wait_listening(self.proc, self.port, START_TIMEOUT, poll=0.05)

    def log_tail(self, lines=20):
        return log_tail(os.path.join(self.workdir, "mosquitto.log"), lines)

    def stop(self):
        """Terminate the private broker (SIGTERM, then SIGKILL after 10 s) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
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
        after the start (connecting and subscribing get SETUP_TIMEOUT on top); ``seconds``
        runs from the senders' start to the last PUBACK or delivery."""
        if self.proc is None:
            raise RuntimeError("Peer.run_pairs before Peer.start")
        if pairs < 1 or messages < 1:
            raise ValueError(f"pairs {pairs}, messages {messages}: both must be at least 1")
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window {window}: MQTT packet ids allow 1..{MAX_WINDOW} in flight")
        groups = split(list(range(pairs)), workers)
        barrier = multiprocessing.get_context("spawn").Barrier(len(groups))
        run = f"{os.getpid()}x{next(_runs)}"
        shards = [{"client": self.client, "port": self.port, "run": run, "pairs": g,
                   "messages": messages, "batch": max(1, batch), "window": window, "size": size,
                   "barrier": barrier, "timeout": timeout} for g in groups]
        return run_peer_shards(drive_shard, shards, progress, timeout)


# ---------------------------------------------------------------------- in the workers

def drive_shard(shard, report):
    """run_shards' worker function: one shard of pairs with the chosen client."""
    return (_drive_paho if shard["client"] == "paho" else _drive_raw)(shard, report)


class _Shard(PeerShard):
    """PeerShard with the MQTT payload: the send time in µs, then the body text."""

    def __init__(self, shard):
        super().__init__(shard)
        self.text = b"x" * shard["size"]

    def payload(self, k, t_us):
        return b'{"t":%d,"k":%d,"text":"%s"}' % (t_us, k, self.text)

    def delivered_at(self, payload, now_us):
        self.latency.append(now_us - int(payload[5:payload.index(b",", 5)]))


def _topic(run, i):
    return f"u/{run}/{i}"


def _drive_raw(shard, report):
    import gevent
    from gevent.event import Event
    from imsrv.bench import mqtt
    st = _Shard(shard)
    run, port, messages = shard["run"], shard["port"], shard["messages"]
    batch, window = min(shard["batch"], shard["window"]), shard["window"]
    clients, greenlets = [], []

    def open_client(cid):
        c = mqtt.Client("127.0.0.1", port, cid, connect_timeout=SETUP_TIMEOUT)
        clients.append(c)
        c.connect(timeout=SETUP_TIMEOUT)
        return c

    def recipient(c):
        got = 0
        PUBLISH, PINGRESP, latency = mqtt.PUBLISH, mqtt.PINGRESP, st.latency.append
        for packets in c.packets():
            now_us = time.monotonic_ns() // 1000
            ids = []
            for ptype, flags, body in packets:
                if ptype == PUBLISH and flags & 0x06 == 0x02:   # QoS 1, as subscribed
                    # inline parse_publish: topic length, topic, packet id, payload '{"t":'
                    pos = 2 + ((body[0] << 8) | body[1])
                    ids.append(body[pos:pos + 2])
                    pos += 7
                    latency(now_us - int(body[pos:body.index(b",", pos)]))
                elif ptype != PINGRESP:
                    st.error(f"recipient {c.client_id}: unexpected packet type {ptype} flags {flags}")
            got += len(ids)
            st.delivered += len(ids)
            if ids:  # PUBACK = 0x40 0x02 <packet id>: all of this read's in one write
                c.write(b"\x40\x02" + b"\x40\x02".join(ids))
            if got >= messages:
                return st.finish()
        st.error(f"recipient {c.client_id}: the broker closed the connection after {got} messages")

    def sender(c, topic):
        topic = topic.encode()
        room = Event()
        state = {"sent": 0, "acked": 0}

        def reader():
            for packets in c.packets():
                n = 0
                for ptype, _, _ in packets:
                    if ptype == mqtt.PUBACK:
                        n += 1
                    elif ptype != mqtt.PINGRESP:
                        st.error(f"sender {c.client_id}: unexpected packet type {ptype}")
                state["acked"] += n
                st.acked += n
                room.set()
                if state["acked"] >= messages:
                    return st.finish()
            st.error(f"sender {c.client_id}: the broker closed the connection after "
                     f"{state['acked']} PUBACKs")
            room.set()

        greenlets.append(gevent.spawn(st.guard, reader))
        k, pid, publish = 0, 0, mqtt.encode_publish
        while k < messages:
            n = min(batch, messages - k)
            while state["sent"] - state["acked"] + n > window:
                room.clear()
                room.wait()
            parts, t_us = [], time.monotonic_ns() // 1000
            for _ in range(n):
                pid = pid % MAX_WINDOW + 1
                parts.append(publish(topic, st.payload(k, t_us), 1, pid))
                k += 1
            c.write(b"".join(parts))
            state["sent"] += n
            st.sent += n

    try:
        for i in shard["pairs"]:
            open_client(f"b{run}r{i}").subscribe(_topic(run, i), timeout=SETUP_TIMEOUT)
        recipients = clients[:]
        senders = [open_client(f"b{run}s{i}") for i in shard["pairs"]]
        st.start(shard["barrier"])
        greenlets += [gevent.spawn(st.guard, recipient, c) for c in recipients]
        greenlets += [gevent.spawn(st.guard, sender, c, _topic(run, i))
                      for c, i in zip(senders, shard["pairs"])]
        st.wait(report)
        return st.result()
    finally:
        gevent.killall(greenlets, block=True, timeout=5)
        for c in clients:
            c.close()


def _drive_paho(shard, report):
    import gevent
    import paho.mqtt.client as paho
    from gevent.event import Event
    from gevent.lock import Semaphore
    st = _Shard(shard)
    run, messages, batch, window = shard["run"], shard["messages"], shard["batch"], shard["window"]
    clients, greenlets, received = [], [], {}

    def open_client(cid):
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=cid, protocol=paho.MQTTv311)
        c.max_inflight_messages_set(window + batch)  # our window is the limit, not paho's
        c.max_queued_messages_set(0)
        connected, subscribed = Event(), Event()
        c.on_connect = lambda client, userdata, flags, rc, props: connected.set()
        c.on_subscribe = lambda client, userdata, mid, codes, props: subscribed.set()
        c.on_message = lambda client, userdata, msg: on_message(msg)
        c.subscribed = subscribed
        clients.append(c)
        c.connect("127.0.0.1", shard["port"], keepalive=60)
        c.loop_start()
        if not connected.wait(SETUP_TIMEOUT) or not c.is_connected():
            raise RuntimeError(f"paho client {cid}: no CONNACK, or CONNECT refused")
        return c

    def on_message(msg):
        st.delivered_at(msg.payload, time.monotonic_ns() // 1000)
        st.delivered += 1
        received[msg.topic] = received.get(msg.topic, 0) + 1
        if received[msg.topic] == messages:
            st.finish()

    def sender(c, topic):
        room, acked = Semaphore(window), [0]

        def on_publish(client, userdata, mid, rc, props):
            acked[0] += 1
            st.acked += 1
            room.release()
            if acked[0] == messages:
                st.finish()

        c.on_publish = on_publish
        for k in range(messages):
            room.acquire()
            if c.publish(topic, st.payload(k, time.monotonic_ns() // 1000), qos=1).rc:
                st.error(f"paho sender {topic}: publish failed")
            st.sent += 1
            if (k + 1) % batch == 0:
                gevent.sleep(0)  # a yield (not a wait): let paho's loop greenlet write

    try:
        for i in shard["pairs"]:
            c = open_client(f"b{run}r{i}")
            if c.subscribe(_topic(run, i), qos=1)[0] or not c.subscribed.wait(SETUP_TIMEOUT):
                raise RuntimeError(f"paho: SUBSCRIBE {_topic(run, i)} not acknowledged")
        senders = [open_client(f"b{run}s{i}") for i in shard["pairs"]]
        st.start(shard["barrier"])
        greenlets += [gevent.spawn(st.guard, sender, c, _topic(run, i))
                      for c, i in zip(senders, shard["pairs"])]
        st.wait(report)
        return st.result()
    finally:
        gevent.killall(greenlets, block=True, timeout=5)
        for c in clients:
            c.disconnect()
            c.loop_stop()
