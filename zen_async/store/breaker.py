"""Circuit breaker: closed, open after K consecutive outage failures, half-open with one probe.

Only outages count (connection failures and timeouts, see ``_errors.is_outage``); an error
reply, pool exhaustion or a failover reply is evidence the server is there.

The breaker can also be *held* (:meth:`CircuitBreaker.hold`): while the outage journal
replays, every call is refused as if the circuit were open, except the replay's own calls
(made inside :func:`bypassing_hold`), so nothing overtakes a journaled write.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum

import structlog

from zen_async.errors import DegradedError

__all__ = ["BreakerState", "BreakerStatistics", "CircuitBreaker", "bypassing_hold", "in_bypass"]

log = structlog.get_logger(__name__)

_BYPASS_HOLD: ContextVar[bool] = ContextVar("zen_bypass_hold", default=False)


@contextlib.contextmanager
def bypassing_hold() -> Iterator[None]:
    """Calls made inside (in this task and tasks it starts) pass a held breaker."""
    token = _BYPASS_HOLD.set(True)
    try:
        yield
    finally:
        _BYPASS_HOLD.reset(token)


def in_bypass() -> bool:
    """True inside :func:`bypassing_hold` (the journal replay)."""
    return _BYPASS_HOLD.get()


class BreakerState(StrEnum):
    """Where the breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerStatistics:
    """A snapshot of the breaker's state and counters."""

    state: BreakerState
    consecutive_failures: int
    total_failures: int
    times_opened: int
    rejected_calls: int
    opened_at: float | None
    """Monotonic time the current outage began (first trip), or None when closed."""
    open_for: float
    """Seconds since the current outage began (0 when closed)."""
    held: str | None = None
    """Why the breaker is held shut although the server answers (journal replay), or None."""
    last_error: str | None = None
    """The outage error that last opened the circuit (or failed its probe), while it is open;
    None when closed."""


class CircuitBreaker:
    """An asyncio circuit breaker. Single-threaded by design: call it from the event loop.

    Args:
        failure_threshold: consecutive outage failures that open the circuit.
        reset_timeout: seconds open before one probe call is let through (half-open).
        clock: monotonic clock, replaceable by a fake in tests.
    """

    def __init__(
        self,
        *,
        failure_threshold: int,
        reset_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failure_threshold
        self._reset_timeout = reset_timeout
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._total = 0
        self._opened = 0
        self._rejected = 0
        self._opened_at: float | None = None  # start of the current outage
        self._last_trip: float | None = None  # start of the current wait for a probe
        self._probe_in_flight = False
        self._held: str | None = None
        self._last_error: str | None = None  # the newest outage failure, kept for messages

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker past its reset timeout reads as half-open."""
        if (
            self._state is BreakerState.OPEN
            and self._last_trip is not None
            and self._clock() - self._last_trip >= self._reset_timeout
        ):
            return BreakerState.HALF_OPEN
        return self._state

    def before_call(self) -> bool:
        """Admit or refuse a call. Returns True when the call is the half-open probe.

        Raises:
            DegradedError: the circuit is open, or a probe is already in flight.
        """
        if self._held is not None and not _BYPASS_HOLD.get():
            self._rejected += 1
            raise DegradedError(self._held)
        if self._state is BreakerState.CLOSED:
            return False
        if self.state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            self._state = BreakerState.HALF_OPEN
            return True
        self._rejected += 1
        last = f"; last error: {self._last_error}" if self._last_error else ""
        raise DegradedError(
            f"circuit breaker open after {self._consecutive} consecutive connection failures "
            f"or timeouts; the next probe is in {self._retry_in():.1f}s{last}"
        )

    def hold(self, reason: str) -> None:
        """Refuse every call made outside :func:`bypassing_hold` with ``reason``, whatever
        the state, until :meth:`release`."""
        self._held = reason

    def release(self) -> None:
        """End :meth:`hold`."""
        self._held = None

    @property
    def last_error(self) -> str | None:
        """The outage error that opened the circuit, or failed its latest probe (None while
        closed): what a refused call's caller would want to know."""
        return None if self._state is BreakerState.CLOSED else self._last_error

    @property
    def retry_in(self) -> float:
        """Seconds until an open breaker lets its next probe through (0: now)."""
        if self._state is BreakerState.CLOSED:
            return 0.0
        return self._retry_in()

    def _retry_in(self) -> float:
        if self._last_trip is None:
            return 0.0
        return max(0.0, self._reset_timeout - (self._clock() - self._last_trip))

    def record_success(self, *, probe: bool = False) -> None:
        """Note a call that reached the server (any reply, even an error reply)."""
        if probe or self._state is not BreakerState.CLOSED:
            self._probe_in_flight = False
            if self._state is not BreakerState.CLOSED:
                log.info("circuit_closed", after_failures=self._consecutive)
            self._state = BreakerState.CLOSED
            self._opened_at = None
            self._last_trip = None
        self._consecutive = 0
        self._last_error = None

    def record_failure(self, *, probe: bool = False, error: str | None = None) -> None:
        """Note an outage failure (connection failure or timeout). ``error`` (what failed,
        naming the server) is logged when it opens the circuit, and kept: every call refused
        while the circuit is open says it (:attr:`last_error`)."""
        if error is not None:
            self._last_error = error
        self._consecutive += 1
        self._total += 1
        if probe:
            self._probe_in_flight = False
            self._trip(error)
        elif self._state is BreakerState.CLOSED and self._consecutive >= self._threshold:
            self._trip(error)

    def release_probe(self) -> None:
        """Give the probe slot back when the probe call ended without a verdict (cancelled,
        or failed on something that is not an outage)."""
        self._probe_in_flight = False

    def _trip(self, error: str | None) -> None:
        now = self._clock()
        if self._opened_at is None:
            self._opened += 1
            self._opened_at = now
            log.warning("circuit_opened", consecutive_failures=self._consecutive, last_error=error)
        self._state = BreakerState.OPEN
        self._last_trip = now

    def statistics(self) -> BreakerStatistics:
        """Counters and state, for health reports."""
        state = self.state
        open_for = 0.0 if self._opened_at is None else self._clock() - self._opened_at
        return BreakerStatistics(
            state=state,
            consecutive_failures=self._consecutive,
            total_failures=self._total,
            times_opened=self._opened,
            rejected_calls=self._rejected,
            opened_at=self._opened_at,
            open_for=open_for,
            held=self._held,
            last_error=self.last_error,
        )
