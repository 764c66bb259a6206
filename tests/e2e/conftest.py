"""Fixtures of the end-to-end suite: real `imsrv serve` processes on free local ports.

- ``server``: one shared server for the whole session (default config, apart from fast
  password hashing and generous login-attempt limits so that the many tests that
  deliberately fail a login cannot lock each other out). Tests sharing it use unique user
  names, so they never interfere.  It is parametrised over the two deployments, so every
  test that uses it (directly or through ``alice``/``bob``/...) runs against both:

  - ``embedded``: one `imsrv serve` process (SQLite, in-process hub);
  - ``distributed``: the real supervisord running the repo's supervisord.conf (2 gateways,
    2 forwarders, 1 API) over MariaDB + Redis (tests/dist/deployment.py), a database and a
    Redis key prefix of its own.  It needs both services (tests/services.py): skipped
    with the reason when they cannot be had, a failure under CI=true.  Its ``gateway()``
    alternates between the two gateways, so the users of one test sit on both.

  Select one with ``-k embedded`` / ``-k distributed`` (the parameter is in the test id).
- ``server_factory``: start dedicated servers (their own config, data dir and ports) that
  are killed at the end of the test.  These are EMBEDDED ONLY (special configs: timeouts,
  rate limits, SIGKILL/SIGTERM of the one process); the distributed counterparts of the
  crash tests are in tests/dist.
- ``dedicated_server(tmp_path_factory, name, config)``: the same for module-scoped fixtures
  (embedded only too).

Embedded-only parts of tests that use ``server``: the WebSocket gateway (not part of the
distributed set: tests/e2e/test_websocket.py is deselected for ``distributed``).  In the
distributed deployment ``server.gateway_port`` is gateway 0's port and
``server.gateway_ports`` lists both (login names either: test_login_reply_fields accepts
any of them).
"""

import atexit

import pytest

import services

from .support import ServerProc, new_user

DEPLOYMENTS = ["embedded", "distributed"]
#: test modules that use ``server`` for something only the embedded server has
EMBEDDED_ONLY_MODULES = {
    "test_websocket": "the WebSocket gateway is not part of the distributed deployment",
}

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
        "login_user_global_attempts": 100000,
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


def distributed_server(tmp_path_factory, name, config=None):
    """The distributed deployment under supervisord (tests/dist/deployment.py) on the
    test MariaDB and Redis (skip, or fail under CI, when they cannot be had)."""
    from dist.deployment import Deployment

    mysql = services.need(services.ensure_mysql, "a MySQL/MariaDB server (distributed deployment)")
    redis = services.need(services.ensure_redis, "a Redis server (distributed deployment)")
    srv = Deployment(tmp_path_factory.mktemp(name), mysql, redis, config, name=name)
    _LIVE.append(srv)
    try:
        srv.start()
    except BaseException:
        _stop(srv)
        raise
    return srv


def deployment_server(deployment, tmp_path_factory, name, overrides):
    """A server of ``deployment`` ("embedded" or "distributed") with config ``overrides``;
    stop it with ``_stop``."""
    if deployment == "embedded":
        srv = dedicated_server(tmp_path_factory, name, overrides)
    else:
        srv = distributed_server(tmp_path_factory, name + "_dist", overrides)
    srv.deployment = deployment
    return srv


@pytest.fixture(scope="session", params=DEPLOYMENTS)
def server(request, tmp_path_factory):
    srv = deployment_server(request.param, tmp_path_factory, "shared", SHARED_CONFIG)
    yield srv
    _stop(srv)


def pytest_collection_modifyitems(config, items):
    """Tests of embedded-only modules are not run against the distributed deployment:
    deselected (they do not apply), not skipped."""
    keep, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        package, _, module = item.module.__name__.rpartition(".")
        if (callspec is not None and callspec.params.get("server") == "distributed"
                and package == "e2e" and module in EMBEDDED_ONLY_MODULES):
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


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
