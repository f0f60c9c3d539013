"""Degraded mode against a real server that is frozen or killed: writes made during the
outage are journaled, acknowledged, and applied exactly once when the server is back, also
when it dies again mid-replay or when the process restarts during the outage."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from zen_async import BackendError, DegradedError, Zen, open_zen
from zen_async.degraded import Replayable
from zen_async.testing import Standalone
from zen_async.testing.deployments import settings_for
from zen_async.testing.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def degraded_settings(group: Standalone, **extra: Any) -> Any:
    return settings_for(
        group,
        redis_socket_timeout=0.3,
        redis_connect_timeout=0.3,
        redis_retry_attempts=0,
        redis_breaker_failure_threshold=1,
        redis_breaker_reset_timeout=0.2,
        redis_health_check_interval=0.2,
        **extra,
    )


async def until_journaled(op: Callable[[], Awaitable[object]]) -> None:
    """Call ``op`` until it is journaled: the calls before the breaker opens fail (they
    were never acknowledged, so they are not expected to be applied)."""
    while True:
        try:
            await op()
        except BackendError as exc:
            assert not isinstance(exc, DegradedError), exc
            continue
        return


async def journal_drained(zen: Zen) -> None:
    async def drained() -> bool:
        return zen.redis.degraded.journal.depth == 0 and not zen.redis.degraded.active

    await wait_for(drained, deadline=30, what="the outage journal replayed")


async def test_writes_during_a_frozen_server_are_replayed_once_in_order(tmp_path: Path) -> None:
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    try:
        async with open_zen(degraded_settings(group)) as zen:
            await zen.cache.set("colour", "red")
            assert await zen.cache.get("colour") == "red"
            thread = await zen.conversations.create_thread("chat", {})
            group.server.pause()
            try:
                await until_journaled(lambda: zen.cache.set("colour", "blue"))
                await zen.cache.set("size", 3, ttl=60)
                ids = [await zen.events.publish("orders", "placed", {"n": i}) for i in range(20)]
                assert all(i.startswith("journal:") for i in ids)
                assert await zen.conversations.add_turn(thread, "user", "hello") == 0
                stale = await zen.cache.read("colour")
                assert stale.value == "blue" and stale.stale, "own journaled write, marked stale"
                with pytest.raises(DegradedError, match="no last-known value"):
                    await zen.cache.get("never-seen")
                status = (await zen.redis.get_health_status())["degraded_mode"]
                assert status["active"] and status["journal_depth"] == 23
                assert status["outage_seconds"] > 0
            finally:
                group.server.resume()
            await journal_drained(zen)
            assert await zen.cache.read("colour") == ("blue", False)
            assert await zen.cache.get("size") == 3
            events = [e.data async for e in zen.events.replay("orders")]
            assert events == [{"n": i} for i in range(20)], "each event once, in order"
            context = await zen.conversations.get_thread(thread)
            assert context is not None and [t.content for t in context.turns] == ["hello"]
            status = (await zen.redis.get_health_status())["degraded_mode"]
            assert status["replayed_total"] == 23 and not status["active"]
    finally:
        await anyio.to_thread.run_sync(group.stop)


async def test_replay_survives_the_server_freezing_again_mid_replay(tmp_path: Path) -> None:
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    try:
        async with open_zen(degraded_settings(group)) as zen:
            thread = await zen.conversations.create_thread("chat", {})
            group.server.pause()
            try:
                await until_journaled(lambda: zen.cache.set("warm", 1))
                for i in range(300):
                    await zen.events.publish("orders", "placed", {"n": i})
                    if i < 40:
                        await zen.conversations.add_turn(thread, "user", f"turn {i}")
            finally:
                group.server.resume()
            degraded = zen.redis.degraded
            resolver = degraded.resolver
            assert resolver is not None
            applied = 0

            def freezing_resolver(tenant: str, service: str) -> Replayable:
                nonlocal applied
                applied += 1
                if applied == 100:  # the server freezes again in the middle of the replay
                    group.server.pause()
                return resolver(tenant, service)

            degraded.resolver = freezing_resolver

            async def frozen_mid_replay() -> bool:
                return applied >= 100

            await wait_for(frozen_mid_replay, deadline=30, what="the replay under way")
            await anyio.sleep(1.0)
            assert 0 < degraded.journal.depth < 341, "part replayed, the rest waits"
            group.server.resume()
            await journal_drained(zen)
            events = [e.data["n"] async for e in zen.events.replay("orders")]
            assert events == list(range(300)), "no event lost or doubled"
            context = await zen.conversations.get_thread(thread)
            assert context is not None
            assert [t.content for t in context.turns] == [f"turn {i}" for i in range(40)]
    finally:
        await anyio.to_thread.run_sync(group.stop)


async def test_a_restarted_process_replays_what_it_acknowledged(tmp_path: Path) -> None:
    group = Standalone("redis", base_dir=tmp_path, extra_args=["--appendonly", "yes"])
    await anyio.to_thread.run_sync(group.start)
    journal_file = tmp_path / "outage.journal"
    settings = degraded_settings(group, redis_outage_journal=journal_file)
    try:
        async with open_zen(settings) as zen:
            await zen.cache.set("k", "before")
            await anyio.to_thread.run_sync(group.server.kill)
            await until_journaled(lambda: zen.cache.set("k", "during"))
            for i in range(10):
                await zen.events.publish("orders", "placed", {"n": i}, idempotency_key=f"o{i}")
            assert zen.redis.degraded.journal.depth == 11
        # The process is gone; its journal file is not.
        await anyio.to_thread.run_sync(group.server.start)
        async with open_zen(settings) as zen:
            await journal_drained(zen)
            assert await zen.cache.get("k") == "during"
            events = [e.data["n"] async for e in zen.events.replay("orders")]
            assert events == list(range(10))
        assert journal_file.read_bytes() == b""
    finally:
        await anyio.to_thread.run_sync(group.stop)
