"""The ``admin_key`` check of every op that carries one: the admin ops (imsrv/core/admin.py)
and ``notify`` (imsrv/core/app.py), throttled per caller address like a password.

A wrong key is a failed guess of a secret, so it goes through the login throttle
(:class:`~imsrv.core.ratelimit.LoginThrottle`, the server's: in this process embedded,
in Redis and shared by every API daemon distributed) as failed logins of a pseudo user,
:data:`THROTTLE_USER`, which is no valid user name (no login shares its counts).  So, per
the ``[limits]`` section (docs/PROTOCOL.md section 13 says the same for clients):

- ``login_user_attempts`` wrong keys from one address within ``login_window`` s: that
  address is refused until the window ends;
- every wrong key also counts towards that address's ``login_addr_attempts`` (failed
  logins and wrong keys together);
- ``login_user_global_attempts`` wrong keys from all addresses within
  ``login_user_global_window`` s: the addresses that sent a wrong key within that window
  are refused, an address that sent none (the operator's, usually) is not.

:meth:`AdminKeyCheck.check`, in this order: no key configured -> ``unauthorized`` (nothing
compared or counted); the address throttled -> ``rate_limited`` with ``retry_after``
(whole seconds), the key neither compared nor counted, even the right one; a wrong key
(compared in constant time) -> ``unauthorized`` "wrong admin_key", counted.  The right
key clears nothing (unlike a right password): a guesser sharing the operator's address
gets no fresh allowance from the operator's calls, and a call costs no write to Redis;
wrong keys are forgotten when their window ends.
"""
import hmac
import time

from .. import logs
from ..protocol.errors import RateLimited, Unauthorized
from .ratelimit import retry_seconds

#: the name the throttle counts wrong keys under: not a valid user name (those are 3-32 of
#: a-z 0-9 _ . -, not starting with . or -), so no login counts with it
THROTTLE_USER = "-admin_key"

#: LoginThrottle's limit names as the log and the message call them here
_LIMITS = {"user_addr": "admin_key_addr", "addr": "addr", "user": "admin_key_global"}


class AdminKeyCheck:
    """``cfg``: the configuration (``cfg.server.admin_key``); ``throttle``: a
    :class:`~imsrv.core.ratelimit.LoginThrottle` (the server's ``Limits.login_throttle``);
    ``monotonic``: the clock of the in-process windows (seconds)."""

    def __init__(self, cfg, throttle, monotonic=time.monotonic):
        self.cfg = cfg
        self.throttle = throttle
        self.monotonic = monotonic

    def check(self, op, caller, args, event="admin_refused"):
        """Return None if ``args["admin_key"]`` (a string) is the server's key; else raise
        Unauthorized (no key configured; a wrong key, logged as ``event`` and counted) or
        RateLimited (``caller.addr`` throttled, logged as ``rate_limited``)."""
        key = self.cfg.server.admin_key
        if not key:
            raise Unauthorized(f"{op} is disabled: no admin_key is configured on this server")
        addr = caller.addr
        now = self.monotonic()
        wait, limit = self.throttle.check(THROTTLE_USER, addr, now)
        if wait > 0:
            retry = retry_seconds(wait)
            name = _LIMITS.get(limit, limit)
            logs.warning("rate_limited", op=op, addr=addr, limit=name, retry_after=retry)
            if limit == "addr":
                raise RateLimited(f"too many failed logins and wrong admin keys from address {addr}", retry)
            raise RateLimited(f"too many wrong admin keys from address {addr}", retry)
        if not hmac.compare_digest(args["admin_key"].encode("utf-8"), key.encode("utf-8")):
            self.throttle.failed(THROTTLE_USER, addr, now)
            logs.warning(event, op=op, addr=addr, reason="wrong admin_key")
            raise Unauthorized("wrong admin_key")
