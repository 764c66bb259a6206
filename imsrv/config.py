"""Settings: defaults, a TOML file, environment overrides, then command-line flags.

Every key and its default is in :data:`DEFAULTS` and documented in ``imsrv/sample.toml``
(``imsrv config`` prints that file).  Environment overrides: ``IMSRV_<SECTION>_<KEY>`` for
any key (e.g. ``IMSRV_LIMITS_IDLE_TIMEOUT=30``) plus the short aliases in :data:`ALIASES`
(``IMSRV_DATABASE_URL``, ``IMSRV_ADMIN_KEY``, ...).
"""
import copy
import os

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

DEFAULTS = {
    "server": {
        "host": "127.0.0.1",
        "api_port": 7001,
        "gateway_port": 7000,
        "websocket_port": 7080,
        "websocket_origins": "",
        "advertise": "",
        "data_dir": "./var",
        "database_url": "",
        "admin_key": "",
        "log_level": "info",
        "log_format": "text",
        "metrics_port": 7090,
    },
    "limits": {
        "max_frame": 65536,
        "auth_timeout": 10.0,
        "idle_timeout": 90.0,
        "api_idle_timeout": 30.0,
        "send_queue_bytes": 1048576,
        "max_connections": 10000,
        "conn_rate": 100.0,
        "conn_burst": 200,
        "web_api_rate": 20.0,
        "web_api_burst": 100,
        "user_send_rate": 50.0,
        "user_send_burst": 100,
        "login_user_attempts": 10,
        "login_addr_attempts": 50,
        "login_window": 60.0,
        "login_user_global_attempts": 100,
        "login_user_global_window": 900.0,
        "shutdown_grace": 10.0,
        "retry_after": 5.0,
    },
    "accounts": {
        "token_ttl": 604800,
        "argon2_time_cost": 3,
        "argon2_memory_cost": 65536,
        "argon2_parallelism": 1,
    },
    "policy": {
        "require_friends": True,
    },
    "messages": {
        "recall_window": 120,
        "edit_window": 86400,
    },
    "groups": {
        "max_members": 500,
    },
    "retention": {
        "days": 0.0,   # a float: fractions of a day are allowed (tests use a few seconds)
        "purge_interval": 60.0,
        "purge_batch": 1000,
    },
    "hooks": {
        "before_send": "",
        "after_send": "",
        "offline": "",
        "secret": "",
        "timeout": 1.0,
        "fail_open": True,
        "batch": 100,
        "retry_max": 60.0,
    },
    "tls": {
        "cert": "",
        "key": "",
        "required": False,
    },
    "cluster": {
        "redis_url": "redis://127.0.0.1:6379/0",
        "redis_prefix": "imsrv",
        "public_host": "",
        "send_timeout": 30.0,
        "forwarder_batch": 512,
        "claim_idle": 5.0,
        "entry_ttl": 20.0,
        "load_report_every": 2.0,
        "gateway_dead_after": 30.0,
    },
}

ALIASES = {
    "IMSRV_DATABASE_URL": ("server", "database_url"),
    "IMSRV_ADMIN_KEY": ("server", "admin_key"),
    "IMSRV_DATA_DIR": ("server", "data_dir"),
    "IMSRV_HOST": ("server", "host"),
    "IMSRV_API_PORT": ("server", "api_port"),
    "IMSRV_GATEWAY_PORT": ("server", "gateway_port"),
    "IMSRV_WEBSOCKET_PORT": ("server", "websocket_port"),
    "IMSRV_ADVERTISE": ("server", "advertise"),
    "IMSRV_LOG_LEVEL": ("server", "log_level"),
    "IMSRV_LOG_FORMAT": ("server", "log_format"),
    "IMSRV_METRICS_PORT": ("server", "metrics_port"),
    "IMSRV_REDIS_URL": ("cluster", "redis_url"),
    "IMSRV_REDIS_PREFIX": ("cluster", "redis_prefix"),
    "IMSRV_TLS_CERT": ("tls", "cert"),
    "IMSRV_TLS_KEY": ("tls", "key"),
}


#: Test hooks: settings that make the server misbehave on purpose, for the test suite only
#: (tests/e2e/test_internal.py).  The error table promises `internal` ("a bug; logged with
#: the request id"), and a test can only see that answer on the wire if a handler raises;
#: a healthy server never does.  So that no production configuration can ever switch a
#: hook on (by a stray key in a file, or an IMSRV_* variable), the ``[test]`` section
#: (a) is not in DEFAULTS (``imsrv config`` and the sample file do not offer it), (b) has
#: no environment overrides, and (c) is refused by :func:`load` unless the environment of
#: the process reading it has ``IMSRV_TEST_HOOKS=1``, which only the test harness sets.
#:
#: ``raise_in``: a comma-separated list of op names (API or gateway) whose handler raises
#: :class:`imsrv.core.app.TestHookError` (answered `internal`) instead of running.
TEST_HOOKS_ENV = "IMSRV_TEST_HOOKS"
TEST_DEFAULTS = {"raise_in": ""}


class ConfigError(ValueError):
    pass


class Section:
    """Attribute access to one section: ``cfg.limits.idle_timeout``."""

    def __init__(self, name, values):
        self._name = name
        self.__dict__.update(values)

    def __repr__(self):
        items = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return f"Section({self._name}, {items})"


class Config:
    def __init__(self, values):
        self.values = values
        for name, section in values.items():
            setattr(self, name, Section(name, section))

    @property
    def database_url(self):
        url = self.server.database_url
        if url:
            return url
        return "sqlite:///" + os.path.join(self.server.data_dir, "imsrv.db")


def _coerce(section, key, value, source):
    default = DEFAULTS[section][key]
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{source}: [{section}] {key} = {value!r} is not a valid {type(default).__name__}"
        ) from None


def load(path=None, env=None, overrides=None):
    """Build the Config: defaults < file ``path`` < ``env`` < ``overrides`` ({(section, key): value})."""
    env = os.environ if env is None else env
    values = copy.deepcopy(DEFAULTS)
    values["test"] = dict(TEST_DEFAULTS)   # hooks off; see TEST_HOOKS_ENV
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for section, table in data.items():
            if section == "test" and isinstance(table, dict):
                values["test"] = _test_hooks(table, path, env)
                continue
            if section not in DEFAULTS or not isinstance(table, dict):
                raise ConfigError(f"{path}: unknown section [{section}]")
            for key, value in table.items():
                if key not in DEFAULTS[section]:
                    raise ConfigError(f"{path}: unknown key [{section}] {key}")
                values[section][key] = _coerce(section, key, value, path)
    for section, table in DEFAULTS.items():
        for key in table:
            name = f"IMSRV_{section.upper()}_{key.upper()}"
            if name in env:
                values[section][key] = _coerce(section, key, env[name], name)
    for name, (section, key) in ALIASES.items():
        if name in env:
            values[section][key] = _coerce(section, key, env[name], name)
    for (section, key), value in (overrides or {}).items():
        if value is not None:
            values[section][key] = _coerce(section, key, value, "command line")
    _check(values)
    return Config(values)


def _test_hooks(table, path, env):
    """The ``[test]`` section of a config file: refused unless IMSRV_TEST_HOOKS=1 (see
    TEST_HOOKS_ENV for why)."""
    if env.get(TEST_HOOKS_ENV) != "1":
        raise ConfigError(f"{path}: [test] is for the test suite only: its hooks make the server"
                          f" fail on purpose, and are refused unless {TEST_HOOKS_ENV}=1 is set")
    out = dict(TEST_DEFAULTS)
    for key, value in table.items():
        if key not in TEST_DEFAULTS:
            raise ConfigError(f"{path}: unknown key [test] {key}")
        if not isinstance(value, str):
            raise ConfigError(f"{path}: [test] {key} = {value!r} is not a valid str")
        out[key] = value
    return out


def _check(values):
    """Rules a type alone does not express; the message names the key and the value."""
    from .core.hooks import HookSettings
    from .servers.origins import OriginPolicy
    from .logs import FORMATS
    if values["server"]["log_format"] not in FORMATS:
        raise ConfigError(f"[server] log_format = {values['server']['log_format']!r}: must be one of"
                          f" {', '.join(FORMATS)}")
    if not 0 <= values["server"]["metrics_port"] <= 65535:
        raise ConfigError(f"[server] metrics_port = {values['server']['metrics_port']!r}: must be a port"
                          " (0 turns it off)")
    try:
        OriginPolicy(values["server"]["websocket_origins"])
    except ValueError as exc:
        raise ConfigError(f"[server] websocket_origins: {exc}") from None
    try:
        HookSettings(Section("hooks", values["hooks"]))
    except ValueError as exc:   # the message names the key and the rule
        raise ConfigError(str(exc)) from None
    from .servers import tls
    try:
        tls.check(values)   # cert and key together and loadable (imsrv/servers/tls.py)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def sample_path():
    return os.path.join(os.path.dirname(__file__), "sample.toml")
