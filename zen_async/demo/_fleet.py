"""The simulated fleet: every agent through its lifecycle, phase by phase, with at most
``concurrency`` agents in flight on one event loop; and the clean-up."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import structlog

from zen_async._tasks import background
from zen_async.agents import AgentSpec, LifecycleState, PortLease, PortStats, TaskSpec, TaskStatus
from zen_async.agents.models import TransitionResult
from zen_async.demo.report import DemoOptions, Progress, Recorder
from zen_async.errors import ZenError
from zen_async.services import Zen

__all__ = ["AGENT_TYPE", "Agent", "Fleet"]

log = structlog.get_logger(__name__)

AGENT_TYPE: Final = "demo-worker"
BULK: Final = 100
"""Agents (or their tasks) per bulk create call."""
_BULK_WORKERS: Final = 4

S = LifecycleState


@dataclass
class Agent:
    """One simulated agent and what it did: its lease, transitions, events, memories."""

    agent_id: str
    lease: PortLease | None = None
    transitions: list[TransitionResult] = field(default_factory=list)
    published: list[str] = field(default_factory=list)
    memories: list[str] = field(default_factory=list)
    failure: str | None = None


class Fleet:
    """The simulated agents of one demo run, what they did, and the timings."""

    def __init__(self, zen: Zen, options: DemoOptions, progress: Progress) -> None:
        self.zen = zen
        self.options = options
        self.progress = progress
        self.rec = Recorder()
        self.agents = [Agent(f"agent-{i:05d}") for i in range(options.agents)]
        self.task_ids: list[str] = []
        self.claims: Counter[str] = Counter()
        self.claimed_by: dict[str, str] = {}
        self.live_ports: dict[tuple[str, int], str] = {}
        self.handed_out = 0
        self.duplicates: list[str] = []
        self.search_misses: list[str] = []
        self.snapshot: dict[tuple[str, int], list[str]] = {}
        self.port_stats: PortStats | None = None
        self.phases: list[tuple[str, float]] = []

    # --- phases ---------------------------------------------------------------------------
    async def run(self) -> None:
        async with background(demo_heartbeats=self._heartbeats()):
            await self._phase("create", self._create, chunk=BULK, workers=_BULK_WORKERS)
            await self._phase("start", _each(self._start))
            await self._phase("tasks", self._create_tasks, chunk=BULK, workers=_BULK_WORKERS)
            await self._phase("work", _each(self._work))
            await self._phase("leases", _each(self._snapshot), everyone=True)
            self.port_stats = await self.rec.timed("port.stats", self.zen.ports.stats())
            await self._phase("stop", _each(self._stop))

    async def _phase(
        self,
        name: str,
        step: Callable[[list[Agent]], Awaitable[None]],
        *,
        chunk: int = 1,
        workers: int | None = None,
        everyone: bool = False,
    ) -> None:
        """Run ``step`` on every ``chunk`` of the agents still alive (``everyone``: of all
        agents), at most ``workers`` (default: the concurrency) at once; a ZenError ends the
        run of the chunk's agents."""
        alive = [a for a in self.agents if everyone or a.failure is None]
        chunks = [alive[i : i + chunk] for i in range(0, len(alive), chunk)]
        queue = iter(chunks)
        self.progress.start(name, len(alive))

        async def worker() -> None:
            for batch in queue:  # one shared iterator: each chunk goes to exactly one worker
                try:
                    await step(batch)
                except ZenError as exc:
                    for agent in batch:
                        agent.failure = agent.failure or f"{name}: {type(exc).__name__}: {exc}"
                self.progress.advance(len(batch))

        async with asyncio.TaskGroup() as group:
            for _ in range(min(workers or self.options.concurrency, len(chunks))):
                group.create_task(worker())
        self.phases.append((name, self.progress.finish()))

    async def _create(self, batch: list[Agent]) -> None:
        specs = [
            AgentSpec(agent_type=AGENT_TYPE, agent_id=a.agent_id, metadata={"demo": True})
            for a in batch
        ]
        await self.rec.timed(
            "agent.create (bulk)", self.zen.agents.create_agents(specs), items=len(specs)
        )

    async def _start(self, agent: Agent) -> None:
        await self._transition(agent, S.READY)
        lease = await self.rec.timed("port.allocate", self.zen.ports.allocate(agent.agent_id))
        agent.lease = lease
        self._hold(lease.host, lease.port, agent.agent_id)
        await self.rec.timed(
            "agent.heartbeat",
            self.zen.agents.heartbeat(agent.agent_id, memory_mb=64.0, cpu_percent=1.0),
        )

    async def _create_tasks(self, batch: list[Agent]) -> None:
        specs = [
            TaskSpec(agent_type=AGENT_TYPE, request={"for": a.agent_id, "cycle": c})
            for a in batch
            for c in range(self.options.cycles)
        ]
        tasks = await self.rec.timed(
            "task.create (bulk)", self.zen.tasks.create_tasks(specs), items=len(specs)
        )
        self.task_ids.extend(t.task_id for t in tasks)

    async def _work(self, agent: Agent) -> None:
        for cycle in range(self.options.cycles):
            if not await self._cycle(agent, cycle):
                return

    async def _cycle(self, agent: Agent, cycle: int) -> bool:
        zen, rec, me = self.zen, self.rec, agent.agent_id
        await self._transition(agent, S.RUNNING)
        task = await rec.timed("task.claim", zen.tasks.claim_next(AGENT_TYPE, me))
        if task is None or task.agent_port is None:
            agent.failure = f"work: cycle {cycle} found no task to claim (or one without a port)"
            return False
        self.claims[task.task_id] += 1
        self.claimed_by[task.task_id] = me
        self._hold(zen.ports.host, task.agent_port, f"{me} for task {task.task_id}")
        await rec.timed("task.start", zen.tasks.update_status(task.task_id, TaskStatus.RUNNING))
        text = f"{me} cycle {cycle} worked on task {task.task_id} of the demo fleet"
        entry = await rec.timed(
            "memory.store", zen.memory.store_memory(me, text, tags=("demo",), metadata={"c": cycle})
        )
        agent.memories.append(entry.memory_id)
        hits = await rec.timed(
            "memory.search", zen.memory.search_memories(me, text, limit=5, include_shared=False)
        )
        if not any(
            h.memory_entry.memory_id == entry.memory_id and h.similarity_score > 0.999 for h in hits
        ):
            self.search_misses.append(entry.memory_id)
        event_id = await rec.timed(
            "event.publish",
            zen.events.publish_agent_event(me, "demo_step", {"cycle": cycle, "task": task.task_id}),
        )
        agent.published.append(event_id)
        await rec.timed("agent.heartbeat", zen.agents.heartbeat(me, cpu_percent=50.0))
        # Stop tracking the port before it is released: once released it may be reissued.
        self.live_ports.pop((zen.ports.host, task.agent_port), None)
        await rec.timed(
            "task.complete", zen.tasks.complete(task.task_id, {"memory": entry.memory_id})
        )
        await self._transition(agent, S.READY)
        return True

    async def _snapshot(self, agent: Agent) -> None:
        for lease in await self.rec.timed("port.leases", self.zen.ports.leases(agent.agent_id)):
            self.snapshot.setdefault((lease.host, lease.port), []).append(agent.agent_id)

    async def _stop(self, agent: Agent) -> None:
        await self._transition(agent, S.TERMINATING)
        if agent.lease is not None:
            self.live_ports.pop((agent.lease.host, agent.lease.port), None)
            if not await self.rec.timed("port.release", self.zen.ports.release(agent.lease)):
                agent.failure = f"stop: port {agent.lease.port} was no longer leased to it"
        await self._transition(agent, S.TERMINATED)

    async def _transition(self, agent: Agent, to: LifecycleState) -> None:
        result = await self.rec.timed(
            "agent.transition", self.zen.agents.transition(agent.agent_id, to, reason="demo")
        )
        agent.transitions.append(result)

    def _hold(self, host: str, port: int, holder: str) -> None:
        """Note a lease handed out; a port already held by a live lease is a duplicate."""
        self.handed_out += 1
        other = self.live_ports.setdefault((host, port), holder)
        if other != holder:
            self.duplicates.append(f"{host}:{port} held by {other} and {holder}")

    async def _heartbeats(self) -> None:
        """Renew every live agent's liveness and port leases, as a fleet's heartbeats do."""
        while True:
            await asyncio.sleep(self.options.heartbeat_interval)
            ids = [a.agent_id for a in self.agents if a.failure is None and a.lease is not None]
            if not ids:
                continue
            try:
                await self.rec.timed(
                    "agent.heartbeat (bulk)", self.zen.agents.heartbeats(ids), items=len(ids)
                )
            except ZenError as exc:
                log.warning("demo_heartbeats_failed", error=str(exc))

    # --- clean-up -------------------------------------------------------------------------
    async def cleanup(self) -> None:
        """Delete the demo's memories, tasks and agents (their audit trails stay)."""
        await self._phase("cleanup", _each(self._delete))
        queue = iter(self.task_ids)

        async def worker() -> None:
            for task_id in queue:
                await self.rec.timed("task.delete", self.zen.tasks.delete_task(task_id))

        async with asyncio.TaskGroup() as group:
            for _ in range(min(self.options.concurrency, len(self.task_ids))):
                group.create_task(worker())

    async def _delete(self, agent: Agent) -> None:
        for memory_id in agent.memories:
            await self.rec.timed("memory.delete", self.zen.memory.delete_memory(memory_id))
        await self.rec.timed("agent.delete", self.zen.agents.delete_agent(agent.agent_id))


def _each(
    step: Callable[[Agent], Awaitable[None]],
) -> Callable[[list[Agent]], Awaitable[None]]:
    """A per-agent step as a step over a chunk of agents."""

    async def run(batch: list[Agent]) -> None:
        for agent in batch:
            await step(agent)

    return run
