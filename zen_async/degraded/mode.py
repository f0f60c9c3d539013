"""Degraded mode: what zen does while Redis is unreachable (see docs/operations.md).

- Reads that fail because the circuit is open answer from a bounded, per-process cache of
  last-known values, marked stale (``stale=True`` on the model, or a ``stale`` flag).
- Writes of the journaled kinds are accepted into the :class:`OutageJournal`, each with an
  operation id, and the caller gets a result that says so (``journaled=<op id>``).
- While anything is journaled the breaker is *held*: every other call is refused with
  :class:`~zen_async.errors.DegradedError`, so no write overtakes a journaled one. A
  background task replays the journal in order once the server answers; each op is applied
  exactly once (its kind is idempotent, or guarded by its op id as a dedupe key); an op the
  server now refuses (a version conflict, an agent deleted meanwhile) is resolved by the
  server's state and the resolution recorded as an event. Only then is the breaker released.
- What cannot be done safely offline raises DegradedError saying why.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from enum import Enum
from typing import Any, Final, Literal, Protocol, TypeVar

import anyio
import structlog

from zen_async.degraded.journal import JournalEntry, OutageJournal
from zen_async.errors import BackendError, DegradedError, ZenError
from zen_async.store.breaker import CircuitBreaker, bypassing_hold, in_bypass

__all__ = ["OFFLINE", "DegradedMode", "Offline", "Replayable"]

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Offline(Enum):
    """What :meth:`DegradedMode.attempt` returns for a write that must be journaled."""

    OFFLINE = "offline"


OFFLINE: Final = Offline.OFFLINE

_MISSING: Any = object()
_MIN_BACKOFF = 0.05
_MAX_BACKOFF = 5.0


class Replayable(Protocol):
    """A service whose writes can be journaled: it applies one journaled write again."""

    async def replay_journaled(self, entry: JournalEntry) -> None:
        """Apply ``entry`` (exactly once: a second call for one op id changes nothing).

        Raises:
            ZenError: the server refuses the write now (a conflict, a missing entity); the
                journal records the resolution and moves on.
        """


Resolver = Callable[[str, str], Replayable]
"""``(tenant, service)`` → the tenant's service that replays that kind (``cache``, ...)."""
ResolutionHook = Callable[[JournalEntry, ZenError], Awaitable[None]]
"""Records a journaled write the server refused on replay (an event, for the audit trail)."""
ResolvedCheck = Callable[[JournalEntry], Awaitable[bool]]
"""Whether a refusal of a journaled write was already recorded (by an earlier replay)."""


class DegradedMode:
    """The outage journal, the last-known cache and the replayer of one deployment.

    Args:
        breaker: the deployment's circuit breaker.
        journal: the outage journal.
        enabled: False: no journal, no stale reads; an open circuit raises DegradedError.
        last_known_size: how many last-known values are kept for stale reads.
        journal_writes: False: stale reads only; writes raise DegradedError while the
            circuit is open (with ``REDIS_DURABILITY=replicated``, where an acknowledged
            write must be on a replica, which a journaled one is not).
    """

    def __init__(
        self,
        breaker: CircuitBreaker,
        journal: OutageJournal,
        *,
        enabled: bool,
        last_known_size: int,
        journal_writes: bool = True,
    ) -> None:
        self.breaker = breaker
        self.journal = journal
        self.enabled = enabled
        self.journal_writes = enabled and journal_writes
        self._last_known: OrderedDict[Hashable, Any] = OrderedDict()
        self._last_known_size = last_known_size
        self._wake = anyio.Event()
        self._since: float | None = None
        self._replaying = False
        self.resolver: Resolver | None = None
        self.on_resolution: ResolutionHook | None = None
        self.resolution_recorded: ResolvedCheck | None = None
        self.resolutions = 0
        self.stale_reads = 0
        if journal.depth:
            self._hold()

    # --- writes -----------------------------------------------------------------------------
    async def write(
        self,
        kind: str,
        tenant: str,
        args: dict[str, Any],
        apply: Callable[[], Awaitable[T]],
        offline: Callable[[JournalEntry], T],
        *,
        op_id: str | None = None,
    ) -> T:
        """Apply a write now, or journal it when the circuit is open (or the journal is not
        yet empty, so that it stays behind the writes already there).

        Args:
            kind: ``<service>.<operation>``; the service's ``replay_journaled`` applies it.
            tenant: the tenant of the service doing the write.
            args: JSON-safe arguments, everything the replay needs.
            apply: performs the write now.
            offline: the caller's result for a journaled write.
            op_id: the write's op id (journaled under it; named by a BackendError).

        Raises:
            DegradedError: degraded mode is disabled and the circuit is open.
            CapacityError: the journal is full; the write was not accepted.
        """
        done = await self.attempt(apply, op_id=op_id)
        if done is not OFFLINE:
            return done
        return offline(await self.accept(kind, tenant, args, op_id=op_id))

    async def attempt(
        self, apply: Callable[[], Awaitable[T]], *, op_id: str | None = None
    ) -> T | Literal[Offline.OFFLINE]:
        r"""``await apply()``, or :data:`OFFLINE` when the write must be journaled instead:
        the journal already holds writes (it stays behind them), or the circuit is open.
        A caller that gets OFFLINE checks what it can offline, then :meth:`accept`\ s it.
        With ``op_id``, a BackendError names it and whether the write may have been applied.

        Raises:
            DegradedError: the circuit is open and writes are not journaled (degraded mode
                off, replicated durability), or this is the replay itself.
        """
        replay = in_bypass()  # the replay's own writes (resolution events) go straight through
        if self.journal_writes and not replay and self.journal.depth > 0:
            return OFFLINE
        try:
            return await apply()
        except DegradedError as exc:
            if not self.journal_writes or replay:
                raise exc if op_id is None or exc.op_id else exc.with_op(op_id) from None
            return OFFLINE
        except BackendError as exc:
            if op_id is None or exc.op_id is not None:
                raise
            raise exc.with_op(op_id) from exc.__cause__

    async def accept(
        self, kind: str, tenant: str, args: dict[str, Any], *, op_id: str | None = None
    ) -> JournalEntry:
        """Journal a write whose caller decided it cannot reach Redis (see :meth:`write`),
        under ``op_id`` (the write's own, which its replay applies it with; default: new).

        Raises:
            CapacityError: the journal is full; the write was not accepted.
        """
        entry = await self.journal.append(kind, tenant, args, op_id=op_id)
        self._hold()
        log.info("write_journaled", kind=kind, op_id=entry.op_id, depth=self.journal.depth)
        return entry

    def _hold(self) -> None:
        if self._since is None:
            self._since = time.monotonic()
        last = self.breaker.last_error
        self.breaker.hold(
            f"Redis was unreachable: {self.journal.depth} journaled writes wait to be "
            "replayed, and nothing may overtake them" + (f"; last error: {last}" if last else "")
        )
        self._wake.set()

    # --- reads ------------------------------------------------------------------------------
    async def read(
        self,
        key: Hashable,
        fetch: Callable[[], Awaitable[T]],
        stale: Callable[[T], T],
    ) -> T:
        """``await fetch()``, remembering its result; when the circuit is open, the last
        value remembered under ``key``, passed through ``stale`` (which marks it stale).

        Raises:
            DegradedError: the circuit is open and nothing is remembered under ``key``.
        """
        try:
            value = await fetch()
        except DegradedError as exc:
            if not self.enabled:
                raise
            found = self._last_known.get(key, _MISSING)
            if found is _MISSING:
                raise DegradedError(
                    f"{exc}; and this process holds no last-known value to serve stale"
                ) from exc
            self.stale_reads += 1
            return stale(found)
        self.remember(key, value)
        return value

    def remember(self, key: Hashable, value: Any) -> None:
        """Keep ``value`` as the last known under ``key`` (the oldest is forgotten first)."""
        if not self.enabled:
            return
        known = self._last_known
        known[key] = value
        known.move_to_end(key)
        if len(known) > self._last_known_size:
            known.popitem(last=False)

    def recall(self, key: Hashable) -> Any | None:
        """The last value remembered under ``key``, or None."""
        return self._last_known.get(key)

    def forget(self, key: Hashable) -> None:
        """Drop what is remembered under ``key`` (it was deleted)."""
        self._last_known.pop(key, None)

    # --- replay -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Replay the journal whenever it holds writes, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await self.drain()

    async def drain(self) -> None:
        """Replay every journaled write in order, waiting out the outage as long as it
        lasts; then release the breaker."""
        backoff = _MIN_BACKOFF
        self._replaying = True
        try:
            with bypassing_hold():
                while (entry := self.journal.first()) is not None:
                    wait = self.breaker.retry_in
                    if wait > 0:
                        await anyio.sleep(wait)
                        continue
                    try:
                        await self._replay_one(entry)
                    except BackendError as exc:  # still (or again) unreachable: wait, retry
                        log.debug("journal_replay_waiting", op_id=entry.op_id, error=str(exc))
                        await anyio.sleep(max(backoff, self.breaker.retry_in))
                        backoff = min(backoff * 2, _MAX_BACKOFF)
                        continue
                    backoff = _MIN_BACKOFF
                    await self.journal.mark_done(entry)
        finally:
            self._replaying = False
        if self.journal.depth == 0 and self._since is not None:
            log.info(
                "journal_replayed",
                replayed=self.journal.replayed,
                outage_seconds=round(time.monotonic() - self._since, 3),
            )
            self._since = None
            self.breaker.release()

    async def _replay_one(self, entry: JournalEntry) -> None:
        """Apply ``entry``, or record the server's refusal of it; exactly once either way.

        A refusal recorded by an earlier replay that died before noting the entry done is
        not applied again (it could succeed now: a refusal leaves no op marker).

        Raises:
            BackendError: the server could not be reached (nothing is noted: retried).
        """
        if self.resolution_recorded is not None and await self.resolution_recorded(entry):
            log.info("journal_op_already_resolved", kind=entry.kind, op_id=entry.op_id)
            return
        try:
            await self._apply(entry)
        except BackendError:
            raise
        except ZenError as exc:
            try:
                await self._resolve(entry, exc)
            except BackendError:
                self.resolutions -= 1  # counted again when the retry records it
                raise
            except ZenError as record_error:  # the refusal cannot be recorded as an event
                log.exception(
                    "journal_resolution_not_recorded",
                    kind=entry.kind,
                    op_id=entry.op_id,
                    refusal=str(exc),
                    error=str(record_error),
                )

    async def _apply(self, entry: JournalEntry) -> None:
        if self.resolver is None:
            raise DegradedError("the journal has no services bound to replay it yet")
        service, _, _ = entry.kind.partition(".")
        await self.resolver(entry.tenant, service).replay_journaled(entry)

    async def _resolve(self, entry: JournalEntry, exc: ZenError) -> None:
        self.resolutions += 1
        log.warning(
            "journal_op_resolved",
            kind=entry.kind,
            op_id=entry.op_id,
            resolution="kept the server's state",
            error=str(exc),
        )
        if self.on_resolution is not None:
            await self.on_resolution(entry, exc)

    # --- status -----------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """True while the circuit is open or journaled writes wait."""
        return self._since is not None or self.breaker.statistics().opened_at is not None

    def status(self) -> dict[str, Any]:
        """For get_health_status: degraded mode, journal depth, time in outage."""
        opened_at = self.breaker.statistics().opened_at
        starts = [t for t in (self._since, opened_at) if t is not None]
        return {
            "enabled": self.enabled,
            "journal_writes": self.journal_writes,
            "active": self.active,
            "replaying": self._replaying,
            "journal_depth": self.journal.depth,
            "journal_capacity": self.journal.max_ops,
            "journal_path": None if self.journal.path is None else str(self.journal.path),
            "journaled_total": self.journal.accepted,
            "replayed_total": self.journal.replayed,
            "resolutions": self.resolutions,
            "stale_reads": self.stale_reads,
            "outage_seconds": round(time.monotonic() - min(starts), 3) if starts else 0.0,
        }
