"""The cache: JSON values with optional TTLs, a single-flight ``get_or_set``, and the seed's
NATS connection state and Temporal workflow context, in the ``cache`` keyspace.

Key layout (``ks.key(...)``; ``<key>`` is the caller's key, ``<h>`` a hash of it)::

    c:<key>            the value, codec-encoded (SET ... PX ttl, with its hint: cache_set.lua)
    c-lock:{<h>}       get_or_set fill lock: a random token (SET NX PX, renewed by its holder)
    c-wake:{<h>}       get_or_set wake list: at most one token, pushed when a fill ends
    nats:<id>          NATS connection state
    temporal:<id>      Temporal workflow context
    ch:cache-changes   the pub/sub channel of invalidation hints (a channel, not a key)

``get_or_set`` computes a missing value once. In one process, concurrent callers of a key share
one computation (an asyncio task per key). Across processes, the computing instance holds the
fill lock; the others block on the wake list (BLPOP, never longer than the lock's remaining
life or a second at a time), read the value when woken, and take the lock themselves when it
is released without a value or its holder died (it expires). Nobody waits longer than
``wait_timeout``: after that an instance computes without the lock.

Invalidation hints. Every write (``set``, ``delete``, a ``get_or_set`` fill, a replayed
journaled set, the NATS and Temporal helpers) publishes a hint on the tenant's channel
``ch:cache-changes`` in the same Lua step as the write: ``{"op", "kind", "key", "origin"}``,
``kind`` being ``c`` (a cache key), ``nats`` or ``temporal``. The facade's cache listens
(:meth:`Cache.listen`, started by ``open_zen``) and, on another instance's hint for a key,
drops what it keeps locally for that key: its last-known value (served stale while Redis is
unreachable) and its near-cache entry. Hints are best-effort, as all pub/sub: one sent while
the listener is disconnected is lost, so after every reconnect (and when it starts) the
listener drops everything it keeps locally; Redis stays the source of truth, and nothing
that must not be lost travels as a hint. A read that a hint (or a write of this process)
overlapped keeps nothing, since it may have read the older value. A tenant view
(``zen.for_tenant``) does not listen unless its owner runs its ``listen()``: its last-known
values are not dropped by other instances' writes, and its near cache stays off.

Near cache (opt-in, ``REDIS_NEAR_CACHE_SIZE``): the last values read, served from memory for
at most ``REDIS_NEAR_CACHE_TTL`` seconds while the listener is subscribed and the circuit is
closed; after a lost hint a read may return the older value until its entry expires. What is
kept locally, and when it is dropped, in detail: :mod:`zen_async._cache_local`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, NamedTuple

import orjson
import structlog

from zen_async._cache_local import LocalCacheState, Ticket
from zen_async.codec import Codec
from zen_async.degraded import JournalEntry
from zen_async.errors import ValidationError, ZenError
from zen_async.ops import new_op_id
from zen_async.store import Message, Reconnected
from zen_async.store.keyspace import Arg, Keyspace
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
        near_cache_size: values kept in process memory for hot reads (0: off); None takes
            ``REDIS_NEAR_CACHE_SIZE``. Used only while :meth:`listen` runs.
        near_cache_ttl: the longest a value is served from process memory, in seconds; None
            takes ``REDIS_NEAR_CACHE_TTL``.

    Raises:
        ValidationError: ``lock_ttl``, ``wait_timeout`` or ``near_cache_ttl`` is not a
            positive number, or ``near_cache_size`` is not an integer >= 0.
    """

    def __init__(
        self,
        redis: RedisManager,
        *,
        tenant: str | None = None,
        lock_ttl: float = 5.0,
        wait_timeout: float = 30.0,
        near_cache_size: int | None = None,
        near_cache_ttl: float | None = None,
    ) -> None:
        settings = redis.settings
        self._redis = redis
        self._ks: Keyspace = redis.keyspace("cache", tenant=tenant)
        self._codec: Codec = redis.codec
        self._max_value = settings.redis_max_value_bytes
        self._degraded = redis.degraded
        self._lock_ms = _ttl_ms(lock_ttl, what="lock_ttl")
        self._wait_timeout = _ttl_ms(wait_timeout, what="wait_timeout") / 1000
        # A BLPOP must come back before the socket timeout, or the read would fail.
        self._max_block = min(_MAX_BLOCK, settings.redis_socket_timeout / 2)
        self._flights: dict[str, _Flight] = {}
        self._origin = secrets.token_hex(8)  # told apart from other instances' hints
        size = settings.redis_near_cache_size if near_cache_size is None else near_cache_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValidationError(
                f"near_cache_size={size!r} is invalid: expected an integer >= 0 (0: off)"
            )
        ttl = settings.redis_near_cache_ttl if near_cache_ttl is None else near_cache_ttl
        self._local = LocalCacheState(
            self._degraded,
            self._ks.tenant,
            known_size=settings.redis_last_known_size,
            near_size=size,
            near_ttl=_ttl_ms(ttl, what="near_cache_ttl") / 1000,
        )

    @property
    def channel(self) -> str:
        """The pub/sub channel of this tenant's invalidation hints."""
        return self._ks.key("ch", "cache-changes")

    @property
    def listening(self) -> bool:
        """Whether :meth:`listen` is subscribed (the near cache serves only then)."""
        return self._local.listening

    def near_cache_size(self) -> int:
        """How many values the near cache holds right now (0 when it is off)."""
        return self._local.near_size()

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
        ticket = self._local.open(key)

        async def fetch() -> CacheRead:
            raw = await self._lookup(key, name, ticket)
            return CacheRead(None if raw is None else self._codec.decode(raw), stale=False)

        try:
            found: CacheRead = await self._degraded.read(
                self._local.known_key(key), fetch, lambda known: known._replace(stale=True)
            )
        finally:
            self._local.close(key, ticket)
        self._local.read_ended(key, ticket, fresh=not found.stale)
        return found

    async def set(
        self, key: str, value: Any, *, ttl: float | None = None, op_id: str | None = None
    ) -> None:
        """Store ``value`` (any JSON value, or bytes) under ``key``, and tell the other
        instances (a best-effort hint). While Redis is unreachable the write is journaled and
        applied on recovery (its TTL counts from then).

        Args:
            key: the cache key.
            value: the value.
            ttl: seconds until it expires (fractions allowed); None keeps it until deleted.
            op_id: names the write in the outage journal and in a BackendError (a set is
                idempotent: applying it again sets the same value).

        Raises:
            ValidationError: a bad key, TTL, value or op id, a value holding NaN or
                infinity or taking more than REDIS_MAX_VALUE_BYTES (as JSON, or as bytes);
                nothing was written.
            CapacityError: Redis is unreachable and the outage journal is full.
        """
        op_id = new_op_id(op_id)
        name = self._value_key(key)
        ttl_ms = None if ttl is None else _ttl_ms(ttl)
        raw = self._encode(value)
        ticket = self._local.open(key)
        done = False
        try:
            await self._degraded.write(
                "cache.set",
                self._ks.tenant,
                {"key": key, "value": base64.b64encode(raw).decode(), "ttl_ms": ttl_ms},
                lambda: self._write(name, raw, ttl_ms, kind="c", key=key),
                lambda _entry: None,
                op_id=op_id,
            )
            done = True
        finally:  # a failed write keeps nothing (it may have been applied)
            self._local.write_ended(key, ticket, CacheRead(value, stale=False) if done else None)

    async def replay_journaled(self, entry: JournalEntry) -> None:
        """Apply a journaled ``cache.set`` (idempotent: it sets the same value again)."""
        args = entry.args
        raw = base64.b64decode(args["value"])
        key = args["key"]
        await self._write(self._value_key(key), raw, args["ttl_ms"], kind="c", key=key)
        self._local.changed(key)

    async def delete(self, key: str) -> bool:
        """Delete ``key`` and tell the other instances (a best-effort hint); True if it
        existed.

        Raises:
            ValidationError: a bad key.
        """
        name = self._value_key(key)
        try:
            deleted = await self._ks.run_script(
                "cache_delete", [name], [self.channel, self._hint("del", "c", key)]
            )
        finally:
            self._local.invalidate(key)
        return int(deleted) > 0

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
            ValidationError: a bad key or TTL, or a value the codec cannot encode (NaN or
                infinity in it, more than REDIS_MAX_VALUE_BYTES).
            Exception: whatever ``factory`` raised.
        """
        name = self._value_key(key)
        ttl_ms = None if ttl is None else _ttl_ms(ttl)
        flight = self._flights.get(key)
        if flight is None:
            ticket = self._local.open(key)
            try:
                raw = await self._lookup(key, name, ticket)
            finally:
                self._local.close(key, ticket)
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
        self, connection_id: str, state: dict[str, Any], ttl: float = 300
    ) -> None:
        """Store the state of a NATS connection for ``ttl`` seconds (with an invalidation
        hint, kind ``nats``).

        Raises:
            ValidationError: a bad connection id, state or TTL; nothing was written.
        """
        connection_id = _check_key(connection_id, "connection_id")
        name = self._ks.key("nats", connection_id)
        await self._set_dict(name, state, ttl, what="state", kind="nats", ident=connection_id)

    async def get_temporal_workflow_context(self, workflow_id: str) -> dict[str, Any] | None:
        """The stored context of a Temporal workflow, or None when absent or expired.

        Raises:
            ValidationError: a bad workflow id.
        """
        return await self._get_dict(
            self._ks.key("temporal", _check_key(workflow_id, "workflow_id"))
        )

    async def set_temporal_workflow_context(
        self, workflow_id: str, context: dict[str, Any], ttl: float = 1800
    ) -> None:
        """Store the context of a Temporal workflow for ``ttl`` seconds (with an
        invalidation hint, kind ``temporal``).

        Raises:
            ValidationError: a bad workflow id, context or TTL; nothing was written.
        """
        workflow_id = _check_key(workflow_id, "workflow_id")
        name = self._ks.key("temporal", workflow_id)
        await self._set_dict(name, context, ttl, what="context", kind="temporal", ident=workflow_id)

    # --- invalidation hints -------------------------------------------------------------
    async def listen(self) -> None:
        """Act on other instances' invalidation hints until cancelled: drop the last-known
        value and the near-cache entry of each key they changed, and everything kept locally
        when the subscription starts and after each reconnect (hints may have been lost).
        ``open_zen`` runs it for the facade's cache."""
        async with self._redis.subscribe(self.channel, retry_connect=True) as hints:
            self._local.drop_all()  # kept before we heard anything: may have changed unheard
            self._local.listening = True
            try:
                async for item in hints:
                    if isinstance(item, Reconnected):
                        self._local.drop_all()
                        log.info("cache_hints_reconnected", dropped_local_values=True)
                    elif isinstance(item, Message):
                        self._on_hint(item.data)
            finally:
                self._local.listening = False
                self._local.drop_all()

    def _on_hint(self, data: bytes) -> None:
        try:
            hint = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(hint, dict) or hint.get("origin") == self._origin:
            return  # not a hint, or our own (we updated what we keep as we wrote)
        key = hint.get("key")
        if hint.get("kind") == "c" and isinstance(key, str):
            self._local.invalidate(key)

    def _hint(self, op: str, kind: str, key: str) -> bytes:
        return orjson.dumps({"op": op, "kind": kind, "key": key, "origin": self._origin})

    async def _write(
        self, name: str, raw: bytes, ttl_ms: int | None, *, kind: str, key: str
    ) -> None:
        """SET the value and publish its hint, in one script."""
        args: list[Arg] = [raw, "" if ttl_ms is None else ttl_ms, self.channel]
        args.append(self._hint("set", kind, key))
        await self._ks.run_script("cache_set", [name], args)

    async def _lookup(self, key: str, name: str, ticket: Ticket) -> bytes | None:
        """The raw value: from the near cache when it holds it, else from Redis (then kept
        in the near cache, unless ``ticket`` was spoiled meanwhile)."""
        near = self._local.near_usable()
        if near is None:
            raw: bytes | None = await self._ks.get(name)
            return raw
        loop = asyncio.get_running_loop()
        sent = loop.time()
        hit = near.get(key, sent)
        if hit is not None:
            return hit
        found, pttl = await self._ks.run_script("cache_read", [name])
        if found is not None and not ticket.spoiled and self._local.near_usable() is near:
            # Its life counts from before the request, so it ends no later than in Redis.
            life = near.ttl if pttl < 0 else min(near.ttl, pttl / 1000)
            near.put(key, found, sent + life)
        return found  # type: ignore[no-any-return]

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
                    key, name, lock, wake, token=token, factory=factory, ttl_ms=ttl_ms
                )
            raw = await self._wait_for_holder(name, lock, wake, deadline)
            if raw is not None:
                return self._codec.decode(raw)
            if loop.time() >= deadline:
                log.warning("cache_fill_wait_timed_out", key=key, waited=self._wait_timeout)
                return await self._compute(key, name, factory, ttl_ms)
            # The lock was released without a value, or its holder died: try to take it.

    async def _fill_locked(
        self,
        key: str,
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
            return await self._compute(key, name, factory, ttl_ms)
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
        self, key: str, name: str, factory: Callable[[], Awaitable[Any]], ttl_ms: int | None
    ) -> Any:
        encoded = self._encode(await factory())
        try:
            await self._write(name, encoded, ttl_ms, kind="c", key=key)
        finally:
            self._local.invalidate(key)
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

    async def _set_dict(
        self, name: str, value: object, ttl: float, *, what: str, kind: str, ident: str
    ) -> None:
        if not isinstance(value, dict):
            raise ValidationError(
                f"{what} must be a dict (a JSON object), got {type(value).__name__}"
            )
        ttl_ms = _ttl_ms(ttl)
        await self._write(name, self._encode(value, what), ttl_ms, kind=kind, key=ident)

    def _encode(self, value: Any, what: str = "cache value") -> bytes:
        """``value`` encoded, refused above REDIS_MAX_VALUE_BYTES or with NaN or infinity."""
        return self._codec.encode(value, limit=self._max_value, what=what)


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
