"""A fault under load: many agents cycling through transitions while a fault is injected, with
a client-side ledger of every acknowledged transition checked against the final state.

Used by the failover fault tests and by ``benchmarks/failover.py`` (which reports the times).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

from zen_async.agents import AgentSpec, LifecycleState
from zen_async.errors import ZenError
from zen_async.services import Zen

__all__ = ["LoadReport", "render_reliability", "run_under_fault"]

_CYCLE = {
    LifecycleState.READY: LifecycleState.RUNNING,
    LifecycleState.RUNNING: LifecycleState.READY,
}


@dataclass
class LoadReport:
    """What happened to the workload around one fault."""

    fault: str
    agents: int
    acknowledged: int = 0
    """Transitions the caller got a result for."""
    refused: Counter[str] = field(default_factory=Counter)
    """Calls that raised, by error type (never acknowledged, so never expected to stick)."""
    hung: int = 0
    """Calls still running past the call bound (cancelled there)."""
    max_call_seconds: float = 0.0
    recovery_seconds: float | None = None
    """From the fault to the moment every agent had a transition acknowledged again."""
    lost: list[str] = field(default_factory=list)
    """Acknowledged transitions missing from the final state or the audit trail."""

    durability: str = "async"

    @property
    def attempted(self) -> int:
        """Every transition call made."""
        return self.acknowledged + sum(self.refused.values()) + self.hung

    def summary(self) -> str:
        recovery = "never" if self.recovery_seconds is None else f"{self.recovery_seconds:.2f}s"
        return (
            f"{self.fault}: {self.agents} agents, {self.acknowledged} transitions acknowledged, "
            f"refused {dict(self.refused) or 0}, hung {self.hung}, "
            f"slowest call {self.max_call_seconds:.2f}s, recovery {recovery}, "
            f"lost {len(self.lost)}"
        )


async def run_under_fault(
    zen: Zen,
    fault: str,
    inject: Callable[[], Awaitable[None]],
    *,
    agents: int = 1000,
    call_bound: float,
    warmup: float = 1.0,
    deadline: float = 90.0,
) -> LoadReport:
    """Cycle ``agents`` agents between ready and running, call ``inject()`` once the load runs,
    go on until every agent has made progress after it, then check the ledger.

    Args:
        zen: where to run (its own deployment: the fault is real).
        fault: a name for the report.
        inject: injects the fault (kill, freeze, restart...), awaited while the load runs.
        agents: how many agents cycle concurrently, one coroutine each.
        call_bound: seconds after which a call counts as hung (the caller's own timeout
            budget: pool wait + connect + socket timeouts).
        warmup: seconds of load before the fault.
        deadline: seconds after the fault by which every agent must have progressed.
    """
    report = LoadReport(fault, agents, durability=zen.settings.redis_durability)
    ids = await _ready_agents(zen, agents)
    ledger: dict[str, list[tuple[int, str]]] = {i: [] for i in ids}
    state = dict.fromkeys(ids, LifecycleState.READY)
    injected_at: float | None = None
    progressed: dict[str, float] = {}
    everyone_progressed = anyio.Event()
    stop = anyio.Event()

    async def cycle(agent_id: str) -> None:
        while not stop.is_set():
            target = _CYCLE[state[agent_id]]
            started = time.monotonic()
            result = None
            with anyio.move_on_after(call_bound) as scope:
                try:
                    result = await zen.agents.transition(agent_id, target)
                except ZenError as exc:
                    report.refused[type(exc).__name__] += 1
            took = time.monotonic() - started
            report.max_call_seconds = max(report.max_call_seconds, took)
            if scope.cancelled_caught:
                report.hung += 1
            if result is None:
                await _resync(zen, agent_id, state)
                await anyio.sleep(0.05)
                continue
            report.acknowledged += 1
            ledger[agent_id].append((result.version, result.to_state.value))
            state[agent_id] = result.to_state
            if injected_at is not None and started >= injected_at:
                progressed.setdefault(agent_id, time.monotonic())
                if len(progressed) == agents:
                    everyone_progressed.set()
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for agent_id in ids:
            tg.start_soon(cycle, agent_id)
        await anyio.sleep(warmup)
        injected_at = time.monotonic()
        await inject()
        with anyio.move_on_after(deadline):
            await everyone_progressed.wait()
        if len(progressed) == agents:
            report.recovery_seconds = max(progressed.values()) - injected_at
        await anyio.sleep(0.5)
        stop.set()
    report.lost = await _check_ledger(zen, ledger)
    return report


async def _ready_agents(zen: Zen, agents: int) -> list[str]:
    ids = [f"load-{i:05d}" for i in range(agents)]
    await zen.agents.create_agents([AgentSpec(agent_id=i, agent_type="load") for i in ids])
    await zen.agents.transition_many([(i, LifecycleState.READY, None) for i in ids])
    return ids


async def _resync(zen: Zen, agent_id: str, state: dict[str, LifecycleState]) -> None:
    """After a failed call the stored state is unknown to us: read it (best effort)."""
    try:
        record = await zen.agents.get_agent(agent_id)
    except ZenError:
        return
    if record is not None and record.lifecycle_state in _CYCLE:
        state[agent_id] = record.lifecycle_state


async def _check_ledger(zen: Zen, ledger: dict[str, list[tuple[int, str]]]) -> list[str]:
    lost: list[str] = []
    for agent_id, acknowledged in ledger.items():
        record = await zen.agents.get_agent(agent_id)
        trail = await zen.events.audit_trail(agent_id, limit=100_000)
        stored = {
            int(e.data["version"]): str(e.data["to"])
            for e in trail
            if e.type == "state_changed" and isinstance(e.data, dict)
        }
        if acknowledged and (record is None or record.version < acknowledged[-1][0]):
            lost.append(f"{agent_id}: stored version {record and record.version} < acknowledged")
        for version, to_state in acknowledged:
            if stored.get(version) != to_state:
                lost.append(f"{agent_id} v{version}->{to_state}: audit has {stored.get(version)}")
    return lost


def render_reliability(reports: list[LoadReport], *, header: str) -> str:
    """docs/reliability.md: one row per fault (from the fault tests' reports)."""
    lines = [
        "# Reliability under faults",
        "",
        "Generated by `tests/faults/test_failover_load.py` (run `make reliability` to refresh);",
        "each fault is injected under a running workload of 1000 agents cycling through",
        "transitions, one coroutine each. *Acknowledged* transitions are checked at the end",
        "against the final records and the audit trails (a client-side ledger); *lost* counts",
        "acknowledged ones missing. *Recovery*: from the fault until every agent had a",
        "transition acknowledged again. *Refused*: calls that raised (never acknowledged).",
        "",
        "After a frozen Sentinel master resumes, it answers as master until the sentinels",
        "demote it (about a second here). The pools follow the master the sentinels name",
        "(on every reconnect and every health check) and close their connections to a former",
        "one, so the ledger is checked as soon as the load stops; a write sent to the old",
        "master just before it froze is answered by it on resume, refused with `replicated`",
        "durability (no replica confirms it) but lost with `async`: mitigate on the servers",
        "with `min-replicas-to-write`.",
        "",
        header,
        "",
        "| fault | durability | recovery s | attempted | acknowledged | refused | hung | lost "
        "| slowest call s |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in reports:
        recovery = "—" if r.recovery_seconds is None else f"{r.recovery_seconds:.2f}"
        refused = ", ".join(f"{k} {v:,}" for k, v in sorted(r.refused.items())) or "0"
        lines.append(
            f"| {r.fault} | {r.durability} | {recovery} | {r.attempted:,} | "
            f"{r.acknowledged:,} | {refused} | {r.hung} | {len(r.lost)} | "
            f"{r.max_call_seconds:.2f} |"
        )
    return "\n".join(lines) + "\n"
