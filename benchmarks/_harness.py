"""Shared measuring code: rounds, medians, percentiles, ratios, and a server to measure on."""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import math
import os
import pstats
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import orjson
from redis.asyncio import BlockingConnectionPool, Redis

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


_T = TypeVar("_T")

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


Round = Callable[[], Awaitable[tuple[int, float, list[float]]]]
"""One measured round: returns (operations, seconds it took, latencies in seconds)."""


def calls_round(call: Call, calls: int, *, concurrent: bool = False) -> Round:
    """A round of ``calls`` calls, one after another, or all at once if ``concurrent``."""
    run_round = _concurrent_round if concurrent else _sequential_round

    async def measured() -> tuple[int, float, list[float]]:
        latencies: list[float] = []
        ops, elapsed = await run_round(call, calls, latencies)
        return ops, elapsed, latencies

    return measured


def paced_round(call: Call, workers: int, *, interval: float, duration: float) -> Round:
    """An open-loop round: ``workers`` coroutines (worker ``i`` calls ``call(i)``), each
    calling once every ``interval`` seconds from a random phase, for ``duration`` seconds.
    The offered rate is ``workers / interval`` calls/s; a worker that falls behind skips
    the ticks it missed instead of bursting."""

    async def measured() -> tuple[int, float, list[float]]:
        latencies: list[float] = []
        started = time.perf_counter()
        deadline = started + duration

        async def worker(i: int) -> int:
            done = 0
            tick = started + random.uniform(0, interval)
            while tick < deadline:
                await asyncio.sleep(max(0.0, tick - time.perf_counter()))
                t0 = time.perf_counter()
                done += await call(i)
                latencies.append(time.perf_counter() - t0)
                tick += interval
                now = time.perf_counter()
                if tick < now:  # behind: skip to the next tick still ahead
                    tick += interval * ((now - tick) // interval + 1)
            return done

        ops = sum(await asyncio.gather(*(worker(i) for i in range(workers))))
        return ops, time.perf_counter() - started, latencies

    return measured


async def measure_rounds(named: Sequence[tuple[str, Round]], *, rounds: int) -> list[Measure]:
    """Run each named round once to warm up, then ``rounds`` times, rotating the order from
    round to round so that drift on a noisy machine hits every entry alike."""
    results: dict[str, tuple[list[float], list[float], int]] = {}
    for name, measured in named:
        await measured()  # warm-up: connections, script cache, first-use costs
        results[name] = ([], [], 0)
    for r in range(rounds):
        shift = r % len(named)
        for name, measured in [*named[shift:], *named[:shift]]:
            rates, latencies, _ = results[name]
            ops, elapsed, round_latencies = await measured()
            rates.append(ops / elapsed)
            latencies.extend(round_latencies)
            results[name] = (rates, latencies, ops)
    return [_summary(name, *results[name], rounds) for name, _ in named]


async def compare_all(
    scenario: tuple[str, Call],
    baselines: Sequence[tuple[str, Call]],
    *,
    rounds: int,
    calls: int,
    concurrent: bool = False,
) -> list[Comparison]:
    """:func:`compare` against several baselines at once: one comparison per baseline,
    sharing the scenario's measure."""
    named = [
        (name, calls_round(call, calls, concurrent=concurrent))
        for name, call in (scenario, *baselines)
    ]
    measures = await measure_rounds(named, rounds=rounds)
    return [Comparison(measures[0], baseline) for baseline in measures[1:]]


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
    comparisons = await compare_all(
        scenario, [baseline], rounds=rounds, calls=calls, concurrent=concurrent
    )
    return comparisons[0]


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


RESULTS: Path = Path(__file__).parent / "results"
"""Where results go by default (committed; the README's table is generated from them)."""


def save(
    name: str,
    comparisons: list[Comparison],
    extra: dict[str, Any],
    *,
    out_dir: Path | None = None,
) -> Path:
    """Write the comparisons to ``<out_dir>/<name>.json`` (default benchmarks/results)."""
    out = (RESULTS if out_dir is None else out_dir) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
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


def raw_client(url: str, *, db: int, max_connections: int) -> Redis:
    """A raw redis-py client of ``url``'s server on DB ``db`` (whatever DB the URL names),
    with a ``BlockingConnectionPool`` like zen's."""
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections)
    pool.connection_kwargs["db"] = db
    return Redis(connection_pool=pool)


async def drop_tenant(url: str, tenant: str, dbs: Iterable[int]) -> int:
    """Unlink every key of ``tenant`` (``zen:t:<tenant>:*``) in each DB of ``dbs``; returns
    how many there were."""
    dropped = 0
    for db in sorted(set(dbs)):
        client = raw_client(url, db=db, max_connections=2)
        try:
            batch: list[Any] = []
            async for key in client.scan_iter(match=f"zen:t:{tenant}:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    dropped += await client.unlink(*batch)
                    batch = []
            if batch:
                dropped += await client.unlink(*batch)
        finally:
            await client.aclose(close_connection_pool=True)
    return dropped


# --- load of the machine ---------------------------------------------------------------------
class CpuWatch:
    """CPU time that processes other than this one and the measured server (``server_pid``,
    from INFO server) used between :meth:`mark` and :meth:`others_percent`: how much the
    rest of a shared machine competed with the measurement. Reads /proc (Linux)."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self._hz = os.sysconf("SC_CLK_TCK")
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float, float]:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            busy = (user + nice + system + irq + softirq + steal) / self._hz
        except (OSError, ValueError):
            busy = float("nan")
        own = os.times()
        server = 0.0
        if self.server_pid is not None:
            try:
                stat = Path(f"/proc/{self.server_pid}/stat").read_text()
                rest = stat[stat.rindex(")") + 2 :].split()
                server = (int(rest[11]) + int(rest[12])) / self._hz
            except (OSError, ValueError, IndexError):
                server = float("nan")
        return time.monotonic(), busy, own.user + own.system, server

    def mark(self) -> None:
        """Start a new interval."""
        self._start = self._sample()

    async def wait_quiet(self, limit: float, *, patience: float, window: float = 1.5) -> float:
        """Wait (at most ``patience`` seconds) for a ``window`` in which other processes used
        at most ``limit`` % of a core; returns the last window's figure."""
        deadline = time.monotonic() + patience
        while True:
            self.mark()
            await asyncio.sleep(window)
            others = self.others_percent()
            if not others > limit or time.monotonic() >= deadline:
                return others

    def others_percent(self) -> float:
        """Average CPU of every other process since :meth:`mark`, in % of one core."""
        wall0, busy0, own0, server0 = self._start
        wall, busy, own, server = self._sample()
        others = (busy - busy0) - (own - own0) - (server - server0)
        if math.isnan(others):
            return others
        return max(0.0, 100 * others / max(1e-9, wall - wall0))


async def server_pid(url: str, info: Callable[[], Awaitable[dict[str, Any]]]) -> int | None:
    """The measured server's process id (from ``INFO server``, awaited by ``info``) when it
    runs on this machine, else None."""
    if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1", None):
        return None
    pid = (await info()).get("process_id")
    return None if pid is None else int(pid)


# --- targets, physical limits, reports ----------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One target of an issue against the figure measured in this run."""

    target: str
    measured: float
    limit: float
    unit: str
    kind: Literal["max", "min"]
    """``max``: the figure must be at most ``limit``; ``min``: at least."""
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.measured <= self.limit if self.kind == "max" else self.measured >= self.limit

    def line(self) -> str:
        """``PASS``/``MISS``, the target, the figure: one line for a terminal."""
        verdict = "PASS" if self.passed else "MISS"
        sign = "<=" if self.kind == "max" else ">="
        return (
            f"{verdict}  {self.target}: measured {_figure(self.measured, self.unit)}"
            f" (target {sign} {_figure(self.limit, self.unit)})"
        )


def _figure(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.3f}x"
    if unit == "ms":
        return f"{value:.3f} ms"
    return f"{value:,.0f} {unit}"


def check_table(checks: Sequence[Check]) -> str:
    """A markdown table of targets with PASS/MISS and the measured figures."""
    lines = [
        "| verdict | target | measured | limit | from |",
        "|---|---|---:|---:|---|",
    ]
    for c in checks:
        sign = "<=" if c.kind == "max" else ">="
        lines.append(
            f"| {'PASS' if c.passed else '**MISS**'} | {c.target} "
            f"| {_figure(c.measured, c.unit)} | {sign} {_figure(c.limit, c.unit)} | {c.detail} |"
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Limit:
    """A redis-benchmark figure: what the server and loopback can do at most."""

    name: str
    command: str
    requests_per_s: float
    p50_ms: float | None


async def redis_benchmark(
    url: str, *, requests: int, pipeline: int = 1, clients: int = 50, test: str = "set"
) -> Limit:
    """Run ``redis-benchmark -t <test> -q`` against the server of ``url`` and parse its
    figure.

    Raises:
        RuntimeError: redis-benchmark failed or printed no figure.
    """
    parts = urlsplit(url)
    argv = [
        "redis-benchmark",
        "-h",
        parts.hostname or "127.0.0.1",
        "-p",
        str(parts.port or 6379),
        "-t",
        test,
        "-n",
        str(requests),
        "-c",
        str(clients),
        "-q",
    ]
    if pipeline > 1:
        argv += ["-P", str(pipeline)]
    if parts.password:
        argv += ["-a", parts.password, "--no-auth-warning"]
        if parts.username:
            argv += ["--user", parts.username]
    shown = " ".join(a if a != parts.password else "***" for a in argv)
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    found = re.findall(
        rf"{test.upper()}: ([\d.]+) requests per second(?:, p50=([\d.]+) msec)?", text
    )
    if process.returncode != 0 or not found:
        raise RuntimeError(f"{shown} failed ({process.returncode}): {text[-300:]!r}")
    rps, p50 = found[-1]
    name = f"redis-benchmark {test.upper()}" + (f" -P {pipeline}" if pipeline > 1 else "")
    return Limit(name, shown, float(rps), float(p50) if p50 else None)


def limit_table(limits: Sequence[Limit]) -> str:
    """A markdown table of redis-benchmark figures."""
    lines = ["| benchmark | requests/s | p50 ms | command |", "|---|---:|---:|---|"]
    for limit in limits:
        p50 = "" if limit.p50_ms is None else f"{limit.p50_ms:.3f}"
        lines.append(f"| {limit.name} | {limit.requests_per_s:,.0f} | {p50} | `{limit.command}` |")
    return "\n".join(lines) + "\n"


@dataclass
class Outcome:
    """What one benchmark module measured: tables by section, targets, physical limits."""

    title: str
    sections: list[tuple[str, list[Comparison]]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    limits: list[Limit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    load: list[tuple[str, float, int]] = field(default_factory=list)
    """(what, average CPU of other processes in % of one core while it was measured, how
    many times it was measured): see :meth:`settled`."""
    loadavg: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    """``os.getloadavg()`` before and after the run."""

    @property
    def comparisons(self) -> list[Comparison]:
        return [c for _, section in self.sections for c in section]

    async def settled(
        self,
        label: str,
        measure: Callable[[], Awaitable[_T]],
        *,
        watch: CpuWatch | None,
        limit: float = 25.0,
        attempts: int = 3,
    ) -> _T:
        """``await measure()``, again (up to ``attempts`` times in all) while other processes
        used more than ``limit`` % of a core meanwhile, keeping the least disturbed result;
        the load it was measured under goes into the report. With several attempts, each
        starts after waiting a little for a quiet moment (see :meth:`CpuWatch.wait_quiet`)."""
        best: tuple[_T, float] | None = None
        made = 0
        for made in range(1, attempts + 1):
            if watch is not None:
                if attempts > 1:  # a shared machine: start in a quiet moment if one comes
                    await watch.wait_quiet(limit, patience=60.0 if made > 1 else 20.0)
                watch.mark()
            result = await measure()
            others = watch.others_percent() if watch is not None else math.nan
            if best is None or others < best[1]:
                best = (result, others)
            if watch is None or not others > limit:
                break
        assert best is not None
        self.load.append((label, best[1], made))
        return best[0]

    def markdown(self) -> str:
        """The whole report as markdown."""
        parts = [f"## {self.title}\n"]
        parts += [table(title, section) for title, section in self.sections]
        if self.limits:
            parts.append("### Physical limit: redis-benchmark on the same server, same run\n")
            parts.append(limit_table(self.limits))
        if self.checks:
            parts.append("### Targets\n")
            parts.append(check_table(self.checks))
        if self.load or self.loadavg:
            parts.append("### Machine load during the run\n")
            lines = []
            if self.loadavg:
                before, after = self.loadavg
                lines.append(
                    f"- load average (1, 5, 15 min) before: {before[0]:.2f} {before[1]:.2f} "
                    f"{before[2]:.2f}; after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f} "
                    f"({os.cpu_count()} cores)"
                )
            lines.append(
                "- CPU used by other processes (not this one, not the server) while each "
                "group was measured (in full mode a group is measured again, up to 3 times in "
                "all, while others used more than 25% of a core; the least disturbed attempt "
                "is kept):"
            )
            lines += [
                f"  - {label}: "
                + ("unknown" if math.isnan(others) else f"{others:.0f}% of one core")
                + (f" (kept from {made} attempts)" if made > 1 else "")
                for label, others, made in self.load
            ]
            parts.append("\n".join(lines) + "\n")
        if self.notes:
            parts.append("### Notes\n")
            parts.append("\n".join(f"- {n}" for n in self.notes) + "\n")
        parts += self.profiles
        return "\n".join(parts)

    def extra(self) -> dict[str, Any]:
        """The targets and limits, for :func:`save`."""
        return {
            "sections": {title: [c.scenario.name for c in cs] for title, cs in self.sections},
            "limits": [asdict(limit) for limit in self.limits],
            "checks": [{**asdict(c), "passed": c.passed} for c in self.checks],
            "notes": self.notes,
            "loadavg": self.loadavg,
            "others_cpu_percent": {label: others for label, others, _ in self.load},
            "attempts": {label: made for label, _, made in self.load},
        }


def save_markdown(name: str, text: str, *, out_dir: Path | None = None) -> Path:
    """Write a report to ``<out_dir>/<name>.md`` (default benchmarks/results)."""
    out = (RESULTS if out_dir is None else out_dir) / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out


# --- profiles -------------------------------------------------------------------------------
PROFILE_MARK = "_profiled_call"
"""Name of the function a profiled scenario runs each measured call in: samples between the
first and the last one with it on the stack are the measured phase."""


async def py_spy_profile(argv: Sequence[str], *, title: str, rate: int = 250, top: int = 12) -> str:
    """Run ``argv`` (a Python command) under ``py-spy record --idle`` and summarise the
    samples of its measured phase (see :data:`PROFILE_MARK`) as markdown: time by area
    (leaf frame) and the heaviest functions by self and by inclusive time."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        return f"#### Profile: {title}\n\npy-spy is not installed in this environment.\n"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.json"
        process = await asyncio.create_subprocess_exec(
            str(spy),
            "record",
            "--idle",
            "--format",
            "speedscope",
            "--rate",
            str(rate),
            "--output",
            str(out),
            "--",
            *argv,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await process.communicate()
        if process.returncode != 0 or not out.exists():
            tail = err.decode(errors="replace")[-300:]
            return f"#### Profile: {title}\n\npy-spy failed ({process.returncode}): {tail}\n"
        data = orjson.loads(out.read_bytes())
    return _summarise_speedscope(data, title=title, top=top)


def _area(name: str, file: str) -> str:
    if "selectors.py" in file and name.endswith("select"):
        return "idle: epoll wait (for Redis replies, timers)"
    if "selector_events.py" in file and (name.endswith(".write") or "_read_ready" in name):
        return "socket send/recv (syscalls: loopback TCP, waking the server)"
    for marker, area in (
        ("/zen_async/", "zen_async"),
        ("/benchmarks/", "benchmark driver"),
        ("/redis/", "redis-py (+ hiredis)"),
        ("/pydantic", "pydantic"),
        ("/asyncio/", "asyncio loop and tasks"),
        ("/structlog/", "structlog"),
        ("/anyio/", "anyio"),
    ):
        if marker in file:
            return area
    return "other: " + Path(file).name


def _summarise_speedscope(data: dict[str, Any], *, title: str, top: int) -> str:
    frames = data["shared"]["frames"]
    profile = max(data["profiles"], key=lambda p: len(p["samples"]))
    samples: list[list[int]] = profile["samples"]
    marked = {i for i, f in enumerate(frames) if f["name"].endswith(PROFILE_MARK)}
    inside = [n for n, stack in enumerate(samples) if marked.intersection(stack)]
    if not inside:
        return f"#### Profile: {title}\n\nno sample of the measured phase was recorded.\n"
    phase = samples[inside[0] : inside[-1] + 1]
    total = len(phase)
    areas: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()

    def label(i: int) -> str:
        f = frames[i]
        return f"{f['name']} ({Path(f['file']).name})"

    for stack in phase:
        if not stack:
            continue
        leaf = frames[stack[-1]]
        areas[_area(leaf["name"], leaf["file"])] += 1
        self_time[label(stack[-1])] += 1
        for name in {label(i) for i in stack if "/zen_async/" in frames[i]["file"]}:
            inclusive[name] += 1

    def rows(counter: Counter[str]) -> list[str]:
        return [f"| {name} | {100 * n / total:.1f}% |" for name, n in counter.most_common(top)]

    seconds = sum(profile["weights"][inside[0] : inside[-1] + 1])
    return "\n".join(
        [
            f"#### Profile: {title}",
            "",
            f"py-spy --idle, {total} samples of the measured phase (~{seconds:.1f} s of wall"
            " time on the event loop's thread); shares of wall time.",
            "",
            "| where the time goes (leaf frame) | share |",
            "|---|---:|",
            *rows(areas),
            "",
            "| function (self time) | share |",
            "|---|---:|",
            *rows(self_time),
            "",
            "| zen_async function (inclusive) | share |",
            "|---|---:|",
            *rows(inclusive),
            "",
        ]
    )


async def _profiled_call(call: Call, i: int) -> int:
    return await call(i)


async def profile_rounds(measured: Round, *, seconds: float, max_rounds: int | None = None) -> int:
    """Run ``measured`` round after round for about ``seconds`` (at most ``max_rounds``),
    each inside the function named by :data:`PROFILE_MARK`, so that a profile can find the
    measured phase. Returns the rounds run."""

    async def whole_round(_: int) -> int:
        return (await measured())[0]

    deadline = time.perf_counter() + seconds
    done = 0
    while time.perf_counter() < deadline and (max_rounds is None or done < max_rounds):
        await _profiled_call(whole_round, done)
        done += 1
    return done


# --- in-process profiles (cProfile) ----------------------------------------------------------
@dataclass(frozen=True)
class CProfiled:
    """Rounds of one scenario run under cProfile (see :func:`cprofile_rounds`)."""

    stats: pstats.Stats
    ops: int
    """Operations the profiled rounds did."""
    seconds: float
    """Wall time of the profiled rounds."""
    rounds: int


async def cprofile_rounds(measured: Round, *, rounds: int) -> CProfiled:
    """Run ``measured`` once to warm up, then ``rounds`` times under cProfile, in this
    process and thread: whatever runs on the event loop meanwhile (the measured calls, the
    background tasks of the open clients) is profiled."""
    await measured()  # warm-up: connections, script cache, first-use costs
    profiler = cProfile.Profile()
    ops = 0
    started = time.perf_counter()
    profiler.enable()
    try:
        for _ in range(rounds):
            done, _, _ = await measured()
            ops += done
    finally:
        profiler.disable()
    seconds = time.perf_counter() - started
    return CProfiled(pstats.Stats(profiler), ops, seconds, rounds)


PROFILE_AREAS: tuple[str, ...] = (
    "zen_async/store/mux.py",
    "zen_async/store (other)",
    "zen_async/agents",
    "zen_async/metrics",
    "zen_async/degraded",
    "other zen_async",
    "redis-py",
    "hiredis/C builtins",
    "asyncio/event loop",
    "pydantic",
    "orjson",
    "other",
)
"""The areas :func:`cprofile_section` sums own time by, in its order."""
IDLE_AREA = "idle: waiting in select/epoll (asyncio loop)"
"""Own time of the selector's poll: the loop waiting for replies or timers, not work."""

_POLLS = frozenset(
    {
        "<method 'poll' of 'select.epoll' objects>",
        "<method 'poll' of 'select.poll' objects>",
        "<method 'control' of 'select.kqueue' objects>",
        "<built-in method select.select>",
    }
)
"""The selectors' waits, as cProfile names them."""

_PyFunction = tuple[str, int, str]
"""A pstats key: (file, first line, function); ``("~", 0, "<built-in ...>")`` for C code."""


def profile_area(function: _PyFunction) -> str:
    """Which of :data:`PROFILE_AREAS` (or :data:`IDLE_AREA`) a profiled function's own time
    belongs to."""
    file, _, name = function
    if file == "~":  # C code called from Python: by the object or module it belongs to
        if "orjson" in name:
            return "orjson"
        if "pydantic" in name:
            return "pydantic"
        if name in _POLLS:
            return IDLE_AREA
        if any(m in name for m in ("uvloop", "_asyncio", "_socket", "select.")):
            return "asyncio/event loop"
        return "hiredis/C builtins"
    path = file.replace("\\", "/")
    for marker, area in (
        ("/zen_async/store/mux.py", "zen_async/store/mux.py"),
        ("/zen_async/store/", "zen_async/store (other)"),
        ("/zen_async/agents/", "zen_async/agents"),
        ("/zen_async/metrics", "zen_async/metrics"),
        ("/zen_async/degraded", "zen_async/degraded"),
        ("/zen_async/", "other zen_async"),
        ("/redis/", "redis-py"),  # before asyncio: redis/asyncio/...
        ("/hiredis/", "hiredis/C builtins"),
        ("/asyncio/", "asyncio/event loop"),
        ("/selectors.py", "asyncio/event loop"),
        ("/uvloop/", "asyncio/event loop"),
        ("/pydantic", "pydantic"),  # pydantic and pydantic_core
        ("/orjson/", "orjson"),
    ):
        if marker in path:
            return area
    return "other"


def _module_of(file: str) -> str:
    """The dotted module name of a Python file, as far as its path tells."""
    parts = list(Path(file).with_suffix("").parts)
    module = parts[-1] if parts else file
    for anchor in ("site-packages", "dist-packages", "zen_async", "benchmarks", "tests"):
        if anchor in parts:
            at = len(parts) - 1 - parts[::-1].index(anchor)
            kept = parts[at + 1 :] if anchor.endswith("-packages") else parts[at:]
            module = ".".join(kept) or module
            break
    else:
        stdlib = [i for i, p in enumerate(parts) if re.fullmatch(r"python3\.\d+", p)]
        if stdlib:
            module = ".".join(parts[stdlib[-1] + 1 :]) or module
    return module.removesuffix(".__init__")


def _function_label(function: _PyFunction) -> str:
    """``module:function (l.N)`` of a profiled function; a C function by its own name."""
    file, line, name = function
    return name if file == "~" else f"{_module_of(file)}:{name} (l.{line})"


def cprofile_section(
    stats: pstats.Stats,
    title: str,
    *,
    ops: int,
    seconds: float,
    rounds: int | None = None,
    top: int = 15,
) -> str:
    """A markdown section "Where the time goes: ``title``" of a cProfile run that did
    ``ops`` operations in ``seconds`` of wall time (over ``rounds`` rounds after a warm-up,
    when given): the ``top`` functions by own time (calls, own and cumulative ms), then own
    time summed by area (:data:`PROFILE_AREAS`)."""
    raw: dict[_PyFunction, tuple[int, int, float, float, Any]] = vars(stats)["stats"]
    total = sum(tt for _, _, tt, _, _ in raw.values())
    heading = f"### Where the time goes: {title}\n"
    if total <= 0:
        return heading + "\ncProfile recorded nothing.\n"
    rate = ops / seconds if seconds > 0 else math.nan
    heaviest = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[:top]
    areas: dict[str, float] = dict.fromkeys(PROFILE_AREAS, 0.0)
    modules: dict[str, dict[str, float]] = {}  # area -> own time by module (C: by function)
    functions: dict[str, dict[str, float]] = {}  # area -> own time by function
    for function, (_, _, tt, _, _) in raw.items():
        area = profile_area(function)
        areas[area] = areas.get(area, 0.0) + tt
        file, _, name = function
        for by, key in (
            (modules.setdefault(area, {}), name if file == "~" else _module_of(file)),
            (functions.setdefault(area, {}), _function_label(function)),
        ):
            by[key] = by.get(key, 0.0) + tt

    def parts(area: str) -> str:
        """The area's 3 largest modules, or functions when it is one module."""
        by = modules.get(area, {})
        if len(by) == 1:
            by = functions[area]
        largest = sorted(by.items(), key=lambda item: item[1], reverse=True)[:3]
        return "; ".join(f"`{name}` {1000 * tt:,.1f}" for name, tt in largest)

    shown = [*PROFILE_AREAS, *([IDLE_AREA] if areas.get(IDLE_AREA, 0.0) > 0 else [])]
    lines = [
        heading,
        "cProfile, in-process"
        + ("" if rounds is None else f", {rounds} round(s) after a warm-up")
        + f": {ops:,} operations in {seconds:.2f} s of wall time "
        f"({rate:,.0f} ops/s under the profiler); {total:.2f} s of own time recorded in "
        "profiled functions (the rest: C code that cProfile does not see, such as uvloop's "
        "loop when it runs, and the profiler itself). cProfile inflates the cost "
        "of every Python call (a hook runs on each call and each resumed coroutine, which it "
        "also counts as a call), and garbage collection pauses land on whatever function was "
        "running: read the shares, not the absolute figures.",
        "",
        f"Top {len(heaviest)} functions by own time:",
        "",
        "| function | calls | own ms | cumulative ms |",
        "|---|---:|---:|---:|",
        *(
            f"| `{_function_label(function)}` | {nc:,} | {1000 * tt:,.1f} | {1000 * ct:,.1f} |"
            for function, (_, nc, tt, ct, _) in heaviest
        ),
        "",
        "Own time by area:",
        "",
        "| area | own ms | share | largest parts (own ms) |",
        "|---|---:|---:|---|",
        *(
            f"| {area} | {1000 * areas[area]:,.1f} | {100 * areas[area] / total:.1f}% "
            f"| {parts(area)} |"
            for area in shown
        ),
        "",
    ]
    return "\n".join(lines)
