"""The agents domain: lifecycle, state, port leases and tasks of the agents zen_async serves."""

from zen_async.agents.models import (
    ACTIVE_STATES,
    TRANSITIONS,
    AgentCapabilities,
    AgentPerformance,
    AgentRecord,
    AgentSpec,
    LifecycleState,
    TransitionResult,
)
from zen_async.agents.ports import PortAllocator, PortEventHook, PortLease, PortStats
from zen_async.agents.state import AgentStateManager

__all__ = [
    "ACTIVE_STATES",
    "TRANSITIONS",
    "AgentCapabilities",
    "AgentPerformance",
    "AgentRecord",
    "AgentSpec",
    "AgentStateManager",
    "LifecycleState",
    "PortAllocator",
    "PortEventHook",
    "PortLease",
    "PortStats",
    "TransitionResult",
]
