"""Users on a test server over the wire (harness.wire), for both deployments.

``new_user(server)`` registers and logs in a user with a unique name; ``User`` keeps its
token and opens API requests and gateway connections as it.  The SDK tests (tests/client)
use ``unique_name`` and ``PASSWORD`` for their own users.
"""
import itertools
import random
import string

from .wire import DEFAULT_TIMEOUT

_counter = itertools.count(1)
_RUN = "".join(random.choice(string.ascii_lowercase) for _ in range(3))
PASSWORD = "client-test-pw1"   # the ids of tests parametrised with it show it
def unique_name(prefix="u"):
    suffix = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(3))
    name = f"{prefix}{next(_counter)}_{_RUN}{suffix}"
    assert len(name) <= 32
    return name


class User:
    def __init__(self, server, name, password, token=None, login_reply=None):
        self.server = server
        self.name = name
        self.password = password
        self.token = token
        self.login_reply = login_reply

    def __repr__(self):
        return f"<User {self.name}>"

    def api(self, mode="binary"):
        return self.server.api(mode)

    def call(self, op, expect="ok", **fields):
        """One authenticated API request on a fresh connection, asserting success."""
        with self.server.api() as c:
            return c.call(op, expect, token=self.token, **fields)

    def request(self, op, **fields):
        """One authenticated API request on a fresh connection; returns the reply."""
        with self.server.api() as c:
            return c.request(op, token=self.token, **fields)

    def login(self, device=None):
        return login(self.server, self.name, self.password, device)

    def connect(self, device=None, mode="binary", token=None, timeout=DEFAULT_TIMEOUT):
        """A gateway connection authenticated as this user."""
        c = self.server.gateway(mode, timeout)
        c.label = f"{self.name}/{device or '-'}"
        try:
            c.auth(token or self.token, device)
        except BaseException:
            c.close()
            raise
        return c


def register(server, name=None, password=PASSWORD, display=None, api=None):
    name = name or unique_name()
    fields = {"user": name, "password": password}
    if display is not None:
        fields["name"] = display
    if api is not None:
        return api.call("register", **fields)
    with server.api() as c:
        return c.call("register", **fields)


def login(server, name, password=PASSWORD, device=None, api=None):
    fields = {"user": name, "password": password}
    if device is not None:
        fields["device"] = device
    if api is not None:
        return api.call("login", **fields)
    with server.api() as c:
        return c.call("login", **fields)


def new_user(server, prefix="u", display=None, device=None):
    name = unique_name(prefix)
    with server.api() as c:
        reg = register(server, name, PASSWORD, display, api=c)
        assert reg["user"] == name, reg
        rep = login(server, name, PASSWORD, device, api=c)
    return User(server, name, PASSWORD, rep["token"], rep)


def new_users(server, n, prefix="u"):
    return [new_user(server, prefix) for _ in range(n)]


def befriend(a, b):
    """a asks b, b accepts."""
    with a.server.api() as c:
        c.call("friend_request", token=a.token, to=b.name)
        c.call("friend_accept", token=b.token, user=a.name)


def make_group(owner, members=(), name="grp"):
    rep = owner.call("group_create", name=name, members=[m.name for m in members])
    gid = rep["group"]
    assert isinstance(gid, str) and gid, rep
    return gid


def heads(*users):
    """{user name: inbox head} of each of ``users`` (User), read on a fresh connection:
    a refused request must leave every head where it was."""
    out = {}
    for u in users:
        with u.connect(device="heads") as g:
            out[u.name] = g.head
    return out
