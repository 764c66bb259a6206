"""The network layer against scripted fake peers (framing, id matching, heartbeat)."""
import pytest
from gevent.server import StreamServer

from imsrv import codec
from imsrv.client import ConnectionLost, Timeout
from imsrv.client.link import Backoff
from imsrv.client.network import Conn, format_addr, parse_addr

from harness.procs import wait_until

pytestmark = pytest.mark.timeout(30)


def test_parse_addr():
    assert parse_addr("example.org:7001") == ("example.org", 7001)
    assert parse_addr(":7001") == ("127.0.0.1", 7001)
    assert parse_addr("[::1]:7000") == ("::1", 7000)
    assert parse_addr(("h", "5")) == ("h", 5)
    assert parse_addr("host", default_port=7001) == ("host", 7001)
    assert format_addr(("::1", 7000)) == "[::1]:7000"
    with pytest.raises(ValueError):
        parse_addr("host")
    with pytest.raises(ValueError):
        parse_addr("host:port")


def test_backoff_grows_with_jitter_and_is_capped():
    b = Backoff(base=0.5, cap=30.0)
    for attempt in range(1, 20):
        d = min(30.0, 0.5 * 2 ** (attempt - 1))
        samples = [b.delay(attempt) for _ in range(50)]
        assert all(d / 2 <= s <= d for s in samples)
        assert len(set(samples)) > 1          # jitter
    assert b.delay(0) == 0.0
    assert b.delay(1000) <= 30.0


class FakePeer:
    """A server that decodes frames in ``mode`` and lets the test script the answers."""

    def __init__(self, mode, handler):
        self.mode = mode
        self.handler = handler
        self.received = []
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.addr = f"127.0.0.1:{self.server.address[1]}"

    def _handle(self, sock, addr):
        dec = codec.Decoder(65536)
        while True:
            data = sock.recv(65536)
            if not data:
                return
            for frame in dec.feed(data):
                self.received.append(frame)
                assert dec.mode == self.mode
                for out in self.handler(frame):
                    sock.sendall(codec.encode(out, self.mode))

    def stop(self):
        self.server.stop(timeout=1)


@pytest.mark.parametrize("mode", ["binary", "line"])
def test_replies_matched_by_id_and_pushes_passed_on(mode):
    held = []

    def handler(frame):
        if frame["op"] == "hold":
            held.append(frame)
            return []
        if frame["op"] == "release":
            # answer the held requests last and in reverse order, with a push in between
            out = [{"op": "ok", "id": frame["id"], "what": "release"}, {"op": "msg", "seq": 1}]
            out += [{"op": "ok", "id": f["id"], "n": f["n"]} for f in reversed(held)]
            return out
        return [{"op": "presence", "id": frame["id"], "statuses": {}}]

    peer = FakePeer(mode, handler)
    pushes = []
    conn = Conn(peer.addr, mode=mode, on_push=lambda c, f: pushes.append(f))
    try:
        waiters = [conn.request_async("hold", n=i) for i in range(3)]
        # a reply whose op is also a push op is still a reply when its id matches
        assert conn.request("presence", timeout=5, users=[])["op"] == "presence"
        assert conn.request("release", timeout=5)["what"] == "release"
        assert [w.get(timeout=5)["n"] for w in waiters] == [0, 1, 2]
        assert pushes == [{"op": "msg", "seq": 1}]
    finally:
        conn.close()
        peer.stop()


def test_waiters_fail_when_the_connection_closes():
    peer = FakePeer("binary", lambda frame: [])
    conn = Conn(peer.addr)
    try:
        w = conn.request_async("anything")
        with pytest.raises(Timeout):
            conn.request("ping", timeout=0.2)
        peer.stop()
        conn.close("test closes it")
        with pytest.raises(ConnectionLost):
            w.get(timeout=5)
        with pytest.raises(ConnectionLost):
            conn.request("ping", timeout=1)
    finally:
        conn.close()


def test_heartbeat_pings_when_idle_and_declares_a_silent_peer_dead():
    answer = {"pong": True}

    def handler(frame):
        if frame["op"] == "ping" and answer["pong"]:
            return [{"op": "pong", "id": frame["id"]}]
        return []

    peer = FakePeer("binary", handler)
    conn = Conn(peer.addr)
    try:
        conn.start_heartbeat(0.1, 0.3)
        # idle: it pings every 0.1 s; answered pings keep it open past the 0.3 s timeout
        # (4 pings span at least 0.3 s)
        wait_until(lambda: sum(1 for f in peer.received if f["op"] == "ping") >= 4, timeout=5, what="4 pings")
        assert not conn.closed
        answer["pong"] = False                # the peer goes silent
        assert conn.done.wait(timeout=3)
        assert "dead connection" in conn.close_reason
    finally:
        conn.close()
        peer.stop()


def test_connect_failure_is_connection_lost():
    from harness.procs import free_ports

    (port,) = free_ports(1)
    with pytest.raises(ConnectionLost) as e:
        Conn(f"127.0.0.1:{port}", connect_timeout=2)
    assert str(port) in str(e.value)
