"""Agents: lifecycle transitions, bulk state writes and bulk reads through zen_async, each
next to raw redis-py doing the equivalent commands on the same server in the same run, with
redis-benchmark's figure on that server as the physical limit, and the issue's targets.

    python -m benchmarks.agents [--quick] [--url redis://127.0.0.1:6379] [--no-profile]

Without --url it starts its own redis-server on a free loopback port. Every key it writes
lives under a tenant of its own (``bench-<hex>``), removed at the end (and redis-benchmark's
``key:__rand_int__`` in DB 0 is deleted after it ran).

Baselines (raw redis-py, a ``BlockingConnectionPool`` as large as zen's, same DBs):

- transitions (each coroutine drives its own agent ready <-> paused): the same
  ``agent_transition.lua`` by EVALSHA through a raw client; the same writes as one
  MULTI/EXEC pipeline (HSET state/version/updated, ZREM x2, ZADD x2, XADD shard stream, XADD
  audit MAXLEN ~, PUBLISH hint), which does *less* than the script: no read and check of the
  current state and version (the client tracks them), time stamped on the client; the same
  EVALSHA wrapped in a redis-py pipeline of one command (how ``transition_many`` sends a
  batch of one); and zen's core call alone, ``Keyspace.run_script`` with the arguments
  ``transition()`` sends (no validation, metrics timer or result model). Then 1000
  transitions in one ``transition_many`` call against the same EVALSHA pipelined, and an
  open-loop run: 1000 agents each transitioning every ``paced_interval`` seconds.
- bulk writes: pipelined ``SET key value EX ttl`` (chunks of 500, the value being an agent's
  JSON document); the same Lua script as the zen call (``agent_create``,
  ``agent_heartbeat``: one call per chunk of at most 500 agents of one shard, as zen sends
  them), pipelined, by EVALSHA through a raw client; heartbeats through a manager without a
  port allocator (no reads of the agents' port host indexes, no lease renewal); and, as a
  reference for ``set_many``, one Lua call per 500 keys doing SET PX.
- bulk reads: pipelined HGETALL of the same agent hashes; pipelined MGET (500 keys/MGET) of
  string keys holding the same document.

After the bulk groups, each zen bulk call is run once more alone while the server's
``INFO commandstats`` counts its time: the server-side microseconds per record (EVALSHA
time, which includes the commands the scripts call) bound what any client could reach on
this server, and go into the report's notes and targets.

The agents are created through an ``AgentStateManager`` built like ``zen.agents`` but with a
one-hour lease, so that the reaper (running in the background, as in production) does not
reap them half-way through the run; transitions and reads go through ``zen.agents``.

The machine may be shared: each group of scenarios is measured again (up to 3 times) while
other processes used more than a quarter of a core, and the report says how much they used.
In full mode, the zen side of every missed target is then profiled with py-spy (a separate
process on the same server) and the profile added to the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio
import orjson
from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from benchmarks._harness import (
    Call,
    Check,
    Comparison,
    CpuWatch,
    Outcome,
    Round,
    calls_round,
    compare_all,
    drop_tenant,
    measure_rounds,
    paced_round,
    profile_rounds,
    py_spy_profile,
    raw_client,
    redis_benchmark,
    save,
    save_markdown,
    server_pid,
    server_url,
)
from zen_async import Settings, Zen, open_zen
from zen_async.agents import (
    AgentCapabilities,
    AgentPerformance,
    AgentSpec,
    AgentStateManager,
    LifecycleState,
)
from zen_async.agents.models import sources_of
from zen_async.events.envelope import agent_shard, shard_stream_name, shard_tag
from zen_async.store.scripts import ScriptRegistry
from zen_async.store.topology import KEYSPACES

BATCH: Final = 500
"""REDIS_PIPELINE_BATCH_SIZE for zen, and the chunk size of every raw pipeline."""
POOL: Final = 50
"""Connections per pool, zen's (REDIS_MAX_CONNECTIONS) and the raw clients' alike."""
TTL_S: Final = 3600
AGENT_TYPE: Final = "bench"
MULTI_SET_LUA: Final = """-- multi-SET PX (the reference of what one Lua call per 500 keys does)
-- KEYS the keys; ARGV[1] TTL in ms; ARGV[i + 1] the value of KEYS[i]
for i, key in ipairs(KEYS) do
  redis.call("SET", key, ARGV[i + 1], "PX", ARGV[1])
end
return #KEYS
"""


RAW_SCRIPTS: Final = ("agent_create", "agent_heartbeat", "agent_transition", "agent_get")
"""zen's scripts that raw baselines run by EVALSHA."""


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does per round."""

    rounds: int
    singles: int  # sequential transitions of one agent per round
    concurrency: int  # agents driven at once, one coroutine each
    bulk: int  # records per bulk call
    bulk_calls: int  # bulk calls per round
    paced_interval: float  # seconds between two transitions of one agent (open loop)
    paced_seconds: float  # length of one open-loop round
    rb_requests: int  # redis-benchmark -n


FULL: Final = Sizes(5, 3000, 1000, 5000, 2, 0.5, 2.0, 200_000)
QUICK: Final = Sizes(5, 40, 50, 200, 1, 0.05, 0.15, 10_000)

DOC: Final = orjson.dumps(
    {  # an agent's JSON document as create_agents stores it (default capabilities)
        "capabilities": AgentCapabilities().model_dump(mode="json"),
        "current_task_id": None,
        "allocated_resources": {},
        "performance": AgentPerformance().model_dump(mode="json"),
        "metadata": {},
    }
)


def names(sizes: Sizes) -> dict[str, str]:
    """The scenario names of a run with ``sizes`` (what the smoke test checks)."""
    c, b, rate = sizes.concurrency, sizes.bulk, round(sizes.concurrency / sizes.paced_interval)
    return {
        "t1": "zen transition (1 agent)",
        "tM": f"zen transition x{max(1, c // 10)} concurrent agents",
        "tN": f"zen transition x{c} concurrent agents",
        "tmany": f"zen transition_many x{c} (one call)",
        "paced": f"zen transition, {c} agents paced ({rate}/s offered)",
        "create": f"zen create_agents ({b}/call)",
        "heartbeats": f"zen heartbeats ({b}/call)",
        "set_many": f"zen Keyspace.set_many with TTL ({b}/call)",
        "get_agents": f"zen get_agents ({b}/call)",
        "mget": f"zen Keyspace.mget ({b}/call)",
    }


class Fleet:
    """Agents each driven ready <-> paused by one coroutine at a time; their state and
    version are tracked here (the MULTI baseline needs them)."""

    def __init__(self, bench: Bench, label: str, count: int) -> None:
        self.ids = [f"{label}-{i}" for i in range(count)]
        self.prefixes = [bench.prefix(a) for a in self.ids]
        self.keys = [p + "agent:" + a for p, a in zip(self.prefixes, self.ids, strict=True)]
        self.hints = [bench.hint_args(a) for a in self.ids]
        self.paused = [False] * count
        self.versions = [2] * count  # created (1), then ready (2)

    def step(self, n: int) -> tuple[str, str]:
        """The next move of agent ``n``: (from, to); recorded as done."""
        before = "paused" if self.paused[n] else "ready"
        self.paused[n] = not self.paused[n]
        return before, "ready" if before == "paused" else "paused"


class Bench:
    """The scenarios of one run, on one open zen and raw clients of the same server."""

    def __init__(
        self, zen: Zen, raw: dict[str, Redis], scripts: ScriptRegistry, sizes: Sizes
    ) -> None:
        self.zen = zen
        self.sizes = sizes
        self.state = zen.redis.keyspace("state")
        self.raw = raw["state"]
        self.scripts = scripts
        self.agents = zen.agents
        self.long_lease = AgentStateManager(
            zen.redis,
            zen.events,
            ports=zen.ports,
            lease_ttl=float(TTL_S),
            metrics=zen.metrics,
        )
        self.no_ports = AgentStateManager(  # heartbeats that renew no port lease
            zen.redis, zen.events, lease_ttl=float(TTL_S), metrics=zen.metrics
        )
        self.sources = {s.value: "," + ",".join(sources_of(s)) + "," for s in LifecycleState}
        self._serial = itertools.count()
        self.multi_set_sha = ""

    # --- naming, as zen_async names an agent's keys ----------------------------------------
    def prefix(self, agent_id: str) -> str:
        return self.state.key(shard_tag(agent_shard(agent_id, self.agents.shards))) + ":"

    def hint_args(self, agent_id: str) -> list[str | int]:
        events = self.zen.events
        shard = agent_shard(agent_id, self.agents.shards)
        return [events.audit_max_len, events.agent_channel, shard_stream_name(shard)]

    def sha(self, name: str) -> str:
        return self.scripts[name].sha

    # --- set-up ----------------------------------------------------------------------------
    async def setup(self) -> None:
        s = self.sizes
        self.zen_one = Fleet(self, "zt1", 1)
        self.lua_one = Fleet(self, "lt1", 1)
        self.multi_one = Fleet(self, "mt1", 1)
        self.pipe_one = Fleet(self, "pt1", 1)
        self.script_one = Fleet(self, "st1", 1)
        self.zen_many = Fleet(self, "ztn", s.concurrency)
        self.lua_many = Fleet(self, "ltn", s.concurrency)
        self.multi_many = Fleet(self, "mtn", s.concurrency)
        self.pipe_many = Fleet(self, "ptn", s.concurrency)
        self.script_many = Fleet(self, "stn", s.concurrency)
        fleets = [
            self.zen_one,
            self.lua_one,
            self.multi_one,
            self.pipe_one,
            self.script_one,
            self.zen_many,
            self.lua_many,
            self.multi_many,
            self.pipe_many,
            self.script_many,
        ]
        ids = [a for f in fleets for a in f.ids]
        await self.long_lease.create_agents(
            [AgentSpec(agent_type=AGENT_TYPE, agent_id=a) for a in ids]
        )
        moved = await self.long_lease.transition_many([(a, "ready", None) for a in ids])
        assert all(not isinstance(r, Exception) for r in moved), moved[:3]
        self.bulk_ids = [f"bulk-{i}" for i in range(s.bulk)]
        await self.long_lease.create_agents(
            [AgentSpec(agent_type=AGENT_TYPE, agent_id=a) for a in self.bulk_ids]
        )
        self.bulk_keys = [self.prefix(a) + "agent:" + a for a in self.bulk_ids]
        self.kv_keys = [self.state.key("bench", "kv", i) for i in range(s.bulk)]
        self.multi_set_sha = await self.raw.script_load(MULTI_SET_LUA)
        for name in RAW_SCRIPTS:  # the raw baselines run them by EVALSHA, maybe before zen
            await self.raw.script_load(self.scripts[name].source)
        await self._raw_set_ex(self.kv_keys)  # the MGET scenarios read these

    # --- transitions -----------------------------------------------------------------------
    def zen_transition(self, fleet: Fleet, *, single: bool) -> Call:
        transition = self.agents.transition

        async def call(i: int) -> int:
            n = 0 if single else i
            _, to = fleet.step(n)
            await transition(fleet.ids[n], to)
            return 1

        return call

    def lua_transition(self, fleet: Fleet, *, single: bool) -> Call:
        raw, sha, sources = self.raw, self.sha("agent_transition"), self.sources

        async def call(i: int) -> int:
            n = 0 if single else i
            _, to = fleet.step(n)
            await raw.evalsha(
                sha,
                1,
                fleet.keys[n],
                fleet.prefixes[n],
                fleet.ids[n],
                to,
                sources[to],
                "",
                "",
                *fleet.hints[n],
            )
            return 1

        return call

    def zen_run_script(self, fleet: Fleet, *, single: bool) -> Call:
        """zen's core call alone (``Keyspace.run_script``) with the arguments
        ``transition()`` sends: the floor of what a transition costs through zen."""
        run_script, sources = self.state.run_script, self.sources

        async def call(i: int) -> int:
            n = 0 if single else i
            to = fleet.step(n)[1]
            await run_script(
                "agent_transition",
                [fleet.keys[n]],
                [fleet.prefixes[n], fleet.ids[n], to, sources[to], "", "", *fleet.hints[n]],
            )
            return 1

        return call

    def lua_transition_pipelined(self, fleet: Fleet, *, single: bool) -> Call:
        """One EVALSHA in a pipeline of its own (how ``run_script_many`` sends a batch of one)."""
        raw, sha, sources = self.raw, self.sha("agent_transition"), self.sources

        async def call(i: int) -> int:
            n = 0 if single else i
            to = fleet.step(n)[1]
            pipe = raw.pipeline(transaction=False)
            pipe.execute_command(
                "EVALSHA",
                sha,
                1,
                fleet.keys[n],
                fleet.prefixes[n],
                fleet.ids[n],
                to,
                sources[to],
                "",
                "",
                *fleet.hints[n],
            )
            await pipe.execute()
            return 1

        return call

    def zen_transition_many(self, fleet: Fleet) -> Round:
        """Every agent of ``fleet`` in one ``transition_many`` call; each agent's latency is
        the call's."""
        transition_many = self.agents.transition_many

        async def measured() -> tuple[int, float, list[float]]:
            moves = [(a, fleet.step(n)[1], None) for n, a in enumerate(fleet.ids)]
            started = time.perf_counter()
            results = await transition_many(moves)
            elapsed = time.perf_counter() - started
            failed = [r for r in results if isinstance(r, Exception)]
            assert not failed, failed[:3]
            return len(results), elapsed, [elapsed] * len(results)

        return measured

    def lua_transition_pipelined_all(self, fleet: Fleet) -> Round:
        """Every agent of ``fleet`` by EVALSHA agent_transition, pipelined in chunks of 500."""
        sha, sources = self.sha("agent_transition"), self.sources

        async def measured() -> tuple[int, float, list[float]]:
            commands = []
            for n in range(len(fleet.ids)):
                _, to = fleet.step(n)
                commands.append(
                    (
                        "EVALSHA",
                        sha,
                        1,
                        fleet.keys[n],
                        fleet.prefixes[n],
                        fleet.ids[n],
                        to,
                        sources[to],
                        "",
                        "",
                        *fleet.hints[n],
                    )
                )
            started = time.perf_counter()
            await self._raw_pipelined(commands)
            elapsed = time.perf_counter() - started
            return len(commands), elapsed, [elapsed] * len(commands)

        return measured

    def multi_transition(self, fleet: Fleet, *, single: bool) -> Call:
        raw = self.raw

        async def call(i: int) -> int:
            n = 0 if single else i
            before, to = fleet.step(n)
            fleet.versions[n] += 1
            version = fleet.versions[n]
            agent_id, p, key = fleet.ids[n], fleet.prefixes[n], fleet.keys[n]
            audit_max_len, channel, stream = fleet.hints[n]
            now = int(time.time() * 1000)
            fields: dict[FieldT, EncodableT] = {
                "time": now,
                "type": "state_changed",
                "agent": agent_id,
                "v": "1",
                "data": orjson.dumps({"from": before, "to": to, "version": version}),
            }
            pipe = raw.pipeline(transaction=True)
            pipe.hset(key, mapping={"state": to, "version": version, "updated": now})
            pipe.zrem(f"{p}idx:st:{before}", agent_id)
            pipe.zrem(f"{p}idx:st:{before}:{AGENT_TYPE}", agent_id)
            pipe.zadd(f"{p}idx:st:{to}", {agent_id: 0})
            pipe.zadd(f"{p}idx:st:{to}:{AGENT_TYPE}", {agent_id: 0})
            pipe.xadd(p + "events", fields)
            pipe.xadd(f"{p}audit:{agent_id}", fields, maxlen=int(audit_max_len), approximate=True)
            hint = {"stream": stream, "type": "state_changed", "agent": agent_id, "to": to}
            pipe.publish(str(channel), orjson.dumps({**hint, "version": version}))
            await pipe.execute()
            return 1

        return call

    # --- bulk writes -----------------------------------------------------------------------
    def spec_batches(self, count: int) -> Iterator[list[AgentSpec]]:
        """``count`` batches of new agents' specs, built before the clock starts."""
        batches = [
            [
                AgentSpec(agent_type=AGENT_TYPE, agent_id=f"c-{next(self._serial)}")
                for _ in range(self.sizes.bulk)
            ]
            for _ in range(count)
        ]
        return iter(batches)

    def create_arg_batches(self, count: int) -> Iterator[tuple[int, list[tuple[Any, ...]]]]:
        """``count`` batches of new agents, each as (agents, raw ``agent_create`` commands):
        one EVALSHA per chunk of at most 500 agents of one shard, as zen sends them."""
        host = "bench-host"
        lease_ms = TTL_S * 1000
        sha = self.sha("agent_create")
        batches = []
        for _ in range(count):
            ids = [f"rc-{next(self._serial)}" for _ in range(self.sizes.bulk)]
            commands = []
            for chunk in self.shard_chunks(ids):
                p = self.prefix(chunk[0])
                args: list[Any] = [p, lease_ms, *self.hint_args(chunk[0])]
                for agent_id in chunk:
                    args += [agent_id, AGENT_TYPE, DOC, host, ""]
                keys = [p + "agent:" + a for a in chunk]
                commands.append(("EVALSHA", sha, len(keys), *keys, *args))
            batches.append((len(ids), commands))
        return iter(batches)

    def shard_chunks(self, agent_ids: Sequence[str]) -> list[list[str]]:
        """``agent_ids`` by shard, in chunks of at most 500 (what one bulk script call takes)."""
        by_shard: dict[int, list[str]] = {}
        for agent_id in agent_ids:
            by_shard.setdefault(agent_shard(agent_id, self.agents.shards), []).append(agent_id)
        return [ids[i : i + BATCH] for ids in by_shard.values() for i in range(0, len(ids), BATCH)]

    def zen_create(self, batches: Iterator[list[AgentSpec]]) -> Call:
        async def call(_: int) -> int:
            return len(await self.long_lease.create_agents(next(batches)))

        return call

    def raw_create(self, batches: Iterator[tuple[int, list[tuple[Any, ...]]]]) -> Call:
        async def call(_: int) -> int:
            agents, commands = next(batches)
            await self._raw_pipelined(commands)
            return agents

        return call

    async def _raw_pipelined(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        replies: list[Any] = []
        for start in range(0, len(commands), BATCH):
            pipe = self.raw.pipeline(transaction=False)
            for command in commands[start : start + BATCH]:
                pipe.execute_command(*command)
            replies.extend(await pipe.execute())
        return replies

    async def _raw_set_ex(self, keys: Sequence[str]) -> int:
        for start in range(0, len(keys), BATCH):
            pipe = self.raw.pipeline(transaction=False)
            for key in keys[start : start + BATCH]:
                pipe.set(key, DOC, ex=TTL_S)
            await pipe.execute()
        return len(keys)

    def raw_set_ex(self) -> Call:
        async def call(_: int) -> int:
            return await self._raw_set_ex(self.kv_keys)

        return call

    def zen_heartbeats(self, *, ports: bool = True) -> Call:
        manager = self.long_lease if ports else self.no_ports

        async def call(_: int) -> int:
            return len(await manager.heartbeats(self.bulk_ids))

        return call

    def raw_heartbeats(self) -> Call:
        sha = self.sha("agent_heartbeat")
        lease_ms = TTL_S * 1000
        commands = []
        for chunk in self.shard_chunks(self.bulk_ids):
            p = self.prefix(chunk[0])
            keys = [p + "agent:" + a for a in chunk]
            hosts = self.zen.ports.hosts_prefix(agent_shard(chunk[0], self.agents.shards))
            commands.append(
                ("EVALSHA", sha, len(keys), *keys, p, lease_ms, "", "", "", hosts, *chunk)
            )

        async def call(_: int) -> int:
            await self._raw_pipelined(commands)
            return len(self.bulk_ids)

        return call

    def zen_set_many(self) -> Call:
        items = dict.fromkeys(self.kv_keys, DOC)

        async def call(_: int) -> int:
            await self.state.set_many(items, ttl_ms=TTL_S * 1000)
            return len(items)

        return call

    def raw_multi_set(self) -> Call:
        commands = [
            ("EVALSHA", self.multi_set_sha, len(chunk), *chunk, TTL_S * 1000, *[DOC] * len(chunk))
            for chunk in _chunks(self.kv_keys, BATCH)
        ]

        async def call(_: int) -> int:
            await self._raw_pipelined(commands)
            return len(self.kv_keys)

        return call

    # --- bulk reads ------------------------------------------------------------------------
    def zen_get_agents(self) -> Call:
        async def call(_: int) -> int:
            records = await self.agents.get_agents(self.bulk_ids)
            return sum(r is not None for r in records)

        return call

    def raw_hgetall(self) -> Call:
        commands = [("HGETALL", key) for key in self.bulk_keys]

        async def call(_: int) -> int:
            return sum(bool(r) for r in await self._raw_pipelined(commands))

        return call

    def zen_mget(self) -> Call:
        async def call(_: int) -> int:
            return sum(v is not None for v in await self.state.mget(self.kv_keys))

        return call

    def raw_mget(self) -> Call:
        commands = [("MGET", *chunk) for chunk in _chunks(self.kv_keys, BATCH)]

        async def call(_: int) -> int:
            replies = await self._raw_pipelined(commands)
            return sum(v is not None for chunk in replies for v in chunk)

        return call

    async def server_costs(self) -> dict[str, float]:
        """Server-side microseconds per record of one call of each zen bulk scenario, from
        INFO commandstats (EVALSHA time: the script and the commands it calls), by scenario
        key."""
        calls: dict[str, Call] = {
            "create": self.zen_create(self.spec_batches(1)),
            "heartbeats": self.zen_heartbeats(),
            "set_many": self.zen_set_many(),
            "get_agents": self.zen_get_agents(),
        }
        costs = {}
        for key, call in calls.items():
            before = await self._script_usec()
            records = await call(0)
            costs[key] = (await self._script_usec() - before) / records
        return costs

    async def _script_usec(self) -> int:
        stats = await self.raw.info("commandstats")
        return sum(
            int(stats[name]["usec"])
            for name in ("cmdstat_evalsha", "cmdstat_eval")
            if name in stats
        )


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# --- the run ---------------------------------------------------------------------------------
def _settings(url: str, tenant: str) -> Settings:
    return Settings(
        _env_file=None,
        redis_url=url,
        redis_embedded="false",
        redis_pipeline_batch_size=BATCH,
        redis_max_connections=POOL,
        redis_namespace=tenant,
    )


@contextlib.asynccontextmanager
async def _opened(url: str, sizes: Sizes) -> AsyncIterator[Bench]:
    """An open zen on a tenant of its own, raw clients on the same DBs, the fixtures set up;
    every key of the tenant removed on exit."""
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    settings = _settings(url, tenant)
    scripts = await anyio.to_thread.run_sync(ScriptRegistry.load)
    raw: dict[str, Redis] = {}
    try:
        async with open_zen(settings) as zen:
            for name in ("state", "streams"):
                raw[name] = raw_client(url, db=zen.redis.keyspace(name).db, max_connections=POOL)
            bench = Bench(zen, raw, scripts, sizes)
            await bench.setup()
            yield bench
            dbs = {zen.redis.keyspace(name).db for name in KEYSPACES}
        await drop_tenant(url, tenant, dbs)
    finally:
        for client in raw.values():
            await client.aclose(close_connection_pool=True)


async def run(url: str, *, quick: bool) -> Outcome:
    """Measure every scenario against its baselines; return the tables and the targets."""
    sizes = QUICK if quick else FULL
    n = names(sizes)
    c, rounds, bulk_calls = sizes.concurrency, sizes.rounds, sizes.bulk_calls
    outcome = Outcome("agents: zen_async vs raw redis-py (same server, same run)")
    before = os.getloadavg()
    async with _opened(url, sizes) as b:
        watch = CpuWatch(await server_pid(url, lambda: b.raw.info("server")))
        attempts = 1 if quick else 3

        async def settled(
            label: str, measure: Callable[[], Awaitable[list[Comparison]]]
        ) -> list[Comparison]:
            return await outcome.settled(label, measure, watch=watch, attempts=attempts)

        def paced(calls: list[tuple[str, Call]]) -> Callable[[], Awaitable[list[Comparison]]]:
            async def measure() -> list[Comparison]:
                interval, seconds = sizes.paced_interval, sizes.paced_seconds
                measures = await measure_rounds(
                    [
                        (name, paced_round(call, c, interval=interval, duration=seconds))
                        for name, call in calls
                    ],
                    rounds=rounds,
                )
                return [Comparison(measures[0], m) for m in measures[1:]]

            return measure

        async def one_call(
            scenario: tuple[str, Round], baseline: tuple[str, Round]
        ) -> list[Comparison]:
            measures = await measure_rounds([scenario, baseline], rounds=rounds)
            return [Comparison(measures[0], measures[1])]

        r: dict[str, list[Comparison]] = {}
        r["t1"] = await settled(
            n["t1"],
            lambda: compare_all(
                (n["t1"], b.zen_transition(b.zen_one, single=True)),
                [
                    (
                        "redis-py EVALSHA agent_transition (1 agent)",
                        b.lua_transition(b.lua_one, single=True),
                    ),
                    (
                        "redis-py MULTI HSET+ZREM/ZADD+XADD+PUBLISH (1 agent)",
                        b.multi_transition(b.multi_one, single=True),
                    ),
                    (
                        "redis-py EVALSHA agent_transition in a pipeline of 1 (1 agent)",
                        b.lua_transition_pipelined(b.pipe_one, single=True),
                    ),
                    (
                        "zen Keyspace.run_script agent_transition alone (1 agent)",
                        b.zen_run_script(b.script_one, single=True),
                    ),
                ],
                rounds=rounds,
                calls=sizes.singles,
            ),
        )
        mid = max(1, c // 10)  # the middle point: 100 agents in a full run
        r["tM"] = await settled(
            n["tM"],
            lambda: compare_all(
                (n["tM"], b.zen_transition(b.zen_many, single=False)),
                [
                    (
                        f"redis-py EVALSHA agent_transition x{mid}",
                        b.lua_transition(b.lua_many, single=False),
                    )
                ],
                rounds=rounds,
                calls=mid,
                concurrent=True,
            ),
        )
        r["tN"] = await settled(
            n["tN"],
            lambda: compare_all(
                (n["tN"], b.zen_transition(b.zen_many, single=False)),
                [
                    (
                        f"redis-py EVALSHA agent_transition x{c}",
                        b.lua_transition(b.lua_many, single=False),
                    ),
                    (
                        f"redis-py MULTI HSET+ZREM/ZADD+XADD+PUBLISH x{c}",
                        b.multi_transition(b.multi_many, single=False),
                    ),
                    (
                        f"redis-py EVALSHA agent_transition in a pipeline of 1 x{c}",
                        b.lua_transition_pipelined(b.pipe_many, single=False),
                    ),
                    (
                        f"zen Keyspace.run_script agent_transition alone x{c}",
                        b.zen_run_script(b.script_many, single=False),
                    ),
                ],
                rounds=rounds,
                calls=c,
                concurrent=True,
            ),
        )
        r["tmany"] = await settled(
            n["tmany"],
            lambda: one_call(
                (n["tmany"], b.zen_transition_many(b.zen_many)),
                (
                    f"redis-py pipelined EVALSHA agent_transition x{c} (one call)",
                    b.lua_transition_pipelined_all(b.lua_many),
                ),
            ),
        )
        r["paced"] = await settled(
            n["paced"],
            paced(
                [
                    (n["paced"], b.zen_transition(b.zen_many, single=False)),
                    (
                        f"redis-py EVALSHA agent_transition, {c} agents paced",
                        b.lua_transition(b.lua_many, single=False),
                    ),
                    (
                        f"zen Keyspace.run_script agent_transition alone, {c} agents paced",
                        b.zen_run_script(b.script_many, single=False),
                    ),
                ]
            ),
        )
        outcome.sections.append(
            (
                "Transitions (ops = transitions; p50/p99 of one transition)",
                [*r["t1"], *r["tM"], *r["tN"], *r["tmany"], *r["paced"]],
            )
        )

        supply = (rounds + 1) * bulk_calls
        r["create"] = await settled(
            n["create"],
            lambda: compare_all(
                (n["create"], b.zen_create(b.spec_batches(supply))),
                [
                    ("redis-py pipelined SET EX", b.raw_set_ex()),
                    (
                        "redis-py pipelined EVALSHA agent_create (same script, per shard chunk)",
                        b.raw_create(b.create_arg_batches(supply)),
                    ),
                ],
                rounds=rounds,
                calls=bulk_calls,
            ),
        )
        r["heartbeats"] = await settled(
            n["heartbeats"],
            lambda: compare_all(
                (n["heartbeats"], b.zen_heartbeats()),
                [
                    ("redis-py pipelined SET EX", b.raw_set_ex()),
                    (
                        "redis-py pipelined EVALSHA agent_heartbeat (same script, per shard chunk)",
                        b.raw_heartbeats(),
                    ),
                    (
                        "zen heartbeats without a port allocator (no host-index reads)",
                        b.zen_heartbeats(ports=False),
                    ),
                ],
                rounds=rounds,
                calls=bulk_calls,
            ),
        )
        r["set_many"] = await settled(
            n["set_many"],
            lambda: compare_all(
                (n["set_many"], b.zen_set_many()),
                [
                    ("redis-py pipelined SET EX", b.raw_set_ex()),
                    (
                        "redis-py Lua multi-SET PX, 500 keys/EVALSHA (reference)",
                        b.raw_multi_set(),
                    ),
                ],
                rounds=rounds,
                calls=bulk_calls,
            ),
        )
        outcome.sections.append(
            (
                "Bulk state writes with TTL (ops = records; p50/p99 of one call)",
                [*r["create"], *r["heartbeats"], *r["set_many"]],
            )
        )
        r["get_agents"] = await settled(
            n["get_agents"],
            lambda: compare_all(
                (n["get_agents"], b.zen_get_agents()),
                [
                    ("redis-py pipelined HGETALL", b.raw_hgetall()),
                    ("redis-py pipelined MGET (500 keys/MGET)", b.raw_mget()),
                ],
                rounds=rounds,
                calls=bulk_calls,
            ),
        )
        r["mget"] = await settled(
            n["mget"],
            lambda: compare_all(
                (n["mget"], b.zen_mget()),
                [("redis-py pipelined MGET (500 keys/MGET)", b.raw_mget())],
                rounds=rounds,
                calls=bulk_calls,
            ),
        )
        outcome.sections.append(
            ("Bulk reads (ops = records; p50/p99 of one call)", [*r["get_agents"], *r["mget"]])
        )
        costs = await b.server_costs()
        outcome.notes.append(
            "Server-side time per record of one zen bulk call (INFO commandstats: EVALSHA "
            "microseconds, which include the commands the scripts call), and the rate the "
            "server alone would allow: "
            + "; ".join(
                f"{n[key]}: {us:.2f} us = {1e6 / us:,.0f} records/s" for key, us in costs.items()
            )
            + ". What a bulk call measures beyond that is the client: packing the arguments "
            "(redis-py's asyncio packer), decoding replies, building records, the event loop."
        )
    if not quick:  # redis-benchmark's figure is only a limit on an otherwise idle machine
        await CpuWatch(None).wait_quiet(25.0, patience=30.0)
    outcome.limits = [
        await redis_benchmark(url, requests=sizes.rb_requests),
        await redis_benchmark(url, requests=sizes.rb_requests, pipeline=16),
    ]
    outcome.loadavg = (before, os.getloadavg())
    leftover = raw_client(url, db=0, max_connections=1)  # redis-benchmark's SET key
    try:
        await leftover.delete("key:__rand_int__")
    finally:
        await leftover.aclose(close_connection_pool=True)
    outcome.checks = _checks(sizes, r, costs)
    return outcome


def _checks(
    sizes: Sizes, results: dict[str, list[Comparison]], costs: dict[str, float]
) -> list[Check]:
    """The issue's targets, against this run's figures (``results`` by scenario key;
    ``costs``: server-side microseconds per record of the bulk calls)."""
    lua = results["t1"][0]
    tn, paced = results["tN"], results["paced"]
    c = sizes.concurrency
    checks = [
        Check(
            "single transition p50 latency <= 1.3x raw (same Lua by EVALSHA)",
            lua.scenario.p50_ms / lua.baseline.p50_ms,
            1.3,
            "x",
            "max",
            f"{lua.scenario.p50_ms:.3f} ms vs {lua.baseline.p50_ms:.3f} ms",
        ),
        Check(
            "single transition mean latency (1/ops) <= 1.3x raw (same Lua by EVALSHA)",
            lua.baseline.ops_per_s / lua.scenario.ops_per_s,
            1.3,
            "x",
            "max",
            f"{lua.scenario.ops_per_s:,.0f} vs {lua.baseline.ops_per_s:,.0f} ops/s",
        ),
        Check(
            f"transition p99 <= 5 ms at {c} concurrent agents (closed loop, all at once)",
            tn[0].scenario.p99_ms,
            5.0,
            "ms",
            "max",
            f"raw EVALSHA p99 {tn[0].baseline.p99_ms:.3f} ms; "
            f"zen run_script alone p99 {tn[-1].baseline.p99_ms:.3f} ms",
        ),
        Check(
            f"transition p99 <= 5 ms at {c} agents in one transition_many call",
            results["tmany"][0].scenario.p99_ms,
            5.0,
            "ms",
            "max",
            f"raw pipelined EVALSHA p99 {results['tmany'][0].baseline.p99_ms:.3f} ms",
        ),
        Check(
            f"transition p99 <= 5 ms at {c} agents, open loop "
            f"({round(c / sizes.paced_interval)}/s offered)",
            paced[0].scenario.p99_ms,
            5.0,
            "ms",
            "max",
            f"raw EVALSHA p99 {paced[0].baseline.p99_ms:.3f} ms; "
            f"zen run_script alone p99 {paced[-1].baseline.p99_ms:.3f} ms",
        ),
    ]
    for label, key in (
        ("create_agents", "create"),
        ("heartbeats", "heartbeats"),
        ("Keyspace.set_many(ttl_ms=)", "set_many"),
    ):
        comparisons = results[key]
        vs_set = comparisons[0]
        same = comparisons[1]  # the same script by raw EVALSHA, or the Lua multi-SET reference
        server = _server_note(costs, key)
        checks += [
            Check(
                f"bulk state writes with TTL >= 3x raw pipelined SET EX: {label}",
                vs_set.ratio,
                3.0,
                "x",
                "min",
                f"{vs_set.scenario.ops_per_s:,.0f} vs {vs_set.baseline.ops_per_s:,.0f} records/s",
            ),
            Check(
                f"bulk state writes with TTL >= 200k records/s: {label}",
                vs_set.scenario.ops_per_s,
                200_000,
                "records/s",
                "min",
                f"{same.baseline.name}: {same.baseline.ops_per_s:,.0f} records/s; {server}",
            ),
        ]
    for label, key in (("get_agents", "get_agents"), ("Keyspace.mget", "mget")):
        comparisons = results[key]
        checks.append(
            Check(
                f"bulk reads >= 300k records/s: {label}",
                comparisons[0].scenario.ops_per_s,
                300_000,
                "records/s",
                "min",
                f"raw {comparisons[0].baseline.name}: "
                f"{comparisons[0].baseline.ops_per_s:,.0f} records/s"
                + (f"; {_server_note(costs, key)}" if key in costs else ""),
            )
        )
    return checks


def _server_note(costs: dict[str, float], key: str) -> str:
    us = costs.get(key)
    if us is None:
        return ""
    return f"server alone: {us:.2f} us/record (<= {1e6 / us:,.0f}/s)"


# --- profiles of missed targets --------------------------------------------------------------
PROFILED: Final = {
    # check prefix -> profile scenario
    "single transition": "t1",
    "transition p99": "tN",
    "bulk state writes with TTL >= 3x raw pipelined SET EX: create_agents": "create",
    "bulk state writes with TTL >= 3x raw pipelined SET EX: heartbeats": "heartbeats",
    "bulk state writes with TTL >= 3x raw pipelined SET EX: Keyspace.set_many": "set_many",
    "bulk reads >= 300k records/s: get_agents": "get_agents",
    "bulk reads >= 300k records/s: Keyspace.mget": "mget",
}


def missed_scenarios(checks: Sequence[Check]) -> list[str]:
    """The profile scenarios of the missed targets, each once, in order."""
    found: list[str] = []
    for check in checks:
        if check.passed:
            continue
        for prefix, scenario in PROFILED.items():
            if check.target.startswith(prefix) and scenario not in found:
                found.append(scenario)
    return found


async def profile_scenario(url: str, scenario: str, *, seconds: float) -> None:
    """Run one zen scenario, without baselines, for about ``seconds`` (under py-spy)."""
    sizes = FULL
    async with _opened(url, sizes) as b:
        per_round: dict[str, tuple[Call, int, bool]] = {}
        if scenario == "t1":
            per_round[scenario] = (b.zen_transition(b.zen_one, single=True), sizes.singles, False)
        elif scenario == "tN":
            per_round[scenario] = (
                b.zen_transition(b.zen_many, single=False),
                sizes.concurrency,
                True,
            )
        elif scenario == "create":
            per_round[scenario] = (b.zen_create(b.spec_batches(16)), 1, False)
        elif scenario == "heartbeats":
            per_round[scenario] = (b.zen_heartbeats(), 1, False)
        elif scenario == "set_many":
            per_round[scenario] = (b.zen_set_many(), 1, False)
        elif scenario == "get_agents":
            per_round[scenario] = (b.zen_get_agents(), 1, False)
        elif scenario == "mget":
            per_round[scenario] = (b.zen_mget(), 1, False)
        else:
            raise SystemExit(f"unknown profile scenario {scenario!r}")
        call, calls, concurrent = per_round[scenario]
        measured = calls_round(call, calls, concurrent=concurrent)
        await measured()  # warm-up, outside the measured phase
        max_rounds = 15 if scenario == "create" else None
        await profile_rounds(measured, seconds=seconds, max_rounds=max_rounds)


async def profiles(url: str, checks: Sequence[Check], *, seconds: float = 4.0) -> list[str]:
    """A py-spy profile of the zen side of every missed target's scenario."""
    out = []
    for scenario in missed_scenarios(checks):
        argv = [
            sys.executable,
            "-m",
            "benchmarks.agents",
            "--url",
            url,
            "--profile-scenario",
            scenario,
            "--seconds",
            str(seconds),
        ]
        await CpuWatch(None).wait_quiet(25.0, patience=30.0)
        out.append(await py_spy_profile(argv, title=names(FULL)[scenario]))
    return out


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few operations: a smoke run")
    parser.add_argument("--url", help="measure against this server instead of a private one")
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the py-spy profiles of missed targets"
    )
    parser.add_argument("--profile-scenario", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=4.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile_scenario:
        asyncio.run(profile_scenario(args.url, args.profile_scenario, seconds=args.seconds))
        return ""
    with server_url(args.url) as url:
        outcome = asyncio.run(run(url, quick=args.quick))
        if not args.quick and not args.no_profile:
            outcome.profiles = asyncio.run(profiles(url, outcome.checks))
    report = outcome.markdown()
    if not args.quick:
        save("agents", outcome.comparisons, {"loop": "asyncio", "batch": BATCH, **outcome.extra()})
        save_markdown("agents", report)
    print(report)
    for check in outcome.checks:
        print(check.line())
    return report


if __name__ == "__main__":
    main()
