"""The event log on Redis Streams: publish (at most once per idempotency key), agent events
with a per-agent audit trail and a pub/sub hint, replay, and trimming that never drops an
entry a consumer group still needs.

Data protection: the ``data`` of every event published here (by a caller or by another
service) has its sensitive fields (``REDIS_REDACT_FIELDS``, see :mod:`zen_async.redact`)
replaced by ``"[redacted]"`` before it is written or journaled. Internal events therefore
avoid those names for data they need back (the port allocator's ``fencing_token``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import structlog

from zen_async.codec import check_size, refuse_non_finite
from zen_async.degraded import JournalEntry
from zen_async.errors import BackendError, ValidationError, ZenError
from zen_async.events.envelope import (
    AGENT_STREAMS,
    Event,
    agent_shard,
    decode_entry,
    encode_fields,
    parse_shard_stream,
    shard_stream_name,
    shard_tag,
    validate_agent_id,
    validate_stream_name,
)
from zen_async.ops import new_op_id
from zen_async.redact import Redactor
from zen_async.store import Keyspace, RedisManager

if TYPE_CHECKING:
    from zen_async.events.consumer import Consumer, Handler

__all__ = ["EXPORT_STREAM", "EventLog", "NewEvent"]

log = structlog.get_logger(__name__)

_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:/@=+-]{1,200}$")
_MAX_SEQ: Final = 2**64 - 1
_TRIM_INSPECT: Final = 10_000
EXPORT_STREAM: Final = "zen.export"
"""The export stream's name (see ``zen_async.events.export``); ``zen.*`` names are reserved."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """One event to publish with :meth:`EventLog.publish_many`."""

    type: str
    data: Any
    agent_id: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class StreamRef:
    """Where a logical stream lives: its keyspace and hash tag. Internal."""

    name: str
    ks: Keyspace
    tag: str
    log_part: str
    key: str = dataclasses.field(init=False, compare=False)
    """The stream's full key name."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.ks.key(self.tag, self.log_part))

    def idempotency_key(self, key: str) -> str:
        return self.ks.key(self.tag, "idem", key)

    def done_key(self, group: str, entry_id: str) -> str:
        return self.ks.key(self.tag, "done", group, entry_id)

    def dead_letter_key(self, group: str) -> str:
        return self.ks.key(self.tag, "dead", group)

    def audit_key(self, agent_id: str) -> str:
        return self.ks.key(self.tag, "audit", agent_id)


class EventLog:
    """``zen.events``: the event log of one tenant.

    Args:
        redis: the core.
        tenant: the tenant (default: the configured namespace).
        max_len: length bound applied by :meth:`trim` (0: none).
        max_age: age bound in seconds applied by :meth:`trim` (None: none).
        audit_max_len: approximate length bound of each agent's audit stream (``MAXLEN ~``
            on every append: older audit events are dropped).
        dead_letter_max_len: length bound applied by :meth:`trim_dead_letters` (0: none).
        dead_letter_max_age: age bound in seconds applied by :meth:`trim_dead_letters`
            (None: none).
        idempotency_ttl: seconds an idempotency key is remembered.
        trim_interval: seconds between passes of :meth:`trim_all` in :meth:`run`.
    """

    def __init__(
        self,
        redis: RedisManager,
        *,
        tenant: str | None = None,
        max_len: int = 100_000,
        max_age: float | None = None,
        audit_max_len: int = 10_000,
        dead_letter_max_len: int = 10_000,
        dead_letter_max_age: float | None = None,
        idempotency_ttl: float = 24 * 3600,
        trim_interval: float = 60.0,
    ) -> None:
        self.redis = redis
        self._streams = redis.keyspace("streams", tenant=tenant)
        self._state = redis.keyspace("state", tenant=tenant)
        self.shards = redis.settings.redis_agent_shards
        self.max_len = max_len
        self.max_age = max_age
        self.audit_max_len = audit_max_len
        self.dead_letter_max_len = dead_letter_max_len
        self.dead_letter_max_age = dead_letter_max_age
        self._idem_ttl_ms = int(idempotency_ttl * 1000)
        self._trim_interval = trim_interval
        self._redactor = Redactor.from_settings(redis.settings)
        self._max_data = redis.settings.redis_max_value_bytes
        # Named streams this process wrote; with the index, what trim_all() covers (the
        # export stream is in no index: it is not a source of the exporter).
        self._published: set[str] = set()

    @property
    def tenant(self) -> str:
        """The tenant this log is bound to."""
        return self._streams.tenant

    @property
    def _index_key(self) -> str:
        return self._streams.key("streams-index")

    async def named_streams(self) -> list[str]:
        """Every named stream published to in this tenant, from an index (never SCAN)."""
        names = await self._streams.execute("SMEMBERS", self._index_key)
        return sorted(_text(n) for n in names)

    async def _note_stream(self, ref: StreamRef) -> None:
        if ref.name not in self._published:
            await self._streams.execute("SADD", self._index_key, ref.name, idempotent=True)
            self._published.add(ref.name)

    # --- naming -------------------------------------------------------------------------
    @property
    def agent_channel(self) -> str:
        """The pub/sub channel that carries a hint for every agent event."""
        return self._streams.key("ch", "agent-events")

    def stream(self, name: str) -> StreamRef:
        """Resolve a logical stream name (``orders``, ``agents.z3``).

        Raises:
            ValidationError: an invalid name or a shard number out of range.
        """
        shard = parse_shard_stream(name)
        if shard is not None:
            if shard >= self.shards:
                raise ValidationError(
                    f"stream {name!r} names shard {shard}; shards are 0-{self.shards - 1}"
                )
            return StreamRef(name, self._state, shard_tag(shard), "events")
        validate_stream_name(name)
        if name.startswith(("agents.", "zen.")):
            raise ValidationError(
                f"stream {name!r} is reserved: agents.z<n> names agent shards, zen.* internal"
            )
        return self._named(name)

    def _named(self, name: str) -> StreamRef:
        return StreamRef(name, self._streams, f"{{s:{name}}}", "log")

    async def was_published(
        self, idempotency_key: str, *, agent_id: str | None = None, stream: str | None = None
    ) -> bool:
        """Whether an event was published under ``idempotency_key`` (to the agent's shard
        stream with ``agent_id``, else to ``stream``) within the idempotency window."""
        ref = self.agent_stream(validate_agent_id(agent_id)) if agent_id else None
        if ref is None:
            if stream is None:
                raise ValidationError("was_published() needs an agent_id or a stream")
            ref = self.stream(stream)
        key = ref.idempotency_key(idempotency_key)
        return bool(await ref.ks.execute("EXISTS", key))

    def agent_stream(self, agent_id: str) -> StreamRef:
        """The shard stream an agent's events go to."""
        return self.stream(shard_stream_name(agent_shard(agent_id, self.shards)))

    def expand(self, names: Sequence[str]) -> list[StreamRef]:
        """Resolve names, expanding ``@agents`` to every shard stream."""
        refs: list[StreamRef] = []
        for name in names:
            if name == AGENT_STREAMS:
                refs.extend(self.stream(shard_stream_name(i)) for i in range(self.shards))
            else:
                refs.append(self.stream(name))
        return refs

    # --- publishing ---------------------------------------------------------------------
    async def publish(
        self,
        stream: str,
        event_type: str,
        data: Any,
        *,
        agent_id: str | None = None,
        idempotency_key: str | None = None,
        op_id: str | None = None,
    ) -> str:
        """Append an event to a named stream; returns its id.

        Appended at most once per ``idempotency_key`` (default: ``op/<op_id>``, the op id
        given or a new one): a retried publish returns the id of the first append. While
        Redis is unreachable the publish is journaled and appended on recovery, exactly once;
        the id returned is then ``journal:<op id>``.
        Sensitive fields of ``data`` (``REDIS_REDACT_FIELDS``) are stored as ``"[redacted]"``.

        Raises:
            ValidationError: a bad name, type, agent id, key, or data that is not JSON (NaN
                and infinity included) or takes more than REDIS_MAX_VALUE_BYTES as JSON.
            CapacityError: Redis is unreachable and the outage journal is full.
        """
        op_id = new_op_id(op_id)
        key = f"op/{op_id}" if idempotency_key is None else idempotency_key
        return await self._publish(stream, NewEvent(event_type, data, agent_id, key), op_id=op_id)

    async def _publish(
        self, stream: str, event: NewEvent, *, settled: bool = False, op_id: str | None = None
    ) -> str:
        ref = self.stream(stream)
        event = self._protect(event)
        self._publish_call(ref, event, audit=False, hint=False)  # validates before journaling
        return await self._journaled(
            "events.publish",
            stream,
            event,
            lambda: self._append(ref, event),
            settled=settled,
            op_id=op_id,
        )

    async def _append(self, ref: StreamRef, event: NewEvent) -> str:
        keys, args = self._publish_call(ref, event, audit=False, hint=False)
        entry_id = await ref.ks.run_script(
            "event_publish", keys, args, idempotent=event.idempotency_key is not None
        )
        await self._note_stream(ref)
        return _text(entry_id)

    async def _journaled(
        self,
        kind: str,
        stream: str,
        event: NewEvent,
        apply: Callable[[], Awaitable[str]],
        *,
        settled: bool = False,
        op_id: str | None = None,
    ) -> str:
        """``apply()``, or journal the event when Redis is unreachable (the circuit is open);
        ``settled`` (the event of a change already made) journals it on any retryable failure
        too, rather than raise and lose it."""
        args = {
            "stream": stream,
            "type": event.type,
            "data": event.data,
            "agent_id": event.agent_id,
            "idempotency_key": event.idempotency_key,
        }
        degraded = self.redis.degraded

        def offline(entry: JournalEntry) -> str:
            return f"journal:{entry.op_id}"

        try:
            return await degraded.write(kind, self.tenant, args, apply, offline, op_id=op_id)
        except BackendError as exc:
            if not (settled and exc.retryable and degraded.journal_writes):
                raise
            log.warning("event_journaled_after_failure", kind=kind, stream=stream, error=str(exc))
            return offline(await degraded.accept(kind, self.tenant, args, op_id=op_id))

    async def record(
        self,
        event_type: str,
        data: Any,
        *,
        key: str,
        agent_id: str | None = None,
        stream: str | None = None,
    ) -> str:
        """Record the event of a change already made in a step of its own: a port lease
        (its host's slot) or a memory forget or merge (the memory keyspace) cannot share a
        script with the agent's audit trail. ``key`` names the change uniquely (any string;
        its hash is the idempotency key). Appended at most once per ``key`` (so it is
        retried on a retryable failure), and when Redis still cannot be reached it is
        journaled and appended on recovery rather than raised and lost. With ``agent_id`` it
        goes to the agent's shard stream and audit trail (as :meth:`publish_agent_event`),
        else to ``stream``. Returns the event id, or ``journal:<op id>``.

        What is left: a process that dies between the change and this call loses the event
        (the window of one call); with REDIS_OUTAGE_JOURNAL set, a journaled one survives.

        Raises:
            ValidationError: a bad agent id, stream, type, key or data.
            CapacityError: the outage journal is full.
            BackendError: a non-retryable refusal, or the journal is off (replicated
                durability) and Redis cannot be reached.
        """
        idempotency_key = "change/" + hashlib.sha256(key.encode()).hexdigest()[:40]
        if agent_id is not None:
            event = NewEvent(event_type, data, agent_id, idempotency_key)
            return await self._publish_agent(agent_id, event, settled=True)
        if stream is None:
            raise ValidationError("record() needs an agent_id or a stream")
        event = NewEvent(event_type, data, None, idempotency_key)
        return await self._publish(stream, event, settled=True)

    async def replay_journaled(self, entry: JournalEntry) -> None:
        """Append a journaled event, exactly once: its idempotency key is the caller's, or
        one made of the op id."""
        a = entry.args
        event = self._protect(NewEvent(a["type"], a["data"], a["agent_id"], a["idempotency_key"]))
        if event.idempotency_key is None:
            event = dataclasses.replace(event, idempotency_key=f"journal/{entry.op_id}")
        if entry.kind == "events.publish_agent_event":
            await self._append_agent_event(a["agent_id"], event)
        else:
            await self._append(self.stream(a["stream"]), event)

    async def publish_many(self, stream: str, events: Sequence[NewEvent]) -> list[str]:
        """Append many events to a named stream, pipelined in batches; each is at most once
        per idempotency key. Returns their ids in order.

        Raises:
            ValidationError: any bad event (nothing is appended then).
        """
        ref = self.stream(stream)
        calls = [self._publish_call(ref, self._protect(e), audit=False, hint=False) for e in events]
        ids = await ref.ks.run_script_many("event_publish", calls)
        await self._note_stream(ref)
        return [_text(i) for i in ids]

    async def append_export(self, envelope: dict[str, str], *, idempotency_key: str) -> str:
        """Append one export envelope to :data:`EXPORT_STREAM`, at most once per key."""
        ref = self._named(EXPORT_STREAM)
        keys = [ref.key, ref.idempotency_key(idempotency_key), ref.key]
        fields = [part for item in envelope.items() for part in item]
        args: list[str | bytes] = [str(self._idem_ttl_ms), "0", "", ref.name, *fields]
        entry_id = await ref.ks.run_script("event_publish", keys, args, idempotent=True)
        self._published.add(ref.name)  # trimmed by run(); not a source of the exporter
        return _text(entry_id)

    async def read_export(self, *, after: str = "-", count: int = 1000) -> list[dict[str, str]]:
        """Export entries as text fields (with ``export_id``), oldest first."""
        ref = self._named(EXPORT_STREAM)
        page = await ref.ks.execute("XRANGE", ref.key, after, "+", "COUNT", count)
        return [
            {"export_id": _text(i), **{_text(k): _text(v) for k, v in f.items()}} for i, f in page
        ]

    async def publish_agent_event(
        self,
        agent_id: str,
        event_type: str,
        data: Any,
        *,
        idempotency_key: str | None = None,
        op_id: str | None = None,
    ) -> str:
        """Append an event to the agent's shard stream and to its audit trail, and send a
        hint on :attr:`agent_channel`, in one atomic step; at most once per idempotency key
        (default ``op/<op_id>``, as :meth:`publish`). Returns the event id (while Redis is
        unreachable: journaled as :meth:`publish` is, and ``journal:<op id>``).

        Raises:
            ValidationError: a bad agent id, type, key, or data that is not JSON (NaN and
                infinity included) or takes more than REDIS_MAX_VALUE_BYTES as JSON.
            CapacityError: Redis is unreachable and the outage journal is full.
        """
        op_id = new_op_id(op_id)
        key = f"op/{op_id}" if idempotency_key is None else idempotency_key
        return await self._publish_agent(
            agent_id, NewEvent(event_type, data, agent_id, key), op_id=op_id
        )

    async def _publish_agent(
        self, agent_id: str, event: NewEvent, *, settled: bool = False, op_id: str | None = None
    ) -> str:
        ref = self.agent_stream(validate_agent_id(agent_id))
        event = self._protect(event)
        self._publish_call(ref, event, audit=True, hint=True)  # validates before journaling
        return await self._journaled(
            "events.publish_agent_event",
            ref.name,
            event,
            lambda: self._append_agent_event(agent_id, event),
            settled=settled,
            op_id=op_id,
        )

    async def _append_agent_event(self, agent_id: str, event: NewEvent) -> str:
        ref = self.agent_stream(agent_id)
        keys, args = self._publish_call(ref, event, audit=True, hint=True)
        entry_id = await ref.ks.run_script(
            "event_publish", keys, args, idempotent=event.idempotency_key is not None
        )
        return _text(entry_id)

    def _protect(self, event: NewEvent) -> NewEvent:
        """``event`` with its data's sensitive fields redacted (itself when none match)."""
        data = self._redactor.redact(event.data, what="event data")
        return event if data is event.data else dataclasses.replace(event, data=data)

    def _publish_call(
        self, ref: StreamRef, event: NewEvent, *, audit: bool, hint: bool
    ) -> tuple[list[str], list[str | bytes]]:
        _check_type(event.type)
        if event.agent_id is not None:
            validate_agent_id(event.agent_id)
        key = event.idempotency_key
        if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
            raise ValidationError(
                f"idempotency key {key!r} is invalid: use 1-200 characters from "
                "A-Z a-z 0-9 _ . : / @ = + -"
            )
        fields = encode_fields(event.type, event.data, agent_id=event.agent_id, idempotency_key=key)
        data = dict(zip(fields[0::2], fields[1::2], strict=True))["data"]
        payload = data if isinstance(data, bytes) else data.encode()
        check_size(len(payload), self._max_data, "event data")
        refuse_non_finite(event.data, payload, "event data")
        audit_key = ref.audit_key(event.agent_id) if audit and event.agent_id else ref.key
        keys = [ref.key, ref.idempotency_key(key or "-"), audit_key]
        args: list[str | bytes] = [
            str(self._idem_ttl_ms) if key else "0",
            str(self.audit_max_len) if audit and event.agent_id else "0",
            self.agent_channel if hint else "",
            ref.name,
            *fields,
        ]
        return keys, args

    # --- reading ------------------------------------------------------------------------
    async def replay(
        self,
        stream: str | None = None,
        *,
        agent_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        from_id: str | None = None,
        page_size: int = 500,
    ) -> AsyncIterator[Event]:
        """Events in order, as an async iterator.

        Args:
            stream: a logical stream; when omitted, ``agent_id`` selects that agent's audit
                trail (every event published about it, in order).
            agent_id: only this agent's events.
            since: from this time (inclusive).
            until: up to this time (inclusive).
            from_id: strictly after this event id.
            page_size: entries fetched per round trip.

        Raises:
            ValidationError: neither stream nor agent_id, or a bad id.
        """
        if stream is None:
            if agent_id is None:
                raise ValidationError("replay() needs a stream, an agent_id, or both")
            ref = self.agent_stream(validate_agent_id(agent_id))
            key, name, wanted = ref.audit_key(agent_id), f"audit:{agent_id}", None
        else:
            ref = self.stream(stream)
            key, name, wanted = ref.key, ref.name, agent_id
        start = _range_start(since, from_id)
        end = "+" if until is None else f"{_epoch_ms(until)}-{_MAX_SEQ}"
        while True:
            page = await ref.ks.execute("XRANGE", key, start, end, "COUNT", page_size)
            for entry_id, fields in page:
                event = decode_entry(name, entry_id, fields)
                if wanted is None or event.agent_id == wanted:
                    yield event
            if len(page) < page_size:
                return
            start = "(" + _text(page[-1][0])

    async def audit_trail(self, agent_id: str, *, limit: int = 1000) -> list[Event]:
        """The agent's audit trail, oldest first (at most ``limit`` events, 1 to 1,000,000).

        Raises:
            ValidationError: a bad agent id or limit.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1_000_000:
            raise ValidationError(f"limit {limit!r} is out of range: use 1 to 1000000")
        events: list[Event] = []
        async for event in self.replay(agent_id=agent_id):
            events.append(event)
            if len(events) >= limit:
                break
        return events

    async def dead_letters(self, stream: str, group: str, *, limit: int = 1000) -> list[Event]:
        """Entries that ``group`` gave up on in ``stream``, oldest first. Each keeps its
        original fields; ``data`` is the original payload."""
        ref = self.stream(stream)
        validate_stream_name(group)
        page = await ref.ks.execute("XRANGE", ref.dead_letter_key(group), "-", "+", "COUNT", limit)
        return [decode_entry(f"{ref.name}:dead:{group}", i, f) for i, f in page]

    async def length(self, stream: str) -> int:
        """Entries currently in a stream."""
        ref = self.stream(stream)
        count: int = await ref.ks.execute("XLEN", ref.key)
        return count

    # --- trimming -----------------------------------------------------------------------
    async def trim(self, stream: str, *, max_len: int | None = None) -> int:
        """Apply the length and age bounds to a stream, never removing an entry that a
        consumer group has pending or has not been delivered yet. Returns entries removed.
        """
        ref = self._trimmable(stream)
        bound = self.max_len if max_len is None else max_len
        return await self._trim_key(ref, ref.key, bound, self.max_age)

    async def trim_dead_letters(self, stream: str, *, max_len: int | None = None) -> int:
        """Apply ``dead_letter_max_len`` and ``dead_letter_max_age`` to the dead-letter
        stream of every consumer group of ``stream``. A group attached to a dead-letter
        stream is respected as in :meth:`trim`: nothing it has pending or not yet been
        delivered is removed. Returns entries removed.
        """
        ref = self._trimmable(stream)
        if not await ref.ks.execute("EXISTS", ref.key):
            return 0
        groups = await ref.ks.execute("XINFO", "GROUPS", ref.key)
        bound = self.dead_letter_max_len if max_len is None else max_len
        removed = 0
        for group in groups:
            name = group.get(b"name", group.get("name"))  # bytes keys from redis-py
            key = ref.dead_letter_key(_text(name))
            removed += await self._trim_key(ref, key, bound, self.dead_letter_max_age)
        return removed

    async def trim_all(self) -> int:
        """One trimming pass, as :meth:`run` makes every ``trim_interval``: :meth:`trim` and
        :meth:`trim_dead_letters` on every agent shard stream, every named stream of the
        tenant (from its index, so streams other instances wrote are covered too) and the
        export stream when this process wrote it. A stream that fails is logged and skipped.
        Returns entries removed.
        """
        names = {shard_stream_name(i) for i in range(self.shards)} | self._published
        try:
            names.update(await self.named_streams())
        except ZenError as exc:
            log.warning("stream_index_read_failed", error=str(exc))
        removed = 0
        for name in sorted(names):
            try:
                removed += await self.trim(name)
                removed += await self.trim_dead_letters(name)
            except ZenError as exc:
                log.warning("stream_trim_failed", stream=name, error=str(exc))
        return removed

    async def run(self) -> None:
        """Call :meth:`trim_all` every ``trim_interval`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self._trim_interval)
            await self.trim_all()

    def _trimmable(self, stream: str) -> StreamRef:
        return self._named(stream) if stream == EXPORT_STREAM else self.stream(stream)

    async def _trim_key(self, ref: StreamRef, key: str, max_len: int, max_age: float | None) -> int:
        """``stream_trim`` on ``key`` (``ref``'s stream or one sharing its hash tag)."""
        min_id = ""
        if max_age is not None:
            now = await ref.ks.execute("TIME")
            now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
            min_id = f"{now_ms - int(max_age * 1000)}-0"
        removed: int = await ref.ks.run_script(
            "stream_trim", [key], [max_len, min_id, _TRIM_INSPECT]
        )
        return removed

    # --- consumers ----------------------------------------------------------------------
    def consumer(
        self,
        group: str,
        streams: Sequence[str],
        handler: Handler,
        **options: Any,
    ) -> Consumer:
        """A consumer group member; use as ``async with events.consumer(...)``.

        See :class:`~zen_async.events.consumer.Consumer` for the options.
        """
        from zen_async.events.consumer import Consumer  # noqa: PLC0415 - mutual reference

        return Consumer(self, group, self.expand(streams), handler, **options)


def _check_type(event_type: str) -> None:
    if not isinstance(event_type, str) or not validate_type(event_type):
        raise ValidationError(
            f"event type {event_type!r} is invalid: use 1-64 characters from a-z 0-9 _ . -"
        )


def validate_type(event_type: str) -> bool:
    """Whether ``event_type`` is a valid event type name."""
    return re.fullmatch(r"[a-z0-9_.-]{1,64}", event_type) is not None


def _range_start(since: datetime | None, from_id: str | None) -> str:
    if from_id is not None:
        if not re.fullmatch(r"\d{1,20}-\d{1,20}", from_id):
            raise ValidationError(f"event id {from_id!r} is invalid: expected '<ms>-<seq>'")
        start = "(" + from_id
        if since is not None:
            since_id = f"{_epoch_ms(since)}-0"
            if _id_key(since_id) > _id_key(from_id):
                return since_id
        return start
    if since is not None:
        return f"{_epoch_ms(since)}-0"
    return "-"


def _epoch_ms(moment: datetime) -> int:
    """``moment`` as milliseconds since the epoch, 0 for anything earlier (no stream entry
    is older; a negative id is not a valid stream id)."""
    return max(0, int(moment.timestamp() * 1000))


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
