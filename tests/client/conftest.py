"""Fixtures of the client SDK suite: real `imsrv serve` processes, logged-in Clients."""
import pytest

from imsrv.client import Client

from .harness import LIVE_PROCS, PASSWORD, ServerProc, unique_name

_LIVE = []


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = ServerProc(tmp_path_factory.mktemp("client-shared"), name="shared")
    _LIVE.append(srv)
    srv.start()
    yield srv
    srv.kill()
    _LIVE.remove(srv)


@pytest.fixture
def server_factory(tmp_path):
    made = []

    def make(config=None, name="dedicated"):
        srv = ServerProc(tmp_path / f"{name}{len(made)}", config, name)
        made.append(srv)
        _LIVE.append(srv)
        srv.start()
        return srv

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
