"""Fleet (issue #8, scenario 4, and scenario 8 for it): the demo's fleet of simulated agents,
each through its lifecycle, heartbeats, port leases, tasks, memory writes and searches and
events, on a standalone server and on a local Redis Cluster (3 masters + 3 replicas), in
alternating rounds of the same run; every invariant checked after every round.

    python -m benchmarks.fleet [--quick] [--url redis://127.0.0.1:6379] [--no-profile]

Without --url it starts its own redis-server on a free loopback port; the cluster is always
started (and stopped) by the module, on free loopback ports.

The fleet is ``zen_async.demo.run_demo`` (``zen-async demo``): 1000 agents, 100 in flight, 2
work cycles each (create in bulk, ``initializing -> ready``, a port lease and a heartbeat;
per cycle ``ready -> running``, claim a task (a second port lease), start it, store a memory
and search for it, publish an event, heartbeat, complete the task, back to ``ready``; then
``terminating -> terminated`` and the port given back), with bulk heartbeats every 10 s in
the background, then the demo's read-back of every agent, audit trail, shard stream, lease
and task. Each round runs in a tenant of its own and keeps its data (``keep=True``), so that
one more invariant can be checked after the demo's: **state equal to its replay** — the
shard streams replayed from the start and folded per agent (``agent_created`` and
``state_changed`` targets) give exactly the stored state of every agent. The tenants are
removed from the standalone server at the end; the cluster is thrown away.

Figures per operation type: ops/s is the operation's items over the time from its first
call's start to its last call's end within the round (operations interleave: it is the
operation's share of the fleet's throughput, not its capacity), the median over rounds; p50
and p99 are each round's, then the median over rounds (the worst round's p99 is shown too).

Baseline: there is no raw redis-py equivalent of the whole fleet (a claim alone is a Lua
claim, a port lease and its record, and an event; a memory search is a vector scan), so the
fleet on standalone is reported absolute, with its invariant checks; the per-operation
rows compare the same fleet on Cluster against standalone, same run (ratio = Cluster /
standalone). What each single command costs against raw redis-py is in the agents, events,
core and memory modules.

In full mode the standalone fleet is then profiled with py-spy (a separate process) and the
profile added to the report: where the fleet's time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from benchmarks._harness import (
    Check,
    Comparison,
    Measure,
    Outcome,
    drop_tenant,
    profile_rounds,
    py_spy_profile,
    raw_client,
    save,
    save_markdown,
    server_pid,
    server_url,
)
from benchmarks._topologies import (
    ProcessesWatch,
    cluster_pids,
    cluster_settings,
    loadavg,
    local_cluster,
    new_tenant,
    standalone_settings,
)
from zen_async import Settings, open_zen
from zen_async.demo import DemoOptions, DemoReport, Invariant, OpSummary, run_demo
from zen_async.events.envelope import shard_stream_name
from zen_async.store.topology import KEYSPACES

STANDALONE: Final = "standalone"
CLUSTER: Final = "Cluster 3+3"
VERIFY_OPS: Final = frozenset(
    {"agent.get (bulk)", "event.audit_trail", "event.replay (shard)", "task.list", "task.count"}
)
"""The demo's read-back after the fleet (timed by the demo like every other operation)."""
REPLAY_INVARIANT: Final = "state equal to its replay (shard streams folded per agent)"


@dataclass(frozen=True)
class Sizes:
    """What one fleet round simulates, and how many rounds per topology."""

    rounds: int
    agents: int
    concurrency: int
    cycles: int


FULL: Final = Sizes(rounds=5, agents=1000, concurrency=100, cycles=2)
QUICK: Final = Sizes(rounds=5, agents=20, concurrency=5, cycles=1)
WARMUP: Final = Sizes(rounds=1, agents=20, concurrency=5, cycles=1)


@dataclass(frozen=True)
class FleetRound:
    """One run of the fleet on one topology, and what was checked after it."""

    topology: str
    tenant: str
    report: DemoReport
    replay: Invariant
    seconds: float
    """Wall time of the fleet, its verification and the replay check."""

    @property
    def invariants(self) -> list[Invariant]:
        return [*self.report.invariants, self.replay]

    def ops(self, *, verify: bool | None = None) -> list[OpSummary]:
        """The operation types (``verify``: only the read-back's, or only the others')."""
        return [o for o in self.report.ops if verify is None or (o.name in VERIFY_OPS) == verify]

    @property
    def fleet_ops(self) -> int:
        """Items done by the fleet, without the read-back."""
        return sum(o.ops for o in self.ops(verify=False))

    @property
    def fleet_seconds(self) -> float:
        """The fleet's phases, without the read-back."""
        return sum(s for name, s in self.report.phases if name not in ("verify", "cleanup"))


@dataclass
class FleetRun:
    """Every round on each topology, the comparisons and the targets."""

    sizes: Sizes
    outcome: Outcome
    rounds: dict[str, list[FleetRound]] = field(default_factory=dict)

    @property
    def comparisons(self) -> list[Comparison]:
        return self.outcome.comparisons

    def markdown(self) -> str:
        """The report: per-operation tables for each topology, the invariants, then the
        comparisons, targets, load and notes."""
        head, rest = self.outcome.markdown().split("\n", 1)
        parts = [head, ""]
        for topology, rounds in self.rounds.items():
            parts.append(_ops_table(topology, rounds))
        parts.append(_invariants_table(self.rounds))
        return "\n".join(parts) + rest

    def extra(self) -> dict[str, Any]:
        return {
            **self.outcome.extra(),
            "sizes": asdict(self.sizes),
            "rounds": {
                topology: [
                    {
                        "tenant": r.tenant,
                        "seconds": r.seconds,
                        "fleet_seconds": r.fleet_seconds,
                        "fleet_ops": r.fleet_ops,
                        "phases": r.report.phases,
                        "ops": [asdict(o) for o in r.report.ops],
                        "invariants": [asdict(i) for i in r.invariants],
                    }
                    for r in rounds
                ]
                for topology, rounds in self.rounds.items()
            },
        }


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def op_measure(topology: str, name: str, rounds: Sequence[FleetRound]) -> Measure:
    """One operation type over the rounds: median ops/s, median of the rounds' p50 and p99."""
    found = [o for r in rounds for o in r.report.ops if o.name == name]
    return Measure(
        name=f"fleet {name} on {topology}",
        ops_per_s=_median([o.ops_per_s for o in found]),
        p50_ms=_median([o.p50_ms for o in found]),
        p99_ms=_median([o.p99_ms for o in found]),
        rounds=len(found),
        ops_per_round=found[0].ops if found else 0,
    )


def fleet_measure(topology: str, rounds: Sequence[FleetRound]) -> Measure:
    """The whole fleet (without the read-back): items per second of its phases; p50/p99 are
    the medians over rounds of the fleet's per-round p50/p99 of ``agent.transition``."""
    transitions = op_measure(topology, "agent.transition", rounds)
    return Measure(
        name=f"fleet, all operations (no read-back) on {topology}",
        ops_per_s=_median([r.fleet_ops / r.fleet_seconds for r in rounds if r.fleet_seconds]),
        p50_ms=transitions.p50_ms,
        p99_ms=transitions.p99_ms,
        rounds=len(rounds),
        ops_per_round=rounds[0].fleet_ops if rounds else 0,
    )


def _ops_table(topology: str, rounds: Sequence[FleetRound]) -> str:
    first = rounds[0]
    lines = [
        f"### Fleet on {topology}: per operation type ({len(rounds)} rounds; absolute)",
        "",
        f"{first.report.options.agents:,} agents, {first.report.options.concurrency} in flight,"
        f" {first.report.options.cycles} work cycles each; server {first.report.server}. "
        "ops/s: the operation's items over its first-to-last call span in the round "
        "(operations interleave), median over rounds; p50/p99: median over rounds of each "
        "round's figure; worst p99: the highest round's. Rows marked (read-back) are the "
        "demo's verification after the fleet.",
        "",
        "| operation | items/round | calls/round | ops/s (median) | p50 ms | p99 ms "
        "| worst p99 ms | errors (all rounds) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for op in first.report.ops:
        found = [o for r in rounds for o in r.report.ops if o.name == op.name]
        label = op.name + (" (read-back)" if op.name in VERIFY_OPS else "")
        lines.append(
            f"| {label} | {op.ops:,} | {op.calls:,} "
            f"| {_median([o.ops_per_s for o in found]):,.0f} "
            f"| {_median([o.p50_ms for o in found]):.3f} "
            f"| {_median([o.p99_ms for o in found]):.3f} "
            f"| {max(o.p99_ms for o in found):.3f} | {sum(o.errors for o in found):,} |"
        )
    fleet = fleet_measure(topology, rounds)
    seconds = [r.fleet_seconds for r in rounds]
    lines += [
        "",
        f"Whole fleet (without the read-back): {fleet.ops_per_round:,} items per round in "
        f"{_median(seconds):.2f} s (median; rounds {min(seconds):.2f}-{max(seconds):.2f} s): "
        f"{fleet.ops_per_s:,.0f} items/s. Phases of the median round: "
        + ", ".join(
            f"{name} {secs:.2f} s"
            for name, secs in sorted(rounds, key=lambda r: r.fleet_seconds)[
                len(rounds) // 2
            ].report.phases
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


def _invariants_table(rounds: dict[str, list[FleetRound]]) -> str:
    topologies = list(rounds)
    lines = [
        "### Invariants, checked after every round",
        "",
        "| invariant | " + " | ".join(f"{t}: rounds passed" for t in topologies) + " | detail "
        f"(last round on {topologies[0]}) |",
        "|---|" + "---:|" * len(topologies) + "---|",
    ]
    names = [i.name for i in rounds[topologies[0]][0].invariants]
    for name in names:
        cells = []
        for t in topologies:
            results = [i for r in rounds[t] for i in r.invariants if i.name == name]
            passed = sum(i.passed for i in results)
            cell = f"{passed}/{len(rounds[t])}"
            cells.append(cell if passed == len(rounds[t]) else f"**{cell}**")
        detail = next(i.detail for i in rounds[topologies[0]][-1].invariants if i.name == name)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {detail} |")
    failures = [
        f"{t} round {n}: {f}"
        for t, rs in rounds.items()
        for n, r in enumerate(rs)
        for f in r.report.failures
    ]
    if failures:
        lines += ["", "Agents that could not finish (first few):", ""]
        lines += [f"- {f}" for f in failures[:10]]
    return "\n".join(lines) + "\n"


# --- one round ------------------------------------------------------------------------------
async def replay_invariant(settings: Settings, tenant: str, agents: int) -> Invariant:
    """Replay every shard stream of ``tenant`` from the start, fold the lifecycle events
    per agent, and compare with the stored state of each agent."""
    async with open_zen(settings) as root:
        zen = root.for_tenant(tenant)
        folded: dict[str, str] = {}
        events = 0
        for shard in range(zen.agents.shards):
            async for event in zen.events.replay(shard_stream_name(shard)):
                events += 1
                if event.type not in ("agent_created", "state_changed") or not event.agent_id:
                    continue
                to = event.data.get("to") if isinstance(event.data, dict) else None
                if isinstance(to, str):
                    folded[event.agent_id] = to
        ids = sorted(folded)
        records = await zen.agents.get_agents(ids) if ids else []
    stored = {
        a: (r.lifecycle_state.value if r is not None else None)
        for a, r in zip(ids, records, strict=True)
    }
    wrong = [a for a in ids if stored[a] != folded[a]]
    detail = (
        f"{events:,} shard-stream events replayed; {len(ids):,}/{agents:,} agents found, "
        f"{len(ids) - len(wrong):,} with the replayed state"
    )
    if wrong:
        first = wrong[0]
        detail += f"; first mismatch: {first} stored {stored[first]}, replayed {folded[first]}"
    return Invariant(REPLAY_INVARIANT, len(ids) == agents and not wrong, detail)


async def fleet_round(settings: Settings, sizes: Sizes, tenant: str, topology: str) -> FleetRound:
    """Run the demo's fleet once in ``tenant`` (kept), then the replay check."""
    options = DemoOptions(
        agents=sizes.agents,
        concurrency=sizes.concurrency,
        cycles=sizes.cycles,
        tenant=tenant,
        keep=True,
    )
    started = time.perf_counter()
    report = await run_demo(settings, options)
    replay = await replay_invariant(settings, tenant, sizes.agents)
    return FleetRound(topology, tenant, report, replay, time.perf_counter() - started)


# --- the run --------------------------------------------------------------------------------
async def run(url: str, *, quick: bool) -> FleetRun:
    """The fleet on the standalone server at ``url`` and on a local cluster, alternating,
    ``sizes.rounds`` rounds each after a small warm-up fleet on each."""
    sizes = QUICK if quick else FULL
    base = new_tenant("fleet")
    outcome = Outcome("fleet: the demo's agent fleet on standalone and on Redis Cluster")
    before = loadavg()
    fleet = FleetRun(sizes, outcome, {STANDALONE: [], CLUSTER: []})
    tenants: list[str] = []
    async with local_cluster() as cluster:
        targets = {
            STANDALONE: standalone_settings(url, base),
            CLUSTER: cluster_settings(cluster, base),
        }
        async with open_zen(targets[STANDALONE]) as zen:
            dbs = {zen.redis.keyspace(name).db for name in KEYSPACES}
        watch = ProcessesWatch([*cluster_pids(cluster), *await _server_pids(url)])
        order = list(targets)
        for topology in order:  # warm-up: connections, script caches, first-use costs
            tenant = f"{base}-w{'s' if topology == STANDALONE else 'c'}"
            tenants.append(tenant)
            await fleet_round(targets[topology], WARMUP, tenant, topology)
        for n in range(sizes.rounds):
            for topology in [*order[n % 2 :], *order[: n % 2]]:
                tenant = f"{base}-r{n}-{'s' if topology == STANDALONE else 'c'}"
                tenants.append(tenant)
                made = await outcome.settled(
                    f"fleet round {n + 1} on {topology}",
                    _measured(targets[topology], sizes, tenant, topology),
                    watch=watch,
                    attempts=1,  # a fleet round is long; a noisy one is reported, not redone
                )
                fleet.rounds[topology].append(made)
    for tenant in tenants:
        if tenant.endswith("s"):  # the cluster's were thrown away with it
            await drop_tenant(url, tenant, dbs)
    outcome.loadavg = (before, loadavg())
    _compare(fleet)
    _targets(fleet)
    outcome.notes += _notes(sizes)
    return fleet


def _measured(
    settings: Settings, sizes: Sizes, tenant: str, topology: str
) -> Callable[[], Awaitable[FleetRound]]:
    async def measure() -> FleetRound:
        return await fleet_round(settings, sizes, tenant, topology)

    return measure


async def _server_pids(url: str) -> list[int]:
    """The standalone server's process id, when it runs on this machine."""
    client = raw_client(url, db=0, max_connections=1)
    try:
        pid = await server_pid(url, lambda: client.info("server"))
    finally:
        await client.aclose(close_connection_pool=True)
    return [] if pid is None else [pid]


def _compare(fleet: FleetRun) -> None:
    standalone, cluster = fleet.rounds[STANDALONE], fleet.rounds[CLUSTER]
    rows = [Comparison(fleet_measure(CLUSTER, cluster), fleet_measure(STANDALONE, standalone))]
    names = [o.name for o in standalone[0].report.ops]
    cluster_names = {o.name for r in cluster for o in r.report.ops}
    rows += [
        Comparison(op_measure(CLUSTER, name, cluster), op_measure(STANDALONE, name, standalone))
        for name in names
        if name in cluster_names and name != "port.stats"  # one call a round: no rate
    ]
    fleet.outcome.sections.append(
        (
            "Cluster (3 masters + 3 replicas) vs standalone: the same fleet, same run "
            "(ops = items; ratio = Cluster / standalone)",
            rows,
        )
    )


def _targets(fleet: FleetRun) -> None:
    for topology, rounds in fleet.rounds.items():
        for name in [i.name for i in rounds[0].invariants]:
            results = [i for r in rounds for i in r.invariants if i.name == name]
            failed = [i.detail for i in results if not i.passed]
            fleet.outcome.checks.append(
                Check(
                    f"fleet on {topology}: {name}, every round",
                    float(len(results) - len(failed)),
                    float(len(rounds)),
                    "rounds",
                    "min",
                    failed[0] if failed else results[-1].detail,
                )
            )


def _notes(sizes: Sizes) -> list[str]:
    return [
        "No raw redis-py baseline for the fleet as a whole: each fleet operation is several "
        "commands or scripts (see the module docstring); the fleet is reported absolute, "
        "with its invariants, and against itself on Cluster. Per-command costs against raw "
        "redis-py are in the agents, events, core and memory reports.",
        f"Both topologies ran in this process, one after the other, {sizes.rounds} rounds "
        "each in alternating order, on the same 2-core machine as their servers (the "
        "cluster's 6 nodes included) and other work: absolute figures are noisy.",
        "Cluster: the same code and settings, `prefixed` key layout (forced on Cluster); "
        "redis-py's cluster client routes each call to the master of its slot.",
    ]


# --- profile --------------------------------------------------------------------------------
async def profile_fleet(url: str) -> None:
    """One full fleet on standalone (without baselines), under py-spy's measured mark."""
    tenant = new_tenant("fleet-profile")
    settings = standalone_settings(url, tenant)

    async def measured() -> tuple[int, float, list[float]]:
        started = time.perf_counter()
        made = await fleet_round(settings, FULL, tenant, STANDALONE)
        return made.fleet_ops, time.perf_counter() - started, []

    await profile_rounds(measured, seconds=3600.0, max_rounds=1)
    async with open_zen(settings) as zen:
        dbs = {zen.redis.keyspace(name).db for name in KEYSPACES}
    await drop_tenant(url, tenant, dbs)


async def profiles(url: str) -> list[str]:
    """A py-spy profile of one full fleet round on standalone."""
    argv = [sys.executable, "-m", "benchmarks.fleet", "--url", url, "--profile-fleet"]
    title = f"one fleet round on standalone ({FULL.agents} agents, {FULL.cycles} cycles)"
    return [await py_spy_profile(argv, title=title, rate=100, top=15)]


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few agents: a smoke run")
    parser.add_argument("--url", help="measure against this server instead of a private one")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--profile-fleet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile_fleet:
        asyncio.run(profile_fleet(args.url))
        return ""
    with server_url(args.url) as url:
        made = asyncio.run(run(url, quick=args.quick))
        if not args.quick and not args.no_profile:
            made.outcome.profiles = asyncio.run(profiles(url))
    report = made.markdown()
    if not args.quick:
        save("fleet", made.comparisons, {"loop": "asyncio", **made.extra()})
        save_markdown("fleet", report)
    print(report)
    for check in made.outcome.checks:
        print(check.line())
    return report


if __name__ == "__main__":
    from zen_async.logs import configure_logging

    configure_logging("warning")  # zen's logs to stderr; stdout carries the report
    main()
