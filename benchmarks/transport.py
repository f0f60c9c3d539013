"""Command transport (issue 15): zen's calls through the auto-pipelined multiplexed transport
(``REDIS_TRANSPORT=multiplexed``, the default) and through the connection pool
(``REDIS_TRANSPORT=pool``: a redis-py ``BlockingConnectionPool``, one connection per command
in flight), each next to raw redis-py doing the same commands on the same server in the same
run, and next to what the server does for the same work when the client is not in the way.

    python -m benchmarks.transport [--quick] [--url redis://127.0.0.1:6379] [--no-profile]

Without --url it starts its own redis-server on a free loopback port. Every key it writes
lives under two tenants of its own (``bench-<hex>`` and ``bench-<hex>p``), removed at the end.
The Cluster groups (7) always run on a local cluster the module starts and stops (with its
files), whatever --url says; --quick runs them too (the cluster starts in about 2 s).

Two zens are open at once, one per transport, each on a tenant of its own: each listens to its
own tenant's agent hint channel only, so every transition's pub/sub hint is received once by
this process, whichever side sent it. The raw clients work on the multiplexed zen's tenant.
Until the transport setting exists (``redis_transport`` in ``Settings``), both zens use the
pool and the report says so.

Every transition, zen's or raw, runs ``agent_transition.lua`` (the package's source, from
``ScriptRegistry``) with the keys and arguments ``zen.agents.transition`` sends: the agent
hash, the operation's marker ``<P>op:<new uuid4 hex>`` and its TTL (REDIS_OP_MARKER_TTL),
the shard prefix, the target state and the states it may be reached from, the audit length,
the hint channel and the shard stream. Each agent is driven ready <-> paused by one coroutine
at a time.

1. Ceiling, what the server does for the same work when the client is not in the way, the
   larger of: (a) zen's own bulk path, one ``zen.agents.transition_many`` over ``agents``
   agents (``agent_transition_many.lua``: one call per shard chunk, no markers); (b) the
   same single ``agent_transition.lua`` (with markers) by EVALSHA in pipelines of
   ``CEILING_PIPELINE`` from ``CEILING_CONNECTIONS`` raw redis-py connections at once,
   ``passes`` transitions of each agent per round (commands built and packed before the clock
   starts, replies read straight off the connections). The server's own time per transition
   in each (INFO commandstats) goes into the notes.
2. Transitions, ``agents`` in flight: one ``transition`` of each agent, all at once
   (``asyncio.gather``), in repeated rounds: zen (multiplexed), zen (pool), raw EVALSHA
   through ``BlockingConnectionPool(max_connections=50)``. Measured in the same rotated
   rounds as the ceiling.
3. ``get_agent`` by ``agents`` concurrent callers: zen against raw HGETALL of the agent hash
   through ``BlockingConnectionPool(50)``.
4. One caller at a time: a transition's latency, zen against raw EVALSHA.
5. Closed loop: ``agents`` coroutines each transitioning its agent again and again for
   ``closed_seconds``; p99 against Little's law's floor, ``agents / ceiling`` seconds: the
   mean latency with ``agents`` calls in flight if the server ran at the ceiling.
6. Plain GET by ``agents`` coroutines (informational): ``Keyspace.get`` against raw GET
   through ``BlockingConnectionPool(50)``.
7. On Cluster 3+3 (a local cluster of 3 masters + 3 replicas, started and stopped by the
   module with ``benchmarks._topologies``, after the standalone groups): transitions with
   ``agents`` in flight, ``get_agent`` by ``agents`` callers and plain GET by ``agents``
   coroutines, as in 2, 3 and 6, zen (multiplexed) and zen (pool) each on a tenant of its
   own, against a raw ``redis.asyncio.RedisCluster`` doing the same EVALSHA (same script,
   keys and arguments: zen's ``prefixed`` layout, agents spread over shards tagged
   ``{z<shard>}``), HGETALL and GET. Its node pools raise instead of waiting when full, so
   it may open a connection per call in flight on each node (``cluster_client``).

In full mode (unless --no-profile), the zen (multiplexed) side of each missed target's
scenario (transitions x ``agents``, ``get_agent`` x ``agents``, one caller, closed loop; each
scenario once) is then profiled in-process with cProfile, on a bench opened again for it, for
a few rounds after a warm-up, and a "Where the time goes" section added to the report: the
heaviest functions by own time and own time by area (see ``cprofile_section`` in
``benchmarks._harness``). The Cluster targets are not profiled.

The agents are created through an ``AgentStateManager`` built like ``zen.agents`` but with a
one-hour lease, so that the reaper does not reap them half-way through the run. The machine
may be shared: each group is measured again (up to 3 times in full mode) while other
processes used more than a quarter of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import anyio
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection

from benchmarks._harness import (
    Call,
    Check,
    Comparison,
    CpuWatch,
    Measure,
    Outcome,
    Round,
    calls_round,
    cprofile_rounds,
    cprofile_section,
    drop_tenant,
    measure_rounds,
    raw_client,
    save,
    save_markdown,
    server_pid,
    server_url,
)
from benchmarks._topologies import (
    ProcessesWatch,
    cluster_client,
    cluster_pids,
    cluster_settings,
    local_cluster,
)
from benchmarks.cluster import CLUSTER
from zen_async import Settings, Zen, open_zen
from zen_async.agents import AgentSpec, AgentStateManager, LifecycleState
from zen_async.agents.models import sources_of
from zen_async.events.envelope import agent_shard, shard_stream_name, shard_tag
from zen_async.store.scripts import ScriptRegistry
from zen_async.store.topology import KEYSPACES
from zen_async.testing import ClusterGroup

BATCH: Final = 500
"""REDIS_PIPELINE_BATCH_SIZE for zen."""
POOL: Final = 50
"""Connections of the raw baselines' pool, and REDIS_MAX_CONNECTIONS of zen's pool side."""
CEILING_CONNECTIONS: Final = 4
CEILING_PIPELINE: Final = 100
LEASE_S: Final = 3600
AGENT_TYPE: Final = "bench"
VALUE: Final = b"x" * 100
"""The value of the plain GET scenario's keys."""
TRANSPORT_SETTING: Final = "redis_transport"
MULTIPLEXED: Final = "multiplexed"
POOLED: Final = "pool"
TARGET_CEILING: Final = 0.6
TARGET_RAW: Final = 2.0
TARGET_GET_AGENT: Final = 3.0
TARGET_P50: Final = 0.7
TARGET_FLOOR: Final = 1.5
DESIGN_GET: Final = (320_000, 380_000)
"""The design's figure for plain GETs by 1000 coroutines through a minimal multiplexer."""
RAW_CLUSTER: Final = "redis-py RedisCluster"


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does."""

    rounds: int  # measured rounds of each group but the closed loop
    agents: int  # agents (and callers) in flight at once
    passes: int  # transitions of each agent per round of the pipelined ceiling
    singles: int  # transitions one after another per round, one caller
    closed_seconds: float  # length of one closed-loop round
    closed_rounds: int


FULL: Final = Sizes(11, 1000, 5, 2000, 1.0, 5)
QUICK: Final = Sizes(3, 100, 1, 50, 0.2, 2)


def transport_setting() -> bool:
    """Whether ``Settings`` has the transport setting yet (else both zens use the pool)."""
    return TRANSPORT_SETTING in Settings.model_fields


def names(sizes: Sizes, *, setting: bool | None = None) -> dict[str, str]:
    """The measured entries of a run with ``sizes`` (what the smoke test checks); ``setting``:
    whether the transport setting exists (default: look)."""
    if setting is None:
        setting = transport_setting()
    c, k, p = sizes.agents, CEILING_CONNECTIONS, CEILING_PIPELINE
    zm = "zen (multiplexed)" if setting else "zen (default transport: pool, no setting yet)"
    zp = "zen (pool)"
    raw = f"redis-py BlockingConnectionPool({POOL})"
    return {
        "bulk": f"ceiling (a): zen transition_many x{c} (one call)",
        "pipelined": (
            f"ceiling (b): redis-py pipelined EVALSHA agent_transition, {k} connections, "
            f"pipelines of {p}"
        ),
        "t_mux": f"{zm} transition x{c} concurrent",
        "t_pool": f"{zp} transition x{c} concurrent",
        "t_raw": f"{raw} EVALSHA agent_transition x{c} concurrent",
        "g_mux": f"{zm} get_agent x{c} concurrent",
        "g_pool": f"{zp} get_agent x{c} concurrent",
        "g_raw": f"{raw} HGETALL x{c} concurrent",
        "s_mux": f"{zm} transition, one caller",
        "s_pool": f"{zp} transition, one caller",
        "s_raw": f"{raw} EVALSHA agent_transition, one caller",
        "l_mux": f"{zm} transition, closed loop x{c} agents",
        "l_pool": f"{zp} transition, closed loop x{c} agents",
        "l_raw": f"{raw} EVALSHA agent_transition, closed loop x{c} agents",
        "get_mux": f"{zm} Keyspace.get x{c} concurrent",
        "get_pool": f"{zp} Keyspace.get x{c} concurrent",
        "get_raw": f"{raw} GET x{c} concurrent",
        **{
            f"c{key}": f"{name} on {CLUSTER}"
            for key, name in (
                ("t_mux", f"{zm} transition x{c} concurrent"),
                ("t_pool", f"{zp} transition x{c} concurrent"),
                ("t_raw", f"{RAW_CLUSTER} EVALSHA agent_transition x{c} concurrent"),
                ("g_mux", f"{zm} get_agent x{c} concurrent"),
                ("g_pool", f"{zp} get_agent x{c} concurrent"),
                ("g_raw", f"{RAW_CLUSTER} HGETALL x{c} concurrent"),
                ("get_mux", f"{zm} Keyspace.get x{c} concurrent"),
                ("get_pool", f"{zp} Keyspace.get x{c} concurrent"),
                ("get_raw", f"{RAW_CLUSTER} GET x{c} concurrent"),
            )
        },
    }


GROUPS: Final = (
    "ceiling and transitions",
    "get_agent",
    "one caller",
    "closed loop",
    "GET",
    f"{CLUSTER}: transitions",
    f"{CLUSTER}: get_agent",
    f"{CLUSTER}: GET",
)


class Side:
    """One open zen (one transport) on a tenant of its own."""

    def __init__(self, zen: Zen, transport: str) -> None:
        self.zen = zen
        self.transport = transport
        self.state = zen.redis.keyspace("state")
        self.agents = zen.agents
        self.long_lease = AgentStateManager(
            zen.redis, zen.events, ports=zen.ports, lease_ttl=float(LEASE_S), metrics=zen.metrics
        )

    # --- naming, as zen_async names an agent's keys ----------------------------------------
    def prefix(self, agent_id: str) -> str:
        return self.state.key(shard_tag(agent_shard(agent_id, self.agents.shards))) + ":"

    def hint_args(self, agent_id: str) -> list[str | int]:
        events = self.zen.events
        shard = agent_shard(agent_id, self.agents.shards)
        return [events.audit_max_len, events.agent_channel, shard_stream_name(shard)]


class Fleet:
    """Agents of one side, each driven ready <-> paused by one coroutine at a time."""

    def __init__(self, side: Side, label: str, count: int) -> None:
        self.side = side
        self.ids = [f"{label}-{i}" for i in range(count)]
        self.prefixes = [side.prefix(a) for a in self.ids]
        self.keys = [p + "agent:" + a for p, a in zip(self.prefixes, self.ids, strict=True)]
        self.hints = [side.hint_args(a) for a in self.ids]
        self.paused = [False] * count

    def step(self, n: int) -> str:
        """The state agent ``n`` moves to next; recorded as done."""
        self.paused[n] = not self.paused[n]
        return "paused" if self.paused[n] else "ready"


def one_caller(call: Call) -> Call:
    """``call`` on agent 0 whatever the index: one agent, driven by one caller."""

    async def first(_: int) -> int:
        return await call(0)

    return first


def closed_round(call: Call, workers: int, *, duration: float) -> Round:
    """A closed-loop round: ``workers`` coroutines, coroutine ``n`` calling ``call(n)`` again
    and again (the next call as soon as the last one returned) for ``duration`` seconds."""

    async def measured() -> tuple[int, float, list[float]]:
        latencies: list[float] = []
        started = time.perf_counter()
        deadline = started + duration

        async def worker(n: int) -> int:
            done = 0
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                done += await call(n)
                latencies.append(time.perf_counter() - t0)
            return done

        ops = sum(await asyncio.gather(*(worker(n) for n in range(workers))))
        return ops, time.perf_counter() - started, latencies

    return measured


class Bench:
    """The scenarios of one run on one topology: a zen per transport, raw clients of the
    same server (or cluster)."""

    def __init__(
        self,
        *,
        mux: Side,
        pool: Side,
        raw: Redis,
        wide: Redis | None,
        scripts: ScriptRegistry,
        sizes: Sizes,
    ) -> None:
        self.mux = mux
        self.pool = pool
        # BlockingConnectionPool(POOL) on the multiplexed side's state DB; on Cluster a
        # RedisCluster, which has every method the raw rows call (evalsha, hgetall, get,
        # script_load), typed as Redis like benchmarks.cluster does
        self.raw = raw
        # CEILING_CONNECTIONS connections, same DB: the pipelined ceiling; None: no ceiling
        # (on Cluster), so no ceiling fleets either
        self.wide = wide
        self.sizes = sizes
        self.sha = scripts["agent_transition"].sha
        self.source = scripts["agent_transition"].source
        self.sources = {s.value: "," + ",".join(sources_of(s)) + "," for s in LifecycleState}
        self.op_ttl_ms = int(mux.zen.redis.settings.redis_op_marker_ttl * 1000)

    # --- set-up ----------------------------------------------------------------------------
    async def setup(self) -> None:
        c = self.sizes.agents
        self.bulk = Fleet(self.mux, "bulk", c)
        self.piped = Fleet(self.mux, "piped", c)
        self.mux_fleet = Fleet(self.mux, "mux", c)
        self.raw_fleet = Fleet(self.mux, "raw", c)
        self.pool_fleet = Fleet(self.pool, "pool", c)
        ceilings = (self.bulk, self.piped) if self.wide is not None else ()
        for side, fleets in (
            (self.mux, (*ceilings, self.mux_fleet, self.raw_fleet)),
            (self.pool, (self.pool_fleet,)),
        ):
            ids = [a for f in fleets for a in f.ids]
            await side.long_lease.create_agents(
                [AgentSpec(agent_type=AGENT_TYPE, agent_id=a) for a in ids]
            )
            moved = await side.long_lease.transition_many([(a, "ready", None) for a in ids])
            assert all(not isinstance(r, Exception) for r in moved), moved[:3]
        await self.raw.script_load(self.source)  # raw EVALSHA may come before zen's first call
        self.get_keys = {
            side.transport: [side.state.key("bench", "get", i) for i in range(c)]
            for side in (self.mux, self.pool)
        }
        for side in (self.mux, self.pool):
            keys = self.get_keys[side.transport]
            await side.state.set_many(dict.fromkeys(keys, VALUE), ttl_ms=LEASE_S * 1000)

    # --- transitions -----------------------------------------------------------------------
    def transition_command(self, fleet: Fleet, n: int) -> tuple[Any, ...]:
        """EVALSHA agent_transition of agent ``n``'s next move, with the keys and arguments
        ``zen.agents.transition`` sends (a new op id's marker included)."""
        to = fleet.step(n)
        p = fleet.prefixes[n]
        return (
            "EVALSHA",
            self.sha,
            2,
            fleet.keys[n],
            f"{p}op:{uuid.uuid4().hex}",
            p,
            fleet.ids[n],
            to,
            self.sources[to],
            "",
            "",
            *fleet.hints[n],
            self.op_ttl_ms,
        )

    def zen_transition(self, fleet: Fleet) -> Call:
        transition = fleet.side.agents.transition

        async def call(n: int) -> int:
            await transition(fleet.ids[n], fleet.step(n))
            return 1

        return call

    def raw_transition(self, fleet: Fleet) -> Call:
        evalsha, command = self.raw.evalsha, self.transition_command

        async def call(n: int) -> int:
            await evalsha(*command(fleet, n)[1:])
            return 1

        return call

    def zen_transition_many(self, fleet: Fleet) -> Round:
        """Ceiling (a): every agent of ``fleet`` in one ``transition_many`` call; each
        agent's latency is the call's."""
        transition_many = fleet.side.agents.transition_many

        async def measured() -> tuple[int, float, list[float]]:
            moves = [(a, fleet.step(n), None) for n, a in enumerate(fleet.ids)]
            started = time.perf_counter()
            results = await transition_many(moves)
            elapsed = time.perf_counter() - started
            failed = [r for r in results if isinstance(r, Exception)]
            assert not failed, failed[:3]
            return len(results), elapsed, [elapsed] * len(results)

        return measured

    def pipelined_ceiling(self, fleet: Fleet) -> Round:
        """Ceiling (b): ``passes`` transitions of every agent of ``fleet``, agent ``n`` on
        connection ``n % CEILING_CONNECTIONS``, in pipelines of ``CEILING_PIPELINE`` (sent
        whole, then every reply read) one after another on each connection, the connections
        at once. The commands are built and packed before the clock starts and their replies
        read straight off the connections (an error reply raises), so that as little client
        work as possible stands between the server and the figure; each transition's latency
        is its pipeline's."""
        assert self.wide is not None, "no ceiling on this topology"
        pool = self.wide.connection_pool
        connect = cast(Callable[[], Awaitable[AbstractConnection]], pool.get_connection)

        async def measured() -> tuple[int, float, list[float]]:
            shares: list[list[tuple[Any, ...]]] = [[] for _ in range(CEILING_CONNECTIONS)]
            for _ in range(self.sizes.passes):
                for n in range(len(fleet.ids)):
                    shares[n % CEILING_CONNECTIONS].append(self.transition_command(fleet, n))
            connections = [await connect() for _ in shares]
            packed = [
                [
                    (
                        c.pack_commands(share[i : i + CEILING_PIPELINE]),
                        len(share[i : i + CEILING_PIPELINE]),
                    )
                    for i in range(0, len(share), CEILING_PIPELINE)
                ]
                for c, share in zip(connections, shares, strict=True)
            ]
            latencies: list[float] = []

            async def send(
                connection: AbstractConnection, pipelines: list[tuple[list[bytes], int]]
            ) -> int:
                done = 0
                for pipeline, count in pipelines:
                    t0 = time.perf_counter()
                    await connection.send_packed_command(pipeline, check_health=False)
                    for _ in range(count):
                        await connection.read_response()
                    latencies.extend([time.perf_counter() - t0] * count)
                    done += count
                return done

            try:
                started = time.perf_counter()
                ops = sum(
                    await asyncio.gather(
                        *(send(c, p) for c, p in zip(connections, packed, strict=True))
                    )
                )
                elapsed = time.perf_counter() - started
            finally:
                for connection in connections:
                    await pool.release(connection)
            return ops, elapsed, latencies

        return measured

    async def server_us_per_transition(self) -> dict[str, float]:
        """Server microseconds per transition of one round of each ceiling, by ceiling
        (INFO commandstats: EVAL/EVALSHA time, which includes the commands the scripts call;
        zen's background tasks may add a little)."""
        rounds = {
            "bulk": self.zen_transition_many(self.bulk),
            "pipelined": self.pipelined_ceiling(self.piped),
        }
        costs = {}
        for name, measured in rounds.items():
            before = await self._script_usec()
            ops, _, _ = await measured()
            costs[name] = (await self._script_usec() - before) / ops
        return costs

    async def _script_usec(self) -> int:
        stats = await self.raw.info("commandstats")
        return sum(
            int(stats[name]["usec"])
            for name in ("cmdstat_evalsha", "cmdstat_eval")
            if name in stats
        )

    # --- reads -----------------------------------------------------------------------------
    def zen_get_agent(self, fleet: Fleet) -> Call:
        get_agent = fleet.side.agents.get_agent

        async def call(n: int) -> int:
            return int(await get_agent(fleet.ids[n]) is not None)

        return call

    def raw_hgetall(self, fleet: Fleet) -> Call:
        hgetall = self.raw.hgetall

        async def call(n: int) -> int:
            return int(bool(await hgetall(fleet.keys[n])))

        return call

    def zen_get(self, side: Side) -> Call:
        get, keys = side.state.get, self.get_keys[side.transport]

        async def call(n: int) -> int:
            return int(await get(keys[n]) is not None)

        return call

    def raw_get(self) -> Call:
        get, keys = self.raw.get, self.get_keys[self.mux.transport]

        async def call(n: int) -> int:
            return int(await get(keys[n]) is not None)

        return call


# --- the run ---------------------------------------------------------------------------------
def _chosen(transport: str) -> dict[str, Any]:
    """The transport setting for ``transport``, if ``Settings`` has it yet."""
    return {TRANSPORT_SETTING: transport} if transport_setting() else {}


def _settings(url: str, tenant: str, transport: str) -> Settings:
    chosen = _chosen(transport)
    return Settings(
        _env_file=None,
        redis_url=url,
        redis_embedded="false",
        redis_pipeline_batch_size=BATCH,
        redis_max_connections=POOL,
        redis_namespace=tenant,
        **chosen,
    )


@contextlib.asynccontextmanager
async def _opened(url: str, sizes: Sizes) -> AsyncIterator[Bench]:
    """A zen per transport, each on a tenant of its own, raw clients on the multiplexed
    side's state DB, the fixtures set up; every key of both tenants removed on exit."""
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    tenants = {MULTIPLEXED: tenant, POOLED: tenant + "p"}
    scripts = await anyio.to_thread.run_sync(ScriptRegistry.load)
    raw: list[Redis] = []
    try:
        async with (
            open_zen(_settings(url, tenants[MULTIPLEXED], MULTIPLEXED)) as mux,
            open_zen(_settings(url, tenants[POOLED], POOLED)) as pool,
        ):
            db = mux.redis.keyspace("state").db
            pooled = raw_client(url, db=db, max_connections=POOL)
            raw.append(pooled)
            wide = raw_client(url, db=db, max_connections=CEILING_CONNECTIONS)
            raw.append(wide)
            bench = Bench(
                mux=Side(mux, MULTIPLEXED),
                pool=Side(pool, POOLED),
                raw=pooled,
                wide=wide,
                scripts=scripts,
                sizes=sizes,
            )
            await bench.setup()
            yield bench
            dbs = {mux.redis.keyspace(name).db for name in KEYSPACES}
        for name in tenants.values():
            await drop_tenant(url, name, dbs)
    finally:
        for client in raw:
            await client.aclose(close_connection_pool=True)


def _cluster_settings(group: ClusterGroup, tenant: str, transport: str) -> Settings:
    return cluster_settings(
        group,
        tenant,
        redis_pipeline_batch_size=BATCH,
        redis_max_connections=POOL,
        **_chosen(transport),
    )


@contextlib.asynccontextmanager
async def _opened_cluster(group: ClusterGroup, sizes: Sizes) -> AsyncIterator[Bench]:
    """On the local ``group``: a zen per transport, each on a tenant of its own (the
    cluster's settings of ``benchmarks._topologies``, with this module's batch and pool
    size), a raw RedisCluster, the fixtures set up without the ceiling's. Nothing is
    removed on exit: the cluster goes with its files."""
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    scripts = await anyio.to_thread.run_sync(ScriptRegistry.load)
    raw = cluster_client(group, in_flight=sizes.agents)
    try:
        async with (
            open_zen(_cluster_settings(group, tenant, MULTIPLEXED)) as mux,
            open_zen(_cluster_settings(group, tenant + "p", POOLED)) as pool,
        ):
            bench = Bench(
                mux=Side(mux, MULTIPLEXED),
                pool=Side(pool, POOLED),
                raw=cast(Redis, raw),
                wide=None,
                scripts=scripts,
                sizes=sizes,
            )
            await bench.setup()
            yield bench
    finally:
        await raw.aclose()


@dataclass
class Transport:
    """What the module measured: the comparisons and targets, and the figures they used."""

    outcome: Outcome
    setting: bool
    ceiling: dict[str, float]
    floor_ms: float
    server_us: dict[str, float]
    cluster_raw_connections: int

    @property
    def comparisons(self) -> list[Comparison]:
        return self.outcome.comparisons

    def markdown(self) -> str:
        return self.outcome.markdown()

    def extra(self) -> dict[str, Any]:
        return {
            "batch": BATCH,
            "pool": POOL,
            **self.outcome.extra(),
            "transport_setting": self.setting,
            "ceiling": self.ceiling,
            "littles_law_floor_ms": self.floor_ms,
            "server_us_per_transition": self.server_us,
            "cluster": {
                "topology": CLUSTER,
                "raw_client": RAW_CLUSTER,
                "raw_max_connections_per_node": self.cluster_raw_connections,
            },
        }


def _three(mux: Measure, pool: Measure, raw: Measure) -> list[Comparison]:
    """Each zen side against raw redis-py, then the multiplexed side against the pool side."""
    return [Comparison(mux, raw), Comparison(pool, raw), Comparison(mux, pool)]


async def run(url: str, *, quick: bool) -> Transport:
    """Measure every group in rotated rounds; return the tables, the targets and the
    figures they were checked against."""
    sizes = QUICK if quick else FULL
    setting = transport_setting()
    n = names(sizes, setting=setting)
    rounds, c = sizes.rounds, sizes.agents
    outcome = Outcome(
        "transport: zen's command transports vs raw redis-py (same server, same run; "
        f"then on {CLUSTER})"
    )
    before = os.getloadavg()
    attempts = 1 if quick else 3
    async with _opened(url, sizes) as b:
        watch = CpuWatch(await server_pid(url, lambda: b.raw.info("server")))

        def measured(
            entries: Sequence[tuple[str, Round]], *, group_rounds: int = rounds
        ) -> Callable[[], Awaitable[list[Measure]]]:
            return lambda: measure_rounds(entries, rounds=group_rounds)

        async def settled(
            label: str, measure: Callable[[], Awaitable[list[Measure]]]
        ) -> list[Measure]:
            return await outcome.settled(label, measure, watch=watch, attempts=attempts)

        def concurrent(call: Call) -> Round:
            return calls_round(call, c, concurrent=True)

        mux_t, pool_t, raw_t = (
            b.zen_transition(b.mux_fleet),
            b.zen_transition(b.pool_fleet),
            b.raw_transition(b.raw_fleet),
        )
        t_mux, t_pool, t_raw, bulk, piped = await settled(
            GROUPS[0],
            measured(
                [
                    (n["t_mux"], concurrent(mux_t)),
                    (n["t_pool"], concurrent(pool_t)),
                    (n["t_raw"], concurrent(raw_t)),
                    (n["bulk"], b.zen_transition_many(b.bulk)),
                    (n["pipelined"], b.pipelined_ceiling(b.piped)),
                ]
            ),
        )
        ceiling = max(bulk, piped, key=lambda m: m.ops_per_s)
        server_us = await b.server_us_per_transition()
        outcome.sections.append(
            (
                f"Ceiling: the server's rate for the same work, client out of the way "
                f"(ceiling = the larger: {ceiling.ops_per_s:,.0f} transitions/s; "
                "ops = transitions; p50/p99 of the call or pipeline carrying one)",
                [Comparison(bulk, piped)],
            )
        )
        outcome.sections.append(
            (
                f"Transitions: {c} agents in flight, one transition each per round, all at "
                "once (ops = transitions; p50/p99 of one transition); measured in the same "
                "rotated rounds as the ceiling",
                [*_three(t_mux, t_pool, t_raw), Comparison(t_mux, ceiling)],
            )
        )
        g = _three(
            *await settled(
                GROUPS[1],
                measured(
                    [
                        (n["g_mux"], concurrent(b.zen_get_agent(b.mux_fleet))),
                        (n["g_pool"], concurrent(b.zen_get_agent(b.pool_fleet))),
                        (n["g_raw"], concurrent(b.raw_hgetall(b.raw_fleet))),
                    ]
                ),
            )
        )
        outcome.sections.append(
            (f"get_agent: {c} concurrent callers (ops = reads; p50/p99 of one read)", g)
        )
        s = _three(
            *await settled(
                GROUPS[2],
                measured(
                    [
                        (n["s_mux"], calls_round(one_caller(mux_t), sizes.singles)),
                        (n["s_pool"], calls_round(one_caller(pool_t), sizes.singles)),
                        (n["s_raw"], calls_round(one_caller(raw_t), sizes.singles)),
                    ]
                ),
            )
        )
        outcome.sections.append(
            (
                f"One caller at a time: {sizes.singles} transitions of one agent in a row per "
                "round (ops = transitions; p50/p99 of one transition)",
                s,
            )
        )
        seconds = sizes.closed_seconds
        loop = await settled(
            GROUPS[3],
            measured(
                [
                    (n["l_mux"], closed_round(mux_t, c, duration=seconds)),
                    (n["l_pool"], closed_round(pool_t, c, duration=seconds)),
                    (n["l_raw"], closed_round(raw_t, c, duration=seconds)),
                ],
                group_rounds=sizes.closed_rounds,
            ),
        )
        outcome.sections.append(
            (
                f"Closed loop: {c} agents, each transitioning again as soon as its last "
                f"transition returned, {seconds:g} s per round (ops = transitions; p50/p99 of "
                "one transition)",
                [*_three(*loop), Comparison(loop[0], ceiling)],
            )
        )
        get = _three(
            *await settled(
                GROUPS[4],
                measured(
                    [
                        (n["get_mux"], concurrent(b.zen_get(b.mux))),
                        (n["get_pool"], concurrent(b.zen_get(b.pool))),
                        (n["get_raw"], concurrent(b.raw_get())),
                    ]
                ),
            )
        )
        outcome.sections.append(
            (f"Plain GET: {c} coroutines at once (ops = GETs; p50/p99 of one GET)", get)
        )
    on_cluster = await _cluster_run(outcome, sizes, n, attempts=attempts)
    outcome.loadavg = (before, os.getloadavg())
    floor_ms = 1000 * c / ceiling.ops_per_s
    outcome.checks = _checks(
        sizes,
        transitions=_three(t_mux, t_pool, t_raw),
        ceiling=ceiling,
        get_agent=g,
        single=s,
        loop=loop[0],
        floor_ms=floor_ms,
        on_cluster=on_cluster,
    )
    outcome.notes += _notes(
        sizes,
        setting=setting,
        bulk=bulk,
        piped=piped,
        server_us=server_us,
        floor_ms=floor_ms,
        loop=loop,
        get=get,
        on_cluster=on_cluster,
        alone=[t_mux, g[0].scenario, get[0].scenario],
    )
    return Transport(
        outcome,
        setting,
        {"bulk": bulk.ops_per_s, "pipelined": piped.ops_per_s, "max": ceiling.ops_per_s},
        floor_ms,
        server_us,
        on_cluster.raw_connections,
    )


@dataclass(frozen=True)
class OnCluster:
    """What the Cluster groups measured: each zen side against raw RedisCluster, then the
    multiplexed side against the pool side (see :func:`_three`)."""

    transitions: list[Comparison]
    get_agent: list[Comparison]
    get: list[Comparison]
    raw_connections: int
    """The raw RedisCluster's connections per node at most."""


async def _cluster_run(
    outcome: Outcome, sizes: Sizes, n: dict[str, str], *, attempts: int
) -> OnCluster:
    """The Cluster groups, on a local cluster started for them (stopped on return); their
    sections go into ``outcome``."""
    c, rounds = sizes.agents, sizes.rounds
    async with local_cluster() as group, _opened_cluster(group, sizes) as b:
        watch = ProcessesWatch(cluster_pids(group))  # the six nodes are the server here

        async def three(label: str, entries: Sequence[tuple[str, Call]]) -> list[Comparison]:
            named = [(name, calls_round(call, c, concurrent=True)) for name, call in entries]
            measures = await outcome.settled(
                label,
                lambda: measure_rounds(named, rounds=rounds),
                watch=watch,
                attempts=attempts,
            )
            return _three(*measures)

        t = await three(
            GROUPS[5],
            [
                (n["ct_mux"], b.zen_transition(b.mux_fleet)),
                (n["ct_pool"], b.zen_transition(b.pool_fleet)),
                (n["ct_raw"], b.raw_transition(b.raw_fleet)),
            ],
        )
        g = await three(
            GROUPS[6],
            [
                (n["cg_mux"], b.zen_get_agent(b.mux_fleet)),
                (n["cg_pool"], b.zen_get_agent(b.pool_fleet)),
                (n["cg_raw"], b.raw_hgetall(b.raw_fleet)),
            ],
        )
        get = await three(
            GROUPS[7],
            [
                (n["cget_mux"], b.zen_get(b.mux)),
                (n["cget_pool"], b.zen_get(b.pool)),
                (n["cget_raw"], b.raw_get()),
            ],
        )
        raw_connections = cast(RedisCluster, b.raw).get_default_node().max_connections
    outcome.sections += [
        (
            f"{CLUSTER}: transitions, {c} agents in flight, one transition each per round, all "
            "at once (ops = transitions; p50/p99 of one transition)",
            t,
        ),
        (f"{CLUSTER}: get_agent, {c} concurrent callers (ops = reads; p50/p99 of one read)", g),
        (f"{CLUSTER}: plain GET, {c} coroutines at once (ops = GETs; p50/p99 of one GET)", get),
    ]
    return OnCluster(t, g, get, raw_connections)


def _checks(
    sizes: Sizes,
    *,
    transitions: list[Comparison],
    ceiling: Measure,
    get_agent: list[Comparison],
    single: list[Comparison],
    loop: Measure,
    floor_ms: float,
    on_cluster: OnCluster,
) -> list[Check]:
    """Issue 15's targets, against this run's figures (the multiplexed side's); on Cluster
    the same ratios against raw RedisCluster."""
    c = sizes.agents
    t, g, s = transitions[0], get_agent[0], single[0]
    ct, cg = on_cluster.transitions[0], on_cluster.get_agent[0]
    return [
        Check(
            f"transitions x{c} concurrent: zen >= {TARGET_CEILING}x the ceiling",
            t.scenario.ops_per_s / ceiling.ops_per_s,
            TARGET_CEILING,
            "x",
            "min",
            f"{t.scenario.ops_per_s:,.0f} vs {ceiling.ops_per_s:,.0f} ops/s ({ceiling.name})",
        ),
        Check(
            f"transitions x{c} concurrent: zen >= {TARGET_RAW:g}x raw redis-py EVALSHA "
            f"(BlockingConnectionPool({POOL}))",
            t.ratio,
            TARGET_RAW,
            "x",
            "min",
            f"{t.scenario.ops_per_s:,.0f} vs {t.baseline.ops_per_s:,.0f} ops/s",
        ),
        Check(
            f"get_agent x{c} concurrent: zen >= {TARGET_GET_AGENT:g}x raw redis-py HGETALL "
            f"(BlockingConnectionPool({POOL}))",
            g.ratio,
            TARGET_GET_AGENT,
            "x",
            "min",
            f"{g.scenario.ops_per_s:,.0f} vs {g.baseline.ops_per_s:,.0f} ops/s",
        ),
        Check(
            f"one caller: transition p50 <= {TARGET_P50}x raw redis-py EVALSHA's",
            s.scenario.p50_ms / s.baseline.p50_ms,
            TARGET_P50,
            "x",
            "max",
            f"{s.scenario.p50_ms:.3f} ms vs {s.baseline.p50_ms:.3f} ms",
        ),
        Check(
            f"closed loop x{c} agents: transition p99 <= {TARGET_FLOOR}x Little's law floor "
            f"({c} / ceiling)",
            loop.p99_ms / floor_ms,
            TARGET_FLOOR,
            "x",
            "max",
            f"p99 {loop.p99_ms:.3f} ms vs floor {floor_ms:.3f} ms "
            f"({c} / {ceiling.ops_per_s:,.0f} ops/s)",
        ),
        Check(
            f"on {CLUSTER}, transitions x{c} concurrent: zen >= {TARGET_RAW:g}x raw "
            f"{RAW_CLUSTER} EVALSHA",
            ct.ratio,
            TARGET_RAW,
            "x",
            "min",
            f"{ct.scenario.ops_per_s:,.0f} vs {ct.baseline.ops_per_s:,.0f} ops/s",
        ),
        Check(
            f"on {CLUSTER}, get_agent x{c} concurrent: zen >= {TARGET_GET_AGENT:g}x raw "
            f"{RAW_CLUSTER} HGETALL",
            cg.ratio,
            TARGET_GET_AGENT,
            "x",
            "min",
            f"{cg.scenario.ops_per_s:,.0f} vs {cg.baseline.ops_per_s:,.0f} ops/s",
        ),
    ]


def _notes(
    sizes: Sizes,
    *,
    setting: bool,
    bulk: Measure,
    piped: Measure,
    server_us: dict[str, float],
    floor_ms: float,
    loop: list[Measure],
    get: list[Comparison],
    on_cluster: OnCluster,
    alone: Sequence[Measure],
) -> list[str]:
    """The notes; ``alone``: zen (multiplexed)'s transitions, get_agent and GET on the
    standalone server, next to which the Cluster ones are put."""
    c = sizes.agents
    notes = []
    if setting:
        notes.append(
            f"The zen sides ran with {TRANSPORT_SETTING}={MULTIPLEXED!r} (the 'multiplexed' "
            f"rows) and {TRANSPORT_SETTING}={POOLED!r} (the 'pool' rows), each with "
            f"REDIS_MAX_CONNECTIONS={POOL}."
        )
    else:
        notes.append(
            "Settings has no `redis_transport` yet: both zen sides ran on the connection pool "
            "(redis-py BlockingConnectionPool, one command per connection in flight), so the "
            "'default transport' rows and the targets measure today's path, not the "
            "multiplexed transport."
        )
    notes += [
        f"Ceiling: (a) transition_many runs agent_transition_many.lua, one call per shard "
        f"chunk, without markers: {bulk.ops_per_s:,.0f} transitions/s; (b) the same "
        f"agent_transition.lua as every other row, with markers, {CEILING_CONNECTIONS} raw "
        f"connections x pipelines of {CEILING_PIPELINE}, {sizes.passes} transition(s) per agent "
        f"per round, packed before the clock: {piped.ops_per_s:,.0f} transitions/s. The "
        "ceiling is the larger. On the server alone (INFO commandstats: EVAL/EVALSHA time "
        "over one more round of each) a transition takes "
        f"{server_us['bulk']:.2f} us in (a) and {server_us['pipelined']:.2f} us in (b), at "
        f"most {1e6 / server_us['bulk']:,.0f} and {1e6 / server_us['pipelined']:,.0f} "
        "transitions/s: "
        "what stays between that and the ceiling is loopback, syscalls and this process's "
        "client work, which shares the machine with the server.",
        f"Little's law: {c} calls in flight at the ceiling's rate would each take "
        f"{floor_ms:.3f} ms on average (the floor). In the closed loop the mean latency is "
        + ", ".join(f"{1000 * c / m.ops_per_s:.3f} ms ({m.name})" for m in loop)
        + "; p99 above the mean is how unevenly the callers are served.",
        f"Plain GET (informational): zen's default transport did {get[0].scenario.ops_per_s:,.0f}"
        f" GETs/s with {c} coroutines, raw redis-py through BlockingConnectionPool({POOL}) "
        f"{get[0].baseline.ops_per_s:,.0f}/s; the design's figure for a minimal multiplexer "
        f"is ~{DESIGN_GET[0] // 1000}-{DESIGN_GET[1] // 1000}k/s.",
        "Every transition row, zen's and raw, sends the same agent_transition.lua with the "
        "same keys and arguments (the op-id marker and its TTL included, as "
        "zen.agents.transition always does); raw rows run on the multiplexed side's tenant, "
        "whose zen receives their pub/sub hints as it does its own.",
        f"{CLUSTER}: a local cluster of 3 masters + 3 replicas, started after the standalone "
        "groups and measured alone; its 6 nodes share the machine's cores with this process "
        "(their CPU is left out of 'other processes'). zen runs there with the same settings "
        "(prefixed layout, agents spread over shards tagged {z<shard>}: an agent's hash and "
        "its op marker share a slot). The raw rows use redis.asyncio.RedisCluster, which "
        "routes each command to the master of its key's slot; its node pools raise instead "
        "of waiting when full, so it may open up to "
        f"{on_cluster.raw_connections} connections per node (a pool of {POOL} like "
        f"zen's would fail with {c} calls in flight). zen (multiplexed), Cluster over "
        "standalone: "
        + ", ".join(
            f"{what} {there[0].scenario.ops_per_s / here.ops_per_s:.2f}x"
            for what, there, here in zip(
                ("transitions", "get_agent", "GET"),
                (on_cluster.transitions, on_cluster.get_agent, on_cluster.get),
                alone,
                strict=True,
            )
        )
        + ".",
    ]
    return notes


# --- profiles of missed targets --------------------------------------------------------------
PROFILED: Final = {
    # check target prefix -> profiled scenario (a key of names())
    "transitions x": "t_mux",
    "get_agent x": "g_mux",
    "one caller:": "s_mux",
    "closed loop x": "l_mux",
}
PROFILE_ROUNDS: Final = 3
"""Profiled rounds of each scenario (after a warm-up round), but the closed loop's."""
PROFILE_CLOSED_ROUNDS: Final = 2


def missed_scenarios(checks: Sequence[Check]) -> list[str]:
    """The profiled scenarios of the missed targets, each once, in order."""
    found: list[str] = []
    for check in checks:
        scenario = next((s for p, s in PROFILED.items() if check.target.startswith(p)), None)
        if not check.passed and scenario is not None and scenario not in found:
            found.append(scenario)
    return found


def profiled_round(b: Bench, scenario: str) -> tuple[Round, int]:
    """The zen (multiplexed) round of ``scenario`` (a key of :data:`PROFILED`'s values),
    as the measurement runs it, and how many rounds to profile."""
    fleet, sizes = b.mux_fleet, b.sizes
    if scenario == "t_mux":
        return calls_round(b.zen_transition(fleet), sizes.agents, concurrent=True), PROFILE_ROUNDS
    if scenario == "g_mux":
        return calls_round(b.zen_get_agent(fleet), sizes.agents, concurrent=True), PROFILE_ROUNDS
    if scenario == "s_mux":
        return calls_round(one_caller(b.zen_transition(fleet)), sizes.singles), PROFILE_ROUNDS
    if scenario == "l_mux":
        loop = closed_round(b.zen_transition(fleet), sizes.agents, duration=sizes.closed_seconds)
        return loop, PROFILE_CLOSED_ROUNDS
    raise ValueError(f"no profile for scenario {scenario!r}")


async def profile_scenario(b: Bench, scenario: str, *, rounds: int | None = None) -> str:
    """A "Where the time goes" section: ``scenario``'s zen round under cProfile for
    ``rounds`` rounds (default: :func:`profiled_round`'s) after a warm-up round."""
    measured, default = profiled_round(b, scenario)
    made = await cprofile_rounds(measured, rounds=default if rounds is None else rounds)
    return cprofile_section(
        made.stats, names(b.sizes)[scenario], ops=made.ops, seconds=made.seconds, rounds=made.rounds
    )


async def profiles(url: str, checks: Sequence[Check], *, sizes: Sizes = FULL) -> list[str]:
    """A cProfile section of the zen (multiplexed) side of every missed target's scenario
    (see :data:`PROFILED`), on a bench opened for them; each starts in a quiet moment if one
    comes."""
    missed = missed_scenarios(checks)
    if not missed:
        return []
    out = []
    async with _opened(url, sizes) as b:
        watch = CpuWatch(await server_pid(url, lambda: b.raw.info("server")))
        for scenario in missed:
            await watch.wait_quiet(25.0, patience=30.0)
            out.append(await profile_scenario(b, scenario))
    return out


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few operations: a smoke run")
    parser.add_argument("--url", help="measure against this server instead of a private one")
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the cProfile sections of missed targets"
    )
    args = parser.parse_args(argv)
    with server_url(args.url) as url:
        made = asyncio.run(run(url, quick=args.quick))
        if not args.quick and not args.no_profile:
            made.outcome.profiles = asyncio.run(profiles(url, made.outcome.checks))
    report = made.markdown()
    if not args.quick:
        save("transport", made.comparisons, {"loop": "asyncio", **made.extra()})
        save_markdown("transport", report)
    print(report)
    for check in made.outcome.checks:
        print(check.line())
    return report


if __name__ == "__main__":
    main()
