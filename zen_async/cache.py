"""The cache: JSON values with optional TTLs, a single-flight ``get_or_set``, and the seed's
NATS connection state and Temporal workflow context, in the ``cache`` keyspace.

Key layout (``ks.key(...)``; ``<key>`` is the caller's key, ``<h>`` a hash of it)::

    c:<key>            the value, codec-encoded (SET ... PX ttl)
    c-lock:{<h>}       get_or_set fill lock: a random token (SET NX PX, renewed by its holder)
    c-wake:{<h>}       get_or_set wake list: at most one token, pushed when a fill ends
    nats:<id>          NATS connection state
    temporal:<id>      Temporal workflow context

``get_or_set`` computes a missing value once. In one process, concurrent callers of a key share
one computation (an asyncio task per key). Across processes, the computing instance holds the
fill lock; the others block on the wake list (BLPOP, never longer than the lock's remaining
life or a second at a time), read the value when woken, and take the lock themselves when it
is released without a value or its holder died (it expires). Nobody waits longer than
``wait_timeout``: after that an instance computes without the lock.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, NamedTuple

import structlog

from zen_async.codec import Codec
from zen_async.degraded import JournalEntry
from zen_async.errors import ValidationError, ZenError
from zen_async.store.keyspace import Keyspace
from zen_async.store.manager import RedisManager

__all__ = ["MAX_KEY_BYTES", "Cache", "CacheRead"]

log = structlog.get_logger(__name__)

MAX_KEY_BYTES: Final = 1024
"""The longest cache key (or NATS connection / Temporal workflow id) accepted, UTF-8 encoded."""

_MAX_TTL: Final = 10 * 365 * 86400  # seconds; beyond, Redis refuses the expiry or it overflows
_MAX_BLOCK: Final = 1.0  # seconds one BLPOP may block before the waiter looks again


class CacheRead(NamedTuple):
    """A cached value and whether it is the last-known one, served while Redis is down."""

    value: Any | None
    stale: bool


class _Flight:
    """One in-process computation of a key, and how many callers are waiting on it."""

    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.waiters = 0


class Cache:
    """A JSON cache with single-flight fills, for one tenant.

    Args:
        redis: the core (``zen.redis``).
        tenant: the tenant to bind to; the configured namespace when None.
        lock_ttl: seconds the cross-process fill lock lives without renewal; its holder
            renews it while computing, so this bounds how long a dead holder blocks others.
        wait_timeout: the longest a caller waits for another instance's computation before
            computing itself.

    Raises:
        ValidationError: ``lock_ttl`` or ``wait_timeout`` is not a positive number.
    """

    def __init__(
        self,
        redis: RedisManager,
        *,
        tenant: str | None = None,
        lock_ttl: float = 5.0,
        wait_timeout: float = 30.0,
    ) -> None:
        self._ks: Keyspace = redis.keyspace("cache", tenant=tenant)
        self._codec: Codec = redis.codec
        self._degraded = redis.degraded
        self._lock_ms = _ttl_ms(lock_ttl, what="lock_ttl")
        self._wait_timeout = _ttl_ms(wait_timeout, what="wait_timeout") / 1000
        # A BLPOP must come back before the socket timeout, or the read would fail.
        self._max_block = min(_MAX_BLOCK, redis.settings.redis_socket_timeout / 2)
        self._flights: dict[str, _Flight] = {}

    # --- plain operations ---------------------------------------------------------------
    async def get(self, key: str) -> Any | None:
        """The value stored under ``key``, or None when absent or expired; while Redis is
        unreachable, the last value this process saw (see :meth:`read` to know which).

        Raises:
            ValidationError: a bad key.
            DegradedError: Redis is unreachable and this process knows no value for ``key``.
        """
        return (await self.read(key)).value

    async def read(self, key: str) -> CacheRead:
        """Like :meth:`get`, saying whether the value is stale (served from this process's
        last-known values while Redis is unreachable).

        Raises:
            ValidationError: a bad key.
            DegradedError: Redis is unreachable and this process knows no value for ``key``.
        """
        name = self._value_key(key)

        async def fetch() -> CacheRead:
            raw = await self._ks.get(name)
            return CacheRead(None if raw is None else self._codec.decode(raw), stale=False)

        return await self._degraded.read(
            ("cache", self._ks.tenant, key), fetch, lambda known: known._replace(stale=True)
        )

    async def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Store ``value`` (any JSON value, or bytes) under ``key``. While Redis is
        unreachable the write is journaled and applied on recovery (its TTL counts from then).

        Args:
            key: the cache key.
            value: the value.
            ttl: seconds until it expires (fractions allowed); None keeps it until deleted.

        Raises:
            ValidationError: a bad key, TTL or value; nothing was written.
            CapacityError: Redis is unreachable and the outage journal is full.
        """
        name = self._value_key(key)
        ttl_ms = None if ttl is None else _ttl_ms(ttl)
        raw = self._codec.encode(value)
        await self._degraded.write(
            "cache.set",
            self._ks.tenant,
            {"key": key, "value": base64.b64encode(raw).decode(), "ttl_ms": ttl_ms},
            lambda: self._ks.set(name, raw, ttl_ms=ttl_ms),
            lambda _entry: None,
        )
        self._degraded.remember(("cache", self._ks.tenant, key), CacheRead(value, stale=False))

    async def replay_journaled(self, entry: JournalEntry) -> None:
        """Apply a journaled ``cache.set`` (idempotent: it sets the same value again)."""
        args = entry.args
        raw = base64.b64decode(args["value"])
        await self._ks.set(self._value_key(args["key"]), raw, ttl_ms=args["ttl_ms"])

    async def delete(self, key: str) -> bool:
        """Delete ``key``; True if it existed.

        Raises:
            ValidationError: a bad key.
        """
        deleted = await self._ks.delete(self._value_key(key)) > 0
        self._degraded.forget(("cache", self._ks.tenant, key))
        return deleted

    async def get_or_set(
        self, key: str, factory: Callable[[], Awaitable[Any]], *, ttl: float | None
    ) -> Any:
        """The value under ``key``; on a miss, ``await factory()``, store and return its result.

        Concurrent misses on one key compute it once: in this process they share one call of
        ``factory``; across processes one instance computes under a short Redis lock while
        the others wait for its value. A failed ``factory`` raises in every caller that shared
        it and stores nothing. Cancelling one caller does not cancel the computation the
        others wait on (it is cancelled when every caller has left).

        Args:
            key: the cache key.
            factory: computes the value (any JSON value, or bytes).
            ttl: seconds the stored value lives; None keeps it until deleted.

        Returns:
            The value as stored (a tuple comes back as a list, as :meth:`get` would give it).

        Raises:
            ValidationError: a bad key or TTL, or a value the codec cannot encode.
            Exception: whatever ``factory`` raised.
        """
        name = self._value_key(key)
        ttl_ms = None if ttl is None else _ttl_ms(ttl)
        flight = self._flights.get(key)
        if flight is None:
            raw = await self._ks.get(name)
            if raw is not None:
                return self._codec.decode(raw)
            flight = self._flights.get(key)  # another caller may have started while we read
            if flight is None:
                flight = self._start_flight(key, self._fill(key, name, factory, ttl_ms))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                # Every caller has left (cancelled): nobody wants the value any more.
                if self._flights.get(key) is flight:
                    del self._flights[key]
                flight.task.cancel()

    # --- the seed's helpers -------------------------------------------------------------
    async def get_nats_connection_state(self, connection_id: str) -> dict[str, Any] | None:
        """The stored state of a NATS connection, or None when absent or expired.

        Raises:
            ValidationError: a bad connection id.
        """
        return await self._get_dict(
            self._ks.key("nats", _check_key(connection_id, "connection_id"))
        )

    async def set_nats_connection_state(
        self, connection_id: str, state: dict[str, Any], *, ttl: float = 300
    ) -> None:
        """Store the state of a NATS connection for ``ttl`` seconds.

        Raises:
            ValidationError: a bad connection id, state or TTL; nothing was written.
        """
        name = self._ks.key("nats", _check_key(connection_id, "connection_id"))
        await self._set_dict(name, state, ttl, what="state")

    async def get_temporal_workflow_context(self, workflow_id: str) -> dict[str, Any] | None:
        """The stored context of a Temporal workflow, or None when absent or expired.

        Raises:
            ValidationError: a bad workflow id.
        """
        return await self._get_dict(
            self._ks.key("temporal", _check_key(workflow_id, "workflow_id"))
        )

    async def set_temporal_workflow_context(
        self, workflow_id: str, context: dict[str, Any], *, ttl: float = 1800
    ) -> None:
        """Store the context of a Temporal workflow for ``ttl`` seconds.

        Raises:
            ValidationError: a bad workflow id, context or TTL; nothing was written.
        """
        name = self._ks.key("temporal", _check_key(workflow_id, "workflow_id"))
        await self._set_dict(name, context, ttl, what="context")

    # --- single flight ------------------------------------------------------------------
    def _start_flight(self, key: str, fill: Coroutine[Any, Any, Any]) -> _Flight:
        flight = _Flight(asyncio.get_running_loop().create_task(fill))

        def landed(task: asyncio.Task[Any]) -> None:
            if self._flights.get(key) is flight:
                del self._flights[key]
            if not task.cancelled():
                task.exception()  # retrieved: every waiter may have left before it failed

        flight.task.add_done_callback(landed)
        self._flights[key] = flight
        return flight

    async def _fill(
        self,
        key: str,
        name: str,
        factory: Callable[[], Awaitable[Any]],
        ttl_ms: int | None,
    ) -> Any:
        lock, wake = self._lock_keys(key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_timeout
        while True:
            token = secrets.token_hex(16)
            if await self._ks.execute("SET", lock, token, "NX", "PX", self._lock_ms):
                return await self._fill_locked(
                    name, lock, wake, token=token, factory=factory, ttl_ms=ttl_ms
                )
            raw = await self._wait_for_holder(name, lock, wake, deadline)
            if raw is not None:
                return self._codec.decode(raw)
            if loop.time() >= deadline:
                log.warning("cache_fill_wait_timed_out", key=key, waited=self._wait_timeout)
                return await self._compute(name, factory, ttl_ms)
            # The lock was released without a value, or its holder died: try to take it.

    async def _fill_locked(
        self,
        name: str,
        lock: str,
        wake: str,
        *,
        token: str,
        factory: Callable[[], Awaitable[Any]],
        ttl_ms: int | None,
    ) -> Any:
        renewer = asyncio.get_running_loop().create_task(self._keep_lock(lock, token))
        try:
            raw = await self._ks.get(name)  # stored by the previous holder since our miss?
            if raw is not None:
                return self._codec.decode(raw)
            return await self._compute(name, factory, ttl_ms)
        finally:
            renewer.cancel()
            await asyncio.wait([renewer])
            try:
                await self._ks.run_script("cache_unlock", [lock, wake], [token, self._lock_ms])
            except ZenError as exc:  # it expires by itself; the fill's own outcome matters more
                log.warning("cache_unlock_failed", lock=lock, error=str(exc))

    async def _keep_lock(self, lock: str, token: str) -> None:
        interval = self._lock_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                held = await self._ks.run_script(
                    "cache_extend_lock", [lock], [token, self._lock_ms]
                )
            except ZenError as exc:
                log.warning("cache_lock_renewal_failed", lock=lock, error=str(exc))
                continue
            if not held:
                log.warning("cache_lock_lost", lock=lock)
                return

    async def _wait_for_holder(
        self, name: str, lock: str, wake: str, deadline: float
    ) -> bytes | None:
        """Wait until the value appears (returned), or the lock is free or the deadline has
        passed (None)."""
        loop = asyncio.get_running_loop()
        woken = False
        while True:
            raw = await self._ks.get(name)
            pttl = -2 if raw is not None else int(await self._ks.execute("PTTL", lock))
            remaining = deadline - loop.time()
            if raw is not None or pttl == -2 or remaining <= 0:
                if woken:  # pass the token on, so the next waiter wakes too
                    await self._ks.run_script("cache_wake", [wake], [self._lock_ms])
                return raw
            block = min(remaining, self._max_block)
            if pttl > 0:
                block = min(block, pttl / 1000)
            # BLPOP 0 would block forever: never ask for less than a millisecond.
            popped = await self._ks.execute("BLPOP", wake, max(0.001, round(block, 3)))
            woken = popped is not None

    async def _compute(
        self, name: str, factory: Callable[[], Awaitable[Any]], ttl_ms: int | None
    ) -> Any:
        encoded = self._codec.encode(await factory())
        await self._ks.set(name, encoded, ttl_ms=ttl_ms)
        return self._codec.decode(encoded)

    # --- internals ----------------------------------------------------------------------
    def _value_key(self, key: str) -> str:
        return self._ks.key("c", _check_key(key, "key"))

    def _lock_keys(self, key: str) -> tuple[str, str]:
        # A hash of the key as the hash tag: the lock and its wake list share a slot whatever
        # braces the caller's key holds.
        tag = hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
        return self._ks.key("c-lock", f"{{{tag}}}"), self._ks.key("c-wake", f"{{{tag}}}")

    async def _get_dict(self, name: str) -> dict[str, Any] | None:
        raw = await self._ks.get(name)
        if raw is None:
            return None
        value: dict[str, Any] = self._codec.decode(raw)
        return value

    async def _set_dict(self, name: str, value: object, ttl: float, *, what: str) -> None:
        if not isinstance(value, dict):
            raise ValidationError(
                f"{what} must be a dict (a JSON object), got {type(value).__name__}"
            )
        ttl_ms = _ttl_ms(ttl)
        await self._ks.set(name, self._codec.encode(value), ttl_ms=ttl_ms)


def _check_key(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{what}={value!r} is invalid: expected a non-empty str")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise ValidationError(
            f"{what}={value!r} is invalid: expected text that UTF-8 can encode (it holds a "
            "lone surrogate)"
        ) from None
    if size > MAX_KEY_BYTES:
        raise ValidationError(
            f"{what} is {size} bytes long (UTF-8); at most {MAX_KEY_BYTES} are accepted"
        )
    return value


def _ttl_ms(seconds: object, *, what: str = "ttl") -> int:
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or not 0 < seconds <= _MAX_TTL
    ):
        raise ValidationError(
            f"{what}={seconds!r} is invalid: expected a positive number of seconds, at most "
            f"{_MAX_TTL} (10 years)"
        )
    return max(1, math.ceil(seconds * 1000))
