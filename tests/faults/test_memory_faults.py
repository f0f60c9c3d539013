"""Agent memory under faults: a loaded index keeps answering searches while the server is
frozen, a consolidation that fails is counted for the alerts, and an instance whose change
feed went back (a restarted server that lost its data) reloads instead of trusting it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio.to_thread
import pytest

from zen_async import ZenError, open_zen
from zen_async.memory import AgentMemoryManager, MemoryEntry, MemoryOptions, NewMemory
from zen_async.store.health import CONSOLIDATION_FAILURE
from zen_async.testing import Standalone
from zen_async.testing.deployments import settings_for
from zen_async.testing.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def options() -> MemoryOptions:
    return MemoryOptions(consolidation_interval=0, sync_interval=0.1)


async def eventually(op: Callable[[], Awaitable[object]], *, what: str) -> None:
    async def succeeds() -> bool:
        try:
            await op()
        except ZenError:
            return False
        return True

    await wait_for(succeeds, deadline=10.0, what=what)


async def test_frozen_server_searches_still_answer_and_failed_consolidation_counts(
    tmp_path: Path,
) -> None:
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    try:
        settings = settings_for(
            group,
            redis_socket_timeout=0.3,
            redis_connect_timeout=0.3,
            redis_retry_attempts=0,
        )
        async with open_zen(settings) as zen:
            memory = AgentMemoryManager(zen.redis, zen.events, options=options())
            await memory.store_memories([NewMemory("a", f"fact number {i}") for i in range(20)])
            assert len(await memory.search_memories("a", "fact number 3", limit=5)) == 5
            seen: list[str] = []
            zen.redis.health.add_listener(seen.append)
            group.server.pause()
            try:
                hits = await memory.search_memories("a", "fact number 3", limit=5)
                assert len(hits) == 5, "a loaded space is searched in process"
                with pytest.raises(ZenError):
                    await memory.consolidate_memories("a")
                assert seen == [CONSOLIDATION_FAILURE]
            finally:
                group.server.resume()
            await eventually(lambda: memory.consolidate_memories("a"), what="consolidation")
    finally:
        await anyio.to_thread.run_sync(group.stop)


async def test_a_feed_that_went_back_makes_the_instance_reload(tmp_path: Path) -> None:
    group = Standalone("redis", base_dir=tmp_path)  # no persistence: a restart loses all
    await anyio.to_thread.run_sync(group.start)
    try:
        settings = settings_for(group, redis_socket_timeout=1.0)
        async with open_zen(settings) as zen, open_zen(settings) as other:
            reader = AgentMemoryManager(zen.redis, zen.events, options=options())
            writer = AgentMemoryManager(other.redis, other.events, options=options())
            old = await writer.store_memories([NewMemory("a", f"old {i}") for i in range(5)])
            assert len(await reader.search_memories("a", "old", similarity_threshold=-1)) == 5
            task = asyncio.create_task(reader.run())
            try:
                await anyio.to_thread.run_sync(group.server.restart)
                stored: list[MemoryEntry] = []

                async def store_fresh() -> bool:  # the same content again is deduplicated
                    try:
                        stored.append(await writer.store_memory("a", "fresh start"))
                    except ZenError:
                        return False
                    return True

                await wait_for(store_fresh, what="a store on the restarted server")
                fresh = stored[-1]

                async def only_fresh() -> bool:
                    hits = await reader.search_memories("a", "old fresh", similarity_threshold=-1)
                    return {h.memory_entry.memory_id for h in hits} == {fresh.memory_id}

                await wait_for(only_fresh, what="the reader dropped what the server lost")
                assert old[0].memory_id != fresh.memory_id
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        await anyio.to_thread.run_sync(group.stop)
