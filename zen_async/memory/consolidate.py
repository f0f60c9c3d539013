"""Consolidation and analytics of a memory space, and the version-guarded writes they share
with the manager (update, delete, merge).

One consolidation of a space, in order:

1. **expire**: entries past their expiry (server clock) are forgotten (``memory_expire``);
2. **prune**: live, non-critical entries whose retention score
   (:func:`zen_async.memory.relevance.retention`) is below ``prune_threshold`` are forgotten;
3. **merge**: pairs of one type with cosine >= ``merge_threshold``, most similar first, are
   merged: the survivor (higher priority, then more accessed, then older, then smaller id)
   absorbs the other's access count, tags and links, and the later expiry;
4. **promote**: short_term and working entries read at least ``promote_min_access`` times
   become long_term, with the long_term TTL from now (an exact long_term duplicate absorbs
   them instead);
5. **link**: pairs with cosine >= ``link_threshold`` (and not merged) record each other in
   ``related_memories`` (at most ``max_links`` each).

Every forget (``memory_forgotten``: id, reason, type, priority, content hash, score or expiry)
and merge (``memory_merged``: survivor, merged id, similarity) is an event in the agent's audit
trail, or in the ``memory`` stream for the shared space; promotions are recorded as
``memory_promoted``. Each write is version-guarded: an entry changed meanwhile by someone
else is left alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final

import anyio.to_thread
import numpy as np
import numpy.typing as npt
import orjson
import structlog

from zen_async.errors import ConflictError, NotFoundError, ValidationError, ZenError
from zen_async.events import EventLog
from zen_async.memory.index import BlasGuard, SpaceIndex
from zen_async.memory.layout import SHARED_SPACE, Layout, Row, from_ms, text
from zen_async.memory.models import (
    ConsolidationReport,
    MemoryPriority,
    MemoryType,
)
from zen_async.memory.options import PRIORITY_SCORES, MemoryOptions
from zen_async.memory.relevance import retention
from zen_async.memory.spaces import SpaceCache
from zen_async.store import Arg, RedisManager
from zen_async.store.health import CONSOLIDATION_FAILURE

__all__ = ["SHARED_STREAM", "Consolidator", "similar_pairs"]

log = structlog.get_logger(__name__)

SHARED_STREAM: Final = "memory"
"""The named stream that records forgets and merges of the shared space."""
_EXPIRE_BATCH: Final = 500
_PAIR_BLOCK: Final = 1024
_PROMOTABLE: Final = frozenset({MemoryType.SHORT_TERM, MemoryType.WORKING})
_RANK: Final = {p: i for i, p in enumerate(MemoryPriority)}  # critical first


@dataclass(slots=True)
class _Item:
    """An entry of the snapshot being consolidated, with what the steps changed."""

    row: Row
    unit: npt.NDArray[np.float32]
    access: float
    accessed: float
    version: int
    tags: tuple[str, ...]
    related: tuple[str, ...]


class Consolidator:
    """Writes and consolidation of one tenant's memory (used by AgentMemoryManager)."""

    def __init__(
        self,
        redis: RedisManager,
        events: EventLog,
        *,
        layout: Layout,
        cache: SpaceCache,
        options: MemoryOptions,
        blas: BlasGuard,
    ) -> None:
        self._health = redis.health
        self._events = events
        self._layout = layout
        self._ks = layout.ks
        self._cache = cache
        self._options = options
        self._blas = blas

    # --- version-guarded writes -----------------------------------------------------------
    async def update(
        self,
        row: Row,
        changed: Row,
        fields: Sequence[Arg],
        *,
        ttl: int | str,
        counter: str = "",
    ) -> tuple[int, int, int]:
        """Write ``fields`` of ``row`` at its version (``changed`` names its new type and
        hash, for the dedup key). Returns (version, expires_ms, now_ms).

        Raises:
            NotFoundError, ConflictError: see ``memory_update.lua``.
        """
        lay, shard, space = self._layout, self._layout.parse_id(row.memory_id), row.space
        keys = [
            lay.entry(row.memory_id),
            lay.ids(shard, space),
            lay.dedup(shard, space, row.memory_type.value, row.content_hash),
            lay.dedup(shard, space, changed.memory_type.value, changed.content_hash),
            lay.stats(shard, space),
            lay.changes(shard),
            lay.seq(shard),
        ]
        args: list[Arg] = [
            lay.prefix(shard),
            row.memory_id,
            space,
            row.version,
            ttl,
            counter,
            self._options.change_stream_max_len,
            lay.channel,
            shard,
            *fields,
        ]
        version, expires, now = await self._ks.run_script("memory_update", keys, args)
        return int(version), int(expires), int(now)

    async def delete(self, row: Row, *, counter: str) -> bool:
        """Remove ``row`` at its version. Returns False if it was already gone.

        Raises:
            ConflictError: it changed since it was read.
        """
        lay, shard, space = self._layout, self._layout.parse_id(row.memory_id), row.space
        keys = [
            lay.entry(row.memory_id),
            lay.ids(shard, space),
            lay.dedup(shard, space, row.memory_type.value, row.content_hash),
            lay.stats(shard, space),
            lay.changes(shard),
            lay.seq(shard),
        ]
        args: list[Arg] = [
            row.memory_id,
            space,
            row.version,
            counter,
            self._options.change_stream_max_len,
            lay.channel,
            shard,
        ]
        done = int(await self._ks.run_script("memory_delete", keys, args))
        await self._cache.drop(space, [row.memory_id])
        return done == 1

    # --- consolidation ----------------------------------------------------------------------
    async def consolidate(self, space: str) -> ConsolidationReport:
        """Consolidate one space (see the module docstring).

        Raises:
            BackendError: Redis failed; counted as a consolidation failure.
        """
        try:
            report = await self._consolidate(space)
        except ValidationError:
            raise
        except ZenError as exc:
            self._health.record_event(CONSOLIDATION_FAILURE)
            log.warning("memory_consolidation_failed", space=space, error=str(exc))
            raise
        counts = {k: v for k, v in asdict(report).items() if isinstance(v, int) and v}
        log.info("memory_consolidated", space=space, **counts)
        return report

    async def _consolidate(self, space: str) -> ConsolidationReport:
        expired = await self._expire(space)
        index = await self._cache.reload(space)
        now = self._cache.now_ms()
        if index.n > self._options.offload_rows:  # O(n x dim): off the loop, rows held still
            await index.gate.acquire_read()
            try:
                items = await anyio.to_thread.run_sync(self._snapshot, index, now)
            finally:
                await index.gate.release_read()
        else:
            items = self._snapshot(index, now)
        pruned = await self._prune(space, items, now)
        pairs = await self._pairs(items)
        merged = await self._merge(space, items, pairs)
        promoted = await self._promote(space, items)
        linked = await self._link(items, pairs)
        report = ConsolidationReport(
            space=space,
            finished_at=datetime.now(UTC),
            expired=expired,
            pruned=pruned,
            merged=merged,
            promoted=promoted,
            linked=linked,
        )
        shard = self._layout.shard_of(space)
        payload = orjson.dumps({**asdict(report), "finished_at": report.finished_at.isoformat()})
        await self._ks.execute(
            "HSET", self._layout.stats(shard, space), "consolidation", payload, idempotent=True
        )
        await self._cache.reload(space)
        return report

    def _snapshot(self, index: SpaceIndex, now: float) -> dict[str, _Item]:
        n = index.n
        live = index.live(now)
        unit = index.vectors[:n] * index.inv_norm[:n, None]
        return {
            row.memory_id: _Item(
                row,
                unit[i],
                float(index.access[i]),
                float(index.accessed[i]),
                row.version,
                row.tags,
                row.related,
            )
            for i, row in enumerate(index.rows[:n])
            if live[i]
        }

    async def _expire(self, space: str) -> int:
        lay, shard = self._layout, self._layout.shard_of(space)
        keys = [lay.ids(shard, space), lay.stats(shard, space), lay.changes(shard), lay.seq(shard)]
        args: list[Arg] = [
            lay.prefix(shard),
            space,
            _EXPIRE_BATCH,
            self._options.change_stream_max_len,
            lay.channel,
            shard,
        ]
        count = 0
        while True:
            due = await self._ks.run_script("memory_expire", keys, args)
            ids = [text(i) for i in due[::2]]
            for memory_id, expiry in zip(ids, due[1::2], strict=True):
                data = {
                    "memory_id": memory_id,
                    "reason": "expired",
                    "expired_at": from_ms(float(expiry)).isoformat(),
                }
                await self._record(space, "memory_forgotten", data)
            await self._cache.drop(space, ids)
            count += len(ids)
            if len(ids) < _EXPIRE_BATCH:
                return count

    async def _prune(self, space: str, items: dict[str, _Item], now: float) -> int:
        if not items:
            return 0
        rows = [item.row for item in items.values()]
        scores = retention(
            now,
            last_accessed_ms=np.array([items[r.memory_id].accessed for r in rows]),
            created_ms=np.array([float(r.created_ms) for r in rows]),
            priority_score=np.array([PRIORITY_SCORES[r.priority] for r in rows]),
            access_count=np.array([items[r.memory_id].access for r in rows]),
            options=self._options,
        )
        count = 0
        for row, score in zip(rows, scores.tolist(), strict=True):
            if row.priority is MemoryPriority.CRITICAL or score >= self._options.prune_threshold:
                continue
            try:
                removed = await self.delete(row, counter="forgets")
            except ConflictError:
                continue  # written meanwhile: it is not what was judged
            del items[row.memory_id]
            if removed:
                count += 1
                await self._record(
                    space, "memory_forgotten", {**_describe(row), "reason": "low_relevance",
                                                "retention_score": round(score, 6)}
                )  # fmt: skip
        return count

    async def _pairs(self, items: dict[str, _Item]) -> list[tuple[str, str, float]]:
        ids = list(items)
        if len(ids) < 2:
            return []
        unit = np.stack([items[i].unit for i in ids])

        def find() -> list[tuple[int, int, float]]:
            with self._blas:
                return similar_pairs(unit, self._options.link_threshold)

        if not self._blas.is_ready:
            await self._blas.ready()
        found = await anyio.to_thread.run_sync(find)
        return [(ids[a], ids[b], s) for a, b, s in found]

    async def _merge(
        self, space: str, items: dict[str, _Item], pairs: list[tuple[str, str, float]]
    ) -> int:
        count = 0
        for a, b, similarity in pairs:  # most similar first
            if similarity < self._options.merge_threshold:
                break
            if a not in items or b not in items:
                continue
            if items[a].row.memory_type is not items[b].row.memory_type:
                continue
            if await self._merge_pair(space, items, *_survivor(items[a], items[b]), similarity):
                count += 1
        return count

    async def _merge_pair(
        self, space: str, items: dict[str, _Item], survivor: _Item, loser: _Item, similarity: float
    ) -> bool:
        lay, shard = self._layout, self._layout.shard_of(space)
        s, lo = survivor.row, loser.row
        tags = tuple(dict.fromkeys(survivor.tags + loser.tags))[: self._options.max_tags]
        related = tuple(
            r for r in dict.fromkeys(survivor.related + loser.related) if r not in (s.memory_id,
                                                                                   lo.memory_id)
        )[: self._options.max_links]  # fmt: skip
        keys = [
            lay.entry(s.memory_id),
            lay.entry(lo.memory_id),
            lay.ids(shard, space),
            lay.dedup(shard, space, s.memory_type.value, s.content_hash),
            lay.dedup(shard, space, lo.memory_type.value, lo.content_hash),
            lay.stats(shard, space),
            lay.changes(shard),
            lay.seq(shard),
        ]
        args: list[Arg] = [
            s.memory_id,
            lo.memory_id,
            space,
            survivor.version,
            loser.version,
            orjson.dumps(tags),
            orjson.dumps(related),
            self._options.change_stream_max_len,
            lay.channel,
            shard,
        ]
        try:
            version, access, _, _ = await self._ks.run_script("memory_merge", keys, args)
        except (ConflictError, NotFoundError):
            return False
        survivor.version, survivor.access = int(version), float(access)
        survivor.tags, survivor.related = tags, related
        del items[lo.memory_id]
        await self._record(
            space,
            "memory_merged",
            {
                "survivor": s.memory_id,
                "merged": lo.memory_id,
                "similarity": round(similarity, 6),
                "merged_content_hash": lo.content_hash,
                "memory_type": lo.memory_type.value,
            },
        )
        return True

    async def _promote(self, space: str, items: dict[str, _Item]) -> int:
        count = 0
        for item in list(items.values()):
            row = item.row
            if row.memory_type not in _PROMOTABLE or item.access < self._options.promote_min_access:
                continue
            current = _with(row, version=item.version)
            target = _with(row, memory_type=MemoryType.LONG_TERM)
            ttl = self._options.ttl_ms(MemoryType.LONG_TERM, row.priority)
            try:
                version, _, _ = await self.update(
                    current, target, ["type", MemoryType.LONG_TERM.value], ttl=ttl,
                    counter="promotions",
                )  # fmt: skip
            except ConflictError as exc:
                other = items.get(str(exc).split()[-1]) if "duplicate" in str(exc) else None
                if other is not None and await self._merge_pair(space, items, other, item, 1.0):
                    count += 1
                continue
            except NotFoundError:
                continue
            item.version = version
            item.row = _with(target, version=version)
            count += 1
            await self._record(
                space,
                "memory_promoted",
                {"memory_id": row.memory_id, "from": row.memory_type.value, "to": "long_term",
                 "access_count": int(item.access)},
            )  # fmt: skip
        return count

    async def _link(self, items: dict[str, _Item], pairs: list[tuple[str, str, float]]) -> int:
        new: list[tuple[str, str]] = []
        partners: dict[str, list[str]] = {}
        for a, b, _ in pairs:  # most similar first
            if a not in items or b not in items:
                continue
            if b in items[a].related or a in items[b].related:
                continue
            new.append((a, b))
            partners.setdefault(a, []).append(b)
            partners.setdefault(b, []).append(a)
        for memory_id, item in items.items():
            kept = tuple(r for r in item.related if r in items)  # drop forgotten and merged
            related = tuple(dict.fromkeys(kept + tuple(partners.get(memory_id, ()))))
            related = related[: self._options.max_links]
            if related == item.related:
                continue
            current = _with(item.row, version=item.version)
            try:
                version, _, _ = await self.update(
                    current, current, ["rel", orjson.dumps(related)], ttl="", counter="links"
                )
            except (ConflictError, NotFoundError):
                continue
            item.version, item.related = version, related
        return sum(1 for a, b in new if b in items[a].related or a in items[b].related)

    async def _record(self, space: str, event_type: str, data: dict[str, Any]) -> None:
        """The event of a change just made (a separate step: another keyspace), recorded so
        that a failure now journals it instead of losing it; a memory is forgotten, merged
        away or promoted once, so its id names the change."""
        memory_id = data.get("merged") or data["memory_id"]
        change = f"{event_type}|{space}|{memory_id}"
        if space == SHARED_SPACE:
            await self._events.record(event_type, data, key=change, stream=SHARED_STREAM)
        else:
            await self._events.record(event_type, data, key=change, agent_id=space)

    async def periodic(self, interval: float) -> None:
        """Consolidate every loaded space every ``interval`` seconds (one instance per
        space and interval, by a lock in Redis), until cancelled."""
        while True:
            await asyncio.sleep(interval)
            for space in self._cache.loaded_spaces():
                shard = self._layout.shard_of(space)
                lock = self._layout.prefix(shard) + "lock:" + space
                took = await self._ks.execute(
                    "SET", lock, "1", "NX", "PX", max(1, int(interval * 1000)), idempotent=True
                )
                if not took:
                    continue
                try:
                    await self.consolidate(space)
                except ZenError:
                    continue  # logged and counted by consolidate()


def similar_pairs(unit: npt.NDArray[np.float32], threshold: float) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, cosine)`` with ``i < j`` and cosine >= ``threshold`` among unit rows,
    most similar first (blockwise: memory stays O(block x n)). Pure numpy."""
    n = len(unit)
    found: list[tuple[int, int, float]] = []
    for start in range(0, n, _PAIR_BLOCK):
        sims = unit[start : start + _PAIR_BLOCK] @ unit.T
        rows, cols = np.nonzero(sims >= threshold)
        rows_abs = rows + start
        keep = cols > rows_abs
        for i, j, s in zip(
            rows_abs[keep].tolist(), cols[keep].tolist(), sims[rows[keep], cols[keep]].tolist(),
            strict=True,
        ):  # fmt: skip
            found.append((i, j, s))
    found.sort(key=lambda p: (-p[2], p[0], p[1]))
    return found


def _survivor(a: _Item, b: _Item) -> tuple[_Item, _Item]:
    def key(item: _Item) -> tuple[int, float, int, str]:
        row = item.row
        return (_RANK[row.priority], -item.access, row.created_ms, row.memory_id)

    return (a, b) if key(a) <= key(b) else (b, a)


def _with(row: Row, **changes: Any) -> Row:
    values = {f: getattr(row, f) for f in Row.__slots__}
    values.update(changes)
    return Row(**values)


def _describe(row: Row) -> dict[str, Any]:
    return {
        "memory_id": row.memory_id,
        "memory_type": row.memory_type.value,
        "priority": row.priority.value,
        "content_hash": row.content_hash,
    }
