"""Health: a background task that pings every pool on an interval, measures latency, reads
server and memory facts, checks the cluster state or the Sentinel master, evaluates the alert
thresholds, and keeps the latest report for ``get_health_status()``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import anyio
import structlog

from zen_async.config import Settings
from zen_async.errors import BackendError, DegradedError, ZenError
from zen_async.store._errors import RedisFailure
from zen_async.store.breaker import BreakerState, bypassing_hold
from zen_async.store.keyspace import CommandRunner, Keyspace
from zen_async.store.topology import Backend

__all__ = ["Alert", "EventRate", "HealthMonitor", "HealthReport"]

log = structlog.get_logger(__name__)

# The seed's names for the database_status entries; "pubsub" is the streams keyspace.
SEED_DATABASES: Final[dict[str, str]] = {
    "conversations": "conversations",
    "tasks": "tasks",
    "state": "state",
    "memory": "memory",
    "pubsub": "streams",
    "cache": "cache",
    "metrics": "metrics",
}
_LATENCY_SAMPLES: Final = 60

# Domain code reports failures under these names; the alert rules count them.
CONSOLIDATION_FAILURE: Final = "memory_consolidation_failure"
PORT_ALLOCATION_FAILURE: Final = "port_allocation_failure"


class EventRate:
    """Counts events in a sliding time window."""

    __slots__ = ("_clock", "_times", "window")

    def __init__(self, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._times: deque[float] = deque()

    def add(self) -> None:
        """Record one event now."""
        self._times.append(self._clock())

    def count(self) -> int:
        """Events within the window."""
        horizon = self._clock() - self.window
        while self._times and self._times[0] < horizon:
            self._times.popleft()
        return len(self._times)


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert rule that currently fires."""

    name: str
    message: str
    value: float
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        """Plain form for the status dict."""
        return {
            "name": self.name,
            "message": self.message,
            "value": self.value,
            "threshold": self.threshold,
        }


@dataclass(slots=True)
class HealthReport:
    """The result of one health check."""

    checked_at: datetime
    database_status: dict[str, str]
    """Per keyspace: 'healthy', 'unavailable' (unreachable, timed out, failing over or the
    circuit open) or 'unhealthy' (any other error); the cause is in ``errors``, once."""
    average_latency_ms: float
    """Mean PING round trip over the recent samples; NaN when this check measured none."""
    server: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)
    sentinel: dict[str, Any] = field(default_factory=dict)
    active_agents: int = 0
    errors: list[str] = field(default_factory=list)
    """What went wrong, each cause once (an outage names the server and the error)."""

    @property
    def available(self) -> bool:
        """True when every keyspace answered."""
        return all(s == "healthy" for s in self.database_status.values())


class HealthMonitor:
    """Checks the deployment and evaluates the seed's alert thresholds.

    Args:
        settings: for the interval and the thresholds.
        backend: the clients (for pool usage and per-node facts).
        keyspaces: every keyspace of the default tenant, by name.
        runner: the command runner (its breaker's state is reported).
        clock: monotonic clock (a fake in tests).
    """

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        keyspaces: dict[str, Keyspace],
        runner: CommandRunner,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._keyspaces = keyspaces
        self._runner = runner
        self._breaker = runner.breaker
        self._clock = clock
        self._latencies: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        self._latency_high_since: float | None = None
        self._report: HealthReport | None = None
        self._lock = anyio.Lock()
        self.active_agents_source: Callable[[], Awaitable[int]] | None = None
        """Set by the agents domain: counts agents from its indexes."""
        self._listeners: list[Callable[[str], None]] = []
        self._rates = {
            CONSOLIDATION_FAILURE: EventRate(3600.0, clock=clock),
            PORT_ALLOCATION_FAILURE: EventRate(60.0, clock=clock),
        }

    def record_event(self, name: str) -> None:
        """Count one failure event for the alert rules (e.g. ``PORT_ALLOCATION_FAILURE``)
        and tell the listeners (metrics).

        Raises:
            KeyError: an event name no alert rule counts.
        """
        self._rates[name].add()
        for listener in self._listeners:
            listener(name)

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(name)`` on every :meth:`record_event` (synchronously: keep it
        cheap)."""
        self._listeners.append(listener)

    @property
    def last_report(self) -> HealthReport | None:
        """The latest report, or None before the first check."""
        return self._report

    async def run(self) -> None:
        """Check every ``REDIS_HEALTH_CHECK_INTERVAL`` seconds until cancelled."""
        while True:
            await anyio.sleep(self._settings.redis_health_check_interval)
            try:
                await self.check()
            except ZenError as exc:  # a check never kills the loop; the report says why
                log.warning("health_check_failed", error=str(exc))

    async def check(self) -> HealthReport:
        """Run one health check now and keep its report.

        It passes a breaker held for the journal replay: a ping reorders no write, and it
        is how an outage's end is noticed."""
        async with self._lock:
            with bypassing_hold():
                report = await self._check()
            self._report = report
            return report

    async def _check(self) -> HealthReport:
        statuses: dict[str, str] = {}
        by_client: dict[int, str] = {}
        errors: list[str] = []
        samples: list[float] = []
        master = await self._follow_master(errors)
        for seed_name, ks_name in SEED_DATABASES.items():
            ks = self._keyspaces[ks_name]
            client_id = id(self._backend.clients[ks_name])
            if client_id in by_client:  # the prefixed layout shares one pool
                statuses[seed_name] = by_client[client_id]
                continue
            status, latency, cause = await self._ping(ks)
            if latency is not None:
                samples.append(latency)
            if cause is not None and cause not in errors:  # one outage, said once
                errors.append(cause)
            statuses[seed_name] = by_client[client_id] = status
        average = math.nan  # nothing measured now: no figure, rather than a stale or 0 ms one
        if samples:
            self._latencies.extend(samples)
            average = sum(self._latencies) / len(self._latencies)
            self._track_latency(average)
        report = HealthReport(
            checked_at=datetime.now(UTC),
            database_status=statuses,
            average_latency_ms=round(average, 3),
            errors=errors,
        )
        if master is not None:
            # What the sentinels named, even when the pings were refused (a breaker opened
            # by the failover itself): it is their answer, not the master's.
            report.sentinel = self._sentinel_facts(master)
        if report.available:
            await self._server_facts(report)
        if self.active_agents_source is not None and report.available:
            try:
                report.active_agents = await self.active_agents_source()
            except ZenError as exc:
                report.errors.append(f"active_agents: {exc}")
        return report

    async def _ping(self, ks: Keyspace) -> tuple[str, float | None, str | None]:
        """The keyspace's state, the round trip in ms (when it answered) and the cause
        (when it did not)."""
        started = time.perf_counter()
        try:
            await ks.execute("PING")
        except DegradedError as exc:
            # Refused without trying: the cause is the error that opened the circuit.
            return "unavailable", None, self._breaker.last_error or str(exc)
        except BackendError as exc:
            return ("unavailable" if exc.retryable else "unhealthy"), None, str(exc)
        except ZenError as exc:
            return "unhealthy", None, str(exc)
        return "healthy", (time.perf_counter() - started) * 1000.0, None

    def _track_latency(self, average_ms: float) -> None:
        if average_ms > self._settings.redis_alert_latency_ms:
            if self._latency_high_since is None:
                self._latency_high_since = self._clock()
        else:
            self._latency_high_since = None

    async def _server_facts(self, report: HealthReport) -> None:
        ks = self._keyspaces["state"]
        try:
            info = await self._info(ks, "server")
            memory = await self._info(ks, "memory")
            report.server = {
                "name": "valkey" if "valkey_version" in info else "redis",
                "version": str(info.get("valkey_version") or info.get("redis_version", "")),
                "mode": str(info.get("redis_mode") or info.get("server_mode", "")),
            }
            report.memory = {
                "used_memory": int(memory.get("used_memory", 0)),
                "maxmemory": int(memory.get("maxmemory", 0)),
                "maxmemory_policy": str(memory.get("maxmemory_policy", "")),
            }
            if self._backend.topology == "cluster":
                report.cluster = await self._cluster_facts(ks)
        except ZenError as exc:
            report.errors.append(f"server facts: {exc}")

    async def _on_nodes(self, ks: Keyspace, *args: str) -> list[Any]:
        """Run a server command: on the one server, or on every cluster primary."""
        cluster = self._backend.cluster
        if cluster is None:
            return [await ks.execute(*args)]
        # Named nodes, not the PRIMARIES flag: with a flag redis-py still looks for a key.
        reply = await self._runner.call(
            lambda: cluster.execute_command(*args, target_nodes=cluster.get_primaries()),
            idempotent=True,
        )
        return list(reply.values()) if isinstance(reply, dict) else [reply]

    async def _info(self, ks: Keyspace, section: str) -> dict[str, Any]:
        """INFO ``section``; on Cluster, the first primary's, with used_memory summed."""
        nodes = [n for n in await self._on_nodes(ks, "INFO", section) if isinstance(n, dict)]
        if not nodes:
            raise BackendError("INFO returned no reply")
        combined: dict[str, Any] = dict(nodes[0])
        if section == "memory":
            combined["used_memory"] = sum(int(n.get("used_memory", 0)) for n in nodes)
        return combined

    async def _cluster_facts(self, ks: Keyspace) -> dict[str, Any]:
        replies = await self._on_nodes(ks, "CLUSTER", "INFO")
        infos = [_parse_info_text(r) for r in replies]
        states = {i.get("cluster_state", "unknown") for i in infos}
        first = infos[0] if infos else {}
        return {
            "state": states.pop() if len(states) == 1 else "inconsistent",
            "slots_ok": int(first.get("cluster_slots_ok", 0)),
            "known_nodes": int(first.get("cluster_known_nodes", 0)),
            "size": int(first.get("cluster_size", 0)),
            "primaries": len(infos),
        }

    async def _follow_master(self, errors: list[str]) -> tuple[str, int] | None:
        """On Sentinel, the master the sentinels name now, with every pool pointed at it
        before the pings (so a resumed former master is neither probed nor read); None
        elsewhere, or when the sentinels cannot be asked (the reason goes to ``errors``)."""
        if self._backend.sentinel is None:
            return None
        try:
            # Not through the breaker: the sentinels answering says nothing of the master.
            return await self._backend.follow_master()
        except RedisFailure as exc:
            # The message names the sentinels (Settings.server_label): the pings that fail
            # next report the same cause, which then appears once.
            errors.append(str(self._runner.map(exc)))
            return None

    def _sentinel_facts(self, master: tuple[str, int]) -> dict[str, Any]:
        sentinel = self._backend.sentinel
        assert sentinel is not None
        host, port = master
        return {
            "master_name": self._backend.master_name,
            "master": f"{host}:{port}",
            "sentinels": len(sentinel.sentinels),
        }

    def alerts(self, report: HealthReport) -> list[Alert]:
        """Evaluate the alert thresholds against ``report`` and the live counters."""
        s = self._settings
        fired: list[Alert] = []
        stats = self._breaker.statistics()
        if (
            stats.state is not BreakerState.CLOSED
            and stats.open_for > s.redis_alert_breaker_open_seconds
        ):
            fired.append(
                Alert(
                    "circuit_breaker_open",
                    f"circuit breaker open for {stats.open_for:.0f}s",
                    stats.open_for,
                    s.redis_alert_breaker_open_seconds,
                )
            )
        if self._latency_high_since is not None and not math.isnan(report.average_latency_ms):
            high_for = self._clock() - self._latency_high_since
            if high_for >= s.redis_alert_latency_window_seconds:
                fired.append(
                    Alert(
                        "high_latency",
                        f"average latency {report.average_latency_ms:.1f} ms above "
                        f"{s.redis_alert_latency_ms:g} ms for {high_for:.0f}s",
                        report.average_latency_ms,
                        s.redis_alert_latency_ms,
                    )
                )
        if report.active_agents > s.redis_alert_active_agents:
            fired.append(
                Alert(
                    "too_many_agents",
                    f"{report.active_agents} active agents",
                    report.active_agents,
                    s.redis_alert_active_agents,
                )
            )
        failures = self._rates[CONSOLIDATION_FAILURE].count()
        if failures > s.redis_alert_consolidation_failures_per_hour:
            fired.append(
                Alert(
                    "memory_consolidation_failures",
                    f"{failures} memory consolidation failures in the last hour",
                    failures,
                    s.redis_alert_consolidation_failures_per_hour,
                )
            )
        failures = self._rates[PORT_ALLOCATION_FAILURE].count()
        if failures > s.redis_alert_port_failures_per_minute:
            fired.append(
                Alert(
                    "port_allocation_failures",
                    f"{failures} port allocation failures in the last minute",
                    failures,
                    s.redis_alert_port_failures_per_minute,
                )
            )
        policy = str(report.memory.get("maxmemory_policy", ""))
        if policy.startswith("allkeys-"):
            fired.append(
                Alert(
                    "eviction_policy_unsafe",
                    f"maxmemory-policy {policy} can evict keys without a TTL: agent records and "
                    "port leases would vanish silently; use noeviction or a volatile-* policy",
                    1,
                    0,
                )
            )
        maxmemory = int(report.memory.get("maxmemory", 0))
        used = int(report.memory.get("used_memory", 0))
        if maxmemory and used / maxmemory > 0.9:
            fired.append(
                Alert(
                    "memory_near_limit",
                    f"used_memory at {used / maxmemory:.0%} of maxmemory",
                    used / maxmemory,
                    0.9,
                )
            )
        return fired

    def status(self, report: HealthReport) -> dict[str, Any]:
        """The seed's ``get_health_status()`` dict for ``report``, with the additions
        (``address``: where the deployment is; ``average_latency`` is None when the check
        measured nothing; ``errors``: each cause once, naming the server)."""
        stats = self._breaker.statistics()
        topology = self._backend.topology
        cluster_status = (
            report.cluster.get("state", "unknown") if topology == "cluster" else ("n/a")
        )
        return {
            "redis_available": report.available and stats.state is BreakerState.CLOSED,
            "cluster_status": cluster_status,
            "active_agents": report.active_agents,
            "circuit_breaker_failures": stats.total_failures,
            # None: the check measured nothing (the server did not answer).
            "average_latency": None
            if math.isnan(report.average_latency_ms)
            else report.average_latency_ms,
            "database_status": dict(report.database_status),
            "last_health_check": report.checked_at.isoformat(),
            "topology": topology,
            "address": self._settings.server_label,
            "db_layout": self._backend.layout,
            "server": dict(report.server),
            "server_version": report.server.get("version", ""),
            "circuit_breaker": {
                "state": stats.state.value,
                "consecutive_failures": stats.consecutive_failures,
                "times_opened": stats.times_opened,
                "rejected_calls": stats.rejected_calls,
                "open_for_seconds": round(stats.open_for, 3),
                "last_error": stats.last_error,
            },
            "pool_usage": self._backend.pool_usage(),
            "transport": {
                "kind": self._settings.redis_transport,
                "multiplexed": self._backend.mux_usage(),
            },
            "memory": dict(report.memory),
            "cluster": dict(report.cluster),
            "sentinel": dict(report.sentinel),
            "alerts": [a.as_dict() for a in self.alerts(report)],
            "errors": list(report.errors),
        }


def _parse_info_text(reply: Any) -> dict[str, str]:
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out
