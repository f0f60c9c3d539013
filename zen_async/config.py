"""Settings: one frozen object, read from the environment and ``.env`` at the edge only.

The seed's variable names are kept as they were (``REDIS_HOST``, ``REDIS_USE_CLUSTER``, ...);
everything else follows the same ``REDIS_`` prefix. Any invalid value fails construction with a
single :class:`~zen_async.errors.ConfigError` that names each bad variable, the value given and
what would be accepted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import pydantic
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from zen_async.errors import ConfigError, ConfigProblem

__all__ = ["Address", "Settings", "Topology"]

Topology = Literal["standalone", "sentinel", "cluster"]
DbLayout = Literal["databases", "prefixed"]
Address = tuple[str, int]

_URL_SCHEMES = ("redis", "rediss", "unix")

# What each variable accepts, used when pydantic rejects a value so the message says what
# would be right rather than echoing a parser's wording.
_ACCEPTED: dict[str, str] = {
    "redis_port": "an integer TCP port from 1 to 65535",
    "redis_max_connections": "an integer >= 1",
    "redis_pipeline_batch_size": "an integer >= 1",
    "redis_port_range_start": "an integer TCP port from 1 to 65535",
    "redis_port_range_end": "an integer TCP port from 1 to 65535",
    "redis_db_layout": "'databases' or 'prefixed'",
    "redis_embedded": "'auto', 'true' or 'false'",
    "redis_agent_shards": "an integer from 1 to 1024",
    "redis_compression_threshold": "an integer number of bytes >= 0",
}
_SECRET_FIELDS = frozenset({"redis_password", "redis_sentinel_password"})


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
    redis_enable_pipelining: bool = True
    redis_pipeline_batch_size: int = Field(500, ge=1)
    redis_enable_metrics: bool = True
    redis_port_range_start: int = Field(3284, ge=1, le=65535)
    redis_port_range_end: int = Field(10000, ge=1, le=65535)

    # --- connection -----------------------------------------------------------------------
    redis_url: str | None = None
    redis_sentinel_password: SecretStr | None = None
    redis_tls: bool = False
    redis_tls_ca_file: Path | None = None
    redis_tls_cert_file: Path | None = None
    redis_tls_key_file: Path | None = None
    redis_tls_check_hostname: bool = True
    redis_db_layout: DbLayout | None = None
    redis_embedded: Literal["auto", "true", "false"] = "auto"
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
    redis_last_known_size: int = Field(10_000, ge=0)

    # --- data -----------------------------------------------------------------------------
    redis_namespace: str = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    redis_agent_shards: int = Field(16, ge=1, le=1024)
    redis_compression_threshold: int = Field(1024, ge=0)
    redis_event_export: bool = False
    """Copy every event into the export stream ``zen.export`` (for Kafka Connect & co)."""

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
        if self.redis_embedded == "true" and (self.redis_use_cluster or self.redis_use_sentinel):
            raise _problem(
                "redis_embedded", "true", "'false' or 'auto' when Cluster or Sentinel is configured"
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
    def server_configured(self) -> bool:
        """True when a server was named (REDIS_URL, REDIS_HOST, Cluster or Sentinel) in the
        environment, ``.env`` or the constructor."""
        named = {"redis_url", "redis_host"} & self.model_fields_set
        return bool(named) or self.redis_use_cluster or self.redis_use_sentinel

    @property
    def use_embedded(self) -> bool:
        """Whether :func:`open_zen` starts its own private valkey-server."""
        if self.redis_embedded == "auto":
            return not self.server_configured
        return self.redis_embedded == "true"


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
