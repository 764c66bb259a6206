"""imsrv.runtime: gevent monkey-patching happens in one place, the `imsrv` command, for
the commands that run servers, and a server refuses to start unpatched.

Patching is process-wide and cannot be undone, so every case runs in a fresh Python
process of its own (the test process itself is never patched)."""
import subprocess
import sys
import textwrap

import pytest


def run_py(code, timeout=30):
    """Run ``code`` in a fresh interpreter -> its stdout lines (fails on a non-zero exit)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_patch_is_idempotent_and_assert_patched_passes_after_it():
    out = run_py("""
        from imsrv import runtime
        print(runtime.patched())
        runtime.patch()
        print(runtime.patched())
        runtime.patch()                 # a second call changes nothing
        runtime.assert_patched("test server")
        import socket, gevent.socket
        print(socket.socket is gevent.socket.socket)
    """)
    assert out == ["False", "True", "True"]


def test_assert_patched_refuses_an_unpatched_process_clearly():
    out = run_py("""
        from imsrv import runtime
        try:
            runtime.assert_patched("imsrv serve")
        except runtime.NotPatched as exc:
            print(repr(str(exc)).replace(" ", "_"))
        else:
            print("not-raised")
    """)
    message = out[0].replace("_", " ")
    assert message.startswith("'imsrv serve: gevent has not monkey-patched this process")
    assert "imsrv.runtime.patch()" in message


@pytest.mark.parametrize("argv,patched", [
    (["serve", "--api-port", "not-a-number"], True),
    (["gateway", "--no-such-option"], True),
    (["forwarder", "--no-such-option"], True),
    (["api", "--no-such-option"], True),
    (["config"], False),
    (["call", "--no-such-option"], False),
    (["initdb", "--no-such-option"], False),
    (["chat", "--no-such-option"], False),
])
def test_the_imsrv_command_patches_exactly_the_server_commands(argv, patched):
    """main() patches before it parses (the bad option makes each command stop right
    after parsing, before it starts anything)."""
    out = run_py(f"""
        import contextlib, io
        from imsrv import runtime
        from imsrv.cli.main import main
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                main({argv!r})
            except SystemExit:
                pass
        print(runtime.patched())
    """)
    assert out == [str(patched)]


def test_serve_started_without_the_imsrv_command_refuses_before_binding():
    """cmd_serve called directly (not through main, so never patched) refuses before it
    binds a port or makes its data directory."""
    out = run_py("""
        import os, tempfile
        from imsrv import runtime
        from imsrv.cli.main import build_parser
        data = os.path.join(tempfile.mkdtemp(), "data")
        args = build_parser().parse_args(["serve", "--data", data, "--api-port", "0",
                                          "--gateway-port", "0", "--ws-port", "0"])
        try:
            args.fn(args)
        except runtime.NotPatched as exc:
            print("refused", os.path.exists(data), str(exc).startswith("imsrv serve:"))
    """)
    assert out == ["refused", "False", "True"]
