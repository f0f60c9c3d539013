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
from zen_async.agents.state import AgentListPage, AgentStateManager
from zen_async.agents.tasks import (
    FINISHED_STATUSES,
    TASK_TRANSITIONS,
    AgentTask,
    AgentTaskManager,
    TaskMessage,
    TaskSpec,
    TaskStatus,
)

__all__ = [
    "ACTIVE_STATES",
    "FINISHED_STATUSES",
    "TASK_TRANSITIONS",
    "TRANSITIONS",
    "AgentCapabilities",
    "AgentListPage",
    "AgentPerformance",
    "AgentRecord",
    "AgentSpec",
    "AgentStateManager",
    "AgentTask",
    "AgentTaskManager",
    "LifecycleState",
    "PortAllocator",
    "PortEventHook",
    "PortLease",
    "PortStats",
    "TaskMessage",
    "TaskSpec",
    "TaskStatus",
    "TransitionResult",
]
