"""Analytics of a memory space: counts, sizes, compression and access figures from a fresh
read of Redis, plus the space's counters (dedup, merges, forgets, promotions) and its last
consolidation report."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from zen_async.memory.layout import Layout, from_ms, text
from zen_async.memory.models import (
    ConsolidationReport,
    MemoryAnalytics,
    MemoryPriority,
    MemoryType,
)
from zen_async.memory.spaces import SpaceCache

__all__ = ["analytics"]


async def analytics(cache: SpaceCache, layout: Layout, space: str) -> MemoryAnalytics:
    """Figures on a space, from a fresh read of Redis (the space is reloaded)."""
    index = await cache.reload(space)
    shard = layout.shard_of(space)
    stats_raw = await layout.ks.execute("HGETALL", layout.stats(shard, space))
    stats = {text(k): v for k, v in (stats_raw or {}).items()}
    now = cache.now_ms()
    live = index.live(now)
    rows = [row for i, row in enumerate(index.rows[: index.n]) if live[i]]
    access = index.access[: index.n][live]
    by_type = dict.fromkeys(MemoryType, 0)
    by_priority = dict.fromkeys(MemoryPriority, 0)
    for row in rows:
        by_type[row.memory_type] += 1
        by_priority[row.priority] += 1
    stored_docs = sum(len(row.doc) for row in rows)
    raw_docs = sum(row.raw_size for row in rows)
    size = stored_docs + int(index.vectors.shape[1]) * 4 * len(rows)
    ranked = sorted(
        zip((r.memory_id for r in rows), access.tolist(), strict=True),
        key=lambda pair: (-pair[1], pair[0]),
    )
    last = stats.get("consolidation")
    return MemoryAnalytics(
        space=space,
        total_memories=len(rows),
        by_type=by_type,
        by_priority=by_priority,
        total_size_mb=size / 1_048_576,
        compression_ratio=raw_docs / stored_docs if stored_docs else 1.0,
        average_access_frequency=float(access.mean()) if rows else 0.0,
        most_accessed_memories=tuple((m, int(a)) for m, a in ranked[:10]),
        dedup_count=int(stats.get("dedup", 0)),
        merge_count=int(stats.get("merges", 0)),
        forget_count=int(stats.get("forgets", 0)),
        promotion_count=int(stats.get("promotions", 0)),
        last_consolidation=None if last is None else _report(last),
        computed_at=from_ms(now),
    )


def _report(raw: Any) -> ConsolidationReport:
    data = orjson.loads(raw)
    data["finished_at"] = datetime.fromisoformat(data["finished_at"])
    return ConsolidationReport(**data)
