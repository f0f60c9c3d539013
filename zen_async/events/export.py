"""The export stream: every event of a tenant, copied once into one stream with a documented,
versioned envelope, for a Kafka Connect Redis source or any other reader.

Export envelope, schema ``zen.export/1`` (stream entry fields, all text):

================  ==========================================================================
``schema``        ``zen.export/1``; a reader rejects a major version it does not know
``event_id``      the id of the event in its source stream; unique within that stream only,
                  so a reader keys events by ``stream`` and ``event_id`` together
``stream``        the source stream (``orders``, ``agents.z3``, ...)
``type``          the event type
``agent``         the agent id, or empty
``event_time``    when the event happened: ISO 8601, UTC, milliseconds
``tenant``        the tenant namespace
``payload``       the event's data, JSON
``time``          when it was exported: server milliseconds since the epoch
================  ==========================================================================

The exporter is a consumer group (``zen-export``) over every agent shard stream and every
named stream of the tenant, so it resumes where it stopped, on any instance, and each event
is appended once: its append carries the idempotency key ``<stream>/<event id>``.
"""

from __future__ import annotations

import asyncio
from typing import Final

import orjson
import structlog

from zen_async.events.envelope import AGENT_STREAMS, Event
from zen_async.events.log import EventLog, NewEvent

__all__ = ["EXPORT_SCHEMA", "EventExporter"]

log = structlog.get_logger(__name__)

EXPORT_SCHEMA: Final = "zen.export/1"
EXPORT_GROUP: Final = "zen-export"


class EventExporter:
    """Copies every event of the tenant into :data:`EXPORT_STREAM`.

    Args:
        events: the tenant's event log.
        refresh: seconds between looks for new named streams.
        concurrency: events exported at once.
    """

    def __init__(self, events: EventLog, *, refresh: float = 30.0, concurrency: int = 16) -> None:
        self._events = events
        self._refresh = refresh
        self._concurrency = concurrency

    async def _export(self, event: Event) -> None:
        envelope = {
            "schema": EXPORT_SCHEMA,
            "event_id": event.id,
            "stream": event.stream,
            "type": event.type,
            "agent": event.agent_id or "",
            "event_time": event.time.isoformat(timespec="milliseconds"),
            "tenant": self._events.tenant,
            "payload": orjson.dumps(event.data).decode(),
        }
        await self._events.append_export(envelope, idempotency_key=f"{event.stream}/{event.id}")

    async def run(self) -> None:
        """Export until cancelled, picking up new named streams every ``refresh`` seconds."""
        while True:
            sources = [AGENT_STREAMS, *await self._events.named_streams()]
            consumer = self._events.consumer(
                EXPORT_GROUP,
                sources,
                self._export,
                start_id="0",
                concurrency=self._concurrency,
                name="exporter",
            )
            async with consumer:
                # A periodic look for new sources, not a wait for a condition: a new stream
                # has no event to wake us by.
                while sorted(await self._events.named_streams()) == sorted(sources[1:]):  # noqa: ASYNC110
                    await asyncio.sleep(self._refresh)
            log.info("export_sources_changed", streams=len(sources))


def decode_export(fields: dict[str, str]) -> NewEvent:
    """Read an export entry back as the event it copies (for readers written in Python).

    Raises:
        ValueError: an unknown schema major version.
    """
    schema = fields.get("schema", "")
    if not schema.startswith("zen.export/1"):
        raise ValueError(f"unknown export schema {schema!r}: this reader knows zen.export/1")
    return NewEvent(
        type=fields["type"],
        data=orjson.loads(fields["payload"]),
        agent_id=fields.get("agent") or None,
        idempotency_key=f"{fields['stream']}/{fields['event_id']}",
    )
