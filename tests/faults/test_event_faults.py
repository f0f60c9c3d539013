"""Event faults on real processes: a consumer process killed between read and ack, a long
idle blocking read, and pub/sub across a server restart."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from zen_async import open_zen
from zen_async.events import Event, NewEvent
from zen_async.store import Message, Reconnected
from zen_async.testing import Standalone
from zen_async.testing.deployments import Target, settings_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

VICTIM = textwrap.dedent(
    """
    import asyncio, sys
    from zen_async import Settings, open_zen

    async def main() -> None:
        settings = Settings(_env_file=None, redis_url=sys.argv[1], redis_embedded="false")
        async with open_zen(settings) as zen:
            async def handler(event):
                print(event.id, flush=True)      # got it ...
                await asyncio.Event().wait()     # ... and never finish, never ack

            async with zen.events.consumer("billing", ["invoices"], handler, name="victim",
                                           start_id="0", concurrency=10):
                await asyncio.Event().wait()

    asyncio.run(main())
    """
)


async def test_entries_of_a_consumer_killed_between_read_and_ack_are_processed_once(
    standalone: Target, tmp_path: Path
) -> None:
    url = standalone.url
    async with open_zen(standalone.settings()) as zen:
        ids = await zen.events.publish_many(
            "invoices", [NewEvent("invoice", {"n": i}) for i in range(5)]
        )
        script = tmp_path / "victim.py"
        script.write_text(VICTIM)
        victim = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            url,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        assert victim.stdout is not None
        taken: set[str] = set()
        async with asyncio.timeout(30):
            while len(taken) < 5:
                taken.add((await victim.stdout.readline()).decode().strip())
        assert taken == set(ids)  # the victim read all five and acked none
        victim.send_signal(signal.SIGKILL)
        await victim.wait()

        handled: list[str] = []

        async def rescuer(event: Event) -> None:
            handled.append(event.id)

        consumer = zen.events.consumer(
            "billing", ["invoices"], rescuer, name="rescuer", min_idle=0.5
        )
        async with consumer:
            await consumer.wait_handled(5, timeout=30)
        ref = zen.events.stream("invoices")
        summary = await ref.ks.execute("XPENDING", ref.key, "billing")
    assert sorted(handled) == sorted(ids)  # each once, by the other consumer
    assert summary["pending"] == 0
    assert consumer.statistics().claimed == 5


async def test_a_long_idle_blocking_read_raises_nothing(standalone: Target) -> None:
    handled: list[Event] = []

    async def handler(event: Event) -> None:
        handled.append(event)

    # Ask for a 10 s block with redis-py 8's default 5 s socket timeout: the consumer keeps
    # each read below the timeout, so ten idle seconds pass without an error.
    async with open_zen(standalone.settings(redis_socket_timeout=5.0)) as zen:
        consumer = zen.events.consumer("idle", ["quiet"], handler, block=10.0)
        async with consumer:
            await asyncio.sleep(10.5)
            await zen.events.publish("quiet", "finally", {})
            await consumer.wait_handled(1, timeout=10)
        assert zen.redis.breaker.statistics().total_failures == 0
    assert [e.type for e in handled] == ["finally"]


async def test_subscription_reconnects_after_a_restart_and_says_so(tmp_path: Path) -> None:
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    try:
        async with open_zen(settings_for(group, redis_socket_timeout=1.0)) as zen:
            channel = zen.redis.keyspace("streams").key("ch", "test")
            async with zen.redis.subscribe(channel) as sub:
                items = aiter(sub)
                await zen.redis.publish(channel, b"before")
                assert await anext(items) == Message(channel, b"before")
                await anyio.to_thread.run_sync(group.server.restart)
                async with asyncio.timeout(30):
                    item = await anext(items)
                    assert isinstance(item, Reconnected)  # time to catch up from streams
                    # the subscriber is back before we publish: it yielded Reconnected
                    assert await zen.redis.publish(channel, b"after") == 1
                    assert await anext(items) == Message(channel, b"after")
    finally:
        await anyio.to_thread.run_sync(group.stop)
