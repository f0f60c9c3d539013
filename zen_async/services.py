"""The facade: :func:`open_zen` builds every service and owns every lifetime."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

import anyio

from zen_async._tasks import background
from zen_async.config import Settings
from zen_async.errors import ValidationError
from zen_async.events import EventLog
from zen_async.store.manager import RedisManager, open_redis_manager

__all__ = ["Zen", "open_zen"]

_TENANT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class Zen:
    """Everything zen_async offers, opened once by :func:`open_zen`.

    Attributes:
        settings: the effective settings.
        redis: the core: pools, pipelines, scripts, breaker, health.
        events: the event log (Streams) and its consumers.
    """

    def __init__(self, redis: RedisManager, *, tenant: str | None = None) -> None:
        self.settings = redis.settings
        self.tenant = tenant or redis.settings.namespace
        self.redis = redis
        self.events = EventLog(redis, tenant=self.tenant)

    def for_tenant(self, tenant: str) -> Zen:
        """A view of the same deployment bound to another tenant: it shares the pools and
        background tasks; every key it touches lives under that tenant's namespace.

        Raises:
            ValidationError: an invalid tenant name.
        """
        if not _TENANT.fullmatch(tenant):
            raise ValidationError(
                f"tenant {tenant!r} is invalid: use 1-64 characters from A-Z a-z 0-9 _ . -"
            )
        return Zen(self.redis, tenant=tenant)


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
        zen = Zen(redis)
        redis.bind_services(events=zen.events)
        async with background(event_trim=zen.events.run()):
            yield zen
