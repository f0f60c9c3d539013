"""REDIS_DURABILITY=replicated: every acknowledged write has reached the replicas (WAIT on
the connection, and on Cluster the node, that took it); reads never wait; when the replicas
cannot confirm in time the caller gets DurabilityError, the write having been applied.

The replica-freezing tests start their own Sentinel and Cluster groups and SIGSTOP replicas;
the others use the shared deployments."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import RedisCluster

from zen_async import DurabilityError, LifecycleState, Settings, open_zen
from zen_async.events.envelope import agent_shard
from zen_async.store.manager import open_redis_manager
from zen_async.testing import ClusterGroup, Flavor, SentinelGroup, ServerProcess
from zen_async.testing.deployments import Deployments, Kind, Target, masters, settings_for

FLAVORS: list[Flavor] = ["redis", "valkey"]
REPLICATED: list[tuple[Flavor, Kind]] = [
    (flavor, kind) for kind in ("sentinel", "cluster") for flavor in FLAVORS
]


def waits(servers: list[ServerProcess]) -> int:
    """How many WAIT commands ``servers`` have run (INFO commandstats)."""
    total = 0
    for server in servers:
        found = re.search(r"cmdstat_wait:calls=(\d+)", server.cli("INFO", "commandstats"))
        total += int(found.group(1)) if found else 0
    return total


def on_replica(replica: ServerProcess, *command: str, db: int = 0) -> str | None:
    """Run a read on ``replica`` itself (after READONLY on a cluster node, which would
    redirect it otherwise); the reply decoded, None for nil."""
    client = redis.Redis(
        host=replica.host,
        port=replica.port,
        db=db,
        password=replica.password,
        single_connection_client=True,
        decode_responses=True,
    )
    try:
        if "--cluster-enabled" in replica.extra_args:
            client.execute_command("READONLY")  # type: ignore[no-untyped-call]
        reply = client.execute_command(*command)  # type: ignore[no-untyped-call]
        return None if reply is None else str(reply)
    finally:
        client.close()


def replicas_of(target: Target, master: ServerProcess) -> list[ServerProcess]:
    group = target.group
    if isinstance(group, SentinelGroup):
        return [server for server in group.servers if server is not master]
    assert isinstance(group, ClusterGroup)
    return group.replicas_of(master)


def master_of(target: Target, key: str) -> ServerProcess:
    group = target.group
    if isinstance(group, ClusterGroup):
        return group.master_for_key(key)
    return masters(group)[0]


def replicated(target: Target, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"redis_durability": "replicated", "redis_db_layout": "prefixed"}
    values.update(overrides)
    return target.settings(**values)


# --- writes that the replicas confirm ------------------------------------------------------------
@pytest.mark.parametrize(("flavor", "kind"), REPLICATED, ids=[f"{f}-{k}" for f, k in REPLICATED])
async def test_an_acknowledged_write_is_already_on_the_replicas(
    flavor: Flavor, kind: Kind, deployments: Deployments
) -> None:
    target = Target(flavor, kind, deployments.get(flavor, kind))
    target.flush()
    # Sentinel has two replicas: require both; Cluster has one per master.
    replicas = 2 if kind == "sentinel" else 1
    async with open_zen(replicated(target, redis_durability_replicas=replicas)) as zen:
        ks = zen.redis.keyspace("cache")
        keys = [ks.key(f"k{i}") for i in range(20)]  # several slots, so several masters
        before = waits(masters(target.group))
        for i, key in enumerate(keys):
            await ks.set(key, f"v{i}")
            # WAIT returned: every replica required has the write right now
            for replica in replicas_of(target, master_of(target, key)):
                assert on_replica(replica, "GET", key) == f"v{i}", f"{replica!r} lacks {key}"
        assert waits(masters(target.group)) >= before + len(keys)

        await ks.set_many(dict.fromkeys(keys, "batched"))  # a pipelined batch
        # a batch mixing writes and reads over several masters: replies in order
        mixed = await ks.batch([c for key in keys for c in (("SET", key, "m"), ("GET", key))])
        assert mixed == [True, b"m"] * len(keys)
        await ks.set_many(dict.fromkeys(keys, "batched"))
        await ks.delete(keys[0])
        for key in keys[1:]:
            for replica in replicas_of(target, master_of(target, key)):
                assert on_replica(replica, "GET", key) == "batched"
        for replica in replicas_of(target, master_of(target, keys[0])):
            assert on_replica(replica, "EXISTS", keys[0]) == "0"

        # a Lua script: an agent transition and its event
        agent = await zen.agents.create_agent("coder", agent_id="durable-1")
        await zen.agents.transition(agent.agent_id, LifecycleState.READY)
        agent_key = zen.redis.keyspace("state").key(
            f"{{z{agent_shard(agent.agent_id, zen.agents.shards)}}}", "agent", agent.agent_id
        )
        for replica in replicas_of(target, master_of(target, agent_key)):
            assert on_replica(replica, "HGET", agent_key, "state") == "ready"


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_a_stale_slot_map_sends_the_write_and_its_wait_to_the_new_owner(
    flavor: Flavor, deployments: Deployments
) -> None:
    target = Target(flavor, "cluster", deployments.get(flavor, "cluster"))
    target.flush()
    async with open_redis_manager(replicated(target)) as core:  # no background writers
        ks = core.keyspace("cache")
        key = ks.key("moved")
        await ks.set(key, "1")
        master = target.group.master_for_key(key)  # type: ignore[union-attr]
        # As after a resharding or a failover the client has not seen yet: the slot map
        # names another master, which answers MOVED (the write is not applied there).
        cluster = ks._client
        assert isinstance(cluster, RedisCluster)
        slot = cluster.keyslot(key)
        owner = cluster.nodes_manager.slots_cache[slot][0]
        stranger = next(n for n in cluster.get_primaries() if n.name != owner.name)
        cluster.nodes_manager.slots_cache[slot] = [stranger]
        before = waits([master])
        await ks.set(key, "2")
        assert waits([master]) == before + 1, "the re-sent write's WAIT ran on its owner"
        assert cluster.nodes_manager.slots_cache[slot][0].name == owner.name
        for replica in replicas_of(target, master):
            assert on_replica(replica, "GET", key) == "2"


async def test_reads_never_wait(standalone: Target) -> None:
    """A standalone server has no replica: every write falls short, every read must not."""
    settings = replicated(standalone, redis_durability_timeout_ms=100)
    async with open_redis_manager(settings) as redis:
        ks = redis.keyspace("conversations")
        key = ks.key("{t1}", "probe")
        with pytest.raises(DurabilityError) as info:
            await ks.set(key, b"1")
        error = info.value
        assert (error.acknowledged, error.required, error.timeout_ms) == (0, 1, 100)
        assert "only 0 of 1 required replica(s) acknowledged it within 100 ms" in str(error)
        assert "may still reach the replicas" in str(error)
        assert not error.retryable
        assert redis.breaker.statistics().consecutive_failures == 0, "not an outage"

        before = waits([standalone.server])
        # reads: single commands, a pipelined batch, a read-only script
        assert await ks.get(key) == b"1", "the write was applied nonetheless"
        assert await ks.mget([key, ks.key("{t1}", "missing")]) == [b"1", None]
        assert await ks.execute("PTTL", key) == -1
        thread = [ks.key("{t1}", "thread"), ks.key("{t1}", "thread:turns")]
        assert await ks.run_script("conversation_get", thread) == [[], []]
        assert waits([standalone.server]) == before, "a read sent WAIT"

        # a batch: each write's place holds its DurabilityError, reads their replies
        replies = await ks.batch([("SET", key, b"2"), ("GET", key)], raise_on_error=False)
        assert isinstance(replies[0], DurabilityError)
        assert replies[1] == b"2"
        with pytest.raises(DurabilityError):
            await ks.set_many({key: b"3"})
        assert await ks.get(key) == b"3"


# --- replicas that cannot confirm ----------------------------------------------------------------
@pytest.fixture
def frozen() -> Iterator[list[ServerProcess]]:
    """Servers the test paused; resumed at the end whatever happens."""
    paused: list[ServerProcess] = []
    yield paused
    for server in paused:
        if server.is_running:
            server.resume()


def wait_until_replicated(
    replica: ServerProcess, key: str, field: str, value: str, *, db: int = 0
) -> None:
    """Poll ``HGET key field`` on ``replica`` until it is ``value`` (it caught up)."""
    deadline = time.monotonic() + 20
    while on_replica(replica, "HGET", key, field, db=db) != value:
        assert time.monotonic() < deadline, f"{replica!r} never got {key} {field}={value}"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("flavor", FLAVORS)
async def test_frozen_sentinel_replicas_make_writes_fail_durably(
    flavor: Flavor, tmp_path: Path, frozen: list[ServerProcess]
) -> None:
    # down-after well beyond the test: the paused replicas must not change the topology
    with SentinelGroup(flavor, base_dir=tmp_path, down_after_ms=60_000) as group:
        target = Target(flavor, "sentinel", group)
        settings = settings_for(
            group, redis_durability="replicated", redis_durability_timeout_ms=300
        )
        async with open_zen(settings) as zen:
            agent = await zen.agents.create_agent("coder", agent_id="frozen-1")
            master = group.current_master()
            for replica in replicas_of(target, master):
                replica.pause()
                frozen.append(replica)

            with pytest.raises(DurabilityError, match="only 0 of 1 required") as info:
                await zen.agents.transition(agent.agent_id, LifecycleState.READY)
            assert (info.value.acknowledged, info.value.timeout_ms) == (0, 300)
            stored = await zen.agents.get_agent(agent.agent_id)  # reads go on
            assert stored is not None
            assert stored.lifecycle_state is LifecycleState.READY, "applied on the master"
            with pytest.raises(DurabilityError):
                await zen.cache.set("k", {"v": 1}, ttl=60)

            for replica in frozen:
                replica.resume()
            frozen.clear()
            # the replicas catch up with what was applied, and writes are durable again
            await zen.agents.transition(agent.agent_id, LifecycleState.RUNNING)
            agent_key = zen.redis.keyspace("state").key(
                f"{{z{agent_shard(agent.agent_id, zen.agents.shards)}}}", "agent", agent.agent_id
            )
            assert zen.redis.breaker.statistics().times_opened == 0
        for replica in replicas_of(target, master):
            wait_until_replicated(replica, agent_key, "state", "running", db=2)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("flavor", FLAVORS)
async def test_a_frozen_cluster_replica_fails_only_its_masters_writes(
    flavor: Flavor, tmp_path: Path, frozen: list[ServerProcess]
) -> None:
    with ClusterGroup(flavor, base_dir=tmp_path) as group:
        settings = settings_for(
            group, redis_durability="replicated", redis_durability_timeout_ms=300
        )
        async with open_zen(settings) as zen:
            agent = await zen.agents.create_agent("coder", agent_id="frozen-1")
            agent_key = zen.redis.keyspace("state").key(
                f"{{z{agent_shard(agent.agent_id, zen.agents.shards)}}}", "agent", agent.agent_id
            )
            master = group.master_for_key(agent_key)
            (replica,) = group.replicas_of(master)
            ks = zen.redis.keyspace("cache")
            elsewhere = next(
                ks.key(f"other-{i}")
                for i in range(1000)
                if group.master_for_key(ks.key(f"other-{i}")) is not master
            )
            replica.pause()
            frozen.append(replica)

            with pytest.raises(DurabilityError, match="only 0 of 1 required"):
                await zen.agents.transition(agent.agent_id, LifecycleState.READY)
            # another master's replica is fine: its WAIT went to that master
            await ks.set(elsewhere, b"durable")
            (other_replica,) = group.replicas_of(group.master_for_key(elsewhere))
            assert on_replica(other_replica, "GET", elsewhere) == "durable"
            # a batch over both masters: only the frozen shard's writes fall short
            same_slot = agent_key.replace(":agent:", ":probe:")
            replies = await zen.redis.keyspace("state").batch(
                [("SET", same_slot, b"1")], raise_on_error=False
            )
            assert isinstance(replies[0], DurabilityError)
            replies = await ks.batch([("SET", elsewhere, b"again")], raise_on_error=False)
            assert replies == [True]

            replica.resume()
            frozen.clear()
            wait_until_replicated(replica, agent_key, "state", "ready")
            await zen.agents.transition(agent.agent_id, LifecycleState.RUNNING)
            assert on_replica(replica, "HGET", agent_key, "state") == "running"
