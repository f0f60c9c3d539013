"""Faults injected under a running 1000-agent workload: no caller hangs past its timeout, and
no acknowledged transition is lost (a client-side ledger against the final state and the
audit trails). The recovery times printed here are reported by ``benchmarks/failover.py``.
"""

from __future__ import annotations

import gc
import os
import platform
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from zen_async import open_zen
from zen_async.testing import ClusterGroup, SentinelGroup, Standalone
from zen_async.testing.deployments import settings_for
from zen_async.testing.marks import UNCLOSED_BY_A_FAULT
from zen_async.testing.workload import LoadReport, render_reliability, run_under_fault

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    *UNCLOSED_BY_A_FAULT,
]

AGENTS = 1000
TIMEOUTS: dict[str, Any] = {
    "redis_socket_timeout": 1.0,
    "redis_connect_timeout": 0.5,
    "redis_pool_timeout": 2.0,
    "redis_max_connections": 64,
}
REPLICATED: dict[str, Any] = {"redis_durability": "replicated", "redis_durability_timeout_ms": 500}
# The caller's own budget, from the timeouts above: a pool wait, then up to four
# connect + read rounds (the call itself, and on a failover the master lookup asking each of
# three sentinels, or the Cluster client's refresh of its slot map), plus scheduling slack
# for 1000 coroutines on a 2-core machine (a call of 10.5 s was measured on a 2.5 GHz Xeon
# while the rest of the suite's servers ran: the slack is for that, a hang is far longer).
CALL_BOUND = 2.0 + 4 * (0.5 + 1.0) + 5.0


OUTAGE_CHECKER_HEADING = "## Randomized outage checker"
"""Where the outage checker's section of docs/reliability.md starts (it writes that part)."""


@pytest.fixture(autouse=True)
def collect_dropped_connections() -> Iterator[None]:
    """Finalize what a failover dropped while this module's warning filters apply."""
    yield
    gc.collect()


REPORTS: list[LoadReport] = []
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def reliability_table() -> Iterator[None]:
    """After the module: the table of docs/reliability.md, written there when
    WRITE_RELIABILITY_DOCS=1 (``make reliability``), else to build/reliability.md."""
    yield
    if not REPORTS:
        return
    header = (
        f"Last run: {datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}."
    )
    write_docs = os.environ.get("WRITE_RELIABILITY_DOCS") == "1"
    out = ROOT / ("docs" if write_docs else "build") / "reliability.md"
    out.parent.mkdir(exist_ok=True)
    # Keep what other generators own (the outage checker's section, from its heading on).
    kept = ""
    if out.exists():
        text = out.read_text(encoding="utf-8")
        at = text.find(OUTAGE_CHECKER_HEADING)
        kept = "" if at < 0 else "\n" + text[at:]
    out.write_text(render_reliability(REPORTS, header=header) + kept, encoding="utf-8")


def check(report: LoadReport) -> None:
    REPORTS.append(report)
    print(report.summary())
    assert report.acknowledged > AGENTS, "the load ran"
    assert report.recovery_seconds is not None, "every agent made progress after the fault"
    assert report.hung == 0, f"calls ran past their timeout budget: {report.summary()}"
    assert report.lost == [], report.lost[:10]


async def test_sentinel_master_kill_under_load_loses_no_replicated_transition(
    tmp_path: Path,
) -> None:
    group = SentinelGroup("redis", base_dir=tmp_path, down_after_ms=1000)
    await anyio.to_thread.run_sync(group.start)
    try:
        settings = settings_for(group, **REPLICATED, **TIMEOUTS)
        async with open_zen(settings) as zen:

            async def kill_master() -> None:
                group.current_master().kill()

            check(await run_under_fault(zen, "sentinel kill -9", kill_master, agents=AGENTS,
                                        call_bound=CALL_BOUND))  # fmt: skip
    finally:
        await anyio.to_thread.run_sync(group.stop)


async def test_sentinel_master_frozen_then_resumed_under_load(tmp_path: Path) -> None:
    group = SentinelGroup("valkey", base_dir=tmp_path, down_after_ms=1000)
    await anyio.to_thread.run_sync(group.start)
    try:
        settings = settings_for(group, **REPLICATED, **TIMEOUTS)
        async with open_zen(settings) as zen:
            old = group.current_master()

            async def freeze_until_failover() -> None:
                old.pause()
                try:
                    await anyio.to_thread.run_sync(lambda: group.wait_for_new_master(old))
                finally:
                    old.resume()  # comes back as a replica of the new master

            check(await run_under_fault(zen, "sentinel SIGSTOP/SIGCONT",
                                        freeze_until_failover, agents=AGENTS,
                                        call_bound=CALL_BOUND))  # fmt: skip
    finally:
        await anyio.to_thread.run_sync(group.stop)


async def test_cluster_master_kill_under_load_loses_no_replicated_transition(
    tmp_path: Path,
) -> None:
    group = ClusterGroup("redis", base_dir=tmp_path, node_timeout_ms=1000)
    await anyio.to_thread.run_sync(group.start)
    try:
        settings = settings_for(group, **REPLICATED, **TIMEOUTS)
        async with open_zen(settings) as zen:

            async def kill_a_master_and_bring_it_back() -> None:
                victim = group.masters()[0]
                victim.kill()
                await anyio.to_thread.run_sync(lambda: group.wait_for_promotion(victim))
                # The promoted replica has no replica of its own until the old master
                # rejoins (as a supervisor would restart it): replicated writes wait for it.
                await anyio.to_thread.run_sync(victim.start)

            check(await run_under_fault(zen, "cluster kill -9", kill_a_master_and_bring_it_back,
                                        agents=AGENTS, call_bound=CALL_BOUND))  # fmt: skip
    finally:
        await anyio.to_thread.run_sync(group.stop)


async def test_standalone_restart_with_aof_under_load(tmp_path: Path) -> None:
    group = Standalone(
        "valkey", base_dir=tmp_path, extra_args=["--appendonly", "yes", "--appendfsync", "always"]
    )
    await anyio.to_thread.run_sync(group.start)
    try:
        settings = settings_for(group, redis_degraded_mode=False, **TIMEOUTS)
        async with open_zen(settings) as zen:

            async def kill_and_restart() -> None:
                await anyio.to_thread.run_sync(group.server.kill)
                await anyio.sleep(0.5)
                await anyio.to_thread.run_sync(group.server.start)

            check(await run_under_fault(zen, "standalone kill -9 + restart (AOF always)",
                                        kill_and_restart, agents=AGENTS,
                                        call_bound=CALL_BOUND))  # fmt: skip
    finally:
        await anyio.to_thread.run_sync(group.stop)
