"""Fixtures of the whole suite: the external services and the servers (tests/harness).

Services (tests/services.py; when one cannot be had the test is skipped with the reason,
except under ``CI=true`` where it fails):

- ``mysql_url`` (session): ``mysql://root@127.0.0.1:3306/imsrv_test_<hex>``, a database
  created for this test session on a usable server and dropped at the end.
- ``redis_url`` (session): ``redis://127.0.0.1:6379/0`` with ``redis_url.prefix``, a key
  prefix (``imsrv_test_<hex>:``) reserved for this session; its keys are deleted at the end.

Servers (harness.servers: ``EmbeddedProcess`` and ``Deployment`` behind one interface):

- ``server`` (session): a shared server, parametrised over the two deployments, so every
  test that uses it runs against both (``-k embedded`` / ``-k distributed`` picks one);
  tests/client declares its own with the same definition (its own instance, with its
  ``server_defaults``):

  - ``embedded``: one `imsrv serve` process (SQLite, in-process hub);
  - ``distributed``: the real supervisord running the repo's supervisord.conf (2
    gateways, 2 forwarders, 1 API) over MariaDB + Redis, a database and a Redis key prefix
    of its own.  It needs both services.  Its ``gateway()`` alternates between the two
    gateways, so the users of one test sit on both; the SDK logs in through the API and
    goes to whichever gateway the login names.

  Its config: generous login-attempt limits (harness.servers.SHARED_SERVER_CONFIG: the
  many tests that deliberately fail a login cannot lock each other out); tests use unique
  user names, so they never interfere.
- ``server_factory(config=None, name="dedicated", start=True)``: EMBEDDED servers of
  their own (config, data dir, ports), killed after the test: for tests that kill, stop or
  restart the one server process or need what only it has (the distributed counterparts
  of the crash tests are in tests/dist).
- ``config_server(config=None, name)``: a server of its own with ``config``, of each
  deployment (the test runs twice; a supervisord set per distributed test: a few
  seconds), killed after the test.
- ``deployment_factory(config=None, mysql=None, redis=None, name="dist")``: a started
  ``Deployment`` on the test services, or on private ones given as URLs, killed after the
  test.
- module-scoped servers of a config of their own: ``harness.servers.running_server``.

Every one of them has ``server_defaults`` under its own config: {} here; tests/client
overrides it (the SDK tests' generous rate limits, no WebSocket gateway).  Servers still
running when a test fails add their log tails to its report.
"""
import os

import pytest

import services
from harness.procs import LIVE_PROCS
from harness.servers import (DEPLOYMENTS, LIVE, EmbeddedProcess, make_server, merge_config, shared_server,
                             start_server, stop_server)

# Servers started by tests listen on free ports the tests choose; the WebSocket gateway's
# fixed default (7080) would collide between them, so it is off unless a test passes
# --ws-port (EmbeddedProcess does unless its config turns the WebSocket gateway off).
os.environ.setdefault("IMSRV_WEBSOCKET_PORT", "0")

# ------------------------------------------------------------------------------ services


@pytest.fixture(scope="session")
def mysql_url():
    server = services.need(services.ensure_mysql, "a MySQL/MariaDB server")
    name = services.random_name()
    services.mysql_create_database(server, name)
    yield f"{server}/{name}"
    services.mysql_drop_database(server, name)


@pytest.fixture(scope="session")
def redis_url():
    url = services.need(services.ensure_redis, "a Redis server")
    prefix = services.random_name() + ":"
    yield services.RedisTestURL(url, prefix)
    services.redis_delete_prefix(url, prefix)


# ------------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def server_defaults():
    """The config under every server config of this directory's tests."""
    return {}


@pytest.fixture(scope="session", params=DEPLOYMENTS)
def server(request, tmp_path_factory, server_defaults):
    """The shared server (tests/client has one of its own: the same definition)."""
    with shared_server(request.param, tmp_path_factory, server_defaults) as srv:
        yield srv


def _factory(tmp_path, make_one):
    made = []

    def make(config=None, name="dedicated", start=True):
        srv = make_one(tmp_path / f"{name}{len(made)}", config, name)
        made.append(srv)
        if start:
            start_server(srv)
        else:
            LIVE.append(srv)
        return srv

    return make, made


def _stop_all(made):
    for srv in made:
        stop_server(srv)


@pytest.fixture
def server_factory(tmp_path, server_defaults):
    make, made = _factory(tmp_path, lambda workdir, config, name:
                          EmbeddedProcess(workdir, merge_config(server_defaults, config), name))
    yield make
    _stop_all(made)


@pytest.fixture(params=DEPLOYMENTS)
def config_server(request, tmp_path, server_defaults):
    make, made = _factory(tmp_path, lambda workdir, config, name:
                          make_server(request.param, workdir, merge_config(server_defaults, config), name))
    yield make
    _stop_all(made)


@pytest.fixture
def deployment_factory(tmp_path, server_defaults):
    made = []

    def make(config=None, mysql=None, redis=None, name="dist"):
        dep = make_server("distributed", tmp_path / f"{name}{len(made)}", merge_config(server_defaults, config),
                          name, mysql=mysql, redis=redis)
        made.append(dep)
        return start_server(dep)

    yield make
    _stop_all(made)


@pytest.fixture(autouse=True)
def _kill_leftover_processes():
    """LineProcs a test left running are killed after it."""
    yield
    while LIVE_PROCS:
        proc = LIVE_PROCS.pop()
        if proc.proc.poll() is None:
            proc.kill()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for srv in list(LIVE):
            report.sections.append((f"imsrv {srv.name} (pid {srv.main_pid}) log tail", srv.tail(40)))

