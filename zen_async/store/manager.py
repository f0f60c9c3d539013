"""RedisManager: the core's front door. It owns the clients of every keyspace, the circuit
breaker, the Lua scripts and the health monitor, for one deployment.

Open it with :func:`open_redis_manager` (the facade ``open_zen`` does); leaving the block
stops the health task, closes every pool and stops the embedded server if one was started.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import structlog

from zen_async.codec import Codec
from zen_async.config import Settings
from zen_async.errors import ZenError
from zen_async.store.breaker import CircuitBreaker
from zen_async.store.embedded import EmbeddedServer, open_embedded_server
from zen_async.store.health import HealthMonitor
from zen_async.store.keyspace import CommandRunner, Keyspace
from zen_async.store.scripts import ScriptRegistry
from zen_async.store.topology import KEYSPACES, Backend, build_backend, driver_info

__all__ = ["RedisManager", "open_redis_manager"]

log = structlog.get_logger(__name__)


class RedisManager:
    """Pools, pipelines, scripts, breaker and health for one deployment.

    Do not construct it directly: use :func:`open_redis_manager` (or ``open_zen``).

    Attributes:
        settings: the effective settings (with the embedded server's URL when embedded).
        codec: the value codec, with the configured compression threshold.
        breaker: the circuit breaker shared by every keyspace.
        health: the health monitor.
        embedded: the embedded server, when one was started.
    """

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        scripts: ScriptRegistry,
        *,
        embedded: EmbeddedServer | None = None,
    ) -> None:
        self.settings = settings
        self.embedded = embedded
        self.codec = Codec(compression_threshold=settings.redis_compression_threshold)
        self.breaker = CircuitBreaker(
            failure_threshold=settings.redis_breaker_failure_threshold,
            reset_timeout=settings.redis_breaker_reset_timeout,
        )
        self.runner = CommandRunner(
            self.breaker,
            retry_attempts=settings.redis_retry_attempts,
            user=settings.username,
            bound=backend.bound,
        )
        self._backend = backend
        self._scripts = scripts
        self._keyspaces = {
            name: Keyspace(
                name,
                tenant=settings.namespace,
                db=backend.dbs[name],
                prefixed=settings.db_layout == "prefixed",
                client=backend.clients[name],
                runner=self.runner,
                scripts=scripts,
                pipelining=settings.redis_enable_pipelining,
                batch_size=settings.redis_pipeline_batch_size,
            )
            for name in KEYSPACES
        }
        self.health = HealthMonitor(settings, backend, self._keyspaces, self.runner)

    @property
    def topology(self) -> str:
        """``standalone``, ``sentinel`` or ``cluster``."""
        return self._backend.topology

    def keyspace(self, name: str, *, tenant: str | None = None) -> Keyspace:
        """The handle on keyspace ``name`` (``state``, ``memory``, ...), bound to ``tenant``
        (default: the configured namespace).

        Raises:
            KeyError: an unknown keyspace name.
        """
        try:
            ks = self._keyspaces[name]
        except KeyError:
            raise KeyError(f"no keyspace {name!r}; known: {sorted(self._keyspaces)}") from None
        return ks if tenant is None or tenant == ks.tenant else ks.for_tenant(tenant)

    def pool_usage(self) -> dict[str, dict[str, int]]:
        """Connections in use and idle, per pool (per node on Cluster)."""
        return self._backend.pool_usage()

    def connections_in_use(self) -> int:
        """Connections checked out of every pool right now."""
        return self._backend.connections_in_use()

    async def get_health_status(self) -> dict[str, Any]:
        """The seed's health dict (redis_available, cluster_status, active_agents,
        circuit_breaker_failures, average_latency, database_status, last_health_check) plus
        topology, server version, breaker state, pool usage, memory facts and alerts.

        Uses the background task's latest report, checking now if there is none yet.
        """
        report = self.health.last_report or await self.health.check()
        return self.health.status(report)

    async def check_health(self) -> dict[str, Any]:
        """Run a health check now and return the status dict."""
        return self.health.status(await self.health.check())


@contextlib.asynccontextmanager
async def open_redis_manager(settings: Settings) -> AsyncIterator[RedisManager]:
    """Open the core for ``settings``: start the embedded server if asked for, build the
    pools, load the Lua scripts, run a first health check and start the health task.

    A configured server that is unreachable is reported (log and health status), never
    replaced by the embedded one.

    Raises:
        ConfigError: an embedded data directory already in use.
        BackendError: the embedded server would not start.
    """
    scripts = await anyio.to_thread.run_sync(ScriptRegistry.load)
    driver = await anyio.to_thread.run_sync(driver_info)
    async with contextlib.AsyncExitStack() as stack:
        embedded: EmbeddedServer | None = None
        if settings.use_embedded:
            embedded = await stack.enter_async_context(
                open_embedded_server(settings.redis_embedded_dir)
            )
            settings = settings.model_copy(update={"redis_url": embedded.url})
        backend = build_backend(settings, driver)
        stack.push_async_callback(_shielded_close, backend)
        manager = RedisManager(settings, backend, scripts, embedded=embedded)
        try:
            report = await manager.health.check()
        except ZenError as exc:
            report = None
            log.warning("redis_first_check_failed", error=str(exc))
        if report is not None and not report.available:
            log.warning("redis_unreachable", topology=backend.topology, errors=report.errors)
        # An owned task rather than a task group around the yield: a task group would wrap
        # whatever the caller's block raises in an ExceptionGroup.
        health_task = asyncio.create_task(manager.health.run(), name="zen-health")
        stack.push_async_callback(_cancel_and_wait, health_task)
        yield manager


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    task.cancel()
    with anyio.CancelScope(shield=True):
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("health_task_failed")


async def _shielded_close(backend: Backend) -> None:
    with anyio.CancelScope(shield=True):
        await backend.aclose()
