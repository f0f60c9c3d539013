"""Agent memory: bulk store throughput (vectors given: no embedding time) against a raw
redis-py pipeline writing the same hashes; search latency at 1k, 10k and 100k memories
against plain numpy brute force on the same matrix, in the same run; where scans should
leave the event loop (the crossover); and MiniLM embedding throughput when the
``embeddings`` extra is installed.

    python -m benchmarks.memory [--quick] [--url redis://127.0.0.1:6379/0]

Without --url it starts its own redis-server on a free loopback port. numpy runs with one
BLAS thread on both sides: the run sets it (threadpoolctl) on the main thread before any
scan, and checks that it held. (With numpy's bundled OpenBLAS a thread count set from one
thread can be ignored once another thread set it first, see BlasGuard: set late, the
baseline would silently use two threads.)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib.util
import io
import os
import platform
import pstats
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from redis.asyncio import BlockingConnectionPool, Redis
from threadpoolctl import (  # type: ignore[import-untyped, unused-ignore]
    ThreadpoolController,
    threadpool_limits,
)

from benchmarks._harness import Comparison, compare, save, save_markdown, server_url, table
from zen_async import Settings, Zen, open_zen
from zen_async.logs import configure_logging
from zen_async.memory import (
    VECTOR_DIM,
    AgentMemoryManager,
    MemoryOptions,
    NewMemory,
    SentenceTransformerEmbedder,
)

TARGET = 1.3
"""Search p50 may be at most this many times numpy's."""
CHUNK = 1000


@dataclass(frozen=True)
class Crossover:
    rows: int
    loop_p50_ms: float
    thread_p50_ms: float
    loop_concurrent_per_s: float
    thread_concurrent_per_s: float


def _vectors(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    return rng.standard_normal((n, VECTOR_DIM)).astype(np.float32)


def _manager(zen: Zen, **options: Any) -> AgentMemoryManager:
    return AgentMemoryManager(
        zen.redis, zen.events, options=MemoryOptions(consolidation_interval=0, **options)
    )


async def _fill(mem: AgentMemoryManager, space: str, vectors: npt.NDArray[np.float32]) -> None:
    for start in range(0, len(vectors), CHUNK):
        await mem.store_memories(
            [
                NewMemory(space, f"{space} memory {start + i}", vector=v)
                for i, v in enumerate(vectors[start : start + CHUNK])
            ]
        )


async def bench_store(zen: Zen, url: str, *, quick: bool) -> Comparison:
    rng = np.random.default_rng(1)
    per_call = 500
    calls = 2 if quick else 10
    vectors = _vectors(rng, per_call)
    mem = _manager(zen)
    raw = Redis(connection_pool=BlockingConnectionPool.from_url(url, max_connections=8, db=3))
    counter = iter(range(10**9))
    try:

        async def ours(_: int) -> int:
            run = next(counter)
            await mem.store_memories(
                [
                    NewMemory(f"store-{run % 7}", f"bulk {run} {i}", vector=v)
                    for i, v in enumerate(vectors)
                ]
            )
            return per_call

        async def baseline(_: int) -> int:
            run = next(counter)
            pipe = raw.pipeline(transaction=False)
            for i, v in enumerate(vectors):
                key = f"bench:raw:{run}:{i}"
                pipe.hset(key, mapping={"doc": f"bulk {run} {i}", "vec": v.tobytes(), "v": 1})
                pipe.pexpire(key, 7_200_000)
            await pipe.execute()
            return per_call

        return await compare(
            (f"store_memories ({per_call}/call, dedup + index + feed)", ours),
            (f"redis-py pipeline HSET+PEXPIRE ({per_call}/call)", baseline),
            rounds=3 if quick else 5,
            calls=calls,
        )
    finally:
        await raw.aclose(close_connection_pool=True)


async def bench_search(zen: Zen, sizes: Sequence[int], *, quick: bool) -> list[Comparison]:
    rng = np.random.default_rng(2)
    queries = _vectors(rng, 64)
    comparisons = []
    for n in sizes:
        vectors = _vectors(rng, n)
        space = f"search-{n}"
        await _fill(_manager(zen), space, vectors)
        mem = _manager(zen)  # a fresh instance: loads the space from Redis
        await mem.search_memories(space, vector=queries[0], include_shared=False)
        matrix = vectors.copy()
        inv = (1.0 / np.linalg.norm(matrix, axis=1)).astype(np.float32)

        async def ours(i: int, mem: AgentMemoryManager = mem, space: str = space) -> int:
            await mem.search_memories(space, vector=queries[i % 64], include_shared=False)
            return 1

        async def numpy_top10(
            i: int, matrix: npt.NDArray[np.float32] = matrix, inv: npt.NDArray[np.float32] = inv
        ) -> int:
            q = queries[i % 64]
            sims = (matrix @ (q / np.linalg.norm(q))) * inv
            top = np.argpartition(sims, len(sims) - 10)[-10:]
            top[np.argsort(-sims[top])]
            return 1

        # Many short alternating rounds: other load on the machine drifts; both sides share it.
        calls = 50 if quick else (10 if n >= 100_000 else 50)
        with threadpool_limits(1, "blas"):
            comparisons.append(
                await compare(
                    (f"search_memories top-10 of {n:,}", ours),
                    (f"numpy top-10 of {n:,}", numpy_top10),
                    rounds=3 if quick else 21,
                    calls=calls,
                )
            )
    return comparisons


async def bench_crossover(zen: Zen, sizes: Sequence[int], *, quick: bool) -> list[Crossover]:
    """Search latency on the loop and in a worker thread, one at a time and 8 at once."""
    rng = np.random.default_rng(3)
    queries = _vectors(rng, 16)
    found = []
    for n in sizes:
        space = f"cross-{n}"
        await _fill(_manager(zen), space, _vectors(rng, n))
        row = []
        for offload in (10**9, 0):
            mem = _manager(zen, offload_rows=offload)
            await mem.search_memories(space, vector=queries[0], include_shared=False)
            latencies = []
            for i in range(20 if quick else 200):
                t0 = time.perf_counter()
                await mem.search_memories(space, vector=queries[i % 16], include_shared=False)
                latencies.append(time.perf_counter() - t0)
            latencies.sort()
            started = time.perf_counter()
            rounds = 3 if quick else 20
            for _ in range(rounds):
                await asyncio.gather(
                    *(
                        mem.search_memories(space, vector=q, include_shared=False)
                        for q in queries[:8]
                    )
                )
            rate = rounds * 8 / (time.perf_counter() - started)
            row.append((latencies[len(latencies) // 2] * 1000, rate))
        found.append(Crossover(n, row[0][0], row[1][0], row[0][1], row[1][1]))
    return found


async def bench_embedding(*, quick: bool) -> Comparison | None:
    if importlib.util.find_spec("sentence_transformers") is None:
        return None
    embedder = SentenceTransformerEmbedder()
    await embedder.load()
    batch = [f"sentence number {i} about agents, memory and redis" for i in range(64)]
    model = embedder._model  # the same model, called directly, as the baseline

    async def ours(_: int) -> int:
        await embedder.embed(batch)
        return len(batch)

    async def direct(_: int) -> int:
        model.encode(batch, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        return len(batch)

    return await compare(
        ("SentenceTransformerEmbedder.embed (64/call, in a thread)", ours),
        ("model.encode (64/call, on the loop)", direct),
        rounds=2 if quick else 5,
        calls=2 if quick else 8,
    )


def verdicts(searches: list[Comparison]) -> str:
    lines = [
        "| memories | search p50 ms | numpy p50 ms | p50 ratio | search p99 ms | numpy p99 ms "
        f"| target <= {TARGET}x |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in searches:
        ratio = c.scenario.p50_ms / c.baseline.p50_ms
        n = c.scenario.name.rsplit(" ", 1)[-1]
        verdict = "PASS" if ratio <= TARGET else "MISS"
        lines.append(
            f"| {n} | {c.scenario.p50_ms:.3f} | {c.baseline.p50_ms:.3f} | {ratio:.2f}x "
            f"| {c.scenario.p99_ms:.3f} | {c.baseline.p99_ms:.3f} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def crossover_table(rows: list[Crossover]) -> str:
    lines = [
        "| rows | on-loop p50 ms | thread p50 ms | on-loop 8 at once /s | thread 8 at once /s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.rows:,} | {r.loop_p50_ms:.3f} | {r.thread_p50_ms:.3f} "
            f"| {r.loop_concurrent_per_s:,.0f} | {r.thread_concurrent_per_s:,.0f} |"
        )
    return "\n".join(lines) + "\n"


async def profile_search(zen: Zen, n: int) -> str:
    """A cProfile of searches at ``n`` memories (printed when a size misses the target)."""
    space = f"search-{n}"
    mem = _manager(zen)
    q = _vectors(np.random.default_rng(4), 1)[0]
    await mem.search_memories(space, vector=q, include_shared=False)
    profiler = cProfile.Profile()
    with threadpool_limits(1, "blas"):
        profiler.enable()
        for _ in range(200):
            await mem.search_memories(space, vector=q, include_shared=False)
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
    return out.getvalue()


def blas_threads() -> list[int]:
    """The thread count of each BLAS library numpy loaded, as seen from this thread (a BLAS
    that another package loaded, e.g. torch's in a test process, is not numpy's)."""
    controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    return [int(c.num_threads) for c in controllers if "numpy" in str(c.filepath)]


async def run(url: str, *, quick: bool) -> dict[str, Any]:
    """Every part of the benchmark, with BLAS on one thread for the whole run (checked)."""
    with threadpool_limits(1, "blas"):
        results = await _run(url, quick=quick)
        results["blas_threads"] = blas_threads()
    if any(n != 1 for n in results["blas_threads"]):
        raise RuntimeError(
            f"BLAS ran on {results['blas_threads']} threads, not 1: the numpy baseline is not "
            "what the report says; nothing is saved"
        )
    return results


async def _run(url: str, *, quick: bool) -> dict[str, Any]:
    settings = Settings(
        _env_file=None, redis_url=url, redis_embedded="false", redis_max_connections=50
    )
    sizes = (1000, 5000) if quick else (1000, 10_000, 100_000)
    cross = (1000, 4000) if quick else (1000, 2000, 4000, 8000, 16_000, 32_000, 64_000)
    async with open_zen(settings) as zen:
        store = await bench_store(zen, url, quick=quick)
        searches = await bench_search(zen, sizes, quick=quick)
        crossover = await bench_crossover(zen, cross, quick=quick)
        profiles = {}
        for c in searches:
            if c.scenario.p50_ms / c.baseline.p50_ms > TARGET:
                n = int(c.scenario.name.rsplit(" ", 1)[-1].replace(",", ""))
                profiles[n] = await profile_search(zen, n)
    embedding = await bench_embedding(quick=quick)
    return {
        "store": store,
        "searches": searches,
        "crossover": crossover,
        "embedding": embedding,
        "profiles": profiles,
    }


def report(results: dict[str, Any]) -> str:
    comparisons = [results["store"], *results["searches"]]
    if results["embedding"] is not None:
        comparisons.append(results["embedding"])
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = (
        f"{when}; {platform.machine()}, {os.cpu_count()} cores (shared with other work), "
        f"Python {platform.python_version()}, numpy {np.__version__}, BLAS threads "
        f"{results.get('blas_threads')}\n"
    )
    parts = [
        table("memory: zen_async against its baselines (same server, same run)", comparisons),
        machine,
        "### search latency against numpy (one BLAS thread each)\n",
        verdicts(results["searches"]),
        "### where scans should leave the loop\n",
        crossover_table(results["crossover"]),
    ]
    if results["embedding"] is None:
        parts.append("MiniLM: skipped (pip install 'zen-async[embeddings]')\n")
    for n, text in results["profiles"].items():
        parts.append(f"### profile of search at {n:,} (missed the target)\n\n```\n{text}```\n")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few operations: a smoke run")
    parser.add_argument("--url", help="measure against this server instead of a private one")
    args = parser.parse_args(argv)
    configure_logging("warning")  # zen's logs to stderr; stdout carries the report
    with server_url(args.url) as url:
        results = asyncio.run(run(url, quick=args.quick))
    text = report(results)
    if not args.quick:
        comparisons = [results["store"], *results["searches"]]
        if results["embedding"] is not None:
            comparisons.append(results["embedding"])
        save(
            "memory",
            comparisons,
            {
                "loop": "asyncio",
                "blas_threads": results["blas_threads"],
                "crossover": [vars(c) for c in results["crossover"]],
            },
        )
        save_markdown("memory", text)
    print(text)
    return text


if __name__ == "__main__":
    main()
