"""Mergeable aggregates: count, sum, min, max and a log-bucketed histogram.

The histogram has fixed boundaries ``±2**(i/8)`` (eight buckets per doubling, plus one for
zero), the same in every process, so histograms merge by adding counts per bucket — across
flushes, processes and time buckets. A quantile read from a merged histogram is within
:data:`RELATIVE_ERROR` (about 4.3 %) of the exact nearest-rank quantile.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = ["RELATIVE_ERROR", "Aggregate", "bucket_field", "bucket_value", "quantile"]

_PER_DOUBLING: Final = 8
_GAMMA: Final = 2.0 ** (1.0 / _PER_DOUBLING)
RELATIVE_ERROR: Final = (_GAMMA - 1.0) / (_GAMMA + 1.0)
"""Bound on |estimate - exact| / |exact| for a quantile (about 0.0433)."""
ZERO_THRESHOLD: Final = 1e-9
"""Magnitudes at or below this fall into the zero bucket."""


def bucket_field(value: float) -> str:
    """The histogram field of ``value``: ``p<i>`` for (2**((i-1)/8), 2**(i/8)], ``n<i>`` for
    the mirror-image negative bucket, ``z`` for zero."""
    if value > ZERO_THRESHOLD:
        return f"p{math.ceil(math.log2(value) * _PER_DOUBLING)}"
    if value < -ZERO_THRESHOLD:
        return f"n{math.ceil(math.log2(-value) * _PER_DOUBLING)}"
    return "z"


def bucket_value(name: str) -> float:
    """The representative of a bucket: the point of least relative error within it."""
    if name == "z":
        return 0.0
    upper = math.pow(2.0, int(name[1:]) / _PER_DOUBLING)
    estimate = 2.0 * upper / (1.0 + _GAMMA)
    return estimate if name[0] == "p" else -estimate


def _order(name: str) -> float:
    return bucket_value(name)


def quantile(hist: Mapping[str, int], q: float, *, lo: float, hi: float) -> float:
    """The nearest-rank ``q``-quantile of a histogram, clamped to the exact [lo, hi].

    Args:
        hist: bucket field -> count (see :func:`bucket_field`).
        q: from 0 to 1.
        lo: the exact minimum of the observations.
        hi: the exact maximum.
    """
    total = sum(hist.values())
    if total <= 0:
        return math.nan
    rank = max(1, math.ceil(q * total))
    seen = 0
    for name in sorted(hist, key=_order):
        seen += hist[name]
        if seen >= rank:
            return min(hi, max(lo, bucket_value(name)))
    return hi


@dataclass(slots=True)
class Aggregate:
    """count, sum, min, max and the histogram of some observations; merges exactly."""

    count: int = 0
    total: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    hist: dict[str, int] = field(default_factory=dict)

    def add(self, value: float) -> None:
        """Observe one value."""
        self.count += 1
        self.total += value
        self.lo = min(self.lo, value)
        self.hi = max(self.hi, value)
        key = bucket_field(value)
        self.hist[key] = self.hist.get(key, 0) + 1

    def merge(self, other: Aggregate) -> None:
        """Add ``other``'s observations to this one."""
        self.count += other.count
        self.total += other.total
        self.lo = min(self.lo, other.lo)
        self.hi = max(self.hi, other.hi)
        for key, n in other.hist.items():
            self.hist[key] = self.hist.get(key, 0) + n

    @classmethod
    def merged(cls, parts: Iterable[Aggregate]) -> Aggregate:
        """One aggregate of all ``parts``."""
        out = cls()
        for part in parts:
            out.merge(part)
        return out
