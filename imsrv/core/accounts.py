"""Accounts: registration, login, tokens, profiles, password change, account deletion,
failed-login throttling (:class:`~imsrv.core.ratelimit.LoginThrottle`); a login refused
while an admin ban is in effect (:func:`banned_error`; bans: imsrv/core/admin.py).

Every password check (login, and the current password of change_password and
delete_account) goes through :meth:`Accounts.verify`: throttled first, counted when wrong,
logged (``event=login_failed``, ``event=rate_limited``; never a password, never a token:
at most the first 8 hex digits of a token's hash, ``th=``).
"""
import time

from .. import logs
from ..backends.base import DuplicateKey
from ..protocol.errors import Conflict, NotFound, RateLimited, Unauthorized
from .passwords import PasswordHasher, new_token, token_hash
from .ratelimit import LoginThrottle, retry_seconds

# Names the server itself speaks as; nobody may register them.
RESERVED_NAMES = frozenset(("system", "admin", "root", "imsrv", "all"))   # "all": mentions ["all"]
WRONG_LOGIN = "wrong user name or password"
WRONG_PASSWORD = "wrong password"
# No token the server issues is longer (new_token: 43 characters); a longer string is not
# looked up, it is simply not a valid token (`unauthorized`)
MAX_TOKEN_CHARS = 256


def now_ms():
    return int(time.time() * 1000)


def banned_error(user, ban):
    """The answer to a banned user's login (right password): unauthorized with the ban's
    reason in the message, and as fields ``reason`` and ``banned_until`` (-1: for ever, else
    ms since the epoch)."""
    until = ban["until"]
    if until == -1:
        when = "for ever"
    else:
        when = "until " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(until // 1000))
    return Unauthorized(f"user {user!r} is banned {when}: {ban['reason']}", reason=ban["reason"],
                        banned_until=until)


def short_hash(th):
    """What of a token hash may be logged: its first 8 hex digits."""
    return th[:8] if th else "-"


class Accounts:
    def handlers(self):
        """{op: fn(who, args)} of the protocol v1.1 ops this area answers (see App)."""
        return {}

    def __init__(self, store, cfg, offload=None, monotonic=time.monotonic, throttle=None):
        self.store = store
        self.cfg = cfg
        self.hasher = PasswordHasher(
            cfg.accounts.argon2_time_cost, cfg.accounts.argon2_memory_cost, cfg.accounts.argon2_parallelism
        )
        # Hashing takes tens of ms of CPU: the server passes a function that runs it in a
        # thread pool so other connections keep moving.
        self.offload = offload or (lambda fn, *a: fn(*a))
        self.monotonic = monotonic
        # in-process windows unless the server gives shared ones (the core's Limits)
        self.throttle = throttle if throttle is not None else LoginThrottle(cfg.limits)

    # ------------------------------------------------------------------ register / login
    def register(self, user, password, name=None, addr="-"):
        if user in RESERVED_NAMES:
            raise Conflict(f"user name {user!r} is reserved")
        # a deleted account keeps its row: its name stays taken
        if self.store.get_user(user) is not None:
            raise Conflict(f"user name {user!r} is taken")
        pw_hash = self.offload(self.hasher.hash, password)
        try:
            self.store.create_user(user, pw_hash, name if name is not None else user, now_ms())
        except DuplicateKey:
            raise Conflict(f"user name {user!r} is taken") from None
        logs.info("register", user=user, addr=addr)
        return {"user": user}

    def verify(self, user, password, addr, op="login", wrong=WRONG_LOGIN):
        """Check ``user``'s password -> their user row.  RateLimited while throttled (not
        verified, not counted); Unauthorized(``wrong``) for a wrong password, an unknown
        or a deleted user (counted as a failed login)."""
        now = self.monotonic()
        wait, limit = self.throttle.check(user, addr, now)
        if wait > 0:
            retry = retry_seconds(wait)
            logs.warning("rate_limited", op=op, user=user, addr=addr, limit=limit, retry_after=retry)
            if limit == "addr":
                raise RateLimited(f"too many failed logins from address {addr}", retry)
            raise RateLimited(f"too many failed logins for user {user!r} from address {addr}", retry)
        row = self.store.get_user(user)
        live = row is not None and not row.get("deleted")
        # Verify against a real hash even for unknown users so timing does not reveal them.
        pw_hash = row["pw_hash"] if live else self._dummy_hash()
        ok = self.offload(self.hasher.verify, pw_hash, password)
        if not (live and ok):
            self.throttle.failed(user, addr, now)
            reason = "wrong_password" if live else ("deleted_user" if row is not None else "no_such_user")
            logs.warning("login_failed", op=op, user=user, addr=addr, reason=reason)
            raise Unauthorized(wrong)
        self.throttle.succeeded(user, addr)
        return row

    def login(self, user, password, device, addr):
        row = self.verify(user, password, addr)
        token = new_token()
        th = token_hash(token)
        ttl = self.cfg.accounts.token_ttl
        # only if the password just verified is still the user's (not changed, not deleted
        # since) and no ban is in effect: a login racing change_password / delete_account /
        # admin_ban never yields a token the change did not revoke
        now = now_ms()
        if not self.store.add_login_token(th, user, device, now + ttl * 1000, row["pw_hash"], now):
            ban = self.store.get_ban(user, now)
            if ban is not None:   # the password was right: the user may know why
                logs.warning("login_failed", op="login", user=user, addr=addr, reason="banned",
                             banned_until=ban["until"])
                raise banned_error(user, ban)
            logs.warning("login_failed", op="login", user=user, addr=addr, reason="password_changed")
            raise Unauthorized(WRONG_LOGIN)
        logs.info("login", user=user, device=device, addr=addr, th=short_hash(th))
        return {"token": token, "user": user, "expires_in": ttl}

    _dummy = None

    def _dummy_hash(self):
        if Accounts._dummy is None:
            Accounts._dummy = self.hasher.hash("imsrv-not-a-password")
        return Accounts._dummy

    # ------------------------------------------------------------------ tokens
    def resolve(self, token):
        """token -> (user, device, token_hash); Unauthorized if unknown or expired (or not
        even shaped like a token: empty or longer than any token the server issues)."""
        if not 1 <= len(token) <= MAX_TOKEN_CHARS:
            raise Unauthorized("invalid or revoked token")
        th = token_hash(token)
        row = self.store.get_token(th)
        if row is None:
            raise Unauthorized("invalid or revoked token")
        if row["expires"] <= now_ms():
            if self.store.delete_token(th):
                logs.info("token_expired", user=row["user"], device=row["device"], th=short_hash(th))
            raise Unauthorized("token expired; log in again")
        return row["user"], row["device"], th

    def logout(self, token):
        th = token_hash(token)
        self.store.delete_token(th)
        return th

    # ------------------------------------------------------------------ account safety
    def change_password(self, user, password, new_password, keep_th, addr):
        """Verify ``password``, store the hash of ``new_password`` and revoke every token of
        ``user`` but ``keep_th`` (the caller's).  -> number of tokens revoked."""
        row = self.verify(user, password, addr, "change_password", WRONG_PASSWORD)
        new_hash = self.offload(self.hasher.hash, new_password)
        revoked = self.store.set_password(user, row["pw_hash"], new_hash, keep_th)
        if revoked is None:  # changed (or deleted) by someone else since we verified
            logs.warning("login_failed", op="change_password", user=user, addr=addr, reason="password_changed")
            raise Unauthorized(WRONG_PASSWORD)
        return revoked

    def delete_account(self, user, password, addr, group_events=None):
        """Verify ``password`` and delete the account (see Store.delete_user, which takes
        ``group_events``).  -> the store's summary {"friends", "groups", "tokens"} (and
        "events", the queued group events, with ``group_events``)."""
        row = self.verify(user, password, addr, "delete_account", WRONG_PASSWORD)
        out = self.store.delete_user(user, row["pw_hash"], now_ms(), group_events)
        if out is None:
            logs.warning("login_failed", op="delete_account", user=user, addr=addr, reason="password_changed")
            raise Unauthorized(WRONG_PASSWORD)
        return out

    # ------------------------------------------------------------------ profiles
    def require_user(self, user):
        row = self.store.get_user(user)
        if row is None or row.get("deleted"):
            raise NotFound(f"no such user {user!r}")
        return row

    def set_profile(self, user, name=None, text=None, avatar=None):
        """None leaves a field as is; avatar "" removes the avatar."""
        self.store.set_profile(user, name=name, text=text, avatar=avatar)
