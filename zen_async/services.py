"""The facade: :func:`open_zen` builds every service and owns every lifetime."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import anyio
import structlog

from zen_async._tasks import background
from zen_async.agents.port_reserve import ReservingPortAllocator
from zen_async.agents.state import AgentStateManager
from zen_async.agents.tasks import AgentTaskManager
from zen_async.cache import Cache
from zen_async.config import Settings
from zen_async.conversations import ConversationStore
from zen_async.degraded import JournalEntry, Replayable
from zen_async.errors import ValidationError, ZenError
from zen_async.events import EventLog
from zen_async.events.export import EventExporter
from zen_async.logs import configure_logging
from zen_async.memory import AgentMemoryManager, Embedder, embedder_from_settings
from zen_async.metrics import (
    MEMORY_CONSOLIDATION_FAILURES,
    PORT_ALLOCATION_FAILURES,
    PORT_ALLOCATION_SUCCESSES,
    Metrics,
)
from zen_async.store.health import CONSOLIDATION_FAILURE, PORT_ALLOCATION_FAILURE
from zen_async.store.manager import RedisManager, open_redis_manager

__all__ = ["Zen", "open_zen"]

_TENANT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_JOURNALED_SERVICES = frozenset({"agents", "cache", "conversations", "events", "memory", "ports"})
_FAILURE_COUNTERS = {
    PORT_ALLOCATION_FAILURE: PORT_ALLOCATION_FAILURES,
    CONSOLIDATION_FAILURE: MEMORY_CONSOLIDATION_FAILURES,
}


class Zen:
    """Everything zen_async offers, opened once by :func:`open_zen`.

    Attributes:
        settings: the effective settings.
        tenant: the tenant this view is bound to.
        redis: the core: pools, pipelines, scripts, breaker, health.
        events: the event log (Streams) and its consumers.
        ports: distributed port leases.
        agents: agent records, lifecycle, liveness.
        tasks: agent tasks: priority queues per agent type, claims, timeouts.
        memory: agent memory with exact vector search (a tenant view's index syncs on
            demand; only the default tenant's runs in the background).
        conversations: conversation threads (Zen MCP Server's model).
        cache: a cache with single-flight fills.
        metrics: buffered metric series and the Prometheus exposition.
    """

    def __init__(
        self,
        redis: RedisManager,
        *,
        tenant: str | None = None,
        metrics: Metrics | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        settings = redis.settings
        self.settings = settings
        self.tenant = tenant or settings.namespace
        self.redis = redis
        self.metrics = (
            metrics.for_tenant(self.tenant)
            if metrics is not None
            else Metrics(redis, tenant=self.tenant, enabled=settings.redis_enable_metrics)
        )
        self.events = EventLog(redis, tenant=self.tenant)
        self.ports = ReservingPortAllocator(
            redis,
            tenant=self.tenant,
            on_event=self._port_event,
            # One pre-leased block per process: the root's (a tenant view has none).
            reserve=settings.redis_port_reserve if metrics is None else 0,
            reserve_ttl=settings.redis_port_reserve_ttl,
        )
        self.agents = AgentStateManager(
            redis,
            self.events,
            ports=self.ports,
            tenant=self.tenant,
            metrics=self.metrics,
            background_listener=metrics is None,  # a tenant view's waits listen for themselves
        )
        self.tasks = AgentTaskManager(
            redis, ports=self.ports, events=self.events, tenant=self.tenant
        )
        self.embedder = embedder or embedder_from_settings(settings)
        self.memory = AgentMemoryManager(
            redis, self.events, tenant=self.tenant, metrics=self.metrics, embedder=self.embedder
        )
        self.conversations = ConversationStore(redis, tenant=self.tenant)
        self.cache = Cache(redis, tenant=self.tenant)
        self._views: dict[str, Zen] = {}  # tenant views made to replay journaled writes

    async def _port_event(self, event_type: str, agent_id: str, data: dict[str, Any]) -> None:
        """Port leases go to the agent's audit trail (and allocations to the metrics)."""
        if event_type == "port_allocated":
            self.metrics.count(PORT_ALLOCATION_SUCCESSES)
        change = f"{event_type}|{data['host']}|{data['port']}|{data['fencing_token']}|{agent_id}"
        await self.events.record(event_type, data, key=change, agent_id=agent_id)

    def _on_health_event(self, name: str) -> None:
        counter = _FAILURE_COUNTERS.get(name)
        if counter is not None:
            self.metrics.count(counter)

    def _replayer(self, tenant: str, service: str) -> Replayable:
        """The service that replays a journaled write of ``tenant``."""
        if service not in _JOURNALED_SERVICES:
            raise ValidationError(f"the outage journal holds an unknown kind of write: {service}")
        view = self if tenant == self.tenant else self._views.get(tenant)
        if view is None:
            view = self._views[tenant] = self.for_tenant(tenant)
        replayer: Replayable = getattr(view, service)
        return replayer

    async def _record_resolution(self, entry: JournalEntry, exc: ZenError) -> None:
        """A journaled write the server refused on replay becomes an event: in the agent's
        audit trail when it concerns one, else in the tenant's ``outage_journal`` stream."""
        events = self._replayer(entry.tenant, "events")
        assert isinstance(events, EventLog)
        data = {"kind": entry.kind, "op_id": entry.op_id, "error": str(exc), "args": entry.args}
        key = f"resolution/{entry.op_id}"
        agent_id = entry.args.get("agent_id")
        if isinstance(agent_id, str):
            await events.publish_agent_event(
                agent_id, "journal_write_refused", data, idempotency_key=key
            )
        else:
            await events.publish(
                "outage_journal", "journal_write_refused", data, idempotency_key=key
            )

    async def _resolution_recorded(self, entry: JournalEntry) -> bool:
        """Whether a refusal of ``entry`` was already recorded (by a replay that died before
        it noted the entry done): then it is not applied now, when it might succeed."""
        events = self._replayer(entry.tenant, "events")
        assert isinstance(events, EventLog)
        agent_id = entry.args.get("agent_id")
        key = f"resolution/{entry.op_id}"
        if isinstance(agent_id, str):
            return await events.was_published(key, agent_id=agent_id)
        return await events.was_published(key, stream="outage_journal")

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
        return Zen(self.redis, tenant=tenant, metrics=self.metrics, embedder=self.embedder)


@contextlib.asynccontextmanager
async def open_zen(settings: Settings | None = None) -> AsyncIterator[Zen]:
    """Open zen_async: connection pools, background tasks and (when no server is configured,
    or ``REDIS_EMBEDDED=true``) a private embedded valkey-server. Leaving the block closes
    everything, also when cancelled. Unless the application configured structlog, logs go
    to stderr as JSON lines at ``ZEN_LOG_LEVEL`` (never to stdout).

    Args:
        settings: the settings; ``Settings()`` (environment and ``.env``) when omitted.

    Raises:
        ConfigError: invalid settings.
        BackendError: the embedded server would not start.
    """
    if settings is None:  # reads the environment and .env: file I/O, kept off the loop
        settings = await anyio.to_thread.run_sync(Settings)
    if not structlog.is_configured():
        # structlog's default prints every level to stdout, which may be a protocol wire
        # (MCP stdio): unless the application configured it, log JSON to stderr.
        configure_logging(settings.zen_log_level)
    async with open_redis_manager(settings) as redis:
        zen = Zen(redis)
        redis.bind_services(
            events=zen.events, ports=zen.ports, cache=zen.cache, metrics=zen.metrics
        )
        redis.health.active_agents_source = zen.agents.count_active
        redis.health.add_listener(zen._on_health_event)
        redis.degraded.resolver = zen._replayer
        redis.degraded.on_resolution = zen._record_resolution
        redis.degraded.resolution_recorded = zen._resolution_recorded
        tasks = {
            "event_trim": zen.events.run(),
            "agents": zen.agents.run(),
            "tasks": zen.tasks.run(),
            "memory": zen.memory.run(),
            "cache_hints": zen.cache.listen(),
            "metrics": zen.metrics.run(),
            "journal_replay": redis.degraded.run(),
            "port_reserve": zen.ports.run(),
        }
        if zen.settings.redis_event_export:
            tasks["event_export"] = EventExporter(zen.events).run()
        try:
            async with background(**tasks):
                yield zen
        finally:
            await zen.metrics.aclose()  # what was recorded reaches Redis before pools close
