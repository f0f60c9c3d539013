"""The in-memory buffer between ``record_metric()`` and Redis: pure code, no I/O.

Values aggregate per (tenant, name, tags, time bucket) into *live* entries. A flush seals the
live entries into numbered *batches* (one metric name each) and writes them; a batch the server
could not take stays *pending* and is sent again, unchanged and under the same number, by the
next flush, so a batch whose reply was lost is applied once (the script skips a number it has
seen). Live and pending entries together never exceed ``max_entries``: making room drops the
oldest entry that is not being written at that moment.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from zen_async.metrics.histogram import Aggregate
from zen_async.metrics.names import Tags

__all__ = ["Batch", "Buffer", "SeriesKey"]

SeriesKey = tuple[str, str, Tags, int]
"""(tenant, metric name, tags, bucket start in epoch seconds)."""


@dataclass(slots=True, eq=False)
class Batch:
    """Entries of one tenant's metric, written by one script call under sequence ``seq``."""

    seq: int
    tenant: str
    name: str
    entries: deque[tuple[Tags, int, Aggregate]] = field(default_factory=deque)
    in_flight: bool = False


class Buffer:
    """Aggregates waiting to be written, at most ``max_entries`` of them.

    Attributes:
        live: aggregates still taking values, oldest first.
        pending: sealed batches not yet written, oldest first.
        size: live plus pending entries.
        dropped: entries dropped to stay within the bound, or refused by the server.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.live: dict[SeriesKey, Aggregate] = {}
        self.pending: deque[Batch] = deque()
        self.size = 0
        self.dropped = 0
        self._seq = 0

    def add(self, key: SeriesKey, value: float) -> bool:
        """Observe ``value`` into the live entry ``key``.

        Returns:
            False when an entry (the oldest one, or this value when every older entry is in
            flight) had to be dropped to stay within the bound.
        """
        agg = self.live.get(key)
        room = True
        if agg is None:
            if self.size >= self.max_entries:
                room = False
                if not self._drop_oldest():
                    self.dropped += 1
                    return False
            agg = self.live[key] = Aggregate()
            self.size += 1
        agg.add(value)
        return room

    def _drop_oldest(self) -> bool:
        for batch in self.pending:
            if not batch.in_flight and batch.entries:
                batch.entries.popleft()
                if not batch.entries:
                    self.pending.remove(batch)
                self.size -= 1
                self.dropped += 1
                return True
        if self.live:
            del self.live[next(iter(self.live))]
            self.size -= 1
            self.dropped += 1
            return True
        return False

    def seal(self, max_per_batch: int) -> None:
        """Move the live entries into new pending batches of at most ``max_per_batch``."""
        groups: dict[tuple[str, str], list[tuple[Tags, int, Aggregate]]] = {}
        for (tenant, name, tags, bucket), agg in self.live.items():
            groups.setdefault((tenant, name), []).append((tags, bucket, agg))
        self.live = {}
        for (tenant, name), items in groups.items():
            for start in range(0, len(items), max_per_batch):
                self._seq += 1
                chunk = deque(items[start : start + max_per_batch])
                self.pending.append(Batch(self._seq, tenant, name, chunk))

    def groups(self) -> dict[tuple[str, str], list[Batch]]:
        """Pending batches by (tenant, name), each list in sequence order."""
        out: dict[tuple[str, str], list[Batch]] = {}
        for batch in self.pending:
            out.setdefault((batch.tenant, batch.name), []).append(batch)
        return out

    def done(self, batch: Batch) -> None:
        """Forget a batch the server applied."""
        if batch in self.pending:
            self.pending.remove(batch)
            self.size -= len(batch.entries)

    def discard(self, batch: Batch) -> int:
        """Drop a batch the server refused; returns how many entries were dropped."""
        if batch not in self.pending:
            return 0
        self.pending.remove(batch)
        lost = len(batch.entries)
        self.size -= lost
        self.dropped += lost
        return lost

    @property
    def pending_entries(self) -> int:
        """Entries in sealed batches (written by a flush, or waiting to be retried)."""
        return self.size - len(self.live)
