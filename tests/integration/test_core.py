"""The core on every topology and flavor: keyspaces and pools, commands, batches, scripts,
error mapping, pool behaviour under concurrency and cancellation, and the health status."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime

import pytest
import redis.asyncio as raw_redis

from zen_async import (
    BackendError,
    ConflictError,
    Settings,
    ValidationError,
    Zen,
    open_zen,
)
from zen_async.store import KEYSPACES
from zen_async.store.health import CONSOLIDATION_FAILURE, PORT_ALLOCATION_FAILURE
from zen_async.testing import ClusterGroup, ServerProcess
from zen_async.testing.deployments import Deployments, Kind, Target, masters
from zen_async.testing.waiting import wait_for


async def raw_get(server: ServerProcess, db: int, key: str) -> bytes | None:
    """GET through a plain redis-py client, bypassing zen."""
    client = raw_redis.Redis(host=server.host, port=server.port, db=db, password=server.password)
    try:
        value = await client.get(key)
        assert value is None or isinstance(value, bytes)
        return value
    finally:
        await client.aclose()


async def test_keys_are_namespaced_per_layout(zen: Zen, target: Target) -> None:
    state = zen.redis.keyspace("state")
    if target.kind == "cluster":
        assert state.prefix == "zen:t:default:state:"
        assert state.db == 0
    else:
        assert state.prefix == "zen:t:default:"
        assert state.db == KEYSPACES["state"]
    other = zen.redis.keyspace("state", tenant="acme")
    assert other.key("{z1}", "agent", "a1").startswith("zen:t:acme:")


@pytest.mark.parametrize("kind", ["standalone", "sentinel"])
async def test_databases_layout_writes_each_keyspace_to_its_own_db(
    kind: Kind, deployments: Deployments
) -> None:
    group = deployments.get("redis", kind)
    target = Target("redis", kind, group)
    target.flush()
    async with open_zen(target.settings()) as zen:
        for name in KEYSPACES:
            ks = zen.redis.keyspace(name)
            await ks.set(ks.key("probe"), name)
        usage = zen.redis.pool_usage()
        assert set(usage) == set(KEYSPACES)  # one pool per keyspace
    master = masters(group)[0]
    for name, db in KEYSPACES.items():
        reply = await raw_get(master, db, "zen:t:default:probe")
        assert reply == name.encode(), f"keyspace {name} must write to DB {db}"


async def test_prefixed_layout_on_standalone_uses_one_db_and_one_pool(standalone: Target) -> None:
    async with open_zen(standalone.settings(redis_db_layout="prefixed")) as zen:
        for name in KEYSPACES:
            ks = zen.redis.keyspace(name)
            await ks.set(ks.key("probe"), name)
        assert len(zen.redis.pool_usage()) == 1
    master = standalone.server
    for name in KEYSPACES:
        assert master.cli("GET", f"zen:t:default:{name}:probe") == name
    keys = master.cli("KEYS", "*").split()
    assert all(k.startswith("zen:t:default:") for k in keys)
    databases = {
        line.split(":")[0]
        for line in master.cli("INFO", "keyspace").splitlines()
        if line.startswith("db")
    }
    assert databases == {"db0"}  # one DB, every keyspace a prefix in it


async def test_single_commands_round_trip(zen: Zen) -> None:
    ks = zen.redis.keyspace("cache")
    await ks.set(ks.key("a"), b"1", ttl_ms=60_000)
    assert await ks.get(ks.key("a")) == b"1"
    assert 0 < await ks.execute("PTTL", ks.key("a")) <= 60_000
    assert await ks.get(ks.key("missing")) is None
    assert await ks.delete(ks.key("a"), ks.key("missing")) == 1


async def test_batches_keep_order_across_chunks_and_slots(zen: Zen, target: Target) -> None:
    ks = zen.redis.keyspace("state")
    items = {ks.key(f"k{i}"): f"v{i}" for i in range(1234)}  # 3 chunks of 500, many slots
    await ks.set_many(items, ttl_ms=60_000)
    values = await ks.mget(list(items))
    assert values == [v.encode() for v in items.values()]
    replies = await ks.batch([("INCR", ks.key(f"n{i % 7}")) for i in range(700)])
    assert replies[-7:] == [100] * 7
    assert await ks.delete(*items) == len(items)


async def test_batch_without_pipelining_gives_the_same_results(target: Target) -> None:
    settings = target.settings(redis_enable_pipelining=False, redis_pipeline_batch_size=50)
    async with open_zen(settings) as zen:
        ks = zen.redis.keyspace("state")
        replies = await ks.batch([("SET", ks.key(f"p{i}"), i) for i in range(120)])
        assert replies == [True] * 120
        assert await ks.mget([ks.key(f"p{i}") for i in range(120)]) == [
            str(i).encode() for i in range(120)
        ]


async def test_batch_reports_failed_commands_in_place(zen: Zen) -> None:
    ks = zen.redis.keyspace("state")
    key = ks.key("{z1}", "h")
    replies = await ks.batch(
        [("SET", key, 1), ("HSET", key, "f", 1), ("INCR", key)], raise_on_error=False
    )
    assert replies[0] is True
    assert isinstance(replies[1], BackendError)
    assert "WRONGTYPE" in str(replies[1])
    assert replies[2] == 2
    with pytest.raises(BackendError, match="WRONGTYPE"):
        await ks.batch([("HSET", key, "f", 1)])


async def test_versioned_script_writes_and_detects_conflicts(zen: Zen) -> None:
    ks = zen.redis.keyspace("state")
    key = ks.key("{z3}", "agent", "a1")
    assert await ks.run_script("versioned_hset", [key], ["0", "", "state", "ready"]) == 1
    assert await ks.run_script("versioned_hset", [key], ["1", "60000", "state", "running"]) == 2
    with pytest.raises(ConflictError, match="is at version 2, expected 1"):
        await ks.run_script("versioned_hset", [key], ["1", "", "state", "paused"])
    stored = await ks.execute("HGETALL", key)
    assert stored == {b"version": b"2", b"state": b"running"}  # the conflict wrote nothing
    assert await ks.execute("PTTL", key) > 0


async def test_scripts_reload_after_script_flush(zen: Zen, target: Target) -> None:
    ks = zen.redis.keyspace("state")
    key = ks.key("{z4}", "agent", "a2")
    await ks.run_script("versioned_hset", [key], ["", "", "x", "1"])
    for server in masters(target.group):
        server.cli("SCRIPT", "FLUSH")
    assert await ks.run_script("versioned_hset", [key], ["", "", "x", "2"]) == 2


async def test_error_replies_are_typed(zen: Zen) -> None:
    ks = zen.redis.keyspace("state")
    with pytest.raises(BackendError, match=r"unknown command|doesn't exist"):
        await ks.execute("NOSUCHCOMMAND", ks.key("x"))
    with pytest.raises(ValidationError, match="invalid command argument"):
        await ks.execute("SET", ks.key("x"), {"not": "encodable"})  # type: ignore[arg-type]


async def test_200_concurrent_callers_on_a_pool_of_10(target: Target) -> None:
    async with open_zen(target.settings(redis_max_connections=10)) as zen:
        ks = zen.redis.keyspace("state")

        async def caller(i: int) -> bytes | None:
            await ks.set(ks.key(f"c{i}"), i)
            return await ks.get(ks.key(f"c{i}"))

        results = await asyncio.gather(*(caller(i) for i in range(200)))
        assert results == [str(i).encode() for i in range(200)]
        assert all(p["in_use"] + p["idle"] <= 10 for p in zen.redis.pool_usage().values())


async def assert_no_connection_checked_out(zen: Zen) -> None:
    """Wait out background work (health, reaper) that may be mid-command; a leaked
    connection never comes back, so a leak still fails."""
    for _ in range(500):
        if zen.redis.connections_in_use() == 0:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{zen.redis.connections_in_use()} connections still checked out")


async def blocked_clients(target: Target) -> int:
    """Clients blocked server-side (BLPOP...) on every master, from INFO clients."""
    total = 0
    for server in masters(target.group):
        client = raw_redis.Redis(host=server.host, port=server.port, password=server.password)
        try:
            total += int((await client.info("clients"))["blocked_clients"])
        finally:
            await client.aclose()
    return total


IN_FLIGHT = 100


async def test_cancelled_commands_leave_no_connection_checked_out(target: Target) -> None:
    # A pool with room for every command, so none waits for a connection: each is sent and
    # blocks server-side (BLPOP on an empty list) until it is cancelled, mid-flight.
    settings = target.settings(
        redis_max_connections=IN_FLIGHT + 10,
        redis_enable_metrics=False,
        redis_socket_timeout=60.0,  # above BLPOP's own timeout: only the cancel ends it
    )
    async with open_zen(settings) as zen:
        ks = zen.redis.keyspace("state")
        keys = [ks.key(f"x{i}") for i in range(IN_FLIGHT)]
        await ks.set_many({k: f"value-{i}" for i, k in enumerate(keys)})
        # Distinct empty lists: on Cluster they spread over the masters' node pools.
        empty = [ks.key(f"never-pushed-{i}") for i in range(IN_FLIGHT)]
        tasks = [asyncio.create_task(ks.execute("BLPOP", key, 30)) for key in empty]

        async def all_blocked() -> bool:
            return await blocked_clients(target) == IN_FLIGHT

        try:
            await wait_for(all_blocked, deadline=30, what=f"{IN_FLIGHT} BLPOPs blocked")
            # Checked out of the pools (the node pools, summed, on Cluster) and waiting for
            # their replies: truly in flight.
            assert zen.redis.connections_in_use() >= IN_FLIGHT
        finally:
            for task in tasks:
                task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert [o for o in outcomes if not isinstance(o, asyncio.CancelledError)] == []
        assert sum(isinstance(o, asyncio.CancelledError) for o in outcomes) == IN_FLIGHT
        await assert_no_connection_checked_out(zen)

        async def none_blocked() -> bool:
            return await blocked_clients(target) == 0

        # The cancelled commands' connections were dropped, not handed back mid-reply.
        await wait_for(none_blocked, what="no BLPOP left blocked on the server")

        # Every later reply answers its own command, never a cancelled one's.
        order = random.sample(range(IN_FLIGHT), IN_FLIGHT)
        values = await asyncio.gather(*(ks.get(keys[i]) for i in order))
        assert values == [f"value-{i}".encode() for i in order]
        await assert_no_connection_checked_out(zen)


async def test_health_status_shape_and_values(zen: Zen, target: Target) -> None:
    status = await zen.redis.check_health()
    seed_keys = {
        "redis_available",
        "cluster_status",
        "active_agents",
        "circuit_breaker_failures",
        "average_latency",
        "database_status",
        "last_health_check",
    }
    assert seed_keys <= set(status)
    assert status["redis_available"] is True
    assert status["active_agents"] == 0
    assert status["circuit_breaker_failures"] == 0
    assert 0 < status["average_latency"] < 1000
    assert set(status["database_status"]) == {
        "conversations",
        "tasks",
        "state",
        "memory",
        "pubsub",
        "cache",
        "metrics",
    }
    assert set(status["database_status"].values()) == {"healthy"}
    checked = datetime.fromisoformat(status["last_health_check"])
    assert checked.utcoffset() is not None
    assert checked.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert status["topology"] == target.kind
    assert status["circuit_breaker"]["state"] == "closed"
    assert status["server"]["name"] == target.flavor
    assert status["server_version"].startswith("7.0" if target.flavor == "redis" else "9.")
    assert status["memory"]["maxmemory_policy"] == "noeviction"
    memory = status["memory"]
    assert isinstance(memory["used_memory"], int)
    assert memory["used_memory"] > 0
    assert isinstance(memory["maxmemory"], int)
    assert memory["maxmemory"] >= 0
    assert status["alerts"] == []
    pools = status["pool_usage"]
    if isinstance(target.group, ClusterGroup):
        # One pool per node the slot map names: every master, and the replicas once the
        # masters list them (a cluster started just now may not yet).
        nodes = {f"{node.host}:{node.port}" for node in target.group.nodes}
        primaries = {f"{node.host}:{node.port}" for node in target.group.masters()}
        assert primaries <= set(pools) <= nodes
    else:  # the databases layout: one pool per keyspace
        assert status["db_layout"] == "databases"
        assert set(pools) == set(KEYSPACES)
    transport = status["transport"]
    assert transport["kind"] == "multiplexed"  # the default
    for usage in transport["multiplexed"].values():
        assert set(usage) == {"connections", "in_flight"}
        assert usage["connections"] <= zen.settings.redis_mux_connections
    if not isinstance(target.group, ClusterGroup):  # the health check pinged every DB's route
        assert set(transport["multiplexed"]) == set(KEYSPACES)
        assert all(u["connections"] >= 1 for u in transport["multiplexed"].values())
    for name, usage in pools.items():
        assert set(usage) == {"in_use", "idle", "max"}, name
        assert all(isinstance(v, int) and v >= 0 for v in usage.values()), (name, usage)
        assert usage["max"] == zen.settings.redis_max_connections, name
        assert usage["in_use"] + usage["idle"] <= usage["max"], name
    if target.kind == "cluster":
        assert status["cluster_status"] == "ok"
        assert status["cluster"]["known_nodes"] == 6
    else:
        assert status["cluster_status"] == "n/a"
    if target.kind == "sentinel":
        master = masters(target.group)[0]
        assert status["sentinel"]["master"] == f"{master.host}:{master.port}"


async def test_eviction_policy_that_drops_keys_without_ttl_raises_an_alert(
    standalone: Target,
) -> None:
    server = standalone.server
    server.cli("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    try:
        async with open_zen(standalone.settings()) as zen:
            status = await zen.redis.check_health()
    finally:
        server.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
    names = [a["name"] for a in status["alerts"]]
    assert names == ["eviction_policy_unsafe"]
    assert "allkeys-lru" in status["alerts"][0]["message"]


async def test_port_allocation_failure_rate_alert(standalone: Target) -> None:
    settings: Settings = standalone.settings(redis_alert_port_failures_per_minute=5)
    async with open_zen(settings) as zen:
        for _ in range(5):
            zen.redis.health.record_event(PORT_ALLOCATION_FAILURE)
        assert (await zen.redis.get_health_status())["alerts"] == []
        zen.redis.health.record_event(PORT_ALLOCATION_FAILURE)
        alerts = (await zen.redis.get_health_status())["alerts"]
        assert [a["name"] for a in alerts] == ["port_allocation_failures"]
        assert alerts[0]["value"] == 6


@pytest.mark.parametrize("threshold", [None, 2])
async def test_memory_consolidation_failure_rate_alert(
    standalone: Target, threshold: int | None
) -> None:
    """More than REDIS_ALERT_CONSOLIDATION_FAILURES_PER_HOUR (the seed's 10 by default)
    consolidation failures in the last hour fire the alert; that many do not."""
    overrides = (
        {} if threshold is None else {"redis_alert_consolidation_failures_per_hour": threshold}
    )
    settings: Settings = standalone.settings(**overrides)
    limit = 10 if threshold is None else threshold
    assert settings.redis_alert_consolidation_failures_per_hour == limit
    async with open_zen(settings) as zen:
        for _ in range(limit):  # the event MemoryManager.consolidate records on a failure
            zen.redis.health.record_event(CONSOLIDATION_FAILURE)
        assert (await zen.redis.get_health_status())["alerts"] == []
        zen.redis.health.record_event(CONSOLIDATION_FAILURE)
        alerts = (await zen.redis.get_health_status())["alerts"]
        assert [a["name"] for a in alerts] == ["memory_consolidation_failures"]
        assert alerts[0]["value"] == limit + 1
        assert alerts[0]["threshold"] == limit


async def test_the_health_task_refreshes_the_report_on_its_own(standalone: Target) -> None:
    """get_health_status() serves the background task's latest report: it changes without
    anyone asking for a check."""
    async with open_zen(standalone.settings(redis_health_check_interval=0.05)) as zen:
        first: str = (await zen.redis.get_health_status())["last_health_check"]

        async def refreshed() -> bool:
            latest: str = (await zen.redis.get_health_status())["last_health_check"]
            return latest != first

        await wait_for(refreshed, what="a newer last_health_check from the background task")
        later = (await zen.redis.get_health_status())["last_health_check"]
        assert datetime.fromisoformat(later) > datetime.fromisoformat(first)


async def test_raw_client_sees_what_the_core_wrote(standalone: Target) -> None:
    """The codec's bytes are what is stored: a plain client reads the header byte."""
    async with open_zen(standalone.settings()) as zen:
        ks = zen.redis.keyspace("cache")
        await ks.set(ks.key("doc"), zen.redis.codec.encode({"a": 1}))
    server = standalone.server
    assert await raw_get(server, KEYSPACES["cache"], "zen:t:default:doc") == b'\x01{"a":1}'


async def test_latency_and_agent_count_alerts(standalone: Target) -> None:
    settings = standalone.settings(
        redis_alert_latency_ms=0.000001,  # every real round trip is "slow"
        redis_alert_latency_window_seconds=0.000001,
        redis_alert_active_agents=1200,
    )
    async with open_zen(settings) as zen:

        async def active_agents() -> int:
            return 1201

        zen.redis.health.active_agents_source = active_agents
        await zen.redis.check_health()  # latency first seen high
        status = await zen.redis.check_health()  # and still high after the window
    assert status["active_agents"] == 1201
    names = sorted(a["name"] for a in status["alerts"])
    assert names == ["high_latency", "too_many_agents"]
