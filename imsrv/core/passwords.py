"""Password hashing (argon2id) and login tokens.

Hashing is slow on purpose; callers run it off the event loop (see ``offload`` in
:class:`imsrv.core.accounts.Accounts`).  Tokens are 256 random bits; only their SHA-256 is
stored, so a leaked database does not leak live tokens.
"""
import hashlib
import secrets

from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class PasswordHasher:
    def __init__(self, time_cost=3, memory_cost=65536, parallelism=1):
        self._ph = _Argon2(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)

    def hash(self, password):
        return self._ph.hash(password)

    def verify(self, pw_hash, password):
        try:
            return self._ph.verify(pw_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


def new_token():
    return secrets.token_urlsafe(32)


def token_hash(token):
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
