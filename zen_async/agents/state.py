"""AgentStateManager (``zen.agents``): agent records, the lifecycle state machine, per-shard
indexes, liveness leases and the reaper, and bulk operations for fleets of agents.

Agents are spread over ``REDIS_AGENT_SHARDS`` shards; an agent's hash, its shard's indexes,
lease set and event stream share the hash tag ``{z<shard>}``, so every step below is one Lua
call on one slot. Lists and counts read the indexes, never SCAN.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import orjson
import structlog

from zen_async._tasks import background
from zen_async.agents.models import (
    ACTIVE_STATES,
    TRANSITIONS,
    AgentCapabilities,
    AgentPerformance,
    AgentRecord,
    AgentSpec,
    LifecycleState,
    TransitionResult,
    sources_of,
    validate_agent_type,
)
from zen_async.errors import (
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
    ZenError,
)
from zen_async.events import EventLog
from zen_async.events.envelope import (
    agent_shard,
    shard_stream_name,
    shard_tag,
    validate_agent_id,
)
from zen_async.metrics.names import COORDINATION_EVENTS, STATE_OPERATION_LATENCY
from zen_async.store import Arg, Keyspace, Message, Reconnected, RedisManager

if TYPE_CHECKING:
    from zen_async.agents.ports import PortAllocator
    from zen_async.metrics import Metrics

__all__ = ["AgentStateManager"]

log = structlog.get_logger(__name__)

_REAP_BATCH: Final = 100
_DOC_FIELDS: Final = (
    "capabilities",
    "current_task_id",
    "allocated_resources",
    "performance",
    "metadata",
)


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
        self.shards = redis.settings.redis_agent_shards
        self._lease_ms = int(lease_ttl * 1000)
        self._reap_interval = reap_interval
        self._grace_ms = int(release_grace * 1000)
        self._waiters: dict[str, list[tuple[frozenset[LifecycleState], asyncio.Future[str]]]] = {}
        self._listening = asyncio.Event()
        self._host = socket.gethostname()

    def _timed(self, operation: str) -> contextlib.AbstractContextManager[object]:
        """Time a state operation into the metrics (a no-op without metrics)."""
        if self._metrics is None:
            return contextlib.nullcontext()
        return self._metrics.time(STATE_OPERATION_LATENCY, operation=operation)

    # --- keys -----------------------------------------------------------------------------
    def _prefix(self, shard: int) -> str:
        return self._ks.key(shard_tag(shard)) + ":"

    def _shard(self, agent_id: str) -> int:
        return agent_shard(agent_id, self.shards)

    def _agent_key(self, agent_id: str) -> str:
        return self._prefix(self._shard(agent_id)) + "agent:" + agent_id

    def _hint_args(self, shard: int) -> list[str | int]:
        return [self._events.audit_max_len, self._events.agent_channel, shard_stream_name(shard)]

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
        spec = AgentSpec(
            agent_type=agent_type,
            agent_id=agent_id,
            capabilities=capabilities or AgentCapabilities(),
            metadata=metadata or {},
            host=host,
            pid=pid,
        )
        return (await self.create_agents([spec]))[0]

    async def create_agents(self, specs: Sequence[AgentSpec]) -> list[AgentRecord]:
        """Create many agents, pipelined in batches (slot-aware on Cluster).

        Raises:
            ValidationError: any bad spec (then nothing is created).
            ConflictError: the first id that already existed (the others were created).
        """
        prepared = [self._prepare(spec) for spec in specs]
        calls = [
            (
                [self._agent_key(agent_id)],
                [
                    self._prefix(self._shard(agent_id)),
                    agent_id,
                    spec.agent_type,
                    doc,
                    spec.host or self._host,
                    "" if spec.pid is None else spec.pid,
                    self._lease_ms,
                    *self._hint_args(self._shard(agent_id)),
                ],
            )
            for agent_id, spec, doc in prepared
        ]
        with self._timed("create"):
            replies = await self._ks.run_script_many("agent_create", calls)
        records = []
        for (agent_id, spec, _), (version, created_ms, _event) in zip(
            prepared, replies, strict=True
        ):
            created = _from_ms(created_ms)
            records.append(
                AgentRecord(
                    agent_id=agent_id,
                    agent_type=spec.agent_type,
                    lifecycle_state=LifecycleState.INITIALIZING,
                    capabilities=spec.capabilities,
                    metadata=spec.metadata,
                    created_at=created,
                    updated_at=created,
                    version=int(version),
                    host=spec.host or self._host,
                    pid=spec.pid,
                    performance=AgentPerformance(last_activity=created),
                )
            )
        return records

    def _prepare(self, spec: AgentSpec) -> tuple[str, AgentSpec, bytes]:
        agent_id = validate_agent_id(spec.agent_id or uuid.uuid4().hex)
        validate_agent_type(spec.agent_type)
        doc = _encode_doc(
            {
                "capabilities": spec.capabilities.model_dump(mode="json"),
                "current_task_id": None,
                "allocated_resources": {},
                "performance": AgentPerformance().model_dump(mode="json"),
                "metadata": spec.metadata,
            }
        )
        return agent_id, spec, doc

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        """The agent, or None if it does not exist.

        Raises:
            ValidationError: a malformed id.
        """
        return (await self.get_agents([agent_id]))[0]

    async def get_agents(self, agent_ids: Sequence[str]) -> list[AgentRecord | None]:
        """Many agents in one pipelined round trip per batch; None where absent."""
        for agent_id in agent_ids:
            validate_agent_id(agent_id)
        with self._timed("get"):
            replies = await self._ks.batch(
                [("HGETALL", self._agent_key(a)) for a in agent_ids], idempotent=True
            )
        return [_record(a, r) if r else None for a, r in zip(agent_ids, replies, strict=True)]

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
        concurrent write makes this call re-read and apply its change again.

        Raises:
            NotFoundError: no such agent.
            ConflictError: the stored version is not ``expected_version``.
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
            changes["metadata"] = metadata
        while True:
            current = await self.get_agent(agent_id)
            if current is None:
                raise NotFoundError(f"agent {agent_id!r} does not exist")
            if expected_version is not None and current.version != expected_version:
                raise ConflictError(
                    f"agent {agent_id} is at version {current.version}, expected {expected_version}"
                )
            updated = current.model_copy(update=changes)
            doc = _encode_doc({f: _dump(getattr(updated, f)) for f in _DOC_FIELDS})
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
            return updated.model_copy(
                update={"version": int(version), "updated_at": datetime.now(UTC)}
            )

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
        """
        keys, args, target = self._transition_call(agent_id, to_state, expected_version, reason)
        try:
            with self._timed("transition"):
                reply = await self._ks.run_script("agent_transition", keys, args)
        except ZenError as exc:
            raise _explain(exc, agent_id) from None
        return _transition_result(agent_id, target, reply)

    async def transition_many(
        self,
        transitions: Sequence[tuple[str, LifecycleState | str, int | None]],
        *,
        reason: str | None = None,
    ) -> list[TransitionResult | ZenError]:
        """Many transitions, each atomic, pipelined in batches. Returns, in order, each
        result or the typed error of the one that failed (the others still happened)."""
        prepared = [
            self._transition_call(a, to, expected, reason) for a, to, expected in transitions
        ]
        with self._timed("transition_many"):
            replies = await self._ks.run_script_many(
                "agent_transition",
                [(keys, args) for keys, args, _ in prepared],
                raise_on_error=False,
            )
        results: list[TransitionResult | ZenError] = []
        for (agent_id, _, _), (_, _, target), reply in zip(
            transitions, prepared, replies, strict=True
        ):
            if isinstance(reply, ZenError):
                results.append(_explain(reply, agent_id))
            else:
                results.append(_transition_result(agent_id, target, reply))
        return results

    def _transition_call(
        self,
        agent_id: str,
        to_state: LifecycleState | str,
        expected: int | None,
        reason: str | None,
    ) -> tuple[list[str], list[Arg], LifecycleState]:
        target = _state(to_state)
        validate_agent_id(agent_id)
        shard = self._shard(agent_id)
        args: list[Arg] = [
            self._prefix(shard),
            agent_id,
            target.value,
            _SOURCES[target],
            "" if expected is None else expected,
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
        wanted = frozenset(_state(s) for s in states)
        validate_agent_id(agent_id)
        if not self._background_listener:  # a tenant view: listen for the length of the wait
            async with background(agent_hints=self.listen()):
                return await self._wait(agent_id, wanted, within=timeout)
        return await self._wait(agent_id, wanted, within=timeout)

    async def _wait(
        self, agent_id: str, wanted: frozenset[LifecycleState], *, within: float
    ) -> LifecycleState:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        entry = (wanted, future)
        self._waiters.setdefault(agent_id, []).append(entry)
        try:
            async with asyncio.timeout(within):
                await self._listening.wait()  # subscribed: no hint can slip by from here
                record = await self.get_agent(agent_id)
                if record is None:
                    raise NotFoundError(f"agent {agent_id!r} does not exist")
                if record.lifecycle_state in wanted:
                    return record.lifecycle_state
                return LifecycleState(await future)
        finally:
            waiters = self._waiters.get(agent_id, [])
            if entry in waiters:
                waiters.remove(entry)
            if not waiters:
                self._waiters.pop(agent_id, None)

    async def listen(self) -> None:
        """Dispatch state hints to :meth:`wait_for_state` callers until cancelled."""
        async with self._redis.subscribe(self._events.agent_channel) as hints:
            self._listening.set()
            try:
                async for item in hints:
                    if isinstance(item, Reconnected):
                        await self._catch_up()
                    elif isinstance(item, Message):
                        self._dispatch(item.data)
            finally:
                self._listening.clear()

    def _dispatch(self, data: bytes) -> None:
        try:
            hint = orjson.loads(data)
            agent_id, to = hint.get("agent"), hint.get("to")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if self._metrics is not None:
            self._metrics.count(COORDINATION_EVENTS, type=str(hint.get("type", "unknown")))
        if to:
            self._wake(agent_id, to)

    def _wake(self, agent_id: str, state: str) -> None:
        for wanted, future in self._waiters.get(agent_id, []):
            if not future.done() and state in wanted:
                future.set_result(state)

    async def _catch_up(self) -> None:
        """After a reconnect, read the stored state of every awaited agent (hints sent
        while disconnected are gone; the state and its stream are not)."""
        agent_ids = list(self._waiters)
        for agent_id, record in zip(agent_ids, await self.get_agents(agent_ids), strict=True):
            if record is not None:
                self._wake(agent_id, record.lifecycle_state.value)

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
        """Heartbeats for many agents, pipelined; each result as :meth:`heartbeat`'s (or
        its error)."""
        gauges = ["" if v is None else str(v) for v in (memory_mb, cpu_percent, connections)]
        calls: list[tuple[list[str], list[Arg]]] = []
        for agent_id in agent_ids:
            validate_agent_id(agent_id)
            calls.append(
                (
                    [self._agent_key(agent_id)],
                    [self._prefix(self._shard(agent_id)), agent_id, self._lease_ms, *gauges],
                )
            )
        with self._timed("heartbeat"):
            replies = await self._ks.run_script_many("agent_heartbeat", calls, raise_on_error=False)
        if self._ports is not None:  # port leases live as long as their agent's
            await asyncio.gather(*(self._ports.renew_agent(a) for a in agent_ids))
        results: list[datetime | ZenError | None] = []
        for agent_id, reply in zip(agent_ids, replies, strict=True):
            if isinstance(reply, ZenError):
                results.append(_explain(reply, agent_id))
            else:
                results.append(None if int(reply) < 0 else _from_ms(reply))
        return results

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
            reaped.extend(_text(i) for i in ids)
            due = await self._ks.run_script("agent_reaped_due", [prefix + "reaped"], [_REAP_BATCH])
            if self._ports is not None:
                for agent_id in due:
                    await self._ports.release_agent(_text(agent_id))
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
        shard, after = _parse_cursor(cursor, self.shards)
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
            found.extend(_text(i) for i in ids)
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
        value = _state(state).value
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


# --- helpers ----------------------------------------------------------------------------------
_SOURCES: Final = {t: "," + ",".join(sources_of(t)) + "," for t in LifecycleState}
"""For each target state, the states it may be reached from, as the transition script reads
them (",a,b,")."""


def _transition_result(agent_id: str, target: LifecycleState, reply: Any) -> TransitionResult:
    from_state, version, event_id = reply
    return TransitionResult(
        agent_id=agent_id,
        from_state=LifecycleState(_text(from_state)),
        to_state=target,
        version=int(version),
        event_id=_text(event_id),
    )


def _state(value: LifecycleState | str) -> LifecycleState:
    try:
        return LifecycleState(value)
    except ValueError:
        raise ValidationError(
            f"unknown lifecycle state {value!r}: use one of {[s.value for s in LifecycleState]}"
        ) from None


def _explain(error: ZenError, agent_id: str) -> ZenError:
    """Give a script's terse error reply a message that says what was wrong."""
    if isinstance(error, InvalidTransitionError):
        parts = str(error).split()
        if len(parts) == 3:
            _, from_state, to_state = parts
            allowed = sorted(s.value for s in TRANSITIONS[LifecycleState(from_state)])
            return InvalidTransitionError(
                f"agent {agent_id} cannot go from {from_state} to {to_state}; "
                f"from {from_state} it may go to: {', '.join(allowed) or 'nothing (final)'}"
            )
    if isinstance(error, ConflictError):
        parts = str(error).split()
        if len(parts) == 3:
            return ConflictError(f"agent {agent_id} is at version {parts[1]}, expected {parts[2]}")
    if isinstance(error, NotFoundError):
        return NotFoundError(f"agent {agent_id!r} does not exist")
    return error


def _parse_cursor(cursor: str | None, shards: int) -> tuple[int, str | None]:
    if cursor is None:
        return 0, None
    shard_text, sep, after = cursor.partition(":")
    if not sep or not shard_text.isdigit() or int(shard_text) > shards:
        raise ValidationError(f"cursor {cursor!r} is not one list_agents returned")
    return int(shard_text), after or None


def _encode_doc(doc: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(doc)
    except TypeError as exc:
        raise ValidationError(f"agent metadata is not JSON-serialisable: {exc}") from exc


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def _record(agent_id: str, raw: dict[Any, Any]) -> AgentRecord:
    f = {_text(k): v for k, v in raw.items()}
    doc = orjson.loads(f["doc"])
    perf = dict(doc.get("performance") or {})
    for field, key, cast in (
        ("memory_mb", "mem", float),
        ("cpu_percent", "cpu", float),
        ("connections", "conns", int),
    ):
        if key in f:
            perf[field] = cast(_text(f[key]))
    perf["last_activity"] = _from_ms(f["seen"]) if "seen" in f else None
    pid = _text(f.get("pid", b""))
    return AgentRecord(
        agent_id=agent_id,
        agent_type=_text(f["type"]),
        lifecycle_state=LifecycleState(_text(f["state"])),
        capabilities=AgentCapabilities(**(doc.get("capabilities") or {})),
        current_task_id=doc.get("current_task_id"),
        allocated_resources=doc.get("allocated_resources") or {},
        performance=AgentPerformance(**perf),
        metadata=doc.get("metadata") or {},
        created_at=_from_ms(f["created"]),
        updated_at=_from_ms(f["updated"]),
        version=int(f["version"]),
        host=_text(f.get("host", b"")) or None,
        pid=int(pid) if pid else None,
    )


def _from_ms(value: Any) -> datetime:
    return datetime.fromtimestamp(int(float(_text(value))) / 1000, tz=UTC)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
