"""Typed outputs of the memory tools: JSON views of zen_async.memory's results (vectors are
left out unless asked for: 384 floats per entry)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from zen_async.memory import (
    ConsolidationReport,
    MemoryAnalytics,
    MemoryEntry,
    MemoryPriority,
    MemorySearchResult,
    MemoryType,
)

__all__ = [
    "AccessCountOut",
    "ConsolidationOut",
    "MemoryAnalyticsOut",
    "MemoryHitOut",
    "MemoryOut",
]


class MemoryOut(BaseModel):
    """A stored memory (its vector only when asked for)."""

    memory_id: str
    namespace: str
    agent_id: str | None
    memory_type: MemoryType
    priority: MemoryPriority
    content: Any
    tags: list[str]
    metadata: dict[str, Any]
    content_hash: str
    related_memories: list[str]
    access_count: int
    last_accessed: datetime
    created_at: datetime
    expires_at: datetime | None
    version: int
    vector: list[float] | None = None

    @classmethod
    def of(cls, entry: MemoryEntry, *, with_vector: bool = False) -> MemoryOut:
        """The tool's view of a :class:`MemoryEntry`."""
        return cls(
            memory_id=entry.memory_id,
            namespace=entry.namespace,
            agent_id=entry.agent_id,
            memory_type=entry.memory_type,
            priority=entry.priority,
            content=entry.content,
            tags=list(entry.tags),
            metadata=dict(entry.metadata),
            content_hash=entry.content_hash,
            related_memories=list(entry.related_memories),
            access_count=entry.access_count,
            last_accessed=entry.last_accessed,
            created_at=entry.created_at,
            expires_at=entry.expires_at,
            version=entry.version,
            vector=entry.vector.tolist() if with_vector else None,
        )


class MemoryHitOut(BaseModel):
    """One search hit, ``rank`` 1 the most relevant."""

    memory_entry: MemoryOut
    similarity_score: float
    relevance_score: float
    rank: int

    @classmethod
    def of(cls, hit: MemorySearchResult) -> MemoryHitOut:
        """The tool's view of a :class:`MemorySearchResult`."""
        return cls(
            memory_entry=MemoryOut.of(hit.memory_entry),
            similarity_score=hit.similarity_score,
            relevance_score=hit.relevance_score,
            rank=hit.rank,
        )


class ConsolidationOut(BaseModel):
    """What one consolidation did; ``removed`` = expired + pruned + merged."""

    space: str
    finished_at: datetime
    expired: int
    pruned: int
    merged: int
    promoted: int
    linked: int
    removed: int

    @classmethod
    def of(cls, report: ConsolidationReport) -> ConsolidationOut:
        """The tool's view of a :class:`ConsolidationReport`."""
        return cls(
            space=report.space,
            finished_at=report.finished_at,
            expired=report.expired,
            pruned=report.pruned,
            merged=report.merged,
            promoted=report.promoted,
            linked=report.linked,
            removed=report.removed,
        )


class AccessCountOut(BaseModel):
    """A memory and how often it was read."""

    memory_id: str
    access_count: int


class MemoryAnalyticsOut(BaseModel):
    """Figures on a memory space (``space`` ``"~shared"``: the shared one)."""

    space: str
    total_memories: int
    by_type: dict[MemoryType, int]
    by_priority: dict[MemoryPriority, int]
    total_size_mb: float
    compression_ratio: float
    average_access_frequency: float
    most_accessed_memories: list[AccessCountOut]
    dedup_count: int
    merge_count: int
    forget_count: int
    promotion_count: int
    last_consolidation: ConsolidationOut | None
    computed_at: datetime

    @classmethod
    def of(cls, a: MemoryAnalytics) -> MemoryAnalyticsOut:
        """The tool's view of :class:`MemoryAnalytics`."""
        last = a.last_consolidation
        return cls(
            space=a.space,
            total_memories=a.total_memories,
            by_type=dict(a.by_type),
            by_priority=dict(a.by_priority),
            total_size_mb=a.total_size_mb,
            compression_ratio=a.compression_ratio,
            average_access_frequency=a.average_access_frequency,
            most_accessed_memories=[
                AccessCountOut(memory_id=m, access_count=n) for m, n in a.most_accessed_memories
            ],
            dedup_count=a.dedup_count,
            merge_count=a.merge_count,
            forget_count=a.forget_count,
            promotion_count=a.promotion_count,
            last_consolidation=None if last is None else ConsolidationOut.of(last),
            computed_at=a.computed_at,
        )
