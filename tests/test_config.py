"""Settings: the seed's variable names, defaults, derived views, and one ConfigError per
invalid configuration naming the variable, the bad value and what is accepted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zen_async import ConfigError, Settings

SEED_VARIABLES = [
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_PASSWORD",
    "REDIS_USER",
    "REDIS_ACL_ENABLED",
    "REDIS_USE_CLUSTER",
    "REDIS_CLUSTER_NODES",
    "REDIS_USE_SENTINEL",
    "REDIS_SENTINEL_NODES",
    "REDIS_MASTER_NAME",
    "REDIS_MAX_CONNECTIONS",
    "REDIS_ENABLE_PIPELINING",
    "REDIS_PIPELINE_BATCH_SIZE",
    "REDIS_ENABLE_METRICS",
    "REDIS_PORT_RANGE_START",
    "REDIS_PORT_RANGE_END",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run each test with no REDIS_* variables and no .env in the working directory."""
    for name in list(os.environ):
        if name.startswith(("REDIS_", "ZEN_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_every_seed_variable_is_a_setting() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    assert set(SEED_VARIABLES) <= fields


def test_seed_variables_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "10.1.2.3")
    monkeypatch.setenv("REDIS_PORT", "7000")
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret")
    monkeypatch.setenv("REDIS_USER", "zen")
    monkeypatch.setenv("REDIS_MAX_CONNECTIONS", "80")
    monkeypatch.setenv("REDIS_ENABLE_PIPELINING", "false")
    monkeypatch.setenv("REDIS_PIPELINE_BATCH_SIZE", "250")
    monkeypatch.setenv("REDIS_PORT_RANGE_START", "4000")
    monkeypatch.setenv("REDIS_PORT_RANGE_END", "4100")
    s = Settings()
    assert s.server_address == ("10.1.2.3", 7000)
    assert s.password == "s3cret"
    assert s.username == "zen"
    assert s.redis_max_connections == 80
    assert s.redis_enable_pipelining is False
    assert s.redis_pipeline_batch_size == 250
    assert (s.redis_port_range_start, s.redis_port_range_end) == (4000, 4100)
    assert "s3cret" not in repr(s)
    assert s.server_configured
    assert not s.use_embedded


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("REDIS_URL=redis://h.example:6390/0\nREDIS_DB_LAYOUT=prefixed\n")
    s = Settings()
    assert s.server_address == ("h.example", 6390)
    assert s.db_layout == "prefixed"
    assert not s.use_embedded


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(Exception, match="frozen"):
        s.redis_port = 1  # type: ignore[misc]


def test_defaults_choose_embedded_and_databases_layout() -> None:
    s = Settings()
    assert s.use_embedded
    assert s.topology == "standalone"
    assert s.db_layout == "databases"
    assert s.namespace == "default"


def test_embedded_false_never_embeds() -> None:
    assert not Settings(redis_embedded="false").use_embedded
    assert Settings(redis_embedded="true", redis_host="127.0.0.1").use_embedded


def test_cluster_defaults_to_prefixed_layout() -> None:
    s = Settings(redis_use_cluster=True, redis_cluster_nodes="127.0.0.1:7000,[::1]:7001")
    assert s.topology == "cluster"
    assert s.db_layout == "prefixed"
    assert s.cluster_nodes == (("127.0.0.1", 7000), ("::1", 7001))


def test_url_forms() -> None:
    s = Settings(redis_url="rediss://alice:p%40ss@cache.local:6380/3")
    assert s.tls
    assert (s.username, s.password) == ("alice", "p@ss")
    assert (s.server_address, s.base_db) == (("cache.local", 6380), 3)
    u = Settings(redis_url="unix:///run/redis/redis.sock")
    assert u.unix_socket == "/run/redis/redis.sock"


def _problem(**values: object) -> tuple[str, ConfigError]:
    with pytest.raises(ConfigError) as info:
        Settings(**values)
    return str(info.value), info.value


@pytest.mark.parametrize(
    ("values", "variable", "shown", "accepted"),
    [
        pytest.param(
            {"redis_use_cluster": True, "redis_db_layout": "databases"},
            "REDIS_DB_LAYOUT",
            "'databases'",
            "'prefixed'",
            id="cluster-databases",
        ),
        pytest.param(
            {"redis_port_range_start": 5000, "redis_port_range_end": 5000},
            "REDIS_PORT_RANGE_END",
            "5000",
            "must not be empty",
            id="empty-range",
        ),
        pytest.param(
            {"redis_port_range_start": 9000, "redis_port_range_end": 3000},
            "REDIS_PORT_RANGE_END",
            "3000",
            "above REDIS_PORT_RANGE_START=9000",
            id="inverted-range",
        ),
        pytest.param(
            {"redis_use_cluster": True, "redis_cluster_nodes": "10.0.0.1:7000,oops"},
            "REDIS_CLUSTER_NODES",
            "oops",
            "host:port",
            id="malformed-nodes",
        ),
        pytest.param(
            {"redis_sentinel_nodes": "a:1,b:port"},
            "REDIS_SENTINEL_NODES",
            "b:port",
            "host:port",
            id="malformed-sentinel-nodes",
        ),
        pytest.param(
            {"redis_url": "localhost:6379"},
            "REDIS_URL",
            "localhost:6379",
            "redis://",
            id="url-without-scheme",
        ),
        pytest.param(
            {"redis_url": "http://localhost:6379"},
            "REDIS_URL",
            "http://",
            "rediss://",
            id="url-wrong-scheme",
        ),
        pytest.param(
            {"redis_use_sentinel": True, "redis_sentinel_nodes": "127.0.0.1:26379"},
            "REDIS_MASTER_NAME",
            "None",
            "Sentinel service name",
            id="sentinel-without-master",
        ),
        pytest.param(
            {"redis_port": "sixty"},
            "REDIS_PORT",
            "'sixty'",
            "integer TCP port",
            id="non-numeric-port",
        ),
        pytest.param(
            {"redis_port": 70000}, "REDIS_PORT", "70000", "1 to 65535", id="port-out-of-range"
        ),
        pytest.param(
            {"redis_db_layout": "flat"},
            "REDIS_DB_LAYOUT",
            "'flat'",
            "'databases' or 'prefixed'",
            id="unknown-layout",
        ),
        pytest.param(
            {
                "redis_use_cluster": True,
                "redis_use_sentinel": True,
                "redis_master_name": "m",
                "redis_sentinel_nodes": "h:1",
            },
            "REDIS_USE_SENTINEL",
            "True",
            "choose one topology",
            id="two-topologies",
        ),
    ],
)
def test_invalid_configuration_names_variable_value_and_accepted(
    values: dict[str, object], variable: str, shown: str, accepted: str
) -> None:
    message, error = _problem(**values)
    assert [p.variable for p in error.problems] == [variable]
    assert variable in message
    assert shown in message
    assert accepted in message


def test_invalid_environment_variable_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_PORT", "abc")
    with pytest.raises(ConfigError, match=r"REDIS_PORT='abc': an integer TCP port"):
        Settings()


def test_every_bad_field_is_reported_in_one_error() -> None:
    message, error = _problem(
        redis_port="x", redis_max_connections=0, redis_password="hunter2", redis_embedded="maybe"
    )
    assert {p.variable for p in error.problems} == {
        "REDIS_PORT",
        "REDIS_MAX_CONNECTIONS",
        "REDIS_EMBEDDED",
    }
    assert "3 problems" in message


def test_secrets_are_never_echoed() -> None:
    message, _ = _problem(redis_url="redis://u:topsecret@", redis_password="x")
    assert "topsecret" not in message
    message, _ = _problem(redis_password=12)
    assert "12" not in message
