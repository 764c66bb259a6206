"""Fixtures of the end-to-end suite (the servers are tests/conftest.py's, on tests/harness).

- ``alice``, ``bob``, ``carol``: a new user each on the shared ``server`` (so of both
  deployments), logged in (harness.users.User).

Every module runs on both deployments (the WebSocket ports too: one per gateway).  In the
distributed deployment ``server.gateway_port`` is gateway 0's port and
``server.gateway_ports`` lists both (login names either: test_login_reply_fields accepts
any of them).
"""

import pytest

from harness.users import befriend, new_user

#: test modules that use ``server`` for something only the embedded server has
EMBEDDED_ONLY_MODULES = {}


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
def alice(server):
    return new_user(server, "alice")


@pytest.fixture
def bob(server):
    return new_user(server, "bob")


@pytest.fixture
def carol(server):
    return new_user(server, "carol")


@pytest.fixture
def pair(server):
    """Two friends (ga*, gb*), for the gateway tests."""
    a = new_user(server, "ga")
    b = new_user(server, "gb")
    befriend(a, b)
    return a, b
