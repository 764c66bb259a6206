"""The servers the tests run against, both deployments behind one interface; tests import
all of it from here.

- ``EmbeddedProcess`` (harness/embedded.py): one `imsrv serve` process (SQLite,
  in-process hub) on free ports and a data dir of its own; restartable on the same ports
  and data.
- ``Deployment`` (harness/deployment.py): the distributed set, the repo's
  supervisord.conf under the REAL supervisord (2 gateways, 2 forwarders, 1 API) over
  MariaDB + Redis, with a database and a Redis key prefix of its own.

What both offer (``Server``, harness/base.py, with the config helpers):

- ``deployment``: ``"embedded"`` or ``"distributed"``;
- where they listen: ``host``, ``api_port``, ``gateway_port`` (gateway 0's),
  ``gateway_ports``; as ``(host, port)`` for sockets: ``api_addr``, ``gateway_addr``; as
  ``"host:port"``, what the SDK and ``imsrv chat --api`` take and a login's ``gateway``
  names: ``api_address``, ``gateway_address``, ``gateway_addresses``;
- the WebSocket ports (one per gateway, unless the config says ``[server] websocket_port =
  0``): ``ws_ports``, ``ws_port`` (gateway 0's, else None), ``ws_addr``, ``ws_addrs``,
  ``websocket_addresses`` (what a login's ``websocket`` names);
- wire clients (harness.wire ``Client``): ``api(mode, timeout)``,
  ``gateway(mode, timeout, rcvbuf, index)`` (the distributed one alternates between the
  gateways unless ``index`` is given, so the users of one test sit on both);
- ``start(timeout)`` returns once every process logged ``event=ready``; ``kill()`` (=
  ``stop()``) is SIGKILL by pid; ``running()``; ``main_pid`` (`imsrv serve`'s /
  supervisord's);
- what the processes logged: ``log_text()``, ``tail(n)``, ``count(text)``;
- ``env``: extra environment of the processes (e.g. ``IMSRV_TEST_HOOKS``), set before
  ``start``.

Only the embedded one has ``restart()``, ``terminate()`` (SIGTERM), ``wait(timeout)``,
``data_dir``; only the distributed
one has the per-daemon tools of the fault tests (``pid(program)``, ``sigkill(program)``,
``log(program)``, ``wait_ready``, ``supervisorctl``, ``sigkill_supervisord``).

``make_server(deployment, ...)`` builds either (a distributed one on the test MariaDB and
Redis of tests/services.py: skipped with the reason when they cannot be had, a failure
under CI=true); ``start_server`` / ``stop_server`` / ``running_server`` also keep it in
``LIVE``, the servers still running: killed when the test process exits, and their log
tails are added to a failing test's report (tests/conftest.py).
"""
import atexit
from contextlib import contextmanager

import services

from .base import ADMIN_KEY, BASE_CONFIG, Server, merge_config, to_toml
from .deployment import Deployment
from .embedded import EmbeddedProcess

__all__ = ["ADMIN_KEY", "BASE_CONFIG", "DEPLOYMENTS", "LIVE", "SHARED_SERVER_CONFIG", "Deployment",
           "EmbeddedProcess", "Server", "make_server", "merge_config", "running_server", "shared_server",
           "start_server", "stop_server", "to_toml"]

DEPLOYMENTS = ("embedded", "distributed")

#: servers started through start_server and not stopped yet
LIVE = []


@atexit.register
def _kill_leftovers():
    """Should the session be interrupted, never leave a server (or supervisord) behind."""
    for srv in list(LIVE):
        try:
            srv.kill()
        except Exception:
            pass


def make_server(deployment, workdir, config=None, name="imsrv", mysql=None, redis=None):
    """An unstarted server of ``deployment``; a distributed one on ``mysql`` / ``redis``
    (URLs) or else the test services (skipped, or failed under CI, when they cannot be had)."""
    if deployment == "embedded":
        return EmbeddedProcess(workdir, config, name)
    assert deployment == "distributed", deployment
    mysql = mysql or services.need(services.ensure_mysql, "a MySQL/MariaDB server (distributed deployment)")
    redis = redis or services.need(services.ensure_redis, "a Redis server (distributed deployment)")
    return Deployment(workdir, mysql, redis, config, name=name)


def start_server(srv, timeout=None):
    """Start ``srv`` and keep it in ``LIVE`` (killed, and dropped from it, if it fails to start)."""
    LIVE.append(srv)
    try:
        srv.start() if timeout is None else srv.start(timeout)
    except BaseException:
        stop_server(srv)
        raise
    return srv


def stop_server(srv):
    """Kill ``srv`` and forget it."""
    try:
        srv.kill()
    finally:
        if srv in LIVE:
            LIVE.remove(srv)


#: what the shared ``server`` fixtures add: the many tests that deliberately fail a login
#: cannot lock each other out
SHARED_SERVER_CONFIG = {
    "limits": {
        "login_user_attempts": 100000,
        "login_addr_attempts": 100000,
        "login_user_global_attempts": 100000,
    },
}


def shared_server(deployment, tmp_path_factory, defaults=None):
    """The body of the shared ``server`` fixtures (tests/conftest.py, tests/client/conftest.py)."""
    config = merge_config(defaults, SHARED_SERVER_CONFIG)
    return running_server(deployment, tmp_path_factory.mktemp(f"shared-{deployment}"), config, name="shared")


@contextmanager
def running_server(deployment, workdir, config=None, name="imsrv", env=None, **kw):
    """A started server of ``deployment`` (``make_server``), stopped on leaving; for
    module-scoped fixtures of a config of their own."""
    srv = make_server(deployment, workdir, config, name, **kw)
    srv.env.update(env or {})
    start_server(srv)
    try:
        yield srv
    finally:
        stop_server(srv)
