"""In-process state and bus for the embedded server: sessions, routing, presence.

The distributed deployment swaps this for the Redis-backed hub with the same methods.
A *session* is any object with ``user``, ``device``, ``generation``, ``token_hash``,
``status``, ``text``, ``push(obj)``, ``own(seq)`` and ``kick(reason)`` (see
imsrv/core/session.py and imsrv.servers.gateway).
"""
import contextlib
import itertools


class LocalHub:
    def __init__(self):
        self.by_user = {}  # user -> {device: session}
        self.announced = {}  # user -> (status, text) last announced to friends
        self._generation = itertools.count(1)
        self.pushes = 0  # objects pushed to sessions (imsrv_pushes_total)

    def batch(self):
        """Pushes inside are delivered at once here; the Redis hub groups them."""
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ sessions
    def attach(self, session):
        """Register a live session; give it a generation; kick the one it replaces.

        -> True if this is the user's first live device (presence went online)."""
        session.generation = next(self._generation)
        devices = self.by_user.setdefault(session.user, {})
        old = devices.get(session.device)
        first = not devices
        devices[session.device] = session
        if old is not None and old is not session:
            old.kick("replaced")
        return first

    def detach(self, session):
        """Forget a session if it is still the current one for its (user, device).

        A replaced session's detach can never remove the newer one (generation check).
        -> True if the user has no live device left."""
        devices = self.by_user.get(session.user)
        if not devices:
            return False
        cur = devices.get(session.device)
        if cur is None or cur.generation != session.generation:
            return False
        del devices[session.device]
        if not devices:
            del self.by_user[session.user]
            return True
        return False

    def sessions(self, user):
        devices = self.by_user.get(user)
        return list(devices.values()) if devices else []

    def is_online(self, user):
        return user in self.by_user

    def online_count(self):
        return sum(len(d) for d in self.by_user.values())

    # ------------------------------------------------------------------ delivery
    def push(self, user, obj, skip=None):
        """Push obj to every live session of user except the session ``skip``."""
        devices = self.by_user.get(user)
        if not devices:
            return 0
        n = 0
        for s in list(devices.values()):
            if s is skip:
                s.own(obj["seq"])  # the sending device got the ack; keep its seq order
            else:
                s.push(obj)
                n += 1
        self.pushes += n
        return n

    def update(self, session):
        """A session's status/text changed (the Redis hub stores it; here it is live)."""

    def kick_token(self, token_hash, reason, user=None):
        for devices in list(self.by_user.values()):
            for s in list(devices.values()):
                if s.token_hash == token_hash:
                    s.kick(reason)

    def kick_user(self, user, reason, keep_token_hash=None, device=None):
        """Kick every live session of ``user`` except those opened with the token whose hash
        is ``keep_token_hash`` (change_password keeps the caller's); only the session of
        ``device`` if given (admin_kick).  -> sessions kicked."""
        n = 0
        for s in self.sessions(user):
            if device is not None and s.device != device:
                continue
            if keep_token_hash is None or s.token_hash != keep_token_hash:
                s.kick(reason)
                n += 1
        return n

    # ------------------------------------------------------------------ admin (imsrv/core/admin.py)
    def devices(self, users):
        """-> {user: sorted device names of their live sessions} for each of ``users``."""
        return {u: sorted(self.by_user.get(u, ())) for u in users}

    def online_users(self):
        """-> how many users have a live session."""
        return len(self.by_user)

    def gateway_connections(self):
        """-> {gateway address: connections}: none known here (the embedded server counts
        its own listeners: EmbeddedServer.connection_counts)."""
        return {}

    # ------------------------------------------------------------------ presence
    def swap_announced(self, user, status, text):
        """Record (status, text) as announced for user; -> the previous pair."""
        prev = self.announced.get(user, ("offline", None))
        if status == "offline":
            self.announced.pop(user, None)
        else:
            self.announced[user] = (status, text)
        return prev

    def presence(self, user):
        """Combined status over the user's devices -> (status, text)."""
        devices = self.by_user.get(user)
        if not devices:
            return "offline", None
        return combine(devices.values())


_RANK = {"online": 3, "busy": 2, "away": 1}


def combine(sessions):
    """online if any device is online, else busy, else away; text of the chosen device."""
    best = None
    for s in sessions:
        if best is None or _RANK.get(s.status, 0) > _RANK.get(best.status, 0):
            best = s
    return best.status, best.text
