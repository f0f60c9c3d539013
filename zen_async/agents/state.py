"""AgentStateManager (``zen.agents``): agent records, the lifecycle state machine, per-shard
indexes, liveness leases and the reaper, and bulk operations for fleets of agents.

Agents are spread over ``REDIS_AGENT_SHARDS`` shards; an agent's hash, its shard's indexes,
lease set and event stream share the hash tag ``{z<shard>}``, so every step below is one Lua
call on one slot. Lists and counts read the indexes, never SCAN.

The bulk operations (create_agents, get_agents, transition_many, heartbeats) act on many
agents of a shard per Lua call (see ``_bulk``); waiting for states is in ``_waiting``, how a
record is stored and read back in ``_records``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import pydantic
import structlog

from zen_async._tasks import background
from zen_async.agents._bulk import AgentBatches, Prepared, or_empty
from zen_async.agents._lifecycle import (
    SOURCES,
    explain,
    lifecycle_state,
    parse_cursor,
    transition_result,
)
from zen_async.agents._offline import (
    already_applied,
    dump_changes,
    journaled_result,
    known_key,
    offline_heartbeat,
    offline_transition,
    offline_update,
    restore_changes,
    stale,
)
from zen_async.agents._records import record_doc, spec_doc, text
from zen_async.agents._waiting import StateWaiters
from zen_async.agents.models import (
    ACTIVE_STATES,
    AgentCapabilities,
    AgentPerformance,
    AgentRecord,
    AgentSpec,
    LifecycleState,
    TransitionResult,
    validate_agent_type,
)
from zen_async.degraded import OFFLINE, JournalEntry
from zen_async.errors import (
    ConflictError,
    NotFoundError,
    ValidationError,
    ZenError,
)
from zen_async.events import EventLog
from zen_async.events.envelope import agent_shard, validate_agent_id
from zen_async.metrics.names import STATE_OPERATION_LATENCY
from zen_async.redact import Redactor
from zen_async.store import Arg, Keyspace, RedisManager

if TYPE_CHECKING:
    from zen_async.agents.ports import PortAllocator
    from zen_async.metrics import Metrics

__all__ = ["AgentStateManager"]

log = structlog.get_logger(__name__)

_REAP_BATCH: Final = 100


class AgentStateManager:
    """Agents of one tenant.

    Args:
        redis: the core.
        events: the event log (the agents' shard streams and audit trails).
        ports: the port allocator, whose leases an agent's heartbeat renews and whose
            ports a deleted or reaped agent gives back.
        tenant: the tenant (default: the configured namespace).
        lease_ttl: seconds an agent stays alive without a heartbeat.
        reap_interval: seconds between reaper passes in :meth:`run`.
        release_grace: seconds after an agent was reaped before its ports are released.
        metrics: where operation latencies and coordination events are recorded.
        background_listener: True when the owner runs :meth:`run` (which listens for state
            hints); False for a tenant view, whose waits then listen for themselves.
    """

    def __init__(
        self,
        redis: RedisManager,
        events: EventLog,
        *,
        ports: PortAllocator | None = None,
        tenant: str | None = None,
        lease_ttl: float = 30.0,
        reap_interval: float = 5.0,
        release_grace: float = 30.0,
        metrics: Metrics | None = None,
        background_listener: bool = True,
    ) -> None:
        self._background_listener = background_listener
        self._redis = redis
        self._metrics = metrics
        self._events = events
        self._ports = ports
        self._ks: Keyspace = redis.keyspace("state", tenant=tenant)
        self._tenant = self._ks.tenant
        self._degraded = redis.degraded
        self._redactor = Redactor.from_settings(redis.settings)
        self.shards = redis.settings.redis_agent_shards
        self._lease_ms = int(lease_ttl * 1000)
        self._reap_interval = reap_interval
        self._grace_ms = int(release_grace * 1000)
        self._hints = StateWaiters(redis, events.agent_channel, self.get_agents, metrics)
        self._batches = AgentBatches(
            self._ks,
            events,
            ports=ports,
            shards=self.shards,
            lease_ms=self._lease_ms,
            host=socket.gethostname(),
        )

    def _timed(self, operation: str) -> contextlib.AbstractContextManager[object]:
        """Time a state operation into the metrics (a no-op without metrics)."""
        if self._metrics is None:
            return contextlib.nullcontext()
        return self._metrics.time(STATE_OPERATION_LATENCY, operation=operation)

    # --- keys -----------------------------------------------------------------------------
    def _prefix(self, shard: int) -> str:
        return self._batches.prefixes[shard]

    def _shard(self, agent_id: str) -> int:
        return agent_shard(agent_id, self.shards)

    def _agent_key(self, agent_id: str) -> str:
        return self._prefix(self._shard(agent_id)) + "agent:" + agent_id

    def _hint_args(self, shard: int) -> list[str | int]:
        return self._batches.hint_args(shard)

    # --- create / read / update / delete ----------------------------------------------------
    async def create_agent(
        self,
        agent_type: str,
        *,
        agent_id: str | None = None,
        capabilities: AgentCapabilities | None = None,
        metadata: dict[str, Any] | None = None,
        host: str | None = None,
        pid: int | None = None,
    ) -> AgentRecord:
        """Store a new agent in ``initializing`` and start its liveness lease.

        Raises:
            ValidationError: a bad id, type or metadata.
            ConflictError: an agent with this id exists.
        """
        try:
            spec = AgentSpec(
                agent_type=agent_type,
                agent_id=agent_id,
                capabilities=capabilities or AgentCapabilities(),
                metadata=metadata or {},
                host=host,
                pid=pid,
            )
        except pydantic.ValidationError as exc:
            raise ValidationError(f"invalid agent: {_problems(exc)}") from None
        return (await self.create_agents([spec]))[0]

    async def create_agents(self, specs: Sequence[AgentSpec]) -> list[AgentRecord]:
        """Create many agents: one Lua call per chunk of agents of one shard (one slot on
        Cluster), each agent created whole or not at all.

        Raises:
            ValidationError: any bad spec (then nothing is created).
            ConflictError: the first id that already existed (the others were created).
            BackendError: a call failed (the agents of the other calls were created).
        """
        prepared = [self._prepare(spec) for spec in specs]
        with self._timed("create"):
            created = await self._batches.create(prepared)
        for record in created:
            self._degraded.remember(known_key(self._tenant, record.agent_id), record)
        return created

    def _prepare(self, spec: AgentSpec) -> Prepared:
        agent_id = validate_agent_id(uuid.uuid4().hex if spec.agent_id is None else spec.agent_id)
        validate_agent_type(spec.agent_type)
        metadata = self._redactor.redact(spec.metadata, what="agent metadata")
        if metadata is not spec.metadata:
            spec = spec.model_copy(update={"metadata": metadata})
        return agent_id, spec, spec_doc(spec)

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        """The agent, or None if it does not exist. While Redis is unreachable: the record
        this process saw last, with ``stale=True``.

        Raises:
            ValidationError: a malformed id.
            DegradedError: Redis is unreachable and this process never saw the agent.
        """

        async def fetch() -> AgentRecord | None:
            return (await self.get_agents([agent_id]))[0]

        return await self._degraded.read(known_key(self._tenant, agent_id), fetch, stale)

    async def get_agents(self, agent_ids: Sequence[str]) -> list[AgentRecord | None]:
        """Many agents, None where absent: one Lua call per chunk of agents of one shard.

        Raises:
            ValidationError: a malformed id (then nothing is read).
            BackendError: a call failed.
        """
        for agent_id in agent_ids:
            validate_agent_id(agent_id)
        with self._timed("get"):
            return await self._batches.get(agent_ids)

    async def update_agent(
        self,
        agent_id: str,
        *,
        expected_version: int | None = None,
        capabilities: AgentCapabilities | None = None,
        current_task_id: str | None = None,
        clear_current_task: bool = False,
        allocated_resources: dict[str, Any] | None = None,
        performance: AgentPerformance | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> AgentRecord:
        """Change some fields of an agent (the others stay) and bump its version.

        With ``expected_version`` the write happens only at that version; without it, a
        concurrent write makes this call re-read and apply its change again. While Redis is
        unreachable the update is checked against the last-known record, journaled, and
        answered with the record it will produce (``stale=True``).

        Raises:
            ValidationError: metadata that is not a JSON object.
            NotFoundError: no such agent.
            ConflictError: the stored version is not ``expected_version``.
            DegradedError: Redis is unreachable and this process never saw the agent.
        """
        changes: dict[str, Any] = {}
        if capabilities is not None:
            changes["capabilities"] = capabilities
        if current_task_id is not None or clear_current_task:
            changes["current_task_id"] = current_task_id
        if allocated_resources is not None:
            changes["allocated_resources"] = allocated_resources
        if performance is not None:
            changes["performance"] = performance
        if metadata is not None:
            if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
                raise ValidationError(
                    f"metadata must be a JSON object (a dict with str keys), not "
                    f"{type(metadata).__name__}"
                )
            changes["metadata"] = self._redactor.redact(metadata, what="agent metadata")
        done = await self._degraded.attempt(
            lambda: self._update_now(agent_id, changes, expected_version)
        )
        if done is not OFFLINE:
            return done
        known, after = offline_update(
            self._degraded, self._tenant, agent_id, changes, expected_version
        )
        record_doc(after)  # not JSON-serialisable: refused before anything is journaled
        await self._degraded.accept(
            "agents.update",
            self._tenant,
            {"agent_id": agent_id, "based_on": known.version, "changes": dump_changes(changes)},
        )
        self._degraded.remember(known_key(self._tenant, agent_id), after)
        return after.model_copy(update={"stale": True})

    async def _update_now(
        self, agent_id: str, changes: dict[str, Any], expected_version: int | None
    ) -> AgentRecord:
        while True:
            current = await self.get_agent(agent_id)
            if current is None:
                raise NotFoundError(f"agent {agent_id!r} does not exist")
            if expected_version is not None and current.version != expected_version:
                raise ConflictError(
                    f"agent {agent_id} is at version {current.version}, expected {expected_version}"
                )
            updated = current.model_copy(update=changes)
            doc = record_doc(updated)
            try:
                version = await self._ks.run_script(
                    "agent_update",
                    [self._agent_key(agent_id)],
                    [agent_id, current.version, doc],
                )
            except ConflictError:
                if expected_version is not None:
                    raise
                continue  # lost a race: read again and re-apply this change
            updated = updated.model_copy(
                update={"version": int(version), "updated_at": datetime.now(UTC)}
            )
            self._degraded.remember(known_key(self._tenant, agent_id), updated)
            return updated

    async def delete_agent(self, agent_id: str) -> bool:
        """Remove an agent, its index entries and lease, and release its ports.
        Returns False if it did not exist. Its audit trail is kept."""
        validate_agent_id(agent_id)
        shard = self._shard(agent_id)
        if self._ports is not None:  # first, so the trail ends with the deletion
            await self._ports.release_agent(agent_id)
        event = await self._ks.run_script(
            "agent_delete",
            [self._agent_key(agent_id)],
            [self._prefix(shard), agent_id, *self._hint_args(shard)],
        )
        self._degraded.forget(known_key(self._tenant, agent_id))
        return event is not None

    # --- lifecycle --------------------------------------------------------------------------
    async def transition(
        self,
        agent_id: str,
        to_state: LifecycleState | str,
        *,
        expected_version: int | None = None,
        reason: str | None = None,
    ) -> TransitionResult:
        """Move an agent to ``to_state`` in one atomic step (state, version, indexes and a
        ``state_changed`` event in its shard stream and audit trail).

        Raises:
            ValidationError: an unknown state or a bad id.
            NotFoundError: no such agent.
            ConflictError: the stored version is not ``expected_version``.
            InvalidTransitionError: the table does not allow it; names from, to and the
                allowed targets. Nothing was written.
            DegradedError: Redis is unreachable and this process never saw the agent (with
                a last-known record, the transition is checked against it and journaled;
                its ``event_id`` is then ``journal:<op id>``).
        """
        keys, args, target = self._transition_call(agent_id, to_state, expected_version, reason)
        result = await self._degraded.attempt(
            lambda: self._transition_now(agent_id, keys, args, target)
        )
        if result is not OFFLINE:
            return result
        known, after = offline_transition(
            self._degraded, self._tenant, agent_id, target, expected_version
        )
        entry = await self._degraded.accept(
            "agents.transition",
            self._tenant,
            {
                "agent_id": agent_id,
                "to_state": target.value,
                "based_on": known.version,
                "reason": reason,
            },
        )
        self._degraded.remember(known_key(self._tenant, agent_id), after)
        return journaled_result(known, after, entry.op_id)

    async def _transition_now(
        self, agent_id: str, keys: list[str], args: list[Arg], target: LifecycleState
    ) -> TransitionResult:
        try:
            with self._timed("transition"):
                reply = await self._ks.run_script("agent_transition", keys, args)
        except ZenError as exc:
            raise explain(exc, agent_id) from None
        result = transition_result(agent_id, target, reply)
        key = known_key(self._tenant, agent_id)
        known = self._degraded.recall(key)
        if isinstance(known, AgentRecord):
            self._degraded.remember(
                key, known.model_copy(update={"lifecycle_state": target, "version": result.version})
            )
        return result

    async def transition_many(
        self,
        transitions: Sequence[tuple[str, LifecycleState | str, int | None]],
        *,
        reason: str | None = None,
    ) -> list[TransitionResult | ZenError]:
        """Many transitions, each atomic on its own: one Lua call per chunk of agents of one
        shard (the shards' calls run concurrently, with one message of hints each);
        transitions of one agent happen in the order given. Returns, in order, each result
        or the typed error of the one that failed (the others still happened).

        Raises:
            ValidationError: an unknown state or a bad id (then nothing happened).
        """
        agent_ids = [agent_id for agent_id, _, _ in transitions]
        targets = []
        for agent_id, to_state, _ in transitions:
            targets.append(lifecycle_state(to_state))
            validate_agent_id(agent_id)
        expected = [version for _, _, version in transitions]
        with self._timed("transition_many"):
            return await self._batches.transition(agent_ids, targets, expected, reason)

    def _transition_call(
        self,
        agent_id: str,
        to_state: LifecycleState | str,
        expected: int | None,
        reason: str | None,
    ) -> tuple[list[str], list[Arg], LifecycleState]:
        target = lifecycle_state(to_state)
        validate_agent_id(agent_id)
        shard = self._shard(agent_id)
        args: list[Arg] = [
            self._prefix(shard),
            agent_id,
            target.value,
            SOURCES[target],
            or_empty(expected),
            reason or "",
            *self._hint_args(shard),
        ]
        return [self._agent_key(agent_id)], args, target

    async def wait_for_state(
        self,
        agent_id: str,
        states: Iterable[LifecycleState | str],
        *,
        timeout: float,  # noqa: ASYNC109 - the API takes an explicit deadline
    ) -> LifecycleState:
        """Wait until the agent is in one of ``states``, reached from any instance.

        Woken by the pub/sub hint of the transition; after a reconnect of the subscription
        it catches up from the stored state; it never polls in a loop.

        Raises:
            TimeoutError: not reached within ``timeout`` seconds.
            NotFoundError: no such agent.
        """
        wanted = frozenset(lifecycle_state(s) for s in states)
        validate_agent_id(agent_id)
        if not self._background_listener:  # a tenant view: listen for the length of the wait
            async with background(agent_hints=self.listen()):
                return await self._hints.wait(agent_id, wanted, within=timeout)
        return await self._hints.wait(agent_id, wanted, within=timeout)

    async def listen(self) -> None:
        """Dispatch state hints to :meth:`wait_for_state` callers until cancelled."""
        await self._hints.listen()

    # --- liveness ---------------------------------------------------------------------------
    async def heartbeat(
        self,
        agent_id: str,
        *,
        memory_mb: float | None = None,
        cpu_percent: float | None = None,
        connections: int | None = None,
    ) -> datetime | None:
        """Refresh the agent's liveness lease (and its port leases) and record its gauges.
        Returns the lease expiry, or None for a terminated agent.

        Raises:
            NotFoundError: no such agent.
        """
        expiry = (
            await self.heartbeats(
                [agent_id], memory_mb=memory_mb, cpu_percent=cpu_percent, connections=connections
            )
        )[0]
        if isinstance(expiry, ZenError):
            raise expiry
        return expiry

    async def heartbeats(
        self,
        agent_ids: Sequence[str],
        *,
        memory_mb: float | None = None,
        cpu_percent: float | None = None,
        connections: int | None = None,
    ) -> list[datetime | ZenError | None]:
        """Heartbeats for many agents: one Lua call per chunk of agents of one shard, then
        their port leases renewed in one call per host. Each result as :meth:`heartbeat`'s,
        or its error.

        Raises:
            ValidationError: a malformed id (then no heartbeat was recorded).
        """
        gauges = ["" if v is None else str(v) for v in (memory_mb, cpu_percent, connections)]
        for agent_id in agent_ids:
            validate_agent_id(agent_id)
        expiries = await self._degraded.attempt(lambda: self._heartbeats_now(agent_ids, gauges))
        if expiries is not OFFLINE:
            return expiries
        await self._degraded.accept(
            "agents.heartbeat", self._tenant, {"agent_ids": list(agent_ids), "gauges": gauges}
        )
        expiry = offline_heartbeat(self._lease_ms)
        return [expiry for _ in agent_ids]

    async def _heartbeats_now(
        self, agent_ids: Sequence[str], gauges: list[str]
    ) -> list[datetime | ZenError | None]:
        with self._timed("heartbeat"):
            return await self._batches.heartbeat(agent_ids, gauges)

    async def replay_journaled(self, entry: JournalEntry) -> None:
        """Apply a transition, update or heartbeat journaled during an outage, exactly once
        (see ``_offline``).

        Raises:
            ConflictError: the agent's version moved on meanwhile for another reason; the
                server's state is kept.
            ZenError: the agent is gone, or the write is refused now.
        """
        a = entry.args
        agent_id = a.get("agent_id", "")
        if entry.kind == "agents.heartbeat":
            await self._batches.heartbeat(a["agent_ids"], a["gauges"])
            return
        if entry.kind == "agents.transition":
            target = LifecycleState(a["to_state"])
            changes: dict[str, Any] = {"lifecycle_state": target}
            keys, args, _ = self._transition_call(agent_id, target, a["based_on"], a["reason"])
            apply: Callable[[], Awaitable[object]] = functools.partial(
                self._transition_now, agent_id, keys, args, target
            )
        else:
            changes = restore_changes(a["changes"])
            apply = functools.partial(self._update_now, agent_id, changes, a["based_on"])
        try:
            await apply()
        except ConflictError:
            if not already_applied(await self.get_agent(agent_id), a["based_on"], changes):
                raise

    async def reap(self) -> list[str]:
        """One reaper pass over every shard: agents whose lease expired move to ``error``
        with reason ``heartbeat_lost``; agents reaped more than the grace period ago give
        their ports back. Safe to run on every instance at once. Returns the reaped ids."""
        reaped: list[str] = []
        for shard in range(self.shards):
            prefix = self._prefix(shard)
            ids = await self._ks.run_script(
                "agent_reap",
                [prefix + "leases"],
                [prefix, _REAP_BATCH, self._grace_ms, *self._hint_args(shard)],
            )
            reaped.extend(text(i) for i in ids)
            due = await self._ks.run_script("agent_reaped_due", [prefix + "reaped"], [_REAP_BATCH])
            if self._ports is not None:
                for agent_id in due:
                    await self._ports.release_agent(text(agent_id))
        if reaped:
            log.warning("agents_reaped", count=len(reaped), agents=reaped[:20])
        return reaped

    async def run(self) -> None:
        """Listen for state hints and reap expired agents every ``reap_interval`` seconds,
        until cancelled."""
        async with background(agent_hints=self.listen()):
            while True:
                await asyncio.sleep(self._reap_interval)
                try:
                    await self.reap()
                except ZenError as exc:
                    log.warning("agent_reap_failed", error=str(exc))

    # --- queries ----------------------------------------------------------------------------
    async def list_agents(
        self,
        *,
        state: LifecycleState | str | None = None,
        agent_type: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> tuple[list[AgentRecord], str | None]:
        """A page of agents, by id within each shard, from the indexes. Pass the returned
        cursor to get the next page; None means there is none.

        Raises:
            ValidationError: a bad state, type, cursor or limit.
        """
        if not 1 <= limit <= 10_000:
            raise ValidationError(f"limit {limit} is out of range: use 1 to 10000")
        suffix = self._index_suffix(state, agent_type)
        shard, after = parse_cursor(cursor, self.shards)
        found: list[str] = []
        while shard < self.shards and len(found) < limit:
            start = "-" if after is None else "(" + after
            ids = await self._ks.execute(
                "ZRANGE",
                self._prefix(shard) + suffix,
                start,
                "+",
                "BYLEX",
                "LIMIT",
                0,
                limit - len(found),
            )
            found.extend(text(i) for i in ids)
            if len(found) < limit:
                shard, after = shard + 1, None
            else:
                after = found[-1]
        records = [r for r in await self.get_agents(found) if r is not None]
        more = shard < self.shards
        return records, (f"{shard}:{after or ''}" if more and found else None)

    def _index_suffix(self, state: LifecycleState | str | None, agent_type: str | None) -> str:
        if agent_type is not None:
            validate_agent_type(agent_type)
        if state is None:
            return "idx:all" if agent_type is None else f"idx:type:{agent_type}"
        value = lifecycle_state(state).value
        return f"idx:st:{value}" if agent_type is None else f"idx:st:{value}:{agent_type}"

    async def count_by_state(self, *, agent_type: str | None = None) -> dict[LifecycleState, int]:
        """How many agents are in each state (one pipelined round of ZCARD)."""
        states = list(LifecycleState)
        commands = [
            ("ZCARD", self._prefix(shard) + self._index_suffix(s, agent_type))
            for shard in range(self.shards)
            for s in states
        ]
        counts = await self._ks.batch(commands, idempotent=True)
        totals = dict.fromkeys(states, 0)
        for i, count in enumerate(counts):
            totals[states[i % len(states)]] += int(count)
        return totals

    async def count_active(self) -> int:
        """Agents in an active state (not terminated, not in error): for the health status."""
        counts = await self.count_by_state()
        return sum(n for s, n in counts.items() if s in ACTIVE_STATES)

    async def get_available_agents(
        self, agent_type: str, *, limit: int = 1000
    ) -> list[AgentRecord]:
        """Agents of ``agent_type`` in state ``ready``."""
        records, _ = await self.list_agents(
            state=LifecycleState.READY, agent_type=agent_type, limit=limit
        )
        return records


def _problems(exc: pydantic.ValidationError) -> str:
    """pydantic's errors as one line: ``field: what was wrong; ...``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in exc.errors()
    )
