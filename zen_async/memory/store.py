"""AgentMemoryManager (``zen.memory``): store, read, update, delete and search agent memory.

Every entry lives in Redis (layout in :mod:`zen_async.memory.layout`; each write is one Lua
step on one slot, with its change-feed entry). Search runs over in-process indexes
(:mod:`zen_async.memory.index`), one per space, loaded on first use and kept in sync through
the change feeds by :meth:`AgentMemoryManager.run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import anyio
import numpy as np
import numpy.typing as npt
import orjson
import structlog

from zen_async.codec import Codec
from zen_async.degraded import JournalEntry
from zen_async.errors import ConflictError, NotFoundError, ValidationError
from zen_async.events import EventLog
from zen_async.memory import layout as lay
from zen_async.memory.analytics import analytics
from zen_async.memory.consolidate import Consolidator
from zen_async.memory.embed import Embedder, embedder_from_settings
from zen_async.memory.index import TYPE_CODES, BlasGuard
from zen_async.memory.layout import SHARED_SPACE, Decoded, Layout, Row
from zen_async.memory.models import (
    VECTOR_DIM,
    ConsolidationReport,
    JSONValue,
    MemoryAnalytics,
    MemoryContent,
    MemoryEntry,
    MemoryPriority,
    MemorySearchResult,
    MemoryType,
    NewMemory,
)
from zen_async.memory.options import MemoryOptions
from zen_async.memory.prepare import Prepared, enum_value, prepare, store_call, stored
from zen_async.memory.search import Scan, rank
from zen_async.memory.spaces import SpaceCache
from zen_async.metrics.names import MEMORY_OPERATION_LATENCY
from zen_async.ops import new_op_id
from zen_async.redact import Redactor
from zen_async.store import Arg, RedisManager

if TYPE_CHECKING:
    from zen_async.metrics import Metrics

__all__ = ["AgentMemoryManager"]

log = structlog.get_logger(__name__)

_MAX_LIMIT = 1000


class AgentMemoryManager:
    """Agent memory of one tenant.

    Args:
        redis: the core.
        events: the event log of the same tenant (forgets and merges are recorded in the
            agent's audit trail; those of the shared space in the ``memory`` stream).
        tenant: the tenant (default: the event log's).
        embedder: turns content and queries into vectors (default: the one the settings name,
            :class:`~zen_async.memory.embed.HashingEmbedder` unless the extra is set up).
        metrics: where operation latencies go.
        options: every tunable (default: from the ``REDIS_MEMORY_*`` settings).

    Raises:
        ValidationError: a tenant other than the event log's, or an embedder whose vectors
            are not 384-dim.
    """

    def __init__(
        self,
        redis: RedisManager,
        events: EventLog,
        *,
        tenant: str | None = None,
        embedder: Embedder | None = None,
        metrics: Metrics | None = None,
        options: MemoryOptions | None = None,
    ) -> None:
        tenant = tenant or events.tenant
        if tenant != events.tenant:
            raise ValidationError(
                f"the event log is bound to tenant {events.tenant!r}, not {tenant!r}: pass "
                "that tenant's EventLog (zen.for_tenant(name).events)"
            )
        self.namespace = tenant
        self.options = options or MemoryOptions.from_settings(redis.settings)
        self.embedder = embedder or embedder_from_settings(redis.settings)
        if self.embedder.dim != VECTOR_DIM:
            raise ValidationError(
                f"embedder {self.embedder.name} makes {self.embedder.dim}-dim vectors; memory "
                f"needs {VECTOR_DIM}"
            )
        self._redis = redis
        self._metrics = metrics
        self._redactor = Redactor.from_settings(redis.settings)
        self._codec: Codec = redis.codec
        self._layout = Layout(redis.keyspace("memory", tenant=tenant), self.options.shards)
        self._ks = self._layout.ks
        self._cache = SpaceCache(redis, self._layout, self.options)
        self._blas = BlasGuard()
        self._consolidator = Consolidator(
            redis,
            events,
            layout=self._layout,
            cache=self._cache,
            options=self.options,
            blas=self._blas,
        )

    def _timed(self, operation: str) -> contextlib.AbstractContextManager[object]:
        if self._metrics is None:
            return contextlib.nullcontext()
        return self._metrics.time(MEMORY_OPERATION_LATENCY, operation=operation)

    # --- storing ----------------------------------------------------------------------------
    async def store_memory(
        self,
        agent_id: str | None,
        content: MemoryContent,
        *,
        memory_type: MemoryType = MemoryType.WORKING,
        priority: MemoryPriority = MemoryPriority.MEDIUM,
        tags: Sequence[str] = (),
        metadata: Mapping[str, JSONValue] | None = None,
        vector: npt.ArrayLike | None = None,
        op_id: str | None = None,
    ) -> MemoryEntry:
        """Store a memory, or reinforce its exact duplicate.

        ``agent_id=None`` or ``memory_type=shared`` stores into the tenant's shared space.
        When the space already holds an entry of this type with the same content, that entry
        is returned instead, reinforced (access count + 1, expiry extended); this is atomic
        across processes. Without ``vector`` the content is embedded. While Redis is
        unreachable the store is journaled (docs/operations.md, degraded mode) and the entry
        returned is stamped by this machine's clock until the journal is replayed. The store
        is applied once per memory id (made here): its replay, or a retry of the script after
        a lost reply, finds the id stored and changes nothing. ``op_id`` names the write in
        the journal and in a BackendError.

        Raises:
            ValidationError: a bad agent id, content, tags, metadata or vector (wrong
                dimension, NaN or infinity, all zeros); content above the size limit.
                Nothing is written then.
        """
        item = NewMemory(agent_id, content, memory_type, priority, tags, metadata, vector)
        return (await self.store_memories([item], op_id=op_id))[0]

    async def store_memories(
        self, items: Sequence[NewMemory], *, op_id: str | None = None
    ) -> list[MemoryEntry]:
        """Store many memories, embedding those without a vector in one batch and writing in
        pipelined batches. Each is deduplicated as :meth:`store_memory` does (also against
        an earlier item of the same call).

        Raises:
            ValidationError: any bad item; then nothing is written.
        """
        prepared = [
            prepare(self._redacted(item), self._layout, self._codec, self.options) for item in items
        ]
        missing = [p for p in prepared if p.vector is None]
        if missing:
            vectors = await self.embedder.embed([p.text for p in missing])
            for p, v in zip(missing, vectors, strict=True):
                p.vector = lay.vector_bytes(v)
        return await self._redis.degraded.write(
            "memory.store",
            self.namespace,
            {"items": [p.to_json() for p in prepared]},
            lambda: self._store(prepared),
            lambda _entry: [self._entry(_offline(p)) for p in prepared],
            op_id=new_op_id(op_id),
        )

    def _redacted(self, item: NewMemory) -> NewMemory:
        """``item`` with the sensitive fields of its metadata redacted (REDIS_REDACT_FIELDS)."""
        if item.metadata is None:
            return item
        metadata = self._redactor.redact(item.metadata, what="memory metadata")
        return item if metadata is item.metadata else dataclasses.replace(item, metadata=metadata)

    async def _store(self, prepared: Sequence[Prepared]) -> list[MemoryEntry]:
        hint = self._layout.channel if len(prepared) == 1 else ""
        calls = [store_call(p, self._layout, self.options, hint) for p in prepared]
        with self._timed("store"):
            replies = await self._ks.run_script_many("memory_store", calls)
        if not hint:
            for shard in sorted({p.shard for p in prepared}):
                await self._redis.publish(self._layout.channel, str(shard).encode())
        decoded = [stored(p, r) for p, r in zip(prepared, replies, strict=True)]
        self._cache.saw_server_time(max(d.last_accessed_ms for d in decoded))
        await self._cache.put(decoded)
        return [self._entry(d) for d in decoded]

    async def replay_journaled(self, entry: JournalEntry) -> None:
        """Store memories journaled during an outage, once: a store of the same memory id
        that already happened changes nothing (``memory_store.lua``)."""
        await self._store([Prepared.from_json(item) for item in entry.args["items"]])

    def _entry(self, d: Decoded) -> MemoryEntry:
        vector = d.vector.copy()
        vector.flags.writeable = False
        return lay.to_entry(
            self.namespace,
            d.row,
            vector,
            access_count=d.access_count,
            last_accessed_ms=d.last_accessed_ms,
            expires_ms=d.expires_ms,
        )

    # --- reading, updating, deleting --------------------------------------------------------
    async def retrieve_memory(self, memory_id: str) -> MemoryEntry | None:
        """The entry, counting the read (access count + 1, last access now); None when it
        does not exist or has expired.

        Raises:
            ValidationError: a malformed memory id.
        """
        shard = self._layout.parse_id(memory_id)
        keys = [self._layout.entry(memory_id), self._layout.changes(shard), self._layout.seq(shard)]
        args: list[Arg] = [self.options.change_stream_max_len, self._layout.channel, shard]
        with self._timed("retrieve"):
            reply = await self._ks.run_script("memory_touch", keys, args)
        if reply is None:
            return None
        self._cache.saw_server_time(int(reply[0]))
        decoded = lay.decode(lay.pairs(reply[1]))
        await self._cache.put([decoded])
        return self._entry(decoded)

    async def get_memory(self, memory_id: str) -> MemoryEntry | None:
        """The entry without counting a read; None when it does not exist or has expired.

        Raises:
            ValidationError: a malformed memory id.
        """
        decoded = await self._read(memory_id)
        return None if decoded is None else self._entry(decoded)

    async def _read(self, memory_id: str) -> Decoded | None:
        fields = await self._ks.execute("HGETALL", self._layout.entry(memory_id))
        return lay.decode(fields) if fields else None

    async def update_memory(
        self,
        memory_id: str,
        *,
        content: MemoryContent | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
        priority: MemoryPriority | None = None,
        vector: npt.ArrayLike | None = None,
        expected_version: int | None = None,
    ) -> MemoryEntry:
        """Change a memory; its version goes up by one. New content is embedded again
        (unless ``vector`` is given); a new priority restarts its TTL from now.

        With ``expected_version`` the write happens only at that version; without it, a
        concurrent write makes this call read again and re-apply its change.

        Raises:
            ValidationError: bad input (nothing is written).
            NotFoundError: no such memory (or it expired).
            ConflictError: the stored version is not ``expected_version``, or the new content
                is an exact duplicate of another entry of the space.
        """
        new_content = None if content is None else lay.check_content(content)
        new_tags = None if tags is None else lay.check_tags(tags, self.options.max_tags)
        new_priority = (
            None if priority is None else enum_value(MemoryPriority, priority, "priority")
        )
        new_vector = None if vector is None else lay.vector_bytes(vector)
        if new_content is not None and new_vector is None:
            embedded = await self.embedder.embed([lay.content_text(new_content)])
            new_vector = lay.vector_bytes(embedded[0])
        while True:
            current = await self._read(memory_id)
            if current is None:
                raise NotFoundError(f"memory {memory_id!r} does not exist (or has expired)")
            row = current.row
            if expected_version is not None and row.version != expected_version:
                raise ConflictError(
                    f"memory {memory_id} is at version {row.version}, expected {expected_version}"
                )
            changed = self._changed_row(current, new_content, metadata, new_tags, new_priority)
            fields: list[Arg] = []
            if changed.doc != row.doc:
                fields += ["doc", changed.doc, "raw", changed.raw_size]
                fields += ["hash", changed.content_hash]
            if new_vector is not None:
                fields += ["vec", new_vector]
            if new_tags is not None:
                fields += ["tags", orjson.dumps(new_tags)]
            if new_priority is not None:
                fields += ["prio", new_priority.value]
            ttl = "" if new_priority is None else changed.ttl_ms
            try:
                version, expires, now = await self._consolidator.update(
                    current.row, changed, fields, ttl=ttl
                )
            except ConflictError as exc:
                if "duplicate" in str(exc):
                    raise ConflictError(
                        f"memory {memory_id} would become an exact duplicate of memory "
                        f"{str(exc).split()[-1]} of the same space and type"
                    ) from None
                if expected_version is not None:
                    raise
                continue
            self._cache.saw_server_time(now)
            changed.version = version
            vec = current.vector if new_vector is None else np.frombuffer(new_vector, "<f4")
            decoded = Decoded(
                changed, vec.astype(np.float32), current.access_count,
                current.last_accessed_ms, expires,
            )  # fmt: skip
            await self._cache.put([decoded])
            return self._entry(decoded)

    def _changed_row(
        self,
        current: Decoded,
        content: MemoryContent | None,
        metadata: Mapping[str, JSONValue] | None,
        tags: tuple[str, ...] | None,
        priority: MemoryPriority | None,
    ) -> Row:
        row = current.row
        doc, raw, digest = row.doc, row.raw_size, row.content_hash
        if content is not None or metadata is not None:
            old = orjson.loads(Codec.decode(row.doc))
            new_content = old["c"] if content is None else content
            new_metadata = (
                old["m"]
                if metadata is None
                else self._redactor.redact(metadata, what="memory metadata")
            )
            doc, raw = lay.encode_doc(
                self._codec, new_content, new_metadata, self.options.max_content_bytes
            )
            digest = lay.content_hash(new_content)
        prio = row.priority if priority is None else priority
        return Row(
            memory_id=row.memory_id,
            agent_id=row.agent_id,
            memory_type=row.memory_type,
            priority=prio,
            content_hash=digest,
            doc=doc,
            raw_size=raw,
            tags=row.tags if tags is None else tags,
            related=row.related,
            created_ms=row.created_ms,
            ttl_ms=row.ttl_ms if priority is None else self.options.ttl_ms(row.memory_type, prio),
            version=row.version,
        )

    async def delete_memory(self, memory_id: str) -> bool:
        """Remove a memory; False when it did not exist.

        Raises:
            ValidationError: a malformed memory id.
        """
        with self._timed("delete"):
            while True:
                current = await self._read(memory_id)
                if current is None:
                    return False
                try:
                    return await self._consolidator.delete(current.row, counter="")
                except ConflictError:
                    continue  # changed since read: read its dedup key again

    # --- search -----------------------------------------------------------------------------
    async def search_memories(
        self,
        agent_id: str | None,
        query: str | None = None,
        *,
        vector: npt.ArrayLike | None = None,
        memory_types: Iterable[MemoryType] | None = None,
        tags: Sequence[str] | None = None,
        limit: int = 10,
        similarity_threshold: float = 0.0,
        include_shared: bool = True,
    ) -> list[MemorySearchResult]:
        """The memories most similar to ``query`` (or ``vector``), most relevant first.

        Candidates are the exact top-``limit`` entries by cosine similarity among the agent's
        live memories (and the shared space's, with ``include_shared``; ``agent_id=None``
        searches the shared space alone), of ``memory_types`` and carrying any of ``tags``
        when given, with similarity >= ``similarity_threshold`` (0.0 included: pass -1.0 to
        admit every similarity). They are ranked by the relevance formula
        (:mod:`zen_async.memory.relevance`).

        Raises:
            ValidationError: neither or both of query and vector, a bad vector, limit (1 to
                1000), threshold (-1 to 1), type or tag.
        """
        if (query is None) == (vector is None):
            raise ValidationError("search_memories needs a query text or a vector (one of them)")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_LIMIT:
            raise ValidationError(f"limit {limit!r} is out of range: use 1 to {_MAX_LIMIT}")
        threshold = float(similarity_threshold)
        if not -1.0 <= threshold <= 1.0:
            raise ValidationError(f"similarity_threshold {threshold!r} is out of range: use -1..1")
        allowed = None
        if memory_types is not None:
            allowed = np.zeros(len(TYPE_CODES), dtype=np.bool_)
            for t in memory_types:
                allowed[TYPE_CODES[enum_value(MemoryType, t, "memory type")]] = True
        wanted_tags = None if tags is None else lay.check_tags(tags, self.options.max_tags)
        spaces = [lay.space_of(agent_id)]
        if include_shared and agent_id is not None:
            spaces.append(SHARED_SPACE)
        with self._timed("search"):
            if vector is not None:
                unit = lay.query_vector(vector)
            else:
                unit = lay.query_vector((await self.embedder.embed([str(query)]))[0])
            indexes = [await self._cache.get(s) for s in spaces]
            if not self._blas.is_ready:
                await self._blas.ready()
            scan = Scan(unit, self._cache.now_ms(), allowed, wanted_tags, threshold, limit)
            if sum(ix.n for ix in indexes) > self.options.offload_rows:
                hits = await scan.in_thread(indexes, self._blas)
            else:
                with self._blas:
                    found = scan.run(indexes, blas=self._blas.single_threaded)
                hits = scan.resolve(indexes, found)
            return rank(hits, scan, self.namespace, self.options)

    # --- consolidation, analytics, sync -----------------------------------------------------
    async def consolidate_memories(self, agent_id: str | None) -> int:
        """Consolidate a space (``None``: the shared space): forget expired and low-retention
        entries, merge near-duplicates, promote frequently read short_term and working
        entries to long_term, link related entries. Each forget and merge is recorded as an
        event (the agent's audit trail; the ``memory`` stream for the shared space).
        Returns how many entries were removed (forgotten or merged); the full report is in
        :meth:`get_memory_analytics`' ``last_consolidation``.

        Raises:
            ValidationError: a bad agent id.
            BackendError: Redis failed (counted as a consolidation failure for the alerts).
        """
        return (await self.consolidate(agent_id)).removed

    async def consolidate(self, agent_id: str | None) -> ConsolidationReport:
        """:meth:`consolidate_memories`, returning the full report (expired, pruned, merged,
        promoted and linked counts) instead of the number removed.

        Raises:
            ValidationError: a bad agent id.
            BackendError: Redis failed (counted as a consolidation failure for the alerts).
        """
        with self._timed("consolidate"):
            return await self._consolidator.consolidate(lay.space_of(agent_id))

    async def get_memory_analytics(self, agent_id: str | None) -> MemoryAnalytics:
        """Figures on a space (``None``: the shared space), from a fresh read of Redis.

        Raises:
            ValidationError: a bad agent id.
        """
        return await analytics(self._cache, self._layout, lay.space_of(agent_id))

    async def sync(self) -> int:
        """Apply every change other instances made to the loaded spaces now (what
        :meth:`run` does on each hint); returns how many changes were read."""
        return await self._cache.poll()

    @property
    def following(self) -> bool:
        """Whether :meth:`run` is subscribed to the change hints."""
        return self._cache.listening.is_set()

    async def run(self) -> None:
        """Follow the change feeds (so other instances' writes reach the loaded indexes
        within ``sync_interval`` seconds, usually at once) and consolidate the loaded spaces
        every ``consolidation_interval`` seconds, until cancelled."""
        interval = self.options.consolidation_interval
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._cache.follow)
            if interval > 0:
                tasks.start_soon(self._consolidator.periodic, interval)


def _offline(p: Prepared) -> Decoded:
    """The entry a journaled store will create, stamped by this machine's clock (the server
    stamps its own when the journal is replayed)."""
    now = int(time.time() * 1000)
    return stored(p, [1, p.memory_id, now, now + p.ttl_ms if p.ttl_ms else 0])
