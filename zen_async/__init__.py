"""zen_async: an asyncio-native state and coordination layer for AI-agent platforms on Redis.

from zen_async import Settings, open_zen

async with open_zen(Settings()) as zen:
    status = await zen.redis.get_health_status()
"""

from importlib import metadata as _metadata

from zen_async.agents import (
    AgentCapabilities,
    AgentRecord,
    AgentSpec,
    AgentStateManager,
    AgentTask,
    AgentTaskManager,
    LifecycleState,
    PortAllocator,
    PortLease,
    TaskSpec,
    TaskStatus,
    TransitionResult,
)
from zen_async.cache import Cache
from zen_async.codec import Codec
from zen_async.config import Settings
from zen_async.conversations import ConversationStore, ConversationTurn, ThreadContext
from zen_async.errors import (
    AuthError,
    BackendError,
    CapacityError,
    ConfigError,
    ConflictError,
    DegradedError,
    DurabilityError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
    ZenError,
)
from zen_async.events import Event, EventLog, NewEvent
from zen_async.memory import (
    AgentMemoryManager,
    MemoryAnalytics,
    MemoryEntry,
    MemoryOptions,
    MemoryPriority,
    MemorySearchResult,
    MemoryType,
    NewMemory,
)
from zen_async.metrics import MetricPoint, Metrics
from zen_async.services import Zen, open_zen
from zen_async.store import BreakerState, Keyspace, RedisManager

__all__ = [
    "AgentCapabilities",
    "AgentMemoryManager",
    "AgentRecord",
    "AgentSpec",
    "AgentStateManager",
    "AgentTask",
    "AgentTaskManager",
    "AuthError",
    "BackendError",
    "BreakerState",
    "Cache",
    "CapacityError",
    "Codec",
    "ConfigError",
    "ConflictError",
    "ConversationStore",
    "ConversationTurn",
    "DegradedError",
    "DurabilityError",
    "Event",
    "EventLog",
    "InvalidTransitionError",
    "Keyspace",
    "LifecycleState",
    "MemoryAnalytics",
    "MemoryEntry",
    "MemoryOptions",
    "MemoryPriority",
    "MemorySearchResult",
    "MemoryType",
    "MetricPoint",
    "Metrics",
    "NewEvent",
    "NewMemory",
    "NotFoundError",
    "PortAllocator",
    "PortLease",
    "RedisManager",
    "Settings",
    "TaskSpec",
    "TaskStatus",
    "ThreadContext",
    "TransitionResult",
    "ValidationError",
    "Zen",
    "ZenError",
    "open_zen",
]

__version__ = _metadata.version("zen-async")  # defined once, in pyproject.toml
