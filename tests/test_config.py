"""Settings: the sample file documents every default, env and flags override in order."""
import pytest

from imsrv import config

try:
    import tomllib
except ImportError:
    import tomli as tomllib


def test_sample_file_lists_every_key_with_its_default():
    with open(config.sample_path(), "rb") as f:
        sample = tomllib.load(f)
    assert sample == config.DEFAULTS


def test_precedence_defaults_file_env_flags(tmp_path):
    f = tmp_path / "imsrv.toml"
    f.write_text('[server]\napi_port = 8001\ngateway_port = 8000\n[limits]\nidle_timeout = 30\n')
    env = {"IMSRV_GATEWAY_PORT": "9000", "IMSRV_LIMITS_IDLE_TIMEOUT": "45.5", "IMSRV_POLICY_REQUIRE_FRIENDS": "false"}
    cfg = config.load(str(f), env=env, overrides={("server", "api_port"): 9001})
    assert cfg.server.api_port == 9001
    assert cfg.server.gateway_port == 9000
    assert cfg.limits.idle_timeout == 45.5
    assert cfg.policy.require_friends is False
    assert cfg.limits.max_frame == 65536


def test_database_url_defaults_to_sqlite_in_the_data_dir():
    cfg = config.load(env={"IMSRV_DATA_DIR": "/srv/im"})
    assert cfg.database_url == "sqlite:////srv/im/imsrv.db"
    cfg = config.load(env={"IMSRV_DATABASE_URL": "sqlite:///x.db"})
    assert cfg.database_url == "sqlite:///x.db"


@pytest.mark.parametrize("text,needle", [
    ("[nope]\nx = 1\n", "unknown section [nope]"),
    ("[server]\nport = 1\n", "unknown key [server] port"),
    ("[server]\napi_port = 'abc'\n", "api_port"),
    ("[server\n", "imsrv.toml"),
])
def test_bad_config_names_the_file_and_key(tmp_path, text, needle):
    f = tmp_path / "imsrv.toml"
    f.write_text(text)
    with pytest.raises(config.ConfigError) as e:
        config.load(str(f), env={})
    assert needle in str(e.value)


def test_bad_env_value_names_the_variable():
    with pytest.raises(config.ConfigError) as e:
        config.load(env={"IMSRV_API_PORT": "seven"})
    assert "IMSRV_API_PORT" in str(e.value)


def test_default_host_is_loopback():
    """Plaintext on every interface must be asked for (--host 0.0.0.0), not the default."""
    assert config.load(env={}).server.host == "127.0.0.1"


@pytest.mark.parametrize("value", ["", "*", "https://chat.example.com", "http://localhost:3000, https://a.b:8443"])
def test_websocket_origins_accepts_origins(value):
    assert config.load(env={"IMSRV_SERVER_WEBSOCKET_ORIGINS": value}).server.websocket_origins == value


@pytest.mark.parametrize("value", ["chat.example.com", "https://chat.example.com/app", "http://x:port"])
def test_websocket_origins_names_the_bad_entry(value):
    with pytest.raises(config.ConfigError) as e:
        config.load(env={"IMSRV_SERVER_WEBSOCKET_ORIGINS": value})
    assert "websocket_origins" in str(e.value) and repr(value.split(",")[0].strip()) in str(e.value)
