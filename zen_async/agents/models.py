"""Agent records and the lifecycle transition table."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

from zen_async.errors import ValidationError

__all__ = [
    "ACTIVE_STATES",
    "AGENT_TYPE",
    "TRANSITIONS",
    "AgentCapabilities",
    "AgentPerformance",
    "AgentRecord",
    "AgentSpec",
    "LifecycleState",
    "TransitionResult",
    "sources_of",
    "validate_agent_type",
]


class LifecycleState(StrEnum):
    """Where an agent is in its life."""

    INITIALIZING = "initializing"
    READY = "ready"
    RUNNING = "running"
    PAUSED = "paused"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    ERROR = "error"


S = LifecycleState

TRANSITIONS: Final[dict[LifecycleState, frozenset[LifecycleState]]] = {
    S.INITIALIZING: frozenset({S.READY, S.ERROR}),
    S.READY: frozenset({S.RUNNING, S.PAUSED, S.TERMINATING, S.ERROR}),
    S.RUNNING: frozenset({S.READY, S.PAUSED, S.TERMINATING, S.ERROR}),
    S.PAUSED: frozenset({S.RUNNING, S.READY, S.TERMINATING, S.ERROR}),
    S.TERMINATING: frozenset({S.TERMINATED, S.ERROR}),
    S.ERROR: frozenset({S.READY, S.TERMINATING}),
    S.TERMINATED: frozenset(),
}
"""The one transition table: state -> the states it may move to. ``terminated`` is final.

=============  =========================================
from           to
=============  =========================================
initializing   ready, error
ready          running, paused, terminating, error
running        ready, paused, terminating, error
paused         running, ready, terminating, error
terminating    terminated, error
error          ready, terminating
terminated     (none: final)
=============  =========================================
"""

ACTIVE_STATES: Final = frozenset({S.INITIALIZING, S.READY, S.RUNNING, S.PAUSED, S.TERMINATING})
"""States that count as active agents in the health status."""


AGENT_TYPE: Final = re.compile(r"[a-z0-9_.-]{1,64}")
"""What an agent type may be: it is part of index and queue key names."""


def validate_agent_type(agent_type: object) -> str:
    """Check an agent type.

    Raises:
        ValidationError: not 1-64 characters from ``a-z 0-9 _ . -``.
    """
    if not isinstance(agent_type, str) or not AGENT_TYPE.fullmatch(agent_type):
        raise ValidationError(
            f"agent type {agent_type!r} is invalid: use 1-64 characters from a-z 0-9 _ . -"
        )
    return agent_type


def sources_of(target: LifecycleState) -> list[LifecycleState]:
    """The states from which ``target`` may be reached, in table order."""
    return [s for s, targets in TRANSITIONS.items() if target in targets]


class AgentCapabilities(BaseModel):
    """What an agent can do and the limits it runs under."""

    # NaN and infinity are not JSON: stored, they would come back as null.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    supported_operations: list[str] = Field(default_factory=list, max_length=256)
    max_concurrent_tasks: int = Field(1, ge=1, le=10_000)
    memory_limit_mb: int = Field(512, ge=1)
    timeout_seconds: float = Field(300.0, gt=0)
    port_range: tuple[int, int] | None = None
    """``(start, end)``, end exclusive as everywhere in zen_async's ports:
    ``1 <= start < end <= 65536``."""

    @field_validator("port_range")
    @classmethod
    def _port_range_is_a_range(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not 1 <= value[0] < value[1] <= 65536:
            raise ValueError(
                f"port_range={value!r}: expected (start, end) with 1 <= start < end <= 65536, "
                "end exclusive"
            )
        return value


class AgentPerformance(BaseModel):
    """Counters and gauges about an agent's work and health."""

    # NaN and infinity are not JSON: stored, they would come back as null.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    tasks_completed: int = 0
    tasks_failed: int = 0
    total_processing_time: float = 0.0
    average_processing_time: float = 0.0
    memory_mb: float = 0.0
    cpu_percent: float = 0.0
    connections: int = 0
    last_activity: datetime | None = None
    health_score: float = Field(1.0, ge=0.0, le=1.0)


class AgentSpec(BaseModel):
    """What :meth:`AgentStateManager.create_agents` needs for one agent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent_type: str
    agent_id: str | None = None
    capabilities: AgentCapabilities = Field(default_factory=AgentCapabilities)
    metadata: dict[str, Any] = Field(default_factory=dict)
    host: str | None = None
    pid: int | None = None


class AgentRecord(BaseModel):
    """An agent as stored; ``version`` is bumped by every write."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent_id: str
    agent_type: str
    lifecycle_state: LifecycleState
    capabilities: AgentCapabilities = Field(default_factory=AgentCapabilities)
    current_task_id: str | None = None
    allocated_resources: dict[str, Any] = Field(default_factory=dict)
    performance: AgentPerformance = Field(default_factory=AgentPerformance)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    version: int
    host: str | None = None
    pid: int | None = None
    stale: bool = False
    """True when served from this process's last-known values while Redis is unreachable
    (degraded mode), or when it is the answer to a journaled write; never stored."""
    provisional: bool = False
    """True when it includes journaled writes the server has not applied yet: its fields show
    them, its ``version`` is still the last one the server gave. Never stored."""


class TransitionResult(BaseModel):
    """The outcome of one successful transition."""

    model_config = ConfigDict(frozen=True)

    agent_id: str
    from_state: LifecycleState
    to_state: LifecycleState
    version: int
    """The version the transition gave; for a journaled one (``provisional``), the last
    version the server gave before it."""
    event_id: str
    """The ``state_changed`` event's id; ``journal:<op id>`` for a journaled transition."""
    provisional: bool = False
    """True when journaled during an outage: accepted, to be applied (exactly once, by its
    op id) when Redis is back."""
