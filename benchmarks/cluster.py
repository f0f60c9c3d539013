"""Cluster vs standalone (issue #8, scenario 8, for scenario 2): agent state written and read
in bulk, and transitions at 1000 concurrent agents, through the same zen_async code against a
local Redis Cluster (3 masters + 3 replicas, started and stopped by the module) and a
standalone server, in alternating rounds of the same run; raw redis-py doing the same
commands on both, as the cost of the topology itself. (Scenario 8 for the fleet, scenario
4, is in ``benchmarks/fleet.py``.)

    python -m benchmarks.cluster [--quick] [--url redis://127.0.0.1:6379]

Without --url it starts its own redis-server on a free loopback port.

The scenarios are the agents module's, run by its own functions (``benchmarks.agents.Bench``)
on a zen opened on each topology: ``create_agents``, ``heartbeats``, ``Keyspace.set_many``
with a TTL, ``get_agents``, ``Keyspace.mget`` (5000 records a call, 2 calls a round) and one
transition of each of 1000 agents at once. The raw rows are pipelined ``SET key value EX``
(chunks of 500), pipelined ``HGETALL`` of the agent hashes and ``EVALSHA agent_transition``
by 1000 coroutines: a standalone ``redis.asyncio.Redis`` and a ``redis.asyncio.RedisCluster``
(which splits a pipeline by node; its node pools raise instead of waiting when full, so it
may open a connection per coroutine in flight). Ratio = Cluster / standalone.

Where the layouts differ: on Cluster zen uses the ``prefixed`` layout (one DB), and spreads
agents over 16 shards whose keys share the tag ``{z<shard>}``, so a bulk call is one Lua call
per shard chunk, each on the master owning that shard's slot; ``Keyspace.set_many`` and
``mget`` group keys by slot, and keys without a shared tag land in as many slots as keys.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final, cast

import anyio
from redis.asyncio import Redis

from benchmarks import agents
from benchmarks._harness import (
    Call,
    Check,
    Comparison,
    Outcome,
    calls_round,
    drop_tenant,
    measure_rounds,
    raw_client,
    save,
    save_markdown,
    server_pid,
    server_url,
)
from benchmarks._topologies import (
    POOL,
    ProcessesWatch,
    RawClient,
    cluster_client,
    cluster_pids,
    cluster_settings,
    loadavg,
    local_cluster,
    standalone_settings,
)
from zen_async import Settings, Zen, open_zen
from zen_async.store.scripts import ScriptRegistry
from zen_async.store.topology import KEYSPACES

STANDALONE: Final = "standalone"
CLUSTER: Final = "Cluster 3+3"
SEED_WRITE: Final = 10_000
"""The seed's claimed state writes/s (from timing mocks); the issue wants bulk paths >= 10x."""
SEED_READ: Final = 12_500
"""The seed's claimed state reads/s."""


def names(sizes: agents.Sizes) -> dict[str, str]:
    """The scenario names (without the topology) of a run with ``sizes``."""
    base = agents.names(sizes)
    return {
        "create": base["create"],
        "heartbeats": base["heartbeats"],
        "set_many": base["set_many"],
        "get_agents": base["get_agents"],
        "mget": base["mget"],
        "tN": base["tN"],
        "raw_set": "redis-py pipelined SET EX",
        "raw_hgetall": "redis-py pipelined HGETALL",
        "raw_tN": f"redis-py EVALSHA agent_transition x{sizes.concurrency}",
    }


@contextlib.asynccontextmanager
async def _opened(
    settings: Settings,
    raw: Callable[[Zen], RawClient],
    sizes: agents.Sizes,
    scripts: ScriptRegistry,
) -> AsyncIterator[agents.Bench]:
    """An open zen and a raw client of one topology, with the agents module's fixtures."""
    async with open_zen(settings) as zen:
        client = raw(zen)
        try:
            # RedisCluster has every method Bench calls on its raw client (pipeline,
            # script_load, evalsha, info): the same code runs on both topologies.
            bench = agents.Bench(zen, {"state": cast(Redis, client)}, scripts, sizes)
            await bench.setup()
            yield bench
        finally:
            if isinstance(client, Redis):
                await client.aclose(close_connection_pool=True)
            else:
                await client.aclose()


def _call(b: agents.Bench, sizes: agents.Sizes, key: str) -> tuple[Call, int, bool]:
    """Scenario ``key`` of one topology: (call, calls per round, all at once). Made anew for
    each attempt: ``create`` consumes its batches of new agents (built before the clock)."""
    bulk = sizes.bulk_calls
    if key == "create":
        return b.zen_create(b.spec_batches((sizes.rounds + 1) * bulk)), bulk, False
    if key == "tN":
        return b.zen_transition(b.zen_many, single=False), sizes.concurrency, True
    if key == "raw_tN":
        return b.lua_transition(b.lua_many, single=False), sizes.concurrency, True
    calls: dict[str, Call] = {
        "heartbeats": b.zen_heartbeats(),
        "set_many": b.zen_set_many(),
        "get_agents": b.zen_get_agents(),
        "mget": b.zen_mget(),
        "raw_set": b.raw_set_ex(),
        "raw_hgetall": b.raw_hgetall(),
    }
    return calls[key], bulk, False


SECTIONS: Final = (
    (
        "Bulk state writes with TTL (ops = records; p50/p99 of one call)",
        ("create", "heartbeats", "set_many", "raw_set"),
    ),
    ("Bulk reads (ops = records; p50/p99 of one call)", ("get_agents", "mget", "raw_hgetall")),
    ("Transitions, all agents at once (ops = transitions; p50/p99 of one)", ("tN", "raw_tN")),
)


async def run(url: str, *, quick: bool) -> Outcome:
    """Each scenario on standalone and on a local cluster, alternating, same run."""
    sizes = agents.QUICK if quick else agents.FULL
    n = names(sizes)
    tenant = f"bench-cluster-{uuid.uuid4().hex[:8]}"
    outcome = Outcome(
        "cluster: agent state on Redis Cluster (3 masters + 3 replicas) vs standalone "
        "(same code, same run)"
    )
    before = loadavg()
    scripts = await anyio.to_thread.run_sync(ScriptRegistry.load)
    results: dict[str, Comparison] = {}
    async with local_cluster() as cluster:
        pids = cluster_pids(cluster)
        standalone = _opened(
            standalone_settings(url, tenant),
            lambda zen: raw_client(url, db=zen.redis.keyspace("state").db, max_connections=POOL),
            sizes,
            scripts,
        )
        clustered = _opened(
            cluster_settings(cluster, tenant),
            lambda _: cluster_client(cluster, in_flight=sizes.concurrency),
            sizes,
            scripts,
        )
        async with standalone as s, clustered as c:
            dbs = {s.zen.redis.keyspace(name).db for name in KEYSPACES}
            pid = await server_pid(url, lambda: s.raw.info("server"))
            watch = ProcessesWatch([*pids, *([] if pid is None else [pid])])
            benches = {STANDALONE: s, CLUSTER: c}
            for key, label in n.items():

                def measure(key: str = key, label: str = label) -> Awaitable[list[Comparison]]:
                    calls = {t: _call(b, sizes, key) for t, b in benches.items()}
                    return _compare(label, calls, rounds=sizes.rounds)

                found = await outcome.settled(
                    label, measure, watch=watch, attempts=1 if quick else 2
                )
                results[key] = found[0]
        await drop_tenant(url, tenant, dbs)
    outcome.sections = [(title, [results[k] for k in keys]) for title, keys in SECTIONS]
    outcome.loadavg = (before, loadavg())
    outcome.checks = _checks(results)
    outcome.notes = [
        "The cluster's 6 nodes, the standalone server and this client share the machine's 2 "
        "cores (and other work): on real hardware each master has cores of its own, and a "
        "cluster's throughput grows with its masters; here it can only show the cost of "
        "routing and of spreading one bulk call over several masters.",
        "Each scenario's rounds alternate between the topologies (one warm-up round each).",
    ]
    return outcome


async def _compare(
    label: str, by_topology: dict[str, tuple[Call, int, bool]], *, rounds: int
) -> list[Comparison]:
    named = []
    for topology in (STANDALONE, CLUSTER):
        call, calls, concurrent = by_topology[topology]
        named.append((f"{label} on {topology}", calls_round(call, calls, concurrent=concurrent)))
    standalone, cluster = await measure_rounds(named, rounds=rounds)
    return [Comparison(cluster, standalone)]


def _checks(results: dict[str, Comparison]) -> list[Check]:
    """The issue's bulk targets (>= 10x the seed's claimed figures), on Cluster."""
    checks = []
    for key, seed, what in (
        ("create", SEED_WRITE, "writes"),
        ("heartbeats", SEED_WRITE, "writes"),
        ("set_many", SEED_WRITE, "writes"),
        ("get_agents", SEED_READ, "reads"),
        ("mget", SEED_READ, "reads"),
    ):
        c = results[key]
        checks.append(
            Check(
                f"on Cluster, bulk state {what} >= 10x the seed's {seed:,}/s: "
                f"{c.scenario.name.removesuffix(f' on {CLUSTER}')}",
                c.scenario.ops_per_s,
                10 * seed,
                "records/s",
                "min",
                f"standalone {c.baseline.ops_per_s:,.0f} records/s; Cluster/standalone "
                f"{c.ratio:.2f}x",
            )
        )
    return checks


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few operations: a smoke run")
    parser.add_argument("--url", help="measure against this server instead of a private one")
    args = parser.parse_args(argv)
    with server_url(args.url) as url:
        outcome = asyncio.run(run(url, quick=args.quick))
    report = outcome.markdown()
    if not args.quick:
        save("cluster", outcome.comparisons, {"loop": "asyncio", **outcome.extra()})
        save_markdown("cluster", report)
    print(report)
    for check in outcome.checks:
        print(check.line())
    return report


if __name__ == "__main__":
    from zen_async.logs import configure_logging

    configure_logging("warning")  # zen's logs to stderr; stdout carries the report
    main()
