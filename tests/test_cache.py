"""The cache on real servers: values and TTLs, single-flight get_or_set within one process and
across instances (lock, wake-up, dead holder, bounded wait), the NATS/Temporal helpers (on the
cache and on RedisManager), invalidation hints between instances (last-known values, the near
cache, reconnects), and input validation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import orjson
import pytest

from zen_async import ConfigError, Settings, ValidationError, Zen, open_zen
from zen_async.cache import MAX_KEY_BYTES, Cache, CacheRead
from zen_async.store import Message
from zen_async.store.keyspace import Keyspace
from zen_async.testing.deployments import Target, masters


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait for ``condition`` with a deadline (polled: the server has no event to await)."""
    try:
        with anyio.fail_after(10):
            while not await condition():  # noqa: ASYNC110  (server state: no event to await)
                await asyncio.sleep(0.005)
    except TimeoutError:
        pytest.fail(f"timed out waiting until {what}")


class Gated:
    """A factory that counts its calls and finishes only when the gate opens."""

    def __init__(self, value: object = None, *, error: Exception | None = None) -> None:
        self.value = value
        self.error = error
        self.calls = 0
        self.gate = asyncio.Event()

    async def __call__(self) -> object:
        self.calls += 1
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.value


async def waiters(cache: Cache, key: str) -> int:
    flight = cache._flights.get(key)
    return 0 if flight is None else flight.waiters


@pytest.fixture
async def two_instances(target: Target) -> AsyncIterator[tuple[Zen, Zen]]:
    """Two independent zen instances (own pools, own caches) on one deployment."""
    async with open_zen(target.settings()) as first, open_zen(target.settings()) as second:
        yield first, second


async def test_values_round_trip_with_ttls(zen: Zen) -> None:
    cache = Cache(zen.redis)
    ks = zen.redis.keyspace("cache")
    await cache.set("doc", {"a": [1, 2.5, "x", None, True]})
    await cache.set("short", "v", ttl=1.5)
    assert await cache.get("doc") == {"a": [1, 2.5, "x", None, True]}
    assert await cache.get("missing") is None
    assert await ks.execute("PTTL", ks.key("c", "doc")) == -1
    assert 0 < await ks.execute("PTTL", ks.key("c", "short")) <= 1500
    assert await cache.delete("doc") is True
    assert await cache.delete("doc") is False
    assert await cache.get("doc") is None


async def test_get_or_set_computes_once_for_50_concurrent_misses(zen: Zen) -> None:
    cache = Cache(zen.redis)
    factory = Gated({"answer": 42})
    callers = [asyncio.create_task(cache.get_or_set("k", factory, ttl=60)) for _ in range(50)]
    await wait_until(lambda: waiters_are(cache, "k", 50), "all 50 callers share one flight")
    factory.gate.set()
    results = await asyncio.gather(*callers)

    assert factory.calls == 1
    assert results == [{"answer": 42}] * 50
    assert await cache.get("k") == {"answer": 42}
    ks = zen.redis.keyspace("cache")
    assert 0 < await ks.execute("PTTL", ks.key("c", "k")) <= 60_000
    lock, _ = cache._lock_keys("k")
    assert await ks.execute("EXISTS", lock) == 0, "the fill lock is released"
    assert await cache.get_or_set("k", factory, ttl=60) == {"answer": 42}
    assert factory.calls == 1, "a hit does not call the factory"


async def waiters_are(cache: Cache, key: str, n: int) -> bool:
    return await waiters(cache, key) == n


async def test_a_failed_factory_raises_in_every_caller_and_is_not_cached(zen: Zen) -> None:
    cache = Cache(zen.redis)
    failing = Gated(error=RuntimeError("model provider down"))
    callers = [asyncio.create_task(cache.get_or_set("k", failing, ttl=60)) for _ in range(50)]
    await wait_until(lambda: waiters_are(cache, "k", 50), "all 50 callers share one flight")
    failing.gate.set()
    outcomes = await asyncio.gather(*callers, return_exceptions=True)

    assert failing.calls == 1
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert await cache.get("k") is None
    ks = zen.redis.keyspace("cache")
    lock, _ = cache._lock_keys("k")
    assert await ks.execute("EXISTS", lock) == 0, "a failed fill releases its lock"

    working = Gated("recovered")
    working.gate.set()
    assert await cache.get_or_set("k", working, ttl=60) == "recovered"
    assert working.calls == 1


async def test_cancelling_one_caller_does_not_cancel_the_fill(standalone: Target) -> None:
    async with open_zen(standalone.settings()) as zen:
        cache = Cache(zen.redis)
        factory = Gated([1, 2, 3])
        first = asyncio.create_task(cache.get_or_set("k", factory, ttl=None))
        others = [asyncio.create_task(cache.get_or_set("k", factory, ttl=None)) for _ in range(2)]
        await wait_until(lambda: waiters_are(cache, "k", 3), "three callers share one flight")
        first.cancel()  # the caller that started the computation
        await wait_until(lambda: waiters_are(cache, "k", 2), "the cancelled caller left")
        factory.gate.set()

        assert await asyncio.gather(*others) == [[1, 2, 3], [1, 2, 3]]
        with pytest.raises(asyncio.CancelledError):
            await first
        assert factory.calls == 1
        assert await cache.get("k") == [1, 2, 3]


async def test_when_every_caller_leaves_the_fill_is_cancelled(standalone: Target) -> None:
    async with open_zen(standalone.settings()) as zen:
        cache = Cache(zen.redis)
        ks = zen.redis.keyspace("cache")
        factory = Gated("never")
        callers = [asyncio.create_task(cache.get_or_set("k", factory, ttl=60)) for _ in range(2)]
        await wait_until(lambda: waiters_are(cache, "k", 2), "two callers share one flight")
        flight = cache._flights["k"]
        for caller in callers:
            caller.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        await asyncio.wait([flight.task])

        assert flight.task.cancelled()
        assert "k" not in cache._flights
        lock, _ = cache._lock_keys("k")
        assert await ks.execute("EXISTS", lock) == 0, "the cancelled fill released its lock"
        assert await cache.get("k") is None

        factory.gate.set()  # a new caller starts a new computation
        assert await cache.get_or_set("k", factory, ttl=60) == "never"
        assert factory.calls == 2


def blocked_clients(target: Target) -> int:
    """Clients blocked in a command (our BLPOP), over every master; sync, run in a thread."""
    total = 0
    for server in masters(target.group):
        info = server.cli("INFO", "clients")
        total += int(info.split("blocked_clients:")[1].split()[0])
    return total


def has_blocked_client(target: Target) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await anyio.to_thread.run_sync(blocked_clients, target) > 0

    return check


async def test_two_instances_compute_once(two_instances: tuple[Zen, Zen], target: Target) -> None:
    zen_a, zen_b = two_instances
    cache_a, cache_b = Cache(zen_a.redis), Cache(zen_b.redis)
    ks = zen_a.redis.keyspace("cache")
    lock, _ = cache_a._lock_keys("report")
    factory_a, factory_b = Gated({"rows": 3}), Gated({"rows": -1})
    factory_b.gate.set()

    first = asyncio.create_task(cache_a.get_or_set("report", factory_a, ttl=60))
    await wait_until(lambda: exists(ks, lock), "instance A holds the fill lock")
    second = asyncio.create_task(cache_b.get_or_set("report", factory_b, ttl=60))
    await wait_until(has_blocked_client(target), "instance B blocks waiting for A")
    factory_a.gate.set()

    assert list(await asyncio.gather(first, second)) == [{"rows": 3}, {"rows": 3}]
    assert (factory_a.calls, factory_b.calls) == (1, 0)


async def test_a_failed_holder_lets_the_waiting_instance_compute(
    two_instances: tuple[Zen, Zen], target: Target
) -> None:
    zen_a, zen_b = two_instances
    cache_a, cache_b = Cache(zen_a.redis), Cache(zen_b.redis)
    ks = zen_a.redis.keyspace("cache")
    lock, _ = cache_a._lock_keys("k")
    failing, working = Gated(error=RuntimeError("boom")), Gated("from B")
    working.gate.set()

    first = asyncio.create_task(cache_a.get_or_set("k", failing, ttl=60))
    await wait_until(lambda: exists(ks, lock), "instance A holds the fill lock")
    second = asyncio.create_task(cache_b.get_or_set("k", working, ttl=60))
    await wait_until(has_blocked_client(target), "instance B blocks waiting for A")
    failing.gate.set()

    with pytest.raises(RuntimeError, match="boom"):
        await first
    assert await second == "from B"
    assert working.calls == 1


async def test_a_dead_holder_blocks_others_only_until_its_lock_expires(zen: Zen) -> None:
    cache = Cache(zen.redis)
    ks = zen.redis.keyspace("cache")
    lock, _ = cache._lock_keys("k")
    # Another instance took the lock and died: nobody renews or releases it.
    await ks.execute("SET", lock, "dead-instance-token", "PX", 300)
    factory = Gated("computed after the holder died")
    factory.gate.set()

    assert await cache.get_or_set("k", factory, ttl=60) == "computed after the holder died"
    assert factory.calls == 1
    assert await ks.execute("EXISTS", lock) == 0


async def test_waiting_on_another_instance_is_bounded(standalone: Target) -> None:
    async with open_zen(standalone.settings()) as zen:
        cache = Cache(zen.redis, wait_timeout=0.3)
        ks = zen.redis.keyspace("cache")
        lock, _ = cache._lock_keys("k")
        await ks.execute("SET", lock, "stuck-instance-token")  # held, never expires
        factory = Gated("computed without the lock")
        factory.gate.set()

        assert await cache.get_or_set("k", factory, ttl=60) == "computed without the lock"
        assert await ks.get(lock) == b"stuck-instance-token", "another's lock is left alone"


async def test_the_holder_renews_its_lock_while_computing(standalone: Target) -> None:
    async with open_zen(standalone.settings()) as zen:
        cache = Cache(zen.redis, lock_ttl=0.3)
        ks = zen.redis.keyspace("cache")
        lock, _ = cache._lock_keys("slow")
        factory = Gated("slow value")
        task = asyncio.create_task(cache.get_or_set("slow", factory, ttl=60))
        await wait_until(lambda: exists(ks, lock), "the fill lock is taken")
        token = await ks.get(lock)
        renewals = 0
        last = await ks.execute("PTTL", lock)
        with anyio.fail_after(10):
            while renewals < 3:  # outlives its 300 ms TTL several times over
                pttl = await ks.execute("PTTL", lock)
                assert pttl > 0, "the lock expired while its holder was computing"
                renewals += pttl > last
                last = pttl
                await asyncio.sleep(0.01)
        assert await ks.get(lock) == token
        factory.gate.set()
        assert await task == "slow value"
        assert await ks.execute("EXISTS", lock) == 0


async def test_nats_and_temporal_helpers_round_trip_with_their_ttls(zen: Zen) -> None:
    cache = Cache(zen.redis)
    ks = zen.redis.keyspace("cache")
    state = {"status": "connected", "subjects": ["agents.>"], "reconnects": 2}
    context = {"run_id": "r-1", "step": 3, "inputs": {"repo": "zen"}}
    await cache.set_nats_connection_state("conn-1", state)
    await cache.set_temporal_workflow_context("wf-1", context)
    await cache.set_nats_connection_state("conn-2", state, ttl=5)

    assert await cache.get_nats_connection_state("conn-1") == state
    assert await cache.get_temporal_workflow_context("wf-1") == context
    assert await cache.get_nats_connection_state("absent") is None
    assert await cache.get_temporal_workflow_context("absent") is None
    assert 290_000 < await ks.execute("PTTL", ks.key("nats", "conn-1")) <= 300_000
    assert 1_790_000 < await ks.execute("PTTL", ks.key("temporal", "wf-1")) <= 1_800_000
    assert 0 < await ks.execute("PTTL", ks.key("nats", "conn-2")) <= 5000
    assert await cache.get("conn-1") is None, "helpers do not share the user key space"


async def test_the_seed_helpers_take_their_ttl_positionally_on_the_cache_and_the_manager(
    zen: Zen,
) -> None:
    """The seed's signatures: ``set_nats_connection_state(connection_id, state, ttl=300)`` and
    ``set_temporal_workflow_context(workflow_id, context, ttl=1800)``, ttl positional."""
    ks = zen.redis.keyspace("cache")
    state, context = {"status": "connected"}, {"run_id": "r-2", "step": 1}
    await zen.cache.set_nats_connection_state("conn-p", state, 5)
    await zen.cache.set_temporal_workflow_context("wf-p", context, 7)
    assert 0 < await ks.execute("PTTL", ks.key("nats", "conn-p")) <= 5000
    assert 0 < await ks.execute("PTTL", ks.key("temporal", "wf-p")) <= 7000

    await zen.redis.set_temporal_workflow_context("wf-r", context, 60)
    await zen.redis.set_temporal_workflow_context("wf-d", context)
    assert await zen.redis.get_temporal_workflow_context("wf-r") == context
    assert await zen.redis.get_temporal_workflow_context("wf-d") == context
    assert await zen.redis.get_temporal_workflow_context("absent") is None
    assert 0 < await ks.execute("PTTL", ks.key("temporal", "wf-r")) <= 60_000
    assert 1_790_000 < await ks.execute("PTTL", ks.key("temporal", "wf-d")) <= 1_800_000
    await zen.redis.set_nats_connection_state("conn-r", state, 9)
    assert await zen.redis.get_nats_connection_state("conn-r") == state
    assert 0 < await ks.execute("PTTL", ks.key("nats", "conn-r")) <= 9000


# --- invalidation hints -------------------------------------------------------------------------
def last_known(zen: Zen, key: str) -> object:
    """What ``zen``'s process would serve for ``key`` as stale while Redis is unreachable."""
    return zen.redis.degraded.recall(("cache", zen.tenant, key))


async def hints_flow(zen_a: Zen, zen_b: Zen) -> None:
    """Wait until instance A hears instance B's hints (its listener is subscribed)."""
    await zen_a.cache.set("hint-probe", "a")

    async def heard() -> bool:
        await zen_b.cache.set("hint-probe", "b")
        await asyncio.sleep(0.01)
        return last_known(zen_a, "hint-probe") is None

    await wait_until(heard, "instance A hears instance B's hints")


async def test_every_write_publishes_a_hint_on_the_tenant_channel(zen: Zen) -> None:
    cache = zen.cache
    assert cache.channel.startswith("zen:t:default:")
    assert Cache(zen.redis, tenant="acme").channel.startswith("zen:t:acme:")

    async def fill() -> str:
        return "filled"

    async with zen.redis.subscribe(cache.channel) as hints:
        await cache.set("a", 1, ttl=60)
        await cache.delete("a")
        await cache.delete("never-there")  # told too: another instance may hold an old value
        assert await cache.get_or_set("b", fill, ttl=60) == "filled"
        await cache.set_nats_connection_state("n-1", {"s": 1})
        await cache.set_temporal_workflow_context("w-1", {"c": 2})
        received: list[dict[str, str]] = []
        async with asyncio.timeout(10):
            async for item in hints:
                if isinstance(item, Message):
                    received.append(orjson.loads(item.data))
                if len(received) == 6:
                    break
    assert {h["origin"] for h in received} == {cache._origin}
    assert [(h["op"], h["kind"], h["key"]) for h in received] == [
        ("set", "c", "a"),
        ("del", "c", "a"),
        ("del", "c", "never-there"),
        ("set", "c", "b"),
        ("set", "nats", "n-1"),
        ("set", "temporal", "w-1"),
    ]


async def test_another_instances_writes_drop_this_instances_last_known_value(
    two_instances: tuple[Zen, Zen],
) -> None:
    """A value another instance overwrote or deleted is not kept as last-known (it would be
    served as stale during a later outage)."""
    zen_a, zen_b = two_instances
    await hints_flow(zen_a, zen_b)
    await hints_flow(zen_b, zen_a)
    await zen_a.cache.set("colour", "red")
    await zen_a.cache.set("size", 3)
    await zen_b.cache.set("colour", "blue")  # instance B now keeps "blue"
    assert last_known(zen_b, "colour") == CacheRead("blue", stale=False)

    async def a_dropped_colour() -> bool:
        return last_known(zen_a, "colour") is None

    await wait_until(a_dropped_colour, "instance A drops the value B overwrote")
    assert last_known(zen_a, "size") == CacheRead(3, stale=False), "other keys are kept"
    assert await zen_a.cache.read("colour") == ("blue", False)
    assert last_known(zen_a, "colour") == CacheRead("blue", stale=False)

    # B's own hint does not make B drop what it wrote: once B has heard A's later hint for
    # another key, it has heard its own earlier one too (one connection, in order).
    assert await zen_b.cache.read("marker") == (None, False)
    assert last_known(zen_b, "marker") == CacheRead(None, stale=False)
    await zen_a.cache.set("marker", 1)

    async def b_heard_a() -> bool:
        return last_known(zen_b, "marker") is None

    await wait_until(b_heard_a, "instance B hears A's hint")
    assert last_known(zen_b, "colour") == CacheRead("blue", stale=False)

    await zen_b.cache.delete("colour")
    await wait_until(a_dropped_colour, "instance A drops the value B deleted")


async def test_the_near_cache_serves_from_memory_until_another_instance_writes(
    target: Target,
) -> None:
    settings = target.settings(redis_near_cache_size=100, redis_near_cache_ttl=60)
    async with open_zen(settings) as zen_a, open_zen(settings) as zen_b:
        await hints_flow(zen_a, zen_b)
        cache_a, cache_b = zen_a.cache, zen_b.cache
        ks = zen_a.redis.keyspace("cache")
        await cache_a.set("k", {"v": 1})  # (its own hint changes nothing for A)
        assert await cache_a.get("k") == {"v": 1}
        assert cache_a.near_cache_size() == 1
        # Changed behind its back (no hint): A still serves what it holds in memory.
        await ks.set(ks.key("c", "k"), zen_a.redis.codec.encode({"v": "unheard"}))
        served = await cache_a.get("k")
        assert served == {"v": 1}
        served["v"] = "mutated by the caller"
        assert await cache_a.get("k") == {"v": 1}, "each hit decodes its own copy"

        await cache_b.set("k", {"v": 2})

        def a_reads(value: object) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return await cache_a.get("k") == value

            return check

        await wait_until(a_reads({"v": 2}), "A's near cache drops what B overwrote")
        await cache_b.delete("k")
        await wait_until(a_reads(None), "A's near cache drops what B deleted")
        assert cache_a.near_cache_size() == 0, "a miss is not kept"

        # A write of its own is read back at once (its own near entry is dropped).
        await cache_a.set("mine", 1)
        assert await cache_a.get("mine") == 1
        await cache_a.set("mine", 2)
        assert await cache_a.get("mine") == 2
        await cache_a.delete("mine")
        assert await cache_a.get("mine") is None


async def test_the_near_cache_never_outlives_the_redis_ttl_nor_its_own(
    target: Target,
) -> None:
    async with open_zen(target.settings(redis_near_cache_size=10)) as zen:
        cache = zen.cache
        ks = zen.redis.keyspace("cache")
        await wait_until(lambda: listening(cache), "the cache listens for hints")
        await cache.set("short", "v", ttl=0.3)
        assert await cache.get("short") == "v"
        assert cache.near_cache_size() == 1
        await wait_until(lambda: gone(ks, ks.key("c", "short")), "Redis expires the value")
        assert await cache.get("short") is None, "served from memory past its Redis TTL"

    settings = target.settings(redis_near_cache_size=10, redis_near_cache_ttl=0.2)
    async with open_zen(settings) as zen:
        cache = zen.cache
        ks = zen.redis.keyspace("cache")
        await wait_until(lambda: listening(cache), "the cache listens for hints")
        await cache.set("k", "old")
        assert await cache.get("k") == "old"
        await ks.set(ks.key("c", "k"), zen.redis.codec.encode("new"))  # no hint

        async def reads_new() -> bool:
            return await cache.get("k") == "new"

        await wait_until(reads_new, "the near entry expires after REDIS_NEAR_CACHE_TTL")


async def test_a_read_overlapped_by_a_change_keeps_nothing(target: Target) -> None:
    """A read in flight when another instance's hint arrives may have read the older value:
    it keeps neither a last-known value nor a near-cache entry."""
    async with open_zen(target.settings(redis_near_cache_size=10)) as zen:
        cache = zen.cache
        await wait_until(lambda: listening(cache), "the cache listens for hints")
        await cache.set("k", "v1")
        reading = asyncio.create_task(cache.read("k"))
        await asyncio.sleep(0)  # the read is sent and waits for its reply
        assert not reading.done()
        assert "k" in cache._local.tickets
        cache._on_hint(orjson.dumps({"op": "set", "kind": "c", "key": "k", "origin": "other"}))
        assert await reading == ("v1", False)
        assert last_known(zen, "k") is None
        assert cache.near_cache_size() == 0

        assert await cache.read("k") == ("v1", False)  # nothing overlapped this one
        assert last_known(zen, "k") == CacheRead("v1", stale=False)
        assert cache.near_cache_size() == 1
        assert not cache._local.tickets, "no read or write is left registered"


async def test_after_a_reconnect_the_listener_drops_everything_kept_locally(
    standalone: Target,
) -> None:
    """Hints sent while the listener was disconnected are lost: after it reconnects, nothing
    kept from before is trusted (no last-known value, no near-cache entry)."""
    async with open_zen(standalone.settings(redis_near_cache_size=10)) as zen:
        cache = zen.cache
        await wait_until(lambda: listening(cache), "the cache listens for hints")
        await cache.set("k", "v")
        await cache.set("other", 2)
        assert await cache.get("k") == "v"
        assert cache.near_cache_size() == 1
        assert last_known(zen, "other") == CacheRead(2, stale=False)

        await anyio.to_thread.run_sync(standalone.server.cli, "CLIENT", "KILL", "TYPE", "pubsub")

        async def dropped() -> bool:
            return (
                cache.near_cache_size() == 0
                and last_known(zen, "k") is None
                and last_known(zen, "other") is None
            )

        await wait_until(dropped, "the listener drops what it kept after reconnecting")
        await wait_until(lambda: listening(cache), "the cache listens again")
        assert await cache.get("k") == "v"
        assert cache.near_cache_size() == 1, "it fills again once reconnected"


async def test_a_tenant_view_without_a_listener_never_serves_from_memory(
    standalone: Target,
) -> None:
    async with open_zen(standalone.settings(redis_near_cache_size=10)) as zen:
        view = zen.for_tenant("acme").cache
        await view.set("k", 1)
        assert await view.get("k") == 1
        assert not view.listening
        assert view.near_cache_size() == 0


def test_near_cache_settings_are_validated() -> None:
    for field, bad in (
        ("redis_near_cache_size", -1),
        ("redis_near_cache_ttl", 0),
        ("redis_near_cache_ttl", 61),
        ("redis_near_cache_ttl", float("nan")),
    ):
        with pytest.raises(ConfigError, match=field.upper()):
            Settings(_env_file=None, **{field: bad})
    settings = Settings(_env_file=None, redis_near_cache_size=5, redis_near_cache_ttl=0.5)
    assert (settings.redis_near_cache_size, settings.redis_near_cache_ttl) == (5, 0.5)
    assert Settings(_env_file=None).redis_near_cache_size == 0, "off by default"


async def listening(cache: Cache) -> bool:
    return cache.listening


async def gone(ks: Keyspace, key: str) -> bool:
    return not await ks.execute("EXISTS", key)


async def test_bad_input_is_refused_and_writes_nothing(standalone: Target) -> None:
    async with open_zen(standalone.settings()) as zen:
        cache = Cache(zen.redis)
        ks = zen.redis.keyspace("cache")

        async def never() -> object:
            raise AssertionError("the factory must not run for bad input")

        for bad_key in ("", None, 7, "k" * (MAX_KEY_BYTES + 1), "é" * (MAX_KEY_BYTES // 2 + 1)):
            with pytest.raises(ValidationError, match=r"key|at most 1024"):
                await cache.set(bad_key, 1)  # type: ignore[arg-type]
            with pytest.raises(ValidationError):
                await cache.get(bad_key)  # type: ignore[arg-type]
            with pytest.raises(ValidationError):
                await cache.get_or_set(bad_key, never, ttl=1)  # type: ignore[arg-type]
        for bad_ttl in (0, -1, float("nan"), float("inf"), True, "60"):
            with pytest.raises(ValidationError, match=r"ttl=.* is invalid: expected a positive"):
                await cache.set("k", 1, ttl=bad_ttl)  # type: ignore[arg-type]
            with pytest.raises(ValidationError, match="is invalid: expected a positive"):
                await cache.get_or_set("k", never, ttl=bad_ttl)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="cannot encode a value of type object"):
            await cache.set("k", object())
        with pytest.raises(ValidationError, match="state must be a dict"):
            await cache.set_nats_connection_state("c", ["x"])  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="connection_id='' is invalid"):
            await cache.set_nats_connection_state("", {})
        with pytest.raises(ValidationError, match="workflow_id=None is invalid"):
            await cache.get_temporal_workflow_context(None)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="lock_ttl=0 is invalid"):
            Cache(zen.redis, lock_ttl=0)
        with pytest.raises(ValidationError, match="near_cache_size=-1 is invalid"):
            Cache(zen.redis, near_cache_size=-1)
        with pytest.raises(ValidationError, match="near_cache_ttl=0 is invalid"):
            Cache(zen.redis, near_cache_ttl=0)

        assert await ks.execute("DBSIZE") == 0

        unencodable = Gated(object())
        unencodable.gate.set()
        with pytest.raises(ValidationError, match="cannot encode"):
            await cache.get_or_set("k", unencodable, ttl=1)
        assert await cache.get("k") is None
        # All the failed fill leaves is its wake token for waiters, which expires.
        _, wake = cache._lock_keys("k")
        assert await ks.execute("DBSIZE") == 1
        assert 0 < await ks.execute("PTTL", wake) <= 5000


async def test_values_are_per_tenant(standalone: Target) -> None:
    async with open_zen(standalone.settings()) as zen:
        mine, theirs = Cache(zen.redis), Cache(zen.redis, tenant="acme")
        await mine.set("k", "mine")
        assert await theirs.get("k") is None
        await theirs.set("k", "theirs")
        assert await mine.get("k") == "mine"


async def exists(ks: Keyspace, key: str) -> bool:
    return bool(await ks.execute("EXISTS", key))
