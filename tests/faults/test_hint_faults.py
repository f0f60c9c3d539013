"""Lost pub/sub hints on a real server: the subscriber's connection is killed (CLIENT KILL TYPE
pubsub) or the server restarts, and the change that would have been hinted happens before the
subscriber is back. Agent state waiters catch up from the stored state; the cache drops what it
kept locally, and never serves a value another instance overwrote as stale."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from zen_async import BackendError, DegradedError, Settings, Zen, open_zen
from zen_async.agents.models import AgentRecord, LifecycleState
from zen_async.cache import Cache, CacheRead
from zen_async.testing import Standalone
from zen_async.testing.deployments import settings_for
from zen_async.testing.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@contextmanager
def own_server(tmp_path: Path, *extra_args: str) -> Iterator[Standalone]:
    group = Standalone("redis", base_dir=tmp_path, extra_args=extra_args)
    group.start()
    try:
        yield group
    finally:
        group.stop()


def while_the_loop_is_held(*steps: Callable[[], object]) -> None:
    """Run ``steps`` in a thread and wait for them *without yielding the event loop*: nothing
    on the loop runs meanwhile, so the subscriber cannot reconnect before the last step, and
    any hint sent by the steps is lost for it."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for step in steps:
                step()
        except BaseException as exc:  # re-raised on the test's thread below
            errors.append(exc)

    thread = threading.Thread(target=run, name="hint-faults")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def transition_from_another_instance(
    settings: Settings, agent_id: str, to: LifecycleState
) -> Callable[[], None]:
    """A step: another instance (own loop, own pools) moves the agent to ``to``."""

    async def transition() -> None:
        async with open_zen(settings) as other:
            await other.agents.transition(agent_id, to)

    return lambda: asyncio.run(transition())


class CountedReads:
    """Counts the agent-record reads of a zen's state waiters that concern an agent: a
    waiter's first read, and a catch-up after a reconnect while it waits."""

    def __init__(self, zen: Zen) -> None:
        hints = zen.agents._hints
        self._read = hints._read
        self.calls = 0
        hints._read = self

    async def __call__(self, agent_ids: Sequence[str]) -> list[AgentRecord | None]:
        records = await self._read(agent_ids)
        self.calls += bool(agent_ids)
        return records


async def start_waiter(zen: Zen, agent_id: str) -> tuple[asyncio.Task[Any], CountedReads]:
    """A pending ``wait_for_state(agent_id, running)``: it has read the stored state (not
    running) and now waits for a hint."""
    reads = CountedReads(zen)
    waiter = asyncio.create_task(
        zen.agents.wait_for_state(agent_id, [LifecycleState.RUNNING], timeout=60)
    )

    async def waiting() -> bool:
        return reads.calls == 1

    await wait_for(waiting, what="the waiter read the stored state and waits for a hint")
    assert not waiter.done()
    return waiter, reads


async def test_a_waiter_catches_up_when_its_hint_is_lost_to_a_killed_connection(
    tmp_path: Path,
) -> None:
    with own_server(tmp_path) as group:
        settings = settings_for(group)
        async with open_zen(settings) as zen:
            agent = await zen.agents.create_agent("coder")
            await zen.agents.transition(agent.agent_id, LifecycleState.READY)
            waiter, reads = await start_waiter(zen, agent.agent_id)

            while_the_loop_is_held(
                lambda: group.server.cli("CLIENT", "KILL", "TYPE", "pubsub"),
                transition_from_another_instance(settings, agent.agent_id, LifecycleState.RUNNING),
            )

            async with asyncio.timeout(30):
                assert await waiter is LifecycleState.RUNNING
            assert reads.calls == 2, "woken by the catch-up read after the reconnect"


async def test_a_waiter_catches_up_after_a_server_restart(tmp_path: Path) -> None:
    with own_server(tmp_path, "--appendonly", "yes", "--appendfsync", "always") as group:
        settings = settings_for(group)
        async with open_zen(settings) as zen:
            agent = await zen.agents.create_agent("coder")
            await zen.agents.transition(agent.agent_id, LifecycleState.READY)
            waiter, reads = await start_waiter(zen, agent.agent_id)

            while_the_loop_is_held(
                group.server.restart,  # the agent survives in the AOF
                transition_from_another_instance(settings, agent.agent_id, LifecycleState.RUNNING),
            )

            async with asyncio.timeout(30):
                assert await waiter is LifecycleState.RUNNING
            assert reads.calls == 2, "woken by the catch-up read after the reconnect"


def outage_settings(group: Standalone) -> Settings:
    return settings_for(
        group,
        redis_socket_timeout=0.3,
        redis_connect_timeout=0.3,
        redis_retry_attempts=0,
        redis_breaker_failure_threshold=1,
        redis_breaker_reset_timeout=0.2,
        redis_health_check_interval=0.2,
    )


async def read_while_down(cache: Cache, key: str) -> CacheRead:
    """Read until the breaker has opened: stale, or DegradedError (the calls before it opens
    time out with a plain BackendError)."""
    while True:
        try:
            return await cache.read(key)
        except DegradedError:
            raise
        except BackendError:
            continue


async def test_a_value_another_instance_overwrote_is_not_served_stale_in_an_outage(
    tmp_path: Path,
) -> None:
    with own_server(tmp_path) as group:
        settings = outage_settings(group)
        async with open_zen(settings) as zen_a, open_zen(settings) as zen_b:
            known = ("cache", zen_a.tenant)
            await zen_a.cache.set("hint-probe", 0)

            async def a_hears_b() -> bool:
                await zen_b.cache.set("hint-probe", 1)
                await asyncio.sleep(0.01)
                return zen_a.redis.degraded.recall((*known, "hint-probe")) is None

            await wait_for(a_hears_b, what="instance A hears instance B's hints")
            await zen_a.cache.set("colour", "red")
            await zen_a.cache.set("size", 3)
            await zen_b.cache.set("colour", "blue")

            async def a_dropped_colour() -> bool:
                return zen_a.redis.degraded.recall((*known, "colour")) is None

            await wait_for(a_dropped_colour, what="A drops the value B overwrote")

            group.server.pause()
            try:
                assert await read_while_down(zen_a.cache, "size") == (3, True)
                with pytest.raises(DegradedError, match="no last-known value"):
                    await read_while_down(zen_a.cache, "colour")  # not "red"
                assert await read_while_down(zen_b.cache, "colour") == ("blue", True)
            finally:
                group.server.resume()


async def test_after_a_server_restart_the_cache_keeps_nothing_from_before(
    tmp_path: Path,
) -> None:
    """The server restarts without persistence: the value is gone, and so is every copy the
    cache kept locally (near cache, last-known) once its listener has reconnected."""
    with own_server(tmp_path) as group:
        async with open_zen(settings_for(group, redis_near_cache_size=10)) as zen:

            async def listening() -> bool:
                return zen.cache.listening

            await wait_for(listening, what="the cache listens for hints")
            await zen.cache.set("k", "v")
            assert await zen.cache.get("k") == "v"
            assert zen.cache.near_cache_size() == 1
            await anyio.to_thread.run_sync(group.server.restart)

            async def dropped() -> bool:
                return (
                    zen.cache.near_cache_size() == 0
                    and zen.redis.degraded.recall(("cache", zen.tenant, "k")) is None
                )

            await wait_for(dropped, deadline=30, what="the reconnected listener drops it all")
            assert await zen.cache.get("k") is None
