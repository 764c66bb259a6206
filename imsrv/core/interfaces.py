"""What a server gives the core when it builds it (:class:`imsrv.core.app.App`), so that the
core knows nothing of gevent, Redis or the deployment it runs in:

``send_path``
    a :class:`SendPath`: where the sends of the gateway (and ``notify``) go to be stored.
    Embedded: the in-process forwarder (imsrv/servers/local_forwarder.py); a distributed
    gateway: the Redis ingress stream (imsrv/servers/ingress.py); the API daemon and unit
    tests: :class:`StoreInProcess` (the default).
``choose_gateway``
    a :class:`ChooseGateway`: the gateway a login names.  Embedded: the one gateway; the
    API daemon: the least-loaded live one (imsrv/servers/api_daemon.py); default
    :func:`no_gateway`.
``limits``
    an :class:`imsrv.core.ratelimit.Limits`: in-process by default, shared in Redis in the
    distributed deployment (imsrv.backends.redis_limits.shared_limits).
``schedule``
    ``schedule(delay, fn) -> cancel``: runs ``fn`` after ``delay`` seconds unless
    ``cancel()`` is called first (the sessions' gap timers; the gateway gives a gevent one).

Which backend errors mean "unavailable" is declared by the backends themselves
(``unavailable_errors``, imsrv.backends.base).
"""
from typing import Callable, Protocol

Schedule = Callable[[float, Callable[[], None]], Callable[[], None]]


class SendPath(Protocol):
    def forward(self, reqs):
        """Store ``reqs`` (SendRequests: the consecutive sends of one read of one
        connection, or one notify) and return once each has its ``result``: an ack dict, an
        ImError, or an OutcomeUnknown (no answer in time; stored or not)."""


class StoreInProcess:
    """The SendPath that stores each batch in the calling greenlet, through the core's
    Messaging (the API daemon's notify: seqs come from the store, so this is as safe as a
    forwarder doing it; unit tests)."""

    def __init__(self, messaging):
        self.forward = messaging.process_batch


class ChooseGateway(Protocol):
    def __call__(self):
        """-> {"gateway": "host:port", "gateways": ["host:port", ...]} for a login reply;
        raises Unavailable when no gateway is running."""


def no_gateway():
    """The ChooseGateway of a process that serves no logins (a distributed gateway)."""
    return {"gateway": None, "gateways": []}
