"""The circuit breaker's state machine, on a fake clock (tests never sleep); and, on a real
server, what the core counts: outages only, never an error reply or an exhausted pool."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from zen_async import BackendError, CapacityError, DegradedError, Zen, open_zen
from zen_async.store import BreakerState, CircuitBreaker
from zen_async.testing.deployments import Target
from zen_async.testing.waiting import wait_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, reset_timeout=5.0, clock=clock)


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        probe = breaker.before_call()
        breaker.record_failure(probe=probe)


def test_opens_after_threshold_consecutive_failures(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    assert breaker.statistics().state is BreakerState.CLOSED
    fail(breaker, 1)
    assert breaker.statistics().state is BreakerState.OPEN
    with pytest.raises(DegradedError, match="3 consecutive connection failures"):
        breaker.before_call()
    stats = breaker.statistics()
    assert (stats.total_failures, stats.times_opened, stats.rejected_calls) == (3, 1, 1)


def test_a_success_resets_the_consecutive_count(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    breaker.record_success(probe=breaker.before_call())
    fail(breaker, 2)
    assert breaker.statistics().state is BreakerState.CLOSED


def test_half_open_admits_exactly_one_probe(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 3)
    clock.now += 5.0
    assert breaker.statistics().state is BreakerState.HALF_OPEN
    assert breaker.before_call() is True
    with pytest.raises(DegradedError):
        breaker.before_call()  # a second caller while the probe is out
    breaker.record_success(probe=True)
    assert breaker.statistics().state is BreakerState.CLOSED
    assert breaker.before_call() is False


def test_failed_probe_reopens_for_another_reset_timeout(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail(breaker, 3)
    clock.now += 5.0
    breaker.record_failure(probe=breaker.before_call())
    assert breaker.statistics().state is BreakerState.OPEN
    clock.now += 4.9
    assert breaker.statistics().state is BreakerState.OPEN
    clock.now += 0.1
    assert breaker.statistics().state is BreakerState.HALF_OPEN
    # The outage is measured from the first trip, not the last probe.
    assert breaker.statistics().open_for == pytest.approx(10.0)
    assert breaker.statistics().times_opened == 1


def test_a_probe_without_verdict_frees_the_slot(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 3)
    clock.now += 5.0
    assert breaker.before_call() is True
    breaker.release_probe()  # e.g. the probe was cancelled
    assert breaker.before_call() is True


def test_a_refused_call_names_the_error_that_opened_the_circuit(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """A caller refused by an open circuit learns why it opened, not just that it is open."""
    for n in range(3):
        breaker.record_failure(probe=breaker.before_call(), error=f"refused #{n}")
    assert breaker.statistics().last_error == "refused #2"
    with pytest.raises(DegradedError, match=r"circuit breaker open.*; last error: refused #2$"):
        breaker.before_call()
    clock.now += 5.0
    breaker.record_failure(probe=breaker.before_call(), error="timeout")  # the probe failed
    with pytest.raises(DegradedError, match=r"last error: timeout$"):
        breaker.before_call()
    clock.now += 5.0
    breaker.record_success(probe=breaker.before_call())
    assert breaker.last_error is None  # closed: nothing to explain
    assert breaker.statistics().last_error is None


# --- what the core counts, on a real server ----------------------------------------------


def failure_counters(zen: Zen) -> tuple[int, int, int]:
    stats = zen.redis.breaker.statistics()
    return stats.consecutive_failures, stats.total_failures, stats.times_opened


async def test_an_error_reply_leaves_the_failure_counters_unchanged(standalone: Target) -> None:
    """WRONGTYPE is the server answering: not an outage."""
    async with open_zen(standalone.settings(redis_enable_metrics=False)) as zen:
        ks = zen.redis.keyspace("state")
        await ks.set(ks.key("a-string"), b"x")
        before = failure_counters(zen)
        for _ in range(5):  # more than the default threshold, were they counted
            with pytest.raises(BackendError, match="WRONGTYPE"):
                await ks.execute("LPUSH", ks.key("a-string"), b"y")
        assert failure_counters(zen) == before == (0, 0, 0)
        assert zen.redis.breaker.statistics().state is BreakerState.CLOSED


async def test_pool_exhaustion_leaves_the_failure_counters_unchanged(standalone: Target) -> None:
    """No connection free in the pool in time is our own load, not the server down."""
    settings = standalone.settings(
        redis_max_connections=1,
        redis_pool_timeout=0.1,
        redis_socket_timeout=30.0,
        redis_enable_metrics=False,
    )
    async with open_zen(settings) as zen:
        ks = zen.redis.keyspace("conversations")
        # The pool's only connection waits server-side on an empty list.
        holder = asyncio.create_task(ks.execute("BLPOP", ks.key("never-pushed"), 20))
        try:

            async def held() -> bool:
                return zen.redis.pool_usage()["conversations"]["in_use"] == 1

            await wait_for(held, what="the pool's one connection checked out")
            before = failure_counters(zen)
            for _ in range(5):  # more than the default threshold, were they counted
                # A blocking read needs a pooled connection (plain commands are multiplexed).
                with pytest.raises(CapacityError, match="no connection became free"):
                    await ks.execute("BLPOP", ks.key("anything"), 1)
            assert failure_counters(zen) == before == (0, 0, 0)
            assert zen.redis.breaker.statistics().state is BreakerState.CLOSED
        finally:
            holder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holder
