"""`internal` on the wire: "a bug; logged with the request id" (PROTOCOL.md error table).

A healthy server never answers `internal`, so these tests make a handler raise through the
test hook ``[test] raise_in = "<op>,..."`` (imsrv/config.py TEST_HOOKS_ENV): the config
refuses that section unless the process's environment has IMSRV_TEST_HOOKS=1, which only
this module sets (the server's ``env``: `imsrv serve`'s, or supervisord's, which its
daemons inherit).  Checked: the reply is `internal` with the request's id, the connection
stays usable (replies keep their order), ops the hook does not name work, and the server
log has one line per failure with the op, the user, the request id and the traceback.
Also: a configuration without the variable cannot enable the hook (in-process and
`imsrv serve` / `imsrv api` refusing to start).
"""

import os
import re
import subprocess
import sys

import pytest

from imsrv import config

from harness.procs import REPO_ROOT, wait_until
from harness.servers import running_server, to_toml
from harness.users import befriend, new_user, unique_name

pytestmark = pytest.mark.timeout(90)

HOOK_ENV = {"IMSRV_TEST_HOOKS": "1"}
HOOKED = {"test": {"raise_in": "friends, presence"}}
_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def hooked(request, tmp_path_factory):
    """A server with the hook on: IMSRV_TEST_HOOKS=1 in the environment of `imsrv serve`,
    or of supervisord (its daemons inherit it, as they inherit every IMSRV_* variable)."""
    with running_server(request.param, tmp_path_factory.mktemp("hooked"), HOOKED, name="hooked",
                        env=HOOK_ENV) as srv:
        yield srv


def internal_errors(srv, rid):
    """The server's event=internal_error lines for request id ``rid``, as dicts."""
    out = []
    for line in srv.log_text().splitlines():
        if " event=internal_error " in line:
            fields = {k: v[1:-1] if v.startswith('"') else v for k, v in _FIELD.findall(line)}
            if fields.get("id") == str(rid):
                out.append(fields)
    return out


def assert_logged(srv, rid, service, op, user):
    """One log line for the failure, naming the op, the user and the request id, with the
    traceback down to the hook (supervisord copies daemon logs: wait for the line)."""
    lines = wait_until(lambda: internal_errors(srv, rid), timeout=10,
                       what=f"event=internal_error id={rid} in the log")
    assert len(lines) == 1, lines
    line = lines[0]
    assert (line["level"], line["service"], line["op"], line["user"]) == ("error", service, op, user), line
    tb = line["traceback"]
    assert tb.startswith("Traceback (most recent call last):"), tb
    assert "TestHookError: test hook: [test] raise_in names op" in tb and "\\n" in tb, tb
    assert "TestHookError" in line["error"], line


def test_api_handler_bug_is_internal_with_the_request_id(hooked):
    u = new_user(hooked, "in")
    rid = unique_name("req")
    with hooked.api() as c:
        rids = [c.send_request("profile", token=u.token),
                c.send_request("friends", id=rid, token=u.token),
                c.send_request("groups", token=u.token)]
        ok1, err, ok2 = c.read_replies(rids)
        assert (ok1["op"], ok2["op"]) == ("ok", "ok") and ok1["user"] == u.name, (ok1, ok2)
        assert err["op"] == "error" and err["code"] == "internal" and err["id"] == rid, err
        assert isinstance(err["message"], str) and rid in err["message"], err
        # the connection stays usable; an integer id is echoed as such
        again = c.request("friends", id=77, token=u.token)
        assert (again["code"], again["id"]) == ("internal", 77), again
        assert c.call("profile", token=u.token)["user"] == u.name
    assert_logged(hooked, rid, "api", "friends", u.name)


def test_gateway_handler_bug_is_internal_and_the_session_lives_on(hooked):
    a, b = new_user(hooked, "ia"), new_user(hooked, "ib")
    befriend(a, b)
    rid = unique_name("req")
    with a.connect() as ga, b.connect() as gb:
        rids = [ga.send_request("ping"), ga.send_request("presence", id=rid, users=[b.name]),
                ga.send_request("ping")]
        pong1, err, pong2 = ga.read_replies(rids)
        assert (pong1["op"], pong2["op"]) == ("pong", "pong"), (pong1, pong2)
        assert err["op"] == "error" and err["code"] == "internal" and err["id"] == rid, err
        # still authenticated, still sending and pushed to
        ack = ga.send_msg("after the bug", to=b.name)
        assert gb.wait_push("msg", mid=ack["mid"])["body"] == "after the bug"
        ack = gb.send_msg("and back", to=a.name)
        assert ga.wait_push("msg", mid=ack["mid"])["from"] == b.name
    assert_logged(hooked, rid, "gateway", "presence", a.name)


# ---------------------------------------------------------------- production cannot enable it

def _config_file(tmp_path):
    path = tmp_path / "imsrv.toml"
    path.write_text(to_toml(HOOKED))
    return path


def test_the_config_refuses_the_hook_without_the_variable(tmp_path):
    path = str(_config_file(tmp_path))
    for env in ({}, {"IMSRV_TEST_HOOKS": "0"}, {"IMSRV_TEST_HOOKS": "yes"}):
        with pytest.raises(config.ConfigError) as e:
            config.load(path, env=env)
        assert "[test]" in str(e.value) and "IMSRV_TEST_HOOKS=1" in str(e.value), e.value
    assert config.load(path, env=HOOK_ENV).test.raise_in == "friends, presence"
    # no environment override of the hook, with or without the variable; off by default
    for env in ({"IMSRV_TEST_RAISE_IN": "friends"}, {**HOOK_ENV, "IMSRV_TEST_RAISE_IN": "friends"}):
        assert config.load(env=env).test.raise_in == ""
    (tmp_path / "bad.toml").write_text('[test]\nraise_everything = "x"\n')
    with pytest.raises(config.ConfigError, match=r"unknown key \[test\] raise_everything"):
        config.load(str(tmp_path / "bad.toml"), env=HOOK_ENV)


@pytest.mark.parametrize("command", [["serve", "--api-port", "0", "--gateway-port", "0", "--ws-port", "0"],
                                     ["api"]])
def test_a_server_with_the_hook_in_its_config_does_not_start(tmp_path, command):
    """The processes themselves refuse it (exit 2 at startup, before binding anything)."""
    env = {k: v for k, v in os.environ.items() if k != "IMSRV_TEST_HOOKS"}
    env.update({"IMSRV_CONFIG": str(_config_file(tmp_path)), "IMSRV_DATA_DIR": str(tmp_path / "data"),
                "PYTHONPATH": str(REPO_ROOT)})
    proc = subprocess.run([sys.executable, "-m", "imsrv.cli.main", *command], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "[test] is for the test suite only" in proc.stderr, proc.stderr
    assert "event=ready" not in proc.stderr
