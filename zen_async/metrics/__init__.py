"""Metrics: ``record_metric()`` into time-bucketed series in the ``metrics`` keyspace, and the
process's Prometheus exposition.

    metrics = Metrics(zen.redis)
    metrics.record_metric("agent_task_duration_ms", 2.5, {"type": "analyze"})
    async with metrics.time(STATE_OPERATION_LATENCY, operation="update"):
        ...
    metrics.count(PORT_ALLOCATION_FAILURES)
    await metrics.flush()                       # run() does this every flush_interval
    points = await metrics.query("agent_task_duration_ms", since=time.time() - 3600)
    text = metrics.prometheus_text()
"""

from zen_async.metrics.histogram import RELATIVE_ERROR
from zen_async.metrics.models import FlushReport, MetricPoint, MetricsStatistics
from zen_async.metrics.names import (
    ACTIVE_AGENTS,
    CIRCUIT_BREAKER_ACTIVATIONS,
    CIRCUIT_BREAKER_FAILURES,
    CIRCUIT_BREAKER_OPEN,
    CIRCUIT_BREAKER_OPEN_SECONDS,
    CIRCUIT_BREAKER_REJECTED_CALLS,
    COORDINATION_EVENTS,
    CORE_METRICS,
    MEMORY_CONSOLIDATION_FAILURES,
    MEMORY_OPERATION_LATENCY,
    METRICS_BUFFERED,
    METRICS_DROPPED,
    METRICS_FLUSH_FAILURES,
    POOL_CONNECTIONS_IDLE,
    POOL_CONNECTIONS_IN_USE,
    POOL_CONNECTIONS_MAX,
    PORT_ALLOCATION_FAILURES,
    PORT_ALLOCATION_SUCCESSES,
    REDIS_LATENCY,
    STATE_OPERATION_LATENCY,
    Kind,
    MetricSpec,
)
from zen_async.metrics.prometheus import CONTENT_TYPE, Registry
from zen_async.metrics.service import Metrics
from zen_async.metrics.timer import Timer

__all__ = [
    "ACTIVE_AGENTS",
    "CIRCUIT_BREAKER_ACTIVATIONS",
    "CIRCUIT_BREAKER_FAILURES",
    "CIRCUIT_BREAKER_OPEN",
    "CIRCUIT_BREAKER_OPEN_SECONDS",
    "CIRCUIT_BREAKER_REJECTED_CALLS",
    "CONTENT_TYPE",
    "COORDINATION_EVENTS",
    "CORE_METRICS",
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
    "RELATIVE_ERROR",
    "STATE_OPERATION_LATENCY",
    "FlushReport",
    "Kind",
    "MetricPoint",
    "MetricSpec",
    "Metrics",
    "MetricsStatistics",
    "Registry",
    "Timer",
]
