"""`imsrv admin` (imsrv/cli/admin.py) as a subprocess against a real server, on both
deployments: its tables, its messages and its exit codes (0 done, 1 an error reply or no
server, 2 usage or no admin key); the admin key from $IMSRV_ADMIN_KEY or a --config file.
An SDK client banned through it is kicked (reason admin) and its login refused with the
reason."""
import json
import os
import re
import subprocess
import sys

import pytest

from harness.procs import in_thread, wait_until
from harness.servers import ADMIN_KEY
from harness.users import PASSWORD, User, login, new_user, register, unique_name
from imsrv.client import Client
from imsrv.client.errors import Kicked, ServerError

pytestmark = pytest.mark.timeout(60)


def run_admin(*args, key=ADMIN_KEY, env=None):
    """`imsrv admin ARGS` -> CompletedProcess (text).  Nothing of our IMSRV_* environment
    reaches it but what the test gives."""
    child = {k: v for k, v in os.environ.items() if not k.startswith("IMSRV_")
             or k in ("IMSRV_PUREPYTHON", "IMSRV_REQUIRE_EXT", "IMSRV_JSON")}
    child["PYTHONUNBUFFERED"] = "1"
    if key is not None:
        child["IMSRV_ADMIN_KEY"] = key
    child.update(env or {})
    cmd = [sys.executable, "-m", "imsrv.cli.main", "admin"] + list(args)
    return in_thread(lambda: subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=child))


def register_user(server, name):
    register(server, name)
    return User(server, name, PASSWORD, login(server, name)["token"])


def rows(stdout):
    """A table's lines -> lists of cells (split on 2+ spaces)."""
    return [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines() if line.strip()]


def test_users_table_and_json(server):
    base = unique_name("cli")
    a, b = (register_user(server, base + s) for s in "ab")
    g = a.connect(device="phone")
    try:
        r = run_admin("--api", server.api_address, "users", "--q", base)
        assert r.returncode == 0, r
        table = rows(r.stdout)
        assert table[0] == ["USER", "NAME", "ONLINE", "DEVICES", "BANNED"], r.stdout
        assert table[1] == [a.name, a.name, "yes", "phone", "-"], r.stdout
        assert table[2] == [b.name, b.name, "no", "-", "-"], r.stdout
        assert table[3] == ["(2 users)"] and len(table) == 4, r.stdout
        r = run_admin("--api", server.api_address, "users", "--q", base, "--limit", "1")
        assert r.returncode == 0 and f"more: imsrv admin users --after {a.name} --q {base}" in r.stdout, r
        r = run_admin("--api", server.api_address, "--json", "users", "--q", base)
        assert r.returncode == 0, r
        reply = json.loads(r.stdout)
        assert [u["user"] for u in reply["users"]] == [a.name, b.name] and reply["more"] is False, reply
    finally:
        g.close()


def test_ban_kicks_an_sdk_client_and_unban_lets_it_back(server):
    name = unique_name("clib")
    c = Client(server.api_address, device="desk", timeout=5.0)
    try:
        c.register(name, PASSWORD)
        c.login(name, PASSWORD)
        assert c.online
        r = run_admin("--api", server.api_address, "ban", name, "--for", "1h", "--reason", "too loud")
        assert r.returncode == 0, r
        assert re.fullmatch(rf"banned {name} until \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC: too loud"
                            r" \(1 session kicked\)\n", r.stdout), r.stdout
        wait_until(lambda: c.stopped, what="the SDK client to stop on its kick")
        err = c.stop_error()
        assert isinstance(err, Kicked) and err.reason == "admin", err
        again = Client(server.api_address, device="desk", timeout=5.0)
        try:
            with pytest.raises(ServerError) as exc:
                again.login(name, PASSWORD)
            assert exc.value.code == "unauthorized" and "too loud" in exc.value.message, exc.value
        finally:
            again.close()
        r = run_admin("--api", server.api_address, "users", "--q", name)
        assert rows(r.stdout)[1][4].endswith("UTC: too loud"), r.stdout
        r = run_admin("--api", server.api_address, "unban", name)
        assert (r.returncode, r.stdout) == (0, f"unbanned {name}\n"), r
        back = Client(server.api_address, device="desk", timeout=5.0)
        try:
            back.login(name, PASSWORD)
            assert back.online
        finally:
            back.close()
    finally:
        c.close()


def test_ban_for_ever_and_kick(server):
    u = new_user(server, "clik")
    phone, laptop = u.connect(device="phone"), u.connect(device="laptop")
    try:
        r = run_admin("--api", server.api_address, "kick", u.name, "--device", "phone")
        assert (r.returncode, r.stdout) == (0, f"kicked 1 session of {u.name} (device phone)\n"), r
        assert phone.wait_push("kicked")["reason"] == "admin"
        laptop.sync_point()
        r = run_admin("--api", server.api_address, "ban", u.name, "--reason", "bye")
        assert (r.returncode, r.stdout) == (0, f"banned {u.name} for ever: bye (1 session kicked)\n"), r
        assert laptop.wait_push("kicked")["reason"] == "admin"
    finally:
        phone.close()
        laptop.close()


def test_stats_table(server):
    u = new_user(server, "clis")
    g = u.connect()
    try:
        def shown():
            r = run_admin("--api", server.api_address, "stats")
            assert r.returncode == 0, r
            table = rows(r.stdout)
            conns = dict(row for row in table[table.index(["GATEWAY", "CONNECTIONS"]) + 1:])
            return set(server.gateway_addresses) <= set(conns) and (table, conns)

        table, conns = wait_until(shown, timeout=20, what="every gateway in the stats")   # load reports
        assert table[0] == ["users", "online_users", "messages_last_minute"], table
        users, online, messages = (int(v) for v in table[1])
        assert users >= 1 and online >= 1 and messages >= 0, table
        assert all(v.isdigit() for v in conns.values()), conns
    finally:
        g.close()


def test_errors_and_exit_codes(server, tmp_path):
    api = ("--api", server.api_address)
    r = run_admin(*api, "kick", unique_name("nobody"))
    assert r.returncode == 1 and re.match(r"imsrv admin: admin_kick: not_found: no such user", r.stderr), r
    r = run_admin(*api, "stats", key="not-the-key")
    assert (r.returncode, r.stderr) == (1, "imsrv admin: admin_stats: unauthorized: wrong admin_key\n"), r
    r = run_admin(*api, "--json", "stats", key="not-the-key")
    assert r.returncode == 1 and json.loads(r.stdout)["code"] == "unauthorized", r
    r = run_admin(*api, "stats", key=None)
    assert r.returncode == 2 and "no admin key: set IMSRV_ADMIN_KEY" in r.stderr, r
    r = run_admin(*api, "ban", "someone", "--for", "3 days", "--reason", "x")
    assert r.returncode == 2 and "duration '3 days'" in r.stderr, r
    r = run_admin(*api, "ban", "someone")   # --reason is required
    assert r.returncode == 2 and "--reason" in r.stderr, r
    r = run_admin("--api", "127.0.0.1:1", "stats")
    assert r.returncode == 1 and "cannot reach the API at 127.0.0.1:1" in r.stderr, r
    # the key and the API address from a config file
    host, port = server.api_address.rsplit(":", 1)
    conf = tmp_path / "admin.toml"
    conf.write_text(f'[server]\nadmin_key = "{ADMIN_KEY}"\nhost = "{host}"\napi_port = {port}\n')
    r = run_admin("--config", str(conf), "stats", key=None)
    assert r.returncode == 0 and r.stdout.startswith("users"), r
    r = run_admin("stats", key=None, env={"IMSRV_CONFIG": str(conf)})
    assert r.returncode == 0, r


def test_options_after_the_command_and_tls_errors(server, tmp_path):
    """The options of `imsrv admin` may follow the command too; --ca-file naming no
    readable file is a usage error (exit 2, before any connection); --tls against a plain
    server fails the handshake (exit 1).  A TLS server: tests/e2e/test_tls.py."""
    r = run_admin("stats", "--api", server.api_address, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["op"] == "ok", r
    missing = tmp_path / "missing.crt"
    r = run_admin("--api", server.api_address, "stats", "--ca-file", str(missing))
    assert (r.returncode, r.stdout) == (2, ""), r
    assert r.stderr == f"imsrv admin: cannot use the CA file {missing}: No such file or directory\n", r
    r = run_admin("--api", server.api_address, "--tls", "stats")
    assert r.returncode == 1 and f"cannot reach the API at {server.api_address}" in r.stderr, r
