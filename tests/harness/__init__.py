"""The one test harness of tests/e2e, tests/client and tests/dist.

- ``harness.wire``: the wire-level test ``Client`` (one API or gateway connection; it
  imports nothing from imsrv) and its errors ``Closed``, ``FrameTimeout``,
  ``ProtocolViolation``;
- ``harness.servers``: the servers, both deployments behind one interface
  (``EmbeddedProcess``: `imsrv serve`, harness/embedded.py; ``Deployment``: the
  supervisord set, harness/deployment.py; what both offer: ``Server`` and the config
  helpers ``BASE_CONFIG``, ``merge_config``, ``to_toml``, ``ADMIN_KEY``, harness/base.py)
  and ``make_server`` / ``start_server`` / ``stop_server`` / ``running_server``; tests
  import all of these from harness.servers;
- ``harness.users``: users over the wire (``new_user``, ``User``, ``befriend``,
  ``make_group``, ``unique_name``, ``PASSWORD``);
- ``harness.procs``: free ports, child environments, ``wait_until``, ``in_thread``,
  kill-by-pid, ``LineProc`` (a child whose stdout lines are collected).

The fixtures built on it (``server``, ``server_factory``, ``config_server``,
``deployment_factory``) are in tests/conftest.py.
"""
