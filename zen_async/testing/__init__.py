""""""

from zen_async.testing.servers import (
    ClusterGroup,
    Flavor,
    SentinelGroup,
    ServerProcess,
    Standalone,
    free_port,
    server_binary,
)

__all__ = [
    "ClusterGroup",
    "Flavor",
    "SentinelGroup",
    "ServerProcess",
    "Standalone",
    "free_port",
    "server_binary",
]
