"""The server never closes a connection without saying why (issue 9, defect 6).

- auth timeout: `error` `unauthorized` "no auth within N s" (N: limits.auth_timeout);
- idle timeout: `bye` reason `idle` with retry_after (an addition to v1's bye reasons);
- text that is not a JSON object as the first bytes of a connection (someone typing
  `help` into `nc`), on the gateway and the API: one line-mode `error` line with a hint
  about the framing, then the close -- without waiting for the 4 bytes of a length header.
"""
import json
import socket
import time

import pytest

from harness.procs import wait_until
from harness.servers import running_server
from harness.users import new_user

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def quick_server(tmp_path_factory):
    config = {"limits": {"auth_timeout": 0.5, "idle_timeout": 1.0, "retry_after": 2.0}}
    with running_server("embedded", tmp_path_factory.mktemp("closes"), config, name="closes") as srv:
        yield srv


# ---------------------------------------------------------------- timeouts
@pytest.mark.parametrize("mode", ["binary", "line"])
def test_auth_timeout_says_so(quick_server, mode):
    with quick_server.gateway(mode) as g:
        if mode == "line":
            g.send_raw(b'{"op":"au')  # the connection is in line mode: so is the answer
        frames = g.expect_close(5)
    assert len(frames) == 1, frames
    err = frames[0]
    assert err["op"] == "error" and err["code"] == "unauthorized", err
    assert "no auth within 0.5 s" in err["message"], err


def test_idle_timeout_says_bye_idle(quick_server):
    u = new_user(quick_server, "idl")
    with u.connect() as g:
        frames = g.expect_close(6)
    byes = [f for f in frames if f["op"] == "bye"]
    assert len(byes) == 1 and frames[-1] is byes[0], frames
    bye = byes[0]
    assert bye["reason"] == "idle", bye
    # retry_after: the configured base (2 s) plus up to 100% jitter, whole seconds
    assert isinstance(bye["retry_after"], int) and 2 <= bye["retry_after"] <= 4, bye
    # the server's log is read by a thread of ours: wait for the line, do not race it
    wait_until(lambda: "event=idle_timeout" in quick_server.log_text(), timeout=5,
               what="the server to log event=idle_timeout")


# ---------------------------------------------------------------- text on a binary port
def _raw_until_close(addr, data, timeout=5.0):
    """Send ``data`` on a fresh connection; -> every byte received until the server closes."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(data)
        got = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                raise AssertionError(f"the server did not close; got {got!r}") from None
            if not chunk:
                break
            got += chunk
        return got


def _assert_hint(got):
    assert got.endswith(b"\n") and got.count(b"\n") == 1, got
    err = json.loads(got)
    assert err["op"] == "error" and err["code"] == "too_large", err
    assert "one JSON object per line" in err["message"] and "length-prefixed" in err["message"], err


@pytest.mark.parametrize("where", ["api", "gateway"])
@pytest.mark.parametrize("typed", [b"help\n", b"hi\n", b"h", b"\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"],
                         ids=["help", "hi", "one-letter", "enter", "http"])
def test_text_that_is_not_json_gets_a_line_mode_hint(server, where, typed):
    addr = server.api_addr if where == "api" else server.gateway_addr
    _assert_hint(_raw_until_close(addr, typed))


@pytest.mark.parametrize("where", ["api", "gateway"])
def test_the_connection_after_the_hint_works_in_line_mode(server, where):
    """The hint is what it says: the same user, now sending a JSON line, is served."""
    u = new_user(server, "hint")
    c = server.api("line") if where == "api" else server.gateway("line")
    with c:
        op = "profile" if where == "api" else "auth"
        rep = c.call(op, token=u.token)
        assert rep["user"] == u.name


def test_binary_header_of_a_small_frame_is_not_taken_for_text(server):
    """A first byte of 0 is a real length header: no hint, the frame is waited for."""
    u = new_user(server, "bin")
    with server.api() as c:
        payload = json.dumps({"op": "profile", "id": 1, "token": u.token}).encode()
        head = len(payload).to_bytes(4, "big")
        c.send_raw(head[:1])
        c.send_raw(head[1:] + payload)
        assert c.read_reply(1)["op"] == "ok"
