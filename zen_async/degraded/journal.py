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

One owner per file. :meth:`OutageJournal.open` takes an exclusive, non-blocking ``flock`` on
the sibling ``<path>.lock`` (which holds the owner's pid) and keeps it until
:meth:`OutageJournal.aclose`: a second journal on the same path, in another process or in
this one, is refused with :class:`~zen_async.errors.ConfigError` naming the pid that holds it,
so no owner ever truncates lines another one acknowledged. The kernel releases the lock of a
process that dies, however it dies; the next process to open the path adopts the file and
replays everything still pending in it. The lock lives beside the file rather than on it so
that it can carry the owner's pid without touching the journal's lines. The file and the lock
are private to the owner's user (mode 0600; a wider existing file is narrowed on open): the
journal holds cache values and conversation turns in clear.

::

    <path>        the journal (JSON lines, 0600)
    <path>.lock   the owner's flock and pid (0600); left in place on close, never deleted,
                  so that every process locks the same inode
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
import structlog

from zen_async.errors import BackendError, CapacityError, ConfigError, ConfigProblem

__all__ = ["JournalEntry", "OutageJournal"]

log = structlog.get_logger(__name__)

_PRIVATE = 0o600


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


@dataclass(frozen=True, slots=True)
class _Owned:
    """The open, locked file of a journal: descriptors kept for the journal's whole life."""

    lock_fd: int
    data_fd: int
    """Opened with O_APPEND: every line lands at the end, also after a truncation."""


class OutageJournal:
    """Journaled writes, oldest first. Single event loop; file I/O runs on a worker thread.

    Open it with :meth:`open` and close it with :meth:`aclose`, which releases the file to
    the next process.

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
        self._owned: _Owned | None = None
        self._closed = False
        self.accepted = 0
        self.replayed = 0

    @classmethod
    async def open(cls, *, path: Path | None, max_ops: int) -> OutageJournal:
        """A journal holding whatever a previous process left pending in ``path``, owned by
        this one until :meth:`aclose`.

        Raises:
            ConfigError: another journal (another process, or another journal in this one)
                holds ``path``; the message names REDIS_OUTAGE_JOURNAL, the path and its pid.
            BackendError: the file cannot be read or created.
        """
        journal = cls(path=path, max_ops=max_ops)
        if path is not None:
            try:
                owned, entries = await anyio.to_thread.run_sync(_acquire, path)
            except (OSError, ValueError) as exc:
                raise BackendError(f"outage journal {path} cannot be read: {exc}") from exc
            journal._owned = owned
            for entry in entries:
                journal._pending[entry.op_id] = entry
                journal._seq = max(journal._seq, entry.seq)
            if entries:
                log.warning("outage_journal_recovered", path=str(path), pending=len(entries))
        return journal

    async def aclose(self) -> None:
        """Release the file (and its lock) to the next process. Pending writes stay in the
        file for it to replay. Idempotent; shielded from cancellation."""
        with anyio.CancelScope(shield=True):
            async with self._file_lock:
                self._closed = True
                owned, self._owned = self._owned, None
                if owned is not None:
                    await anyio.to_thread.run_sync(_release, owned)

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

    def pending_for(
        self, kinds: frozenset[str], tenant: str, arg: str, value: object
    ) -> list[JournalEntry]:
        """The pending writes of ``kinds`` in ``tenant`` whose argument ``arg`` is ``value``
        (one entity's journaled writes), oldest first."""
        return [
            e
            for e in self._pending.values()
            if e.kind in kinds and e.tenant == tenant and e.args.get(arg) == value
        ]

    async def append(
        self, kind: str, tenant: str, args: dict[str, Any], *, op_id: str | None = None
    ) -> JournalEntry:
        """Accept a write under ``op_id`` (default: a new one); it is in the journal (and on
        disk, with a path) when this returns. An op id already pending is not journaled
        again: its entry is returned (a retried write is accepted once).

        Raises:
            CapacityError: the journal holds ``max_ops`` writes; this one was not accepted.
            BackendError: the file could not be written, or the journal is closed; this one
                was not accepted.
        """
        if self._closed:
            raise BackendError(
                f"outage journal {self.path} is closed; this {kind} was not accepted"
            )
        if len(self._pending) >= self.max_ops:
            raise CapacityError(
                f"outage journal full: {len(self._pending)} writes are waiting for Redis "
                f"(REDIS_OUTAGE_JOURNAL_MAX_OPS={self.max_ops}); this {kind} was not accepted"
            )
        if op_id is not None and (already := self._pending.get(op_id)) is not None:
            return already
        self._seq += 1
        entry = JournalEntry(op_id or uuid.uuid4().hex, self._seq, kind, tenant, args, time.time())
        line = entry.line()  # fails here, before anything is kept, if args are not JSON
        self._pending[entry.op_id] = entry
        if self.path is not None:
            try:
                async with self._file_lock:
                    await anyio.to_thread.run_sync(_append_lines, self._fd(), [line])
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
        pending.

        Raises:
            BackendError: the journal is closed.
        """
        if self._closed:
            raise BackendError(f"outage journal {self.path} is closed")
        if self._pending.pop(entry.op_id, None) is None:
            return
        self.replayed += 1
        if self.path is None:
            return
        done = orjson.dumps({"rec": "done", "op_id": entry.op_id})
        async with self._file_lock:
            # This journal owns the file (the lock), so every line in it is its own: with
            # nothing pending here, nothing in the file is pending either.
            if self._pending:
                await anyio.to_thread.run_sync(_append_lines, self._fd(), [done])
            else:
                await anyio.to_thread.run_sync(_truncate, self._fd())

    def _fd(self) -> int:
        if self._owned is None:  # closed meanwhile (aclose waits for the file lock)
            raise OSError(f"outage journal {self.path} is closed")
        return self._owned.data_fd


def _acquire(path: Path) -> tuple[_Owned, list[JournalEntry]]:
    """Lock ``path``'s sibling lock file, open ``path`` and read what is pending in it
    (blocking I/O: run in a thread).

    Raises:
        ConfigError: another owner holds the lock.
        OSError, ValueError: the file cannot be created or read.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = _lock(path)
    try:
        data_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, _PRIVATE)
        try:
            _make_private(data_fd, path)
            entries = _load(data_fd, path)
        except BaseException:
            os.close(data_fd)
            raise
    except BaseException:
        os.close(lock_fd)  # releases the lock
        raise
    return _Owned(lock_fd, data_fd), entries


def _lock(path: Path) -> int:
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _PRIVATE)
    try:
        _make_private(fd, lock_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # The owner writes its pid just after taking the lock: it may not be there yet.
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(
                [
                    ConfigProblem(
                        "REDIS_OUTAGE_JOURNAL",
                        str(path),
                        f"a file no other journal uses (held by pid {owner}, lock "
                        f"{lock_path}); give each process its own REDIS_OUTAGE_JOURNAL",
                    )
                ]
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _make_private(fd: int, path: Path) -> None:
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & 0o077:
        os.fchmod(fd, _PRIVATE)
        log.warning(
            "outage_journal_permissions_narrowed", path=str(path), was=oct(mode), now="0o600"
        )


def _load(fd: int, path: Path) -> list[JournalEntry]:
    chunks: list[bytes] = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    data = b"".join(chunks)
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        # A torn last line: a crash inside a write, before its fsync, so that write was never
        # acknowledged. Cut it off, or the next line would be appended to it.
        log.warning("outage_journal_torn_line", path=str(path), bytes=len(data) - complete)
        os.ftruncate(fd, complete)
        os.fsync(fd)
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


def _append_lines(fd: int, lines: list[bytes]) -> None:
    data = memoryview(b"".join(line + b"\n" for line in lines))
    while data:
        data = data[os.write(fd, data) :]
    os.fsync(fd)


def _truncate(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.fsync(fd)


def _release(owned: _Owned) -> None:
    os.close(owned.data_fd)
    os.ftruncate(owned.lock_fd, 0)  # no stale pid for the next reader
    os.close(owned.lock_fd)  # releases the lock
