"""The metrics service: ``record_metric()`` into a bounded in-memory buffer, batched writes of
time-bucketed series to the ``metrics`` keyspace (layout in :mod:`zen_async.metrics.series`),
queries over them, and the process's Prometheus exposition.
"""

from __future__ import annotations

import copy
import functools
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import anyio
import structlog

from zen_async.errors import BackendError, CapacityError, ValidationError, ZenError
from zen_async.metrics import names as n
from zen_async.metrics.buffer import Batch, Buffer
from zen_async.metrics.models import FlushReport, MetricPoint, MetricsStatistics
from zen_async.metrics.names import (
    Kind,
    MetricSpec,
    Tags,
    check_name,
    check_tags,
    check_value,
    default_buckets,
)
from zen_async.metrics.prometheus import Family, Registry
from zen_async.metrics.series import SeriesStore
from zen_async.metrics.timer import Timer
from zen_async.store import BreakerState, RedisManager

__all__ = ["Metrics"]

log = structlog.get_logger(__name__)

MAX_ENTRIES_PER_SCRIPT: Final = 100
"""Aggregates per Lua call: bounds how long one call holds the server."""
FLUSH_CONCURRENCY: Final = 8
"""Script calls one flush runs at once (the pools are shared with every other domain)."""
TAG_CACHE_SIZE: Final = 4096
"""Validated tag sets remembered (validation is most of the cost of a record)."""
MAX_QUERY_BUCKETS: Final = 10_000
"""Time buckets one :meth:`Metrics.query` reads at most (one HGETALL each, one point each in
the reply): bounds what a single call makes the server and this process do."""


@dataclass(eq=False)
class _Shared:
    """What a Metrics instance shares with its tenant views: one buffer, one registry, one
    flush loop."""

    redis: RedisManager
    bucket_seconds: int
    retention_seconds: int
    flush_interval: float
    shutdown_timeout: float
    enabled: bool
    collect_core: bool
    clock: Callable[[], float]
    buffer: Buffer
    registry: Registry = field(default_factory=Registry)
    writer: str = field(default_factory=lambda: secrets.token_hex(8))
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    stores: dict[str, SeriesStore] = field(default_factory=dict)
    names_dirty: dict[str, dict[str, int]] = field(default_factory=dict)
    tag_cache: dict[tuple[tuple[str, str], ...], Tags] = field(default_factory=dict)
    breaker_seen: dict[str, int] = field(default_factory=dict)
    flushes: int = 0
    failed_flushes: int = 0
    failing: bool = False
    last_error: str | None = None
    dropped_unlogged: int = 0

    @property
    def ttl_ms(self) -> int:
        return (self.retention_seconds + self.bucket_seconds) * 1000

    @property
    def horizon(self) -> int:
        return self.retention_seconds + self.bucket_seconds


@dataclass(slots=True)
class _Outcome:
    written: int = 0
    dropped: int = 0
    error: str | None = None
    retry: bool = False


class Metrics:
    """Metrics: cheap synchronous recording, batched writes, time-bucketed queries, and a
    Prometheus exposition of the process's own counters, gauges and histograms.

    Call it from the event loop thread only (recording touches in-memory state, unlocked).

    Args:
        redis: the core (``zen.redis``).
        tenant: the tenant to write to (default: the configured namespace).
        bucket_seconds: width of a time bucket; the same in every process of a deployment.
        retention_seconds: how long buckets are kept (key TTL).
        flush_interval: seconds between the flushes of :meth:`run`.
        max_buffer: aggregates (one series in one bucket) kept in memory at most; beyond it
            the oldest are dropped, counted and logged.
        enabled: False keeps series out of Redis (the Prometheus registry is still fed):
            ``REDIS_ENABLE_METRICS``.
        collect_core: whether :meth:`run` records breaker, pool and health gauges
            (:meth:`collect_core_metrics`); one instance per process should.
        shutdown_timeout: seconds the last flush of :meth:`run` may take once cancelled.
        clock: wall clock in epoch seconds, for bucketing (a fake in tests).

    Raises:
        ValidationError: a non-positive interval, bucket, retention or buffer size.
    """

    def __init__(
        self,
        redis: RedisManager,
        *,
        tenant: str | None = None,
        bucket_seconds: int = 10,
        retention_seconds: int = 24 * 3600,
        flush_interval: float = 1.0,
        max_buffer: int = 100_000,
        enabled: bool = True,
        collect_core: bool = True,
        shutdown_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _check_options(bucket_seconds, retention_seconds, flush_interval, max_buffer)
        self._shared = _Shared(
            redis=redis,
            bucket_seconds=bucket_seconds,
            retention_seconds=retention_seconds,
            flush_interval=flush_interval,
            shutdown_timeout=shutdown_timeout,
            enabled=enabled,
            collect_core=collect_core,
            clock=clock,
            buffer=Buffer(max_buffer),
        )
        for spec in n.CORE_METRICS:
            family = self._shared.registry.declare(spec)
            if spec.kind != "histogram" and spec.name not in _LABELLED:
                family.set((), 0.0)  # label-less counters and gauges are shown from the start
        self._tenant = redis.keyspace("metrics", tenant=tenant).tenant

    def for_tenant(self, tenant: str) -> Metrics:
        """A view writing to and querying ``tenant``, sharing this instance's buffer, registry
        and flush loop (run only the original's :meth:`run`)."""
        view = copy.copy(self)
        view._tenant = self._shared.redis.keyspace("metrics", tenant=tenant).tenant
        return view

    # --- recording (synchronous, no I/O) -------------------------------------------------
    def declare(
        self, name: str, kind: Kind, *, help_text: str, buckets: Sequence[float] = ()
    ) -> None:
        """Declare a metric's kind, HELP text and (histograms) Prometheus bucket bounds, in
        the recorded unit. Optional: an undeclared name becomes a counter when it ends in
        ``_total`` and a histogram otherwise, on first use.

        Raises:
            ValidationError: an invalid name, or one already declared as another kind.
        """
        check_name(name)
        if kind not in ("counter", "gauge", "histogram"):
            raise ValidationError(f"kind {kind!r}: use 'counter', 'gauge' or 'histogram'")
        bounds = tuple(float(b) for b in buckets) or default_buckets(name, kind)
        if not all(math.isfinite(b) for b in bounds):
            raise ValidationError(f"buckets of {name!r} must be finite numbers (+Inf is implied)")
        self._shared.registry.declare(MetricSpec(name, kind, help_text, bounds))

    def record_metric(self, name: str, value: float, tags: Mapping[str, str] | None = None) -> None:
        """Record one value: aggregated in memory into the current time bucket of the series
        (name, tags), and fed to the Prometheus registry by the name's kind (a histogram
        unless declared otherwise or named ``*_total``). No I/O: :meth:`flush` writes.

        Raises:
            ValidationError: invalid name, tags or value (a counter's value must be >= 0).
        """
        counter = isinstance(name, str) and name.endswith("_total")
        family = self._family(name, "counter" if counter else "histogram")
        self._record(family, self._tags(tags), check_value(name, value))

    def record_seed_metric(
        self, name: str, value: float, tags: Mapping[str, str] | None = None
    ) -> None:
        """:meth:`record_metric` for a name the seed used: dotted names are mapped first
        (``system.active_agents`` to ``zen_active_agents``, others as
        :func:`zen_async.metrics.names.seed_metric` says).

        Raises:
            ValidationError: invalid name (once mapped), tags or value.
        """
        mapped, mapped_tags = n.seed_metric(name, tags)
        self.record_metric(mapped, value, mapped_tags)

    def count(self, name: str, amount: float = 1, /, **tags: str) -> None:
        """Add ``amount`` to the counter ``name`` (shown with a ``_total`` suffix).

        Raises:
            ValidationError: invalid name or tags, a negative amount, or ``name`` is not a
                counter.
        """
        family = self._family(name, "counter", strict=True)
        self._record(family, self._tags(tags), check_value(name, amount))

    def gauge(self, name: str, value: float, /, **tags: str) -> None:
        """Set the gauge ``name``; its series keeps min, max and mean per bucket.

        Raises:
            ValidationError: invalid name, tags or value, or ``name`` is not a gauge.
        """
        family = self._family(name, "gauge", strict=True)
        self._record(family, self._tags(tags), check_value(name, value))

    def time(self, name: str, /, **tags: str) -> Timer:
        """A context manager (``with`` or ``async with``) recording its block's duration in
        milliseconds into the histogram ``name``, also when the block raises.

        Raises:
            ValidationError: invalid tags, or a name without the ``_ms`` suffix.
        """
        if not check_name(name).endswith("_ms"):
            raise ValidationError(
                f"metrics.time() records milliseconds: name the metric with the _ms suffix "
                f"(e.g. {name + '_ms'!r}); it is exposed to Prometheus in seconds"
            )
        family = self._family(name, "histogram", strict=True)
        return Timer(functools.partial(self._record, family, self._tags(tags)))

    def _family(self, name: str, kind: Kind, *, strict: bool = False) -> Family:
        registry = self._shared.registry
        family = registry.get(name) if isinstance(name, str) else None
        if family is None:
            check_name(name)
            family = registry.declare(
                MetricSpec(name, kind, _DEFAULT_HELP, default_buckets(name, kind))
            )
        elif strict and family.kind != kind:
            registry.declare(MetricSpec(name, kind, _DEFAULT_HELP))  # raises the kind clash
        return family

    def _tags(self, tags: Mapping[str, str] | None) -> Tags:
        if not tags:
            return check_tags(tags)
        cache = self._shared.tag_cache
        try:
            key = tuple(tags.items())
            found = cache.get(key)
        except (TypeError, AttributeError):  # not a mapping, or unhashable values
            return check_tags(tags)
        if found is None:
            found = check_tags(tags)
            if len(cache) >= TAG_CACHE_SIZE:
                cache.clear()
            cache[key] = found
        return found

    def _record(self, family: Family, tags: Tags, value: float) -> None:
        kind = family.kind
        if kind == "counter":
            if value < 0:
                raise ValidationError(
                    f"counter {family.spec.name!r} only goes up: record an amount >= 0, "
                    f"got {value!r} (use a gauge for values that go down)"
                )
            family.inc(tags, value)
        elif kind == "gauge":
            family.set(tags, value)
        else:
            family.observe(tags, value)
        shared = self._shared
        if not (shared.enabled and family.spec.stored):
            return
        bucket = int(shared.clock() // shared.bucket_seconds) * shared.bucket_seconds
        if not shared.buffer.add((self._tenant, family.spec.name, tags, bucket), value):
            self._note_drop(1)

    def _count_drop(self, count: int) -> None:
        dropped = self._shared.registry.get(n.METRICS_DROPPED)
        assert dropped is not None
        dropped.inc((), float(count))

    def _note_drop(self, count: int) -> None:
        shared = self._shared
        self._count_drop(count)
        if shared.dropped_unlogged == 0:
            log.warning(
                "metrics_buffer_full",
                max_buffer=shared.buffer.max_entries,
                action="dropping the oldest aggregates until the next flush",
            )
        shared.dropped_unlogged += count

    # --- core gauges -------------------------------------------------------------------------
    def collect_core_metrics(self) -> None:
        """Record the breaker's state and counters, each pool's usage, and the latest health
        report's latency and active agents. No I/O; :meth:`run` calls it before each flush."""
        redis = self._shared.redis
        stats = redis.breaker.statistics()
        self.gauge(n.CIRCUIT_BREAKER_OPEN, 0.0 if stats.state is BreakerState.CLOSED else 1.0)
        self.gauge(n.CIRCUIT_BREAKER_OPEN_SECONDS, stats.open_for)
        seen = self._shared.breaker_seen
        for name, total in (
            (n.CIRCUIT_BREAKER_ACTIVATIONS, stats.times_opened),
            (n.CIRCUIT_BREAKER_FAILURES, stats.total_failures),
            (n.CIRCUIT_BREAKER_REJECTED_CALLS, stats.rejected_calls),
        ):
            if total > seen.get(name, 0):
                self.count(name, total - seen.get(name, 0))
                seen[name] = total
        for pool, usage in redis.pool_usage().items():
            self.gauge(n.POOL_CONNECTIONS_IN_USE, usage["in_use"], pool=pool)
            self.gauge(n.POOL_CONNECTIONS_IDLE, usage["idle"], pool=pool)
            self.gauge(n.POOL_CONNECTIONS_MAX, usage["max"], pool=pool)
        report = redis.health.last_report
        if report is not None:
            if math.isfinite(report.average_latency_ms):
                self.gauge(n.REDIS_LATENCY, report.average_latency_ms)
            if redis.health.active_agents_source is not None:
                self.gauge(n.ACTIVE_AGENTS, report.active_agents)

    # --- Prometheus ----------------------------------------------------------------------------
    def prometheus_text(self) -> str:
        """The process's metrics in the Prometheus text format 0.0.4 (serve it with
        ``zen_async.metrics.CONTENT_TYPE``)."""
        buffered = self._shared.registry.get(n.METRICS_BUFFERED)
        assert buffered is not None
        buffered.set((), float(self._shared.buffer.size))
        return self._shared.registry.render()

    @property
    def registry(self) -> Registry:
        """The in-process Prometheus registry."""
        return self._shared.registry

    def statistics(self) -> MetricsStatistics:
        """Buffer and flush counters."""
        shared = self._shared
        return MetricsStatistics(
            buffered=shared.buffer.size,
            pending=shared.buffer.pending_entries,
            dropped=shared.buffer.dropped,
            flushes=shared.flushes,
            failed_flushes=shared.failed_flushes,
            last_error=shared.last_error,
        )

    # --- writing ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Flush every ``flush_interval`` seconds (collecting the core gauges first) until
        cancelled; then flush once more (:meth:`aclose`), so a clean shutdown loses nothing
        that the server can take."""
        shared = self._shared
        try:
            while True:
                await anyio.sleep(shared.flush_interval)
                if shared.collect_core:
                    self.collect_core_metrics()
                await self.flush()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Flush what is buffered, shielded from cancellation, for at most
        ``shutdown_timeout`` seconds. :meth:`run` does this when cancelled; call it too when
        closing, in case ``run()`` was cancelled before it started. Safe to call twice."""
        with anyio.move_on_after(self._shared.shutdown_timeout, shield=True):
            await self.flush()

    async def flush(self) -> FlushReport:
        """Write everything buffered, one Lua call per batch (one metric name each),
        concurrently across names.

        Never raises for an unreachable server: the batches stay buffered (within
        ``max_buffer``) and the next flush sends them again; a batch whose reply was lost is
        applied once. A batch the server refuses outright (say, out of memory) is dropped.
        """
        shared = self._shared
        async with shared.lock:
            shared.buffer.seal(MAX_ENTRIES_PER_SCRIPT)
            outcome = _Outcome()
            groups = shared.buffer.groups()
            if groups:
                limiter = anyio.CapacityLimiter(FLUSH_CONCURRENCY)
                async with anyio.create_task_group() as tg:
                    for (tenant, name), batches in groups.items():
                        tg.start_soon(self._send, tenant, name, batches, limiter, outcome)
            await self._write_names(outcome)
            self._after_flush(outcome)
            return FlushReport(
                written=outcome.written,
                buffered=shared.buffer.size,
                dropped=outcome.dropped,
                error=outcome.error,
            )

    async def _send(
        self,
        tenant: str,
        name: str,
        batches: list[Batch],
        limiter: anyio.CapacityLimiter,
        outcome: _Outcome,
    ) -> None:
        # A name's batches go one after another: a later batch is sent only once the earlier
        # one is applied, so a writer's sequence numbers reach the server in order.
        shared = self._shared
        store = self._store(tenant)
        async with limiter:
            for batch in batches:
                if not batch.entries:
                    shared.buffer.done(batch)
                    continue
                batch.in_flight = True
                try:
                    applied = await store.merge(batch, writer=shared.writer)
                except ZenError as exc:
                    if _retryable(exc):
                        outcome.retry = True
                        outcome.error = f"{name}: {exc}"
                        return
                    lost = shared.buffer.discard(batch)
                    outcome.dropped += lost
                    outcome.error = f"{name}: {exc}"
                    log.warning("metrics_batch_refused", metric=name, dropped=lost, error=str(exc))
                    self._count_drop(lost)
                    continue
                finally:
                    batch.in_flight = False
                if not applied:  # an earlier send got through; its reply was lost
                    log.debug("metrics_batch_already_applied", metric=name, seq=batch.seq)
                outcome.written += len(batch.entries)
                latest = max(bucket for _, bucket, _ in batch.entries)
                dirty = shared.names_dirty.setdefault(tenant, {})
                dirty[name] = max(latest, dirty.get(name, latest))
                shared.buffer.done(batch)

    async def _write_names(self, outcome: _Outcome) -> None:
        shared = self._shared
        for tenant in list(shared.names_dirty):
            try:
                await self._store(tenant).note_names(shared.names_dirty[tenant])
            except ZenError as exc:  # kept dirty: the next flush writes the index again
                outcome.retry = outcome.retry or _retryable(exc)
                outcome.error = outcome.error or f"names index: {exc}"
            else:
                del shared.names_dirty[tenant]

    def _after_flush(self, outcome: _Outcome) -> None:
        shared = self._shared
        shared.flushes += 1
        if outcome.retry:
            shared.failed_flushes += 1
            shared.last_error = outcome.error
            failures = shared.registry.get(n.METRICS_FLUSH_FAILURES)
            assert failures is not None
            failures.inc((), 1.0)
            if not shared.failing:
                log.warning(
                    "metrics_flush_failed",
                    error=outcome.error,
                    buffered=shared.buffer.size,
                    action="kept buffered; retrying on the next flush",
                )
            shared.failing = True
        elif shared.failing:
            shared.failing = False
            log.info("metrics_flush_recovered", failed_flushes=shared.failed_flushes)
        if shared.dropped_unlogged:
            log.warning(
                "metrics_dropped", count=shared.dropped_unlogged, total=shared.buffer.dropped
            )
            shared.dropped_unlogged = 0

    def _store(self, tenant: str) -> SeriesStore:
        shared = self._shared
        store = shared.stores.get(tenant)
        if store is None:
            ks = shared.redis.keyspace("metrics", tenant=tenant)
            store = SeriesStore(ks, ttl_ms=shared.ttl_ms, horizon=shared.horizon)
            shared.stores[tenant] = store
        return store

    # --- reading ----------------------------------------------------------------------------------
    async def query(
        self,
        name: str,
        *,
        tags: Mapping[str, str] | None = None,
        since: datetime | float,
        until: datetime | float | None = None,
    ) -> list[MetricPoint]:
        """The buckets of a series that hold data, oldest first, from the bucket containing
        ``since`` to the one containing ``until`` (default: now). The window is clamped to
        what can hold data, the retention up to now, before anything is read; the clamped
        window may span at most :data:`MAX_QUERY_BUCKETS` buckets.

        Reads the server only: values still buffered in a process are not included until it
        flushes.

        Args:
            name: the metric name.
            tags: None for every tag set of ``name`` merged into one series; a dict (``{}``
                included) for exactly that tag set.
            since: an aware datetime or epoch seconds.
            until: the same, or None for now.

        Raises:
            ValidationError: invalid name or tags, a naive datetime, until before since, or
                a clamped window of more than :data:`MAX_QUERY_BUCKETS` buckets.
        """
        check_name(name)
        exact = None if tags is None else check_tags(tags)
        shared = self._shared
        start = _epoch(since, "since")
        now = shared.clock()
        end = now if until is None else _epoch(until, "until")
        if end < start:
            raise ValidationError(f"until ({end}) is before since ({start}); swap them")
        # Clamp before building anything: a window reaching into year 9999 would otherwise
        # build one key per bucket up to it (a frozen loop, gigabytes of keys).
        width = shared.bucket_seconds
        first = int(max(start, now - shared.horizon) // width) * width
        last = int(min(end, now) // width) * width
        if last < first:  # wholly beyond the retention, or in the future
            return []
        count = (last - first) // width + 1
        if count > MAX_QUERY_BUCKETS:
            raise ValidationError(
                f"since..until spans {count} buckets of {width} s within the retention; one "
                f"query reads at most {MAX_QUERY_BUCKETS} buckets "
                f"({MAX_QUERY_BUCKETS * width / 3600:g} h): narrow the window"
            )
        buckets = range(first, last + 1, width)
        return await self._store(self._tenant).read(name, exact, buckets)

    async def series(self, name: str) -> list[dict[str, str]]:
        """The tag sets of ``name`` recorded within the retention, from the index.

        Raises:
            ValidationError: an invalid name.
        """
        return await self._store(self._tenant).tag_sets(check_name(name))

    async def names(self) -> list[str]:
        """The metric names recorded within the retention, from the index."""
        return await self._store(self._tenant).names()


_DEFAULT_HELP: Final = "Recorded with zen_async Metrics."
_LABELLED: Final = frozenset(
    {
        n.POOL_CONNECTIONS_IN_USE,
        n.POOL_CONNECTIONS_IDLE,
        n.POOL_CONNECTIONS_MAX,
        n.COORDINATION_EVENTS,
    }
)


def _check_options(bucket: int, retention: int, interval: float, max_buffer: int) -> None:
    if isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < 1:
        raise ValidationError(f"bucket_seconds={bucket!r}: use a whole number of seconds >= 1")
    if isinstance(retention, bool) or not isinstance(retention, int) or retention < bucket:
        raise ValidationError(
            f"retention_seconds={retention!r}: use a whole number of seconds >= bucket_seconds"
        )
    if not interval > 0:
        raise ValidationError(f"flush_interval={interval!r}: use a number of seconds > 0")
    if max_buffer < 1:
        raise ValidationError(f"max_buffer={max_buffer!r}: use an integer >= 1")


def _retryable(exc: ZenError) -> bool:
    """An outage or a busy server: the same batch may succeed later."""
    return isinstance(exc, CapacityError) or (isinstance(exc, BackendError) and exc.retryable)


def _epoch(value: datetime | float, what: str) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValidationError(
                f"{what} is a naive datetime; give an aware one (datetime.now(UTC)) or epoch "
                "seconds"
            )
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(f"{what}={value!r}: give an aware datetime or epoch seconds")
    return float(value)
