"""The WSGI app of the WebSocket port (imsrv/web/app.py): the page's files with their
content types and caching, the security headers, 404/405/HEAD; POST /api relayed to the
API service with its status codes (imsrv/web/relay.py).

The app is called directly (a WSGI environ, no server) where that is enough, against real
sockets where the relay's peer matters (an unreachable API, one that never answers), and
over HTTP on the real embedded server's WebSocket port (register and login through
POST /api, then the token on the gateway), and over HTTPS on a server that requires TLS
(the relay then reaches the API port over TLS).  On both deployments (the distributed
gateways serve the page too), from several loopback source addresses (127.0.0.2...): the
API throttles failed logins per browser address, not per relay; a forged relay key is
refused on the API port; POST /api is rate-limited per browser address (429); and
(distributed) a relay key made anew in Redis is re-read by the API daemon and the relay.
"""
import http.client
import io
import json
import socket
import ssl
import subprocess
import sys
import time
from wsgiref.util import setup_testing_defaults

import pytest

from harness.procs import HOST, REPO_ROOT, free_ports, wait_until
from harness.servers import DEPLOYMENTS, running_server
from harness.users import PASSWORD, unique_name
from imsrv import config
from imsrv.cli import cert
from imsrv.web import static
from imsrv.web.app import etag_matches, make_app

TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}


def cfg(**limits):
    return config.load(env={}, overrides={("limits", k): v for k, v in limits.items()})


def call(app, method="GET", path="/", body=b"", headers=None):
    """-> (status int, {header lower: value}, body bytes) of one request to ``app``."""
    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "HTTP_HOST": "chat.example.com:7080",
           "wsgi.input": io.BytesIO(body)}
    if body or method == "POST":
        env["CONTENT_LENGTH"] = str(len(body))
    for k, v in (headers or {}).items():
        key = k.upper().replace("-", "_")
        env[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key] = v
    env = {k: v for k, v in env.items() if v is not None}
    setup_testing_defaults(env)
    got = {}

    def start_response(status, hdrs, exc_info=None):
        got["status"] = int(status.split()[0])
        got["headers"] = {k.lower(): v for k, v in hdrs}

    out = b"".join(app(env, start_response))
    return got["status"], got["headers"], out


def api_post(app, obj, **headers):
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    headers.setdefault("Content-Type", "application/json")
    return call(app, "POST", "/api", body, headers)


@pytest.fixture(scope="module")
def unreachable():
    """An app whose API address is a port nobody listens on."""
    return make_app(cfg(), (HOST, free_ports(1)[0]))


# ---------------------------------------------------------------------------- the page


def test_every_page_file_is_served_with_its_type(unreachable):
    files = static.load()
    assert {"/", "/index.html", "/style.css", "/favicon.svg", "/js/main.js", "/js/chat.js"} <= set(files)
    for path, f in files.items():
        status, headers, body = call(unreachable, "GET", path)
        ext = "." + path.rsplit(".", 1)[-1] if "." in path else ".html"
        assert status == 200, path
        assert headers["content-type"] == TYPES[ext], path
        assert body == f.body and headers["content-length"] == str(len(body))
        assert headers["cache-control"] == "no-cache" and headers["etag"] == f.etag
        assert headers["x-content-type-options"] == "nosniff"
    assert call(unreachable, "GET", "/")[2].startswith(b"<!doctype html>")


def test_security_headers(unreachable):
    _, headers, _ = call(unreachable, "GET", "/")
    csp = headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "connect-src 'self' ws://chat.example.com:7080 wss://chat.example.com:7080" in csp
    assert headers["referrer-policy"] == "no-referrer" and headers["x-frame-options"] == "DENY"
    # a Host that is no host[:port] never reaches a header
    _, headers, _ = call(unreachable, "GET", "/", headers={"Host": "evil.example; script-src *"})
    assert "evil" not in headers["content-security-policy"]
    assert "connect-src 'self';" in headers["content-security-policy"]


def test_revalidation_head_and_methods(unreachable):
    _, headers, body = call(unreachable, "GET", "/style.css")
    status, h304, body304 = call(unreachable, "GET", "/style.css", headers={"If-None-Match": headers["etag"]})
    assert status == 304 and body304 == b"" and h304["etag"] == headers["etag"]
    status, hhead, bhead = call(unreachable, "HEAD", "/style.css")
    assert status == 200 and bhead == b"" and hhead["content-length"] == str(len(body))
    status, h405, b405 = call(unreachable, "POST", "/", b"x")
    assert status == 405 and h405["allow"] == "GET, HEAD" and b"not allowed" in b405
    status, h405, _ = call(unreachable, "GET", "/api")
    assert status == 405 and h405["allow"] == "POST"


def test_if_none_match_is_matched_by_entity_tag(unreachable):
    """304 only for an If-None-Match naming the file's entity tag exactly (in a list, weak
    or not) or ``*``, never for a tag that merely contains it; the 304 carries the same
    security headers (the CSP too) as the 200."""
    _, h200, _ = call(unreachable, "GET", "/style.css")
    etag = h200["etag"]
    for header in (etag, f'"other", {etag}', f"W/{etag}", f'W/"other",W/{etag} ', "*"):
        status, h304, body = call(unreachable, "GET", "/style.css", headers={"If-None-Match": header})
        assert (status, body) == (304, b""), header
        for name in ("content-security-policy", "x-content-type-options", "referrer-policy", "x-frame-options",
                     "etag", "cache-control"):
            assert h304[name] == h200[name], (header, name)
    inner = etag.strip('"')
    for header in (f'"x{inner}x"', f'"{inner[:-1]}"', inner, f'"a,{inner}"', ""):
        status, _, body = call(unreachable, "GET", "/style.css", headers={"If-None-Match": header})
        assert status == 200 and body, header
    assert not etag_matches(None, etag) and etag_matches(" * ", etag)


@pytest.mark.parametrize("path", ["/nope", "/js/", "/js", "/../setup.py", "/static/index.html", "/js/../index.html"])
def test_other_paths_are_404(unreachable, path):
    status, headers, body = call(unreachable, "GET", path)
    assert status == 404 and headers["content-type"] == "text/plain; charset=utf-8"
    assert body.startswith(b"not found")


def test_package_data_ships_every_page_file(tmp_path):
    """setup.py's package_data installs every file of imsrv/web/static (build_py copies
    what an install would)."""
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(tmp_path)], cwd=REPO_ROOT,
                   check=True, capture_output=True, timeout=120)
    source = REPO_ROOT / "imsrv" / "web" / "static"
    built = tmp_path / "imsrv" / "web" / "static"
    want = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
    assert sorted(str(p.relative_to(built)) for p in built.rglob("*") if p.is_file()) == want


# ---------------------------------------------------------------------------- POST /api


@pytest.mark.parametrize("body,headers,status,code", [
    (b"{not json", {}, 400, "bad_json"),
    (b"[1, 2]", {}, 400, "bad_json"),
    (b"", {}, 400, "bad_json"),
    (b'{"op": "login"}', {"Content-Type": "text/plain"}, 415, "bad_request"),
    (b'{"op": "login"}', {"Content-Type": None}, 415, "bad_request"),
    (b'{"op": "login"}', {"Origin": "https://elsewhere.example"}, 403, "forbidden"),
])
def test_api_refusals(unreachable, body, headers, status, code):
    got, hdrs, out = api_post(unreachable, body, **headers)
    reply = json.loads(out)
    assert (got, reply["op"], reply["code"]) == (status, "error", code), reply
    assert hdrs["content-type"] == "application/json" and hdrs["cache-control"] == "no-store"


def test_api_size_and_length(unreachable):
    big = b'{"op":"login","user":"' + b"x" * 70000 + b'"}'
    status, _, out = api_post(unreachable, big)
    assert status == 413 and json.loads(out)["code"] == "too_large"
    status, _, out = call(unreachable, "POST", "/api", b"", {"Content-Type": "application/json",
                                                            "Content-Length": None})
    assert status == 411


def test_api_unreachable_is_502(unreachable):
    status, _, out = api_post(unreachable, {"op": "login", "id": 7, "user": "x", "password": "y"})
    reply = json.loads(out)
    assert status == 502 and reply["code"] == "unavailable" and reply["id"] == 7
    assert "cannot be reached" in reply["message"]


def test_api_that_never_answers_is_504():
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(1)
    try:
        app = make_app(cfg(api_idle_timeout=0.3), listener.getsockname())
        # the relay connects (the backlog accepts it) and waits 0.3 s for a reply that never comes
        status, _, out = api_post(app, {"op": "login", "user": "x", "password": "y"})
        assert status == 504 and json.loads(out)["code"] == "unavailable"
    finally:
        listener.close()


# ---------------------------------------------------------------------- the real server


def http_request(server, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(server.host, server.ws_port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        res = conn.getresponse()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
    finally:
        conn.close()


def test_page_on_the_websocket_port(web_server):
    status, headers, body = http_request(web_server, "GET", "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8" and b"/js/main.js" in body
    for path, ctype in (("/js/main.js", TYPES[".js"]), ("/style.css", TYPES[".css"]), ("/favicon.svg", TYPES[".svg"])):
        status, headers, _ = http_request(web_server, "GET", path)
        assert (status, headers["content-type"]) == (200, ctype), path
    status, headers, body = http_request(web_server, "HEAD", "/js/main.js")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    assert http_request(web_server, "GET", "/missing")[0] == 404


def test_register_and_login_through_post_api(web_server):
    def api(obj, **headers):
        status, hdrs, body = http_request(web_server, "POST", "/api", json.dumps(obj).encode(),
                                          {"Content-Type": "application/json", **headers})
        assert hdrs["content-type"] == "application/json"
        return status, json.loads(body)

    name = unique_name("web")
    origin = f"http://{web_server.host}:{web_server.ws_port}"   # the page's own origin
    assert api({"op": "register", "id": 1, "user": name, "password": PASSWORD}, Origin=origin) == \
        (200, {"op": "ok", "id": 1, "user": name})
    status, reply = api({"op": "login", "id": "x", "user": name, "password": PASSWORD, "device": "web-1"})
    assert status == 200 and reply["op"] == "ok" and reply["id"] == "x" and reply["user"] == name
    with web_server.gateway() as g:   # the token works on the gateway
        assert g.auth(reply["token"], "web-1")["user"] == name
    # the API's own errors are relayed as they are, with 200
    status, reply = api({"op": "login", "user": name, "password": "wrong-password"})
    assert status == 200 and (reply["op"], reply["code"]) == ("error", "unauthorized")
    status, reply = api({"op": "no_such_op"})
    assert status == 200 and reply["code"] == "unknown_op"
    status, reply = api({"op": "login"}, Origin="http://evil.example")
    assert status == 403 and reply["code"] == "forbidden"


#: the Content-Length a refused request announces: far more than it sends
ANNOUNCED = 100_000_000


@pytest.mark.parametrize("headers,part,status", [
    (b"Content-Type: application/json\r\nContent-Length: %d\r\n" % ANNOUNCED, b"{" * 1000, 413),
    (b"Content-Type: text/plain\r\nContent-Length: %d\r\n" % ANNOUNCED, b"{" * 1000, 415),
    (b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n", b"3e8\r\n" + b"{" * 1000 + b"\r\n", 411),
], ids=["413", "415", "411-chunked"])
def test_a_refused_post_api_is_closed_without_reading_its_body(web_server, headers, part, status):
    """A POST /api refused before its body is read (413 over max_frame, 415, 411 for a
    chunked body) is answered with Connection: close and the connection is closed at
    once (the client's recv sees the end within 2 s) instead of the server reading the
    announced 100 MB to its end; a client that streams on is cut (its send fails) long
    before the 100 MB are through."""
    before = web_server.count("event=http_body_skipped")
    sock = socket.create_connection((web_server.host, web_server.ws_port), timeout=10)
    try:
        sock.sendall(b"POST /api HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n%s"
                     % (web_server.host.encode(), web_server.ws_port, headers, part))
        started = time.monotonic()
        answer = b""
        while data := sock.recv(65536):   # to the server's close; the socket's timeout bounds each wait
            answer += data
        assert time.monotonic() - started < 2.0, answer[:200]
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status), answer[:300]
        assert b"\r\nconnection: close" in head.lower(), head
        assert json.loads(body)["op"] == "error"
        sent, chunk = len(part), b"{" * 65536
        try:
            while sent < ANNOUNCED:
                sock.sendall(chunk)
                sent += len(chunk)
        except socket.timeout:
            pytest.fail(f"the server neither read nor closed after {sent} bytes")
        except OSError:   # EPIPE / ECONNRESET: the server closed the connection
            pass
        assert sent < ANNOUNCED // 4, sent
    finally:
        sock.close()
    wait_until(lambda: web_server.count("event=http_body_skipped") > before, timeout=10,
               what="an http_body_skipped line")


def test_https_page_and_api_with_tls_required(tmp_path_factory):
    """With [tls] required, the page is served over HTTPS and the relay reaches the API
    port (where plain connections are refused) over TLS."""
    crt, key, _ = cert.write(tmp_path_factory.mktemp("web-cert"))
    config = {"tls": {"cert": str(crt), "key": str(key), "required": True}}
    with running_server("embedded", tmp_path_factory.mktemp("web-tls"), config, name="web-tls") as srv:
        ctx = ssl.create_default_context(cafile=str(crt))
        conn = http.client.HTTPSConnection(srv.host, srv.ws_port, timeout=10, context=ctx)
        try:
            conn.request("GET", "/")
            res = conn.getresponse()
            assert res.status == 200 and b"/js/main.js" in res.read()
            name = unique_name("tls")
            conn.request("POST", "/api", json.dumps({"op": "register", "user": name, "password": PASSWORD}),
                         {"Content-Type": "application/json"})
            res = conn.getresponse()
            assert (res.status, json.loads(res.read())) == (200, {"op": "ok", "user": name})
        finally:
            conn.close()
        # a refused POST /api over TLS is closed without its body read too
        sock = ctx.wrap_socket(socket.create_connection((srv.host, srv.ws_port), timeout=10), server_hostname=srv.host)
        try:
            sock.sendall(b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n{{{" % ANNOUNCED)
            answer = b""
            while data := sock.recv(65536):   # to the server's close; the socket's timeout bounds each wait
                answer += data
            assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        finally:
            sock.close()


# ------------------------------------------------- POST /api: per browser, on both deployments

RELAY_CONFIG = {"limits": {"login_addr_attempts": 3, "login_user_attempts": 1000, "login_window": 60.0,
                           "login_user_global_attempts": 100000,
                           # each browser address's bucket: 20 requests, then ~1 per 100 s
                           "web_api_rate": 0.01, "web_api_burst": 20}}


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def relay_server(request, tmp_path_factory):
    """A server of each deployment (the distributed gateways serve the page too) with a
    low failed-login limit per address and a small POST /api bucket per address."""
    with running_server(request.param, tmp_path_factory.mktemp("relay"), RELAY_CONFIG, name="relay") as srv:
        assert srv.ws_ports, "the relay tests need the WebSocket port"
        yield srv


def post_api(addr, obj, source):
    """POST /api of ``obj`` to the web port at ``addr`` from the local address ``source``
    -> (status, {header lower: value}, reply dict)."""
    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=10, source_address=(source, 0))
    try:
        conn.request("POST", "/api", json.dumps(obj).encode(), {"Content-Type": "application/json"})
        res = conn.getresponse()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, json.loads(res.read())
    finally:
        conn.close()


def test_failed_logins_throttle_only_their_browser_address(relay_server):
    """The relay tells the API the browser's address: failed logins through the page from
    127.0.0.2 block that address, not a browser at 127.0.0.3 (distributed: through the
    other gateway's page, the throttling shared in Redis); the logs name the browser."""
    srv = relay_server
    page_a, page_b = srv.ws_addrs[0], srv.ws_addrs[-1]
    name = unique_name("relayed")
    assert post_api(page_a, {"op": "register", "user": name, "password": PASSWORD}, "127.0.0.2")[0] == 200
    for i in range(3):
        status, _, reply = post_api(page_a, {"op": "login", "id": i, "user": name, "password": "wrong-pw"},
                                    "127.0.0.2")
        assert (status, reply["code"], reply["id"]) == (200, "unauthorized", i), reply
    status, _, reply = post_api(page_a, {"op": "login", "user": name, "password": PASSWORD}, "127.0.0.2")
    assert (status, reply["code"]) == (200, "rate_limited") and "127.0.0.2" in reply["message"], reply
    # another browser address: not throttled, the right password logs in
    status, _, reply = post_api(page_b, {"op": "login", "user": name, "password": PASSWORD}, "127.0.0.3")
    assert status == 200 and reply["op"] == "ok" and reply["user"] == name, reply
    # a relay field the browser sends is replaced by the relay's (its own address)
    forged = {"addr": "127.0.0.3", "key": "guess"}
    status, _, reply = post_api(page_a, {"op": "login", "user": name, "password": PASSWORD, "relay": forged},
                                "127.0.0.2")
    assert (status, reply["code"]) == (200, "rate_limited") and "127.0.0.2" in reply["message"], reply
    failed = [line for line in srv.log_text().splitlines() if "login_failed" in line and name in line]
    assert len(failed) == 3 and all("addr=127.0.0.2" in line for line in failed), failed


def test_a_forged_relay_key_is_unauthorized_and_changes_nothing(relay_server):
    """On the API port, a relay field without the deployment's key is refused before the
    request runs; one of the wrong shape is a bad request."""
    name = unique_name("forged")
    with relay_server.api() as api:
        reply = api.error("register", "unauthorized", user=name, password=PASSWORD,
                          relay={"addr": "10.1.2.3", "key": "0" * 64})
        assert reply["message"].startswith("relay key refused"), reply
        for bad in ("10.1.2.3", {"addr": 5, "key": "k"}, {"addr": "", "key": "k"}, {"addr": "10.1.2.3"}):
            api.error("register", "bad_request", user=name, password=PASSWORD, relay=bad)
        # nothing was made: the name is still free
        assert api.call("register", user=name, password=PASSWORD)["user"] == name
    assert relay_server.count("relay_refused") >= 5


def test_post_api_is_rate_limited_per_browser_address(relay_server):
    """Over web_api_burst requests from one address: 429 with Retry-After and the
    protocol's rate_limited error; another address is unaffected."""
    page = relay_server.ws_addrs[0]
    for i in range(RELAY_CONFIG["limits"]["web_api_burst"]):
        status, _, reply = post_api(page, {"op": "no_such_op", "id": i}, "127.0.0.4")
        assert (status, reply["code"]) == (200, "unknown_op"), (i, reply)
    status, headers, reply = post_api(page, {"op": "no_such_op", "id": "over"}, "127.0.0.4")
    assert status == 429 and (reply["op"], reply["code"], reply["id"]) == ("error", "rate_limited", "over")
    assert isinstance(reply["retry_after"], int) and reply["retry_after"] >= 1
    assert headers["retry-after"] == str(reply["retry_after"])
    assert post_api(page, {"op": "no_such_op"}, "127.0.0.5")[0] == 200


@pytest.mark.parametrize("relay_server", ["distributed"], indirect=True)
def test_relay_key_made_anew_in_redis_is_reread(relay_server):
    """Distributed: Redis lost the key and a new process made another one.  The API daemon
    re-reads the key when a relay field carries the new one (at most once a second: the
    wait), then refuses the gateway's old key; the gateway's relay re-reads it and retries,
    so the browser sees nothing of it."""
    import redis

    srv = relay_server
    client = redis.Redis.from_url(srv.redis_url, decode_responses=True)
    try:
        key = f"{srv.redis_prefix}:relay_key"
        old = client.get(key)
        assert old and len(old) == 64
        new = "f" * 64
        client.set(key, new)
        with srv.api() as api:
            def accepted():
                reply = api.request("no_such_op", relay={"addr": "10.9.8.7", "key": new})
                return reply["code"] == "unknown_op"
            wait_until(accepted, what="the API daemon to take the new relay key")
            # the API holds the new key now: the old one is refused
            api.error("no_such_op", "unauthorized", relay={"addr": "10.9.8.7", "key": old})
        name = unique_name("rekeyed")
        status, _, reply = post_api(srv.ws_addrs[0], {"op": "register", "user": name, "password": PASSWORD},
                                    "127.0.0.6")
        assert (status, reply) == (200, {"op": "ok", "user": name})
        assert srv.count("relay_key_changed") >= 2   # the API daemon's and the gateway's
        assert client.get(key) == new
    finally:
        client.close()
