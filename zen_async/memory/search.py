"""One search: scan the space indexes (on the loop or in a worker thread), then rank the
candidates by relevance and build the results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import numpy as np
import numpy.typing as npt

from zen_async.memory import layout as lay
from zen_async.memory.index import BlasGuard, SpaceIndex
from zen_async.memory.layout import Row
from zen_async.memory.models import VECTOR_DIM, MemorySearchResult
from zen_async.memory.options import MemoryOptions
from zen_async.memory.relevance import relevance

__all__ = ["Hits", "Scan", "rank"]


@dataclass(slots=True)
class Hits:
    """Search candidates: their rows and the columns the relevance formula reads."""

    rows: list[Row]
    vectors: npt.NDArray[np.float32]
    sims: npt.NDArray[np.float32]
    accessed: npt.NDArray[np.float64]
    created: npt.NDArray[np.float64]
    access: npt.NDArray[np.float64]
    prio: npt.NDArray[np.float64]
    expires: npt.NDArray[np.float64]

    def take(self, pick: npt.NDArray[np.intp]) -> Hits:
        return Hits(
            [self.rows[i] for i in pick.tolist()],
            self.vectors[pick],
            self.sims[pick],
            self.accessed[pick],
            self.created[pick],
            self.access[pick],
            self.prio[pick],
            self.expires[pick],
        )


@dataclass(slots=True)
class Scan:
    query: npt.NDArray[np.float32]
    now_ms: float
    allowed: npt.NDArray[np.bool_] | None
    tags: tuple[str, ...] | None
    threshold: float
    limit: int

    def run(
        self, indexes: list[SpaceIndex], *, blas: bool = False
    ) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        """Scan each index (``blas``: BLAS is on one thread, see :class:`BlasGuard`)."""
        out = []
        for index in indexes:
            tag_rows = None if self.tags is None else index.tag_positions(self.tags)
            out.append(
                index.scan(
                    self.query,
                    self.now_ms,
                    allowed_types=self.allowed,
                    tag_rows=tag_rows,
                    threshold=self.threshold,
                    k=self.limit,
                    blas=blas,
                )
            )
        return out

    async def in_thread(self, indexes: list[SpaceIndex], blas: BlasGuard) -> Hits:
        """Scan in a worker thread, holding each index's gate until the hits are copied."""
        held: list[SpaceIndex] = []
        try:
            for index in indexes:
                await index.gate.acquire_read()
                held.append(index)

            def run() -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
                with blas:
                    return self.run(indexes, blas=blas.single_threaded)

            found = await anyio.to_thread.run_sync(run)
            return self.resolve(indexes, found)  # before any writer may move a row
        finally:
            for index in held:
                await index.gate.release_read()

    def resolve(
        self,
        indexes: list[SpaceIndex],
        found: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]],
    ) -> Hits:
        """Copy what ranking needs out of the indexes (before a writer may move a row)."""
        parts = [
            (ix, pos, sims) for ix, (pos, sims) in zip(indexes, found, strict=True) if len(pos)
        ]
        if len(parts) == 1:
            ix, pos, sims = parts[0]
            return Hits(
                [ix.rows[p] for p in pos.tolist()],
                ix.vectors[pos],
                sims,
                ix.accessed[pos],
                ix.created[pos],
                ix.access[pos],
                ix.prio[pos],
                ix.expires[pos],
            )
        return Hits(
            [ix.rows[p] for ix, pos, _ in parts for p in pos.tolist()],
            _join([ix.vectors[pos] for ix, pos, _ in parts], (0, VECTOR_DIM), np.float32),
            _join([sims for _, _, sims in parts], (0,), np.float32),
            _join([ix.accessed[pos] for ix, pos, _ in parts], (0,), np.float64),
            _join([ix.created[pos] for ix, pos, _ in parts], (0,), np.float64),
            _join([ix.access[pos] for ix, pos, _ in parts], (0,), np.float64),
            _join([ix.prio[pos] for ix, pos, _ in parts], (0,), np.float64),
            _join([ix.expires[pos] for ix, pos, _ in parts], (0,), np.float64),
        )


def _join(arrays: list[Any], empty: tuple[int, ...], dtype: type[np.generic]) -> Any:
    return np.concatenate(arrays) if arrays else np.zeros(empty, dtype=dtype)


def rank(
    hits: Hits, scan: Scan, namespace: str, options: MemoryOptions
) -> list[MemorySearchResult]:
    """Keep the top ``scan.limit`` candidates by similarity, order them by the relevance
    formula (ties by similarity) and build the results."""
    if not hits.rows:
        return []
    sims = hits.sims
    if len(sims) > scan.limit:  # candidates of two spaces: keep the overall top
        pick = np.argpartition(sims, len(sims) - scan.limit)[-scan.limit :]
        hits = hits.take(pick)
        sims = hits.sims
    if scan.tags:
        wanted = set(scan.tags)
        match = np.array([len(wanted.intersection(r.tags)) for r in hits.rows]) / len(wanted)
    else:
        match = np.zeros(len(sims))
    scores = relevance(
        sims.astype(np.float64),
        scan.now_ms,
        last_accessed_ms=hits.accessed,
        created_ms=hits.created,
        priority_score=hits.prio,
        access_count=hits.access,
        tag_match=match,
        options=options,
    )
    order = np.lexsort((-sims, -scores)).tolist()
    hits.vectors.flags.writeable = False  # each entry's vector is a read-only row of it
    accessed, access, expires = hits.accessed.tolist(), hits.access.tolist(), hits.expires
    sim_list, score_list = sims.tolist(), scores.tolist()
    results = []
    for position, i in enumerate(order, start=1):
        entry = lay.to_entry(
            namespace,
            hits.rows[i],
            hits.vectors[i],
            access_count=int(access[i]),
            last_accessed_ms=accessed[i],
            expires_ms=float(expires[i]),
        )
        results.append(MemorySearchResult(entry, sim_list[i], score_list[i], position))
    return results
