"""Consumer groups: at-least-once delivery made effectively-once by acknowledging only after
the handler succeeded and remembering what was handled.

A consumer, on start, drains its own pending entries; then reads new ones with blocking reads
kept below the socket timeout; claims entries that other (dead) consumers left idle, with
XAUTOCLAIM; moves an entry delivered too often to a dead-letter stream; and on exit stops
reading, finishes what it read, acknowledges, and returns (or, past an optional drain
timeout, cancels the handlers still running and leaves their entries pending).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog

from zen_async.errors import BackendError, ValidationError, ZenError
from zen_async.events.envelope import Event, decode_entry, validate_stream_name
from zen_async.events.log import EventLog, StreamRef

__all__ = ["Consumer", "ConsumerStatistics", "Handler"]

log = structlog.get_logger(__name__)

Handler = Callable[[Event], Awaitable[None]]
"""``async def handler(event: Event) -> None``; raising leaves the event pending for retry."""

_ERROR_BACKOFF: Final = 0.5


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
        self._queue: asyncio.Queue[tuple[StreamRef, str, dict[Any, Any]]] = asyncio.Queue(
            maxsize=concurrency * 2
        )
        self._inflight: set[tuple[str, str]] = set()
        # Acks wait here, per stream, for the acker's next round trip (a group commit).
        self._acks: dict[str, list[tuple[str, asyncio.Future[None]]]] = {}
        self._ack_wake = asyncio.Event()
        self._errors: dict[tuple[str, str], str] = {}
        self._stopping = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._progress = asyncio.Condition()
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
        async with asyncio.timeout(timeout), self._progress:
            await self._progress.wait_for(
                lambda: (
                    self._counts["handled"] + self._counts["duplicates"] + self._counts["dead"]
                    >= count
                )
            )

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
            await self._queue.join()  # finish and acknowledge everything already read
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
    ) -> list[tuple[StreamRef, str, dict[Any, Any]]]:
        args: list[Any] = ["XREADGROUP", "GROUP", self.group, self.name, "COUNT", self._batch]
        if block:
            args += ["BLOCK", self._block_ms]
        args += ["STREAMS", *(r.key for r in refs), *([after] * len(refs))]
        reply = await ks.execute(*args)
        return self._entries(reply)

    def _entries(self, reply: Any) -> list[tuple[StreamRef, str, dict[Any, Any]]]:
        if not reply:
            return []
        pairs = reply.items() if isinstance(reply, dict) else reply
        out: list[tuple[StreamRef, str, dict[Any, Any]]] = []
        for stream_key, entries in pairs:
            ref = self._refs[_text(stream_key)]
            for entry in entries:
                entry_id, fields = entry[0], entry[1]
                if fields is not None:  # None: deleted while pending
                    out.append((ref, _text(entry_id), fields))
        return out

    async def _enqueue(self, entries: list[tuple[StreamRef, str, dict[Any, Any]]]) -> None:
        fresh = [e for e in entries if (e[0].key, e[1]) not in self._inflight]
        if not fresh:
            return
        try:
            fresh = await self._not_yet_handled(fresh)
        except ZenError as exc:  # they stay pending here: claimed back after min_idle
            log.warning("consumer_marker_check_failed", group=self.group, error=str(exc))
            return
        for ref, entry_id, fields in fresh:
            self._inflight.add((ref.key, entry_id))
            await self._queue.put((ref, entry_id, fields))

    async def _not_yet_handled(
        self, entries: list[tuple[StreamRef, str, dict[Any, Any]]]
    ) -> list[tuple[StreamRef, str, dict[Any, Any]]]:
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
            await self._bump("duplicates", len(ids))
        return left

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # --- handling -------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            ref, entry_id, fields = await self._queue.get()
            try:
                await self._handle(ref, entry_id, fields)
            except ZenError as exc:  # Redis trouble while acking: stays pending, reclaimed
                log.warning("consumer_ack_failed", entry=entry_id, error=str(exc))
            finally:
                self._inflight.discard((ref.key, entry_id))
                self._queue.task_done()

    async def _handle(self, ref: StreamRef, entry_id: str, fields: dict[Any, Any]) -> None:
        try:
            event = decode_entry(ref.name, entry_id, fields)
            await self._handler(event)
        except Exception as exc:  # the handler's failure: leave it pending for a retry
            self._errors[(ref.key, entry_id)] = f"{type(exc).__name__}: {exc}"
            log.warning(
                "event_handler_failed",
                group=self.group,
                stream=ref.name,
                entry=entry_id,
                error=str(exc),
            )
            await self._bump("failed")
            return
        await self._ack(ref, entry_id)
        self._errors.pop((ref.key, entry_id), None)
        await self._bump("handled")

    async def _bump(self, counter: str, amount: int = 1) -> None:
        async with self._progress:
            self._counts[counter] += amount
            self._progress.notify_all()

    # --- acknowledging --------------------------------------------------------------------
    async def _ack(self, ref: StreamRef, entry_id: str) -> None:
        """Mark ``entry_id`` handled and acknowledge it; returns once that is done.

        Raises:
            ZenError: the ack failed (the entry stays pending, to be claimed again).
        """
        done = asyncio.get_running_loop().create_future()
        self._acks.setdefault(ref.key, []).append((entry_id, done))
        self._ack_wake.set()
        await done

    async def _acker(self) -> None:
        """Acknowledge what the handlers finished, a round trip per stream for everything
        that finished meanwhile (a group commit: under load one script acks many entries,
        idle it acks one at once)."""
        while True:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            pending, self._acks = self._acks, {}
            for key, items in pending.items():
                ref = self._refs[key]
                try:
                    for i in range(0, len(items), self._batch):
                        ids = [entry_id for entry_id, _ in items[i : i + self._batch]]
                        done_keys = [self._done_prefix[key] + entry_id for entry_id in ids]
                        await ref.ks.run_script(
                            "event_ack",
                            [ref.key, *done_keys],
                            [self.group, self._done_ttl_ms, *ids],
                        )
                except ZenError as exc:
                    _settle(items, exc)
                except BaseException:  # stopping: their workers are being cancelled too
                    for _, future in items:
                        future.cancel()
                    raise
                else:
                    _settle(items, None)

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

    async def _dispatch_claimed(
        self, ref: StreamRef, claimed: list[tuple[StreamRef, str, dict[Any, Any]]]
    ) -> None:
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
        fresh: list[tuple[StreamRef, str, dict[Any, Any]]] = []
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
        await self._bump("dead")


def _settle(items: list[tuple[str, asyncio.Future[None]]], error: ZenError | None) -> None:
    for _, future in items:
        if future.done():  # its worker was cancelled meanwhile
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
