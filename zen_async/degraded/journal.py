"""The outage journal: writes accepted while Redis was unreachable, in order, until replayed.

It lives in memory and, when a path is configured (``REDIS_OUTAGE_JOURNAL``), also in an
append-only file of JSON lines that is fsync'd before a write is acknowledged, so a process
restarted during an outage still replays what it acknowledged. Two kinds of line::

    {"rec": "op", "op_id": "...", "seq": 7, "kind": "cache.set", "tenant": "default",
     "at": 1764288000.5, "args": {...}}
    {"rec": "done", "op_id": "..."}

On open, every ``op`` without its ``done`` is pending again, in ``seq`` order. Once nothing is
pending the file is truncated. The journal is bounded (``max_ops``): a write beyond the bound
raises :class:`~zen_async.errors.CapacityError` and is not accepted.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
import structlog

from zen_async.errors import BackendError, CapacityError

__all__ = ["JournalEntry", "OutageJournal"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One journaled write."""

    op_id: str
    """Unique across processes and restarts; replays use it as their dedupe key."""
    seq: int
    kind: str
    """``<service>.<operation>``, e.g. ``cache.set`` or ``agents.transition``."""
    tenant: str
    args: dict[str, Any]
    """JSON-safe arguments, enough to apply the write later."""
    at: float
    """Wall-clock time it was accepted (seconds since the epoch)."""

    def line(self) -> bytes:
        return orjson.dumps(
            {
                "rec": "op",
                "op_id": self.op_id,
                "seq": self.seq,
                "kind": self.kind,
                "tenant": self.tenant,
                "at": self.at,
                "args": self.args,
            }
        )


class OutageJournal:
    """Journaled writes, oldest first. Single event loop; file I/O runs on a worker thread.

    Args:
        path: the append-only file, or None for memory only.
        max_ops: how many writes may wait at once.
    """

    def __init__(self, *, path: Path | None, max_ops: int) -> None:
        self.path = path
        self.max_ops = max_ops
        self._pending: OrderedDict[str, JournalEntry] = OrderedDict()
        self._seq = 0
        self._file_lock = anyio.Lock()  # file lines in the order entries were accepted
        self.accepted = 0
        self.replayed = 0

    @classmethod
    async def open(cls, *, path: Path | None, max_ops: int) -> OutageJournal:
        """A journal holding whatever a previous process left pending in ``path``.

        Raises:
            BackendError: the file cannot be read or created.
        """
        journal = cls(path=path, max_ops=max_ops)
        if path is not None:
            try:
                entries = await anyio.to_thread.run_sync(_load, path)
            except (OSError, ValueError) as exc:
                raise BackendError(f"outage journal {path} cannot be read: {exc}") from exc
            for entry in entries:
                journal._pending[entry.op_id] = entry
                journal._seq = max(journal._seq, entry.seq)
            if entries:
                log.warning("outage_journal_recovered", path=str(path), pending=len(entries))
        return journal

    @property
    def depth(self) -> int:
        """Writes waiting to be replayed."""
        return len(self._pending)

    def first(self) -> JournalEntry | None:
        """The oldest pending write."""
        return next(iter(self._pending.values()), None)

    def pending(self) -> list[JournalEntry]:
        """Every pending write, oldest first."""
        return list(self._pending.values())

    async def append(self, kind: str, tenant: str, args: dict[str, Any]) -> JournalEntry:
        """Accept a write; it is in the journal (and on disk, with a path) when this returns.

        Raises:
            CapacityError: the journal holds ``max_ops`` writes; this one was not accepted.
            BackendError: the file could not be written; this one was not accepted.
        """
        if len(self._pending) >= self.max_ops:
            raise CapacityError(
                f"outage journal full: {len(self._pending)} writes are waiting for Redis "
                f"(REDIS_OUTAGE_JOURNAL_MAX_OPS={self.max_ops}); this {kind} was not accepted"
            )
        self._seq += 1
        entry = JournalEntry(uuid.uuid4().hex, self._seq, kind, tenant, args, time.time())
        line = entry.line()  # fails here, before anything is kept, if args are not JSON
        self._pending[entry.op_id] = entry
        if self.path is not None:
            try:
                async with self._file_lock:
                    await anyio.to_thread.run_sync(_append_lines, self.path, [line])
            except OSError as exc:
                self._pending.pop(entry.op_id, None)
                raise BackendError(
                    f"outage journal {self.path}: {exc.strerror or exc}; "
                    f"this {kind} was not accepted"
                ) from exc
        self.accepted += 1
        return entry

    async def mark_done(self, entry: JournalEntry) -> None:
        """Note that ``entry`` has been applied (or resolved); truncate the file once none is
        pending."""
        if self._pending.pop(entry.op_id, None) is None:
            return
        self.replayed += 1
        if self.path is None:
            return
        done = orjson.dumps({"rec": "done", "op_id": entry.op_id})
        async with self._file_lock:
            if self._pending:
                await anyio.to_thread.run_sync(_append_lines, self.path, [done])
            else:
                await anyio.to_thread.run_sync(_truncate, self.path)


def _load(path: Path) -> list[JournalEntry]:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        return []
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        # A torn last line: a crash inside a write, before its fsync, so that write was never
        # acknowledged. Cut it off, or the next line would be appended to it.
        log.warning("outage_journal_torn_line", path=str(path), bytes=len(data) - complete)
        with path.open("r+b") as f:
            f.truncate(complete)
            os.fsync(f.fileno())
    entries: dict[str, JournalEntry] = {}
    for raw in data[:complete].splitlines():
        rec = orjson.loads(raw)
        if rec.get("rec") == "done":
            entries.pop(rec["op_id"], None)
        elif rec.get("rec") == "op":
            entries[rec["op_id"]] = JournalEntry(
                rec["op_id"], rec["seq"], rec["kind"], rec["tenant"], rec["args"], rec["at"]
            )
    return sorted(entries.values(), key=lambda e: e.seq)


def _append_lines(path: Path, lines: list[bytes]) -> None:
    with path.open("ab") as f:
        f.write(b"".join(line + b"\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())


def _truncate(path: Path) -> None:
    with path.open("wb") as f:
        os.fsync(f.fileno())
