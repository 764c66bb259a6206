"""The SDK over WebSocket (``Client(api, mode="ws")``, imsrv/client/ws_transport.py) and
``imsrv chat --ws``, on both deployments: a server of this module's own with its WebSocket
ports on (this directory's servers have none), the SDK going to the ``websocket`` address
login names."""
import json

import pytest

from harness.procs import wait_until
from harness.servers import DEPLOYMENTS, merge_config, running_server
from harness.users import PASSWORD, unique_name
from imsrv.client import Client, ClientError, ConnectionLost
from imsrv.client.network import Conn
from imsrv.client.ws_transport import WsConn

from .chat_pty import run_chat
from .conftest import SDK_SERVER_CONFIG, befriend

pytestmark = pytest.mark.timeout(120)

#: the port number is the harness's (a free one per gateway); non-zero turns them on
WS_ON = merge_config(SDK_SERVER_CONFIG, {"server": {"websocket_port": 7080}})


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def ws_server(request, tmp_path_factory):
    with running_server(request.param, tmp_path_factory.mktemp(f"ws-{request.param}"), WS_ON,
                        name=f"ws-{request.param}") as srv:
        yield srv


def _all_websockets_live(srv):
    """Wait until login lists every gateway's WebSocket port (the distributed gateways'
    first load reports)."""
    probe = Client(srv.api_address, mode="ws")
    name = unique_name("wsp")
    probe.register(name, PASSWORD)
    try:
        wait_until(lambda: sorted(probe._api("login", user=name, password=PASSWORD)["websockets"])
                   == sorted(srv.websocket_addresses), timeout=15, what="every WebSocket port live")
    finally:
        probe.close()


def test_chat_over_websocket(ws_server, make_client):
    _all_websockets_live(ws_server)
    alice = make_client(ws_server, mode="ws")
    bob = make_client(ws_server, mode="ws")
    for c in (alice, bob):
        assert c.gateway in ws_server.websocket_addresses, c.gateway
        assert sorted(c.gateways) == sorted(ws_server.websocket_addresses)
        assert isinstance(c._link.conn, WsConn)
    befriend(alice, bob)
    got = []
    bob.on("message", lambda m: None if m.get("kind") else got.append(m))
    ack = alice.send(bob.user, {"text": "over a websocket"})
    assert ack["seq"] >= 1
    wait_until(lambda: got, what="bob got the message")
    assert got[0]["body"] == {"text": "over a websocket"} and got[0]["from"] == alice.user
    # a gateway request and its reply: presence of the other
    assert bob.presence([alice.user]) == {alice.user: "online"}


def test_websocket_and_tcp_clients_chat(ws_server, make_client):
    web = make_client(ws_server, mode="ws")
    tcp = make_client(ws_server)
    assert tcp.gateway in ws_server.gateway_addresses and web.gateway in ws_server.websocket_addresses
    befriend(web, tcp)
    got_web, got_tcp = [], []
    # each one's inbox: the other's message, and its own send
    web.on("message", lambda m: None if m.get("kind") else got_web.append((m["from"], m["body"])))
    tcp.on("message", lambda m: None if m.get("kind") else got_tcp.append((m["from"], m["body"])))
    web.send(tcp.user, "from the web")
    tcp.send(web.user, "from tcp")
    wait_until(lambda: len(got_web) == len(got_tcp) == 2, what="both got both")
    assert sorted(got_web) == sorted(got_tcp) == sorted([(web.user, "from the web"), (tcp.user, "from tcp")])


def test_offline_messages_arrive_after_reconnect_over_websocket(ws_server, make_client, tmp_path):
    """A WebSocket client's store keeps its cursor; what was sent while it was away comes
    by sync when it is back, each message once."""
    store = str(tmp_path / "bob.db")
    alice = make_client(ws_server, mode="ws")
    bob = make_client(ws_server, mode="ws", store=store)
    befriend(alice, bob)
    seen = []
    bob.on("message", lambda m: None if m.get("kind") else seen.append(m["body"]))
    alice.send(bob.user, "one")
    wait_until(lambda: seen == ["one"], what="bob got one")
    bob.close()
    for text in ("two", "three"):
        alice.send(bob.user, text)
    back = make_client(ws_server, user=bob.user, mode="ws", store=store, register=False)
    again = []
    back.on("message", lambda m: None if m.get("kind") else again.append(m["body"]))
    wait_until(lambda: again == ["two", "three"], what="bob's missed messages, once each")


def test_connection_cut_reconnects_over_websocket(ws_server, make_client):
    alice = make_client(ws_server, mode="ws", backoff_base=0.05, backoff_max=0.2)
    bob = make_client(ws_server, mode="ws")
    befriend(alice, bob)
    first = alice._link.conn
    got = []
    alice.on("message", lambda m: None if m.get("kind") else got.append(m["body"]))
    first.sock.close()   # the socket dies under the client (not a close handshake)
    wait_until(lambda: alice._link.conn is not None and alice._link.conn is not first and alice.state == "online",
               what="alice online again on a new WebSocket")
    assert isinstance(alice._link.conn, WsConn)
    bob.send(alice.user, "after the cut")
    wait_until(lambda: got == ["after the cut"], what="alice got it")


def test_websocket_handshake_refusals_are_connection_errors(ws_server):
    # the TCP gateway is no WebSocket port: it answers in line mode and closes
    with pytest.raises(ConnectionLost, match="before answering the WebSocket handshake .*too_large"):
        Conn(ws_server.gateway_address, "ws", 5)
    # a WebSocket port answers the handshake
    conn = Conn(ws_server.websocket_addresses[-1], "ws", 5)
    try:
        assert isinstance(conn, WsConn) and conn.mode == "ws"
        reply = conn.request("ping", timeout=5)
        assert reply["op"] == "error" and reply["code"] == "unauthorized"   # auth comes first
    finally:
        conn.close()


def test_login_without_websocket_ports_says_so(server):
    """This directory's ``server`` has its WebSocket ports off: mode "ws" cannot go online."""
    c = Client(server.api_address, mode="ws", timeout=5)
    try:
        name = unique_name("nows")
        c.register(name, PASSWORD)
        with pytest.raises(ClientError, match="named no websocket"):
            c.login(name, PASSWORD)
    finally:
        c.close()


def test_chat_cli_over_websocket(ws_server, make_client, tmp_path, pwfile):
    bob = make_client(ws_server, mode="ws")
    alice = make_client(ws_server)
    befriend(alice, bob)
    got = []
    bob.on("message", lambda m: None if m.get("kind") else got.append(m["body"]))
    base = ["--api", ws_server.api_address, "--user", alice.user, "--password-file", pwfile,
            "--store", str(tmp_path / "alice-chat.db"), "--ws"]
    r = run_chat(base + ["--json", "--send", bob.user, "from imsrv chat --ws"])
    assert r.returncode == 0, r
    assert json.loads(r.stdout)["event"] == "ack"
    wait_until(lambda: got, what="bob got it")
    assert got == [{"text": "from imsrv chat --ws"}]
