"""What the scale-out benchmarks (fleet, cluster, scaling, tasks) share: a local Redis Cluster
started and stopped by the module, Settings for a standalone server or that cluster, raw
redis-py clients of either, and a CPU watch that leaves out every process of the measurement
(the servers, the cluster's six nodes, the client processes)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Final

import anyio
from redis.asyncio import Redis, RedisCluster

from benchmarks._harness import CpuWatch
from zen_async import Settings
from zen_async.testing import ClusterGroup
from zen_async.testing.deployments import settings_for

BATCH: Final = 500
"""REDIS_PIPELINE_BATCH_SIZE for zen, and the chunk size of every raw pipeline."""
POOL: Final = 50
"""Connections per pool, zen's (REDIS_MAX_CONNECTIONS) and the raw clients' alike."""
SOCKET_TIMEOUT: Final = 10.0
"""Seconds: generous, so that a loaded 2-core machine measures slow calls instead of failing."""

RawClient = Redis | RedisCluster
"""A raw redis-py client of a standalone server or of a cluster."""


def new_tenant(label: str) -> str:
    """A tenant of its own for one run: ``bench-<label>-<hex>``."""
    return f"bench-{label}-{uuid.uuid4().hex[:8]}"


def standalone_settings(url: str, tenant: str, **overrides: Any) -> Settings:
    """Settings for the standalone server at ``url``, bound to ``tenant``."""
    values: dict[str, Any] = {
        "redis_url": url,
        "redis_embedded": "false",
        "redis_pipeline_batch_size": BATCH,
        "redis_max_connections": POOL,
        "redis_socket_timeout": SOCKET_TIMEOUT,
        "redis_namespace": tenant,
        **overrides,
    }
    return Settings(_env_file=None, **values)


def cluster_settings(cluster: ClusterGroup, tenant: str, **overrides: Any) -> Settings:
    """Settings for the local ``cluster``, bound to ``tenant``."""
    values: dict[str, Any] = {
        "redis_pipeline_batch_size": BATCH,
        "redis_max_connections": POOL,
        "redis_socket_timeout": SOCKET_TIMEOUT,
        "redis_connect_timeout": 2.0,
        "redis_namespace": tenant,
        **overrides,
    }
    return settings_for(cluster, **values)


@contextlib.asynccontextmanager
async def local_cluster(flavor: str = "redis") -> AsyncIterator[ClusterGroup]:
    """A cluster of 3 masters + 3 replicas on free loopback ports, stopped (and its files
    removed) on exit."""
    with tempfile.TemporaryDirectory(prefix="zen-bench-cluster-") as tmp:
        group = ClusterGroup("valkey" if flavor == "valkey" else "redis", base_dir=Path(tmp))
        await anyio.to_thread.run_sync(group.start)
        try:
            yield group
        finally:
            await anyio.to_thread.run_sync(group.stop)


def cluster_client(cluster: ClusterGroup, *, in_flight: int = POOL) -> RedisCluster:
    """A raw redis-py cluster client of ``cluster``. Its node pools raise instead of waiting
    when full (zen puts a semaphore in front of them), so it may open as many connections
    per node as calls in flight: ``in_flight`` (at least zen's pool size)."""
    first = cluster.nodes[0]
    return RedisCluster(host=first.host, port=first.port, max_connections=max(POOL, in_flight))


def cluster_pids(cluster: ClusterGroup) -> list[int]:
    """The process ids of the cluster's running nodes."""
    return [pid for pid in (node.pid for node in cluster.nodes) if pid is not None]


class ProcessesWatch(CpuWatch):
    """A :class:`CpuWatch` that leaves out several processes besides this one: every server
    of the measurement and the client processes it started. ``pids`` may grow (see
    :meth:`add`); a process that exited no longer counts."""

    def __init__(self, pids: Iterable[int]) -> None:
        self.pids = [p for p in pids if p]
        super().__init__(None)

    def add(self, pids: Iterable[int]) -> None:
        """Leave these processes out too, from the next :meth:`mark` on."""
        self.pids.extend(p for p in pids if p and p not in self.pids)

    def _sample(self) -> tuple[float, float, float, float]:
        wall, busy, own, _ = super()._sample()
        servers = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                rest = stat[stat.rindex(")") + 2 :].split()
                # utime, stime of the process and of its waited-for children
                servers += sum(int(v) for v in rest[11:15]) / self._hz
        return wall, busy, own, servers


def loadavg() -> tuple[float, float, float]:
    """``os.getloadavg()``, or NaNs where it is not available."""
    try:
        return os.getloadavg()
    except OSError:
        nan = float("nan")
        return (nan, nan, nan)


def monotonic() -> float:
    """The system-wide monotonic clock (CLOCK_MONOTONIC: the same in every process of the
    machine, so client processes can be started and timed together)."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)
