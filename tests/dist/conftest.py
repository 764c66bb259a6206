"""Fixtures of the distributed-deployment tests (real supervisord, MariaDB and Redis)."""
import atexit

import pytest

import services

from .deployment import Deployment

_LIVE = []


@atexit.register
def _kill_leftovers():
    for dep in list(_LIVE):
        try:
            dep.kill()
        except Exception:
            pass


@pytest.fixture
def deployment_factory(tmp_path):
    """deployment_factory(config=None, mysql=None, redis=None) -> a started Deployment
    (on the shared services unless given private ones), killed after the test."""
    made = []

    def make(config=None, mysql=None, redis=None, name="dist"):
        mysql = mysql or services.need(services.ensure_mysql, "a MySQL/MariaDB server")
        redis = redis or services.need(services.ensure_redis, "a Redis server")
        dep = Deployment(tmp_path / f"{name}{len(made)}", mysql, redis, config, name=name)
        made.append(dep)
        _LIVE.append(dep)
        return dep.start()

    yield make
    for dep in made:
        try:
            dep.kill()
        finally:
            _LIVE.remove(dep)
