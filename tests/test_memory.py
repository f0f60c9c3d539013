"""Agent memory on standalone and Cluster: TTL tiers, validation, exact search against numpy,
relevance, dedup across processes, sync between instances, tenants, consolidation, analytics.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import textwrap
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np
import numpy.typing as npt
import orjson
import pytest
from threadpoolctl import (  # type: ignore[import-untyped, unused-ignore]
    ThreadpoolController,
)

from zen_async import ConflictError, NotFoundError, Settings, ValidationError, Zen, open_zen
from zen_async.codec import Codec
from zen_async.memory import (
    VECTOR_DIM,
    AgentMemoryManager,
    HashingEmbedder,
    MemoryOptions,
    MemoryPriority,
    MemoryType,
    NewMemory,
)
from zen_async.memory.index import BlasGuard, SpaceIndex
from zen_async.memory.relevance import relevance, retention
from zen_async.store import Keyspace
from zen_async.testing.deployments import Deployments, Target, masters
from zen_async.testing.waiting import wait_for

T, P = MemoryType, MemoryPriority
TOPOLOGIES = [("redis", "standalone"), ("redis", "cluster")]
HOUR_MS = 3_600_000.0


@pytest.fixture(params=TOPOLOGIES, ids=[f"{f}-{k}" for f, k in TOPOLOGIES])
def target(request: pytest.FixtureRequest, deployments: Deployments) -> Target:
    """Memory runs on standalone and Cluster (Sentinel adds nothing to what it does)."""
    flavor, kind = request.param
    found = Target(flavor, kind, deployments.get(flavor, kind))
    found.flush()
    return found


def memory(zen: Zen, **options: Any) -> AgentMemoryManager:
    return AgentMemoryManager(
        zen.redis, zen.events, options=MemoryOptions(consolidation_interval=0, **options)
    )


@contextlib.asynccontextmanager
async def following(manager: AgentMemoryManager) -> AsyncIterator[AgentMemoryManager]:
    task = asyncio.create_task(manager.run())

    async def subscribed() -> bool:
        return manager.following

    try:
        await wait_for(subscribed, what="the memory manager follows the change hints")
        yield manager
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def random_vectors(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    return rng.standard_normal((n, VECTOR_DIM)).astype(np.float32)


def near(
    rng: np.random.Generator, base: npt.NDArray[np.float32], cosine: float
) -> npt.NDArray[np.float32]:
    """A vector at exactly ``cosine`` from ``base``."""
    u = base / np.linalg.norm(base)
    noise = rng.standard_normal(VECTOR_DIM)
    noise -= noise @ u * u
    noise /= np.linalg.norm(noise)
    out: npt.NDArray[np.float32] = (cosine * u + math.sqrt(1 - cosine**2) * noise).astype(
        np.float32
    )
    return out


def space_prefix(zen: Zen, space: str, shards: int = 16) -> str:
    """The documented key prefix of a space (layout in zen_async/memory/layout.py)."""
    ks = zen.redis.keyspace("memory", tenant=zen.tenant)
    return ks.key(f"{{m:{zen.tenant}:{zlib.crc32(space.encode()) % shards}}}") + ":"


def mem_ks(zen: Zen) -> Keyspace:
    return zen.redis.keyspace("memory", tenant=zen.tenant)


async def raw_entries(zen: Zen, space: str) -> list[dict[str, bytes]]:
    """Every stored entry of a space, read straight from Redis."""
    prefix, ks = space_prefix(zen, space), mem_ks(zen)
    ids = await ks.execute("ZRANGE", prefix + "ids:" + space, 0, -1)
    found = []
    for memory_id in ids:
        fields = await ks.execute("HGETALL", prefix + "e:" + memory_id.decode())
        if fields:
            found.append({k.decode(): v for k, v in fields.items()})
    return found


async def key_count(target: Target) -> int:
    def count() -> int:
        return sum(int(s.cli("DBSIZE")) for s in masters(target.group))

    return await anyio.to_thread.run_sync(count)


# --- pure: the formula, options, the hashing embedder -------------------------------------
def test_relevance_formula_golden_values() -> None:
    o = MemoryOptions()
    now = 1_700_000_000_000.0

    def score(s: float, accessed_h: float, created_h: float, *more: float) -> float:
        p, n, t = more
        values = relevance(
            np.array([s]),
            now,
            last_accessed_ms=np.array([now - accessed_h * HOUR_MS]),
            created_ms=np.array([now - created_h * HOUR_MS]),
            priority_score=np.array([p]),
            access_count=np.array([float(n)]),
            tag_match=np.array([t]),
            options=o,
        )
        return float(values[0])

    # 0.6*0.8 + 0.15*(0.5*0.5 + 0.5*0.5) + 0.1*0.75 + 0.1*ln(10)/ln(101) + 0.05*0.5
    assert score(0.8, 1, 24, 0.75, 9, 0.5) == pytest.approx(0.7048921985805477, abs=1e-12)
    # a fresh, unread, temporary memory at cosine -0.25: 0.6*-0.25 + 0.15*1
    assert score(-0.25, 0, 0, 0.0, 0, 0.0) == pytest.approx(0.0, abs=1e-12)
    # access saturates at 100 reads; recency 0.25 at one half-life each... twice
    assert score(1.0, 2, 48, 1.0, 1000, 1.0) == pytest.approx(0.8875, abs=1e-12)
    # a time in the future (clock skew) counts as now
    assert score(0.0, -5, -5, 0.0, 0, 0.0) == pytest.approx(0.15, abs=1e-12)
    kept = retention(
        now,
        last_accessed_ms=np.array([now - HOUR_MS]),
        created_ms=np.array([now - 24 * HOUR_MS]),
        priority_score=np.array([0.75]),
        access_count=np.array([9.0]),
        options=o,
    )
    assert float(kept[0]) == pytest.approx(0.19989219858054785, abs=1e-12)


def test_options_compute_ttls_and_refuse_bad_values() -> None:
    o = MemoryOptions()
    assert o.ttl_ms(T.SHORT_TERM, P.MEDIUM) == 30 * 60_000
    assert o.ttl_ms(T.WORKING, P.CRITICAL) == 4 * 2 * 3_600_000
    assert o.ttl_ms(T.LONG_TERM, P.TEMPORARY) == 24 * 3_600_000 // 4
    assert o.ttl_ms(T.SHARED, P.CRITICAL) == 0
    assert o.ttl_ms(T.PROCEDURAL, P.LOW) == 0
    with pytest.raises(ValidationError, match="short_term"):
        MemoryOptions(ttls={T.SHORT_TERM: -1.0})
    with pytest.raises(ValidationError, match="thresholds"):
        MemoryOptions(link_threshold=0.99, merge_threshold=0.9)

    loaded = MemoryOptions.from_settings(
        Settings(
            redis_memory_ttl_episodic=60,
            redis_memory_ttl_short_term="none",
            redis_memory_weight_similarity=0.9,
            redis_memory_ttl_multiplier_low=0.1,
        )
    )
    assert loaded.ttl_ms(T.EPISODIC, P.MEDIUM) == 60_000
    assert loaded.ttl_ms(T.SHORT_TERM, P.MEDIUM) == 0
    assert loaded.ttl_ms(T.EPISODIC, P.LOW) == 6_000
    assert loaded.weight_similarity == 0.9


@pytest.mark.parametrize("n", [3_000, 20_000])
@pytest.mark.parametrize("blas", [True, False])
def test_scan_kernels_return_numpy_brute_force_top_k(n: int, blas: bool) -> None:
    """Both similarity kernels (one-thread BLAS for small scans, numpy's row-wise kernel for
    large ones or when BLAS threads cannot be held) give numpy's exact top-k."""
    rng = np.random.default_rng(n)
    vectors = random_vectors(rng, n)
    index = SpaceIndex("kernels", 0, capacity=n)
    index.vectors[:n] = vectors
    index.inv_norm[:n] = 1.0 / np.linalg.norm(vectors, axis=1)
    index.expires[:n] = np.inf
    index.n = n
    for query in random_vectors(rng, 5):
        unit = query / np.linalg.norm(query)
        expected = (vectors.astype(np.float64) @ unit) / np.linalg.norm(vectors, axis=1)
        positions, sims = index.scan(
            unit, 0.0, allowed_types=None, tag_rows=None, threshold=-1.0, k=10, blas=blas
        )
        assert set(positions.tolist()) == set(np.argsort(-expected)[:10].tolist())
        np.testing.assert_allclose(sims, expected[positions], atol=1e-5)


async def test_blas_guard_never_claims_one_thread_when_blas_has_more() -> None:
    """single_threaded is read back, not assumed: a BLAS thread setting may not take."""
    guard = BlasGuard()
    await guard.ready()
    controllers = ThreadpoolController().select(user_api="blas").lib_controllers

    def inside() -> tuple[bool, list[int]]:
        with guard:
            return guard.single_threaded, [c.num_threads for c in controllers]

    for single, threads in [inside(), await anyio.to_thread.run_sync(inside), inside()]:
        assert single == (bool(threads) and all(t == 1 for t in threads)), threads


async def test_hashing_embedder_is_deterministic_lexical_and_unit_length() -> None:
    embedder = HashingEmbedder()
    texts = ["the cat sat on the mat", "a cat on a mat", "quarterly revenue grew", "!!!"]
    first = await embedder.embed(texts)
    again = await embedder.embed(texts)
    assert first.shape == (4, VECTOR_DIM)
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-6)
    assert first[0] @ first[1] > 0.3 > abs(float(first[0] @ first[2]))
    big = await embedder.embed(["word " * 5000, *texts])  # long batch: hashed in a thread
    np.testing.assert_allclose(big[1:], first, rtol=1e-6)
    with pytest.raises(ValidationError, match="empty"):
        await embedder.embed(["  "])


# --- storing, reading, updating ------------------------------------------------------------
async def test_store_retrieve_update_delete(zen: Zen) -> None:
    mem = memory(zen)
    entry = await mem.store_memory(
        "agent-1",
        "the build failed on the linker step",
        memory_type=T.EPISODIC,
        priority=P.HIGH,
        tags=["ci", "build"],
        metadata={"run": 42},
    )
    assert entry.memory_id.startswith("m")
    assert (entry.namespace, entry.agent_id, entry.version) == ("default", "agent-1", 1)
    assert (entry.memory_type, entry.priority, entry.tags) == (T.EPISODIC, P.HIGH, ("ci", "build"))
    assert entry.metadata == {"run": 42}
    assert entry.expires_at is None  # episodic: no TTL by default
    assert entry.vector.shape == (VECTOR_DIM,)
    assert entry.access_count == 0
    read = await mem.retrieve_memory(entry.memory_id)
    assert read is not None
    assert read.access_count == 1
    assert read.last_accessed >= entry.last_accessed
    assert read.content == entry.content
    np.testing.assert_array_equal(read.vector, entry.vector)
    peek = await mem.get_memory(entry.memory_id)
    assert peek is not None
    assert peek.access_count == 1, "get_memory does not count a read"

    json_entry = await mem.store_memory(
        "agent-1", {"steps": ["checkout", "build"], "ok": False}, memory_type=T.EPISODIC
    )
    assert json_entry.content == {"steps": ["checkout", "build"], "ok": False}
    working = await mem.store_memory("agent-1", "scratch")
    assert working.expires_at is not None  # working: 2 h

    updated = await mem.update_memory(entry.memory_id, content="the build passed", tags=["ci"])
    assert (updated.version, updated.content, updated.tags) == (2, "the build passed", ("ci",))
    assert updated.content_hash != entry.content_hash
    assert not np.array_equal(updated.vector, entry.vector), "new content is embedded again"
    assert updated.metadata == {"run": 42}
    hits = await mem.search_memories("agent-1", "build passed", limit=1)
    assert hits[0].memory_entry.content == "the build passed"
    with pytest.raises(ConflictError, match="version 2, expected 1"):
        await mem.update_memory(entry.memory_id, metadata={}, expected_version=1)
    with pytest.raises(ConflictError, match="duplicate"):
        await mem.update_memory(json_entry.memory_id, content="the build passed")
    same_text = await mem.update_memory(working.memory_id, content="the build passed")
    assert same_text.version == 2, "the same content in another type is no duplicate"
    await mem.delete_memory(working.memory_id)

    assert await mem.delete_memory(entry.memory_id) is True
    assert await mem.delete_memory(entry.memory_id) is False
    assert await mem.retrieve_memory(entry.memory_id) is None
    with pytest.raises(NotFoundError):
        await mem.update_memory(entry.memory_id, content="x")
    assert [h.memory_entry.memory_id for h in await mem.search_memories("agent-1", "build")] == [
        json_entry.memory_id
    ]


async def test_exact_duplicates_are_reinforced_not_copied(zen: Zen) -> None:
    mem = memory(zen)
    first = await mem.store_memory("a", "remember the milk", memory_type=T.SHORT_TERM)
    second = await mem.store_memory("a", "remember the milk", memory_type=T.SHORT_TERM)
    assert second.memory_id == first.memory_id
    assert second.access_count == 1
    assert second.expires_at is not None
    assert first.expires_at is not None
    assert second.expires_at >= first.expires_at, "reinforcing extends the expiry"
    other_type = await mem.store_memory("a", "remember the milk", memory_type=T.WORKING)
    other_agent = await mem.store_memory("b", "remember the milk", memory_type=T.SHORT_TERM)
    assert len({first.memory_id, other_type.memory_id, other_agent.memory_id}) == 3
    batch = await mem.store_memories(
        [NewMemory("a", "twice in one batch"), NewMemory("a", "twice in one batch")]
    )
    assert batch[0].memory_id == batch[1].memory_id
    analytics = await mem.get_memory_analytics("a")
    assert (analytics.total_memories, analytics.dedup_count) == (3, 2)


async def test_bad_input_raises_validation_error_and_writes_nothing(
    zen: Zen, target: Target
) -> None:
    mem = memory(zen, max_content_bytes=1000)
    before = await key_count(target)
    good = np.ones(VECTOR_DIM, dtype=np.float32)
    bad_vectors: list[Any] = [
        np.ones(383),
        np.ones((2, VECTOR_DIM)),
        np.where(np.arange(VECTOR_DIM) == 3, np.nan, 1.0),
        np.where(np.arange(VECTOR_DIM) == 3, np.inf, 1.0),
        np.zeros(VECTOR_DIM),
        ["x"] * VECTOR_DIM,
    ]
    for vector in bad_vectors:
        with pytest.raises(ValidationError):
            await mem.store_memory("a", "text", vector=vector)
        with pytest.raises(ValidationError):
            await mem.search_memories("a", vector=vector)
    for bad in ("", "m1", "m99-" + "0" * 32, "x" * 40, "m1-" + "Z" * 32):
        with pytest.raises(ValidationError, match="memory id"):
            await mem.retrieve_memory(bad)
        with pytest.raises(ValidationError, match="memory id"):
            await mem.delete_memory(bad)
    with pytest.raises(ValidationError, match="bytes"):
        await mem.store_memory("a", "x" * 2000)
    with pytest.raises(ValidationError, match="empty"):
        await mem.store_memory("a", "   ")
    with pytest.raises(ValidationError, match="agent id"):
        await mem.store_memory("bad agent!", "text")
    with pytest.raises(ValidationError, match="memory type"):
        await mem.store_memory("a", "text", memory_type="forever")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="tag"):
        await mem.store_memory("a", "text", tags=["ok", ""])
    with pytest.raises(ValidationError, match="JSON"):
        await mem.store_memory("a", "text", metadata={"when": object()})  # type: ignore[dict-item]
    with pytest.raises(ValidationError, match="query text or a vector"):
        await mem.search_memories("a")
    with pytest.raises(ValidationError, match="limit"):
        await mem.search_memories("a", "q", limit=0)
    with pytest.raises(ValidationError, match="threshold"):
        await mem.search_memories("a", "q", similarity_threshold=1.5)
    with pytest.raises(ValidationError):  # one bad item: none of the batch is written
        await mem.store_memories([NewMemory("a", "fine", vector=good), NewMemory("a", "  ")])
    assert await key_count(target) == before


# --- TTL tiers -----------------------------------------------------------------------------
async def test_ttl_tiers_and_priorities_set_expiry(zen: Zen) -> None:
    mem = memory(zen)
    for memory_type in MemoryType:
        for priority in MemoryPriority:
            entry = await mem.store_memory(
                "ttl", f"{memory_type} {priority}", memory_type=memory_type, priority=priority
            )
            ttl_ms = mem.options.ttl_ms(memory_type, priority)
            if ttl_ms == 0:
                assert entry.expires_at is None, (memory_type, priority)
            else:
                assert entry.expires_at is not None
                lived = (entry.expires_at - entry.created_at).total_seconds() * 1000
                assert lived == pytest.approx(ttl_ms, abs=1), (memory_type, priority)
    assert mem.options.ttl_ms(T.SHORT_TERM, P.MEDIUM) == 1_800_000
    assert mem.options.ttl_ms(T.WORKING, P.MEDIUM) == 7_200_000
    assert mem.options.ttl_ms(T.LONG_TERM, P.MEDIUM) == 86_400_000


async def test_memory_settings_from_the_environment_reach_zen_memory(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REDIS_MEMORY_* variables are read by Settings at start-up and configure zen.memory."""
    monkeypatch.setenv("REDIS_MEMORY_TTL_SHORT_TERM", "90")
    monkeypatch.setenv("REDIS_MEMORY_TTL_SEMANTIC", "600")
    monkeypatch.setenv("REDIS_MEMORY_TTL_MULTIPLIER_HIGH", "3")
    monkeypatch.setenv("REDIS_MEMORY_MAX_TAGS", "2")
    async with open_zen(target.settings()) as zen:
        mem = zen.memory
        assert mem.options.ttl_ms(T.SHORT_TERM, P.MEDIUM) == 90_000
        entry = await mem.store_memory(
            "env", "semantic fact", memory_type=T.SEMANTIC, priority=P.HIGH
        )
        assert entry.expires_at is not None
        lived = (entry.expires_at - entry.created_at).total_seconds()
        assert lived == pytest.approx(1800, abs=0.01)  # 600 s x 3
        with pytest.raises(ValidationError, match="tags"):
            await mem.store_memory("env", "too many tags", tags=["a", "b", "c"])


async def test_ttl_tiers_really_expire(zen: Zen) -> None:
    mem = memory(
        zen,
        ttls={T.SHORT_TERM: 0.2, T.WORKING: 0.5, T.LONG_TERM: 3600.0},
        ttl_multipliers={P.CRITICAL: 100.0},
    )
    short = await mem.store_memory("agent", "short fact", memory_type=T.SHORT_TERM)
    short_critical = await mem.store_memory(
        "agent", "short but critical", memory_type=T.SHORT_TERM, priority=P.CRITICAL
    )
    working = await mem.store_memory("agent", "working fact", memory_type=T.WORKING)
    long_term = await mem.store_memory("agent", "long fact", memory_type=T.LONG_TERM)
    prefix, ks = space_prefix(zen, "agent"), mem_ks(zen)

    async def gone(memory_id: str) -> bool:
        stored = await ks.execute("EXISTS", prefix + "e:" + memory_id)
        return stored == 0 and await mem.retrieve_memory(memory_id) is None

    async def searchable() -> set[str]:
        hits = await mem.search_memories("agent", "fact", limit=10, similarity_threshold=-1)
        return {h.memory_entry.memory_id for h in hits}

    assert await searchable() == {
        short.memory_id,
        short_critical.memory_id,
        working.memory_id,
        long_term.memory_id,
    }
    await wait_for(lambda: gone(short.memory_id), what="short_term memory expired")
    assert short.memory_id not in await searchable()
    await wait_for(lambda: gone(working.memory_id), what="working memory expired")
    assert await searchable() == {short_critical.memory_id, long_term.memory_id}
    assert await mem.consolidate_memories("agent") == 2  # prunes the two from the index
    ids = await ks.execute("ZRANGE", prefix + "ids:agent", 0, -1)
    assert sorted(i.decode() for i in ids) == sorted(
        [short_critical.memory_id, long_term.memory_id]
    )


# --- search --------------------------------------------------------------------------------
def numpy_top_k(
    matrix: npt.NDArray[np.float32], query: npt.NDArray[np.float32], k: int, mask: Any = None
) -> tuple[list[int], npt.NDArray[np.float64]]:
    m = matrix.astype(np.float64)
    sims = m @ query.astype(np.float64) / (np.linalg.norm(m, axis=1) * np.linalg.norm(query))
    if mask is not None:
        sims = np.where(mask, sims, -np.inf)
    top = np.argsort(-sims)[:k]
    return top.tolist(), sims


async def test_search_returns_exactly_numpy_top_k(zen: Zen) -> None:
    rng = np.random.default_rng(7)
    own, shared = random_vectors(rng, 1500), random_vectors(rng, 500)
    own_types = [T.SEMANTIC if i % 2 else T.WORKING for i in range(1500)]
    own_tags = [("red",) if i % 3 == 0 else ("blue",) for i in range(1500)]
    items = [
        NewMemory("agent", f"own {i}", own_types[i], tags=own_tags[i], vector=own[i])
        for i in range(1500)
    ] + [NewMemory(None, f"shared {i}", T.SHARED, vector=shared[i]) for i in range(500)]
    ids = [e.memory_id for e in await memory(zen).store_memories(items)]
    matrix = np.vstack([own, shared])
    queries = random_vectors(rng, 8)
    for offload_rows in (100_000, 100):  # on the loop, and in a worker thread
        mem = memory(zen, offload_rows=offload_rows)  # a fresh instance: loads from Redis
        for q in queries:
            want, sims = numpy_top_k(matrix, q, 10)
            got = await mem.search_memories("agent", vector=q, limit=10, similarity_threshold=-1)
            assert {r.memory_entry.memory_id for r in got} == {ids[i] for i in want}
            for r in got:
                assert r.similarity_score == pytest.approx(
                    sims[ids.index(r.memory_entry.memory_id)]
                )
            assert [r.rank for r in got] == list(range(1, 11))
            scores = [r.relevance_score for r in got]
            assert scores == sorted(scores, reverse=True)
        # filters: types and tags, own space only
        q = queries[0]
        mask = np.array(
            [own_types[i] is T.SEMANTIC and own_tags[i] == ("red",) for i in range(1500)]
            + [False] * 500
        )
        want, _ = numpy_top_k(matrix, q, 25, mask)
        got = await mem.search_memories(
            "agent",
            vector=q,
            memory_types=[T.SEMANTIC],
            tags=["red"],
            limit=25,
            similarity_threshold=-1,
            include_shared=False,
        )
        assert {r.memory_entry.memory_id for r in got} == {ids[i] for i in want}
        # the shared space alone
        want, _ = numpy_top_k(matrix, q, 5, np.arange(2000) >= 1500)
        got = await mem.search_memories(None, vector=q, limit=5, similarity_threshold=-1)
        assert {r.memory_entry.memory_id for r in got} == {ids[i] for i in want}


async def test_similarity_threshold_zero_is_a_real_threshold(zen: Zen) -> None:
    rng = np.random.default_rng(3)
    base = random_vectors(rng, 1)[0]
    mem = memory(zen)
    plus = await mem.store_memory("a", "plus", vector=near(rng, base, 0.5))
    await mem.store_memory("a", "minus", vector=near(rng, base, -0.5))
    at_zero = await mem.search_memories("a", vector=base)
    assert [r.memory_entry.memory_id for r in at_zero] == [plus.memory_id]
    assert at_zero[0].similarity_score == pytest.approx(0.5, abs=1e-5)
    assert len(await mem.search_memories("a", vector=base, similarity_threshold=-1.0)) == 2
    assert await mem.search_memories("a", vector=base, similarity_threshold=0.6) == []


async def test_relevance_orders_equally_similar_hits(zen: Zen) -> None:
    rng = np.random.default_rng(5)
    base = random_vectors(rng, 1)[0]
    mem = memory(zen)
    low = await mem.store_memory("a", "low", priority=P.LOW, vector=near(rng, base, 0.8))
    high = await mem.store_memory("a", "high", priority=P.HIGH, vector=near(rng, base, 0.8))
    tagged = await mem.store_memory("a", "tagged", tags=["x"], vector=near(rng, base, 0.8))
    hits = await mem.search_memories("a", vector=base)
    assert [h.memory_entry.memory_id for h in hits][:1] == [high.memory_id]
    assert hits[-1].memory_entry.memory_id == low.memory_id
    for _ in range(20):
        await mem.retrieve_memory(low.memory_id)
    hits = await mem.search_memories("a", vector=base)
    assert hits[0].memory_entry.memory_id == low.memory_id, "20 reads outweigh a priority step"
    only = await mem.search_memories("a", vector=base, tags=["x"])
    assert [h.memory_entry.memory_id for h in only] == [tagged.memory_id]


# --- instances, tenants, processes ---------------------------------------------------------
async def test_two_instances_see_each_others_writes(zen: Zen, target: Target) -> None:
    async with open_zen(target.settings()) as zen_b:
        a, b = memory(zen), memory(zen_b)
        async with following(a), following(b):
            assert await a.search_memories("ag", "alpha beta") == []  # a has loaded the space
            entry = await b.store_memory("ag", "alpha beta gamma")
            hits = await b.search_memories("ag", "alpha beta")
            assert [h.memory_entry.memory_id for h in hits] == [entry.memory_id], "own write"

            async def a_sees(content: str, count: int | None = None) -> bool:
                found = await a.search_memories("ag", "alpha", similarity_threshold=-1)
                return any(
                    h.memory_entry.content == content
                    and (count is None or h.memory_entry.access_count == count)
                    for h in found
                )

            await wait_for(lambda: a_sees("alpha beta gamma"), what="A sees B's store")
            await b.update_memory(entry.memory_id, content="alpha delta")
            await wait_for(lambda: a_sees("alpha delta"), what="A sees B's update")
            await b.retrieve_memory(entry.memory_id)
            await b.retrieve_memory(entry.memory_id)
            await wait_for(lambda: a_sees("alpha delta", 2), what="A sees B's reads")
            shared = await a.store_memory(None, "alpha shared knowledge", memory_type=T.SHARED)

            async def b_sees_shared() -> bool:
                found = await b.search_memories("ag", "alpha shared knowledge")
                return shared.memory_id in {h.memory_entry.memory_id for h in found}

            await wait_for(b_sees_shared, what="B sees A's shared store")
            await b.delete_memory(entry.memory_id)

            async def a_lost() -> bool:
                found = await a.search_memories("ag", "alpha", similarity_threshold=-1)
                return entry.memory_id not in {h.memory_entry.memory_id for h in found}

            await wait_for(a_lost, what="A sees B's delete")


async def test_sync_without_run_and_after_a_trimmed_feed(zen: Zen, target: Target) -> None:
    if target.kind == "cluster":
        pytest.skip("feed mechanics are topology-independent; covered on standalone")
    reader, writer = memory(zen, change_stream_max_len=10), memory(zen, change_stream_max_len=10)
    assert await reader.search_memories("ag", "word") == []
    first = await writer.store_memory("ag", "word one")
    assert await reader.sync() >= 1
    assert [h.memory_entry.memory_id for h in await reader.search_memories("ag", "word")] == [
        first.memory_id
    ]
    # far more changes than the feed keeps: the reader notices the gap and reloads
    await writer.store_memories([NewMemory("ag", f"word {i}") for i in range(400)])
    await reader.sync()
    hits = await reader.search_memories("ag", "word", limit=1000, similarity_threshold=-1)
    assert len(hits) == 401


async def test_namespaces_are_isolated(zen: Zen) -> None:
    other = zen.for_tenant("tenant-b")
    mine = memory(zen)
    theirs = AgentMemoryManager(
        other.redis, other.events, options=MemoryOptions(consolidation_interval=0)
    )
    a = await mine.store_memory("agent", "the same words")
    b = await theirs.store_memory("agent", "the same words")
    sa = await mine.store_memory(None, "shared words")
    sb = await theirs.store_memory(None, "shared words")
    assert (a.namespace, b.namespace) == ("default", "tenant-b")
    assert a.memory_id != b.memory_id
    assert b.access_count == 0, "no dedup across tenants"
    assert await theirs.retrieve_memory(a.memory_id) is None
    assert await mine.retrieve_memory(b.memory_id) is None
    assert await theirs.delete_memory(a.memory_id) is False
    mine_hits = await mine.search_memories("agent", "same shared words", similarity_threshold=-1)
    theirs_hits = await theirs.search_memories(
        "agent", "same shared words", similarity_threshold=-1
    )
    assert {h.memory_entry.memory_id for h in mine_hits} == {a.memory_id, sa.memory_id}
    assert {h.memory_entry.memory_id for h in theirs_hits} == {b.memory_id, sb.memory_id}
    assert (await theirs.get_memory_analytics("agent")).total_memories == 1
    with pytest.raises(ValidationError, match="tenant"):
        AgentMemoryManager(zen.redis, zen.events, tenant="tenant-b")


RACER = textwrap.dedent(
    """
    import asyncio, sys
    from zen_async import Settings, open_zen
    from zen_async.logs import configure_logging
    from zen_async.memory import AgentMemoryManager, MemoryOptions

    configure_logging("warning")  # logs to stderr: stdout carries the ids to the test

    async def main() -> None:
        rounds, width = int(sys.argv[1]), int(sys.argv[2])
        async with open_zen(Settings(_env_file=None)) as zen:
            mem = AgentMemoryManager(
                zen.redis, zen.events, options=MemoryOptions(consolidation_interval=0)
            )
            print("ready", flush=True)
            sys.stdin.readline()
            ids = set()
            for _ in range(rounds):
                batch = [mem.store_memory("racer", "one shared fact") for _ in range(width)]
                ids |= {e.memory_id for e in await asyncio.gather(*batch)}
            print(" ".join(sorted(ids)), flush=True)

    asyncio.run(main())
    """
)


def settings_env(target: Target) -> dict[str, str]:
    s = target.settings()
    env = {"REDIS_EMBEDDED": "false"}
    if s.redis_url:
        env["REDIS_URL"] = s.redis_url
    if s.redis_use_cluster:
        env |= {"REDIS_USE_CLUSTER": "true", "REDIS_CLUSTER_NODES": s.redis_cluster_nodes}
    if s.password:
        env["REDIS_PASSWORD"] = s.password
    return env


async def test_duplicate_stores_racing_from_two_processes_make_one_entry(
    zen: Zen, target: Target, tmp_path: Path
) -> None:
    rounds, width = 4, 50
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(rounds),
        str(width),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd(), **settings_env(target)},
    )
    assert child.stdout is not None
    assert child.stdin is not None
    assert (await child.stdout.readline()).strip() == b"ready"
    mem = memory(zen)
    child.stdin.write(b"go\n")
    await child.stdin.drain()
    mine: set[str] = set()
    for _ in range(rounds):
        batch = [mem.store_memory("racer", "one shared fact") for _ in range(width)]
        mine |= {e.memory_id for e in await asyncio.gather(*batch)}
    out, _ = await child.communicate()
    theirs = set(out.decode().split())
    assert mine == theirs
    assert len(mine) == 1, "both processes got the one entry"
    stored = await raw_entries(zen, "racer")
    assert len(stored) == 1
    total = 2 * rounds * width
    assert int(stored[0]["ac"]) == total - 1, "every later store reinforced it"
    analytics = await mem.get_memory_analytics("racer")
    assert (analytics.total_memories, analytics.dedup_count) == (1, total - 1)


# --- consolidation and analytics -----------------------------------------------------------
async def test_consolidation_counts_and_results(zen: Zen) -> None:
    rng = np.random.default_rng(11)
    mem = memory(
        zen,
        ttls={T.SHORT_TERM: 60.0},
        ttl_multipliers={P.TEMPORARY: 0.004},  # short_term temporary: 0.24 s
        recency_half_life_accessed=0.001,
        recency_half_life_created=0.001,
        prune_threshold=0.04,
        promote_min_access=3,
    )
    v1, v2 = random_vectors(rng, 2)

    async def put(name: str, t: MemoryType, p: MemoryPriority, v: Any, **kw: Any) -> str:
        return (
            await mem.store_memory("agent", name, memory_type=t, priority=p, vector=v, **kw)
        ).memory_id

    a1 = await put("a1", T.WORKING, P.HIGH, v1, tags=["x"])
    a2 = await put("a2", T.WORKING, P.MEDIUM, near(rng, v1, 0.99), tags=["y"])
    b1 = await put("b1", T.SEMANTIC, P.MEDIUM, v2)
    b2 = await put("b2", T.SEMANTIC, P.MEDIUM, near(rng, v2, 0.9))
    c = await put("c", T.WORKING, P.LOW, random_vectors(rng, 1)[0])
    d = await put("d", T.SHORT_TERM, P.MEDIUM, random_vectors(rng, 1)[0])
    e = await put("e", T.SHORT_TERM, P.TEMPORARY, random_vectors(rng, 1)[0])
    f = await put("f", T.WORKING, P.CRITICAL, random_vectors(rng, 1)[0])
    for _ in range(2):
        await mem.retrieve_memory(a2)
    for _ in range(3):
        await mem.retrieve_memory(d)

    async def expired() -> bool:
        return await mem.get_memory(e) is None

    await wait_for(expired, what="the temporary short_term memory expired")
    assert await mem.consolidate_memories("agent") == 3  # e expired, c pruned, a2 merged

    analytics = await mem.get_memory_analytics("agent")
    report = analytics.last_consolidation
    assert report is not None
    assert (report.expired, report.pruned, report.merged, report.promoted, report.linked) == (
        1,
        1,
        1,
        1,
        1,
    )
    assert (analytics.merge_count, analytics.forget_count, analytics.promotion_count) == (1, 2, 1)
    left = {r["id"].decode(): r for r in await raw_entries(zen, "agent")}
    assert set(left) == {a1, b1, b2, d, f}
    survivor = await mem.get_memory(a1)
    assert survivor is not None
    assert (survivor.access_count, survivor.tags, survivor.version) == (2, ("x", "y"), 2)
    first, second = await mem.get_memory(b1), await mem.get_memory(b2)
    assert first is not None
    assert second is not None
    assert (first.related_memories, second.related_memories) == ((b2,), (b1,))
    promoted = await mem.get_memory(d)
    assert promoted is not None
    assert promoted.memory_type is T.LONG_TERM
    assert promoted.expires_at is not None
    lived = (promoted.expires_at - promoted.last_accessed).total_seconds()
    assert lived > 23 * 3600, "promotion gives the long_term TTL"

    trail = [ev for ev in await zen.events.audit_trail("agent") if ev.type.startswith("memory_")]
    by_type = {(ev.type, ev.data.get("memory_id") or ev.data.get("merged")): ev for ev in trail}
    assert by_type["memory_forgotten", e].data["reason"] == "expired"
    assert by_type["memory_forgotten", c].data["reason"] == "low_relevance"
    assert by_type["memory_forgotten", c].data["retention_score"] < 0.04
    assert by_type["memory_merged", a2].data["survivor"] == a1
    assert by_type["memory_merged", a2].data["similarity"] == pytest.approx(0.99, abs=1e-4)
    assert by_type["memory_promoted", d].data["to"] == "long_term"
    assert len(trail) == 4

    # a second run finds nothing more to do
    assert await mem.consolidate_memories("agent") == 0
    # the shared space records its forgets and merges in the "memory" stream
    await mem.store_memory(None, "s1", vector=v1)
    await mem.store_memory(None, "s2", vector=near(rng, v1, 0.98))
    assert await mem.consolidate_memories(None) == 1
    events = [ev async for ev in zen.events.replay("memory")]
    assert [ev.type for ev in events] == ["memory_merged"]


async def test_analytics_equal_a_recomputation_from_redis(zen: Zen) -> None:
    mem = memory(zen)
    rng = np.random.default_rng(2)
    big = " ".join(f"line {i} of a long and very repetitive log" for i in range(200))
    ids = []
    for i in range(30):
        content: Any = (
            big + str(i) if i % 5 == 0 else {"n": i, "kind": "json"} if i % 7 == 0 else f"m{i}"
        )
        entry = await mem.store_memory(
            "stats",
            content,
            memory_type=list(MemoryType)[i % 7],
            priority=list(MemoryPriority)[i % 5],
        )
        ids.append(entry.memory_id)
    dups = 0
    for i in range(1, 30, 4):
        stored = await mem.get_memory(ids[i])
        assert stored is not None
        if stored.agent_id is not None:  # shared-typed ones went to the shared space
            await mem.store_memory("stats", stored.content, memory_type=stored.memory_type,
                                   priority=stored.priority)  # fmt: skip
            dups += 1
    for i in rng.integers(0, 30, 40).tolist():
        await mem.retrieve_memory(ids[i])
    analytics = await mem.get_memory_analytics("stats")

    raw = await raw_entries(zen, "stats")
    by_type = dict.fromkeys(MemoryType, 0)
    by_priority = dict.fromkeys(MemoryPriority, 0)
    for r in raw:
        by_type[MemoryType(r["type"].decode())] += 1
        by_priority[MemoryPriority(r["prio"].decode())] += 1
    docs = sum(len(r["doc"]) for r in raw)
    uncompressed = sum(len(orjson.dumps(orjson.loads(Codec.decode(r["doc"])))) + 1 for r in raw)
    accesses = sorted(((r["id"].decode(), int(r["ac"])) for r in raw), key=lambda p: (-p[1], p[0]))
    assert analytics.total_memories == len(raw) == 30 - sum(1 for i in range(30) if i % 7 == 3)
    assert analytics.by_type == by_type
    assert analytics.by_priority == by_priority
    assert analytics.total_size_mb == pytest.approx(
        (docs + sum(len(r["vec"]) for r in raw)) / 1_048_576
    )
    assert analytics.compression_ratio == pytest.approx(uncompressed / docs)
    assert analytics.compression_ratio > 1.5, "long content is compressed by the codec"
    assert analytics.average_access_frequency == pytest.approx(
        sum(int(r["ac"]) for r in raw) / len(raw)
    )
    assert analytics.most_accessed_memories == tuple(accesses[:10])
    assert (analytics.dedup_count, analytics.merge_count) == (dups, 0)
    assert analytics.last_consolidation is None


async def test_run_consolidates_loaded_spaces_periodically(zen: Zen, target: Target) -> None:
    if target.kind == "cluster":
        pytest.skip("scheduling is topology-independent; covered on standalone")
    mem = AgentMemoryManager(
        zen.redis, zen.events, options=MemoryOptions(consolidation_interval=0.2)
    )
    await mem.store_memory("busy", "something")
    await mem.search_memories("busy", "something")  # loaded here: this instance consolidates it

    async def consolidated() -> bool:
        return (await mem.get_memory_analytics("busy")).last_consolidation is not None

    async with following(mem):
        await wait_for(consolidated, what="a background consolidation of the loaded space")
