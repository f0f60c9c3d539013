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
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
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
    apply_entry,
    check_transition,
    check_version,
    dump_changes,
    journaled_result,
    known_key,
    offline_heartbeat,
    restore_changes,
    view,
)
from zen_async.agents._records import (
    check_changes,
    gauge_args,
    problems,
    record_doc,
    spec_doc,
    text,
    with_changes,
)
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
    BackendError,
    ConflictError,
    NotFoundError,
    ValidationError,
    ZenError,
)
from zen_async.events import EventLog
from zen_async.events.envelope import agent_shard, validate_agent_id
from zen_async.metrics.names import STATE_OPERATION_LATENCY
from zen_async.ops import new_op_id
from zen_async.redact import Redactor
from zen_async.store import Arg, Keyspace, RedisManager

if TYPE_CHECKING:
    from zen_async.agents.ports import PortAllocator
    from zen_async.metrics import Metrics

__all__ = ["AgentListPage", "AgentStateManager"]

log = structlog.get_logger(__name__)

_REAP_BATCH: Final = 100


@dataclass(frozen=True, slots=True)
class AgentListPage:
    """A page of :meth:`AgentStateManager.list_agents_page`."""

    agents: list[AgentRecord]
    next_cursor: str | None
    """Pass it back for the next page; None: there is none."""
    skipped: int = 0
    """Records of this page left out because they cannot be decoded (written by another
    version or by hand; each logged as ``agent_record_undecodable``)."""


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
        self._op_ttl_ms = int(redis.settings.redis_op_marker_ttl * 1000)
        self._max_value = redis.settings.redis_max_value_bytes
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

    def _op_key(self, agent_id: str, op_id: str) -> str:
        """The marker of one operation on ``agent_id`` (same hash tag as the agent)."""
        return self._prefix(self._shard(agent_id)) + "op:" + op_id

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
            raise ValidationError(f"invalid agent: {problems(exc)}") from None
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
        return agent_id, spec, spec_doc(spec, self._max_value)

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        """The agent, or None if it does not exist. While Redis is unreachable: the record
        this process saw last, with ``stale=True``.

        Raises:
            ValidationError: a malformed id.
            BackendError: the stored record cannot be decoded (written by another version or
                by hand); the message names the agent and what is wrong.
            DegradedError: Redis is unreachable and this process never saw the agent.
        """

        async def fetch() -> AgentRecord | None:
            return (await self.get_agents([agent_id]))[0]

        def offline(_base: AgentRecord | None) -> AgentRecord | None:
            return view(self._degraded, self._tenant, agent_id)

        return await self._degraded.read(known_key(self._tenant, agent_id), fetch, offline)

    async def get_agents(self, agent_ids: Sequence[str]) -> list[AgentRecord | None]:
        """Many agents, None where absent: one Lua call per chunk of agents of one shard.

        A stored record that cannot be decoded (written by another version or by hand)
        fails the call, naming it, rather than pass for absent; :meth:`list_agents_page`
        skips such records instead, and counts them.

        Raises:
            ValidationError: a malformed id (then nothing is read).
            BackendError: a call failed, or a record cannot be decoded (the first one found
                is named, with how many there were).
        """
        records, bad = await self._read(agent_ids)
        if len(bad) == 1:
            raise bad[0]
        if bad:
            raise BackendError(f"{bad[0]} (and {len(bad) - 1} more agent(s) of this call)")
        return records

    async def _read(
        self, agent_ids: Sequence[str]
    ) -> tuple[list[AgentRecord | None], list[BackendError]]:
        """The records (None where absent or undecodable) and the undecodable ones' errors,
        each logged."""
        for agent_id in agent_ids:
            validate_agent_id(agent_id)
        with self._timed("get"):
            records, bad = await self._batches.get(agent_ids)
        for error in bad:
            log.warning("agent_record_undecodable", tenant=self._tenant, error=str(error))
        return records, bad

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
        op_id: str | None = None,
    ) -> AgentRecord:
        """Change some fields of an agent (the others stay) and bump its version.

        With ``expected_version`` the write happens only at that version; without it, a
        concurrent write makes this call re-read and apply its change again. The write is
        applied at most once per ``op_id`` (default: a new one): calling again with the same
        op id, after a timeout say, returns the agent without changing it again. While Redis
        is unreachable the update is checked against the last-known view, journaled, and
        answered with the view it produces (``stale=True, provisional=True``; ``version``
        stays the last one the server gave).

        Raises:
            ValidationError: a field the model refuses (named), metadata or
                allocated_resources that are not JSON objects without NaN or infinity of at
                most REDIS_MAX_VALUE_BYTES as JSON, or a bad op id. Nothing was written.
            NotFoundError: no such agent.
            ConflictError: the stored version is not ``expected_version``.
            DegradedError: Redis is unreachable and this process never saw the agent.
            BackendError: Redis failed mid-call; ``maybe_applied`` says whether the write
                may have happened, and ``op_id`` which op id to retry with.
        """
        op_id = new_op_id(op_id)
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
        changes = check_changes(changes, self._max_value)
        validate_agent_id(agent_id)
        done = await self._degraded.attempt(
            lambda: self._update_now(agent_id, changes, expected_version, op_id)
        )
        if done is not OFFLINE:
            return done
        current = check_version(
            self._degraded, self._tenant, agent_id, expected_version, "an update"
        )
        record_doc(with_changes(current, changes), self._max_value)  # refused before journaling
        entry = await self._degraded.accept(
            "agents.update",
            self._tenant,
            {
                "agent_id": agent_id,
                "changes": dump_changes(changes),
                "expected_version": expected_version,
            },
            op_id=op_id,
        )
        return apply_entry(current, entry).model_copy(update={"provisional": True})

    async def _update_now(
        self,
        agent_id: str,
        changes: dict[str, Any],
        expected_version: int | None,
        op_id: str,
    ) -> AgentRecord:
        """Read the agent from the server (never the last-known view), apply ``changes`` and
        write it back at the version read, once per ``op_id``."""
        while True:
            with self._maybe_applied("update", op_id, sent=False):
                current = (await self.get_agents([agent_id]))[0]
            if current is None:
                raise NotFoundError(f"agent {agent_id!r} does not exist")
            updated = with_changes(current, changes)
            doc = record_doc(updated, self._max_value)
            at = current.version if expected_version is None else expected_version
            try:
                with self._maybe_applied("update", op_id):
                    version = int(
                        await self._ks.run_script(
                            "agent_update",
                            [self._agent_key(agent_id), self._op_key(agent_id, op_id)],
                            [agent_id, at, doc, self._op_ttl_ms],
                        )
                    )
            except ConflictError as exc:
                if expected_version is not None:
                    raise explain(exc, agent_id) from None
                continue  # lost a race: read again and re-apply this change
            if version != current.version + 1:  # this op was applied before: read what it made
                found = (await self.get_agents([agent_id]))[0]
                if found is None:
                    raise NotFoundError(f"agent {agent_id!r} does not exist")
                return found
            updated = updated.model_copy(
                update={"version": version, "updated_at": datetime.now(UTC)}
            )
            self._degraded.remember(known_key(self._tenant, agent_id), updated)
            return updated

    @contextlib.contextmanager
    def _maybe_applied(self, what: str, op_id: str, *, sent: bool = True) -> Iterator[None]:
        """Name ``op_id`` in a BackendError raised inside, and whether the write may have been
        applied (``sent``: the script was sent and its reply lost)."""
        try:
            yield
        except BackendError as exc:
            if exc.op_id is not None:
                raise
            raise exc.with_op(op_id, what=f"this {what}", sent=sent) from exc.__cause__

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
        op_id: str | None = None,
    ) -> TransitionResult:
        """Move an agent to ``to_state`` in one atomic step (state, version, indexes and a
        ``state_changed`` event in its shard stream and audit trail), at most once per
        ``op_id`` (default: a new one): calling again with the same op id returns the first
        call's result and changes nothing. While Redis is unreachable it is checked against
        the last-known view, journaled, and answered ``provisional`` (``event_id`` is then
        ``journal:<op id>``, ``version`` the last one the server gave).

        Raises:
            ValidationError: an unknown state or a bad id.
            NotFoundError: no such agent.
            ConflictError: the stored version is not ``expected_version``.
            InvalidTransitionError: the table does not allow it; names from, to and the
                allowed targets. Nothing was written.
            DegradedError: Redis is unreachable and this process never saw the agent.
            BackendError: Redis failed mid-call; ``maybe_applied`` says whether the
                transition may have happened, and ``op_id`` which op id to retry with.
        """
        op_id = new_op_id(op_id)
        keys, args, target = self._transition_call(agent_id, to_state, expected_version, reason)
        keys.append(self._op_key(agent_id, op_id))
        args.append(self._op_ttl_ms)
        result = await self._degraded.attempt(
            lambda: self._transition_now(agent_id, keys, args, target, op_id)
        )
        if result is not OFFLINE:
            return result
        before = check_transition(self._degraded, self._tenant, agent_id, target, expected_version)
        entry = await self._degraded.accept(
            "agents.transition",
            self._tenant,
            {
                "agent_id": agent_id,
                "to_state": target.value,
                "expected_version": expected_version,
                "reason": reason,
            },
            op_id=op_id,
        )
        return journaled_result(before, target, entry.op_id)

    async def _transition_now(
        self,
        agent_id: str,
        keys: list[str],
        args: list[Arg],
        target: LifecycleState,
        op_id: str,
    ) -> TransitionResult:
        try:
            with self._timed("transition"), self._maybe_applied("transition", op_id):
                reply = await self._ks.run_script("agent_transition", keys, args)
        except ZenError as exc:
            raise explain(exc, agent_id) from None
        result = transition_result(agent_id, target, reply)
        key = known_key(self._tenant, agent_id)
        base = self._degraded.recall(key)
        if isinstance(base, AgentRecord) and base.version < result.version:
            self._degraded.remember(
                key, base.model_copy(update={"lifecycle_state": target, "version": result.version})
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
            ValidationError: a bad id, or a gauge that is not a finite number >= 0
                (``connections``: an integer).
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
            ValidationError: a malformed id or gauge (then no heartbeat was recorded).
        """
        gauges = gauge_args(memory_mb, cpu_percent, connections)
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
        """Apply a transition, update or heartbeat journaled during an outage, exactly once:
        with the op id it was journaled under, which the script records in the step that
        applies it (see ``_offline``). Reads and writes the server only, never the
        last-known view.

        Raises:
            ZenError: the server refuses it now (another instance moved the agent, or
                deleted it, meanwhile); degraded mode records that as an event.
        """
        a = entry.args
        if entry.kind == "agents.heartbeat":
            await self._batches.heartbeat(a["agent_ids"], a["gauges"])
            return
        agent_id = a["agent_id"]
        expected = a.get("expected_version")
        if entry.kind == "agents.transition":
            target = LifecycleState(a["to_state"])
            keys, args, _ = self._transition_call(agent_id, target, expected, a["reason"])
            keys.append(self._op_key(agent_id, entry.op_id))
            args.append(self._op_ttl_ms)
            await self._transition_now(agent_id, keys, args, target, entry.op_id)
        else:
            changes = restore_changes(a["changes"])
            await self._update_now(agent_id, changes, expected, entry.op_id)

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
        """A page of agents, by id within each shard, from the indexes, and the cursor of the
        next page (None: there is none). Records that cannot be decoded are left out (see
        :meth:`list_agents_page`, which counts them).

        Raises:
            ValidationError: a bad state, type, cursor or limit.
        """
        page = await self.list_agents_page(
            state=state, agent_type=agent_type, cursor=cursor, limit=limit
        )
        return page.agents, page.next_cursor

    async def list_agents_page(
        self,
        *,
        state: LifecycleState | str | None = None,
        agent_type: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> AgentListPage:
        """A page of agents, by id within each shard, from the indexes. Pass its
        ``next_cursor`` to get the next page. A stored record that cannot be decoded
        (written by another version or by hand) is skipped, logged as
        ``agent_record_undecodable`` and counted in ``skipped``: one bad record never
        breaks a listing.

        Raises:
            ValidationError: a bad state, type, cursor or limit (1 to 10000).
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValidationError(
                f"limit={limit!r} is out of range: use an integer from 1 to 10000"
            )
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
        records, bad = await self._read(found)
        more = shard < self.shards
        return AgentListPage(
            agents=[r for r in records if r is not None],
            next_cursor=f"{shard}:{after or ''}" if more and found else None,
            skipped=len(bad),
        )

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
        """Agents of ``agent_type`` in state ``ready`` (records that cannot be decoded are
        skipped, as by :meth:`list_agents_page`)."""
        page = await self.list_agents_page(
            state=LifecycleState.READY, agent_type=agent_type, limit=limit
        )
        return page.agents
