"""Core overhead: one GET/SET through a Keyspace against raw redis-py, concurrent GETs, and
batched writes through the batch helper against a raw redis-py pipeline, in one run.

    python -m benchmarks.core [--quick] [--url redis://127.0.0.1:6379/0]

Without --url it starts its own redis-server on a free loopback port.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from redis.asyncio import BlockingConnectionPool, Redis

from benchmarks._harness import Comparison, compare, save, server_url, table
from zen_async import Settings, open_zen

BATCH = 500


async def run(url: str, *, quick: bool) -> list[Comparison]:
    rounds = 5
    singles = 200 if quick else 3000
    concurrency = 200 if quick else 1000
    batches = 4 if quick else 40
    settings = Settings(
        _env_file=None,
        redis_url=url,
        redis_embedded="false",
        redis_pipeline_batch_size=BATCH,
        redis_max_connections=50,
    )
    pool = BlockingConnectionPool.from_url(url, max_connections=50, db=2)
    raw = Redis(connection_pool=pool)
    comparisons: list[Comparison] = []
    try:
        async with open_zen(settings) as zen:
            ks = zen.redis.keyspace("state")
            keys = [ks.key(f"bench:{i}") for i in range(max(singles, concurrency))]
            value = b"x" * 100

            async def zen_set(i: int) -> int:
                await ks.set(keys[i], value)
                return 1

            async def raw_set(i: int) -> int:
                await raw.set(keys[i], value)
                return 1

            async def zen_get(i: int) -> int:
                await ks.get(keys[i])
                return 1

            async def raw_get(i: int) -> int:
                await raw.get(keys[i])
                return 1

            for label, ours, theirs in (("SET", zen_set, raw_set), ("GET", zen_get, raw_get)):
                comparisons.append(
                    await compare(
                        (f"core {label}", ours),
                        (f"redis-py {label}", theirs),
                        rounds=rounds,
                        calls=singles,
                    )
                )
            comparisons.append(
                await compare(
                    (f"core GET x{concurrency} concurrent", zen_get),
                    (f"redis-py GET x{concurrency} concurrent", raw_get),
                    rounds=rounds,
                    calls=concurrency,
                    concurrent=True,
                )
            )

            chunk_keys = [ks.key(f"bench:batch:{i}") for i in range(BATCH)]

            async def zen_batch(_: int) -> int:
                await ks.set_many(dict.fromkeys(chunk_keys, value), ttl_ms=600_000)
                return BATCH

            async def raw_batch(_: int) -> int:
                pipe = raw.pipeline(transaction=False)
                for key in chunk_keys:
                    pipe.set(key, value, px=600_000)
                await pipe.execute()
                return BATCH

            comparisons.append(
                await compare(
                    (f"core set_many ({BATCH}/batch)", zen_batch),
                    (f"redis-py pipeline ({BATCH}/batch)", raw_batch),
                    rounds=rounds,
                    calls=batches,
                )
            )
            await ks.delete(*keys, *chunk_keys)
    finally:
        await raw.aclose(close_connection_pool=True)
    return comparisons


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few operations: a smoke run")
    parser.add_argument("--url", help="measure against this server instead of a private one")
    args = parser.parse_args(argv)
    with server_url(args.url) as url:
        comparisons = asyncio.run(run(url, quick=args.quick))
    report = table("core: zen_async Keyspace vs raw redis-py (same server, same run)", comparisons)
    if not args.quick:
        save("core", comparisons, {"loop": "asyncio", "batch": BATCH})
    print(report)
    return report


if __name__ == "__main__":
    main()
