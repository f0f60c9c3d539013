"""Consumer groups: at-least-once delivery made effectively-once by acknowledging only after
the handler succeeded and remembering what was handled.

A consumer, on start, drains its own pending entries; then reads new ones with blocking reads
kept below the socket timeout; claims entries that other (dead) consumers left idle, with
XAUTOCLAIM; moves an entry delivered too often to a dead-letter stream; and on exit stops
reading, finishes what it read, acknowledges, and returns (or, past an optional drain
timeout, cancels the handlers still running and leaves their entries pending).

The per-event cost is kept to the handler's own: a read's entries are checked against their
done markers with one MGET and decoded in one pass (:func:`~zen_async.events.envelope.
decode_entries`), then wait in one queue that the ``concurrency`` workers take them from
(a worker whose handler does not suspend runs through a batch without a switch); what the
handlers finished is acknowledged by one acker, one ``event_ack`` script call per stream and
chunk, all the calls of a round pipelined (a group commit: under load one round trip acks
many entries, idle it acks one at once), and counted once per round.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog

from zen_async.errors import BackendError, ValidationError, ZenError
from zen_async.events.envelope import Event, decode_entries, validate_stream_name
from zen_async.events.log import EventLog, StreamRef
from zen_async.store import Arg

__all__ = ["Consumer", "ConsumerStatistics", "Handler"]

log = structlog.get_logger(__name__)

Handler = Callable[[Event], Awaitable[None]]
"""``async def handler(event: Event) -> None``; raising leaves the event pending for retry."""

_ERROR_BACKOFF: Final = 0.5

_Entry = tuple[StreamRef, str, dict[Any, Any]]  # a stream's entry as read: id and fields
_Work = tuple[StreamRef, str, Event | Exception]  # decoded (or why it does not decode)


@dataclass(frozen=True, slots=True)
class ConsumerStatistics:
    """What a consumer has done so far."""

    handled: int
    failed: int
    duplicates_skipped: int
    claimed: int
    dead_lettered: int


class Consumer:
    """One member of a consumer group over one or more streams.

    Args:
        events: the event log.
        group: the consumer group name.
        streams: the resolved streams.
        handler: called once per event; an exception leaves the event pending.
        name: this consumer's name (default: host-pid-object id).
        concurrency: handlers running at once.
        batch: entries per read.
        block: seconds one blocking read waits (kept below the socket timeout).
        min_idle: seconds an entry of a dead (or paused) consumer sits unacknowledged before
            another member claims it, and a failed entry waits before its retry. A live
            consumer touches the entries it is handling every ``min_idle / 2`` seconds, so a
            handler may run longer.
        max_deliveries: deliveries after which an entry goes to the dead-letter stream
            instead of the handler.
        start_id: where a new group starts: ``$`` (new events only) or ``0`` (everything).
        done_ttl: seconds a handled event's marker is kept for deduplication.
        drain_timeout: seconds :meth:`aclose` waits for the work already read before it
            cancels the handlers still running (None: wait as long as they run). An entry
            whose handler was cancelled, or that was read but not started, stays pending:
            another member claims it after ``min_idle``, or this consumer's name drains it
            on its next start.
    """

    def __init__(
        self,
        events: EventLog,
        group: str,
        streams: Sequence[StreamRef],
        handler: Handler,
        *,
        name: str | None = None,
        concurrency: int = 16,
        batch: int = 100,
        block: float = 0.5,
        min_idle: float = 30.0,
        max_deliveries: int = 5,
        start_id: str = "$",
        done_ttl: float = 24 * 3600,
        drain_timeout: float | None = None,
    ) -> None:
        validate_stream_name(group)
        if not streams:
            raise ValidationError("a consumer needs at least one stream")
        if concurrency < 1 or batch < 1 or max_deliveries < 1:
            raise ValidationError("concurrency, batch and max_deliveries must be >= 1")
        if drain_timeout is not None and drain_timeout < 0:
            raise ValidationError("drain_timeout must be >= 0 (or None: wait)")
        if start_id not in ("$", "0"):
            raise ValidationError(f"start_id {start_id!r} is invalid: use '$' or '0'")
        self.group = group
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        validate_stream_name(self.name)
        self._events = events
        self._refs = {ref.key: ref for ref in streams}
        # ref.done_key(group, entry_id) is this prefix + entry_id (built once, not per entry)
        self._done_prefix = {ref.key: ref.done_key(group, "") for ref in streams}
        self._handler = handler
        self._concurrency = concurrency
        self._batch = batch
        socket_timeout = events.redis.settings.redis_socket_timeout
        self._block_ms = max(1, int(min(block, socket_timeout * 0.8) * 1000))
        self._min_idle_ms = int(min_idle * 1000)
        self._claim_interval = max(0.05, min_idle / 2)
        self._max_deliveries = max_deliveries
        self._start_id = start_id
        self._done_ttl_ms = int(done_ttl * 1000)
        self._drain_timeout = drain_timeout
        # Read entries wait here for a worker; a reader adds a batch once fewer than
        # _read_ahead entries are read and not yet finished (handled and acked, or failed).
        self._work: deque[_Work] = deque()
        self._work_ready = asyncio.Event()
        self._read_ahead = max(batch, concurrency * 2)
        self._unfinished = 0
        self._room = asyncio.Event()
        self._room.set()
        self._all_finished = asyncio.Event()
        self._all_finished.set()
        self._inflight: set[tuple[str, str]] = set()
        # Handled entries wait here, per stream, for the acker's next round (a group commit).
        self._acks: dict[str, list[str]] = {}
        self._ack_wake = asyncio.Event()
        self._errors: dict[tuple[str, str], str] = {}
        self._stopping = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._pulse = asyncio.Event()  # set (and replaced) whenever a counter moves
        self._counts = {"handled": 0, "failed": 0, "duplicates": 0, "claimed": 0, "dead": 0}

    # --- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> Consumer:
        for ref in self._refs.values():
            await self._ensure_group(ref)
        self._main = asyncio.create_task(self._run(), name=f"zen-consumer-{self.group}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self, *, drain_timeout: float | None = None) -> None:
        """Stop reading, finish and acknowledge what was read, then return.

        Args:
            drain_timeout: seconds to wait for the work already read (default: the
                consumer's ``drain_timeout`` option; ``math.inf``: wait however long).
                Past it, the handlers still running are cancelled and their entries, like
                those read but not started, stay pending to be claimed later: nothing is
                lost, and nothing is acknowledged that was not handled.
        """
        self._stopping.set()
        main, self._main = self._main, None
        if main is None:
            return
        limit = self._drain_timeout if drain_timeout is None else drain_timeout
        if limit is not None and math.isinf(limit):
            limit = None
        try:
            await asyncio.wait({main}, timeout=limit)
            if not main.done():
                log.warning(
                    "consumer_drain_timed_out",
                    group=self.group,
                    consumer=self.name,
                    left_pending=len(self._inflight),
                )
                main.cancel()
                await asyncio.wait({main})
        except asyncio.CancelledError:
            main.cancel()
            await asyncio.wait({main})  # our own cancellation is re-raised just below
            raise
        if not main.cancelled():
            main.result()  # a failure of the consumer itself surfaces here

    def statistics(self) -> ConsumerStatistics:
        """Counters since start."""
        c = self._counts
        return ConsumerStatistics(
            handled=c["handled"],
            failed=c["failed"],
            duplicates_skipped=c["duplicates"],
            claimed=c["claimed"],
            dead_lettered=c["dead"],
        )

    async def wait_handled(self, count: int, *, timeout: float) -> None:  # noqa: ASYNC109 - an explicit deadline, like wait_for_state
        """Wait until at least ``count`` events were dealt with: handled, skipped as already
        handled, or dead-lettered.

        Raises:
            TimeoutError: not reached within ``timeout`` seconds.
        """
        c = self._counts
        async with asyncio.timeout(timeout):
            while c["handled"] + c["duplicates"] + c["dead"] < count:
                await self._pulse.wait()

    async def _ensure_group(self, ref: StreamRef) -> None:
        try:
            await ref.ks.execute(
                "XGROUP", "CREATE", ref.key, self.group, self._start_id, "MKSTREAM"
            )
        except BackendError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _run(self) -> None:
        workers = [asyncio.create_task(self._worker()) for _ in range(self._concurrency)]
        workers.append(asyncio.create_task(self._acker()))
        try:
            await self._drain_own_pending()
            loops = [self._reader(refs) for refs in self._reader_groups()]
            await asyncio.gather(*loops, self._claimer())
            await self._all_finished.wait()  # finish and acknowledge everything already read
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    def _reader_groups(self) -> list[list[StreamRef]]:
        """One reader per keyspace; per stream on Cluster, where keys of one read must share
        a slot."""
        groups: dict[str, list[StreamRef]] = {}
        for ref in self._refs.values():
            key = ref.key if ref.ks.cluster else ref.ks.name
            groups.setdefault(key, []).append(ref)
        return list(groups.values())

    # --- reading --------------------------------------------------------------------------
    async def _drain_own_pending(self) -> None:
        for ref in self._refs.values():
            after = "0"
            while not self._stopping.is_set():
                reply = await self._read(ref.ks, [ref], after, block=False)
                if not reply:
                    break
                for _, entry_id, _ in reply:
                    after = entry_id
                await self._enqueue(reply)

    async def _reader(self, refs: list[StreamRef]) -> None:
        ks = refs[0].ks
        while not self._stopping.is_set():
            try:
                entries = await self._read(ks, refs, ">", block=True)
            except ZenError as exc:
                log.warning("consumer_read_failed", group=self.group, error=str(exc))
                await self._pause(_ERROR_BACKOFF)
                continue
            await self._enqueue(entries)

    async def _read(
        self, ks: Any, refs: list[StreamRef], after: str, *, block: bool
    ) -> list[_Entry]:
        args: list[Any] = ["XREADGROUP", "GROUP", self.group, self.name, "COUNT", self._batch]
        if block:
            args += ["BLOCK", self._block_ms]
        args += ["STREAMS", *(r.key for r in refs), *([after] * len(refs))]
        reply = await ks.execute(*args)
        return self._entries(reply)

    def _entries(self, reply: Any) -> list[_Entry]:
        if not reply:
            return []
        pairs = reply.items() if isinstance(reply, dict) else reply
        out: list[_Entry] = []
        for stream_key, entries in pairs:
            ref = self._refs[_text(stream_key)]
            for entry in entries:
                entry_id, fields = entry[0], entry[1]
                if fields is not None:  # None: deleted while pending
                    out.append((ref, _text(entry_id), fields))
        return out

    async def _enqueue(self, entries: list[_Entry]) -> None:
        """Queue the entries not in flight here and not handled yet, decoded, once there is
        room (at most ``_read_ahead`` entries read and unfinished before these)."""
        inflight = self._inflight
        fresh = [e for e in entries if (e[0].key, e[1]) not in inflight]
        if not fresh:
            return
        try:
            fresh = await self._not_yet_handled(fresh)
        except ZenError as exc:  # they stay pending here: claimed back after min_idle
            log.warning("consumer_marker_check_failed", group=self.group, error=str(exc))
            return
        if not fresh:
            return
        while self._unfinished >= self._read_ahead:
            self._room.clear()
            await self._room.wait()
        by_stream: dict[str, list[_Entry]] = {}
        for entry in fresh:  # again: a claim may have queued some while this one waited
            if (entry[0].key, entry[1]) not in inflight:
                by_stream.setdefault(entry[0].key, []).append(entry)
        count = 0
        work = self._work
        for group in by_stream.values():
            ref = group[0][0]
            decoded = decode_entries(ref.name, ((e[1], e[2]) for e in group))
            for (_, entry_id, _), event in zip(group, decoded, strict=True):
                inflight.add((ref.key, entry_id))
                work.append((ref, entry_id, event))
            count += len(group)
        if not count:
            return
        self._unfinished += count
        self._all_finished.clear()
        self._work_ready.set()

    async def _not_yet_handled(self, entries: list[_Entry]) -> list[_Entry]:
        """``entries`` without those whose done marker exists (handled by a member that
        acknowledged after this one read them): those are acknowledged and skipped. One MGET
        for the lot (they come from one read: one keyspace, and one slot on Cluster)."""
        ks = entries[0][0].ks
        prefix = self._done_prefix
        markers = await ks.execute(
            "MGET", *(prefix[ref.key] + entry_id for ref, entry_id, _ in entries)
        )
        done: dict[str, list[str]] = {}
        left = []
        for entry, marker in zip(entries, markers, strict=True):
            if marker is None:
                left.append(entry)
            else:
                done.setdefault(entry[0].key, []).append(entry[1])
        for key, ids in done.items():
            await ks.execute("XACK", key, self.group, *ids, idempotent=True)
            self._bump("duplicates", len(ids))
        return left

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # --- handling -------------------------------------------------------------------------
    async def _worker(self) -> None:
        work, ready = self._work, self._work_ready
        while True:
            if not work:
                ready.clear()
                await ready.wait()
                continue
            ref, entry_id, event = work.popleft()
            try:
                await self._handle(ref, entry_id, event)
            except BaseException:  # cancelled (or worse) mid-handler: it stays pending
                self._finish(ref.key, [entry_id])
                raise

    async def _handle(self, ref: StreamRef, entry_id: str, event: Event | Exception) -> None:
        """Run the handler; a success goes to the acker, a failure (an entry that does not
        decode included) stays pending for a retry."""
        if isinstance(event, Exception):
            self._failed(ref, entry_id, event)
            return
        try:
            await self._handler(event)
        except Exception as exc:  # the handler's failure: leave it pending for a retry
            self._failed(ref, entry_id, exc)
            return
        self._acks.setdefault(ref.key, []).append(entry_id)
        self._ack_wake.set()

    def _failed(self, ref: StreamRef, entry_id: str, exc: Exception) -> None:
        self._errors[(ref.key, entry_id)] = f"{type(exc).__name__}: {exc}"
        log.warning(
            "event_handler_failed",
            group=self.group,
            stream=ref.name,
            entry=entry_id,
            error=str(exc),
        )
        self._bump("failed")
        self._finish(ref.key, [entry_id])

    def _finish(self, key: str, entry_ids: list[str]) -> None:
        """Entries of stream ``key`` done here: acknowledged, failed, or their ack failed
        (then they stay pending, to be claimed again)."""
        inflight = self._inflight
        for entry_id in entry_ids:
            inflight.discard((key, entry_id))
        self._unfinished -= len(entry_ids)
        if self._unfinished < self._read_ahead:
            self._room.set()
        if self._unfinished == 0:
            self._all_finished.set()

    def _bump(self, counter: str, amount: int = 1) -> None:
        self._counts[counter] += amount
        pulse, self._pulse = self._pulse, asyncio.Event()
        pulse.set()

    # --- acknowledging --------------------------------------------------------------------
    async def _acker(self) -> None:
        """Acknowledge what the handlers finished since the last round: one ``event_ack``
        call per stream and chunk of ``batch`` entries, the calls of a keyspace pipelined in
        one round trip (a group commit: under load one round acks many entries, idle it
        acks one at once). A failed call leaves its entries pending, to be claimed again."""
        while True:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            pending, self._acks = self._acks, {}
            rounds: dict[str, list[tuple[str, list[str]]]] = {}
            for key, ids in pending.items():
                for i in range(0, len(ids), self._batch):
                    ks_name = self._refs[key].ks.name
                    rounds.setdefault(ks_name, []).append((key, ids[i : i + self._batch]))
            for chunks in rounds.values():
                await self._ack_round(chunks)

    async def _ack_round(self, chunks: list[tuple[str, list[str]]]) -> None:
        ks = self._refs[chunks[0][0]].ks
        calls: list[tuple[list[str], list[Arg]]] = [
            (
                [key, *(self._done_prefix[key] + entry_id for entry_id in ids)],
                [self.group, self._done_ttl_ms, *ids],
            )
            for key, ids in chunks
        ]
        try:
            replies: list[Any] = await ks.run_script_many(
                "event_ack", calls, raise_on_error=False, idempotent=True
            )
        except ZenError as exc:
            replies = [exc] * len(chunks)
        handled = 0
        for (key, ids), reply in zip(chunks, replies, strict=True):
            if isinstance(reply, ZenError):  # Redis trouble: they stay pending, reclaimed
                log.warning("consumer_ack_failed", entries=len(ids), entry=ids[0], error=str(reply))
            else:
                handled += len(ids)
                if self._errors:  # an earlier failure of one of them is resolved
                    for entry_id in ids:
                        self._errors.pop((key, entry_id), None)
            self._finish(key, ids)
        if handled:
            self._bump("handled", handled)

    # --- claiming -------------------------------------------------------------------------
    async def _claimer(self) -> None:
        while not self._stopping.is_set():
            await self._pause(self._claim_interval)
            if self._stopping.is_set():
                return
            for ref in self._refs.values():
                try:
                    await self._touch(ref)
                    await self._claim(ref)
                except ZenError as exc:
                    log.warning("consumer_claim_failed", stream=ref.name, error=str(exc))

    async def _touch(self, ref: StreamRef) -> None:
        """Keep the entries being handled (or queued) here from looking abandoned: without
        this, XAUTOCLAIM would hand a long handler's entry to another member, or back to this
        one, counting a delivery each time, so that one failure could dead-letter it."""
        ids = [entry_id for key, entry_id in self._inflight if key == ref.key]
        for i in range(0, len(ids), self._batch):
            await ref.ks.run_script(
                "event_touch", [ref.key], [self.group, self.name, *ids[i : i + self._batch]]
            )

    async def _claim(self, ref: StreamRef) -> None:
        cursor = "0-0"
        while True:
            reply = await ref.ks.execute(
                "XAUTOCLAIM",
                ref.key,
                self.group,
                self.name,
                self._min_idle_ms,
                cursor,
                "COUNT",
                self._batch,
            )
            cursor = _text(reply[0])
            claimed = [
                (ref, _text(e[0]), e[1])
                for e in reply[1]
                if e[1] is not None and (ref.key, _text(e[0])) not in self._inflight
            ]
            if claimed:
                await self._dispatch_claimed(ref, claimed)
            if cursor == "0-0":
                return

    async def _dispatch_claimed(self, ref: StreamRef, claimed: list[_Entry]) -> None:
        ids = [entry_id for _, entry_id, _ in claimed]
        rows = await ref.ks.execute(
            "XPENDING",
            ref.key,
            self.group,
            min(ids, key=_id_key),
            max(ids, key=_id_key),
            len(ids) + 100,
            self.name,
        )
        deliveries = {_text(r["message_id"]): int(r["times_delivered"]) for r in rows}
        fresh: list[_Entry] = []
        for item in claimed:
            entry_id = item[1]
            if deliveries.get(entry_id, 0) > self._max_deliveries:
                await self._dead_letter(ref, entry_id, deliveries[entry_id])
            else:
                fresh.append(item)
        self._counts["claimed"] += len(fresh)
        await self._enqueue(fresh)

    async def _dead_letter(self, ref: StreamRef, entry_id: str, deliveries: int) -> None:
        error = self._errors.pop((ref.key, entry_id), "")
        await ref.ks.run_script(
            "event_dead_letter",
            [ref.key, ref.dead_letter_key(self.group)],
            [self.group, entry_id, deliveries, error],
        )
        log.error(
            "event_dead_lettered",
            group=self.group,
            stream=ref.name,
            entry=entry_id,
            deliveries=deliveries,
            error=error,
        )
        self._bump("dead")


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
