"""`make test`: the whole suite on the Cython codec, then the server suite again on the
pure-Python twin (IMSRV_PUREPYTHON=1), so both codec implementations serve real clients.

Exits non-zero if any run fails or collects no tests.
"""
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    if run("server and client suites, pure-Python codec", ["-q", "tests/e2e", "tests/client", "-m", "not slow"] + passthrough,
           {"IMSRV_PUREPYTHON": "1", "IMSRV_REQUIRE_EXT": "0"}) != 0:
        failures.append("server suite (pure-Python codec)")
    if failures:
        print("FAILED: " + ", ".join(failures))
        return 1
    print("all test runs passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
