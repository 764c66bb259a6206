"""The SDK's outbox against a scripted fake API and gateway, for what a real server cannot
be made to do on cue: answer each send with ``rate_limited`` at a chosen moment."""
import gevent
import pytest
from gevent.server import StreamServer

from imsrv import codec
from imsrv.client import Client

pytestmark = pytest.mark.timeout(30)


class Peer:
    """A server speaking binary frames; ``handler(frame, send)`` answers (now or later)."""

    def __init__(self, handler):
        self.handler = handler
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.addr = f"127.0.0.1:{self.server.address[1]}"

    def _handle(self, sock, addr):
        dec = codec.Decoder(65536)

        def send(obj):
            sock.sendall(codec.encode(obj, codec.BINARY))

        while True:
            data = sock.recv(65536)
            if not data:
                return
            for frame in dec.feed(data):
                self.handler(frame, send)

    def stop(self):
        self.server.stop(timeout=1)


def test_sends_held_for_different_retry_times_are_all_resent():
    """Two sends refused with rate_limited 50 ms apart: the first one's retry timer must
    not leave the second held for ever (each is resent once its own retry_after is up)."""
    attempts = {}

    def gateway(frame, send):
        op, rid = frame["op"], frame.get("id")
        if op == "auth":
            send({"op": "ok", "id": rid, "user": "alice", "head": 0})
        elif op == "sync":
            send({"op": "sync", "id": rid, "msgs": [], "head": 0, "more": False})
        elif op == "ping":
            send({"op": "pong", "id": rid})
        elif op == "send":
            n = attempts[frame["cmid"]] = attempts.get(frame["cmid"], 0) + 1
            if n > 1:
                seq = 1 + sorted(attempts).index(frame["cmid"])
                send({"op": "ack", "id": rid, "mid": seq, "seq": seq, "ts": 0})
                return
            refused = {"op": "error", "id": rid, "code": "rate_limited", "message": "slow down",
                       "retry_after": 0.2}
            if frame["cmid"] == "c1":
                send(refused)
            else:                      # c2: refused 50 ms later, so held 50 ms longer
                gevent.spawn_later(0.05, send, refused)

    gw = Peer(gateway)
    api = Peer(lambda frame, send: send({"op": "ok", "id": frame.get("id"), "user": "alice", "token": "t",
                                         "gateway": gw.addr, "gateways": [gw.addr], "expires_in": 3600}))
    c = Client(api.addr, timeout=5, backoff_base=0.05, backoff_max=0.5)
    try:
        c.login("alice", "pw")
        h1 = c.send("bob", {"text": "1"}, cmid="c1", wait=False)
        h2 = c.send("bob", {"text": "2"}, cmid="c2", wait=False)
        assert h1.get(5)["seq"] == 1
        assert h2.get(5)["seq"] == 2
        assert attempts == {"c1": 2, "c2": 2} and c.pending_sends() == []
    finally:
        c.close()
        gw.stop()
        api.stop()
