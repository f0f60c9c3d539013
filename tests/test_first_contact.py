"""Errors that name their cause (issue 12): when the server is not there, or frozen, every
BackendError and DegradedError says which address and what failed (connection refused,
timeout), also once the circuit is open; and the health report says it once, not per
keyspace, with no latency figure when nothing was measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from mcp import Client

from zen_async import BackendError, DegradedError, Settings, open_zen
from zen_async.cli import render_health
from zen_async.mcp_server import build_server
from zen_async.testing import Standalone, free_port
from zen_async.testing.deployments import settings_for


def unreachable(port: int, **values: Any) -> Settings:
    """Settings for 127.0.0.1:``port``, where nobody listens."""
    return Settings(
        _env_file=None,
        redis_url=f"redis://127.0.0.1:{port}/0",
        redis_connect_timeout=0.5,
        redis_retry_attempts=0,
        redis_health_check_interval=60,
        **values,
    )


async def test_a_refused_connection_names_the_address_and_the_errno() -> None:
    port = free_port()
    # A threshold nobody reaches: every call tries the server and fails on its own.
    async with open_zen(unreachable(port, redis_breaker_failure_threshold=1000)) as zen:
        ks = zen.redis.keyspace("state")
        with pytest.raises(BackendError) as info:
            await ks.get(ks.key("anything"))
    assert not isinstance(info.value, DegradedError)
    message = str(info.value)
    assert message.startswith(f"server 127.0.0.1:{port} unreachable (connection refused): ")
    assert f"Error 111 connecting to 127.0.0.1:{port}" in message


async def test_an_open_circuit_says_which_error_opened_it() -> None:
    port = free_port()
    async with open_zen(unreachable(port, redis_breaker_reset_timeout=60)) as zen:
        ks = zen.redis.keyspace("state")
        # The first health check at open has already tripped the breaker.
        with pytest.raises(DegradedError) as info:
            await ks.get(ks.key("anything"))
        message = str(info.value)
        assert message.startswith("circuit breaker open after ")
        assert f"; last error: server 127.0.0.1:{port} unreachable (connection refused)" in message
        # A read served by degraded mode, with nothing remembered, says the same.
        with pytest.raises(DegradedError, match=f"127.0.0.1:{port} unreachable"):
            await zen.agents.get_agent("nobody")


async def test_health_says_the_cause_once_and_measures_no_latency() -> None:
    port = free_port()
    async with open_zen(unreachable(port)) as zen:
        status = await zen.redis.check_health()
    assert status["redis_available"] is False
    cause = f"server 127.0.0.1:{port} unreachable (connection refused)"
    [error] = status["errors"]  # seven keyspaces, one outage
    assert error.startswith(cause)
    assert status["average_latency"] is None
    text = render_health(status)
    assert text.count(cause) == 1
    assert "circuit breaker open" not in text
    assert "average latency   not measured" in text


async def test_mcp_tool_errors_name_the_server() -> None:
    port = free_port()
    async with Client(build_server(unreachable(port))) as client:
        result = await client.call_tool("agent_get", {"agent_id": "ghost"})
    assert result.is_error
    text = result.content[0].text  # type: ignore[union-attr]
    assert f"127.0.0.1:{port} unreachable (connection refused)" in text


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_frozen_server_is_named_with_timeout(tmp_path: Path) -> None:
    """SIGSTOP: the port accepts connections but nothing answers."""
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    try:
        settings = settings_for(
            group,
            redis_socket_timeout=0.3,
            redis_connect_timeout=0.3,
            redis_retry_attempts=0,
            redis_breaker_failure_threshold=1000,
            redis_health_check_interval=60,
        )
        host, port = group.server.address
        async with open_zen(settings) as zen:
            ks = zen.redis.keyspace("state")
            await ks.set(ks.key("k"), b"v")
            group.server.pause()
            try:
                with pytest.raises(BackendError) as info:
                    await ks.get(ks.key("k"))
                status = await zen.redis.check_health()
            finally:
                group.server.resume()
        message = str(info.value)
        assert message.startswith(f"server {host}:{port} unreachable (timeout): ")
        assert status["redis_available"] is False
        assert status["average_latency"] is None
        [error] = status["errors"]
        assert error.startswith(f"server {host}:{port} unreachable (timeout): ")
        assert render_health(status).count("(timeout)") == 1
    finally:
        await anyio.to_thread.run_sync(group.stop)
