"""Metric names, kinds and the validation of what callers record.

Names follow Prometheus (``[a-zA-Z_:][a-zA-Z0-9_:]*``) so a series name is also its
exposition name. Two conventions carry meaning:

- a name ending in ``_total`` is a counter;
- a name ending in ``_ms`` holds milliseconds (the seed's unit for latencies); the Prometheus
  exposition shows it in base units, as ``<stem>_seconds``.

The seed recorded dotted names (``system.active_agents``); :func:`seed_metric` maps them to
these names for ``RedisManager.record_metric``:

===============================  ==================================================
seed name                        recorded as
===============================  ==================================================
``system.active_agents``         ``zen_active_agents`` (gauge)
``agent.state.<op>.latency``     ``zen_state_operation_latency_ms{operation="<op>"}``
``agent.memory.<op>.latency``    ``zen_memory_operation_latency_ms{operation="<op>"}``
any other dotted name            dots become ``_``: ``agent.task.duration`` ->
                                 ``agent_task_duration``
===============================  ==================================================
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from types import MappingProxyType
from typing import Final, Literal

from zen_async.errors import ValidationError

__all__ = [
    "ACTIVE_AGENTS",
    "CIRCUIT_BREAKER_ACTIVATIONS",
    "CIRCUIT_BREAKER_FAILURES",
    "CIRCUIT_BREAKER_OPEN",
    "CIRCUIT_BREAKER_OPEN_SECONDS",
    "CIRCUIT_BREAKER_REJECTED_CALLS",
    "COORDINATION_EVENTS",
    "CORE_METRICS",
    "DEFAULT_BUCKETS",
    "LATENCY_BUCKETS_MS",
    "MAX_TAGS",
    "MAX_TAG_VALUE_LENGTH",
    "MEMORY_CONSOLIDATION_FAILURES",
    "MEMORY_OPERATION_LATENCY",
    "METRICS_BUFFERED",
    "METRICS_DROPPED",
    "METRICS_FLUSH_FAILURES",
    "POOL_CONNECTIONS_IDLE",
    "POOL_CONNECTIONS_IN_USE",
    "POOL_CONNECTIONS_MAX",
    "PORT_ALLOCATION_FAILURES",
    "PORT_ALLOCATION_SUCCESSES",
    "REDIS_LATENCY",
    "SEED_METRIC_NAMES",
    "STATE_OPERATION_LATENCY",
    "Kind",
    "MetricSpec",
    "Tags",
    "check_name",
    "check_tags",
    "check_value",
    "default_buckets",
    "seed_metric",
]

Kind = Literal["counter", "gauge", "histogram"]
Tags = tuple[tuple[str, str], ...]
"""A validated tag set: (key, value) pairs sorted by key."""

# --- the seed's metrics, recorded by the domains ----------------------------------------------
STATE_OPERATION_LATENCY: Final = "zen_state_operation_latency_ms"
"""Histogram, ms: one agent-state operation (tag ``operation``)."""
MEMORY_OPERATION_LATENCY: Final = "zen_memory_operation_latency_ms"
"""Histogram, ms: one agent-memory operation (tag ``operation``)."""
PORT_ALLOCATION_SUCCESSES: Final = "zen_port_allocation_successes_total"
"""Counter: ports leased."""
PORT_ALLOCATION_FAILURES: Final = "zen_port_allocation_failures_total"
"""Counter: port requests refused (range exhausted, or degraded)."""
MEMORY_CONSOLIDATION_FAILURES: Final = "zen_memory_consolidation_failures_total"
"""Counter: memory consolidation runs that failed."""
COORDINATION_EVENTS: Final = "zen_coordination_events_total"
"""Counter: cross-agent coordination hints (agent state changes on the pub/sub channel) this
instance received while it had waiters to wake (tag ``type``)."""

# --- read from the core by Metrics.collect_core_metrics() -------------------------------------
ACTIVE_AGENTS: Final = "zen_active_agents"
"""Gauge: agents not terminated, from the health monitor's latest report (recorded only once
the agents domain sets ``health.active_agents_source``)."""
CIRCUIT_BREAKER_ACTIVATIONS: Final = "zen_circuit_breaker_activations_total"
"""Counter: times the circuit breaker opened."""
CIRCUIT_BREAKER_FAILURES: Final = "zen_circuit_breaker_failures_total"
"""Counter: connection failures and timeouts the breaker counted."""
CIRCUIT_BREAKER_REJECTED_CALLS: Final = "zen_circuit_breaker_rejected_calls_total"
"""Counter: calls refused while the circuit was open."""
CIRCUIT_BREAKER_OPEN: Final = "zen_circuit_breaker_open"
"""Gauge: 1 while the breaker is open or half-open, else 0."""
CIRCUIT_BREAKER_OPEN_SECONDS: Final = "zen_circuit_breaker_open_seconds"
"""Gauge: seconds since the current outage began (0 when closed)."""
POOL_CONNECTIONS_IN_USE: Final = "zen_pool_connections_in_use"
"""Gauge: connections checked out (tag ``pool``: keyspace, or node on Cluster)."""
POOL_CONNECTIONS_IDLE: Final = "zen_pool_connections_idle"
"""Gauge: idle connections (tag ``pool``)."""
POOL_CONNECTIONS_MAX: Final = "zen_pool_connections_max"
"""Gauge: the pool's size (tag ``pool``)."""
REDIS_LATENCY: Final = "zen_redis_latency_ms"
"""Gauge, ms: the health monitor's average PING latency (the seed's ``average_latency``)."""

# --- the metrics layer itself (Prometheus only, never written to Redis) -----------------------
METRICS_DROPPED: Final = "zen_metrics_dropped_total"
"""Counter: buffered aggregates dropped (buffer full, or refused by the server)."""
METRICS_FLUSH_FAILURES: Final = "zen_metrics_flush_failures_total"
"""Counter: flushes that left data buffered because the server could not take it."""
METRICS_BUFFERED: Final = "zen_metrics_buffered_entries"
"""Gauge: aggregates waiting to be written."""

LATENCY_BUCKETS_MS: Final = (
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1e3,
    2.5e3,
    5e3,
    1e4,
)
"""Prometheus histogram bounds, in ms, for ``*_ms`` histograms."""
DEFAULT_BUCKETS: Final = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1e6)
"""Prometheus histogram bounds for any other histogram: one per decade."""

MAX_NAME_LENGTH: Final = 200
MAX_TAGS: Final = 16
MAX_TAG_KEY_LENGTH: Final = 64
MAX_TAG_VALUE_LENGTH: Final = 256
MAX_ABS_VALUE: Final = 1e100
"""Largest magnitude recorded: sums of many such values stay finite."""
_RESERVED_TAGS: Final = frozenset({"le", "quantile"})
_NAME_RE: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_TAG_RE: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """How a metric name is recorded and exposed.

    Attributes:
        name: the series name (``_ms`` suffix: milliseconds; ``_total``: a counter).
        kind: counter, gauge or histogram.
        help: the HELP text of the exposition.
        buckets: Prometheus bucket bounds for a histogram, in the recorded unit.
        stored: False for metrics of the metrics layer itself, kept out of Redis.
    """

    name: str
    kind: Kind
    help: str
    buckets: tuple[float, ...] = ()
    stored: bool = True


def default_buckets(name: str, kind: Kind) -> tuple[float, ...]:
    """Prometheus bucket bounds for a metric not declared with its own: latency bounds for a
    ``*_ms`` histogram, one per decade for any other histogram, none for the other kinds."""
    if kind != "histogram":
        return ()
    return LATENCY_BUCKETS_MS if name.endswith("_ms") else DEFAULT_BUCKETS


def _spec(name: str, kind: Kind, help_text: str, *, stored: bool = True) -> MetricSpec:
    return MetricSpec(name, kind, help_text, default_buckets(name, kind), stored)


CORE_METRICS: Final[tuple[MetricSpec, ...]] = (
    _spec(STATE_OPERATION_LATENCY, "histogram", "Latency of agent state operations."),
    _spec(MEMORY_OPERATION_LATENCY, "histogram", "Latency of agent memory operations."),
    _spec(PORT_ALLOCATION_SUCCESSES, "counter", "Ports leased to agents."),
    _spec(PORT_ALLOCATION_FAILURES, "counter", "Port requests that could not be served."),
    _spec(MEMORY_CONSOLIDATION_FAILURES, "counter", "Memory consolidation runs that failed."),
    _spec(COORDINATION_EVENTS, "counter", "Cross-agent coordination events published."),
    _spec(ACTIVE_AGENTS, "gauge", "Agents not terminated, as of the latest health check."),
    _spec(CIRCUIT_BREAKER_ACTIVATIONS, "counter", "Times the Redis circuit breaker opened."),
    _spec(CIRCUIT_BREAKER_FAILURES, "counter", "Redis connection failures and timeouts."),
    _spec(CIRCUIT_BREAKER_REJECTED_CALLS, "counter", "Calls refused while the circuit was open."),
    _spec(CIRCUIT_BREAKER_OPEN, "gauge", "1 while the Redis circuit breaker is open, else 0."),
    _spec(CIRCUIT_BREAKER_OPEN_SECONDS, "gauge", "Seconds since the current Redis outage began."),
    _spec(POOL_CONNECTIONS_IN_USE, "gauge", "Redis connections checked out, per pool."),
    _spec(POOL_CONNECTIONS_IDLE, "gauge", "Idle Redis connections, per pool."),
    _spec(POOL_CONNECTIONS_MAX, "gauge", "Size of each Redis connection pool."),
    _spec(REDIS_LATENCY, "gauge", "Average Redis PING latency over the recent health checks."),
    _spec(
        METRICS_DROPPED, "counter", "Metric aggregates dropped before reaching Redis.", stored=False
    ),
    _spec(
        METRICS_FLUSH_FAILURES, "counter", "Metric flushes that kept data buffered.", stored=False
    ),
    _spec(METRICS_BUFFERED, "gauge", "Metric aggregates waiting to be written.", stored=False),
)
"""Every metric zen_async itself records, declared up front so the exposition always has them."""


SEED_METRIC_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {"system.active_agents": ACTIVE_AGENTS}
)
"""The seed's fixed dotted names and the metric each is recorded as."""
_SEED_OPERATION_LATENCY: Final = re.compile(r"agent\.(state|memory)\.([^.]+)\.latency\Z")
_SEED_OPERATION_METRICS: Final = {
    "state": STATE_OPERATION_LATENCY,
    "memory": MEMORY_OPERATION_LATENCY,
}


def seed_metric(
    name: str, tags: Mapping[str, str] | None = None
) -> tuple[str, Mapping[str, str] | None]:
    """Map a name the seed recorded to the metric zen_async records (table in the module
    docstring): ``system.active_agents`` to :data:`ACTIVE_AGENTS`;
    ``agent.state.<op>.latency`` and ``agent.memory.<op>.latency`` to the operation latency
    histograms, with ``operation=<op>`` added to ``tags``; any other name with its dots
    replaced by underscores. A name without a dot is returned unchanged. Pure: the
    result is checked where it is recorded.

    Returns:
        The metric name and the tags to record it with.
    """
    if not isinstance(name, str) or "." not in name:
        return name, tags
    if (mapped := SEED_METRIC_NAMES.get(name)) is not None:
        return mapped, tags
    if (match := _SEED_OPERATION_LATENCY.match(name)) is not None:
        metric = _SEED_OPERATION_METRICS[match[1]]
        if tags is not None and not isinstance(tags, Mapping):
            return metric, tags  # refused, with its reason, where it is recorded
        return metric, {**(tags or {}), "operation": match[2]}
    return name.replace(".", "_"), tags


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid metric name.

    Raises:
        ValidationError: not a string of ``[a-zA-Z_:][a-zA-Z0-9_:]*``, at most 200 characters.
    """
    if not isinstance(name, str):
        raise ValidationError(
            f"metric name must be a str, got {type(name).__name__}; e.g. 'agent_task_duration_ms'"
        )
    if len(name) > MAX_NAME_LENGTH or not _NAME_RE.match(name):
        hint = ""
        fixed = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
        if fixed and _NAME_RE.match(fixed) and len(fixed) <= MAX_NAME_LENGTH:
            hint = f" (e.g. {fixed!r})"
        raise ValidationError(
            f"invalid metric name {name[:80]!r}: use 1-{MAX_NAME_LENGTH} characters of letters, "
            f"digits, '_' and ':', not starting with a digit (Prometheus names){hint}"
        )
    return name


def check_tags(tags: Mapping[str, str] | None) -> Tags:
    """Validate ``tags`` and return them as sorted pairs.

    Raises:
        ValidationError: not a str->str mapping; more than 16 tags; a key that is not a
            Prometheus label name (or is reserved: ``le``, ``quantile``, ``__*``); an empty or
            over-long value.
    """
    if not tags:
        if tags is not None and not isinstance(tags, Mapping):
            raise ValidationError(f"tags must be a dict of str to str, got {type(tags).__name__}")
        return ()
    if not isinstance(tags, Mapping):
        raise ValidationError(f"tags must be a dict of str to str, got {type(tags).__name__}")
    if len(tags) > MAX_TAGS:
        raise ValidationError(
            f"{len(tags)} tags given; at most {MAX_TAGS} are allowed per series: keep "
            "high-cardinality facts (ids, messages) out of tags"
        )
    for key, value in tags.items():
        if not isinstance(key, str) or len(key) > MAX_TAG_KEY_LENGTH or not _TAG_RE.match(key):
            raise ValidationError(
                f"invalid tag key {key!r}: use 1-{MAX_TAG_KEY_LENGTH} letters, digits and '_', "
                "not starting with a digit (Prometheus label names)"
            )
        if key.startswith("__") or key in _RESERVED_TAGS:
            raise ValidationError(
                f"tag key {key!r} is reserved by Prometheus ('le', 'quantile', '__*'); "
                "choose another name"
            )
        if not isinstance(value, str):
            raise ValidationError(
                f"tag {key!r} has a {type(value).__name__} value; tag values must be str "
                f"(e.g. {str(value)!r})"
            )
        if not value or len(value) > MAX_TAG_VALUE_LENGTH:
            raise ValidationError(
                f"tag {key!r} has a value of {len(value)} characters; use 1-"
                f"{MAX_TAG_VALUE_LENGTH} (omit the tag rather than leave it empty)"
            )
    return tuple(sorted(tags.items()))


def check_value(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite real number of sane magnitude.

    Raises:
        ValidationError: not a number (bool included), NaN, infinite, or beyond ±1e100.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValidationError(
            f"metric {name!r}: value must be an int or float, got {type(value).__name__}"
        )
    number = float(value)
    if not math.isfinite(number) or abs(number) > MAX_ABS_VALUE:
        raise ValidationError(
            f"metric {name!r}: value {number!r} is not allowed; record finite numbers within "
            f"±{MAX_ABS_VALUE:g}"
        )
    return number
