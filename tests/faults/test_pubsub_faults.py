"""Pub/sub on a server of its own that goes away: a subscription keeps reconnecting through
failed attempts and says so once back; and one opened with ``retry_connect`` waits out a
server that is down when it starts (what a background subscriber needs)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest
import redis.asyncio as raw_redis

from zen_async import Zen, ZenError, open_zen
from zen_async.store import Message, Reconnected, Subscription
from zen_async.testing import Standalone
from zen_async.testing.deployments import settings_for
from zen_async.testing.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

FAILED_ATTEMPTS = 3  # seen while the server is down, before it is started again


async def publish_once_back(zen: Zen, channel: str, data: bytes) -> int:
    """PUBLISH, retried while the breaker that the outage opened has not closed again."""
    receivers: int | None = None

    async def published() -> bool:
        nonlocal receivers
        try:
            receivers = await zen.redis.publish(channel, data)
        except ZenError:
            return False
        return True

    await wait_for(published, deadline=30, what="a publish succeeds after the restart")
    assert receivers is not None
    return receivers


async def test_a_subscription_keeps_reconnecting_while_its_server_is_down(
    tmp_path: Path,
) -> None:
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    try:
        settings = settings_for(group, redis_socket_timeout=1.0, redis_connect_timeout=0.3)
        async with open_zen(settings) as zen:
            channel = zen.redis.keyspace("streams").key("ch", "test")
            async with zen.redis.subscribe(channel) as sub:
                items = aiter(sub)
                await zen.redis.publish(channel, b"before")
                assert await anext(items) == Message(channel, b"before")

                async def next_item() -> Message | Reconnected:
                    return await anext(items)

                await anyio.to_thread.run_sync(group.server.stop)
                pending = asyncio.create_task(next_item())
                try:

                    async def failed_enough() -> bool:
                        return sub.statistics().failed_connects >= FAILED_ATTEMPTS

                    await wait_for(failed_enough, deadline=30, what="failed reconnects")
                    assert not pending.done(), "the subscription gave up while the server is down"
                    assert not sub.statistics().connected
                    await anyio.to_thread.run_sync(group.server.start)
                    async with asyncio.timeout(30):
                        item = await pending
                finally:
                    pending.cancel()
                stats = sub.statistics()
                assert isinstance(item, Reconnected)  # time to catch up from streams
                assert item.attempts == stats.failed_connects + 1 >= FAILED_ATTEMPTS + 1
                assert stats.connected
                assert stats.reconnects == 1
                # back and subscribed before we publish: it yielded Reconnected
                assert await publish_once_back(zen, channel, b"after") == 1
                async with asyncio.timeout(30):
                    assert await anext(items) == Message(channel, b"after")
    finally:
        await anyio.to_thread.run_sync(group.stop)


async def test_retry_connect_waits_out_a_server_that_is_down_on_entry(tmp_path: Path) -> None:
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    server = group.server
    client = raw_redis.Redis(
        host=server.host, port=server.port, password=server.password, socket_connect_timeout=0.3
    )
    channel = "zen:test:ch"
    try:
        await anyio.to_thread.run_sync(server.stop)
        sub = Subscription(client.pubsub, (channel,), retry_connect=True)
        entered = asyncio.Event()

        async def listen() -> Message | Reconnected:
            async with sub:
                entered.set()
                return await anext(aiter(sub))

        listener = asyncio.create_task(listen())
        try:

            async def failed_enough() -> bool:
                return sub.statistics().failed_connects >= FAILED_ATTEMPTS

            await wait_for(failed_enough, deadline=30, what="failed first connects")
            assert not listener.done(), "entering gave up while the server is down"
            assert not entered.is_set()
            await anyio.to_thread.run_sync(server.start)
            async with asyncio.timeout(30):
                await entered.wait()
            assert sub.statistics().connected
            # Entered means subscribed: a message published now is not lost.
            assert await client.publish(channel, b"first") == 1
            async with asyncio.timeout(30):
                assert await listener == Message(channel, b"first")
        finally:
            listener.cancel()
    finally:
        await client.aclose()
        await anyio.to_thread.run_sync(group.stop)
