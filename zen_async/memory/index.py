"""The in-process vector index of one memory space: exact cosine top-k with numpy.

A :class:`SpaceIndex` holds its space's vectors as one float32 matrix (rows as stored, with
their inverse norms beside them) and the columns the search filters and scores on (expiry,
type, times, access count, priority), plus the rest of each entry as a :class:`Row`.
Rows are appended at the end and removed by moving the last row into the hole, so every
mutation is O(1) (amortised) and the matrix stays dense.

Threads: a scan may run in a worker thread (large spaces), so mutations, which run on the
event loop, first wait on the index's :class:`Gate` until no thread reads it; a scan in a
thread holds the gate from before it starts until its positions are resolved to rows.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final

import anyio.to_thread
import numpy as np
import numpy.typing as npt
import structlog

from zen_async.memory.layout import Decoded, Row
from zen_async.memory.models import VECTOR_DIM, MemoryType
from zen_async.memory.options import PRIORITY_SCORES

__all__ = ["TYPE_CODES", "BlasGuard", "Gate", "SpaceIndex"]

log = structlog.get_logger(__name__)

TYPE_CODES: Final = {t: i for i, t in enumerate(MemoryType)}
_MIN_CAPACITY: Final = 16
_ROWWISE_ROWS: Final = 16_384
"""Rows from which a scan computes similarities with numpy's row-wise ``vecdot`` instead of
a BLAS matrix-vector product: measured here, one-thread OpenBLAS is 10-20 % faster below
16k rows x 384, the row-wise kernel 15-25 % faster from 32k (memory-bound), and it needs no
BLAS thread setting."""

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


class BlasGuard:
    """Holds the BLAS libraries to one thread while any scan runs.

    On this kind of machine OpenBLAS's thread pool gives a matrix-vector product a floor of
    milliseconds when the other core is busy; one thread does 10k x 384 in a fraction of one.
    The first scan to enter sets one thread, the last to leave restores what was there, so
    code outside a scan keeps its own setting. Call :meth:`ready` (async: inspecting the
    loaded libraries reads files) before the first use.

    A setting does not always take: with numpy's bundled OpenBLAS (0.3.31) a
    ``set_num_threads`` from another thread than the first one that called it is ignored
    while that thread lives (and anyio's worker threads live on). So the guard reads the
    count back, and :attr:`single_threaded` tells the scan whether BLAS may be used; when it
    may not, the scan uses numpy's own row-wise kernel, which never starts a thread.
    """

    __slots__ = ("_depth", "_libs", "_lock", "_saved", "_single")

    def __init__(self) -> None:
        self._libs: list[Any] | None = None
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: list[int] = []
        self._single = False

    @property
    def is_ready(self) -> bool:
        return self._libs is not None

    @property
    def single_threaded(self) -> bool:
        """Inside the guard: whether every BLAS library now runs on one thread (False when
        none was found, or a setting did not take)."""
        return self._single

    async def ready(self) -> None:
        if self._libs is None:
            self._libs = await anyio.to_thread.run_sync(_blas_libraries)

    def __enter__(self) -> BlasGuard:
        libs = self._libs
        if libs:
            with self._lock:
                if self._depth == 0:
                    self._saved = [lib.num_threads for lib in libs]
                    single = True
                    for lib, threads in zip(libs, self._saved, strict=True):
                        if threads != 1:
                            lib.set_num_threads(1)
                            single = single and lib.num_threads == 1
                    self._single = single
                self._depth += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        libs = self._libs
        if libs:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    for lib, threads in zip(libs, self._saved, strict=True):
                        if threads != 1:
                            lib.set_num_threads(threads)


def _blas_libraries() -> list[Any]:
    # Inspects the loaded libraries (reads files): only ever called in a worker thread.
    try:
        from threadpoolctl import (  # type: ignore[import-untyped, unused-ignore]  # noqa: PLC0415
            ThreadpoolController,
        )
    except ImportError:
        log.warning("blas_threads_uncontrolled", reason="threadpoolctl is not installed")
        return []
    return list(ThreadpoolController().select(user_api="blas").lib_controllers)


class Gate:
    """Readers (scans in worker threads) and writers (mutations on the loop) of one index.

    Writers go first: once one waits, new readers wait behind it, so a busy space cannot
    starve its updates.
    """

    __slots__ = ("_cond", "_readers", "_writers")

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._readers = 0
        self._writers = 0

    async def acquire_read(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self._writers == 0)
            self._readers += 1

    async def release_read(self) -> None:
        async with self._cond:
            self._readers -= 1
            self._cond.notify_all()

    async def writable(self) -> None:
        """Return once no reader is inside. Mutate at once after it, without awaiting."""
        if self._readers == 0:
            return
        async with self._cond:
            self._writers += 1
            try:
                await self._cond.wait_for(lambda: self._readers == 0)
            finally:
                self._writers -= 1
                self._cond.notify_all()


class SpaceIndex:
    """The vectors and search columns of one space (see the module docstring)."""

    def __init__(self, space: str, shard: int, *, capacity: int = _MIN_CAPACITY) -> None:
        self.space = space
        self.shard = shard
        self.n = 0
        cap = max(capacity, _MIN_CAPACITY)
        self.vectors: F32 = np.zeros((cap, VECTOR_DIM), dtype=np.float32)
        self.inv_norm: F32 = np.zeros(cap, dtype=np.float32)
        self.expires: F64 = np.zeros(cap, dtype=np.float64)
        self.created: F64 = np.zeros(cap, dtype=np.float64)
        self.accessed: F64 = np.zeros(cap, dtype=np.float64)
        self.access: F64 = np.zeros(cap, dtype=np.float64)
        self.prio: F64 = np.zeros(cap, dtype=np.float64)
        self.types: npt.NDArray[np.int8] = np.zeros(cap, dtype=np.int8)
        self.ids: list[str] = []
        self.rows: list[Row] = []
        self.pos: dict[str, int] = {}
        self.by_tag: dict[str, set[str]] = {}
        self.soonest_expiry = float("inf")
        """At most the earliest expiry of any row: before it, no row needs an expiry check."""
        self.gone: set[str] = set()
        """Ids deleted since the load: a late read of one must not bring it back."""
        self.gate = Gate()

    # --- building ---------------------------------------------------------------------------
    @classmethod
    def build(cls, space: str, shard: int, entries: Sequence[Decoded]) -> SpaceIndex:
        """An index of ``entries`` (pure numpy: run it in a thread when large)."""
        index = cls(space, shard, capacity=len(entries) * 2)
        n = len(entries)
        if n:
            index.vectors[:n] = np.stack([e.vector for e in entries])
            norms = np.linalg.norm(index.vectors[:n], axis=1)
            index.inv_norm[:n] = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
            index.expires[:n] = [_expiry(e.expires_ms) for e in entries]
            index.created[:n] = [e.row.created_ms for e in entries]
            index.accessed[:n] = [e.last_accessed_ms for e in entries]
            index.access[:n] = [e.access_count for e in entries]
            index.prio[:n] = [PRIORITY_SCORES[e.row.priority] for e in entries]
            index.types[:n] = [TYPE_CODES[e.row.memory_type] for e in entries]
            index.soonest_expiry = float(index.expires[:n].min())
        for i, entry in enumerate(entries):
            index.ids.append(entry.row.memory_id)
            index.rows.append(entry.row)
            index.pos[entry.row.memory_id] = i
            for tag in entry.row.tags:
                index.by_tag.setdefault(tag, set()).add(entry.row.memory_id)
        index.n = n
        return index

    # --- mutations (on the loop, after ``await gate.writable()``) ---------------------------
    def upsert(self, entry: Decoded) -> bool:
        """Insert or replace an entry unless the index has a newer version of it (or it was
        deleted). Access figures only ever grow. Returns whether anything changed."""
        row = entry.row
        memory_id = row.memory_id
        if memory_id in self.gone:
            return False
        i = self.pos.get(memory_id)
        if i is None:
            if self.n == len(self.inv_norm):
                self._grow()
            i = self.n
            self.n += 1
            self.ids.append(memory_id)
            self.rows.append(row)
            self.pos[memory_id] = i
        else:
            current = self.rows[i]
            if current.version > row.version:
                self.touch(memory_id, entry.access_count, entry.last_accessed_ms, None)
                return False
            self._untag(current)
            self.rows[i] = row
        vector = entry.vector
        self.vectors[i] = vector
        norm = float(np.linalg.norm(vector))
        self.inv_norm[i] = 1.0 / norm if norm > 0 else 0.0
        self.expires[i] = _expiry(entry.expires_ms)
        self.soonest_expiry = min(self.soonest_expiry, float(self.expires[i]))
        self.created[i] = row.created_ms
        self.accessed[i] = max(self.accessed[i], entry.last_accessed_ms)
        self.access[i] = max(self.access[i], entry.access_count)
        self.prio[i] = PRIORITY_SCORES[row.priority]
        self.types[i] = TYPE_CODES[row.memory_type]
        for tag in row.tags:
            self.by_tag.setdefault(tag, set()).add(memory_id)
        return True

    def touch(
        self, memory_id: str, access_count: float, last_accessed_ms: float, expires_ms: float | None
    ) -> None:
        """Apply a read of an entry (the larger figures win)."""
        i = self.pos.get(memory_id)
        if i is None:
            return
        self.access[i] = max(self.access[i], access_count)
        self.accessed[i] = max(self.accessed[i], last_accessed_ms)
        if expires_ms is not None:
            self.expires[i] = _expiry(expires_ms)
            self.soonest_expiry = min(self.soonest_expiry, float(self.expires[i]))

    def remove(self, memory_id: str) -> bool:
        """Drop an entry for good (ids are never reused)."""
        self.gone.add(memory_id)
        i = self.pos.pop(memory_id, None)
        if i is None:
            return False
        self._untag(self.rows[i])
        last = self.n - 1
        if i != last:
            for column in self._columns():
                column[i] = column[last]
            moved = self.ids[last]
            self.ids[i] = moved
            self.rows[i] = self.rows[last]
            self.pos[moved] = i
        self.ids.pop()
        self.rows.pop()
        self.n = last
        return True

    def _untag(self, row: Row) -> None:
        for tag in row.tags:
            ids = self.by_tag.get(tag)
            if ids is not None:
                ids.discard(row.memory_id)
                if not ids:
                    del self.by_tag[tag]

    def _columns(self) -> tuple[npt.NDArray[Any], ...]:
        return (
            self.vectors,
            self.inv_norm,
            self.expires,
            self.created,
            self.accessed,
            self.access,
            self.prio,
            self.types,
        )

    def _grow(self) -> None:
        cap = len(self.inv_norm) * 2
        grown = []
        for column in self._columns():
            bigger = np.zeros((cap, *column.shape[1:]), dtype=column.dtype)
            bigger[: self.n] = column[: self.n]
            grown.append(bigger)
        (
            self.vectors,
            self.inv_norm,
            self.expires,
            self.created,
            self.accessed,
            self.access,
            self.prio,
            self.types,
        ) = grown

    # --- reading ----------------------------------------------------------------------------
    def live(self, now_ms: float) -> npt.NDArray[np.bool_]:
        """Which rows have not expired."""
        alive: npt.NDArray[np.bool_] = self.expires[: self.n] > now_ms
        return alive

    def tag_positions(self, tags: Sequence[str]) -> I64:
        """Positions of the rows carrying any of ``tags``."""
        ids: set[str] = set()
        for tag in tags:
            ids |= self.by_tag.get(tag, set())
        return np.fromiter((self.pos[i] for i in ids), dtype=np.int64, count=len(ids))

    def scan(
        self,
        query: F32,
        now_ms: float,
        *,
        allowed_types: npt.NDArray[np.bool_] | None,
        tag_rows: I64 | None,
        threshold: float,
        k: int,
        blas: bool = False,
    ) -> tuple[I64, F32]:
        """The exact top-``k`` rows by cosine similarity to the unit vector ``query`` among
        live rows of the allowed types (and tags) at or above ``threshold``: their positions
        and similarities, in no particular order. Pure numpy: safe in a worker thread while
        the gate is held. ``blas``: BLAS runs on one thread now (see :class:`BlasGuard`),
        so a small scan may use its matrix-vector product.

        The top-``k`` of all rows is taken first; when each of them passes the filters it is
        the answer (rows below the threshold are then simply dropped: no row outside the top
        can be above one inside). Otherwise the filters mask the whole column and the top is
        taken again.
        """
        n = self.n
        if n == 0 or k <= 0:
            return _EMPTY
        sims = _similarities(self.vectors[:n], query, blas=blas)
        sims *= self.inv_norm[:n]
        kk = min(k, n)
        top = np.argpartition(sims, n - kk)[n - kk :] if kk < n else np.arange(n)
        may_expire = now_ms >= self.soonest_expiry
        unfiltered = allowed_types is None and tag_rows is None
        if unfiltered and (not may_expire or bool((self.expires[top] > now_ms).all())):
            top_sims = sims[top]
            if top_sims.min() >= threshold:  # the usual case: nothing to drop, no copies
                return top.astype(np.int64, copy=False), top_sims
            keep = top_sims >= threshold
            return top[keep].astype(np.int64, copy=False), top_sims[keep]
        valid = sims >= threshold
        if may_expire:
            alive = self.expires[:n] > now_ms
            if alive.all():
                self.soonest_expiry = float(self.expires[:n].min())
            valid &= alive
        if allowed_types is not None:
            valid &= allowed_types[self.types[:n]]
        if tag_rows is not None:
            tagged = np.zeros(n, dtype=np.bool_)
            tagged[tag_rows] = True
            valid &= tagged
        count = int(np.count_nonzero(valid))
        if count == 0:
            return _EMPTY
        sims = np.where(valid, sims, np.float32(-np.inf))
        kk = min(k, count)
        top = np.argpartition(sims, n - kk)[n - kk :] if kk < n else np.flatnonzero(valid)
        return top.astype(np.int64, copy=False), sims[top]


_EMPTY: Final[tuple[I64, F32]] = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))


def _similarities(vectors: F32, query: F32, *, blas: bool) -> F32:
    """``vectors @ query``: by one-thread BLAS for a small matrix when allowed, else by
    numpy's row-wise kernel (``vecdot``; ``einsum`` before numpy 2), which starts no thread."""
    if blas and len(vectors) < _ROWWISE_ROWS:
        product: F32 = vectors @ query
        return product
    if _VECDOT is not None:
        rowwise: F32 = _VECDOT(vectors, query)
        return rowwise
    summed: F32 = np.einsum("ij,j->i", vectors, query)
    return summed


_VECDOT: Final[Any] = getattr(np, "vecdot", None)


def _expiry(expires_ms: float) -> float:
    return float(expires_ms) if expires_ms else float("inf")
