"""The facade: :func:`open_zen` builds every service and owns every lifetime."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio

from zen_async.config import Settings
from zen_async.store.manager import RedisManager, open_redis_manager

__all__ = ["Zen", "open_zen"]


class Zen:
    """Everything zen_async offers, opened once by :func:`open_zen`.

    Attributes:
        settings: the effective settings.
        redis: the core: pools, pipelines, scripts, breaker, health.
    """

    def __init__(self, settings: Settings, redis: RedisManager) -> None:
        self.settings = settings
        self.redis = redis


@contextlib.asynccontextmanager
async def open_zen(settings: Settings | None = None) -> AsyncIterator[Zen]:
    """Open zen_async: connection pools, background tasks and (when no server is configured,
    or ``REDIS_EMBEDDED=true``) a private embedded valkey-server. Leaving the block closes
    everything, also when cancelled.

    Args:
        settings: the settings; ``Settings()`` (environment and ``.env``) when omitted.

    Raises:
        ConfigError: invalid settings.
        BackendError: the embedded server would not start.
    """
    if settings is None:  # reads the environment and .env: file I/O, kept off the loop
        settings = await anyio.to_thread.run_sync(Settings)
    async with open_redis_manager(settings) as redis:
        yield Zen(redis.settings, redis)
