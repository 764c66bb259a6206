"""How imsrv's servers do I/O: one gevent process, monkey-patched first thing.

Every server process (``imsrv serve``, ``gateway``, ``forwarder``, ``api``) is gevent
greenlets on one event-loop thread.  Its libraries do blocking I/O in plain Python (redis-py,
PyMySQL, ``time.sleep``, ``threading`` locks): they only yield to other greenlets if gevent
has replaced the standard library's blocking primitives (monkey-patching).  Unpatched, a
query to MySQL or Redis would stop every connection of the process until it returns.

So the patching happens in ONE place, :func:`patch`, called by the ``imsrv`` command
(:func:`imsrv.cli.main.main`) before it imports anything else for the commands in
:data:`SERVER_COMMANDS`, and a server asserts it with :func:`assert_patched` when it
starts.  Patching is process-wide and cannot be undone: the other commands (``chat``, the
SDK, ``call``, ``config``, ``initdb``) never patch.

What still blocks the OS thread even when patched is C code that does its own I/O; the
one imsrv has is SQLite (:mod:`imsrv.backends.sqlite`), whose writes (and their fsync)
therefore run on a writer thread of their own when the process is patched.
"""

#: the ``imsrv`` subcommands that run servers (patched before anything else is imported)
SERVER_COMMANDS = ("serve", "gateway", "forwarder", "api")

#: what "patched" means here: the modules whose blocking calls a server relies on yielding
_NEEDED = ("socket", "select", "time", "_thread", "threading")


class NotPatched(RuntimeError):
    """A server was started in a process that gevent has not monkey-patched."""


def patch():
    """Monkey-patch the standard library for gevent (idempotent).

    Call it before anything imports ssl, redis or pymysql: what they bound from the
    standard library at import time would otherwise stay the blocking original."""
    from gevent import monkey
    if not patched():
        monkey.patch_all()


def patched():
    """True if gevent has patched this process (socket, select, time and threading)."""
    from gevent import monkey
    return all(monkey.is_module_patched(name) for name in _NEEDED)


def assert_patched(what):
    """Raise :class:`NotPatched` unless the process is patched; ``what`` names the server
    being started, for the message."""
    if not patched():
        missing = ", ".join(name for name in _NEEDED if not _is_patched(name))
        raise NotPatched(
            f"{what}: gevent has not monkey-patched this process (unpatched: {missing}); "
            "its blocking I/O would stall every connection.  Start servers with the imsrv "
            "command, or call imsrv.runtime.patch() first thing in your program.")


def _is_patched(name):
    from gevent import monkey
    return monkey.is_module_patched(name)
