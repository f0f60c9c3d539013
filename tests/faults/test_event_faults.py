"""Event faults on real processes: a consumer process killed between read and ack (on Redis
and Valkey, standalone, Sentinel and Cluster), a long idle blocking read, and pub/sub across
a server restart."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import anyio
import orjson
import pytest
from pydantic import SecretStr

from zen_async import Settings, open_zen
from zen_async.events import Event, NewEvent
from zen_async.store import Message, Reconnected
from zen_async.testing import Standalone
from zen_async.testing.deployments import Target, settings_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

VICTIM = textwrap.dedent(
    """
    import asyncio, sys
    import orjson
    from zen_async import Settings, open_zen

    async def main() -> None:
        settings = Settings(_env_file=None, **orjson.loads(sys.argv[1]))
        async with open_zen(settings) as zen:
            async def handler(event):
                print(event.stream, event.id, flush=True)  # got it ...
                await asyncio.Event().wait()               # ... and never finish, never ack

            async with zen.events.consumer("billing", ["invoices", "refunds"], handler,
                                           name="victim", start_id="0", concurrency=10):
                await asyncio.Event().wait()

    asyncio.run(main())
    """
)

# The kill runs on Redis and Valkey, standalone, Sentinel and Cluster (where a consumer reads
# each stream's slot with a reader of its own); the ten-second idle read on one more.
KILL_TARGETS = [
    ("redis", "standalone"),
    ("redis", "sentinel"),
    ("redis", "cluster"),
    ("valkey", "cluster"),
]
IDLE_TARGETS = [("redis", "standalone"), ("valkey", "cluster")]


def explicit_settings(settings: Settings) -> bytes:
    """The values ``settings`` was built from, as JSON a child process rebuilds it from."""
    values = {
        name: value.get_secret_value() if isinstance(value, SecretStr) else value
        for name, value in settings.model_dump(exclude_unset=True).items()
    }
    return orjson.dumps(values)


@pytest.mark.parametrize(
    "target", KILL_TARGETS, ids=[f"{f}-{k}" for f, k in KILL_TARGETS], indirect=True
)
async def test_entries_of_a_consumer_killed_between_read_and_ack_are_processed_once(
    target: Target, tmp_path: Path
) -> None:
    settings = target.settings()
    async with open_zen(settings) as zen:
        invoices = await zen.events.publish_many(
            "invoices", [NewEvent("invoice", {"n": i}) for i in range(5)]
        )
        refunds = await zen.events.publish_many(
            "refunds", [NewEvent("refund", {"n": i}) for i in range(3)]
        )
        ids = {("invoices", i) for i in invoices} | {("refunds", i) for i in refunds}
        script = tmp_path / "victim.py"
        script.write_text(VICTIM)
        victim = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            explicit_settings(settings),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        assert victim.stdout is not None
        taken: set[tuple[str, str]] = set()
        try:
            async with asyncio.timeout(30):
                while len(taken) < len(ids):
                    stream, entry = (await victim.stdout.readline()).decode().split()
                    taken.add((stream, entry))
        finally:
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
        assert taken == ids  # the victim read all eight and acked none

        handled: list[tuple[str, str]] = []

        async def rescuer(event: Event) -> None:
            handled.append((event.stream, event.id))

        consumer = zen.events.consumer(
            "billing", ["invoices", "refunds"], rescuer, name="rescuer", min_idle=0.5
        )
        async with consumer:
            await consumer.wait_handled(len(ids), timeout=30)
        pending = [
            (await ref.ks.execute("XPENDING", ref.key, "billing"))["pending"]
            for ref in (zen.events.stream("invoices"), zen.events.stream("refunds"))
        ]
    assert sorted(handled) == sorted(ids)  # each once, by the other consumer
    assert pending == [0, 0]
    assert consumer.statistics().claimed == len(ids)


@pytest.mark.parametrize(
    "target", IDLE_TARGETS, ids=[f"{f}-{k}" for f, k in IDLE_TARGETS], indirect=True
)
async def test_a_long_idle_blocking_read_raises_nothing(target: Target) -> None:
    handled: list[Event] = []

    async def handler(event: Event) -> None:
        handled.append(event)

    # Ask for a 10 s block with redis-py 8's default 5 s socket timeout: the consumer keeps
    # each read below the timeout, so ten idle seconds pass without an error. Two streams:
    # on Cluster, two readers block at once, one per slot.
    async with open_zen(target.settings(redis_socket_timeout=5.0)) as zen:
        consumer = zen.events.consumer("idle", ["quiet", "silent"], handler, block=10.0)
        async with consumer:
            await asyncio.sleep(10.5)
            await zen.events.publish("quiet", "finally", {})
            await zen.events.publish("silent", "at_last", {})
            await consumer.wait_handled(2, timeout=10)
        assert zen.redis.breaker.statistics().total_failures == 0
    assert sorted(e.type for e in handled) == ["at_last", "finally"]


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
