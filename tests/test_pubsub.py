"""Subscriptions: a server that cannot be reached on entry is a typed ZenError (never a
redis-py exception), and nothing is left checked out or counted as subscribed."""

from __future__ import annotations

import pytest
import redis.exceptions

from zen_async import BackendError, Settings, ZenError, open_zen
from zen_async.testing import free_port
from zen_async.testing.waiting import wait_for

UNREACHABLE: dict[str, dict[str, object]] = {
    "standalone": {"redis_url": "redis://127.0.0.1:{port}/0"},
    "sentinel": {
        "redis_use_sentinel": True,
        "redis_sentinel_nodes": "127.0.0.1:{port},127.0.0.1:{port2}",
        "redis_master_name": "zenmaster",
    },
}


@pytest.mark.parametrize("kind", sorted(UNREACHABLE))
async def test_subscribing_to_an_unreachable_server_raises_a_typed_error(kind: str) -> None:
    ports = {"port": free_port(), "port2": free_port()}  # nothing listens there
    values = {
        name: value.format(**ports) if isinstance(value, str) else value
        for name, value in UNREACHABLE[kind].items()
    }
    settings = Settings(_env_file=None, redis_embedded="false", redis_connect_timeout=0.3, **values)
    async with open_zen(settings) as zen:
        channel = zen.redis.keyspace("streams").key("ch", "test")
        with pytest.raises(ZenError) as caught:
            async with zen.redis.subscribe(channel):
                pytest.fail("entered a subscription on a server that is not there")
        error = caught.value
        assert not isinstance(error, redis.exceptions.RedisError), "redis-py leaked out"
        assert isinstance(error, BackendError)
        assert error.retryable
        assert isinstance(error.__cause__, redis.exceptions.ConnectionError)

        async def nothing_checked_out() -> bool:
            return zen.redis.connections_in_use() == 0

        # A failed entry leaves no connection out and no subscription counted (in_use would
        # stay at 1, or go to -1, for ever).
        await wait_for(nothing_checked_out, what="no connection checked out")
