"""Agent memory: types, priorities, entries, search results, analytics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "VECTOR_DIM",
    "ConsolidationReport",
    "JSONValue",
    "MemoryAnalytics",
    "MemoryContent",
    "MemoryEntry",
    "MemoryPriority",
    "MemorySearchResult",
    "MemoryType",
    "NewMemory",
]

VECTOR_DIM: Final = 384
"""Dimension of every memory vector (all-MiniLM-L6-v2's, and the hashing embedder's)."""

JSONValue: TypeAlias = (
    str | int | float | bool | Sequence["JSONValue"] | Mapping[str, "JSONValue"] | None
)
"""A value orjson can store: what metadata and JSON content may hold."""

MemoryContent: TypeAlias = str | Mapping[str, JSONValue] | Sequence[JSONValue]
"""What a memory holds: text, or a JSON object or array."""


class MemoryType(StrEnum):
    """The kind of a memory, which sets its default time to live.

    ==========  ==========================  ======================================
    type        default TTL                 meant for
    ==========  ==========================  ======================================
    short_term  30 min                      the current exchange
    working     2 h                         the current task
    long_term   24 h                        what was learnt and is worth keeping
    shared      none                        the tenant's cross-agent knowledge base
    procedural  none (configurable)         how to do things
    episodic    none (configurable)         what happened
    semantic    none (configurable)         facts
    ==========  ==========================  ======================================
    """

    SHORT_TERM = "short_term"
    WORKING = "working"
    LONG_TERM = "long_term"
    SHARED = "shared"
    PROCEDURAL = "procedural"
    EPISODIC = "episodic"
    SEMANTIC = "semantic"


class MemoryPriority(StrEnum):
    """How much a memory matters. A priority scales the TTL of its type (critical x4,
    high x2, medium x1, low x0.5, temporary x0.25 by default) and adds to its relevance."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    TEMPORARY = "temporary"


@dataclass(frozen=True, slots=True)
class MemoryEntry:
    """One stored memory.

    ``version`` counts writes of its content and attributes (store, update, merge,
    promotion, links); reading it (access_count, last_accessed) does not bump it.
    """

    memory_id: str
    namespace: str
    """The tenant it belongs to."""
    agent_id: str | None
    """Its agent; None for the tenant's shared space."""
    memory_type: MemoryType
    priority: MemoryPriority
    content: MemoryContent
    tags: tuple[str, ...]
    metadata: Mapping[str, JSONValue]
    vector: npt.NDArray[np.float32] = field(compare=False, repr=False)
    """The stored 384-dim float32 vector (read-only)."""
    content_hash: str
    """SHA-256 (hex) of the canonical content: the exact-duplicate key."""
    related_memories: tuple[str, ...]
    access_count: int
    last_accessed: datetime
    created_at: datetime
    expires_at: datetime | None
    """None: it never expires."""
    version: int


@dataclass(frozen=True, slots=True)
class NewMemory:
    """One memory for :meth:`AgentMemoryManager.store_memories`."""

    agent_id: str | None
    content: MemoryContent
    memory_type: MemoryType = MemoryType.WORKING
    priority: MemoryPriority = MemoryPriority.MEDIUM
    tags: Sequence[str] = ()
    metadata: Mapping[str, JSONValue] | None = None
    vector: npt.ArrayLike | None = None


@dataclass(frozen=True, slots=True)
class MemorySearchResult:
    """One search hit."""

    memory_entry: MemoryEntry
    similarity_score: float
    """Cosine similarity of the query and the memory, in [-1, 1]."""
    relevance_score: float
    """The relevance formula's value (see :mod:`zen_async.memory.relevance`)."""
    rank: int
    """1 for the most relevant."""


@dataclass(frozen=True, slots=True)
class ConsolidationReport:
    """What one consolidation of a memory space did."""

    space: str
    """The agent id, or ``""`` for the shared space."""
    finished_at: datetime
    expired: int = 0
    """Entries past their expiry, forgotten."""
    pruned: int = 0
    """Entries whose retention score fell below the threshold, forgotten."""
    merged: int = 0
    """Near-duplicates merged into another entry (and removed)."""
    promoted: int = 0
    """short_term and working entries moved to long_term."""
    linked: int = 0
    """New pairs of related memories."""

    @property
    def removed(self) -> int:
        """Entries that no longer exist: expired + pruned + merged."""
        return self.expired + self.pruned + self.merged


@dataclass(frozen=True, slots=True)
class MemoryAnalytics:
    """Figures on one memory space (an agent's, or the shared one)."""

    space: str
    total_memories: int
    by_type: Mapping[MemoryType, int]
    by_priority: Mapping[MemoryPriority, int]
    total_size_mb: float
    """Stored bytes of content documents and vectors, in MiB."""
    compression_ratio: float
    """Uncompressed over stored size of the content documents (1.0: nothing compressed)."""
    average_access_frequency: float
    """Mean access_count per memory."""
    most_accessed_memories: tuple[tuple[str, int], ...]
    """Up to 10 (memory_id, access_count), most accessed first (ties by id)."""
    dedup_count: int
    """Stores answered with an existing exact duplicate."""
    merge_count: int
    """Near-duplicates merged by consolidation."""
    forget_count: int
    """Entries forgotten by consolidation (expired or pruned)."""
    promotion_count: int
    last_consolidation: ConsolidationReport | None
    computed_at: datetime
