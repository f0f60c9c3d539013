"""Pub/sub subscriptions that survive reconnects.

Pub/sub is a hint channel: a message published while a subscriber is disconnected is lost.
So after every reconnect a subscription yields :class:`Reconnected` once, and the subscriber
catches up from the durable source (a stream) before trusting messages again.

Entering a subscription connects and subscribes. A server that cannot be reached then is
either an error (the default: :class:`~zen_async.errors.BackendError`, mapped here like every
redis-py error) or, with ``retry_connect=True``, waited out with the reconnect backoff: what a
background subscriber wants, since it must outlive an outage or a failover that happens to
coincide with its start.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import hiredis
import structlog
from redis import exceptions as rx
from redis.asyncio.client import PubSub

from zen_async.store._errors import RedisFailure, map_error, raise_if_cancelling

__all__ = ["Message", "Reconnected", "Subscription", "SubscriptionStatistics"]

log = structlog.get_logger(__name__)

_POLL_TIMEOUT = 1.0  # seconds one get_message waits; below any socket timeout
_READ_SIZE = 65536
_MORE = object()  # hiredis: no whole reply buffered yet
_MESSAGE_KINDS = (b"message", b"pmessage", b"smessage")
_BACKOFF_BASE = 0.05
_BACKOFF_MAX = 2.0


@dataclass(frozen=True, slots=True)
class Message:
    """A message on a subscribed channel."""

    channel: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Reconnected:
    """The subscription was re-established: messages may have been missed meanwhile.

    Attributes:
        attempts: connection attempts it took, the successful one included.
    """

    attempts: int


@dataclass(frozen=True, slots=True)
class SubscriptionStatistics:
    """A snapshot of a subscription's connection history.

    Attributes:
        connected: whether it holds a subscribed connection right now.
        failed_connects: connect attempts that failed since it was opened (on entry and
            while reconnecting).
        reconnects: times the connection was re-established after being lost.
    """

    connected: bool
    failed_connects: int
    reconnects: int


class Subscription:
    """An async iterator of :class:`Message` and :class:`Reconnected` for a set of channels.

    Open it with ``RedisManager.subscribe(...)``; it reconnects and re-subscribes by itself,
    with capped backoff, until the ``async with`` block exits.

    Args:
        factory: makes a fresh redis-py ``PubSub`` (one per connection attempt).
        channels: the full channel names.
        on_change: told +1/-1 as the dedicated connection opens/closes.
        bound: on Cluster, the client's concurrency bound (one permit is held while open).
        user: the ACL user, named in a mapped authentication error.
        retry_connect: when the first connect fails, retry with the reconnect backoff until
            it succeeds (entering then waits for the server) instead of raising.

    Raises:
        BackendError: on entry, the server cannot be reached (unless ``retry_connect``).
        AuthError: on entry, the server refused the credentials (unless ``retry_connect``).
    """

    def __init__(
        self,
        factory: Callable[[], PubSub],
        channels: tuple[str, ...],
        *,
        on_change: Callable[[int], None] = lambda delta: None,
        bound: asyncio.Semaphore | None = None,
        user: str | None = None,
        retry_connect: bool = False,
    ) -> None:
        self._factory = factory
        # On Cluster the subscription's connection comes out of a node pool that raises when
        # full: it holds one permit of the client's concurrency bound while it is open.
        self._bound = bound
        self._channels = channels
        self._pubsub: PubSub | None = None
        self._on_change = on_change
        self._user = user
        self._retry_connect = retry_connect
        self._failed_connects = 0
        self._reconnects = 0
        self._reader: Any = None  # hiredis, fed from the subscribed connection (see _batch)

    def statistics(self) -> SubscriptionStatistics:
        """Whether it is connected, and how many connects failed and reconnects succeeded."""
        return SubscriptionStatistics(
            connected=self._pubsub is not None,
            failed_connects=self._failed_connects,
            reconnects=self._reconnects,
        )

    async def __aenter__(self) -> Subscription:
        attempts = 0
        while True:
            try:
                self._pubsub = await self._connect()
            except RedisFailure as exc:
                raise_if_cancelling()
                error = map_error(exc, user=self._user)
                if not self._retry_connect:
                    raise error from exc
                attempts += 1
                log.warning("pubsub_connect_failed", attempts=attempts, error=str(error))
                await asyncio.sleep(_backoff(attempts))
                continue
            return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def _connect(self) -> PubSub:
        """Connect and subscribe; raises redis-py's error (the callers map or retry it)."""
        if self._bound is not None:
            await self._bound.acquire()
        pubsub = self._factory()
        try:
            await pubsub.subscribe(*self._channels)
        except BaseException as exc:
            if isinstance(exc, RedisFailure):
                self._failed_connects += 1
            await pubsub.aclose()
            if self._bound is not None:
                self._bound.release()
            raise
        self._on_change(1)
        self._reader = None
        return pubsub

    async def _close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            self._on_change(-1)
            try:
                await asyncio.shield(pubsub.aclose())
            finally:
                if self._bound is not None:
                    self._bound.release()

    def __aiter__(self) -> AsyncIterator[Message | Reconnected]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message | Reconnected]:
        attempts = 0
        while True:
            if self._pubsub is None:
                try:
                    self._pubsub = await self._connect()
                except RedisFailure as exc:
                    raise_if_cancelling()
                    attempts += 1
                    log.warning(
                        "pubsub_reconnect_failed",
                        attempts=attempts,
                        error=str(map_error(exc, user=self._user)),
                    )
                    await asyncio.sleep(_backoff(attempts))
                    continue
                self._reconnects += 1
                yield Reconnected(attempts=attempts)
                attempts = 0
            try:
                batch = await self._batch(self._pubsub)
            except RedisFailure as exc:
                raise_if_cancelling()
                log.warning("pubsub_connection_lost", error=str(map_error(exc, user=self._user)))
                await self._close()
                attempts = 1
                continue
            raise_if_cancelling()
            for message in batch:
                yield message

    async def _batch(self, pubsub: PubSub) -> list[Message]:
        """The messages that arrived with the next read (none, at times).

        The subscribed connection is read directly: one socket read, parsed by hiredis,
        answers every message it holds, without redis-py's per-message timeout, parsing
        and push-handler round (which cost a transition about a third of its time in a
        process that hears its own agent hints). Before redis-py has a connection, its
        ``get_message`` does the waiting.
        """
        conn = pubsub.connection
        stream = None if conn is None else conn._reader
        if conn is None or stream is None:
            raw = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL_TIMEOUT)
            message = _to_message(raw)
            return [] if message is None else [message]
        if self._reader is None:
            self._reader = hiredis.Reader(
                protocolError=rx.InvalidResponse,
                replyError=conn._parser.parse_error,
                notEnoughData=_MORE,
            )
        try:
            data = await stream.read(_READ_SIZE)
        except OSError as exc:
            raise rx.ConnectionError(f"Error while reading from the subscription: {exc}") from exc
        if not data:
            raise rx.ConnectionError("Connection closed by server.")
        reader = self._reader
        reader.feed(data)
        out: list[Message] = []
        while (reply := reader.gets()) is not _MORE:
            if isinstance(reply, rx.RedisError):
                raise reply  # SUBSCRIBE refused (an ACL denial), or the server's error
            if isinstance(reply, list) and reply and reply[0] in _MESSAGE_KINDS:
                channel, data = reply[-2], reply[-1]
                out.append(
                    Message(
                        channel=channel.decode() if isinstance(channel, bytes) else str(channel),
                        data=data if isinstance(data, bytes) else str(data).encode(),
                    )
                )
        return out


def _backoff(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt in a row (capped)."""
    return float(min(_BACKOFF_MAX, _BACKOFF_BASE * 2**attempts))


def _to_message(raw: Any) -> Message | None:
    if not isinstance(raw, dict) or raw.get("type") not in ("message", "pmessage"):
        return None
    channel = raw["channel"]
    data = raw["data"]
    return Message(
        channel=channel.decode() if isinstance(channel, bytes) else str(channel),
        data=data if isinstance(data, bytes) else str(data).encode(),
    )
