"""Fixtures of the client SDK suite: real servers, logged-in Clients.

- ``server``: one shared server per deployment for the whole session, parametrised like
  tests/e2e's: ``[embedded]`` (one `imsrv serve` process, SQLite) and ``[distributed]``
  (the repo's supervisord.conf under the real supervisord: 2 gateways, 2 forwarders,
  1 API over MariaDB + Redis, harness.DistributedServer; it needs both services: skipped
  with the reason when they cannot be had, a failure under CI=true).  Every test that
  uses it runs against both; users are unique per test.  ``-k embedded`` /
  ``-k distributed`` picks one.
- ``config_server``: a server of its own with a given config, parametrised over both
  deployments like ``server`` (a supervisord set per distributed test: a few seconds).
- ``server_factory``: dedicated EMBEDDED servers for tests that kill, stop or restart the
  one server process, or need what only it has (the distributed counterparts of the
  crash tests are in tests/dist).
"""
import atexit

import pytest

from imsrv.client import Client

from .harness import LIVE_PROCS, PASSWORD, DistributedServer, ServerProc, unique_name

DEPLOYMENTS = ["embedded", "distributed"]
_LIVE = []


@atexit.register
def _kill_leftovers():
    """Should the session be interrupted, never leave a server (or supervisord) behind."""
    for srv in list(_LIVE):
        try:
            srv.kill()
        except Exception:
            pass


@pytest.fixture(scope="session", params=DEPLOYMENTS)
def server(request, tmp_path_factory):
    if request.param == "embedded":
        srv = ServerProc(tmp_path_factory.mktemp("client-shared"), name="shared")
    else:
        srv = DistributedServer(tmp_path_factory.mktemp("client-dist"), name="shared_dist")
    _LIVE.append(srv)
    try:
        srv.start()
        yield srv
    finally:
        srv.kill()
        _LIVE.remove(srv)


def _factory(tmp_path, cls):
    made = []

    def make(config=None, name="dedicated"):
        srv = cls(tmp_path / f"{name}{len(made)}", config, name)
        made.append(srv)
        _LIVE.append(srv)
        srv.start()
        return srv

    return make, made


@pytest.fixture
def server_factory(tmp_path):
    """server_factory(config=None, name) -> an embedded server of its own, killed after the test."""
    make, made = _factory(tmp_path, ServerProc)
    yield make
    for srv in made:
        srv.kill()
        _LIVE.remove(srv)


@pytest.fixture(params=DEPLOYMENTS)
def config_server(request, tmp_path):
    """config_server(config=None, name) -> a server of its own with ``config``, of each
    deployment (the test runs twice), killed after the test.  For tests that need a config
    but never kill or restart the server."""
    make, made = _factory(tmp_path, ServerProc if request.param == "embedded" else DistributedServer)
    yield make
    for srv in made:
        srv.kill()
        _LIVE.remove(srv)


@pytest.fixture
def make_client():
    """make_client(server, user=None, device="dev", register=True, login=True, **Client kwargs)."""
    made = []

    def make(server, user=None, device="dev", register=True, login=True, password=PASSWORD, **kw):
        kw.setdefault("timeout", 5.0)
        c = Client(server.api, device=device, **kw)
        made.append(c)
        user = user or unique_name()
        if register:
            c.register(user, password)
        if login:
            c.login(user, password)
        else:
            c.user = user
        return c

    yield make
    for c in made:
        try:
            c.close()
        except Exception:
            pass


@pytest.fixture(autouse=True)
def _kill_leftover_processes():
    yield
    while LIVE_PROCS:
        proc = LIVE_PROCS.pop()
        if proc.proc.poll() is None:
            proc.kill()


@pytest.fixture
def pwfile(tmp_path):
    """A password file holding the suite's PASSWORD."""
    p = tmp_path / "pw"
    p.write_text(PASSWORD + "\n")
    return str(p)


def befriend(a, b):
    a.friend_request(b.user)
    b.friend_accept(a.user)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for srv in list(_LIVE):
            report.sections.append((f"imsrv {srv.name} (pid {srv.pid}) stderr", srv.tail(30)))
