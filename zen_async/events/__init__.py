"""Event sourcing on Redis Streams: the event log, consumer groups, and the envelope."""

from zen_async.events.consumer import Consumer, ConsumerStatistics, Handler
from zen_async.events.envelope import AGENT_STREAMS, SCHEMA_VERSION, Event
from zen_async.events.log import EventLog, NewEvent

__all__ = [
    "AGENT_STREAMS",
    "SCHEMA_VERSION",
    "Consumer",
    "ConsumerStatistics",
    "Event",
    "EventLog",
    "Handler",
    "NewEvent",
]
