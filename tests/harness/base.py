"""What every test server is: its config (``BASE_CONFIG``, ``merge_config``, ``to_toml``) and
the interface both deployments offer (``Server``; harness.servers says what it has)."""
import json
from pathlib import Path

from .procs import HOST
from .wire import DEFAULT_TIMEOUT, Client

ADMIN_KEY = "e2e-admin-key-7f3a9c"

#: what every test server's config has under its own: fast password hashing
BASE_CONFIG = {
    "accounts": {"argon2_time_cost": 1, "argon2_memory_cost": 8192},
}


# ------------------------------------------------------------------------------ config


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    raise TypeError(f"unsupported config value {v!r}")


def to_toml(config):
    out = []
    for section, values in config.items():
        out.append(f"[{section}]")
        for k, v in values.items():
            out.append(f"{k} = {_toml_value(v)}")
        out.append("")
    return "\n".join(out)


def merge_config(*configs):
    """Section-wise merge; later configs win."""
    merged = {}
    for cfg in configs:
        for section, values in (cfg or {}).items():
            merged.setdefault(section, {}).update(values)
    return merged


# ------------------------------------------------------------------------ the interface


class Server:
    """What both deployments offer (see the module docstring)."""

    deployment = None
    host = HOST

    def __init__(self, workdir, name):
        self.workdir = Path(workdir)
        self.name = name
        self.env = {}
        self.proc = None
        #: the ssl.SSLContext that api() and gateway() connect with (None: plain); a test
        #: of a server with [tls] sets it (tests/e2e/test_tls.py)
        self.tls = None

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} api={self.api_port} gateways={self.gateway_ports}>"

    # -- addresses
    @property
    def api_addr(self):
        return (self.host, self.api_port)

    @property
    def gateway_addr(self):
        return (self.host, self.gateway_port)

    @property
    def api_address(self):
        return f"{self.host}:{self.api_port}"

    @property
    def gateway_address(self):
        return f"{self.host}:{self.gateway_port}"

    @property
    def gateway_addresses(self):
        """The gateways a login may name."""
        return [f"{self.host}:{port}" for port in self.gateway_ports]

    # the WebSocket ports (``ws_ports``, one per gateway; ``ws_port``: gateway 0's, None
    # when the config turns them off)
    @property
    def ws_addr(self):
        return (self.host, self.ws_port)

    @property
    def ws_addrs(self):
        return [(self.host, port) for port in self.ws_ports]

    @property
    def websocket_addresses(self):
        """The WebSocket ports a login may name ("host:port", gateway i's at i)."""
        return [f"{self.host}:{port}" for port in self.ws_ports]

    # -- wire clients
    def api(self, mode="binary", timeout=DEFAULT_TIMEOUT):
        return Client(self.host, self.api_port, mode, timeout, label=f"{self.name}/api", tls=self.tls)

    def _gateway_index(self):
        return 0

    def gateway(self, mode="binary", timeout=DEFAULT_TIMEOUT, rcvbuf=None, index=None):
        """A connection to a gateway: ``index``, or the next one in turn."""
        i = self._gateway_index() if index is None else index
        return Client(self.host, self.gateway_ports[i], mode, timeout,
                      label=f"{self.name}/gw{i}", rcvbuf=rcvbuf, tls=self.tls)

    # -- processes and logs
    @property
    def main_pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        raise NotImplementedError

    def tail(self, n=40):
        return "\n".join(self.log_text().splitlines()[-n:])

    def count(self, text):
        """How many logged lines contain ``text``."""
        return sum(1 for line in self.log_text().splitlines() if text in line)

    def stop(self):
        return self.kill()
