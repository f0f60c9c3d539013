"""Waiting for lifecycle states: waiters woken by the agent hint channel.

Every agent script publishes a hint per event on the agent channel (the bulk scripts one
message per call, holding a JSON array of their hints). A waiter first reads the stored
state once subscribed, so no hint can slip by; after a reconnect of the subscription it
catches up from the stored states (hints sent meanwhile are lost; states are not).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import orjson

from zen_async.agents.models import AgentRecord, LifecycleState
from zen_async.errors import NotFoundError
from zen_async.metrics.names import COORDINATION_EVENTS
from zen_async.store import Message, Reconnected, RedisManager

if TYPE_CHECKING:
    from zen_async.metrics import Metrics

__all__ = ["StateWaiters"]

Read = Callable[[Sequence[str]], Awaitable[list[AgentRecord | None]]]


class StateWaiters:
    """The coroutines waiting for agents' states, and the listener that wakes them.

    Args:
        redis: the core (its subscriptions).
        channel: the agent hint channel.
        read: reads agents' records (``AgentStateManager.get_agents``).
        metrics: where hints are counted as coordination events, or None.
    """

    def __init__(
        self, redis: RedisManager, channel: str, read: Read, metrics: Metrics | None
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._read = read
        self._metrics = metrics
        self._waiters: dict[str, list[tuple[frozenset[LifecycleState], asyncio.Future[str]]]] = {}
        self._listening = asyncio.Event()

    async def wait(
        self, agent_id: str, wanted: frozenset[LifecycleState], *, within: float
    ) -> LifecycleState:
        """The agent's state once it is one of ``wanted`` (see ``wait_for_state``).

        Raises:
            TimeoutError: not within ``within`` seconds.
            NotFoundError: no such agent.
        """
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        entry = (wanted, future)
        self._waiters.setdefault(agent_id, []).append(entry)
        try:
            async with asyncio.timeout(within):
                await self._listening.wait()  # subscribed: no hint can slip by from here
                record = (await self._read([agent_id]))[0]
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
        """Dispatch hints to waiters until cancelled."""
        async with self._redis.subscribe(self._channel, retry_connect=True) as hints:
            self._listening.set()
            try:
                async for item in hints:
                    if isinstance(item, Reconnected):
                        await self._catch_up()
                    elif isinstance(item, Message):
                        self.dispatch(item.data)
            finally:
                self._listening.clear()

    def dispatch(self, data: bytes) -> None:
        """Handle one hint message: one hint, or a JSON array of the hints of one bulk call."""
        if not self._waiters and self._metrics is None:
            return  # nobody to wake and nothing to count: not even worth decoding
        try:
            decoded = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        types: Counter[str] = Counter()
        waiters = self._waiters
        for hint in decoded if isinstance(decoded, list) else [decoded]:
            if not isinstance(hint, dict):
                continue
            types[str(hint.get("type", "unknown"))] += 1
            agent_id, to = hint.get("agent"), hint.get("to")
            if to and agent_id in waiters:
                self._wake(agent_id, to)
        if self._metrics is not None:
            for event_type, count in types.items():
                self._metrics.count(COORDINATION_EVENTS, count, type=event_type)

    def _wake(self, agent_id: str, state: str) -> None:
        for wanted, future in self._waiters.get(agent_id, []):
            if not future.done() and state in wanted:
                future.set_result(state)

    async def _catch_up(self) -> None:
        """After a reconnect, read the stored state of every awaited agent (hints sent
        while disconnected are gone; the state and its stream are not)."""
        agent_ids = list(self._waiters)
        for agent_id, record in zip(agent_ids, await self._read(agent_ids), strict=True):
            if record is not None:
                self._wake(agent_id, record.lifecycle_state.value)
