"""The invariants the demo checks once its fleet is done: it reads the agents, their audit
trails, the shard streams, the port leases and the tasks back from Redis and compares them
with what each agent did."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Final

from zen_async.agents import AgentTask, TaskStatus
from zen_async.demo._fleet import AGENT_TYPE, Fleet
from zen_async.demo.report import Invariant
from zen_async.events.envelope import shard_stream_name

__all__ = ["verify"]

_AUDIT_LIMIT: Final = 10_000
_LIST_PAGE: Final = 1000


@dataclass
class Audit:
    """What the demo read back about one agent."""

    state_changes: list[str]
    last_target: str | None
    event_ids: set[str]


async def verify(fleet: Fleet) -> list[Invariant]:
    """Read everything back and check each invariant."""
    zen, rec = fleet.zen, fleet.rec
    ids = [a.agent_id for a in fleet.agents]
    fleet.progress.start("verify", len(ids))
    records = await rec.timed("agent.get (bulk)", zen.agents.get_agents(ids), items=len(ids))
    audits = await _audits(fleet)
    per_shard = await _shard_state_changes(fleet)
    tasks = await _tasks(fleet)
    counts = await rec.timed("task.count", zen.tasks.count_by_status(agent_type=AGENT_TYPE))
    fleet.phases.append(("verify", fleet.progress.finish()))
    finals = {
        a: (r.lifecycle_state.value if r else None) for a, r in zip(ids, records, strict=True)
    }
    return [
        _lifecycles(fleet, finals),
        _ports(fleet),
        _events(fleet, audits, per_shard),
        _final_states(fleet, finals, audits),
        _task_claims(fleet, tasks, counts),
        _published(fleet, audits),
        _memory(fleet),
    ]


async def _audits(fleet: Fleet) -> dict[str, Audit]:
    audits: dict[str, Audit] = {}
    queue = iter(fleet.agents)

    async def worker() -> None:
        for agent in queue:
            trail = await fleet.rec.timed(
                "event.audit_trail",
                fleet.zen.events.audit_trail(agent.agent_id, limit=_AUDIT_LIMIT),
            )
            changes = [e for e in trail if e.type == "state_changed"]
            audits[agent.agent_id] = Audit(
                state_changes=[e.id for e in changes],
                last_target=changes[-1].data.get("to") if changes else None,
                event_ids={e.id for e in trail},
            )
            fleet.progress.advance()

    async with asyncio.TaskGroup() as group:
        for _ in range(min(fleet.options.concurrency, len(fleet.agents))):
            group.create_task(worker())
    return audits


async def _shard_state_changes(fleet: Fleet) -> Counter[str]:
    """state_changed events per agent, as the shard streams hold them."""

    async def read(shard: int) -> tuple[Counter[str], int]:
        found: Counter[str] = Counter()
        seen = 0
        async for event in fleet.zen.events.replay(shard_stream_name(shard)):
            seen += 1
            if event.type == "state_changed" and event.agent_id:
                found[event.agent_id] += 1
        return found, seen

    total: Counter[str] = Counter()
    for shard in range(fleet.zen.agents.shards):
        found, _ = await fleet.rec.timed(
            "event.replay (shard)", read(shard), items=lambda reply: reply[1]
        )
        total.update(found)
    return total


async def _tasks(fleet: Fleet) -> list[AgentTask]:
    tasks: list[AgentTask] = []
    cursor: str | None = None
    while True:
        page, cursor = await fleet.rec.timed(
            "task.list",
            fleet.zen.tasks.list_tasks(agent_type=AGENT_TYPE, cursor=cursor, limit=_LIST_PAGE),
        )
        tasks.extend(page)
        if cursor is None:
            return tasks


def _lifecycles(fleet: Fleet, finals: dict[str, str | None]) -> Invariant:
    done = sum(1 for a in fleet.agents if a.failure is None and finals[a.agent_id] == "terminated")
    failed = [a for a in fleet.agents if a.failure is not None]
    return Invariant(
        "every agent completed its lifecycle",
        done == len(fleet.agents),
        f"{done:,}/{len(fleet.agents):,} agents terminated after {fleet.options.cycles} "
        f"work cycles" + (f"; {len(failed):,} failed" if failed else ""),
    )


def _ports(fleet: Fleet) -> Invariant:
    shared = {p: owners for p, owners in fleet.snapshot.items() if len(owners) > 1}
    live = sum(len(owners) for owners in fleet.snapshot.values())
    holders = [a for a in fleet.agents if a.lease is not None and a.failure is None]
    lost = [
        a.agent_id
        for a in holders
        if a.lease is not None and fleet.snapshot.get((a.lease.host, a.lease.port)) != [a.agent_id]
    ]
    stats = fleet.port_stats
    # The host's ports are shared by every tenant (and the outage reserves): the server's
    # count of leased ports, less the reserves, holds at least this tenant's live leases.
    leased = -1 if stats is None else stats.in_use - stats.reserved - stats.quarantined
    ok = not fleet.duplicates and not shared and not lost and 0 <= live <= leased
    detail = (
        f"{fleet.handed_out:,} leases checked as handed out, {len(fleet.duplicates)} "
        f"duplicates; {live:,} live at the snapshot (server: {leased:,} leased on the host "
        "outside outage reserves, all tenants), "
        f"{len(shared)} shared, {len(lost)} agents without their own lease"
    )
    if fleet.duplicates:
        detail += f"; first: {fleet.duplicates[0]}"
    return Invariant("no duplicate port among live leases", ok, detail)


def _events(fleet: Fleet, audits: dict[str, Audit], per_shard: Counter[str]) -> Invariant:
    made = sum(len(a.transitions) for a in fleet.agents)
    in_audit = sum(len(x.state_changes) for x in audits.values())
    in_shards = sum(per_shard[a.agent_id] for a in fleet.agents)
    missing = [
        a.agent_id
        for a in fleet.agents
        if len(a.transitions) != len(audits[a.agent_id].state_changes)
        or len(a.transitions) != per_shard[a.agent_id]
        or {t.event_id for t in a.transitions} != set(audits[a.agent_id].state_changes)
    ]
    detail = (
        f"{made:,} transitions; state_changed events: {in_audit:,} in audit trails, "
        f"{in_shards:,} in shard streams"
    )
    if missing:
        detail += f"; mismatched agents: {len(missing)} (first {missing[0]})"
    return Invariant("every transition has its state_changed event", not missing, detail)


def _final_states(
    fleet: Fleet, finals: dict[str, str | None], audits: dict[str, Audit]
) -> Invariant:
    wrong = [a for a, state in finals.items() if state != audits[a].last_target]
    detail = f"{len(finals) - len(wrong):,}/{len(finals):,} agents match"
    if wrong:
        first = wrong[0]
        detail += f"; first: {first} is {finals[first]}, its event says {audits[first].last_target}"
    return Invariant("final state equals the last event's target", not wrong, detail)


def _task_claims(fleet: Fleet, tasks: list[AgentTask], counts: dict[TaskStatus, int]) -> Invariant:
    created = set(fleet.task_ids)
    twice = [t for t, n in fleet.claims.items() if n != 1]
    unclaimed = created - set(fleet.claims)
    wrong = [
        t.task_id
        for t in tasks
        if t.status != TaskStatus.COMPLETED
        or t.attempts != 1
        or t.agent_id != fleet.claimed_by.get(t.task_id)
    ]
    completed = counts.get(TaskStatus.COMPLETED, 0)
    ok = not twice and not unclaimed and not wrong
    ok = ok and len(tasks) == len(created) and completed == len(created)
    detail = (
        f"{len(created):,} created, {sum(fleet.claims.values()):,} claims of "
        f"{len(fleet.claims):,} tasks, {completed:,} completed with 1 attempt each"
    )
    if twice or unclaimed or wrong:
        detail += f"; claimed twice {len(twice)}, unclaimed {len(unclaimed)}, wrong {len(wrong)}"
    return Invariant("each task claimed exactly once", ok, detail)


def _published(fleet: Fleet, audits: dict[str, Audit]) -> Invariant:
    sent = sum(len(a.published) for a in fleet.agents)
    lost = [e for a in fleet.agents for e in a.published if e not in audits[a.agent_id].event_ids]
    return Invariant(
        "every published event is in its audit trail",
        not lost,
        f"{sent - len(lost):,}/{sent:,} found",
    )


def _memory(fleet: Fleet) -> Invariant:
    stored = sum(len(a.memories) for a in fleet.agents)
    return Invariant(
        "a search finds each memory just stored",
        not fleet.search_misses,
        f"{stored - len(fleet.search_misses):,}/{stored:,} found at similarity 1.0",
    )
