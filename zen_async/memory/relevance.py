"""The relevance formula: how search ranks its hits, and (without the query terms) how
consolidation decides what to forget.

For a memory and a query::

    relevance = w_s * s + w_r * r + w_p * p + w_a * a + w_t * t

    s = cosine similarity of query and memory vectors, in [-1, 1]
    r = 0.5 * 2 ** (-age_accessed / h_accessed) + 0.5 * 2 ** (-age_created / h_created)
        (ages in seconds, from last_accessed and created_at to now, never negative)
    p = priority score: critical 1.0, high 0.75, medium 0.5, low 0.25, temporary 0.0
    a = min(1, ln(1 + access_count) / ln(1 + access_saturation))
    t = the fraction of the query's tags the memory carries (0 when the query has none)

Defaults: ``w_s`` 0.6, ``w_r`` 0.15, ``w_p`` 0.1, ``w_a`` 0.1, ``w_t`` 0.05 (they sum to 1,
so with s >= 0 a relevance lies in [0, 1]); ``h_accessed`` 1 h, ``h_created`` 24 h,
``access_saturation`` 100. All are :class:`~zen_async.memory.options.MemoryOptions`.

The *retention score* is the same formula without the query terms
(``w_r * r + w_p * p + w_a * a``): consolidation forgets a non-critical memory whose
retention score is below ``prune_threshold``.

Search takes the exact top-``limit`` memories by cosine similarity (at or above the
similarity threshold), then orders them by relevance: rank 1 is the most relevant.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from zen_async.memory.options import MemoryOptions

__all__ = ["access_term", "recency", "relevance", "retention"]

F64 = npt.NDArray[np.float64]


def recency(now_ms: float, last_accessed_ms: F64, created_ms: F64, options: MemoryOptions) -> F64:
    """The recency term ``r`` (1 for a memory created and used just now)."""
    age_accessed = np.maximum(now_ms - last_accessed_ms, 0.0) / 1000.0
    age_created = np.maximum(now_ms - created_ms, 0.0) / 1000.0
    result: F64 = 0.5 * np.exp2(-age_accessed / options.recency_half_life_accessed) + 0.5 * (
        np.exp2(-age_created / options.recency_half_life_created)
    )
    return result


def access_term(access_count: F64, options: MemoryOptions) -> F64:
    """The access term ``a``."""
    result: F64 = np.minimum(
        1.0, np.log1p(np.maximum(access_count, 0.0)) / math.log1p(options.access_saturation)
    )
    return result


def retention(
    now_ms: float,
    *,
    last_accessed_ms: F64,
    created_ms: F64,
    priority_score: F64,
    access_count: F64,
    options: MemoryOptions,
) -> F64:
    """The retention score of each memory (the formula without the query terms)."""
    result: F64 = (
        options.weight_recency * recency(now_ms, last_accessed_ms, created_ms, options)
        + options.weight_priority * priority_score
        + options.weight_access * access_term(access_count, options)
    )
    return result


def relevance(
    similarity: F64,
    now_ms: float,
    *,
    last_accessed_ms: F64,
    created_ms: F64,
    priority_score: F64,
    access_count: F64,
    tag_match: F64,
    options: MemoryOptions,
) -> F64:
    """The relevance of each memory to a query (arrays of one length, or broadcastable)."""
    result: F64 = (
        options.weight_similarity * similarity
        + retention(
            now_ms,
            last_accessed_ms=last_accessed_ms,
            created_ms=created_ms,
            priority_score=priority_score,
            access_count=access_count,
            options=options,
        )
        + options.weight_tags * tag_match
    )
    return result
