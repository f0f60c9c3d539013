"""The core: topology, keyspaces, commands and scripts, breaker, health, embedded server.

Nothing above this package imports redis-py or sees its exceptions.
"""

from zen_async.store.breaker import BreakerState, BreakerStatistics, CircuitBreaker
from zen_async.store.keyspace import Arg, Keyspace
from zen_async.store.manager import RedisManager, open_redis_manager
from zen_async.store.pubsub import Message, Reconnected, Subscription
from zen_async.store.topology import KEYSPACES

__all__ = [
    "KEYSPACES",
    "Arg",
    "BreakerState",
    "BreakerStatistics",
    "CircuitBreaker",
    "Keyspace",
    "Message",
    "Reconnected",
    "RedisManager",
    "Subscription",
    "open_redis_manager",
]
