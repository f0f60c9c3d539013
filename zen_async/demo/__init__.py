"""``zen-async demo``: a fleet of simulated agents through full lifecycles, then a check of
every invariant the platform promises.

Each agent is created (in bulk), moved ``initializing -> ready``, leases a port and sends a
heartbeat; then, once per work cycle, it goes ``ready -> running``, claims a task (which
leases it a second port), starts it, stores a memory and searches for it, publishes an
event, sends a heartbeat, completes the task and goes back to ``ready``; at the end it moves
``terminating -> terminated`` and gives its port back. Every step is timed. Afterwards the
demo reads the agents, audit trails, shard streams, port leases and tasks back and checks
the invariants, each reported PASS or FAIL.

It runs on one event loop with at most ``concurrency`` agents in flight, in a tenant of its
own (``demo-<UTC time>-<random>`` by default), so it never reads or writes the configured
namespace's data; unless asked to keep them, it deletes its agents, tasks and memories at
the end (the tenant's event streams and audit trails stay: zen_async never deletes an audit
trail).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any, TextIO

from zen_async.config import Settings
from zen_async.demo._checks import verify
from zen_async.demo._fleet import Fleet
from zen_async.demo.report import DemoOptions, DemoReport, Invariant, OpSummary, Progress
from zen_async.errors import BackendError, ValidationError
from zen_async.services import open_zen

__all__ = ["DemoOptions", "DemoReport", "Invariant", "OpSummary", "run_demo", "write_demo"]


def _default_tenant() -> str:
    return f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"


def _describe(status: dict[str, Any]) -> str:
    server = status.get("server") or {}
    return (
        f"{server.get('name', '?')} {server.get('version', '?')}, {status['topology']} "
        f"({status['db_layout']} layout)"
    )


async def run_demo(
    settings: Settings, options: DemoOptions, *, progress: TextIO | None = None
) -> DemoReport:
    """Run the demo on the deployment ``settings`` name (or the embedded server).

    Args:
        settings: the deployment.
        options: what to simulate.
        progress: where to draw the progress lines (None: nowhere).

    Raises:
        ValidationError: a bad tenant, a tenant that already holds agents, or more agents
            than the port range can lease to at once.
        BackendError: the deployment is not available.
    """
    ports = settings.redis_port_range_end - settings.redis_port_range_start
    if options.agents + options.concurrency > ports:
        raise ValidationError(
            f"agents={options.agents} + concurrency={options.concurrency} need that many "
            f"ports at once, but REDIS_PORT_RANGE_START..END holds {ports}: use fewer agents "
            "or a wider range"
        )
    tenant = options.tenant or _default_tenant()
    async with open_zen(settings) as root:
        status = await root.redis.check_health()
        if not status["redis_available"]:
            errors = "; ".join(status.get("errors") or []) or "no reply"
            raise BackendError(f"the Redis deployment is not available: {errors}")
        zen = root.for_tenant(tenant)
        existing = sum((await zen.agents.count_by_state()).values())
        if existing:
            raise ValidationError(
                f"tenant {tenant!r} already holds {existing} agents: pick another --tenant"
            )
        fleet = Fleet(zen, options, Progress(progress))
        started = time.perf_counter()
        await fleet.run()
        invariants = await verify(fleet)
        if not options.keep:
            await fleet.cleanup()
        seconds = time.perf_counter() - started
    return DemoReport(
        options=options,
        tenant=tenant,
        server=_describe(status),
        ops=fleet.rec.summary(),
        invariants=invariants,
        phases=fleet.phases,
        seconds=seconds,
        failures=[f"{a.agent_id}: {a.failure}" for a in fleet.agents if a.failure][:5],
    )


async def write_demo(
    settings: Settings, options: DemoOptions, *, out: TextIO, progress: TextIO | None
) -> int:
    """Run the demo, write its summary to ``out``; 0 when every invariant holds, else 1.

    Raises:
        ValidationError, BackendError: as :func:`run_demo`.
    """
    report = await run_demo(settings, options, progress=progress)
    out.write(report.render())
    out.flush()
    return 0 if report.passed else 1
