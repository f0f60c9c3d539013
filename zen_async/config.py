"""Settings: one frozen object, read from the environment and ``.env`` at the edge only.

The seed's variable names are kept as they were (``REDIS_HOST``, ``REDIS_USE_CLUSTER``, ...);
everything else follows the same ``REDIS_`` prefix. Any invalid value fails construction with a
single :class:`~zen_async.errors.ConfigError` that names each bad variable, the value given and
what would be accepted.

Which server: any connection variable (:data:`CONNECTION_VARIABLES`: REDIS_URL, REDIS_HOST,
REDIS_PORT, the credentials, every TLS, Sentinel and Cluster variable) set in the environment,
``.env`` or the constructor, even to its default value, means "use that server"; the embedded
server starts only when none is set (``REDIS_EMBEDDED=auto``) or with ``REDIS_EMBEDDED=true``,
which refuses to start next to a connection variable rather than ignore it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import pydantic
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from zen_async.errors import ConfigError, ConfigProblem
from zen_async.redact import DEFAULT_REDACT_FIELDS, FIELDS_PATTERN

__all__ = ["CONNECTION_VARIABLES", "Address", "Settings", "Topology"]

Topology = Literal["standalone", "sentinel", "cluster"]
DbLayout = Literal["databases", "prefixed"]
Durability = Literal["async", "replicated"]
Address = tuple[str, int]

_URL_SCHEMES = ("redis", "rediss", "unix")

# What each variable accepts, used when pydantic rejects a value so the message says what
# would be right rather than echoing a parser's wording.
_ACCEPTED: dict[str, str] = {
    "redis_port": "an integer TCP port from 1 to 65535",
    "redis_max_connections": "an integer >= 1",
    "redis_pipeline_batch_size": "an integer >= 1",
    "redis_transport": "'multiplexed' (shared connections, auto-pipelined) or 'pool'",
    "redis_mux_connections": "an integer from 1 to 64",
    "redis_mux_max_in_flight": "an integer from 1 to 1000000",
    "redis_port_range_start": "an integer TCP port from 1 to 65535",
    "redis_port_range_end": "an integer from 2 to 65536 (exclusive: the first port past the range)",
    "redis_db_layout": "'databases' or 'prefixed'",
    "redis_embedded": "'auto', 'true' or 'false'",
    "redis_agent_shards": "an integer from 1 to 1024",
    "redis_compression_threshold": "an integer number of bytes >= 0",
    "redis_max_value_bytes": "an integer number of bytes >= 1",
    "redis_durability": "'async' (acknowledged by the master) or 'replicated' (also by replicas)",
    "redis_durability_replicas": "an integer number of replicas from 1 to 16",
    "redis_durability_timeout_ms": "an integer number of milliseconds from 1 to 60000",
    "redis_redact_fields": (
        "a comma-separated list of field names (A-Z a-z 0-9 _ . -, and * as a wildcard), "
        "e.g. 'api_key,password,*_token'; empty to store every field as given"
    ),
    "redis_near_cache_size": "an integer number of cache values from 0 (off) to 1000000",
    "redis_near_cache_ttl": "a number of seconds above 0 and at most 60",
}
_SECRET_FIELDS = frozenset({"redis_password", "redis_sentinel_password"})

CONNECTION_VARIABLES: tuple[str, ...] = (
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_USER",
    "REDIS_PASSWORD",
    "REDIS_ACL_ENABLED",
    "REDIS_TLS",
    "REDIS_TLS_CA_FILE",
    "REDIS_TLS_CERT_FILE",
    "REDIS_TLS_KEY_FILE",
    "REDIS_TLS_CHECK_HOSTNAME",
    "REDIS_USE_SENTINEL",
    "REDIS_SENTINEL_NODES",
    "REDIS_MASTER_NAME",
    "REDIS_SENTINEL_USER",
    "REDIS_SENTINEL_PASSWORD",
    "REDIS_USE_CLUSTER",
    "REDIS_CLUSTER_NODES",
)
"""The variables that say which server to use and how to reach it: setting any of them (even
to its default) names a server, so the embedded one is not started in its place."""

# Agent memory (docs/memory.md). The names mirror zen_async.memory's MemoryType and
# MemoryPriority; config sits below memory in the layers, so they are spelled out here.
_MEMORY_TYPES = (
    "short_term",
    "working",
    "long_term",
    "shared",
    "procedural",
    "episodic",
    "semantic",
)
_MEMORY_PRIORITIES = ("critical", "high", "medium", "low", "temporary")
_MEMORY_WEIGHTS = ("similarity", "recency", "priority", "access", "tags")
_MEMORY_TTL_FIELDS = tuple(f"redis_memory_ttl_{t}" for t in _MEMORY_TYPES)
_NO_TTL_WORDS = frozenset({"", "none", "never"})
_EMBEDDER_ALIASES = {
    "sentence_transformers": "sentence-transformers",
    "minilm": "sentence-transformers",
}
_ACCEPTED.update(
    dict.fromkeys(_MEMORY_TTL_FIELDS, "seconds > 0, or 'none' for no expiry")
    | {f"redis_memory_ttl_multiplier_{p}": "a finite number > 0" for p in _MEMORY_PRIORITIES}
    | {f"redis_memory_weight_{w}": "a finite number >= 0" for w in _MEMORY_WEIGHTS}
    | {
        "redis_memory_recency_half_life_accessed": "seconds > 0",
        "redis_memory_recency_half_life_created": "seconds > 0",
        "redis_memory_access_saturation": "an integer >= 1",
        "redis_memory_merge_threshold": "a cosine from 0 to 1",
        "redis_memory_link_threshold": "a cosine from 0 to 1",
        "redis_memory_max_links": "an integer >= 0",
        "redis_memory_prune_threshold": "a score from 0 to 1",
        "redis_memory_promote_min_access": "an integer >= 1",
        "redis_memory_consolidation_interval": "seconds >= 0 (0: no periodic consolidation)",
        "redis_memory_max_content_bytes": "an integer number of bytes >= 1",
        "redis_memory_max_tags": "an integer >= 0",
        "redis_memory_shards": "an integer from 1 to 1024",
        "redis_memory_offload_rows": "an integer number of rows >= 0",
        "redis_memory_sync_interval": "seconds > 0",
        "redis_memory_change_stream_max_len": "an integer >= 1",
        "redis_memory_max_spaces": "an integer >= 1",
        "redis_memory_embedder": "'hashing' or 'sentence-transformers'",
        "redis_memory_embedding_batch_size": "an integer >= 1",
    }
)


def _default_embedded_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "zen-async" / "embedded"


def parse_nodes(variable: str, raw: str) -> tuple[Address, ...]:
    """Parse ``host:port,host:port`` (IPv6 as ``[::1]:port``) into addresses.

    Raises:
        ConfigError: an entry is not ``host:port`` with a port from 1 to 65535.
    """
    nodes: list[Address] = []
    for entry in (part.strip() for part in raw.split(",")):
        host, sep, port_text = entry.rpartition(":")
        host = host.strip("[]")
        if not entry or not sep or not host or not port_text.isdigit():
            raise _problem(
                variable,
                raw,
                "a comma-separated list of host:port, e.g. "
                "'10.0.0.1:7000,10.0.0.2:7000' (IPv6 as '[::1]:7000')",
            )
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise _problem(variable, raw, f"ports from 1 to 65535 (got {port} in {entry!r})")
        nodes.append((host, port))
    return tuple(nodes)


def _problem(variable: str, value: object, accepted: str) -> ConfigError:
    return ConfigError([ConfigProblem(variable.upper(), value, accepted)])


class Settings(BaseSettings):
    """Every setting of zen_async. Field ``redis_host`` is read from ``REDIS_HOST``, and so on.

    Construct it once at the edge (``Settings()`` reads the environment and ``.env``) and pass
    it to :func:`zen_async.open_zen`.

    Raises:
        ConfigError: on any invalid value, listing every problem found.
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        case_sensitive=False,
    )

    # --- the seed's variables -------------------------------------------------------------
    redis_host: str = "127.0.0.1"
    redis_port: int = Field(6379, ge=1, le=65535)
    redis_password: SecretStr | None = None
    redis_user: str | None = None
    redis_acl_enabled: bool = False
    redis_use_cluster: bool = False
    redis_cluster_nodes: str = ""
    redis_use_sentinel: bool = False
    redis_sentinel_nodes: str = ""
    redis_master_name: str | None = None
    redis_max_connections: int = Field(50, ge=1)
    """Connections per pool (per node on Cluster) for what keeps a dedicated connection:
    blocking reads, pub/sub, WATCH/MULTI, and every command with REDIS_TRANSPORT=pool."""
    redis_transport: Literal["multiplexed", "pool"] = "multiplexed"
    """'multiplexed': non-blocking commands and scripts share a few long-lived connections
    per node, every command of one event-loop iteration in one write (store/mux.py);
    'pool': each command borrows a connection from redis-py's pool (the former path)."""
    redis_mux_connections: int = Field(2, ge=1, le=64)
    """Multiplexed connections per node and DB (and as many for replicated writes)."""
    redis_mux_max_in_flight: int = Field(10_000, ge=1, le=1_000_000)
    """Commands queued or unanswered per multiplexed connection before callers wait."""
    redis_enable_pipelining: bool = True
    redis_pipeline_batch_size: int = Field(500, ge=1)
    redis_enable_metrics: bool = True
    redis_port_range_start: int = Field(3284, ge=1, le=65535)
    redis_port_range_end: int = Field(10000, ge=2, le=65536)

    # --- connection -----------------------------------------------------------------------
    redis_url: str | None = None
    redis_sentinel_password: SecretStr | None = None
    redis_sentinel_user: str | None = None
    """The ACL user the sentinels are asked with (only with REDIS_SENTINEL_PASSWORD)."""
    redis_tls: bool = False
    redis_tls_ca_file: Path | None = None
    redis_tls_cert_file: Path | None = None
    redis_tls_key_file: Path | None = None
    redis_tls_check_hostname: bool = True
    redis_db_layout: DbLayout | None = None
    redis_embedded: Literal["auto", "true", "false"] = "auto"
    """'auto': the embedded valkey-server only when no connection variable is set
    (CONNECTION_VARIABLES); 'true': always (a ConfigError next to a connection variable);
    'false': never (REDIS_HOST:REDIS_PORT, by default 127.0.0.1:6379)."""
    redis_embedded_dir: Path = Field(default_factory=_default_embedded_dir)

    # --- timeouts and resilience (seconds unless named otherwise) -------------------------
    redis_connect_timeout: float = Field(2.0, gt=0)
    redis_socket_timeout: float = Field(5.0, gt=0)
    redis_pool_timeout: float = Field(10.0, gt=0)
    redis_retry_attempts: int = Field(3, ge=0, le=20)
    redis_health_check_interval: float = Field(5.0, gt=0)
    redis_breaker_failure_threshold: int = Field(5, ge=1)
    redis_breaker_reset_timeout: float = Field(1.0, gt=0)

    # Degraded mode (docs/operations.md): stale reads and the outage journal.
    redis_degraded_mode: bool = True
    redis_outage_journal: Path | None = None
    redis_outage_journal_max_ops: int = Field(100_000, ge=1)
    redis_op_marker_ttl: float = Field(3_600.0, ge=60, le=30 * 86_400)
    """Seconds an applied write's op id is remembered (zen_async/ops.py): a retry or a
    journal replay of the same op id within this window applies nothing again."""
    redis_last_known_size: int = Field(10_000, ge=0)
    redis_port_reserve: int = Field(8, ge=0, le=1024)
    redis_port_reserve_ttl: float = Field(600.0, gt=0)

    # The cache's near cache (opt-in): hot reads served from process memory, dropped on the
    # invalidation hints of other instances (zen_async/cache.py).
    redis_near_cache_size: int = Field(0, ge=0, le=1_000_000)
    """Cache values kept in process memory for hot reads; 0 turns the near cache off."""
    redis_near_cache_ttl: float = Field(1.0, gt=0, le=60, allow_inf_nan=False)
    """Seconds a value is served from process memory at most: how stale a read can be when
    an invalidation hint is lost."""

    # --- durability (docs/operations.md) -------------------------------------------------
    redis_durability: Durability = "async"
    """'replicated': every acknowledged write has also reached REDIS_DURABILITY_REPLICAS
    replicas (WAIT), else the caller gets DurabilityError."""
    redis_durability_replicas: int = Field(1, ge=1, le=16)
    redis_durability_timeout_ms: int = Field(1000, ge=1, le=60_000)

    # --- data -----------------------------------------------------------------------------
    redis_namespace: str = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    redis_agent_shards: int = Field(16, ge=1, le=1024)
    redis_compression_threshold: int = Field(1024, ge=0)
    redis_max_value_bytes: int = Field(1_048_576, ge=1)
    """The largest agent metadata (and allocated_resources), event data or cache value
    accepted, as JSON bytes (before compression)."""
    redis_event_export: bool = False
    """Copy every event into the export stream ``zen.export`` (for Kafka Connect & co)."""
    redis_redact_fields: str = Field(",".join(DEFAULT_REDACT_FIELDS), pattern=FIELDS_PATTERN)
    """Field names whose values are stored as "[redacted]" (docs/security.md); empty: none."""

    # --- agent memory (docs/memory.md; zen_async.memory.MemoryOptions) ------------------
    # Seconds each memory type lives at medium priority; None ('none'): it never expires.
    redis_memory_ttl_short_term: float | None = Field(1800.0, gt=0, allow_inf_nan=False)
    redis_memory_ttl_working: float | None = Field(7200.0, gt=0, allow_inf_nan=False)
    redis_memory_ttl_long_term: float | None = Field(86400.0, gt=0, allow_inf_nan=False)
    redis_memory_ttl_shared: float | None = Field(None, gt=0, allow_inf_nan=False)
    redis_memory_ttl_procedural: float | None = Field(None, gt=0, allow_inf_nan=False)
    redis_memory_ttl_episodic: float | None = Field(None, gt=0, allow_inf_nan=False)
    redis_memory_ttl_semantic: float | None = Field(None, gt=0, allow_inf_nan=False)
    # How each priority scales its type's TTL.
    redis_memory_ttl_multiplier_critical: float = Field(4.0, gt=0, allow_inf_nan=False)
    redis_memory_ttl_multiplier_high: float = Field(2.0, gt=0, allow_inf_nan=False)
    redis_memory_ttl_multiplier_medium: float = Field(1.0, gt=0, allow_inf_nan=False)
    redis_memory_ttl_multiplier_low: float = Field(0.5, gt=0, allow_inf_nan=False)
    redis_memory_ttl_multiplier_temporary: float = Field(0.25, gt=0, allow_inf_nan=False)
    # The relevance formula's weights and its recency and access terms.
    redis_memory_weight_similarity: float = Field(0.6, ge=0, allow_inf_nan=False)
    redis_memory_weight_recency: float = Field(0.15, ge=0, allow_inf_nan=False)
    redis_memory_weight_priority: float = Field(0.1, ge=0, allow_inf_nan=False)
    redis_memory_weight_access: float = Field(0.1, ge=0, allow_inf_nan=False)
    redis_memory_weight_tags: float = Field(0.05, ge=0, allow_inf_nan=False)
    redis_memory_recency_half_life_accessed: float = Field(3600.0, gt=0, allow_inf_nan=False)
    redis_memory_recency_half_life_created: float = Field(86400.0, gt=0, allow_inf_nan=False)
    redis_memory_access_saturation: int = Field(100, ge=1)
    # Consolidation.
    redis_memory_merge_threshold: float = Field(0.95, ge=0, le=1)
    redis_memory_link_threshold: float = Field(0.85, ge=0, le=1)
    redis_memory_max_links: int = Field(8, ge=0)
    redis_memory_prune_threshold: float = Field(0.05, ge=0, le=1)
    redis_memory_promote_min_access: int = Field(5, ge=1)
    redis_memory_consolidation_interval: float = Field(600.0, ge=0, allow_inf_nan=False)
    # Storage, search and sync.
    redis_memory_max_content_bytes: int = Field(1_048_576, ge=1)
    redis_memory_max_tags: int = Field(32, ge=0)
    redis_memory_shards: int = Field(16, ge=1, le=1024)
    redis_memory_offload_rows: int = Field(16_384, ge=0)
    redis_memory_sync_interval: float = Field(1.0, gt=0, allow_inf_nan=False)
    redis_memory_change_stream_max_len: int = Field(100_000, ge=1)
    redis_memory_max_spaces: int = Field(4096, ge=1)
    # Embeddings: 'hashing' (lexical, numpy only) or 'sentence-transformers' (the extra).
    redis_memory_embedder: Literal["hashing", "sentence-transformers"] = "hashing"
    redis_memory_embedding_model: str | None = None
    """A local model directory or a cached model name; None: the bundled all-MiniLM-L6-v2."""
    redis_memory_embedding_batch_size: int = Field(64, ge=1)

    # --- alert thresholds (the seed's figures) --------------------------------------------
    redis_alert_breaker_open_seconds: float = Field(60.0, gt=0)
    redis_alert_latency_ms: float = Field(100.0, gt=0)
    redis_alert_latency_window_seconds: float = Field(300.0, gt=0)
    redis_alert_active_agents: int = Field(1200, ge=1)
    redis_alert_consolidation_failures_per_hour: int = Field(10, ge=0)
    redis_alert_port_failures_per_minute: int = Field(5, ge=0)

    zen_log_level: Literal["debug", "info", "warning", "error"] = "info"

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except pydantic.ValidationError as exc:
            raise ConfigError([_to_problem(err) for err in exc.errors()]) from None

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """Fields for ``repr``/``str``: passwords are SecretStr already; a password inside
        REDIS_URL is masked too."""
        for name, value in super().__repr_args__():
            if name == "redis_url" and isinstance(value, str):
                yield name, _redact_url(value)
            else:
                yield name, value

    @field_validator(*_MEMORY_TTL_FIELDS, mode="before")
    @classmethod
    def _no_ttl_words(cls, value: object) -> object:
        """'none', 'never' or an empty value: the type never expires."""
        if isinstance(value, str) and value.strip().lower() in _NO_TTL_WORDS:
            return None
        return value

    @field_validator("redis_memory_embedder", mode="before")
    @classmethod
    def _embedder_name(cls, value: object) -> object:
        if isinstance(value, str):
            name = value.strip().lower()
            return _EMBEDDER_ALIASES.get(name, name)
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        self._check_topology()
        if self.redis_port_range_start >= self.redis_port_range_end:
            raise _problem(
                "redis_port_range_end",
                self.redis_port_range_end,
                f"a port above REDIS_PORT_RANGE_START={self.redis_port_range_start}: the range "
                "is start (inclusive) to end (exclusive) and must not be empty",
            )
        if self.redis_url is not None:
            self._check_url(self.redis_url)
        self._check_tls()
        self._check_auth()
        self._check_durability()
        self._check_memory()
        return self

    def _check_topology(self) -> None:
        if self.redis_use_cluster and self.redis_use_sentinel:
            raise _problem(
                "redis_use_sentinel", True, "false when REDIS_USE_CLUSTER=true: choose one topology"
            )
        if self.redis_use_cluster and self.redis_db_layout == "databases":
            raise _problem(
                "redis_db_layout",
                "databases",
                "'prefixed' (or unset) on Redis Cluster, which only has database 0",
            )
        if self.redis_use_sentinel:
            if not self.redis_master_name:
                raise _problem(
                    "redis_master_name",
                    self.redis_master_name,
                    "the Sentinel service name (e.g. 'mymaster') when REDIS_USE_SENTINEL=true",
                )
            if not self.redis_sentinel_nodes.strip():
                raise _problem(
                    "redis_sentinel_nodes",
                    self.redis_sentinel_nodes,
                    "at least one sentinel host:port when REDIS_USE_SENTINEL=true",
                )
        if self.redis_sentinel_nodes.strip():
            parse_nodes("redis_sentinel_nodes", self.redis_sentinel_nodes)
        if self.redis_cluster_nodes.strip():
            parse_nodes("redis_cluster_nodes", self.redis_cluster_nodes)
        given = self.connection_variables
        if self.redis_embedded == "true" and given:
            # Both say where the data lives: refuse rather than silently ignore one of them.
            names = ", ".join(given)
            raise _problem(
                "redis_embedded",
                "true",
                f"'auto' or 'false' when a server is configured ({names} set); to use the "
                f"embedded server, unset {names}",
            )

    def _check_tls(self) -> None:
        for name in ("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise _problem(name, str(path), "the path of an existing PEM file")
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            raise _problem(
                "redis_tls_key_file",
                self.redis_tls_key_file,
                "set together with REDIS_TLS_CERT_FILE (client certificate and key)",
            )

    def _check_memory(self) -> None:
        if self.redis_memory_link_threshold > self.redis_memory_merge_threshold:
            raise _problem(
                "redis_memory_link_threshold",
                self.redis_memory_link_threshold,
                f"a cosine at most REDIS_MEMORY_MERGE_THRESHOLD={self.redis_memory_merge_threshold}"
                ": pairs at or above the merge threshold merge, those between the two link",
            )

    def _check_auth(self) -> None:
        if self.redis_acl_enabled and not (self.username and self.password):
            raise _problem(
                "redis_acl_enabled",
                True,
                "false, or a named user: set REDIS_USER and REDIS_PASSWORD (or a "
                "redis://user:pass@... URL) so zen never falls back to the default user",
            )
        if self.redis_sentinel_user and self.redis_sentinel_password is None:
            raise _problem(
                "redis_sentinel_user",
                self.redis_sentinel_user,
                "set together with REDIS_SENTINEL_PASSWORD (the sentinel ACL user's password)",
            )

    def _check_durability(self) -> None:
        if (
            self.redis_durability == "replicated"
            and self.redis_durability_timeout_ms >= self.redis_socket_timeout * 1000
        ):
            raise _problem(
                "redis_durability_timeout_ms",
                self.redis_durability_timeout_ms,
                f"milliseconds below REDIS_SOCKET_TIMEOUT={self.redis_socket_timeout:g} s: "
                "WAIT must answer before the socket read gives up",
            )

    @staticmethod
    def _check_url(url: str) -> None:
        accepted = (
            "a URL with scheme redis://, rediss:// or unix://, e.g. "
            "'redis://user:pass@127.0.0.1:6379/0' or 'unix:///run/redis.sock'"
        )
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise _problem("redis_url", _redact_url(url), accepted) from None
        if parts.scheme not in _URL_SCHEMES:
            raise _problem("redis_url", _redact_url(url), accepted)
        if parts.scheme == "unix" and not parts.path:
            raise _problem("redis_url", _redact_url(url), "unix:// followed by a socket path")
        if parts.scheme != "unix" and not parts.hostname:
            raise _problem("redis_url", _redact_url(url), accepted)
        if port is not None and not 1 <= port <= 65535:
            raise _problem("redis_url", _redact_url(url), "a port from 1 to 65535")
        db = parts.path.strip("/")
        if parts.scheme != "unix" and db and not db.isdigit():
            raise _problem("redis_url", _redact_url(url), "a numeric database after the '/'")

    # --- derived views --------------------------------------------------------------------
    @property
    def topology(self) -> Topology:
        """Which kind of deployment is configured."""
        if self.redis_use_cluster:
            return "cluster"
        if self.redis_use_sentinel:
            return "sentinel"
        return "standalone"

    @property
    def db_layout(self) -> DbLayout:
        """The effective layout: ``prefixed`` on Cluster, else the setting (default databases)."""
        if self.redis_db_layout is not None:
            return self.redis_db_layout
        return "prefixed" if self.topology == "cluster" else "databases"

    @property
    def namespace(self) -> str:
        """The tenant this facade is bound to."""
        return self.redis_namespace

    @property
    def cluster_nodes(self) -> tuple[Address, ...]:
        """Cluster startup nodes; falls back to the single configured host."""
        if self.redis_cluster_nodes.strip():
            return parse_nodes("redis_cluster_nodes", self.redis_cluster_nodes)
        return (self.server_address,)

    @property
    def sentinel_nodes(self) -> tuple[Address, ...]:
        """The sentinels to ask for the master."""
        return parse_nodes("redis_sentinel_nodes", self.redis_sentinel_nodes)

    @property
    def server_address(self) -> Address:
        """Host and port of the standalone server (from REDIS_URL when set)."""
        if self.redis_url is not None:
            parts = urlsplit(self.redis_url)
            if parts.scheme != "unix":
                return (parts.hostname or self.redis_host, parts.port or 6379)
        return (self.redis_host, self.redis_port)

    @property
    def unix_socket(self) -> str | None:
        """The socket path when REDIS_URL is ``unix://...``."""
        if self.redis_url is not None and self.redis_url.startswith("unix://"):
            return urlsplit(self.redis_url).path
        return None

    @property
    def base_db(self) -> int:
        """The database of a ``redis://host/N`` URL (used by the prefixed layout)."""
        if self.redis_url is not None and not self.redis_url.startswith("unix://"):
            db = urlsplit(self.redis_url).path.strip("/")
            return int(db) if db else 0
        return 0

    @property
    def tls(self) -> bool:
        """Whether connections use TLS (``rediss://`` or REDIS_TLS=true)."""
        return self.redis_tls or (self.redis_url or "").startswith("rediss://")

    @property
    def username(self) -> str | None:
        """The ACL user, from REDIS_USER or the URL."""
        if self.redis_user:
            return self.redis_user
        if self.redis_url is not None:
            user = urlsplit(self.redis_url).username
            return unquote(user) if user else None
        return None

    @property
    def password(self) -> str | None:
        """The password, from REDIS_PASSWORD or the URL. Never log it."""
        if self.redis_password is not None:
            return self.redis_password.get_secret_value()
        if self.redis_url is not None:
            pw = urlsplit(self.redis_url).password
            return unquote(pw) if pw else None
        return None

    @property
    def connection_variables(self) -> tuple[str, ...]:
        """The :data:`CONNECTION_VARIABLES` given in the environment, ``.env`` or the
        constructor (whatever their value), in that tuple's order."""
        given = self.model_fields_set
        return tuple(name for name in CONNECTION_VARIABLES if name.lower() in given)

    @property
    def server_configured(self) -> bool:
        """True when any connection variable was given (see :data:`CONNECTION_VARIABLES`)."""
        return bool(self.connection_variables)

    @property
    def use_embedded(self) -> bool:
        """Whether :func:`open_zen` starts its own private valkey-server: with
        ``REDIS_EMBEDDED=auto`` only when no connection variable is set, with ``true``
        always (construction refuses ``true`` next to a connection variable)."""
        if self.redis_embedded == "auto":
            return not self.server_configured
        return self.redis_embedded == "true"

    @property
    def server_label(self) -> str:
        """Where the configured deployment is, for messages: ``host:port``, ``unix:<path>``,
        ``cluster <node>,...`` or ``sentinel master '<name>' via <sentinel>,...``. It never
        holds a password."""
        if self.topology == "cluster":
            return "cluster " + ",".join(_format_address(a) for a in self.cluster_nodes)
        if self.topology == "sentinel":
            sentinels = ",".join(_format_address(a) for a in self.sentinel_nodes)
            return f"sentinel master {self.redis_master_name!r} via {sentinels}"
        if self.unix_socket is not None:
            return f"unix:{self.unix_socket}"
        return _format_address(self.server_address)


def _format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _redact_url(url: str) -> str:
    parts = urlsplit(url) if "://" in url else None
    if parts is not None and parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def _to_problem(err: Any) -> ConfigProblem:
    """Turn one pydantic error into a :class:`ConfigProblem`."""
    loc = err.get("loc") or ("settings",)
    field = str(loc[0])
    value = "***" if field in _SECRET_FIELDS else err.get("input")
    accepted = _ACCEPTED.get(field)
    if accepted is None:
        accepted = str(err.get("msg", "a valid value"))
    return ConfigProblem(field.upper(), value, accepted)
