"""The MCP server, called as clients call it: in-process with mcp.Client, from a stdio
subprocess, and over streamable HTTP with a bearer token."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from zen_async.mcp_server import TOOL_NAMES, build_server
from zen_async.testing import free_port
from zen_async.testing.deployments import Target
from zen_async.testing.waiting import wait_for


def payload(result: Any) -> Any:
    """A tool result's structured content (``result`` for non-object returns)."""
    assert not result.is_error, result.content
    data = result.structured_content
    return data["result"] if isinstance(data, dict) and set(data) == {"result"} else data


async def test_every_tool_in_process(target: Target) -> None:
    async with Client(build_server(target.settings())) as client:
        listed = {t.name for t in (await client.list_tools()).tools}
        assert set(TOOL_NAMES) <= listed

        created = payload(
            await client.call_tool(
                "agent_create",
                {"agent_type": "coder", "agent_id": "mcp-1", "metadata": {"team": "a"}},
            )
        )
        assert created["lifecycle_state"] == "initializing"
        assert payload(await client.call_tool("agent_get", {"agent_id": "mcp-1"}))["metadata"] == {
            "team": "a"
        }
        moved = payload(
            await client.call_tool("agent_transition", {"agent_id": "mcp-1", "to_state": "ready"})
        )
        assert (moved["from_state"], moved["to_state"], moved["version"]) == (
            "initializing",
            "ready",
            2,
        )
        page = payload(await client.call_tool("agent_list", {"state": "ready"}))
        assert [a["agent_id"] for a in page["agents"]] == ["mcp-1"]
        beat = payload(
            await client.call_tool("agent_heartbeat", {"agent_id": "mcp-1", "memory_mb": 10.0})
        )
        assert beat["lease_expires_at"] is not None

        lease = payload(await client.call_tool("port_allocate", {"agent_id": "mcp-1"}))
        assert lease["agent_id"] == "mcp-1"
        assert (
            payload(
                await client.call_tool("port_release", {"agent_id": "mcp-1", "port": lease["port"]})
            )
            is True
        )

        task = payload(
            await client.call_tool(
                "task_create", {"agent_type": "coder", "request": {"do": "x"}, "priority": 5}
            )
        )
        assert task["status"] == "pending"
        assert payload(await client.call_tool("task_get", {"task_id": task["task_id"]}))[
            "request"
        ] == {"do": "x"}
        cancelled = payload(
            await client.call_tool(
                "task_update", {"task_id": task["task_id"], "status": "cancelled"}
            )
        )
        assert cancelled["status"] == "cancelled"
        listed = payload(await client.call_tool("task_list", {"status": "cancelled"}))
        assert [t["task_id"] for t in listed["tasks"]] == [task["task_id"]]

        events = payload(await client.call_tool("events_replay", {"agent_id": "mcp-1"}))
        assert [e["type"] for e in events][:2] == ["agent_created", "state_changed"]

        thread = payload(
            await client.call_tool(
                "conversation_create", {"tool_name": "chat", "initial_context": {"q": 1}}
            )
        )
        assert (
            payload(
                await client.call_tool(
                    "conversation_add_turn",
                    {"thread_id": thread, "role": "user", "content": "hello"},
                )
            )
            == 1
        )
        got = payload(await client.call_tool("conversation_get", {"thread_id": thread}))
        assert [t["content"] for t in got["turns"]] == ["hello"]

        assert (
            payload(
                await client.call_tool("cache_set", {"key": "k", "value": {"a": [1, 2]}, "ttl": 60})
            )
            is True
        )
        assert payload(await client.call_tool("cache_get", {"key": "k"}))["value"] == {"a": [1, 2]}
        assert payload(await client.call_tool("cache_get", {"key": "nope"}))["found"] is False

        health = payload(await client.call_tool("health", {}))
        assert health["redis_available"] is True
        assert health["active_agents"] == 1

        since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        points = payload(
            await client.call_tool(
                "metrics_query", {"name": "zen_state_operation_latency_ms", "since": since}
            )
        )
        assert points
        assert sum(p["count"] for p in points) >= 3


async def test_zen_errors_become_tool_errors_with_their_message(standalone: Target) -> None:
    async with Client(build_server(standalone.settings())) as client:
        await client.call_tool("agent_create", {"agent_type": "t", "agent_id": "e1"})
        result = await client.call_tool(
            "agent_transition", {"agent_id": "e1", "to_state": "running"}
        )
        assert result.is_error
        text = result.content[0].text  # type: ignore[union-attr]
        assert "InvalidTransitionError" in text
        assert "from initializing to running" in text
        missing = await client.call_tool("agent_get", {"agent_id": "ghost"})
        assert missing.is_error
        bad = await client.call_tool("agent_create", {"agent_type": "Bad Type"})
        assert bad.is_error
        assert "ValidationError" in bad.content[0].text  # type: ignore[union-attr]


def _child_env(target: Target, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "ZEN_"))}
    env.update(
        REDIS_URL=target.url,
        REDIS_EMBEDDED="false",
        PYTHONPATH=os.getcwd(),
        ZEN_LOG_LEVEL="warning",
    )
    return env


async def test_stdio_subprocess(standalone: Target, tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "zen_async.cli", "serve"],
        env=_child_env(standalone, tmp_path),
        cwd=tmp_path,
    )
    async with Client(params) as client:
        assert {t.name for t in (await client.list_tools()).tools} >= set(TOOL_NAMES)
        health = payload(await client.call_tool("health", {}))
        assert health["redis_available"] is True


async def start_http_server(
    env: dict[str, str], cwd: Path, *extra: str
) -> tuple[asyncio.subprocess.Process, int]:
    """``zen-async serve --transport http`` on a free port, once it listens."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "zen_async.cli",
        "serve",
        "--transport",
        "http",
        "--port",
        str(port),
        *extra,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )

    async def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return process.returncode is not None  # exited: stop waiting, the test fails
        return True

    await wait_for(listening, deadline=60, what="the HTTP server to listen")
    assert process.returncode is None
    return process, port


async def test_make_run_serves_http_on_the_embedded_server(tmp_path: Path) -> None:
    """What `make run` runs, on a machine with no Redis configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "ZEN_"))}
    env.update(
        REDIS_EMBEDDED="true", REDIS_EMBEDDED_DIR=str(tmp_path / "data"), PYTHONPATH=os.getcwd()
    )
    process, port = await start_http_server(env, tmp_path)
    try:
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            assert {t.name for t in (await client.list_tools()).tools} >= set(TOOL_NAMES)
            health = payload(await client.call_tool("health", {}))
            assert health["server"]["name"] == "valkey"
    finally:
        process.terminate()
        out, _ = await process.communicate()
    assert "MCP Inspector" in out.decode()


async def test_http_with_bearer_token(standalone: Target, tmp_path: Path) -> None:
    process, port = await start_http_server(
        _child_env(standalone, tmp_path), tmp_path, "--token", "s3cret"
    )
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        async with httpx2.AsyncClient() as anonymous:
            refused = await anonymous.post(
                url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
            )
        assert refused.status_code == 401
        headers = {"Authorization": "Bearer s3cret"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            assert {t.name for t in (await client.list_tools()).tools} >= set(TOOL_NAMES)
            created = payload(
                await client.call_tool("agent_create", {"agent_type": "web", "agent_id": "http-1"})
            )
            assert created["agent_id"] == "http-1"
        assert process.stdout is not None
    finally:
        process.terminate()
        out, _ = await process.communicate()
    assert f"http://127.0.0.1:{port}/mcp" in out.decode()


@pytest.mark.parametrize("tool", ["health"])
async def test_tool_outputs_are_json(standalone: Target, tool: str) -> None:
    async with Client(build_server(standalone.settings())) as client:
        result = await client.call_tool(tool, {})
    orjson.dumps(result.structured_content)  # typed, structured output
