"""How metric series are laid out in the ``metrics`` keyspace, written and read back.

Keys (under the tenant's metrics keyspace; every key of one metric shares the hash tag
``{<name>}``, so one Lua call writes a whole batch on Cluster too)::

    metric:{<name>}:s:<sid>:<bucket>   hash    one series (tag set) in one time bucket
    metric:{<name>}:all:<bucket>       hash    every tag set of <name> merged (the rollup)
    metric:{<name>}:tags               zset    canonical tag set -> latest bucket start
    metric:{<name>}:w:<writer>         string  the last batch number a process applied
    metric:names                       zset    metric name -> latest bucket start

A bucket hash holds ``count``, ``sum``, ``min``, ``max`` and one count per occupied histogram
bucket (``p<i>``, ``n<i>``, ``z``; see :mod:`zen_async.metrics.histogram`). ``<sid>`` is the
16-hex-digit BLAKE2b digest of the canonical tag set (JSON of the sorted pairs, ``[]`` for
none) and ``<bucket>`` the bucket's start in epoch seconds. Each write sets a TTL of retention
plus one bucket (server clock) on the keys it touches, and the indexes drop entries whose
latest bucket is older than that.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from zen_async.metrics.buffer import Batch
from zen_async.metrics.histogram import Aggregate, quantile
from zen_async.metrics.models import MetricPoint
from zen_async.metrics.names import Tags
from zen_async.store import Keyspace

__all__ = ["SeriesStore", "canonical", "series_id"]

_FIXED_FIELDS: Final = frozenset({b"count", b"sum", b"min", b"max"})


def canonical(tags: Tags) -> str:
    """The tag set as stored in the index: JSON of the sorted pairs."""
    return orjson.dumps([list(pair) for pair in tags]).decode()


def series_id(canonical_tags: str) -> str:
    """The short id of a tag set in key names."""
    return hashlib.blake2b(canonical_tags.encode(), digest_size=8).hexdigest()


class SeriesStore:
    """One tenant's metric series.

    Args:
        ks: the tenant's ``metrics`` keyspace.
        ttl_ms: TTL of every key written (retention plus one bucket).
        horizon: seconds after which an index entry is pruned (the same span).
    """

    __slots__ = ("_horizon", "_ks", "_ttl_ms")

    def __init__(self, ks: Keyspace, *, ttl_ms: int, horizon: int) -> None:
        self._ks = ks
        self._ttl_ms = ttl_ms
        self._horizon = horizon

    def _base(self, name: str, *parts: str | int) -> str:
        return self._ks.key("metric", "{" + name + "}", *parts)

    async def merge(self, batch: Batch, *, writer: str) -> bool:
        """Apply one batch (script ``metrics_merge``), once per (writer, batch number).

        Returns:
            False when the server had already applied this batch (a resend).

        Raises:
            ZenError: the server could not run it.
        """
        name = batch.name
        keys = [self._base(name, "w", writer), self._base(name, "tags")]
        args: list[str | int] = [batch.seq, self._ttl_ms, self._horizon]
        rollups: dict[int, Aggregate] = {}
        for tags, bucket, agg in batch.entries:
            member = canonical(tags)
            keys.append(self._base(name, "s", series_id(member), bucket))
            args += [member, bucket, *_agg_args(agg)]
            rollups.setdefault(bucket, Aggregate()).merge(agg)
        for bucket, agg in rollups.items():
            keys.append(self._base(name, "all", bucket))
            args += ["", bucket, *_agg_args(agg)]
        return bool(await self._ks.run_script("metrics_merge", keys, args))

    async def note_names(self, latest: Mapping[str, int]) -> None:
        """Record metric names with their latest bucket in the names index (script
        ``metrics_names``).

        Raises:
            ZenError: the server could not run it.
        """
        args: list[str | int] = [self._ttl_ms, self._horizon]
        for name, bucket in latest.items():
            args += [name, bucket]
        await self._ks.run_script("metrics_names", [self._ks.key("metric", "names")], args)

    async def read(self, name: str, tags: Tags | None, buckets: range) -> list[MetricPoint]:
        """The points of a series (``tags`` None: the rollup) in ``buckets`` that hold data."""
        if tags is None:
            keys = [self._base(name, "all", b) for b in buckets]
        else:
            sid = series_id(canonical(tags))
            keys = [self._base(name, "s", sid, b) for b in buckets]
        replies = await self._ks.batch([("HGETALL", k) for k in keys], idempotent=True)
        return [_point(b, r) for b, r in zip(buckets, replies, strict=True) if r]

    async def tag_sets(self, name: str) -> list[dict[str, str]]:
        """The tag sets of ``name`` in the index."""
        members = await self._ks.execute("ZRANGE", self._base(name, "tags"), 0, -1)
        found = [dict(orjson.loads(m)) for m in members]
        return sorted(found, key=lambda t: sorted(t.items()))

    async def names(self) -> list[str]:
        """The metric names in the index."""
        members = await self._ks.execute("ZRANGE", self._ks.key("metric", "names"), 0, -1)
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)


def _agg_args(agg: Aggregate) -> list[str | int]:
    # repr() is the shortest text that reads back as the same float, in Python and in Lua.
    out: list[str | int] = [agg.count, repr(agg.total), repr(agg.lo), repr(agg.hi), len(agg.hist)]
    for key, count in agg.hist.items():
        out += [key, count]
    return out


def _point(bucket: int, reply: Any) -> MetricPoint:
    fields: dict[bytes, bytes] = (
        reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
    )
    count = int(fields[b"count"])
    total = float(fields[b"sum"])
    lo, hi = float(fields[b"min"]), float(fields[b"max"])
    hist = {k.decode(): int(v) for k, v in fields.items() if k not in _FIXED_FIELDS}
    return MetricPoint(
        start=datetime.fromtimestamp(bucket, UTC),
        count=count,
        sum=total,
        min=lo,
        max=hi,
        # clamped: a float sum of many values can round a hair outside [min, max]
        mean=min(hi, max(lo, total / count)) if count else math.nan,
        p50=quantile(hist, 0.50, lo=lo, hi=hi),
        p90=quantile(hist, 0.90, lo=lo, hi=hi),
        p99=quantile(hist, 0.99, lo=lo, hi=hi),
    )
