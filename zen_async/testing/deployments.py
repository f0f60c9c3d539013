"""Deployments for tests and local use: start a topology of real servers and get Settings
that point zen_async at it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from zen_async.config import Settings
from zen_async.testing.servers import (
    ClusterGroup,
    Flavor,
    SentinelGroup,
    ServerProcess,
    Standalone,
)

__all__ = [
    "TOPOLOGIES",
    "Deployments",
    "Group",
    "Kind",
    "Target",
    "masters",
    "settings_for",
    "start_group",
]

Kind = Literal["standalone", "sentinel", "cluster"]
Group = Standalone | SentinelGroup | ClusterGroup

TOPOLOGIES: list[tuple[Flavor, Kind]] = [
    ("redis", "standalone"),
    ("valkey", "standalone"),
    ("redis", "sentinel"),
    ("valkey", "sentinel"),
    ("redis", "cluster"),
    ("valkey", "cluster"),
]


def start_group(flavor: Flavor, kind: Kind, base_dir: Path, **options: Any) -> Group:
    """Start a deployment of ``kind`` with the ``flavor`` binary under ``base_dir``."""
    group: Group
    if kind == "standalone":
        group = Standalone(flavor, base_dir=base_dir, **options)
    elif kind == "sentinel":
        group = SentinelGroup(flavor, base_dir=base_dir, **options)
    else:
        group = ClusterGroup(flavor, base_dir=base_dir, **options)
    group.start()
    return group


def settings_for(group: Group, **overrides: Any) -> Settings:
    """Settings that point zen at ``group`` (never the embedded server)."""
    values: dict[str, Any] = {
        "redis_embedded": "false",
        "redis_socket_timeout": 2.0,
        "redis_connect_timeout": 1.0,
        # No pre-leased port block unless a test asks for one: tests count and pick ports.
        "redis_port_reserve": 0,
    }
    if isinstance(group, Standalone):
        values["redis_url"] = group.url
    elif isinstance(group, SentinelGroup):
        values.update(
            redis_use_sentinel=True,
            redis_sentinel_nodes=group.sentinel_nodes,
            redis_master_name=group.master_name,
        )
    else:
        values.update(redis_use_cluster=True, redis_cluster_nodes=group.cluster_nodes)
    if group_password(group):
        values["redis_password"] = group_password(group)
    values.update(overrides)
    # Explicit values only: a developer's .env must not steer the tests.
    return Settings(_env_file=None, **values)


def group_password(group: Group) -> str | None:
    if isinstance(group, Standalone):
        return group.server.password
    if isinstance(group, SentinelGroup):
        return group.password
    return group.nodes[0].password


def masters(group: Group) -> list[ServerProcess]:
    """The servers that currently take writes."""
    if isinstance(group, Standalone):
        return [group.server]
    if isinstance(group, SentinelGroup):
        return [group.current_master()]
    return group.masters()


@dataclass
class Target:
    """One deployment under test."""

    flavor: Flavor
    kind: Kind
    group: Group

    @property
    def id(self) -> str:
        return f"{self.flavor}-{self.kind}"

    @property
    def url(self) -> str:
        """The server URL of a standalone deployment.

        Raises:
            TypeError: the deployment is not standalone.
        """
        if not isinstance(self.group, Standalone):
            raise TypeError(f"{self.id} has no single server URL")
        return self.group.url

    @property
    def server(self) -> ServerProcess:
        """The server process of a standalone deployment.

        Raises:
            TypeError: the deployment is not standalone.
        """
        if not isinstance(self.group, Standalone):
            raise TypeError(f"{self.id} has no single server")
        return self.group.server

    def settings(self, **overrides: Any) -> Settings:
        return settings_for(self.group, **overrides)

    def flush(self) -> None:
        for server in masters(self.group):
            server.cli("FLUSHALL")


class Deployments:
    """Session-wide deployments, started on first use."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._groups: dict[tuple[Flavor, Kind], Group] = {}

    def get(self, flavor: Flavor, kind: Kind) -> Group:
        key = (flavor, kind)
        if key not in self._groups:
            self._groups[key] = start_group(flavor, kind, self._root / f"{flavor}-{kind}")
        return self._groups[key]

    def stop_all(self) -> None:
        for group in self._groups.values():
            group.stop()
