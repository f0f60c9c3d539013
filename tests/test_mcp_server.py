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
from mcp import Client, types
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver.exceptions import ToolError

from zen_async import open_zen
from zen_async.events.envelope import agent_shard, shard_tag
from zen_async.mcp_server import TOOL_NAMES, build_server
from zen_async.testing import free_port
from zen_async.testing.deployments import Target
from zen_async.testing.waiting import wait_for


def payload(result: Any) -> Any:
    """A tool result's structured content (``result`` for non-object returns)."""
    assert not result.is_error, result.content
    data = result.structured_content
    return data["result"] if isinstance(data, dict) and set(data) == {"result"} else data


def error_text(result: Any) -> str:
    """The message of a tool error."""
    assert result.is_error, result.structured_content
    text: str = result.content[0].text
    return text


async def exercise_memory_tools(client: Client, agent: str) -> None:
    """Call every memory tool as a client does and check what comes back (the server's
    tenant is 'default')."""
    fact = payload(
        await client.call_tool(
            "memory_store",
            {
                "agent_id": agent,
                "content": "The build needs Python 3.11 and make",
                "memory_type": "semantic",
                "priority": "high",
                "tags": ["build"],
                "metadata": {"source": "readme"},
            },
        )
    )
    assert (fact["agent_id"], fact["namespace"], fact["memory_type"]) == (
        agent,
        "default",
        "semantic",
    )
    assert (fact["tags"], fact["metadata"], fact["version"]) == (
        ["build"],
        {"source": "readme"},
        1,
    )
    assert fact["expires_at"] is None  # semantic memories never expire by default
    assert fact["vector"] is None  # vectors only when asked for
    again = payload(
        await client.call_tool(
            "memory_store",
            {
                "agent_id": agent,
                "content": "The build needs Python 3.11 and make",
                "memory_type": "semantic",
            },
        )
    )
    assert again["memory_id"] == fact["memory_id"]  # the exact duplicate, reinforced
    assert again["access_count"] == fact["access_count"] + 1
    shared = payload(
        await client.call_tool(
            "memory_store",
            {"agent_id": None, "content": {"deploy": "three replicas"}, "memory_type": "shared"},
        )
    )
    assert (shared["agent_id"], shared["content"]) == (None, {"deploy": "three replicas"})
    axis = [0.0] * 384
    axis[7] = 1.0
    pointed = payload(
        await client.call_tool(
            "memory_store",
            {"agent_id": agent, "content": "a memory with its own vector", "vector": axis},
        )
    )
    assert pointed["expires_at"] is not None  # working: 2 h

    hits = payload(
        await client.call_tool(
            "memory_search", {"agent_id": agent, "query": "which python does the build need"}
        )
    )
    assert hits[0]["memory_entry"]["memory_id"] == fact["memory_id"]
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    assert hits[0]["similarity_score"] > 0.3
    by_vector = payload(
        await client.call_tool(
            "memory_search",
            {"agent_id": agent, "vector": axis, "limit": 1, "similarity_threshold": 0.99},
        )
    )
    assert [h["memory_entry"]["memory_id"] for h in by_vector] == [pointed["memory_id"]]
    assert by_vector[0]["similarity_score"] == pytest.approx(1.0, abs=1e-6)
    only_shared = payload(
        await client.call_tool(
            "memory_search", {"agent_id": None, "query": "deploy replicas", "limit": 5}
        )
    )
    assert [h["memory_entry"]["memory_id"] for h in only_shared] == [shared["memory_id"]]
    tagged = payload(
        await client.call_tool(
            "memory_search",
            {
                "agent_id": agent,
                "query": "memory build vector",
                "tags": ["build"],
                "memory_types": ["semantic"],
                "include_shared": False,
                "similarity_threshold": -1.0,
            },
        )
    )
    assert [h["memory_entry"]["memory_id"] for h in tagged] == [fact["memory_id"]]

    peeked = payload(
        await client.call_tool(
            "memory_get",
            {"memory_id": pointed["memory_id"], "count_access": False, "include_vector": True},
        )
    )
    assert peeked["access_count"] == pointed["access_count"]
    assert peeked["vector"] == axis
    read = payload(await client.call_tool("memory_get", {"memory_id": pointed["memory_id"]}))
    assert read["access_count"] == pointed["access_count"] + 1

    figures = payload(await client.call_tool("memory_analytics", {"agent_id": agent}))
    assert (figures["space"], figures["total_memories"], figures["dedup_count"]) == (agent, 2, 1)
    assert figures["by_type"]["semantic"] == 1
    assert figures["by_type"]["working"] == 1
    assert figures["by_priority"]["high"] == 1
    assert figures["most_accessed_memories"][0]["memory_id"] in {
        fact["memory_id"],
        pointed["memory_id"],
    }
    assert figures["last_consolidation"] is None

    report = payload(await client.call_tool("memory_consolidate", {"agent_id": agent}))
    assert report["space"] == agent
    assert report["removed"] == report["expired"] + report["pruned"] + report["merged"] == 0
    after = payload(await client.call_tool("memory_analytics", {"agent_id": agent}))
    assert after["last_consolidation"] == report
    assert (
        payload(await client.call_tool("memory_analytics", {"agent_id": None}))["total_memories"]
        == 1
    )

    assert payload(await client.call_tool("memory_delete", {"memory_id": pointed["memory_id"]}))
    assert not payload(await client.call_tool("memory_delete", {"memory_id": pointed["memory_id"]}))
    gone = await client.call_tool("memory_get", {"memory_id": pointed["memory_id"]})
    assert "NotFoundError" in error_text(gone)
    short = await client.call_tool(
        "memory_store", {"agent_id": agent, "content": "x", "vector": [1.0, 2.0]}
    )
    assert "ValidationError" in error_text(short)
    assert "384" in error_text(short)
    malformed = await client.call_tool("memory_get", {"memory_id": "not-an-id"})
    assert "ValidationError" in error_text(malformed)


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


async def test_memory_tools_in_process(target: Target) -> None:
    async with Client(build_server(target.settings())) as client:
        await exercise_memory_tools(client, "mcp-1")


async def test_memory_tools_are_bound_to_the_servers_tenant(standalone: Target) -> None:
    """The tenant is server configuration: no tool takes it, and nothing crosses tenants."""
    async with (
        Client(build_server(standalone.settings(redis_namespace="team-a"))) as a,
        Client(build_server(standalone.settings(redis_namespace="team-b"))) as b,
    ):
        for tool in (await a.list_tools()).tools:
            assert not {"namespace", "tenant"} & set(tool.input_schema.get("properties", {}))
        kept = payload(
            await a.call_tool(
                "memory_store",
                {"agent_id": "shared-name", "content": "team a's secret plan", "tags": ["plan"]},
            )
        )
        assert kept["namespace"] == "team-a"
        query = {"agent_id": "shared-name", "query": "secret plan", "similarity_threshold": -1.0}
        assert len(payload(await a.call_tool("memory_search", query))) == 1
        assert payload(await b.call_tool("memory_search", query)) == []
        missing = await b.call_tool("memory_get", {"memory_id": kept["memory_id"]})
        assert "NotFoundError" in error_text(missing)
        assert not payload(await b.call_tool("memory_delete", {"memory_id": kept["memory_id"]}))
        figures = payload(await b.call_tool("memory_analytics", {"agent_id": "shared-name"}))
        assert figures["total_memories"] == 0
        assert payload(await a.call_tool("memory_get", {"memory_id": kept["memory_id"]}))[
            "content"
        ] == ("team a's secret plan")


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
        await exercise_memory_tools(client, "stdio-agent")


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
            await exercise_memory_tools(client, "http-1")
            created = payload(
                await client.call_tool("agent_create", {"agent_type": "web", "agent_id": "http-1"})
            )
            assert created["agent_id"] == "http-1"
        assert process.stdout is not None
    finally:
        process.terminate()
        out, _ = await process.communicate()
    assert f"http://127.0.0.1:{port}/mcp" in out.decode()


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("health", {}),
        ("memory_store", {"agent_id": "j", "content": {"a": [1, 2]}}),
        ("memory_search", {"agent_id": "j", "query": "a"}),
        ("memory_analytics", {"agent_id": "j"}),
        ("memory_consolidate", {"agent_id": "j"}),
    ],
)
async def test_tool_outputs_are_json(
    standalone: Target, tool: str, arguments: dict[str, Any]
) -> None:
    async with Client(build_server(standalone.settings())) as client:
        result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    orjson.dumps(result.structured_content)  # typed, structured output


def sent_as_json(tool: str, arguments: bytes) -> dict[str, Any]:
    """A tool's arguments as the server parses them off the wire from a client that writes
    its JSON itself: ``1e999`` and ``NaN`` arrive as infinity and NaN (the official client
    never sends them: it writes both as null)."""
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"%s","arguments":%s}}'
    message = types.jsonrpc_message_adapter.validate_json(
        body % (tool.encode(), arguments), by_name=False
    )
    assert isinstance(message, types.JSONRPCRequest)
    assert message.params is not None
    sent: dict[str, Any] = message.params["arguments"]
    return sent


async def test_a_poisoned_record_never_breaks_the_tenant(standalone: Target) -> None:
    """Invariant: whatever one client sends or one hand writes, agent_get and agent_list keep
    working through the official client for the tenant's other agents. NaN and infinity are
    refused at the door (stored, they came back as null, which the client's output check
    rejects); a record that cannot be decoded is skipped by agent_list (and counted) and
    fails agent_get of that agent alone."""
    settings = standalone.settings()
    server = build_server(settings)
    async with Client(server) as client, open_zen(settings) as zen:
        payload(await client.call_tool("agent_create", {"agent_type": "coder", "agent_id": "ok"}))
        for number in (b"1e999", b"-1e999", b"NaN", b"Infinity"):
            for tool, arguments, field in [
                (
                    "agent_create",
                    b'{"agent_type": "coder", "agent_id": "nan", '
                    b'"capabilities": {"timeout_seconds": %s}}',
                    "timeout_seconds",
                ),
                ("agent_create", b'{"agent_type": "coder", "metadata": {"v": [%s]}}', "metadata"),
                ("agent_heartbeat", b'{"agent_id": "ok", "memory_mb": %s}', "memory_mb"),
                ("agent_heartbeat", b'{"agent_id": "ok", "cpu_percent": %s}', "cpu_percent"),
            ]:
                with pytest.raises(ToolError, match=field):
                    await server.call_tool(tool, sent_as_json(tool, arguments % number))
        got = payload(await client.call_tool("agent_get", {"agent_id": "ok"}))
        assert got["capabilities"]["timeout_seconds"] == 300.0
        assert got["performance"]["memory_mb"] == 0.0
        listed = payload(await client.call_tool("agent_list", {}))
        assert [a["agent_id"] for a in listed["agents"]] == ["ok"]

        await zen.agents.create_agent("coder", agent_id="hand")
        tag = shard_tag(agent_shard("hand", zen.agents.shards))
        key = zen.redis.keyspace("state").key(tag, "agent", "hand")
        await zen.redis.keyspace("state").execute("HSET", key, "doc", b'{"capabilities": {"x": 1}}')
        page = payload(await client.call_tool("agent_list", {}))
        assert ([a["agent_id"] for a in page["agents"]], page["skipped"]) == (["ok"], 1)
        assert payload(await client.call_tool("agent_get", {"agent_id": "ok"}))["agent_id"] == "ok"
        broken = error_text(await client.call_tool("agent_get", {"agent_id": "hand"}))
        assert "BackendError: agent 'hand' is stored but cannot be decoded" in broken


async def test_limits_are_checked_by_every_tool_that_takes_one(standalone: Target) -> None:
    """``limit`` -1 or 0 used to give one event from events_replay: every limit is checked."""
    async with Client(build_server(standalone.settings())) as client:
        payload(await client.call_tool("agent_create", {"agent_type": "coder", "agent_id": "lim"}))
        payload(
            await client.call_tool("agent_transition", {"agent_id": "lim", "to_state": "ready"})
        )
        cases = [
            ("events_replay", {"agent_id": "lim"}, 10_000),
            ("agent_list", {}, 10_000),
            ("task_list", {}, 10_000),
            ("memory_search", {"agent_id": "lim", "query": "anything"}, 1000),
        ]
        for tool, arguments, most in cases:
            for limit in (-1, 0, most + 1):
                text = error_text(await client.call_tool(tool, {**arguments, "limit": limit}))
                assert "ValidationError" in text, (tool, limit, text)
                assert "limit" in text, (tool, limit, text)
                assert str(most) in text, (tool, limit, text)
        for limit in (1, 2):
            events = payload(
                await client.call_tool("events_replay", {"agent_id": "lim", "limit": limit})
            )
            assert [e["type"] for e in events] == ["agent_created", "state_changed"][:limit]
