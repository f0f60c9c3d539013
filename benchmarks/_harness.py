"""Shared measuring code: rounds, medians, percentiles, ratios, and a server to measure on."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from zen_async.testing import Standalone


@dataclass(frozen=True)
class Measure:
    """One scenario or baseline over several rounds."""

    name: str
    ops_per_s: float  # median over rounds
    p50_ms: float  # latency of one call, all rounds pooled
    p99_ms: float
    rounds: int
    ops_per_round: int


Call = Callable[[int], Awaitable[int]]
"""One timed call: gets an index, returns how many operations it did."""


async def _sequential_round(call: Call, n: int, latencies: list[float]) -> tuple[int, float]:
    ops = 0
    started = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        ops += await call(i)
        latencies.append(time.perf_counter() - t0)
    return ops, time.perf_counter() - started


async def _concurrent_round(call: Call, n: int, latencies: list[float]) -> tuple[int, float]:
    async def timed(i: int) -> int:
        t0 = time.perf_counter()
        done = await call(i)
        latencies.append(time.perf_counter() - t0)
        return done

    started = time.perf_counter()
    ops = sum(await asyncio.gather(*(timed(i) for i in range(n))))
    return ops, time.perf_counter() - started


async def compare(
    scenario: tuple[str, Call],
    baseline: tuple[str, Call],
    *,
    rounds: int,
    calls: int,
    concurrent: bool = False,
) -> Comparison:
    """Measure a scenario and its baseline in alternating rounds (after one warm-up round
    each), so drift on a noisy machine hits both alike.

    Each round makes ``calls`` calls, one after another, or all at once if ``concurrent``.
    """
    run_round = _concurrent_round if concurrent else _sequential_round
    results: dict[str, tuple[list[float], list[float], int]] = {}
    for name, call in (scenario, baseline):
        await run_round(call, calls, [])  # warm-up: connections, script cache, JIT-free
        results[name] = ([], [], 0)
    for r in range(rounds):
        order = (scenario, baseline) if r % 2 == 0 else (baseline, scenario)
        for name, call in order:
            rates, latencies, _ = results[name]
            ops, elapsed = await run_round(call, calls, latencies)
            rates.append(ops / elapsed)
            results[name] = (rates, latencies, ops)
    measures = [_summary(name, *results[name], rounds) for name, _ in (scenario, baseline)]
    return Comparison(measures[0], measures[1])


def _summary(
    name: str, rates: list[float], latencies: list[float], ops: int, rounds: int
) -> Measure:
    ordered = sorted(latencies)
    return Measure(
        name=name,
        ops_per_s=statistics.median(rates),
        p50_ms=ordered[len(ordered) // 2] * 1000,
        p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        rounds=rounds,
        ops_per_round=ops,
    )


@dataclass(frozen=True)
class Comparison:
    """A scenario against its baseline."""

    scenario: Measure
    baseline: Measure

    @property
    def ratio(self) -> float:
        return self.scenario.ops_per_s / self.baseline.ops_per_s


def table(title: str, comparisons: list[Comparison]) -> str:
    """A markdown table of the comparisons."""
    lines = [
        f"### {title}",
        "",
        "| scenario | ops/s (median) | p50 ms | p99 ms | baseline | baseline ops/s | ratio |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for c in comparisons:
        s, b = c.scenario, c.baseline
        lines.append(
            f"| {s.name} | {s.ops_per_s:,.0f} | {s.p50_ms:.3f} | {s.p99_ms:.3f} "
            f"| {b.name} | {b.ops_per_s:,.0f} | {c.ratio:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def save(name: str, comparisons: list[Comparison], extra: dict[str, Any]) -> Path:
    """Write the comparisons to benchmarks/results/<name>.json."""
    out = Path(__file__).parent / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    payload = {
        **extra,
        "python": sys.version.split()[0],
        "results": [
            {"scenario": asdict(c.scenario), "baseline": asdict(c.baseline), "ratio": c.ratio}
            for c in comparisons
        ],
    }
    out.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    return out


@contextlib.contextmanager
def server_url(url: str | None) -> Iterator[str]:
    """``url`` when given, else a private redis-server for the run's duration."""
    if url is not None:
        yield url
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = Standalone("redis", base_dir=Path(tmp))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()
