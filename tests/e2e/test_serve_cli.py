"""`imsrv serve` and the distributed daemons as a user starts them (issue 9, defects 2, 11).

- a busy port: exit 1 and one line naming host:port, the service, and the flag or setting
  that moves it; a data directory that did not exist is not left behind;
- the default listen address is 127.0.0.1 (--host 0.0.0.0 exposes the server).
"""
import os
import socket
import subprocess
import sys
import threading

import pytest

from harness.procs import REPO_ROOT, free_ports

pytestmark = pytest.mark.timeout(60)


def _env(**extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for k in [k for k in env if k.startswith("IMSRV_") and k not in ("IMSRV_PUREPYTHON", "IMSRV_REQUIRE_EXT",
                                                                     "IMSRV_JSON")]:
        del env[k]   # nothing from the outside moves a port or the host
    env.update(extra)
    return env


def _imsrv(args, tmp_path, timeout=30, **env):
    return subprocess.run([sys.executable, "-m", "imsrv.cli.main"] + args, cwd=str(tmp_path),
                          env=_env(**env), capture_output=True, text=True, timeout=timeout)


def _occupy(port, host="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((host, port))
    s.listen(1)
    return s


SERVE_PORTS = {
    "gateway": ("gateway", "--gateway-port N or server.gateway_port"),
    "api": ("API", "--api-port N or server.api_port"),
    "ws": ("WebSocket gateway", "--ws-port N (0 turns it off) or server.websocket_port"),
}


@pytest.mark.parametrize("busy", list(SERVE_PORTS))
def test_serve_on_a_busy_port_names_it_and_leaves_no_data_dir(tmp_path, busy):
    gw, api, ws = free_ports(3)
    port = {"gateway": gw, "api": api, "ws": ws}[busy]
    data = tmp_path / "new" / "data"   # neither exists: a failed start must not make them
    with _occupy(port):
        out = _imsrv(["serve", "--data", str(data), "--host", "127.0.0.1", "--gateway-port", str(gw),
                      "--api-port", str(api), "--ws-port", str(ws)], tmp_path)
    what, remedy = SERVE_PORTS[busy]
    assert out.returncode == 1, (out.returncode, out.stderr)
    expected = (f"imsrv: cannot listen on 127.0.0.1:{port} ({what}): address already in use; "
                f"choose another with {remedy}")
    assert out.stderr.strip().splitlines()[-1] == expected, out.stderr
    assert not (tmp_path / "new").exists(), list((tmp_path / "new").rglob("*"))


def test_serve_on_a_busy_port_keeps_an_existing_data_dir(tmp_path):
    gw, api = free_ports(2)
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep").write_text("x")
    with _occupy(api):
        out = _imsrv(["serve", "--data", str(data), "--gateway-port", str(gw), "--api-port", str(api),
                      "--ws-port", "0"], tmp_path)
    assert out.returncode == 1 and f"127.0.0.1:{api} (API)" in out.stderr, out.stderr
    assert sorted(p.name for p in data.iterdir()) == ["keep"]


@pytest.mark.parametrize("daemon", ["gateway", "api"])
def test_a_daemon_on_a_busy_port_names_it(tmp_path, daemon):
    (port,) = free_ports(1)
    args = ["gateway", "--id", "gwx", "--port", str(port)] if daemon == "gateway" else ["api", "--port", str(port)]
    # no store or Redis is reached: the port is bound first (these URLs lead nowhere)
    with _occupy(port):
        out = _imsrv(args, tmp_path, IMSRV_DATABASE_URL="mysql://nobody@127.0.0.1:1/none",
                     IMSRV_REDIS_URL="redis://127.0.0.1:1/0")
    assert out.returncode == 1, (out.returncode, out.stderr)
    line = out.stderr.strip().splitlines()[-1]
    what = "gateway gwx" if daemon == "gateway" else "API"
    assert line.startswith(f"imsrv: cannot listen on 127.0.0.1:{port} ({what}): address already in use; "
                           "choose another with --port N"), line
    assert ("server.gateway_port" if daemon == "gateway" else "server.api_port") in line, line


def test_serve_listens_on_loopback_by_default(tmp_path):
    gw, api, ws, metrics = free_ports(4)
    proc = subprocess.Popen([sys.executable, "-m", "imsrv.cli.main", "serve", "--data", str(tmp_path / "d"),
                             "--gateway-port", str(gw), "--api-port", str(api), "--ws-port", str(ws),
                             "--metrics-port", str(metrics)],
                            cwd=str(tmp_path), env=_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ready = []
    done = threading.Event()

    def read():
        for line in proc.stderr:
            if "event=ready" in line:
                ready.append(line)
                done.set()
        done.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert done.wait(30) and ready, "no event=ready"
        line = ready[0]
        for port in (gw, api, ws):
            assert f"127.0.0.1:{port}" in line, line
        assert "0.0.0.0" not in line, line
    finally:
        proc.kill()
        proc.wait(10)
