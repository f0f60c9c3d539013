"""Agent memory: TTL tiers, embeddings, exact vector search, relevance, dedup, consolidation
and analytics, in the ``memory`` keyspace (``zen.memory``)."""

from zen_async.memory.embed import (
    Embedder,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    embedder_from_settings,
)
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
from zen_async.memory.store import AgentMemoryManager

__all__ = [
    "VECTOR_DIM",
    "AgentMemoryManager",
    "ConsolidationReport",
    "Embedder",
    "HashingEmbedder",
    "JSONValue",
    "MemoryAnalytics",
    "MemoryContent",
    "MemoryEntry",
    "MemoryOptions",
    "MemoryPriority",
    "MemorySearchResult",
    "MemoryType",
    "NewMemory",
    "SentenceTransformerEmbedder",
    "embedder_from_settings",
]
