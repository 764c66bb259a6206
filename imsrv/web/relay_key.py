"""The relay key: how the API service tells a genuine ``POST /api`` relay from anyone else.

The relay (imsrv/web/relay.py) puts into every request it relays the field
``relay: {"addr": <the browser's address>, "key": <this deployment's relay key>}``,
replacing whatever ``relay`` the browser sent.  The API service (imsrv/servers/api.py)
then takes ``addr`` as the caller's address (failed-login throttling, logs) instead of
the relay's own; only when ``key`` is the deployment's key (compared in constant time).
A ``relay`` field with another key is answered ``unauthorized`` (message starting with
:data:`REFUSED`) and nothing else happens; one of the wrong shape is ``bad_request``.

The key is a secret shared by the processes of one deployment:

- embedded (:class:`RelayKey`): random per process, given to the relay and the API
  service at construction;
- distributed (:class:`RedisRelayKey`): a random value created once in Redis with
  ``SET NX`` at ``<cluster.redis_prefix>:relay_key``, read by every gateway (the relay)
  and API daemon when it starts.  Redis restarted empty: the first process that meets a
  refused key (an API daemon comparing, a relay refused) puts its own value back (``SET
  NX``, so the value every running process holds) and reads what Redis holds then.  An
  API daemon does so at most once per :data:`REFRESH_EVERY` seconds, so that wrong keys
  sent by anyone cannot flood Redis; a relay on every refusal (only the API's answer to
  its own key, which a browser cannot choose, triggers it: at most one read per relayed
  request, while the keys differ).
"""
import hmac
import math
import secrets
import time

from .. import logs
from ..protocol.errors import BadRequest, Unauthorized

FIELD = "relay"            # the request field
MAX_ADDR = 64              # characters of a relayed address (an IPv6 one with a zone fits)
KEY_BYTES = 32             # random bytes of a key (hex: 64 characters)
REFRESH_EVERY = 1.0        # seconds between two reads of the key from Redis by one process
REFUSED = "relay key refused"   # the start of the API's message for a wrong key


class RelayKey:
    """A key of this process only (embedded): ``value``, :meth:`verify`; never changes."""

    def __init__(self, value=None):
        self.value = value or secrets.token_hex(KEY_BYTES)

    def matches(self, key):
        """``key`` is the current value (constant-time comparison)."""
        return type(key) is str and hmac.compare_digest(key.encode("utf-8"), self.value.encode("utf-8"))

    def verify(self, key):
        """``key`` is the deployment's key: the current value, or the value re-read after a
        mismatch (:meth:`refresh`)."""
        return self.matches(key) or (self.refresh() and self.matches(key))

    def refresh(self):
        """Re-read the shared value; -> True when it changed (never, here)."""
        return False


class RedisRelayKey(RelayKey):
    """The distributed deployment's key, ``<prefix>:relay_key`` in Redis (see the module
    docstring).  :meth:`load` at start (waits for Redis), then :meth:`refresh` on a refusal,
    at most once per ``min_interval`` seconds (the API daemon's: REFRESH_EVERY; a relay's: 0)."""

    def __init__(self, redis, prefix, min_interval=REFRESH_EVERY, clock=time.monotonic):
        self.redis = redis
        self.name = f"{prefix}:relay_key"
        self.min_interval = min_interval
        self.clock = clock
        self.value = None
        self.read_at = -math.inf

    def _read(self):
        """SET NX of our value (a new random one before the first read), then GET."""
        candidate = self.value or secrets.token_hex(KEY_BYTES)
        self.redis.set(self.name, candidate, nx=True)
        self.read_at = self.clock()
        return self.redis.get(self.name) or candidate

    def load(self, retry=1.0):
        """Read (or create) the key; waits for Redis, retrying every ``retry`` seconds."""
        while True:
            try:
                self.value = self._read()
                return self
            except Exception as exc:   # redis-py's errors: Redis not up yet
                logs.warning("relay_key_unavailable", key=self.name, error=repr(exc))
                time.sleep(retry)

    def refresh(self):
        if self.clock() - self.read_at < self.min_interval:
            return False
        old = self.value
        try:
            self.value = self._read()
        except Exception as exc:   # Redis down: the value we hold stays
            self.read_at = self.clock()
            logs.warning("relay_key_unavailable", key=self.name, error=repr(exc))
            return False
        if self.value != old:
            logs.info("relay_key_changed", key=self.name)
        return self.value != old


def relayed_address(frame, key):
    """Remove the ``relay`` field from ``frame`` (an API request that has one) -> the
    browser's address it names.  Raises BadRequest (not ``{"addr": str, "key": str}``) or
    Unauthorized (``key`` None, or the field's key is not the deployment's)."""
    relay = frame.pop(FIELD)
    addr = relay.get("addr") if type(relay) is dict else None
    if type(addr) is not str or not 0 < len(addr) <= MAX_ADDR or type(relay.get("key")) is not str:
        raise BadRequest(f"field '{FIELD}' must be an object {{\"addr\": string of 1-{MAX_ADDR} "
                         "characters, \"key\": string}")
    if key is None or not key.verify(relay["key"]):
        raise Unauthorized(f"{REFUSED}: field '{FIELD}' is only for this server's own web relay")
    return addr
