"""Metrics: record -> flush -> query on every topology; aggregates, min/max and quantiles that
merge across flushes and processes; retention TTLs; time and tag selection; the buffer bound;
the flush on shutdown and through an outage; validation; the Prometheus exposition and the
alert rules written against it."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from zen_async import BreakerState, CapacityError, ValidationError, Zen, ZenError, open_zen
from zen_async.metrics import (
    ACTIVE_AGENTS,
    CIRCUIT_BREAKER_ACTIVATIONS,
    COORDINATION_EVENTS,
    CORE_METRICS,
    MEMORY_OPERATION_LATENCY,
    METRICS_DROPPED,
    PORT_ALLOCATION_FAILURES,
    PORT_ALLOCATION_SUCCESSES,
    RELATIVE_ERROR,
    STATE_OPERATION_LATENCY,
    Metrics,
    Registry,
)
from zen_async.metrics.service import MAX_QUERY_BUCKETS
from zen_async.testing import Standalone
from zen_async.testing.deployments import Target, settings_for
from zen_async.testing.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = (
    "promtool not installed (Debian package 'prometheus'; .ci/run installs it): "
    "cannot check the exposition and the alert rules with it"
)
NAME = "agent_task_duration_ms"


class FakeClock:
    """Wall clock for bucketing, moved by hand. Starts at a recent whole minute: the server
    prunes indexes by its own clock, so bucket times must be near the real time."""

    def __init__(self) -> None:
        self.now = float(int(time.time()) // 60 * 60)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def szen(standalone: Target) -> AsyncIterator[Zen]:
    """An open Zen on the shared Redis 7.0 standalone server."""
    async with open_zen(standalone.settings()) as zen:
        yield zen


def new_metrics(zen: Zen, clock: FakeClock, **options: Any) -> Metrics:
    options.setdefault("collect_core", False)
    return Metrics(zen.redis, clock=clock, **options)


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


# --- every topology -------------------------------------------------------------------------
async def test_record_flush_query_round_trip(zen: Zen) -> None:
    clock = FakeClock()
    metrics = new_metrics(zen, clock)
    for value in (1.0, 2.0, 3.0, 10.0):
        metrics.record_metric(NAME, value, {"type": "analyze"})
    metrics.record_metric(NAME, 100.0, {"type": "review", "model": "m-1"})
    clock.now += 10
    metrics.record_metric(NAME, 5.0, {"type": "analyze"})

    report = await metrics.flush()
    assert report.ok, report.error
    assert (report.written, report.buffered) == (3, 0)

    first, second = await metrics.query(NAME, tags={"type": "analyze"}, since=clock.now - 60)
    assert first.start == datetime.fromtimestamp(clock.now - 10, UTC)
    assert (first.count, first.sum, first.min, first.max, first.mean) == (4, 16.0, 1.0, 10.0, 4.0)
    assert (second.count, second.sum) == (1, 5.0)
    merged = await metrics.query(NAME, since=clock.now - 60)
    assert [(p.count, p.max) for p in merged] == [(5, 100.0), (1, 5.0)], "tags=None merges all"
    assert await metrics.series(NAME) == [{"model": "m-1", "type": "review"}, {"type": "analyze"}]
    assert await metrics.names() == [NAME]


# --- standalone -------------------------------------------------------------------------------
async def test_aggregates_merge_across_flushes_and_processes(standalone: Target) -> None:
    clock = FakeClock()
    async with open_zen(standalone.settings()) as one, open_zen(standalone.settings()) as two:
        a, b = new_metrics(one, clock), new_metrics(two, clock)
        a.record_metric(NAME, 5.0)
        await a.flush()
        a.record_metric(NAME, 7.0)  # the same bucket again: max rises, min stays
        await a.flush()
        b.record_metric(NAME, -1.5)  # another process: a lower min
        b.record_metric(NAME, 3.0)
        await b.flush()
        b.record_metric(NAME, 2.0)  # inside both: neither moves
        await b.flush()

        (point,) = await a.query(NAME, tags={}, since=clock.now)
        assert (point.count, point.sum, point.min, point.max) == (5, 15.5, -1.5, 7.0)
        assert point.mean == pytest.approx(3.1)
        assert await b.query(NAME, tags={}, since=clock.now) == [point]


async def test_quantiles_from_merged_histograms_are_within_bucket_precision(
    standalone: Target,
) -> None:
    clock = FakeClock()
    values = [float(v) for v in range(1, 1001)] + [0.25 * v for v in range(1, 201)]
    async with open_zen(standalone.settings()) as one, open_zen(standalone.settings()) as two:
        a, b = new_metrics(one, clock), new_metrics(two, clock)
        for i, value in enumerate(values):  # two processes, two tag sets, several flushes
            (a if i % 2 else b).record_metric(NAME, value, {"shard": str(i % 3 == 0)})
            if i % 300 == 0:
                await a.flush()
                await b.flush()
        await a.flush()
        await b.flush()
        (point,) = await a.query(NAME, since=clock.now)
    assert (point.count, point.min, point.max) == (len(values), 0.25, 1000.0)
    for q, estimate in ((0.5, point.p50), (0.9, point.p90), (0.99, point.p99)):
        exact = exact_quantile(values, q)
        assert abs(estimate - exact) <= exact * RELATIVE_ERROR, (q, estimate, exact)


async def test_every_key_gets_the_retention_ttl(szen: Zen) -> None:
    clock = FakeClock()
    metrics = new_metrics(szen, clock, bucket_seconds=10, retention_seconds=3600)
    metrics.record_metric(NAME, 1.0, {"type": "a"})
    assert (await metrics.flush()).ok
    ks = szen.redis.keyspace("metrics")
    keys = sorted(k.decode() for k in await ks.execute("KEYS", ks.key("metric", "*")))
    shapes = []
    for key in keys:
        shape = re.sub(r"\{[^}]*\}", "{name}", key.removeprefix(ks.key("")))
        shape = re.sub(r":[0-9a-f]{16}\b", ":<id>", shape)
        shapes.append(re.sub(r":\d+$", ":<bucket>", shape))
    assert sorted(shapes) == [
        "metric:names",
        "metric:{name}:all:<bucket>",
        "metric:{name}:s:<id>:<bucket>",
        "metric:{name}:tags",
        "metric:{name}:w:<id>",
    ], keys
    for key in keys:
        ttl = await ks.execute("PTTL", key)
        assert 3600_000 < ttl <= 3610_000, f"{key} must expire after retention + one bucket"


async def test_query_selects_buckets_by_time_and_series_by_exact_tags(szen: Zen) -> None:
    clock = FakeClock()
    t0 = clock.now
    metrics = new_metrics(szen, clock)
    for step in range(4):  # buckets t0, t0+10, t0+20, t0+30
        metrics.record_metric(NAME, float(step), {"a": "1"})
        metrics.record_metric(NAME, 10.0 + step, {"a": "2"})
        clock.now += 10
    await metrics.flush()

    window = await metrics.query(NAME, tags={"a": "1"}, since=t0 + 13, until=t0 + 25)
    assert [(p.start.timestamp(), p.sum) for p in window] == [(t0 + 10, 1.0), (t0 + 20, 2.0)]
    aware = await metrics.query(
        NAME,
        tags={"a": "2"},
        since=datetime.fromtimestamp(t0 + 30, UTC),
        until=datetime.fromtimestamp(t0 + 39, UTC),
    )
    assert [p.sum for p in aware] == [13.0]
    assert [p.count for p in await metrics.query(NAME, since=t0)] == [2, 2, 2, 2]
    assert await metrics.query(NAME, tags={}, since=t0) == [], "{} is the empty tag set only"
    assert await metrics.query(NAME, tags={"a": "1", "b": "x"}, since=t0) == []
    assert await metrics.query("never_recorded", since=t0) == []
    assert await metrics.query(NAME, since=t0 - 7 * 86400, until=t0 - 2 * 86400) == [], (
        "buckets beyond the retention are not read"
    )


async def test_a_hostile_query_window_is_clamped_and_bounded_before_any_read(
    szen: Zen, standalone: Target
) -> None:
    """Issue 14: ``since=<now>, until=9999-12-31`` built one key per 10 s bucket up to year
    9999 (a frozen loop, gigabytes). The window is clamped to the retention and to now before
    anything is built, so the buckets read (HGETALLs the server counts) stay within the
    retention and MAX_QUERY_BUCKETS; a retention wider than one call may read is refused with
    a ValidationError naming the limit."""

    async def hgetall_calls() -> int:
        text = await anyio.to_thread.run_sync(standalone.server.cli, "INFO", "commandstats")
        found = re.search(r"cmdstat_hgetall:calls=(\d+)", text)
        return int(found.group(1)) if found else 0

    clock = FakeClock()
    metrics = new_metrics(szen, clock)  # 24 h retention of 10 s buckets
    metrics.record_metric(NAME, 5.0)
    await metrics.flush()
    now = clock.now

    before = await hgetall_calls()
    (point,) = await metrics.query(NAME, since=now, until=now + 30 * 86400)
    assert point.sum == 5.0
    assert await hgetall_calls() - before == 1, "a window into the future is clamped to now"

    far = datetime(9999, 12, 31, tzinfo=UTC)
    before = await hgetall_calls()
    (point,) = await metrics.query(NAME, since=now, until=far)
    assert await hgetall_calls() - before == 1

    # The widest window there is, while another coroutine keeps using the server.
    pings: list[bool] = []

    async def ping_meanwhile() -> None:
        for _ in range(3):
            status = await szen.redis.check_health()
            pings.append(bool(status["redis_available"]))

    found: list[Any] = []

    async def widest() -> None:
        found.extend(await metrics.query(NAME, since=0, until=far))

    before = await hgetall_calls()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ping_meanwhile)
        tg.start_soon(widest)
    read = await hgetall_calls() - before
    assert [p.sum for p in found] == [5.0]
    assert pings == [True, True, True]
    assert read <= 24 * 360 + 2 <= MAX_QUERY_BUCKETS, f"{read} buckets read for one call"

    wide = new_metrics(szen, clock, retention_seconds=30 * 86400)
    with pytest.raises(ValidationError, match=f"at most {MAX_QUERY_BUCKETS} buckets"):
        await wide.query(NAME, since=now - 30 * 86400)
    (point,) = await wide.query(NAME, since=now, until=far)
    assert point.sum == 5.0


async def test_buffer_is_bounded_and_drops_the_oldest_with_a_warning(szen: Zen) -> None:
    clock = FakeClock()
    metrics = new_metrics(szen, clock, max_buffer=3)
    with capture_logs() as logs:
        for i in range(5):
            metrics.record_metric(NAME, float(i), {"i": str(i)})
            metrics.record_metric(NAME, float(i), {"i": str(i)})  # merges: takes no room
    stats = metrics.statistics()
    assert (stats.buffered, stats.dropped) == (3, 2)
    assert [e["event"] for e in logs] == ["metrics_buffer_full"], "one warning per episode"
    assert f"{METRICS_DROPPED} 2.0" in metrics.prometheus_text()

    with capture_logs() as logs:
        await metrics.flush()
    assert [e["event"] for e in logs] == ["metrics_dropped"]
    assert await metrics.series(NAME) == [{"i": "2"}, {"i": "3"}, {"i": "4"}]
    (point,) = await metrics.query(NAME, since=clock.now)
    assert (point.count, point.sum) == (6, 18.0)


async def test_cancelling_run_flushes_what_is_buffered(szen: Zen) -> None:
    clock = FakeClock()
    metrics = new_metrics(szen, clock, flush_interval=3600, collect_core=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(metrics.run)
        await anyio.wait_all_tasks_blocked()  # run() is in its sleep
        metrics.record_metric(NAME, 42.0)
        metrics.count(PORT_ALLOCATION_FAILURES)
        tg.cancel_scope.cancel()
    assert metrics.statistics().buffered == 0
    (point,) = await metrics.query(NAME, since=clock.now)
    assert point.sum == 42.0
    (failures,) = await metrics.query(PORT_ALLOCATION_FAILURES, since=clock.now)
    assert failures.sum == 1.0

    async with anyio.create_task_group() as tg:  # cancelled before run() ever started
        tg.start_soon(metrics.run)
        metrics.record_metric(NAME, 8.0)
        tg.cancel_scope.cancel()
    await metrics.aclose()  # what the owner does on exit
    (point,) = await metrics.query(NAME, since=clock.now)
    assert point.sum == 50.0


async def test_timer_count_gauge_and_tenant_views(szen: Zen) -> None:
    clock = FakeClock()
    metrics = new_metrics(szen, clock)
    async with metrics.time(STATE_OPERATION_LATENCY, operation="get") as timer:
        pass
    assert timer.elapsed_ms is not None
    assert timer.elapsed_ms >= 0
    with pytest.raises(RuntimeError), metrics.time(STATE_OPERATION_LATENCY, operation="get"):
        raise RuntimeError("the operation failed")  # still timed
    metrics.count("jobs_started", 2, queue="q1")
    metrics.gauge("queue_depth", 5, queue="q1")
    metrics.gauge("queue_depth", 3, queue="q1")
    other = metrics.for_tenant("acme")
    other.record_metric(NAME, 9.0)
    await metrics.flush()  # one flush writes every tenant's buffer

    (latency,) = await metrics.query(STATE_OPERATION_LATENCY, since=clock.now)
    assert latency.count == 2
    (jobs,) = await metrics.query("jobs_started", since=clock.now)
    assert (jobs.count, jobs.sum) == (1, 2.0)
    (depth,) = await metrics.query("queue_depth", since=clock.now)
    assert (depth.min, depth.max, depth.mean) == (3.0, 5.0, 4.0)
    assert [p.sum for p in await other.query(NAME, since=clock.now)] == [9.0]
    assert await metrics.query(NAME, since=clock.now) == [], "tenants never mix"


async def test_seed_record_metric_maps_dotted_names(szen: Zen) -> None:
    """RedisManager.record_metric takes the seed's dotted names and records them under the
    names zen exports; Metrics.record_metric itself stays strict (see the next test)."""
    since = time.time() - 60
    await szen.redis.record_metric("system.active_agents", 847)
    await szen.redis.record_metric("agent.state.create.latency", 0.15, {"source": "seed"})
    await szen.redis.record_metric("agent.memory.store.latency", 0.5, {"source": "seed"})
    await szen.redis.record_metric("agent.task.duration", 2.5, {"type": "analyze"})
    await szen.redis.record_metric("agent.memory.consolidation.count", 1)
    await szen.redis.record_metric(NAME, 4.0)  # a valid name is recorded as given
    report = await szen.metrics.flush()
    assert report.ok, report.error

    # The health task may set the same gauge (to the live count, 0 here) in the same bucket.
    active = await szen.metrics.query(ACTIVE_AGENTS, since=since)
    assert max(p.max for p in active) == 847.0, "system.active_agents is zen_active_agents"
    for metric, operation, value in (
        (STATE_OPERATION_LATENCY, "create", 0.15),
        (MEMORY_OPERATION_LATENCY, "store", 0.5),
    ):
        points = await szen.metrics.query(
            metric, tags={"operation": operation, "source": "seed"}, since=since
        )
        ((count, total),) = [(p.count, p.sum) for p in points]
        assert count == 1, metric
        assert total == pytest.approx(value), metric
    for name, tags, value in (
        ("agent_task_duration", {"type": "analyze"}, 2.5),
        ("agent_memory_consolidation_count", {}, 1.0),
        (NAME, {}, 4.0),
    ):
        points = await szen.metrics.query(name, tags=tags, since=since)
        assert [(p.count, p.sum) for p in points] == [(1, value)], "other dots become '_'"
    assert "agent.task.duration" not in await szen.metrics.names()

    for bad in ("agent.task-duration", "1st.metric", "a..b.c!"):
        with pytest.raises(ValidationError, match="metric name"):
            await szen.redis.record_metric(bad, 1.0)
    with pytest.raises(ValidationError, match="dict of str to str"):
        await szen.redis.record_metric("agent.state.read.latency", 1.0, [("k", "v")])  # type: ignore[arg-type]


async def test_invalid_input_is_refused_and_nothing_is_buffered(szen: Zen) -> None:
    clock = FakeClock()
    metrics = new_metrics(szen, clock)
    with pytest.raises(ValidationError, match=r"'agent_task_duration'"):
        metrics.record_metric("agent.task.duration", 1.0)  # the seed's dotted names
    bad_names: list[Any] = ["", "1st", "a-b", "x" * 201, 7]
    for name in bad_names:
        with pytest.raises(ValidationError, match="metric name"):
            metrics.record_metric(name, 1.0)
    bad_tags: list[tuple[Any, str]] = [
        ({"type": 1}, "must be str"),
        ({"le": "1"}, "reserved"),
        ({"__name__": "x"}, "reserved"),
        ({"bad-key": "x"}, "invalid tag key"),
        ({"k": ""}, "omit the tag"),
        ({"k": "v" * 257}, "1-256"),
        ({f"k{i}": "v" for i in range(17)}, "at most 16"),
        ([("k", "v")], "dict of str to str"),
    ]
    for tags, message in bad_tags:
        with pytest.raises(ValidationError, match=message):
            metrics.record_metric(NAME, 1.0, tags)
    bad_values: list[Any] = [math.nan, math.inf, -math.inf, 1e101, "1", True, None]
    for value in bad_values:
        with pytest.raises(ValidationError, match="value"):
            metrics.record_metric(NAME, value)
    with pytest.raises(ValidationError, match="only goes up"):
        metrics.count("retries_total", -1)
    metrics.count("retries_total")
    with pytest.raises(ValidationError, match="is a counter"):
        metrics.gauge("retries_total", 1)
    with pytest.raises(ValidationError, match="_ms suffix"):
        metrics.time("db_call")
    with pytest.raises(ValidationError, match="naive datetime"):
        await metrics.query(NAME, since=datetime(2024, 1, 1))
    with pytest.raises(ValidationError, match="before since"):
        await metrics.query(NAME, since=clock.now, until=clock.now - 60)
    with pytest.raises(ValidationError, match="bucket_seconds"):
        Metrics(szen.redis, bucket_seconds=0)
    assert metrics.statistics().buffered == 1  # only the valid count


# --- outages (own servers) -----------------------------------------------------------------
async def flush_until_written(metrics: Metrics, *, deadline: float = 10.0) -> None:
    """Flush until nothing stays buffered; fail the test past the deadline (seconds)."""
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        report = await metrics.flush()
        if report.ok and report.buffered == 0:
            return
        await anyio.sleep(0.05)
    pytest.fail(f"still buffered after {deadline}s: {metrics.statistics()}")


@pytest.mark.slow
async def test_flush_during_a_stall_keeps_the_data_and_applies_it_once(tmp_path: Path) -> None:
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    try:
        settings = settings_for(
            group,
            redis_socket_timeout=0.3,
            redis_retry_attempts=0,
            redis_breaker_failure_threshold=100,
        )
        async with open_zen(settings) as zen:
            clock = FakeClock()
            metrics = new_metrics(zen, clock)
            metrics.record_metric(NAME, 1.0)
            assert (await metrics.flush()).ok
            group.server.pause()  # SIGSTOP: the script is sent, its reply never comes
            try:
                metrics.record_metric(NAME, 2.0)
                metrics.record_metric(NAME, 3.0, {"k": "v"})
                report = await metrics.flush()
                assert not report.ok
                assert (report.written, report.buffered) == (0, 2)
                metrics.record_metric(NAME, 4.0)  # recorded during the outage
            finally:
                group.server.resume()  # the stalled script runs now, on the abandoned socket

            async def stalled_batch_applied() -> bool:
                points = await metrics.query(NAME, tags={}, since=clock.now)
                return bool(points) and points[0].count == 2

            await wait_for(stalled_batch_applied)
            with capture_logs() as logs:
                await flush_until_written(metrics)  # sends that batch again, then the new one
            assert "metrics_batch_already_applied" in [e["event"] for e in logs], logs
            (plain,) = await metrics.query(NAME, tags={}, since=clock.now)
            assert (plain.count, plain.sum) == (3, 7.0), "each value applied exactly once"
            (merged,) = await metrics.query(NAME, since=clock.now)
            assert (merged.count, merged.sum, merged.max) == (4, 10.0, 4.0)
            assert metrics.statistics().failed_flushes >= 1
    finally:
        await anyio.to_thread.run_sync(group.stop)


@pytest.mark.slow
async def test_flush_while_the_server_is_down_writes_after_restart(tmp_path: Path) -> None:
    group = Standalone(
        "redis", base_dir=tmp_path, extra_args=["--appendonly", "yes", "--appendfsync", "always"]
    )
    await anyio.to_thread.run_sync(group.start)
    try:
        settings = settings_for(group, redis_connect_timeout=0.3, redis_retry_attempts=0)
        async with open_zen(settings) as zen:
            clock = FakeClock()
            metrics = new_metrics(zen, clock, max_buffer=10)
            metrics.record_metric(NAME, 1.0)
            assert (await metrics.flush()).ok
            group.server.kill()
            for i in range(12):  # more series than the buffer holds: the 2 oldest go
                metrics.record_metric(NAME, 10.0, {"i": f"{i:02}"})
            report = await metrics.flush()
            assert (report.ok, report.buffered) == (False, 10)
            await anyio.to_thread.run_sync(group.server.restart)
            await flush_until_written(metrics)
            tag_sets = await metrics.series(NAME)
            assert tag_sets == [{}] + [{"i": f"{i:02}"} for i in range(2, 12)]
            (merged,) = await metrics.query(NAME, since=clock.now)
            assert (merged.count, merged.sum) == (11, 101.0)
    finally:
        await anyio.to_thread.run_sync(group.stop)


# --- Prometheus ----------------------------------------------------------------------------
@dataclass
class ParsedFamily:
    kind: str = ""
    help: str = ""
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)\Z")
_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n"}


def parse_labels(text: str) -> dict[str, str]:
    """Parse ``{k="v",...}`` with the format's escapes, strictly."""
    labels: dict[str, str] = {}
    i, body = 0, text[1:-1]
    while i < len(body):
        match = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="').match(body, i)
        assert match, f"bad label at {body[i:]!r}"
        i, value = match.end(), []
        while body[i] != '"':
            if body[i] == "\\":
                value.append(_UNESCAPE[body[i + 1]])
                i += 2
            else:
                assert body[i] != "\n"
                value.append(body[i])
                i += 1
        labels[match.group(1)] = "".join(value)
        i += 1
        if i < len(body):
            assert body[i] == ",", body
            i += 1
    return labels


def parse_exposition(text: str) -> dict[str, ParsedFamily]:
    """A strict reader of the text format 0.0.4 (HELP and TYPE before a family's samples)."""
    families: dict[str, ParsedFamily] = {}
    current: str | None = None
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            current, _, text_ = line[7:].partition(" ")
            families.setdefault(current, ParsedFamily()).help = text_
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current, line
            assert kind in {"counter", "gauge", "histogram"}, line
            families[name].kind = kind
        else:
            match = _SAMPLE.match(line)
            assert match, f"bad sample line {line!r}"
            assert current, f"sample before HELP: {line!r}"
            sample, labels, value = match.groups()
            assert sample == current or (
                families[current].kind == "histogram"
                and sample in {f"{current}_bucket", f"{current}_sum", f"{current}_count"}
            ), f"{sample} outside its family {current}"
            families[current].samples.append(
                (sample, parse_labels(labels) if labels else {}, float(value))
            )
    return families


async def test_prometheus_text_parses_and_shows_base_units(szen: Zen) -> None:
    metrics = new_metrics(szen, FakeClock())
    tricky = 'quote " backslash \\ newline \n end'
    for ms in (0.2, 3.0, 40.0, 700.0, 20_000.0):
        metrics.record_metric(STATE_OPERATION_LATENCY, ms, {"operation": tricky})
    metrics.count(PORT_ALLOCATION_FAILURES, 3)
    metrics.record_metric("agent_tasks_total", 2)
    metrics.gauge("queue_depth", -4.5, queue="q1")
    metrics.collect_core_metrics()
    text = metrics.prometheus_text()
    families = parse_exposition(text)

    latency = families["zen_state_operation_latency_seconds"]
    assert latency.kind == "histogram"
    buckets = [(s[1]["le"], s[2]) for s in latency.samples if s[0].endswith("_bucket")]
    counts = [c for _, c in buckets]
    assert counts == sorted(counts), "buckets are cumulative"
    assert buckets[-1] == ("+Inf", 5.0)
    assert ("0.005", 2.0) in buckets  # 0.2 ms and 3 ms are at most 5 ms
    by_name = {s[0]: s for s in latency.samples}
    assert by_name["zen_state_operation_latency_seconds_sum"][2] == pytest.approx(20.7432)
    assert by_name["zen_state_operation_latency_seconds_count"][1] == {"operation": tricky}
    assert families["zen_port_allocation_failures_total"].samples == [
        ("zen_port_allocation_failures_total", {}, 3.0)
    ]
    assert families["agent_tasks_total"].kind == "counter"
    assert families["queue_depth"].samples == [("queue_depth", {"queue": "q1"}, -4.5)]
    assert families["zen_circuit_breaker_open"].samples == [("zen_circuit_breaker_open", {}, 0.0)]
    pools = {s[1]["pool"] for s in families["zen_pool_connections_max"].samples}
    assert "state" in pools
    for name, family in families.items():
        assert family.help, f"{name} has HELP text"
        if family.kind == "counter":
            assert name.endswith("_total")
    if PROMTOOL is not None:
        lint = await anyio.run_process(
            [PROMTOOL, "check", "metrics"], input=text.encode(), check=False
        )
        assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()


async def test_disabled_metrics_feed_prometheus_but_never_redis(szen: Zen) -> None:
    clock = FakeClock()
    metrics = new_metrics(szen, clock, enabled=False)  # REDIS_ENABLE_METRICS=false
    metrics.record_metric(NAME, 3.0)
    assert metrics.statistics().buffered == 0
    assert (await metrics.flush()).written == 0
    assert await metrics.query(NAME, since=clock.now) == []
    assert "agent_task_duration_seconds_count 1.0" in metrics.prometheus_text()


def core_sample_names() -> set[str]:
    registry = Registry()
    for spec in CORE_METRICS:
        registry.declare(spec)
    return registry.sample_names()


def rule_expressions(text: str) -> list[str]:
    """The ``expr:`` of every rule (folded block scalars joined into one line)."""
    found: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("expr:"):
            current = [stripped.removeprefix("expr:").strip().removeprefix(">-").strip()]
            found.append(current)
        elif current is not None and (
            not stripped or stripped.startswith(("#", "- ")) or re.match(r"[a-z_]+:", stripped)
        ):
            current = None
        elif current is not None:
            current.append(stripped)
    return [" ".join(parts) for parts in found]


def test_alert_rules_use_only_metrics_the_exposition_emits() -> None:
    expressions = rule_expressions(ALERTS.read_text())
    assert len(expressions) == 6
    emitted = core_sample_names()
    for expr in expressions:
        for pattern in re.findall(r'__name__=~"([^"]+)"', expr):
            matched = {name for name in emitted if re.fullmatch(pattern, name)}
            assert len(matched) == 2, f"{pattern} matches {matched}"
        names = set(re.findall(r"\bzen_[a-z_]+\b", re.sub(r'"[^"]*"', "", expr)))
        assert names <= emitted, f"{expr}: {sorted(names - emitted)} are never exposed"


@pytest.fixture
def promtool() -> str:
    if PROMTOOL is None:
        pytest.skip(NO_PROMTOOL)
    return PROMTOOL


def test_alert_rules_pass_promtool_check_and_unit_tests(promtool: str) -> None:
    for command in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERTS_TEST)]):
        run = subprocess.run([promtool, *command], capture_output=True, check=False)
        assert run.returncode == 0, run.stdout.decode() + run.stderr.decode()


# --- the seed's metrics, recorded by the services themselves -----------------------------------
@pytest.mark.slow
async def test_the_seed_metrics_are_recorded_by_real_operations(tmp_path: Path) -> None:
    """Nothing here records a metric by hand: the agents, memory, ports, the breaker, the
    waiters' hints and the health check do, and a flush makes them queryable."""
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    try:
        settings = settings_for(
            group,
            redis_socket_timeout=0.3,
            redis_connect_timeout=0.3,
            redis_retry_attempts=0,
            redis_breaker_failure_threshold=2,
            redis_breaker_reset_timeout=0.5,
            redis_health_check_interval=3600.0,  # checks run when the test says
        )
        async with open_zen(settings) as zen:
            since = time.time() - 60
            agent = await zen.agents.create_agent("coder", agent_id="m1")
            waiting = asyncio.ensure_future(
                zen.agents.wait_for_state(agent.agent_id, ["ready"], timeout=30)
            )
            await asyncio.sleep(0.1)  # let the waiter register before the hint is sent
            await zen.agents.transition(agent.agent_id, "ready")
            assert await waiting == "ready"
            await zen.memory.store_memory(agent.agent_id, "the build is green")
            await zen.memory.search_memories(agent.agent_id, "build")
            await zen.ports.allocate(agent.agent_id, port_range=(9700, 9701))
            with pytest.raises(CapacityError):
                await zen.ports.allocate("m2", port_range=(9700, 9701))

            group.server.pause()  # the breaker opens on timeouts
            try:
                for _ in range(2):
                    with contextlib.suppress(ZenError):
                        await zen.cache.get("anything")
                assert zen.redis.breaker.statistics().state is BreakerState.OPEN
            finally:
                group.server.resume()
            await wait_for(lambda: ok(zen.redis.check_health()))
            zen.metrics.collect_core_metrics()
            await flush_until_written(zen.metrics)

            async def observed(name: str) -> int:  # histograms: how many values
                return sum(p.count for p in await zen.metrics.query(name, since=since))

            async def counted(name: str) -> float:  # counters: the total
                return sum(p.sum for p in await zen.metrics.query(name, since=since))

            assert await observed(STATE_OPERATION_LATENCY) >= 2  # create + transition
            assert await observed(MEMORY_OPERATION_LATENCY) >= 2  # store + search
            assert await counted(PORT_ALLOCATION_SUCCESSES) == 1
            assert await counted(PORT_ALLOCATION_FAILURES) == 1
            assert await counted(CIRCUIT_BREAKER_ACTIVATIONS) >= 1
            assert await counted(COORDINATION_EVENTS) >= 1
            (active,) = (await zen.metrics.query(ACTIVE_AGENTS, since=since))[-1:]
            assert active.max == 1
    finally:
        await anyio.to_thread.run_sync(group.stop)


async def ok(check: Awaitable[dict[str, Any]]) -> bool:
    return bool((await check)["redis_available"])
