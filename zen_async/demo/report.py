"""What the demo measures and reports: its options, the timings per operation, the
invariants, the summary table, and the progress lines."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TextIO, TypeVar

from zen_async.errors import ValidationError, ZenError

__all__ = ["DemoOptions", "DemoReport", "Invariant", "OpSummary", "Progress", "Recorder"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class DemoOptions:
    """What the demo does.

    Attributes:
        agents: how many agents (1 to 100,000).
        concurrency: agents in flight at once (1 to 10,000).
        cycles: work cycles per agent, each with one task (1 to 100).
        tenant: the tenant to run in (default ``demo-<UTC time>-<random>``).
        keep: keep the agents, tasks and memories at the end.
        heartbeat_interval: seconds between the fleet's bulk heartbeats, which keep every
            agent's liveness and port leases renewed however long a phase takes.

    Raises:
        ValidationError: a value out of range.
    """

    agents: int = 1000
    concurrency: int = 100
    cycles: int = 2
    tenant: str | None = None
    keep: bool = False
    heartbeat_interval: float = 10.0

    def __post_init__(self) -> None:
        for name, value, most in (
            ("agents", self.agents, 100_000),
            ("concurrency", self.concurrency, 10_000),
            ("cycles", self.cycles, 100),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
                raise ValidationError(f"{name}={value!r}: expected an integer from 1 to {most:,}")
        if not (math.isfinite(self.heartbeat_interval) and self.heartbeat_interval > 0):
            raise ValidationError(
                f"heartbeat_interval={self.heartbeat_interval!r}: expected seconds > 0"
            )


@dataclass(frozen=True)
class OpSummary:
    """One operation type: how many, how fast, how long each call took."""

    name: str
    ops: int
    """Items done (a bulk call counts each agent or task it handles)."""
    calls: int
    ops_per_s: float
    """``ops`` over the time from the first call's start to the last call's end."""
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass(frozen=True)
class Invariant:
    """One promise checked after the run."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class DemoReport:
    """What a demo run measured and found."""

    options: DemoOptions
    tenant: str
    server: str
    ops: list[OpSummary]
    invariants: list[Invariant]
    phases: list[tuple[str, float]]
    seconds: float
    failures: list[str]
    """The first few agents that could not finish, and why."""

    @property
    def passed(self) -> bool:
        """Whether every invariant holds."""
        return all(i.passed for i in self.invariants)

    def render(self) -> str:
        """The summary: settings, the operations table, the invariants table."""
        o = self.options
        kept = "kept" if o.keep else "agents, tasks and memories deleted at the end"
        lines = [
            f"zen-async demo: {o.agents:,} agents, {o.cycles} work cycles each, "
            f"concurrency {o.concurrency}",
            f"server: {self.server}; tenant {self.tenant} ({kept})",
            "phases: " + ", ".join(f"{name} {secs:.2f} s" for name, secs in self.phases),
            "",
            f"{'operation':<28} {'ops':>8} {'ops/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}",
        ]
        for op in self.ops:
            lines.append(
                f"{op.name:<28} {op.ops:>8,} {op.ops_per_s:>10,.0f} {op.p50_ms:>9.3f} "
                f"{op.p99_ms:>9.3f} {op.errors:>7,}"
            )
        total = sum(op.ops for op in self.ops)
        lines.append(
            f"{'all operations':<28} {total:>8,} {total / max(self.seconds, 1e-9):>10,.0f} "
            f"{'':>9} {'':>9} {sum(op.errors for op in self.ops):>7,}  in {self.seconds:.2f} s"
        )
        width = max(len(i.name) for i in self.invariants)
        lines += ["", f"{'invariant':<{width}}  result  detail"]
        lines += [
            f"{i.name:<{width}}  {'PASS' if i.passed else 'FAIL':<6}  {i.detail}"
            for i in self.invariants
        ]
        lines.extend(f"  failed: {f}" for f in self.failures)
        failed = sum(not i.passed for i in self.invariants)
        lines += [
            "",
            "all invariants hold" if not failed else f"{failed} invariant(s) FAILED",
        ]
        return "\n".join(lines) + "\n"


# --- measuring ------------------------------------------------------------------------------
@dataclass
class _Op:
    latencies: list[float] = field(default_factory=list)
    items: int = 0
    errors: int = 0
    first: float = math.inf
    last: float = 0.0


class Recorder:
    """Times every call by operation type."""

    def __init__(self) -> None:
        self._ops: dict[str, _Op] = {}

    async def timed(
        self,
        name: str,
        call: Awaitable[_T],
        *,
        items: int | Callable[[_T], int] = 1,
    ) -> _T:
        """``await call``, timed as one call of ``name`` that did ``items`` operations (or
        as many as ``items(result)`` says)."""
        op = self._ops.setdefault(name, _Op())
        started = time.perf_counter()
        try:
            result = await call
        except ZenError:
            op.errors += 1
            raise
        ended = time.perf_counter()
        op.latencies.append(ended - started)
        op.items += items(result) if callable(items) else items
        op.first = min(op.first, started)
        op.last = max(op.last, ended)
        return result

    def summary(self) -> list[OpSummary]:
        out = []
        for name, op in self._ops.items():
            ordered = sorted(op.latencies) or [math.nan]
            span = op.last - op.first if op.latencies else math.nan
            out.append(
                OpSummary(
                    name=name,
                    ops=op.items,
                    calls=len(op.latencies),
                    ops_per_s=op.items / span if span > 0 else 0.0,
                    p50_ms=ordered[len(ordered) // 2] * 1000,
                    p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
                    errors=op.errors,
                )
            )
        return out


class Progress:
    """One progress line per phase: redrawn in place on a terminal, written once when the
    phase ends otherwise."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._live = stream is not None and stream.isatty()
        self._phase = ""
        self._total = 0
        self._done = 0
        self._started = 0.0
        self._drawn = 0.0

    def start(self, phase: str, total: int) -> None:
        self._phase, self._total, self._done = phase, total, 0
        self._started = self._drawn = time.monotonic()
        self._draw()

    def advance(self, n: int = 1) -> None:
        self._done += n
        if self._live and time.monotonic() - self._drawn >= 0.1:
            self._draw()

    def finish(self) -> float:
        elapsed = time.monotonic() - self._started
        if self._stream is not None:
            self._draw(end="\n")
        return elapsed

    def _draw(self, end: str = "") -> None:
        if self._stream is None or not (self._live or end):
            return
        self._drawn = time.monotonic()
        share = 100 * self._done / self._total if self._total else 100.0
        self._stream.write(
            ("\r" if self._live else "")
            + f"{self._phase:<9} {self._done:>7,}/{self._total:<7,} agents {share:5.1f}%  "
            f"{self._drawn - self._started:6.2f} s{end}"
        )
        self._stream.flush()
