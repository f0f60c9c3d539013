"""zen_async: an asyncio-native state and coordination layer for AI-agent platforms on Redis.

from zen_async import Settings, open_zen

async with open_zen(Settings()) as zen:
    status = await zen.redis.get_health_status()
"""

from zen_async.codec import Codec
from zen_async.config import Settings
from zen_async.errors import (
    AuthError,
    BackendError,
    CapacityError,
    ConfigError,
    ConflictError,
    DegradedError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
    ZenError,
)
from zen_async.services import Zen, open_zen
from zen_async.store import BreakerState, Keyspace, RedisManager

__all__ = [
    "AuthError",
    "BackendError",
    "BreakerState",
    "CapacityError",
    "Codec",
    "ConfigError",
    "ConflictError",
    "DegradedError",
    "InvalidTransitionError",
    "Keyspace",
    "NotFoundError",
    "RedisManager",
    "Settings",
    "ValidationError",
    "Zen",
    "ZenError",
    "open_zen",
]

__version__ = "0.1.0"
