"""Degraded mode: stale reads, the outage journal and its replay (see :mod:`.mode`)."""

from zen_async.degraded.journal import JournalEntry, OutageJournal
from zen_async.degraded.mode import OFFLINE, DegradedMode, Offline, Replayable

__all__ = ["OFFLINE", "DegradedMode", "JournalEntry", "Offline", "OutageJournal", "Replayable"]
