"""`make test`: the whole suite on the Cython codec, then again on the pure-Python twin
(IMSRV_PUREPYTHON=1) all of it but the slow tests and what never touches the codec, so
both codec implementations serve real clients on both deployments:

- tests/e2e and tests/client, embedded and distributed (their ``server`` fixtures are
  parametrised), without ``-m slow`` (tests/e2e/test_load.py: the load runs);
- tests/dist/test_deployment.py: the supervisord set itself (the fault tests are slow);
- the unit tests of core, the dispatcher, sessions, config, the cluster messages and the
  Redis hub and limits, and the codec's
  implementation-selection test (test_codec.py's vectors run both implementations in the
  first pass already; the store tests never touch the codec).

Exits non-zero if any run fails or collects no tests.
"""
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: what the pure-Python pass runs (see the docstring)
PURE_PASS = ["-q", "tests/e2e", "tests/client", "tests/dist/test_deployment.py",
             "tests/test_core.py", "tests/test_session_order.py", "tests/test_session_early.py",
             "tests/test_config.py", "tests/test_redis_hub.py", "tests/test_redis_limits.py",
             "tests/test_dispatch.py", "tests/test_cluster_messages.py",
             "tests/test_codec.py::test_public_module_reexports"]


def run(title, args, extra_env):
    env = dict(os.environ)
    env.update(extra_env)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"] + args
    print(f"\n=== {title}: {' '.join(cmd[1:])} {extra_env or ''}", flush=True)
    t0 = time.monotonic()
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    print(f"=== {title}: exit {rc} in {time.monotonic() - t0:.0f}s", flush=True)
    return rc


def main():
    passthrough = sys.argv[1:]
    failures = []
    if run("full suite, Cython codec", ["-q", "tests"] + passthrough, {}) != 0:
        failures.append("full suite (Cython codec)")
    if run("server, client and unit suites, pure-Python codec", PURE_PASS + ["-m", "not slow"] + passthrough,
           {"IMSRV_PUREPYTHON": "1", "IMSRV_REQUIRE_EXT": "0"}) != 0:
        failures.append("server, client and unit suites (pure-Python codec)")
    if failures:
        print("FAILED: " + ", ".join(failures))
        return 1
    print("all test runs passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
