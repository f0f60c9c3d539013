"""Pub/sub subscriptions that survive reconnects.

Pub/sub is a hint channel: a message published while a subscriber is disconnected is lost.
So after every reconnect a subscription yields :class:`Reconnected` once, and the subscriber
catches up from the durable source (a stream) before trusting messages again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio.client import PubSub

from zen_async.store._errors import RedisFailure, raise_if_cancelling

__all__ = ["Message", "Reconnected", "Subscription"]

log = structlog.get_logger(__name__)

_POLL_TIMEOUT = 1.0  # seconds one get_message waits; below any socket timeout
_BACKOFF_MAX = 2.0


@dataclass(frozen=True, slots=True)
class Message:
    """A message on a subscribed channel."""

    channel: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Reconnected:
    """The subscription was re-established: messages may have been missed meanwhile."""

    attempts: int


class Subscription:
    """An async iterator of :class:`Message` and :class:`Reconnected` for a set of channels.

    Open it with ``RedisManager.subscribe(...)``; it reconnects and re-subscribes by itself,
    with capped backoff, until the ``async with`` block exits.
    """

    def __init__(
        self,
        factory: Callable[[], PubSub],
        channels: tuple[str, ...],
        *,
        on_change: Callable[[int], None] = lambda delta: None,
        bound: asyncio.Semaphore | None = None,
    ) -> None:
        self._factory = factory
        # On Cluster the subscription's connection comes out of a node pool that raises when
        # full: it holds one permit of the client's concurrency bound while it is open.
        self._bound = bound
        self._channels = channels
        self._pubsub: PubSub | None = None
        self._on_change = on_change  # told +1/-1 as the dedicated connection opens/closes

    async def __aenter__(self) -> Subscription:
        self._pubsub = await self._connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def _connect(self) -> PubSub:
        if self._bound is not None:
            await self._bound.acquire()
        pubsub = self._factory()
        try:
            await pubsub.subscribe(*self._channels)
        except BaseException:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            if self._bound is not None:
                self._bound.release()
            raise
        self._on_change(1)
        return pubsub

    async def _close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            self._on_change(-1)
            try:
                await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]
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
                    attempts += 1
                    log.warning("pubsub_reconnect_failed", attempts=attempts, error=str(exc))
                    await asyncio.sleep(min(_BACKOFF_MAX, 0.05 * 2**attempts))
                    continue
                yield Reconnected(attempts=attempts)
                attempts = 0
            try:
                raw = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=_POLL_TIMEOUT
                )
            except RedisFailure as exc:
                raise_if_cancelling()
                log.warning("pubsub_connection_lost", error=str(exc))
                await self._close()
                attempts = 1
                continue
            raise_if_cancelling()
            message = _to_message(raw)
            if message is not None:
                yield message


def _to_message(raw: Any) -> Message | None:
    if not isinstance(raw, dict) or raw.get("type") not in ("message", "pmessage"):
        return None
    channel = raw["channel"]
    data = raw["data"]
    return Message(
        channel=channel.decode() if isinstance(channel, bytes) else str(channel),
        data=data if isinstance(data, bytes) else str(data).encode(),
    )
