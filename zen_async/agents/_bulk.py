"""The bulk operations of the agent state manager: many agents per Lua call.

Agents are grouped by shard (every key of a shard shares the hash tag ``{z<shard>}``) and
each chunk of one shard's agents is one call of a script that acts on all of them, each
agent whole or not at all: ``agent_create``, ``agent_get``, ``agent_transition_many`` and
``agent_heartbeat``. The calls of one operation run concurrently, one shard per connection
(see :func:`~zen_async.agents._shards.run_chunks`), and their pub/sub hints travel as one
message per call. Arguments come validated from :class:`AgentStateManager`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from zen_async.agents._lifecycle import SOURCES, explain, script_error, transition_result
from zen_async.agents._records import (
    FIELDS,
    ReadCache,
    ValidatedDocs,
    from_ms,
    new_performance,
    new_record,
    record_from_row,
    text,
)
from zen_async.agents._shards import Chunk, run_chunks, shard_chunks
from zen_async.agents.models import AgentRecord, AgentSpec, LifecycleState, TransitionResult
from zen_async.errors import BackendError, ConflictError, NotFoundError, ZenError
from zen_async.events import EventLog
from zen_async.events.envelope import shard_stream_name, shard_tag
from zen_async.store import Arg, Keyspace

if TYPE_CHECKING:
    from zen_async.agents.ports import PortAllocator

__all__ = ["AgentBatches", "Prepared"]

Prepared = tuple[str, AgentSpec, bytes]
"""A validated new agent: its id, its spec and its JSON document."""


class AgentBatches:
    """The bulk script calls on one tenant's agents.

    Args:
        ks: the tenant's ``state`` keyspace.
        events: the event log (audit trail length, hint channel).
        ports: whose leases a heartbeat renews, or None.
        shards: REDIS_AGENT_SHARDS.
        lease_ms: the liveness lease.
        host: the host recorded for agents created without one.
    """

    def __init__(
        self,
        ks: Keyspace,
        events: EventLog,
        *,
        ports: PortAllocator | None,
        shards: int,
        lease_ms: int,
        host: str,
    ) -> None:
        self._ks = ks
        self._events = events
        self._ports = ports
        self._shards = shards
        self._lease_ms = lease_ms
        self._host = host
        self.prefixes = [ks.key(shard_tag(shard)) + ":" for shard in range(shards)]
        """Each shard's key prefix, ``<keyspace prefix>{z<shard>}:``."""
        self._docs = ValidatedDocs()

    def hint_args(self, shard: int) -> list[str | int]:
        """The last ARGV of every agent script: audit trail length, hint channel, stream."""
        return [self._events.audit_max_len, self._events.agent_channel, shard_stream_name(shard)]

    def chunks(self, agent_ids: Sequence[str]) -> list[Chunk]:
        """Positions of ``agent_ids`` by shard, one bulk script call's worth each."""
        return shard_chunks(agent_ids, self._shards, self._ks.batch_size)

    async def create(self, prepared: Sequence[Prepared]) -> list[AgentRecord]:
        """Create the agents (see ``AgentStateManager.create_agents``).

        Raises:
            ConflictError: the first id that already existed (the others were created).
            BackendError: a call failed (the agents of the other calls were created).
        """
        records: list[AgentRecord | None] = [None] * len(prepared)
        failed: list[ZenError] = []

        def build(chunk: Chunk) -> tuple[list[str], list[Arg]]:
            shard, positions = chunk
            prefix = self.prefixes[shard]
            args: list[Arg] = [prefix, self._lease_ms, *self.hint_args(shard)]
            keys = []
            for i in positions:
                agent_id, spec, doc = prepared[i]
                keys.append(prefix + "agent:" + agent_id)
                pid = "" if spec.pid is None else spec.pid
                args += (agent_id, spec.agent_type, doc, spec.host or self._host, pid)
            return keys, args

        def on_reply(chunk: Chunk, reply: Any) -> None:
            if isinstance(reply, ZenError):
                failed.append(reply)
                return
            created = from_ms(reply[0])
            performance = new_performance(created)
            for i, event in zip(chunk[1], reply[1:], strict=True):
                if event != 0:
                    agent_id, spec, _ = prepared[i]
                    host = spec.host or self._host
                    records[i] = new_record(spec, agent_id, host, created, performance)

        chunks = self.chunks([agent_id for agent_id, _, _ in prepared])
        await run_chunks(self._ks, "agent_create", chunks, build, on_reply)
        if failed:
            raise failed[0]
        done = [r for r in records if r is not None]
        if len(done) < len(records):
            raise ConflictError(f"agent {prepared[records.index(None)][0]} already exists")
        return done

    async def get(
        self, agent_ids: Sequence[str]
    ) -> tuple[list[AgentRecord | None], list[BackendError]]:
        """The agents, None where absent or undecodable, and the error of each undecodable
        one (a record another version or a hand wrote, see ``_records.undecodable``), in
        the order found.

        Raises:
            BackendError: a call failed.
        """
        records: list[AgentRecord | None] = [None] * len(agent_ids)
        failed: list[ZenError] = []
        bad: list[BackendError] = []
        cache = ReadCache(self._docs)

        def build(chunk: Chunk) -> tuple[list[str], tuple[str, ...]]:
            prefix = self.prefixes[chunk[0]]
            return [prefix + "agent:" + agent_ids[i] for i in chunk[1]], FIELDS

        def on_reply(chunk: Chunk, reply: Any) -> None:
            if isinstance(reply, ZenError):
                failed.append(reply)
                return
            for i, row in zip(chunk[1], reply, strict=True):
                try:
                    records[i] = record_from_row(agent_ids[i], row, cache)
                except BackendError as exc:
                    bad.append(exc)

        await run_chunks(self._ks, "agent_get", self.chunks(agent_ids), build, on_reply)
        if failed:
            raise failed[0]
        return records, bad

    async def transition(
        self,
        agent_ids: Sequence[str],
        targets: Sequence[LifecycleState],
        expected: Sequence[int | None],
        reason: str | None,
    ) -> list[TransitionResult | ZenError]:
        """Transition ``agent_ids[i]`` to ``targets[i]`` (see ``transition_many``)."""
        results: list[TransitionResult | ZenError | None] = [None] * len(agent_ids)

        def build(chunk: Chunk) -> tuple[list[str], list[Arg]]:
            shard, positions = chunk
            prefix = self.prefixes[shard]
            args: list[Arg] = [prefix, reason or "", *self.hint_args(shard)]
            for i in positions:
                target, version = targets[i], expected[i]
                args += (agent_ids[i], target.value, SOURCES[target], or_empty(version))
            return [prefix + "agent:" + agent_ids[i] for i in positions], args

        def on_reply(chunk: Chunk, reply: Any) -> None:
            if isinstance(reply, ZenError):  # the whole call failed: none of its agents moved
                for i in chunk[1]:
                    results[i] = reply
                return
            for i, outcome in zip(chunk[1], reply, strict=True):
                if isinstance(outcome, list):
                    results[i] = transition_result(agent_ids[i], targets[i], outcome)
                else:
                    results[i] = script_error(outcome, agent_ids[i])

        chunks = self.chunks(agent_ids)
        await run_chunks(self._ks, "agent_transition_many", chunks, build, on_reply)
        return [r for r in results if r is not None]

    async def heartbeat(
        self, agent_ids: Sequence[str], gauges: Sequence[str]
    ) -> list[datetime | ZenError | None]:
        """Heartbeats (see ``AgentStateManager.heartbeats``); ``gauges`` are memory, CPU and
        connections as the script takes them ("" to keep). The script also reads each
        agent's port host index, so its leases are renewed with one call per host."""
        ports = self._ports
        results: list[datetime | ZenError | None] = [None] * len(agent_ids)
        holders: dict[str, list[str]] = {}

        def build(chunk: Chunk) -> tuple[list[str], list[Arg]]:
            shard, positions = chunk
            prefix = self.prefixes[shard]
            ids = [agent_ids[i] for i in positions]
            hosts = "" if ports is None else ports.hosts_prefix(shard)
            keys = [prefix + "agent:" + a for a in ids]
            return keys, [prefix, self._lease_ms, *gauges, hosts, *ids]

        def on_reply(chunk: Chunk, reply: Any) -> None:
            positions = chunk[1]
            if isinstance(reply, ZenError):
                for i in positions:
                    results[i] = explain(reply, agent_ids[i])
                return
            expiry, statuses, found = from_ms(reply[0]), reply[1], reply[2]
            for i, status in zip(positions, statuses, strict=True):
                if status > 0:
                    results[i] = expiry
                elif status < 0:
                    results[i] = NotFoundError(f"agent {agent_ids[i]!r} does not exist")
            for n in range(0, len(found), 2):
                holders[agent_ids[positions[int(found[n]) - 1]]] = text(found[n + 1]).split(",")

        await run_chunks(self._ks, "agent_heartbeat", self.chunks(agent_ids), build, on_reply)
        if ports is not None and holders:  # port leases live as long as their agent's
            await ports.renew_holders(holders)
        return results


def or_empty(expected: int | None) -> Arg:
    """An expected version as the scripts take it ("" for any)."""
    return "" if expected is None else expected
