"""The in-process cache of space indexes, loaded lazily and kept in sync with the shards'
change feeds.

Loading a space: note the shard feed's last entry (once per shard), then read the space's
ids and entries. Changes read from the feed while a space loads are held and applied after;
every change applies idempotently (``u`` re-reads the entry unless the index already has that
version, ``t`` keeps the larger access figures, ``d`` removes for good, ids are never reused),
so replaying a change the load already saw does no harm.

Each feed entry carries the shard's change number ``n``; a number that is not the last one
plus 1 means entries were trimmed away (or a failover lost some): every loaded space of that
shard is then reloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import anyio.to_thread
import structlog

from zen_async._tasks import background
from zen_async.errors import ZenError
from zen_async.memory.index import SpaceIndex
from zen_async.memory.layout import Decoded, Layout, decode, text
from zen_async.memory.options import MemoryOptions
from zen_async.store import Message, Reconnected, RedisManager

__all__ = ["Change", "SpaceCache"]

log = structlog.get_logger(__name__)

_READ_COUNT: Final = 1000
_LOAD_BATCH: Final = 1000


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of a shard's change feed."""

    space: str
    op: str
    memory_id: str
    version: int
    access_count: float = 0.0
    last_accessed_ms: float = 0.0
    expires_ms: float | None = None


class SpaceCache:
    """Space indexes of one tenant, by space name, least recently used first."""

    def __init__(self, redis: RedisManager, layout: Layout, options: MemoryOptions) -> None:
        self._redis = redis
        self._ks = layout.ks
        self._layout = layout
        self._options = options
        self._spaces: OrderedDict[str, SpaceIndex] = OrderedDict()
        self._loading: dict[str, list[Change]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._cursors: dict[int, tuple[str, int]] = {}
        self._poll_lock = asyncio.Lock()
        self._offset_ms = 0.0
        self.wake = asyncio.Event()
        self.listening = asyncio.Event()

    # --- the server clock ---------------------------------------------------------------------
    def saw_server_time(self, server_ms: float) -> None:
        """Note a server timestamp (from a script's reply) to track the clock offset."""
        self._offset_ms = float(server_ms) - time.time() * 1000.0

    def now_ms(self) -> float:
        """The server's clock, as best known here (expiry is judged by it)."""
        return time.time() * 1000.0 + self._offset_ms

    # --- access -----------------------------------------------------------------------------
    def loaded(self, space: str) -> SpaceIndex | None:
        return self._spaces.get(space)

    def loaded_spaces(self) -> list[str]:
        return list(self._spaces)

    async def get(self, space: str) -> SpaceIndex:
        """The space's index, loading it on first use."""
        index = self._spaces.get(space)
        if index is not None:
            self._spaces.move_to_end(space)
            return index
        async with self._lock(space):
            index = self._spaces.get(space)
            if index is None:
                index = await self._load(space)
            return index

    async def reload(self, space: str) -> SpaceIndex:
        """Read the space again from Redis, replacing its index."""
        async with self._lock(space):
            self._spaces.pop(space, None)
            return await self._load(space)

    def _lock(self, space: str) -> asyncio.Lock:
        # One lock per space for as long as it is cached: a load and a reload of one space
        # never overlap (they would share its held changes).
        return self._locks.setdefault(space, asyncio.Lock())

    async def _load(self, space: str) -> SpaceIndex:
        shard = self._layout.shard_of(space)
        await self._track(shard)
        pending: list[Change] = []
        self._loading[space] = pending
        try:
            seconds, micros = await self._ks.execute("TIME")
            self.saw_server_time(int(seconds) * 1000 + int(micros) // 1000)
            ids = await self._ks.execute("ZRANGE", self._layout.ids(shard, space), 0, -1)
            entries = await self.fetch([text(i) for i in ids])
            found = [e for e in entries if e is not None]
            if len(found) > self._options.offload_rows:
                index = await anyio.to_thread.run_sync(SpaceIndex.build, space, shard, found)
            else:
                index = SpaceIndex.build(space, shard, found)
            self._spaces[space] = index
        finally:
            if self._loading.get(space) is pending:
                del self._loading[space]
        while len(self._spaces) > self._options.max_spaces:
            evicted, _ = self._spaces.popitem(last=False)
            lock = self._locks.get(evicted)
            if lock is not None and not lock.locked():
                del self._locks[evicted]
        if pending:
            await self.apply(pending)
        return index

    async def fetch(self, memory_ids: list[str]) -> list[Decoded | None]:
        """Read entries by id (pipelined); None where absent."""
        out: list[Decoded | None] = []
        for start in range(0, len(memory_ids), _LOAD_BATCH):
            chunk = memory_ids[start : start + _LOAD_BATCH]
            replies = await self._ks.batch(
                [("HGETALL", self._layout.entry(m)) for m in chunk], idempotent=True
            )
            out.extend(decode(r) if r else None for r in replies)
        return out

    # --- own writes ---------------------------------------------------------------------------
    async def put(self, entries: Iterable[Decoded]) -> None:
        """Apply entries this instance wrote (or read) to the loaded indexes."""
        for entry in entries:
            space = entry.row.space
            index = self._spaces.get(space)
            if index is not None:
                await index.gate.writable()
                index.upsert(entry)
            elif space in self._loading:
                self._loading[space].append(Change(space, "u", entry.row.memory_id, 0))

    async def drop(self, space: str, memory_ids: Iterable[str]) -> None:
        """Remove entries this instance deleted from the loaded index."""
        index = self._spaces.get(space)
        if index is not None:
            await index.gate.writable()
            for memory_id in memory_ids:
                index.remove(memory_id)

    # --- the change feeds ---------------------------------------------------------------------
    async def _track(self, shard: int) -> None:
        if shard in self._cursors:
            return
        last = await self._ks.execute(
            "XREVRANGE", self._layout.changes(shard), "+", "-", "COUNT", 1
        )
        if last:
            entry_id, fields = last[0][0], _fields(last[0][1])
            cursor = (text(entry_id), int(fields.get("n", 0)))
        else:
            cursor = ("0-0", 0)
        self._cursors.setdefault(shard, cursor)

    async def poll(self) -> int:
        """Read and apply every change since the last poll; returns how many were read."""
        async with self._poll_lock:
            total = 0
            while True:
                read, full = await self._poll_once()
                total += read
                if not full:
                    return total

    async def _poll_once(self) -> tuple[int, bool]:
        shards = sorted(self._cursors)
        if not shards:
            return 0, False
        commands = [
            (
                "XREAD",
                "COUNT",
                _READ_COUNT,
                "STREAMS",
                self._layout.changes(s),
                self._cursors[s][0],
            )
            for s in shards
        ]
        replies = await self._ks.batch(commands, idempotent=True)
        changes: list[Change] = []
        gaps: set[int] = set()
        full = False
        for shard, reply in zip(shards, replies, strict=True):
            entries = _entries(reply)
            full = full or len(entries) >= _READ_COUNT
            last_id, last_n = self._cursors[shard]
            for entry_id, fields in entries:
                n = int(fields.get("n", 0))
                if n != last_n + 1:
                    gaps.add(shard)
                last_id, last_n = entry_id, n
                changes.append(_change(fields))
            self._cursors[shard] = (last_id, last_n)
        await self.apply(changes)
        for shard in gaps:
            spaces = [s for s in self._spaces if self._layout.shard_of(s) == shard]
            log.warning("memory_feed_gap", shard=shard, reloading=len(spaces))
            for space in spaces:
                await self.reload(space)
        return len(changes), full

    async def apply(self, changes: list[Change]) -> None:
        """Apply changes to the loaded indexes (holding those of loading spaces)."""
        wanted: dict[str, None] = {}
        for change in changes:
            index = self._spaces.get(change.space)
            if index is None:
                if change.space in self._loading:
                    self._loading[change.space].append(change)
                continue
            if change.op == "u" and change.memory_id not in index.gone:
                i = index.pos.get(change.memory_id)
                if i is None or index.rows[i].version < change.version or not change.version:
                    wanted[change.memory_id] = None
        fetched = dict(zip(wanted, await self.fetch(list(wanted)), strict=True)) if wanted else {}
        by_space: dict[str, list[Change]] = {}
        for change in changes:
            by_space.setdefault(change.space, []).append(change)
        for space, items in by_space.items():
            index = self._spaces.get(space)
            if index is not None:
                await index.gate.writable()
                _apply(index, items, fetched)  # synchronously: no reader enters meanwhile

    async def listen(self) -> None:
        """Wake :meth:`run`'s poller on each hint (and after each reconnect), until
        cancelled."""
        async with self._redis.subscribe(self._layout.channel, retry_connect=True) as hints:
            self.listening.set()
            try:
                async for item in hints:
                    if isinstance(item, Message | Reconnected):
                        self.wake.set()
            finally:
                self.listening.clear()

    async def follow(self) -> None:
        """Poll the feeds on each hint, and at least every ``sync_interval`` seconds,
        until cancelled."""
        async with background(memory_hints=self.listen()):
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self._options.sync_interval)
                self.wake.clear()
                try:
                    await self.poll()
                except ZenError as exc:
                    log.warning("memory_feed_poll_failed", error=str(exc))


def _apply(index: SpaceIndex, changes: list[Change], fetched: dict[str, Decoded | None]) -> None:
    for change in changes:
        if change.op == "d":
            index.remove(change.memory_id)
        elif change.op == "t":
            index.touch(
                change.memory_id, change.access_count, change.last_accessed_ms, change.expires_ms
            )
        elif change.memory_id in fetched:
            entry = fetched.pop(change.memory_id)
            if entry is None:
                index.remove(change.memory_id)
            else:
                index.upsert(entry)


def _entries(reply: Any) -> list[tuple[str, dict[str, Any]]]:
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (s[1] for s in reply)
    out: list[tuple[str, dict[str, Any]]] = []
    for entries in streams:
        for entry in entries:
            if entry[1] is not None:
                out.append((text(entry[0]), _fields(entry[1])))
    return out


def _fields(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return {text(k): v for k, v in raw.items()}
    return {text(k): v for k, v in zip(raw[::2], raw[1::2], strict=True)}


def _change(fields: dict[str, Any]) -> Change:
    op = text(fields.get("op", b""))
    exp = fields.get("exp")
    return Change(
        space=text(fields.get("s", b"")),
        op=op,
        memory_id=text(fields.get("id", b"")),
        version=int(fields.get("v", 0)),
        access_count=float(fields.get("ac", 0)),
        last_accessed_ms=float(fields.get("la", 0)),
        expires_ms=float(exp) if exp is not None else None,
    )
