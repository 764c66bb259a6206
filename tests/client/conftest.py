"""Fixtures of the client SDK suite: the servers are tests/conftest.py's (``server``,
``config_server``, ``server_factory``, on tests/harness), with this directory's
``server_defaults``; ``server`` is declared again here (the same definition) so that
this directory has a shared server of its own; here also: logged-in SDK Clients.

- ``server_defaults``: what every server of these tests has under its own config:
  generous login, send and connection rate limits (the SDK tests are not about them) and
  no WebSocket gateway.  The SDK logs in through ``server.api_address`` and goes to
  whichever of ``server.gateway_addresses`` the login names.
- ``make_client(server, user=None, device="dev", register=True, login=True, **Client kwargs)``.
- ``pwfile``: a password file holding the suite's PASSWORD.
"""
import pytest

from harness.servers import DEPLOYMENTS, shared_server
from harness.users import PASSWORD, unique_name
from imsrv.client import Client

SDK_SERVER_CONFIG = {
    "server": {"websocket_port": 0},   # the WebSocket gateway is not what these tests are about
    "limits": {"login_user_attempts": 100000, "login_addr_attempts": 100000,
               "login_user_global_attempts": 100000,
               "user_send_rate": 100000.0, "user_send_burst": 100000,
               "conn_rate": 100000.0, "conn_burst": 100000},
}


@pytest.fixture(scope="session")
def server_defaults():
    return SDK_SERVER_CONFIG


@pytest.fixture(scope="session", params=DEPLOYMENTS)
def server(request, tmp_path_factory, server_defaults):
    """tests/conftest.py's shared ``server``, an instance of its own for this directory."""
    with shared_server(request.param, tmp_path_factory, server_defaults) as srv:
        yield srv


@pytest.fixture
def make_client():
    """make_client(server, user=None, device="dev", register=True, login=True, **Client kwargs)."""
    made = []

    def make(server, user=None, device="dev", register=True, login=True, password=PASSWORD, **kw):
        kw.setdefault("timeout", 5.0)
        c = Client(server.api_address, device=device, **kw)
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


@pytest.fixture
def pwfile(tmp_path):
    """A password file holding the suite's PASSWORD."""
    p = tmp_path / "pw"
    p.write_text(PASSWORD + "\n")
    return str(p)


def befriend(a, b):
    """SDK clients ``a`` and ``b`` become friends (a asks, b accepts)."""
    a.friend_request(b.user)
    b.friend_accept(a.user)
