"""RedisManager: the core's front door. It owns the clients of every keyspace, the circuit
breaker, the Lua scripts and the health monitor, for one deployment.

Open it with :func:`open_redis_manager` (the facade ``open_zen`` does); leaving the block
stops the health task, closes every pool and stops the embedded server if one was started.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol, TypeVar

import anyio
import structlog
from redis.asyncio import Redis

from zen_async._tasks import background
from zen_async.codec import Codec
from zen_async.config import Settings
from zen_async.degraded import DegradedMode, OutageJournal
from zen_async.errors import ValidationError, ZenError
from zen_async.store.breaker import CircuitBreaker
from zen_async.store.embedded import EmbeddedServer, open_embedded_server
from zen_async.store.health import HealthMonitor, HealthReport
from zen_async.store.keyspace import CommandRunner, Durability, Keyspace
from zen_async.store.pubsub import Subscription
from zen_async.store.scripts import ScriptRegistry
from zen_async.store.topology import (
    KEYSPACES,
    Backend,
    build_backend,
    driver_info,
    tls_context,
)

__all__ = ["AgentEventPublisher", "RedisManager", "open_redis_manager"]


class AgentEventPublisher(Protocol):
    """What ``publish_agent_event`` delegates to (``zen_async.events.EventLog``)."""

    async def publish_agent_event(self, agent_id: str, event_type: str, data: Any) -> str: ...


class SeedPorts(Protocol):
    """What the seed's port methods delegate to (``zen_async.agents.ports.PortAllocator``)."""

    async def allocate_port(self, agent_id: str, port_range: tuple[int, int]) -> int: ...

    async def release_port(self, agent_id: str, port: int) -> bool: ...


class SeedMetrics(Protocol):
    """What the seed's ``record_metric`` delegates to (``zen_async.metrics.Metrics``)."""

    def record_seed_metric(
        self, name: str, value: float, tags: dict[str, str] | None = None
    ) -> None: ...


class SeedCache(Protocol):
    """What the seed's NATS and Temporal helpers delegate to (``zen_async.cache.Cache``)."""

    async def get_nats_connection_state(self, connection_id: str) -> Any: ...

    async def set_nats_connection_state(
        self, connection_id: str, state: dict[str, Any], ttl: float = 300
    ) -> None: ...

    async def get_temporal_workflow_context(self, workflow_id: str) -> Any: ...

    async def set_temporal_workflow_context(
        self, workflow_id: str, context: dict[str, Any], ttl: float = 1800
    ) -> None: ...


log = structlog.get_logger(__name__)

_T = TypeVar("_T")


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
        journal: OutageJournal | None = None,
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
            server=settings.server_label,
            bound=backend.bound,
            durability=(
                Durability(
                    replicas=settings.redis_durability_replicas,
                    timeout_ms=settings.redis_durability_timeout_ms,
                )
                if settings.redis_durability == "replicated"
                else None
            ),
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
                route=backend.routes.get(name),
            )
            for name in KEYSPACES
        }
        self.health = HealthMonitor(settings, backend, self._keyspaces, self.runner)
        self.degraded = DegradedMode(
            self.breaker,
            journal or OutageJournal(path=None, max_ops=settings.redis_outage_journal_max_ops),
            enabled=settings.redis_degraded_mode,
            last_known_size=settings.redis_last_known_size,
            journal_writes=settings.redis_durability != "replicated",
        )
        self._subscriptions = 0
        self._events: AgentEventPublisher | None = None
        self._ports: SeedPorts | None = None
        self._cache: SeedCache | None = None
        self._metrics: SeedMetrics | None = None

    def bind_services(
        self,
        *,
        events: AgentEventPublisher | None = None,
        ports: SeedPorts | None = None,
        cache: SeedCache | None = None,
        metrics: SeedMetrics | None = None,
    ) -> None:
        """Attach the domain services the seed-compatible methods delegate to (the facade
        does this; the core never imports the domain layer)."""
        self._events = events or self._events
        self._ports = ports or self._ports
        self._cache = cache or self._cache
        self._metrics = metrics or self._metrics

    def _bound(self, service: _T | None, what: str) -> _T:
        if service is None:
            raise ZenError(f"{what} needs zen's domain services: open zen with open_zen()")
        return service

    async def allocate_port(self, agent_id: str, port_range: tuple[int, int] | None = None) -> int:
        """Seed-compatible: lease a free port in ``port_range`` (start inclusive, end
        exclusive) on this host to ``agent_id``; renewed by its heartbeat. Delegates to
        ``zen.ports``.

        Args:
            agent_id: the owner.
            port_range: ``(start, end)``; None (the default) for the configured range,
                REDIS_PORT_RANGE_START to REDIS_PORT_RANGE_END (the seed's (3284, 10000)
                unless configured otherwise).

        Raises:
            ValidationError: a bad agent id or range.
            CapacityError: every port of the range is leased.
        """
        if port_range is None:
            port_range = (self.settings.redis_port_range_start, self.settings.redis_port_range_end)
        return await self._bound(self._ports, "allocate_port").allocate_port(agent_id, port_range)

    async def release_port(self, agent_id: str, port: int) -> bool:
        """Seed-compatible: give ``port`` back if ``agent_id`` holds it. Delegates to
        ``zen.ports``."""
        return await self._bound(self._ports, "release_port").release_port(agent_id, port)

    async def record_metric(
        self, name: str, value: float, tags: dict[str, str] | None = None
    ) -> None:
        """Seed-compatible: record a metric value (buffered; flushed in batches). Delegates
        to ``zen.metrics``.

        The seed's dotted names are accepted and mapped to the names zen_async exports:
        ``system.active_agents`` sets the ``zen_active_agents`` gauge;
        ``agent.state.<op>.latency`` and ``agent.memory.<op>.latency`` (milliseconds) go to
        ``zen_state_operation_latency_ms`` / ``zen_memory_operation_latency_ms`` with the tag
        ``operation=<op>`` (zen's own services record these too: drop such calls once
        migrated, or operations are counted twice); any other dotted name is recorded with
        its dots replaced by underscores (``agent.task.duration`` -> ``agent_task_duration``).
        Other characters are not rewritten: a name still invalid after this is refused.

        Raises:
            ValidationError: a bad name, value or tags.
        """
        self._bound(self._metrics, "record_metric").record_seed_metric(name, value, tags)

    async def get_nats_connection_state(self, connection_id: str) -> Any:
        """Seed-compatible: the stored NATS connection state, or None. Delegates to
        ``zen.cache``."""
        cache = self._bound(self._cache, "get_nats_connection_state")
        return await cache.get_nats_connection_state(connection_id)

    async def set_nats_connection_state(
        self, connection_id: str, state: dict[str, Any], ttl: float = 300
    ) -> None:
        """Seed-compatible: store a NATS connection state for ``ttl`` seconds."""
        cache = self._bound(self._cache, "set_nats_connection_state")
        await cache.set_nats_connection_state(connection_id, state, ttl=ttl)

    async def get_temporal_workflow_context(self, workflow_id: str) -> Any:
        """Seed-compatible: the stored Temporal workflow context, or None."""
        cache = self._bound(self._cache, "get_temporal_workflow_context")
        return await cache.get_temporal_workflow_context(workflow_id)

    async def set_temporal_workflow_context(
        self, workflow_id: str, context: dict[str, Any], ttl: float = 1800
    ) -> None:
        """Seed-compatible: store a Temporal workflow context for ``ttl`` seconds."""
        cache = self._bound(self._cache, "set_temporal_workflow_context")
        await cache.set_temporal_workflow_context(workflow_id, context, ttl=ttl)

    async def publish_agent_event(self, agent_id: str, event_type: str, data: Any) -> str:
        """Seed-compatible: append an event to the agent's stream shard and audit trail, and
        send a pub/sub hint. Returns the event id. Delegates to ``zen.events``.

        Raises:
            ValidationError: bad agent id, event type or data.
            ZenError: no event log is bound (a bare RedisManager outside ``open_zen``).
        """
        events = self._bound(self._events, "publish_agent_event")
        return await events.publish_agent_event(agent_id, event_type, data)

    _publish_agent_event = publish_agent_event  # the seed's private name, kept as an alias

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

    def subscribe(self, *channels: str, retry_connect: bool = False) -> Subscription:
        """A subscription to full channel names (build them with ``Keyspace.key``), to use as
        ``async with redis.subscribe(ch) as sub: async for item in sub: ...``. It reconnects
        by itself and yields :class:`Reconnected` after each reconnect.

        Args:
            channels: the full channel names.
            retry_connect: wait out a server that cannot be reached on entry (with the
                reconnect backoff) instead of raising: for background subscribers, which
                must outlive an outage or a failover at their start.

        Raises:
            ValidationError: no channel given.
            BackendError, AuthError: on entry, the server cannot be reached or refused the
                credentials (unless ``retry_connect``).
        """
        if not channels:
            raise ValidationError("subscribe() needs at least one channel name")
        backend = self._backend
        options: dict[str, Any] = {
            "on_change": self._count_sub,
            "user": self.settings.username,
            "retry_connect": retry_connect,
        }
        if backend.cluster is not None:
            return Subscription(backend.cluster.pubsub, channels, bound=backend.bound, **options)
        client = backend.clients["streams"]
        assert isinstance(client, Redis)
        return Subscription(client.pubsub, channels, **options)

    def _count_sub(self, delta: int) -> None:
        self._subscriptions += delta

    async def publish(self, channel: str, data: bytes) -> int:
        """PUBLISH ``data`` on a full channel name; returns how many subscribers got it.

        Pub/sub carries hints, which subscribers must tolerate twice: so a publish whose
        reply was lost is sent again.
        """
        receivers: int = await self._keyspaces["streams"].execute(
            "PUBLISH", channel, data, idempotent=True
        )
        return receivers

    def pool_usage(self) -> dict[str, dict[str, int]]:
        """Connections in use and idle, per pool (per node on Cluster)."""
        return self._backend.pool_usage()

    def connections_in_use(self) -> int:
        """Connections checked out of every pool right now by commands (the dedicated
        connection of each open subscription is not counted)."""
        return self._backend.connections_in_use() - self._subscriptions

    async def get_health_status(self) -> dict[str, Any]:
        """The seed's health dict (redis_available, cluster_status, active_agents,
        circuit_breaker_failures, average_latency, database_status, last_health_check) plus
        topology, server version, breaker state, pool usage, memory facts and alerts.

        Uses the background task's latest report, checking now if there is none yet.
        """
        report = self.health.last_report or await self.health.check()
        return self._status(report)

    async def check_health(self) -> dict[str, Any]:
        """Run a health check now and return the status dict."""
        return self._status(await self.health.check())

    def _status(self, report: HealthReport) -> dict[str, Any]:
        status = self.health.status(report)
        status["degraded_mode"] = self.degraded.status()
        return status


@contextlib.asynccontextmanager
async def open_redis_manager(settings: Settings) -> AsyncIterator[RedisManager]:
    """Open the core for ``settings``: start the embedded server if asked for, build the
    pools, load the Lua scripts, run a first health check and start the health task.

    A configured server that is unreachable is reported (log and health status), never
    replaced by the embedded one.

    Raises:
        ConfigError: an embedded data directory that cannot be created or written, or an
            outage journal (REDIS_OUTAGE_JOURNAL) another process holds.
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
        tls = await anyio.to_thread.run_sync(tls_context, settings)
        backend = build_backend(settings, driver, tls)
        stack.push_async_callback(_shielded_close, backend)
        journal = await OutageJournal.open(
            path=settings.redis_outage_journal, max_ops=settings.redis_outage_journal_max_ops
        )
        stack.push_async_callback(journal.aclose)  # releases the file to the next process
        manager = RedisManager(settings, backend, scripts, embedded=embedded, journal=journal)
        try:
            report = await manager.health.check()
        except ZenError as exc:
            report = None
            log.warning("redis_first_check_failed", error=str(exc))
        if report is not None and not report.available:
            log.warning("redis_unreachable", topology=backend.topology, errors=report.errors)
        async with background(health=manager.health.run()):
            yield manager


async def _shielded_close(backend: Backend) -> None:
    with anyio.CancelScope(shield=True):
        await backend.aclose()
