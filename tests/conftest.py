"""Fixtures for the external services some tests need (see tests/services.py).

- ``mysql_url`` (session): ``mysql://root@127.0.0.1:3306/imsrv_test_<hex>``, a database
  created for this test session on a usable server and dropped at the end.
- ``redis_url`` (session): ``redis://127.0.0.1:6379/0`` with ``redis_url.prefix``, a key
  prefix (``imsrv_test_<hex>:``) reserved for this session; its keys are deleted at the end.

When the service cannot be had the test is skipped with the reason, except under
``CI=true`` where it fails.
"""
import os

import pytest

import services

# Servers started by tests listen on free ports the tests choose; the WebSocket gateway's
# fixed default (7080) would collide between them, so it is off unless a test passes
# --ws-port (tests/e2e does).
os.environ.setdefault("IMSRV_WEBSOCKET_PORT", "0")


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
