"""Typed results of the metrics service."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["FlushReport", "MetricPoint", "MetricsStatistics"]


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One time bucket of one series (or of every tag set of a name, merged).

    Quantiles come from the merged log-bucketed histogram: each is within about 4.3 % of the
    exact nearest-rank quantile (see :data:`zen_async.metrics.histogram.RELATIVE_ERROR`), and
    never outside [min, max].
    """

    start: datetime
    """Start of the bucket (UTC)."""
    count: int
    sum: float
    min: float
    max: float
    mean: float
    p50: float
    p90: float
    p99: float


@dataclass(frozen=True, slots=True)
class FlushReport:
    """What one :meth:`~zen_async.metrics.Metrics.flush` did."""

    written: int
    """Aggregates (one series, one bucket) written."""
    buffered: int
    """Aggregates still in memory: batches the server could not take now, to be sent again,
    and values recorded while the flush ran."""
    dropped: int
    """Aggregates the server refused for good (not an outage), so dropped."""
    error: str | None = None
    """Why something stayed buffered or was dropped, or None."""

    @property
    def ok(self) -> bool:
        """True when every sealed batch was written."""
        return self.error is None


@dataclass(frozen=True, slots=True)
class MetricsStatistics:
    """Counters of the metrics service since it started."""

    buffered: int
    """Aggregates not yet written (live and pending)."""
    pending: int
    """Of those, aggregates in sealed batches waiting for a resend."""
    dropped: int
    """Aggregates dropped: buffer full, or refused by the server."""
    flushes: int
    failed_flushes: int
    """Flushes that left a batch buffered because the server could not take it."""
    last_error: str | None
