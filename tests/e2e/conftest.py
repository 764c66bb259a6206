"""Fixtures of the end-to-end suite: real `imsrv serve` processes on free local ports.

- ``server``: one shared embedded server for the whole session (default config, apart
  from fast password hashing and generous login-attempt limits so that the many tests that
  deliberately fail a login cannot lock each other out). Tests sharing it use unique user
  names, so they never interfere.
- ``server_factory``: start dedicated servers (their own config, data dir and ports) that
  are killed at the end of the test.
- ``dedicated_server(tmp_path_factory, name, config)``: the same for module-scoped fixtures.
"""

import atexit

import pytest

from .support import ServerProc, new_user

_LIVE = []


@atexit.register
def _kill_leftovers():
    """Should the session be interrupted, never leave a server process behind."""
    for srv in list(_LIVE):
        try:
            srv.kill()
        except Exception:
            pass

SHARED_CONFIG = {
    "limits": {
        "login_user_attempts": 100000,
        "login_addr_attempts": 100000,
    },
}


def dedicated_server(tmp_path_factory, name, config=None):
    srv = ServerProc(tmp_path_factory.mktemp(name), config, name)
    _LIVE.append(srv)
    try:
        srv.start()
    except BaseException:
        srv.kill()
        raise
    return srv


def _stop(srv):
    try:
        srv.kill()
    finally:
        if srv in _LIVE:
            _LIVE.remove(srv)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = dedicated_server(tmp_path_factory, "shared", SHARED_CONFIG)
    yield srv
    _stop(srv)


@pytest.fixture
def server_factory(tmp_path):
    made = []

    def make(config=None, name="dedicated", start=True):
        srv = ServerProc(tmp_path / f"{name}{len(made)}", config, name)
        made.append(srv)
        _LIVE.append(srv)
        if start:
            srv.start()
        return srv

    yield make
    for srv in made:
        _stop(srv)


@pytest.fixture
def alice(server):
    return new_user(server, "alice")


@pytest.fixture
def bob(server):
    return new_user(server, "bob")


@pytest.fixture
def carol(server):
    return new_user(server, "carol")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for srv in list(_LIVE):
            report.sections.append(
                (f"imsrv {srv.name} (pid {srv.pid}) stderr tail", srv.tail(40))
            )
