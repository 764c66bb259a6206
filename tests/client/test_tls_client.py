"""The SDK, `imsrv chat` and `imsrv call` over TLS, and `imsrv cert`.

The servers here (both deployments) have a certificate for the host name ``localhost``
only, the way a real deployment has one for its name: they advertise their gateways as
``localhost:PORT`` (embedded: ``server.advertise``; distributed: ``cluster.public_host``),
so the SDK reaches the API and the gateway a login names by that name, and a client that
connects to 127.0.0.1 instead fails the host name check.  The clients trust the
certificate as their CA file (``ca_file=`` / ``--ca-file``).
"""
import os
import socket
import ssl
import subprocess
import sys

import pytest

from harness.procs import REPO_ROOT, in_thread, wait_until
from harness.servers import DEPLOYMENTS, make_server, merge_config, start_server, stop_server, to_toml
from harness.users import PASSWORD, unique_name
from imsrv import config
from imsrv.cli import cert
from imsrv.client import Client, ConnectionLost

from .chat_pty import run_chat
from .conftest import SDK_SERVER_CONFIG, befriend

pytestmark = pytest.mark.timeout(120)

NAME = "localhost"   # the one name of the certificate


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory):
    crt, key, _ = cert.write(tmp_path_factory.mktemp("tls-client-cert"), names=[NAME])
    return crt, key


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def tls_server(request, tmp_path_factory, cert_files):
    """A TLS server (plain allowed too) whose gateways are advertised as localhost:PORT."""
    crt, key = cert_files
    own = {"tls": {"cert": crt, "key": key}}
    if request.param == "distributed":
        own["cluster"] = {"public_host": NAME}
    srv = make_server(request.param, tmp_path_factory.mktemp(f"tls-sdk-{request.param}"),
                      merge_config(SDK_SERVER_CONFIG, own), name="tls-sdk")
    if request.param == "embedded":   # its ports are chosen now: advertise the gateway's by name
        srv.config = merge_config(srv.config, {"server": {"advertise": f"{NAME}:{srv.gateway_port}"}})
        srv.config_path.write_text(to_toml(srv.config))
    start_server(srv)
    srv.tls_api = f"{NAME}:{srv.api_port}"
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture
def clients(cert_files):
    """make(api, **Client kwargs) -> a Client trusting the certificate; all closed after."""
    made = []

    def make(api, **kw):
        kw.setdefault("ca_file", cert_files[0])
        kw.setdefault("timeout", 5.0)
        c = Client(api, device="dev", **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def _user(make, api):
    c = make(api)
    name = unique_name("tl")
    c.register(name, PASSWORD)
    c.login(name, PASSWORD)
    return c


def test_sdk_over_tls(tls_server, clients):
    """Register, login, the gateway the login names (by host name), friends, a message
    each way, presence: all through TLS, the certificate and host name checked."""
    alice, bob = _user(clients, tls_server.tls_api), _user(clients, tls_server.tls_api)
    assert alice.gateway.startswith(f"{NAME}:") and alice.gateway.rsplit(":", 1)[1] in \
        [str(p) for p in tls_server.gateway_ports], alice.gateway
    conn = alice._link.conn
    assert conn.tls and conn.sock.version() in ("TLSv1.2", "TLSv1.3")
    got, presence = [], []
    bob.on("message", lambda m: None if m.get("kind") else got.append(m))
    alice.on("presence", lambda p: presence.append(p))
    befriend(alice, bob)
    ack = alice.send(bob.user, {"text": "over tls"})
    assert ack["mid"]
    wait_until(lambda: got, what="bob got the message")
    assert got[0]["body"] == {"text": "over tls"} and got[0]["from"] == alice.user
    bob.set_status("away")
    wait_until(lambda: any(p.get("user") == bob.user and p.get("status") == "away" for p in presence),
               what="alice saw bob away")


def test_sdk_checks_certificate_and_host_name(tls_server, clients):
    """The default context checks both: the right certificate by an address it does not
    name (127.0.0.1), or a certificate no system CA signed, is refused before anything
    is sent; a plain client still gets in (TLS is not required on this server)."""
    api_ip = f"127.0.0.1:{tls_server.api_port}"
    with pytest.raises(ConnectionLost, match="mismatch"):
        clients(api_ip).register(unique_name("tl"), PASSWORD)
    with pytest.raises(ConnectionLost, match="certificate"):
        clients(tls_server.tls_api, ca_file=None, tls=True).register(unique_name("tl"), PASSWORD)
    name = unique_name("tl")
    clients(api_ip, ca_file=None).register(name, PASSWORD)   # plain, on the same port
    own = ssl.create_default_context(cafile=tls_server.config["tls"]["cert"])
    c = clients(tls_server.tls_api, ca_file=None, tls=own)   # an SSLContext of the application's
    c.login(name, PASSWORD)
    assert c._link.conn.tls
    with pytest.raises(ValueError):
        Client(tls_server.tls_api, tls=own, ca_file=tls_server.config["tls"]["cert"])


def test_chat_and_call_over_tls(tls_server, clients, cert_files, tmp_path, pwfile):
    """`imsrv chat --tls --ca-file F` sends, the message arrives; with --tls and no CA file
    the certificate is refused, and with the CA file but an address the certificate does
    not name the host name is (exit 1, said on stderr).  `imsrv call --ca-file F` too."""
    alice, bob = _user(clients, tls_server.tls_api), _user(clients, tls_server.tls_api)
    befriend(alice, bob)
    got = []
    bob.on("message", lambda m: None if m.get("kind") else got.append(m))
    tail = ["--user", alice.user, "--password-file", pwfile, "--store", str(tmp_path / "chat.db")]
    r = run_chat(["--api", tls_server.tls_api, "--tls", "--ca-file", cert_files[0]] + tail
                 + ["--send", bob.user, "hello over tls"])
    assert r.returncode == 0 and "sent to" in r.stdout, r
    wait_until(lambda: got, what="bob got the chat's message")
    assert got[0]["body"] == {"text": "hello over tls"} and got[0]["from"] == alice.user
    r = run_chat(["--api", tls_server.tls_api, "--tls"] + tail + ["--send", bob.user, "no CA file"])
    assert r.returncode == 1 and "certificate" in r.stderr, r
    r = run_chat(["--api", f"127.0.0.1:{tls_server.api_port}", "--ca-file", cert_files[0]] + tail
                 + ["--send", bob.user, "wrong name"])
    assert r.returncode == 1 and "mismatch" in r.stderr, r
    assert [m["body"] for m in got] == [{"text": "hello over tls"}]

    def call(*args):
        return in_thread(lambda: subprocess.run([sys.executable, "-m", "imsrv.cli.main", "call", "--api",
                                                 tls_server.tls_api, *args], capture_output=True, text=True,
                                                timeout=30, cwd=str(REPO_ROOT)))
    r = call("--ca-file", cert_files[0], "login", f"user={alice.user}", f"password={PASSWORD}")
    assert r.returncode == 0 and '"token"' in r.stdout, r
    r = call("--tls", "login", f"user={alice.user}", f"password={PASSWORD}")
    assert r.returncode == 1 and "certificate" in r.stderr, r


# ------------------------------------------------------------------ imsrv cert


def _imsrv_cert(cwd, *args):
    return in_thread(lambda: subprocess.run([sys.executable, "-m", "imsrv.cli.main", "cert", *args], cwd=str(cwd),
                                            capture_output=True, text=True, timeout=60,
                                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT))))


def _names(path):
    from cryptography import x509
    crt = x509.load_pem_x509_certificate(open(path, "rb").read())
    san = crt.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | \
        {str(v) for v in san.get_values_for_type(x509.IPAddress)}


def test_imsrv_cert_writes_the_files(tmp_path):
    """`imsrv cert` writes imsrv.crt and imsrv.key (0600) into the current directory, for
    localhost, 127.0.0.1, ::1 and the host name; says what it wrote and the config lines;
    refuses to overwrite without --force.  The config takes the pair (and refuses a key
    that is not the certificate's, or one without the other)."""
    r = _imsrv_cert(tmp_path)
    assert r.returncode == 0, r
    crt, key = tmp_path / "imsrv.crt", tmp_path / "imsrv.key"
    assert f"wrote {crt}" in r.stdout and f"wrote {key}" in r.stdout, r.stdout
    assert f'cert = "{crt}"' in r.stdout and f'key = "{key}"' in r.stdout and "IMSRV_TLS_CERT=" in r.stdout
    assert (os.stat(key).st_mode & 0o777) == 0o600
    assert {"localhost", "127.0.0.1", "::1", socket.gethostname()} <= _names(crt), _names(crt)
    first = crt.read_bytes()
    r = _imsrv_cert(tmp_path)
    assert r.returncode == 1 and "exists" in r.stderr and "--force" in r.stderr, r
    assert crt.read_bytes() == first
    r = _imsrv_cert(tmp_path, "--force", "--host", "chat.example.test")
    assert r.returncode == 0 and crt.read_bytes() != first, r
    assert "chat.example.test" in _names(crt)
    cfg = config.load(env={"IMSRV_TLS_CERT": str(crt), "IMSRV_TLS_KEY": str(key)})
    assert cfg.tls.cert == str(crt) and cfg.tls.required is False
    other = tmp_path / "other"
    other.mkdir()
    assert _imsrv_cert(other).returncode == 0
    with pytest.raises(config.ConfigError, match="cannot be used"):
        config.load(env={"IMSRV_TLS_CERT": str(crt), "IMSRV_TLS_KEY": str(other / "imsrv.key")})
    with pytest.raises(config.ConfigError, match="go together"):
        config.load(env={"IMSRV_TLS_CERT": str(crt)})
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(env={"IMSRV_TLS_CERT": str(tmp_path / "nope.crt"), "IMSRV_TLS_KEY": str(key)})
