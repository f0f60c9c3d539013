"""The tunables of agent memory, in one frozen object.

:meth:`MemoryOptions.from_settings` reads the ``REDIS_MEMORY_*`` fields of
:class:`~zen_async.config.Settings` (which validates them at start-up and has the defaults
below); tests and embedders build one directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from zen_async.errors import ValidationError
from zen_async.memory.models import MemoryPriority, MemoryType

if TYPE_CHECKING:
    from zen_async.config import Settings

__all__ = ["DEFAULT_TTLS", "PRIORITY_SCORES", "TTL_MULTIPLIERS", "MemoryOptions"]

T, P = MemoryType, MemoryPriority

DEFAULT_TTLS: Final[Mapping[MemoryType, float | None]] = MappingProxyType(
    {
        T.SHORT_TERM: 30 * 60.0,
        T.WORKING: 2 * 3600.0,
        T.LONG_TERM: 24 * 3600.0,
        T.SHARED: None,
        T.PROCEDURAL: None,
        T.EPISODIC: None,
        T.SEMANTIC: None,
    }
)
"""Seconds each type lives (at medium priority); None: it never expires."""

TTL_MULTIPLIERS: Final[Mapping[MemoryPriority, float]] = MappingProxyType(
    {P.CRITICAL: 4.0, P.HIGH: 2.0, P.MEDIUM: 1.0, P.LOW: 0.5, P.TEMPORARY: 0.25}
)
"""How a priority scales its type's TTL."""

PRIORITY_SCORES: Final[Mapping[MemoryPriority, float]] = MappingProxyType(
    {P.CRITICAL: 1.0, P.HIGH: 0.75, P.MEDIUM: 0.5, P.LOW: 0.25, P.TEMPORARY: 0.0}
)
"""The priority term ``p`` of the relevance formula."""


@dataclass(frozen=True, slots=True)
class MemoryOptions:
    """Every tunable of :class:`~zen_async.memory.AgentMemoryManager`.

    Raises:
        ValidationError: a value out of range (on construction).
    """

    ttls: Mapping[MemoryType, float | None] = field(default_factory=lambda: dict(DEFAULT_TTLS))
    """Seconds each type lives at medium priority; None: never expires."""
    ttl_multipliers: Mapping[MemoryPriority, float] = field(
        default_factory=lambda: dict(TTL_MULTIPLIERS)
    )
    # --- relevance (see zen_async.memory.relevance) --------------------------------------
    weight_similarity: float = 0.6
    weight_recency: float = 0.15
    weight_priority: float = 0.1
    weight_access: float = 0.1
    weight_tags: float = 0.05
    recency_half_life_accessed: float = 3600.0
    """Seconds for the last-access half of the recency term to halve."""
    recency_half_life_created: float = 86400.0
    """Seconds for the creation half of the recency term to halve."""
    access_saturation: int = 100
    """access_count at which the access term reaches 1."""
    # --- consolidation --------------------------------------------------------------------
    merge_threshold: float = 0.95
    """Cosine at or above which two entries of one type are near-duplicates to merge."""
    link_threshold: float = 0.85
    """Cosine at or above which (and below merge_threshold) two entries are linked."""
    max_links: int = 8
    """Related memories kept per entry."""
    prune_threshold: float = 0.05
    """Retention score below which a non-critical entry is forgotten."""
    promote_min_access: int = 5
    """access_count at which short_term and working entries become long_term."""
    consolidation_interval: float = 600.0
    """Seconds between background consolidations of the spaces this instance has loaded
    (0: none)."""
    # --- storage and search ---------------------------------------------------------------
    max_content_bytes: int = 1_048_576
    """Largest content plus metadata accepted, as JSON bytes."""
    max_tags: int = 32
    shards: int = 16
    """Hash-tag shards per tenant; fixed for a deployment (it is part of every memory id)."""
    offload_rows: int = 16_384
    """Rows scanned by one search above which the scan runs in a worker thread."""
    sync_interval: float = 1.0
    """Seconds between polls of the change streams when no hint arrives: the bound on how
    late another instance's write is seen."""
    change_stream_max_len: int = 100_000
    """Approximate length bound of each shard's change stream."""
    max_spaces: int = 4096
    """Spaces (agents) kept in the in-process index; the least recently used beyond it are
    dropped (and reloaded on demand)."""

    def __post_init__(self) -> None:
        for t in MemoryType:
            ttl = self.ttls.get(t, DEFAULT_TTLS[t])
            if ttl is not None and not (math.isfinite(ttl) and ttl > 0):
                raise ValidationError(f"TTL of {t.value} is {ttl!r}: use seconds > 0, or None")
        for p in MemoryPriority:
            m = self.ttl_multipliers.get(p, TTL_MULTIPLIERS[p])
            if not (math.isfinite(m) and m > 0):
                raise ValidationError(f"TTL multiplier of {p.value} is {m!r}: use a number > 0")
        weights = (
            self.weight_similarity,
            self.weight_recency,
            self.weight_priority,
            self.weight_access,
            self.weight_tags,
        )
        if not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ValidationError(f"relevance weights {weights} must be finite and >= 0")
        for name in ("recency_half_life_accessed", "recency_half_life_created", "sync_interval"):
            if not getattr(self, name) > 0:
                raise ValidationError(f"{name} is {getattr(self, name)!r}: use a number > 0")
        if not -1.0 <= self.link_threshold <= self.merge_threshold <= 1.0:
            raise ValidationError(
                f"thresholds link={self.link_threshold} merge={self.merge_threshold}: "
                "use -1 <= link <= merge <= 1"
            )
        for name in ("access_saturation", "max_content_bytes", "shards", "max_spaces"):
            if getattr(self, name) < 1:
                raise ValidationError(f"{name} is {getattr(self, name)!r}: use an integer >= 1")
        if self.shards > 1024:
            raise ValidationError(f"shards is {self.shards}: use 1 to 1024")

    def ttl_ms(self, memory_type: MemoryType, priority: MemoryPriority) -> int:
        """Milliseconds a new entry of this type and priority lives; 0: forever."""
        ttl = self.ttls.get(memory_type, DEFAULT_TTLS[memory_type])
        if ttl is None:
            return 0
        multiplier = self.ttl_multipliers.get(priority, TTL_MULTIPLIERS[priority])
        return max(1, round(ttl * multiplier * 1000))

    def with_changes(self, **changes: object) -> MemoryOptions:
        """A copy with some options changed."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_settings(cls, settings: Settings) -> MemoryOptions:
        """Options from the ``REDIS_MEMORY_*`` settings (validated by :class:`Settings`).

        TTLs are ``REDIS_MEMORY_TTL_<TYPE>`` (seconds; ``none``: never expires), multipliers
        ``REDIS_MEMORY_TTL_MULTIPLIER_<PRIORITY>``; every other option is
        ``REDIS_MEMORY_<OPTION>``.
        """
        s = settings
        return cls(
            ttls={
                T.SHORT_TERM: s.redis_memory_ttl_short_term,
                T.WORKING: s.redis_memory_ttl_working,
                T.LONG_TERM: s.redis_memory_ttl_long_term,
                T.SHARED: s.redis_memory_ttl_shared,
                T.PROCEDURAL: s.redis_memory_ttl_procedural,
                T.EPISODIC: s.redis_memory_ttl_episodic,
                T.SEMANTIC: s.redis_memory_ttl_semantic,
            },
            ttl_multipliers={
                P.CRITICAL: s.redis_memory_ttl_multiplier_critical,
                P.HIGH: s.redis_memory_ttl_multiplier_high,
                P.MEDIUM: s.redis_memory_ttl_multiplier_medium,
                P.LOW: s.redis_memory_ttl_multiplier_low,
                P.TEMPORARY: s.redis_memory_ttl_multiplier_temporary,
            },
            weight_similarity=s.redis_memory_weight_similarity,
            weight_recency=s.redis_memory_weight_recency,
            weight_priority=s.redis_memory_weight_priority,
            weight_access=s.redis_memory_weight_access,
            weight_tags=s.redis_memory_weight_tags,
            recency_half_life_accessed=s.redis_memory_recency_half_life_accessed,
            recency_half_life_created=s.redis_memory_recency_half_life_created,
            access_saturation=s.redis_memory_access_saturation,
            merge_threshold=s.redis_memory_merge_threshold,
            link_threshold=s.redis_memory_link_threshold,
            max_links=s.redis_memory_max_links,
            prune_threshold=s.redis_memory_prune_threshold,
            promote_min_access=s.redis_memory_promote_min_access,
            consolidation_interval=s.redis_memory_consolidation_interval,
            max_content_bytes=s.redis_memory_max_content_bytes,
            max_tags=s.redis_memory_max_tags,
            shards=s.redis_memory_shards,
            offload_rows=s.redis_memory_offload_rows,
            sync_interval=s.redis_memory_sync_interval,
            change_stream_max_len=s.redis_memory_change_stream_max_len,
            max_spaces=s.redis_memory_max_spaces,
        )
