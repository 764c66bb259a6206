"""Accounts: registration, login, tokens, profiles, login-attempt limits."""
import time

from ..backends.base import DuplicateKey
from ..protocol.errors import Conflict, NotFound, RateLimited, Unauthorized
from .passwords import PasswordHasher, new_token, token_hash
from .ratelimit import FailureWindow, retry_seconds

# Names the server itself speaks as; nobody may register them.
RESERVED_NAMES = frozenset(("system", "admin", "root", "imsrv"))


def now_ms():
    return int(time.time() * 1000)


class Accounts:
    def __init__(self, store, cfg, offload=None, monotonic=time.monotonic):
        self.store = store
        self.cfg = cfg
        self.hasher = PasswordHasher(
            cfg.accounts.argon2_time_cost, cfg.accounts.argon2_memory_cost, cfg.accounts.argon2_parallelism
        )
        # Hashing takes tens of ms of CPU: the server passes a function that runs it in a
        # thread pool so other connections keep moving.
        self.offload = offload or (lambda fn, *a: fn(*a))
        self.monotonic = monotonic
        lim = cfg.limits
        self.user_failures = FailureWindow(lim.login_user_attempts, lim.login_window)
        self.addr_failures = FailureWindow(lim.login_addr_attempts, lim.login_window)

    # ------------------------------------------------------------------ register / login
    def register(self, user, password, name=None):
        if user in RESERVED_NAMES:
            raise Conflict(f"user name {user!r} is reserved")
        if self.store.get_user(user) is not None:
            raise Conflict(f"user name {user!r} is taken")
        pw_hash = self.offload(self.hasher.hash, password)
        try:
            self.store.create_user(user, pw_hash, name if name is not None else user, now_ms())
        except DuplicateKey:
            raise Conflict(f"user name {user!r} is taken") from None
        return {"user": user}

    def login(self, user, password, device, addr):
        now = self.monotonic()
        for window, key, what in ((self.user_failures, user, f"user {user!r}"),
                                  (self.addr_failures, addr, f"address {addr}")):
            wait = window.blocked_for(key, now)
            if wait > 0:
                raise RateLimited(f"too many failed logins for {what}", retry_seconds(wait))
        row = self.store.get_user(user)
        # Verify against a real hash even for unknown users so timing does not reveal them.
        pw_hash = row["pw_hash"] if row else self._dummy_hash()
        ok = self.offload(self.hasher.verify, pw_hash, password)
        if not (row and ok):
            self.user_failures.failed(user, now)
            self.addr_failures.failed(addr, now)
            raise Unauthorized("wrong user name or password")
        self.user_failures.reset(user)
        token = new_token()
        ttl = self.cfg.accounts.token_ttl
        self.store.add_token(token_hash(token), user, device, now_ms() + ttl * 1000)
        return {"token": token, "user": user, "expires_in": ttl}

    _dummy = None

    def _dummy_hash(self):
        if Accounts._dummy is None:
            Accounts._dummy = self.hasher.hash("imsrv-not-a-password")
        return Accounts._dummy

    # ------------------------------------------------------------------ tokens
    def resolve(self, token):
        """token -> (user, device, token_hash); Unauthorized if unknown or expired."""
        th = token_hash(token)
        row = self.store.get_token(th)
        if row is None:
            raise Unauthorized("invalid or revoked token")
        if row["expires"] <= now_ms():
            self.store.delete_token(th)
            raise Unauthorized("token expired; log in again")
        return row["user"], row["device"], th

    def logout(self, token):
        th = token_hash(token)
        self.store.delete_token(th)
        return th

    # ------------------------------------------------------------------ profiles
    def require_user(self, user):
        row = self.store.get_user(user)
        if row is None:
            raise NotFound(f"no such user {user!r}")
        return row

    def set_profile(self, user, name=None, text=None):
        self.store.set_profile(user, name=name, text=text)
