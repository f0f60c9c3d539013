"""Settings: the seed's variable names, defaults, derived views, and one ConfigError per
invalid configuration naming the variable, the bad value and what is accepted."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from zen_async import ConfigError, Settings
from zen_async.config import CONNECTION_VARIABLES
from zen_async.memory import (
    HashingEmbedder,
    MemoryOptions,
    MemoryPriority,
    MemoryType,
    SentenceTransformerEmbedder,
    embedder_from_settings,
)

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


def test_redis_host_in_the_dotenv_file_disables_the_embedded_server(tmp_path: Path) -> None:
    assert Settings().use_embedded  # nothing configured yet: embedded
    (tmp_path / ".env").write_text("REDIS_HOST=db.example\nREDIS_PORT=6391\n")
    s = Settings()
    assert s.server_address == ("db.example", 6391)
    assert s.server_configured
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
    assert Settings(redis_embedded="true").use_embedded


# --- which server: no silent fallback to the embedded one ----------------------------------
# Each connection variable with a value it accepts, plus the companions it cannot go without
# (a client certificate needs its key; a sentinel user its password).
def _pem(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return str(path)


CONNECTION_VALUES: dict[str, Callable[[Path], dict[str, str]]] = {
    "REDIS_URL": lambda _: {"REDIS_URL": "redis://127.0.0.1:6390/0"},
    "REDIS_HOST": lambda _: {"REDIS_HOST": "db.example"},
    "REDIS_PORT": lambda _: {"REDIS_PORT": "1"},
    "REDIS_USER": lambda _: {"REDIS_USER": "zen"},
    "REDIS_PASSWORD": lambda _: {"REDIS_PASSWORD": "s3cret"},
    "REDIS_ACL_ENABLED": lambda _: {"REDIS_ACL_ENABLED": "false"},  # even at its default
    "REDIS_TLS": lambda _: {"REDIS_TLS": "true"},
    "REDIS_TLS_CA_FILE": lambda d: {"REDIS_TLS_CA_FILE": _pem(d, "ca.pem")},
    "REDIS_TLS_CERT_FILE": lambda d: {
        "REDIS_TLS_CERT_FILE": _pem(d, "cert.pem"),
        "REDIS_TLS_KEY_FILE": _pem(d, "key.pem"),
    },
    "REDIS_TLS_KEY_FILE": lambda d: {
        "REDIS_TLS_KEY_FILE": _pem(d, "key.pem"),
        "REDIS_TLS_CERT_FILE": _pem(d, "cert.pem"),
    },
    "REDIS_TLS_CHECK_HOSTNAME": lambda _: {"REDIS_TLS_CHECK_HOSTNAME": "false"},
    "REDIS_USE_SENTINEL": lambda _: {"REDIS_USE_SENTINEL": "false"},  # even at its default
    "REDIS_SENTINEL_NODES": lambda _: {"REDIS_SENTINEL_NODES": "127.0.0.1:26379"},
    "REDIS_MASTER_NAME": lambda _: {"REDIS_MASTER_NAME": "mymaster"},
    "REDIS_SENTINEL_USER": lambda _: {
        "REDIS_SENTINEL_USER": "watcher",
        "REDIS_SENTINEL_PASSWORD": "s3cret",
    },
    "REDIS_SENTINEL_PASSWORD": lambda _: {"REDIS_SENTINEL_PASSWORD": "s3cret"},
    "REDIS_USE_CLUSTER": lambda _: {"REDIS_USE_CLUSTER": "true"},
    "REDIS_CLUSTER_NODES": lambda _: {"REDIS_CLUSTER_NODES": "127.0.0.1:7000"},
}


def _settings_from(
    source: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Settings:
    if source == "environment":
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return Settings()
    if source == ".env":
        (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        return Settings()
    return Settings(**{k.lower(): v for k, v in env.items()})


def test_the_connection_variables_are_settings() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    assert set(CONNECTION_VARIABLES) <= fields
    assert set(CONNECTION_VALUES) == set(CONNECTION_VARIABLES)
    # A new TLS, Sentinel or Cluster variable must be added to CONNECTION_VARIABLES too.
    prefixes = ("REDIS_TLS", "REDIS_SENTINEL", "REDIS_CLUSTER", "REDIS_USE_")
    assert {f for f in fields if f.startswith(prefixes)} <= set(CONNECTION_VARIABLES)


@pytest.mark.parametrize("source", ["environment", ".env", "constructor"])
@pytest.mark.parametrize("variable", CONNECTION_VARIABLES)
def test_any_connection_variable_turns_the_embedded_server_off(
    variable: str, source: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """REDIS_PORT=1 alone means "the server on port 1", never "the embedded one"."""
    assert Settings().use_embedded  # nothing set yet
    s = _settings_from(source, CONNECTION_VALUES[variable](tmp_path), monkeypatch, tmp_path)
    assert variable in s.connection_variables
    assert s.server_configured
    assert not s.use_embedded


@pytest.mark.parametrize("variable", CONNECTION_VARIABLES)
def test_embedded_true_next_to_a_connection_variable_names_both(
    variable: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two answers to "where is the data": refused at start rather than one ignored."""
    env = {**CONNECTION_VALUES[variable](tmp_path), "REDIS_EMBEDDED": "true"}
    with pytest.raises(ConfigError) as info:
        _settings_from("environment", env, monkeypatch, tmp_path)
    assert [p.variable for p in info.value.problems] == ["REDIS_EMBEDDED"]
    assert variable in str(info.value)
    assert "s3cret" not in str(info.value)


def test_other_variables_leave_the_embedded_server_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_NAMESPACE", "team-a")
    monkeypatch.setenv("REDIS_MAX_CONNECTIONS", "10")
    monkeypatch.setenv("REDIS_CONNECT_TIMEOUT", "1")
    s = Settings()
    assert s.connection_variables == ()
    assert s.use_embedded


@pytest.mark.parametrize(
    ("values", "label"),
    [
        ({}, "127.0.0.1:6379"),
        ({"redis_port": 1}, "127.0.0.1:1"),
        ({"redis_url": "redis://u:pw@db.example:6390/2"}, "db.example:6390"),
        ({"redis_url": "redis://[::1]:6390"}, "[::1]:6390"),
        ({"redis_url": "unix:///run/redis.sock"}, "unix:/run/redis.sock"),
        (
            {"redis_use_cluster": True, "redis_cluster_nodes": "a:7000,[::1]:7001"},
            "cluster a:7000,[::1]:7001",
        ),
        (
            {
                "redis_use_sentinel": True,
                "redis_sentinel_nodes": "s1:26379,s2:26379",
                "redis_master_name": "mymaster",
            },
            "sentinel master 'mymaster' via s1:26379,s2:26379",
        ),
    ],
)
def test_server_label_names_the_address_never_the_password(
    values: dict[str, object], label: str
) -> None:
    assert Settings(**values).server_label == label


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


def _env_problem(monkeypatch: pytest.MonkeyPatch, variable: str, raw: str) -> str:
    """The start-up error of ``variable=raw`` in the environment, which names it alone."""
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ConfigError) as info:
        Settings()
    assert [p.variable for p in info.value.problems] == [variable]
    return str(info.value)


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


# --- durability (REDIS_DURABILITY*) --------------------------------------------------------
def test_durability_defaults_to_async() -> None:
    s = Settings()
    assert s.redis_durability == "async"
    assert (s.redis_durability_replicas, s.redis_durability_timeout_ms) == (1, 1000)


def test_durability_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_DURABILITY", "replicated")
    monkeypatch.setenv("REDIS_DURABILITY_REPLICAS", "2")
    monkeypatch.setenv("REDIS_DURABILITY_TIMEOUT_MS", "250")
    s = Settings()
    assert (s.redis_durability, s.redis_durability_replicas) == ("replicated", 2)
    assert s.redis_durability_timeout_ms == 250


@pytest.mark.parametrize(
    ("variable", "raw", "accepted"),
    [
        ("REDIS_DURABILITY", "sync", "'async' (acknowledged by the master) or 'replicated'"),
        ("REDIS_DURABILITY_REPLICAS", "0", "an integer number of replicas from 1 to 16"),
        ("REDIS_DURABILITY_REPLICAS", "many", "an integer number of replicas from 1 to 16"),
        ("REDIS_DURABILITY_TIMEOUT_MS", "0", "milliseconds from 1 to 60000"),
        ("REDIS_DURABILITY_TIMEOUT_MS", "-5", "milliseconds from 1 to 60000"),
    ],
)
def test_bad_durability_variable_fails_at_start(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str, accepted: str
) -> None:
    message = _env_problem(monkeypatch, variable, raw)
    assert f"{variable}={raw!r}: " in message
    assert accepted in message


def test_durability_timeout_must_end_before_the_socket_timeout() -> None:
    message, error = _problem(
        redis_durability="replicated", redis_durability_timeout_ms=2000, redis_socket_timeout=2.0
    )
    assert [p.variable for p in error.problems] == ["REDIS_DURABILITY_TIMEOUT_MS"]
    assert "below REDIS_SOCKET_TIMEOUT=2 s" in message
    # async durability never sends WAIT, so the same pair is fine there
    assert Settings(redis_durability_timeout_ms=2000, redis_socket_timeout=2.0)


# --- agent memory (REDIS_MEMORY_*) -------------------------------------------------------
@pytest.mark.parametrize(
    ("variable", "raw", "accepted"),
    [
        ("REDIS_MEMORY_TTL_SHORT_TERM", "0", "seconds > 0, or 'none'"),
        ("REDIS_MEMORY_TTL_SEMANTIC", "-60", "seconds > 0, or 'none'"),
        ("REDIS_MEMORY_TTL_WORKING", "two hours", "seconds > 0, or 'none'"),
        ("REDIS_MEMORY_TTL_MULTIPLIER_CRITICAL", "0", "a finite number > 0"),
        ("REDIS_MEMORY_TTL_MULTIPLIER_LOW", "inf", "a finite number > 0"),
        ("REDIS_MEMORY_WEIGHT_SIMILARITY", "-0.5", "a finite number >= 0"),
        ("REDIS_MEMORY_WEIGHT_TAGS", "nan", "a finite number >= 0"),
        ("REDIS_MEMORY_RECENCY_HALF_LIFE_ACCESSED", "0", "seconds > 0"),
        ("REDIS_MEMORY_ACCESS_SATURATION", "0", "an integer >= 1"),
        ("REDIS_MEMORY_MERGE_THRESHOLD", "1.5", "a cosine from 0 to 1"),
        ("REDIS_MEMORY_LINK_THRESHOLD", "-0.1", "a cosine from 0 to 1"),
        ("REDIS_MEMORY_PRUNE_THRESHOLD", "2", "a score from 0 to 1"),
        ("REDIS_MEMORY_CONSOLIDATION_INTERVAL", "-1", "seconds >= 0"),
        ("REDIS_MEMORY_MAX_CONTENT_BYTES", "0", "an integer number of bytes >= 1"),
        ("REDIS_MEMORY_SHARDS", "2048", "an integer from 1 to 1024"),
        ("REDIS_MEMORY_SYNC_INTERVAL", "0", "seconds > 0"),
        ("REDIS_MEMORY_MAX_SPACES", "0", "an integer >= 1"),
        ("REDIS_MEMORY_EMBEDDER", "word2vec", "'hashing' or 'sentence-transformers'"),
        ("REDIS_MEMORY_EMBEDDING_BATCH_SIZE", "0", "an integer >= 1"),
    ],
)
def test_bad_memory_variable_fails_at_start(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str, accepted: str
) -> None:
    assert f"{variable}={raw!r}: {accepted}" in _env_problem(monkeypatch, variable, raw)


def test_bad_memory_variables_are_reported_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_MEMORY_TTL_LONG_TERM", "-1")
    monkeypatch.setenv("REDIS_MEMORY_WEIGHT_RECENCY", "-1")
    monkeypatch.setenv("REDIS_MEMORY_EMBEDDER", "bert")
    monkeypatch.setenv("REDIS_PORT", "0")
    message, error = _problem()
    assert {p.variable for p in error.problems} == {
        "REDIS_MEMORY_TTL_LONG_TERM",
        "REDIS_MEMORY_WEIGHT_RECENCY",
        "REDIS_MEMORY_EMBEDDER",
        "REDIS_PORT",
    }
    assert "4 problems" in message


def test_link_threshold_above_merge_threshold_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_MEMORY_MERGE_THRESHOLD", "0.8")
    message, error = _problem()
    assert [p.variable for p in error.problems] == ["REDIS_MEMORY_LINK_THRESHOLD"]
    assert "REDIS_MEMORY_LINK_THRESHOLD=0.85" in message
    assert "at most REDIS_MEMORY_MERGE_THRESHOLD=0.8" in message


def test_memory_defaults_are_memory_options_defaults() -> None:
    assert MemoryOptions.from_settings(Settings()) == MemoryOptions()
    option_fields = {f.name for f in dataclasses.fields(MemoryOptions)} - {
        "ttls",
        "ttl_multipliers",
    }
    for name in option_fields:
        assert f"redis_memory_{name}" in Settings.model_fields, f"no setting for {name}"
    for memory_type in MemoryType:
        assert f"redis_memory_ttl_{memory_type.value}" in Settings.model_fields
    for priority in MemoryPriority:
        assert f"redis_memory_ttl_multiplier_{priority.value}" in Settings.model_fields


def test_memory_variables_change_memory_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_MEMORY_TTL_SHORT_TERM", "60")
    monkeypatch.setenv("REDIS_MEMORY_TTL_LONG_TERM", "none")
    monkeypatch.setenv("REDIS_MEMORY_TTL_EPISODIC", "3600")
    monkeypatch.setenv("REDIS_MEMORY_TTL_MULTIPLIER_TEMPORARY", "0.1")
    monkeypatch.setenv("REDIS_MEMORY_WEIGHT_SIMILARITY", "0.9")
    monkeypatch.setenv("REDIS_MEMORY_RECENCY_HALF_LIFE_CREATED", "7200")
    monkeypatch.setenv("REDIS_MEMORY_MERGE_THRESHOLD", "0.99")
    monkeypatch.setenv("REDIS_MEMORY_LINK_THRESHOLD", "0.7")
    monkeypatch.setenv("REDIS_MEMORY_OFFLOAD_ROWS", "4096")
    monkeypatch.setenv("REDIS_MEMORY_CONSOLIDATION_INTERVAL", "0")
    monkeypatch.setenv("REDIS_MEMORY_EMBEDDER", "Sentence-Transformers")
    monkeypatch.setenv("REDIS_MEMORY_EMBEDDING_MODEL", "/models/minilm")
    monkeypatch.setenv("REDIS_MEMORY_EMBEDDING_BATCH_SIZE", "16")
    settings = Settings()
    options = MemoryOptions.from_settings(settings)
    t, p = MemoryType, MemoryPriority
    assert options.ttl_ms(t.SHORT_TERM, p.MEDIUM) == 60_000
    assert options.ttl_ms(t.LONG_TERM, p.CRITICAL) == 0  # 'none': never expires
    assert options.ttl_ms(t.EPISODIC, p.TEMPORARY) == 360_000
    assert options.ttl_ms(t.WORKING, p.MEDIUM) == 7_200_000  # untouched default
    assert options.weight_similarity == 0.9
    assert options.recency_half_life_created == 7200.0
    assert (options.merge_threshold, options.link_threshold) == (0.99, 0.7)
    assert options.offload_rows == 4096
    assert options.consolidation_interval == 0.0
    embedder = embedder_from_settings(settings)  # the model loads on first use, not here
    assert isinstance(embedder, SentenceTransformerEmbedder)
    assert embedder.name == "/models/minilm"
    assert isinstance(
        embedder_from_settings(Settings(redis_memory_embedder="hashing")), HashingEmbedder
    )
