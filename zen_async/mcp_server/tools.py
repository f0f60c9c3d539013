"""The MCP tools: thin async handlers that await zen on the server's own event loop.

Tool names are stable (see docs/mcp.md). A ZenError becomes an MCP tool error carrying its
message; the tenant is the one zen was opened for (server configuration), never an argument.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel

from zen_async.agents import (
    AgentCapabilities,
    AgentRecord,
    AgentTask,
    LifecycleState,
    TaskStatus,
    TransitionResult,
)
from zen_async.conversations import ThreadContext
from zen_async.errors import ValidationError, ZenError
from zen_async.mcp_server.memory_outputs import (
    ConsolidationOut,
    MemoryAnalyticsOut,
    MemoryHitOut,
    MemoryOut,
)
from zen_async.memory import MemoryPriority, MemoryType
from zen_async.services import Zen

__all__ = ["TOOL_NAMES", "ZenProvider", "register_tools"]

ZenProvider = Callable[[], Zen]
"""Returns the open Zen the tools use (set up by the server's lifespan)."""

P = ParamSpec("P")
R = TypeVar("R")

TOOL_NAMES = (
    "agent_create", "agent_get", "agent_list", "agent_transition", "agent_heartbeat",
    "port_allocate", "port_release",
    "task_create", "task_get", "task_update", "task_list",
    "memory_store", "memory_search", "memory_get", "memory_delete", "memory_consolidate",
    "memory_analytics",
    "events_replay", "conversation_create", "conversation_add_turn", "conversation_get",
    "cache_get", "cache_set", "health", "metrics_query",
)  # fmt: skip


class AgentPage(BaseModel):
    """A page of agents and the cursor of the next page (None: no more)."""

    agents: list[AgentRecord]
    next_cursor: str | None
    skipped: int = 0
    """Records of this page left out because they cannot be decoded (written by another
    version or by hand); the server logs each."""


class PortLeaseOut(BaseModel):
    """A port lease."""

    port: int
    host: str
    agent_id: str
    token: int
    expires_at: datetime


class TaskPage(BaseModel):
    """A page of tasks and the cursor of the next page (None: no more)."""

    tasks: list[AgentTask]
    next_cursor: str | None


class HeartbeatOut(BaseModel):
    """The new liveness deadline (None for a terminated agent)."""

    agent_id: str
    lease_expires_at: datetime | None


class EventOut(BaseModel):
    """One event of the log."""

    id: str
    stream: str
    type: str
    agent_id: str | None
    time: datetime
    data: Any


class CacheValue(BaseModel):
    """A cache lookup."""

    key: str
    found: bool
    value: Any = None


class MetricPointOut(BaseModel):
    """One time bucket of a metric series."""

    start: datetime
    count: int
    sum: float
    min: float
    max: float
    mean: float
    p50: float
    p90: float
    p99: float


def _check_limit(limit: int, most: int) -> int:
    """A tool's ``limit`` argument, from 1 to ``most``.

    Raises:
        ValidationError: out of that range.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise ValidationError(f"limit={limit!r} is out of range: use an integer from 1 to {most}")
    return limit


def _zen_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn a ZenError into an MCP tool error that carries its message."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            _refuse_lone_surrogates(kwargs)
            return await fn(*args, **kwargs)
        except ZenError as exc:
            raise ToolError(f"{type(exc).__name__}: {exc}") from exc

    return wrapper


def _refuse_lone_surrogates(arguments: dict[str, object]) -> None:
    """Refuse a string no UTF-8 can carry (a lone surrogate: only an in-process client can
    send one), before any tool stores or sends it.

    Raises:
        ValidationError: naming the argument.
    """
    stack: list[tuple[str, object]] = list(arguments.items())
    while stack:
        name, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValidationError(
                    f"{name} holds a lone surrogate, which is not valid Unicode text"
                ) from None
        elif isinstance(value, dict):
            stack.extend((f"{name}.{k}", v) for k, v in value.items())
            stack.extend((f"{name} (a key)", k) for k in value if isinstance(k, str))
        elif isinstance(value, list | tuple):
            stack.extend((f"{name}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, BaseModel):  # an argument the SDK validated into a model
            stack.extend((f"{name}.{k}", v) for k, v in value.__dict__.items())


def _port_range(start: int | None, end: int | None) -> tuple[int, int] | None:
    """``port_allocate``'s range from its two arguments: both, or neither (the configured
    range).

    Raises:
        ValidationError: one without the other.
    """
    if start is None and end is None:
        return None
    if start is None or end is None:
        raise ValidationError(
            f"port_range_start={start!r}, port_range_end={end!r}: give both (end exclusive) "
            "or neither (REDIS_PORT_RANGE_START..END)"
        )
    return start, end


def register_tools(server: MCPServer[Any], zen: ZenProvider | Zen) -> None:
    """Mount zen_async's tools on ``server`` (an existing MCP server, such as Zen MCP
    Server, can mount them on its own loop).

    Args:
        server: the MCP server.
        zen: an open Zen, or a function returning the open Zen at call time.
    """
    get: ZenProvider = (lambda: zen) if isinstance(zen, Zen) else zen
    _register_core_tools(server, get)
    _register_memory_tools(server, get)


def _register_core_tools(server: MCPServer[Any], get: ZenProvider) -> None:
    """Agents, ports, tasks, events, conversations, cache, health and metrics."""
    tool = server.tool

    @tool(name="agent_create", description="Create an agent in state 'initializing'.")
    @_zen_errors
    async def agent_create(
        agent_type: str,
        agent_id: str | None = None,
        capabilities: AgentCapabilities | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> AgentRecord:
        return await get().agents.create_agent(
            agent_type, agent_id=agent_id, capabilities=capabilities, metadata=metadata
        )

    @tool(name="agent_get", description="Get an agent's record.")
    @_zen_errors
    async def agent_get(agent_id: str) -> AgentRecord:
        record = await get().agents.get_agent(agent_id)
        if record is None:
            raise ToolError(f"NotFoundError: agent {agent_id!r} does not exist")
        return record

    @tool(name="agent_list", description="List agents by state and type, a page at a time.")
    @_zen_errors
    async def agent_list(
        state: LifecycleState | None = None,
        agent_type: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> AgentPage:
        page = await get().agents.list_agents_page(
            state=state, agent_type=agent_type, cursor=cursor, limit=limit
        )
        return AgentPage(agents=page.agents, next_cursor=page.next_cursor, skipped=page.skipped)

    @tool(name="agent_transition", description="Move an agent to another lifecycle state.")
    @_zen_errors
    async def agent_transition(
        agent_id: str,
        to_state: LifecycleState,
        expected_version: int | None = None,
        reason: str | None = None,
        op_id: str | None = None,
    ) -> TransitionResult:
        return await get().agents.transition(
            agent_id, to_state, expected_version=expected_version, reason=reason, op_id=op_id
        )

    @tool(name="agent_heartbeat", description="Refresh an agent's liveness lease.")
    @_zen_errors
    async def agent_heartbeat(
        agent_id: str,
        memory_mb: float | None = None,
        cpu_percent: float | None = None,
        connections: int | None = None,
    ) -> HeartbeatOut:
        expiry = await get().agents.heartbeat(
            agent_id, memory_mb=memory_mb, cpu_percent=cpu_percent, connections=connections
        )
        return HeartbeatOut(agent_id=agent_id, lease_expires_at=expiry)

    @tool(name="port_allocate", description="Lease a free port on this host to an agent.")
    @_zen_errors
    async def port_allocate(
        agent_id: str, port_range_start: int | None = None, port_range_end: int | None = None
    ) -> PortLeaseOut:
        port_range = _port_range(port_range_start, port_range_end)
        lease = await get().ports.allocate(agent_id, port_range=port_range)
        return PortLeaseOut(
            port=lease.port,
            host=lease.host,
            agent_id=lease.agent_id,
            token=lease.token,
            expires_at=lease.expires_at,
        )

    @tool(name="port_release", description="Give back a port the agent holds.")
    @_zen_errors
    async def port_release(agent_id: str, port: int) -> bool:
        return await get().ports.release_port(agent_id, port)

    @tool(name="task_create", description="Queue a task for agents of a type.")
    @_zen_errors
    async def task_create(
        agent_type: str,
        request: dict[str, Any],
        priority: int = 0,
        timeout_seconds: float = 300.0,
        task_id: str | None = None,
    ) -> AgentTask:
        return await get().tasks.create_task(
            agent_type,
            request,
            priority=priority,
            timeout_seconds=timeout_seconds,
            task_id=task_id,
        )

    @tool(name="task_get", description="Get a task.")
    @_zen_errors
    async def task_get(task_id: str) -> AgentTask:
        task = await get().tasks.get_task(task_id)
        if task is None:
            raise ToolError(f"NotFoundError: task {task_id!r} does not exist")
        return task

    @tool(
        name="task_update",
        description="Move a task to a new status (completed takes a result, failed an error).",
    )
    @_zen_errors
    async def task_update(
        task_id: str,
        status: TaskStatus,
        result: Any = None,
        error: str | None = None,
        expected_version: int | None = None,
    ) -> AgentTask:
        tasks = get().tasks
        if status is TaskStatus.COMPLETED:
            return await tasks.complete(task_id, result, expected_version=expected_version)
        if status is TaskStatus.FAILED:
            return await tasks.fail(task_id, error or "failed", expected_version=expected_version)
        return await tasks.update_status(task_id, status, expected_version=expected_version)

    @tool(name="task_list", description="List tasks by status and agent type, a page at a time.")
    @_zen_errors
    async def task_list(
        status: TaskStatus | None = None,
        agent_type: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> TaskPage:
        page, next_cursor = await get().tasks.list_tasks(
            status, agent_type=agent_type, cursor=cursor, limit=limit
        )
        return TaskPage(tasks=page, next_cursor=next_cursor)

    @tool(name="events_replay", description="Events of a stream or of an agent, in order.")
    @_zen_errors
    async def events_replay(
        stream: str | None = None,
        agent_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        from_id: str | None = None,
        limit: int = 100,
    ) -> list[EventOut]:
        _check_limit(limit, 10_000)
        out: list[EventOut] = []
        async for event in get().events.replay(
            stream, agent_id=agent_id, since=since, until=until, from_id=from_id
        ):
            out.append(
                EventOut(
                    id=event.id,
                    stream=event.stream,
                    type=event.type,
                    agent_id=event.agent_id,
                    time=event.time,
                    data=event.data,
                )
            )
            if len(out) >= limit:
                break
        return out

    @tool(name="conversation_create", description="Start a conversation thread.")
    @_zen_errors
    async def conversation_create(
        tool_name: str,
        initial_context: dict[str, Any] | None = None,
        parent_thread_id: str | None = None,
    ) -> str:
        return await get().conversations.create_thread(
            tool_name, initial_context or {}, parent_thread_id=parent_thread_id
        )

    @tool(name="conversation_add_turn", description="Append a turn; returns the turn count.")
    @_zen_errors
    async def conversation_add_turn(
        thread_id: str,
        role: str,
        content: str,
        files: list[str] | None = None,
        tool_name: str | None = None,
        model_provider: str | None = None,
        model_name: str | None = None,
        op_id: str | None = None,
    ) -> int:
        return await get().conversations.add_turn(
            thread_id,
            role,
            content,
            files=files,
            tool_name=tool_name,
            model_provider=model_provider,
            model_name=model_name,
            op_id=op_id,
        )

    @tool(name="conversation_get", description="Get a conversation thread with its turns.")
    @_zen_errors
    async def conversation_get(thread_id: str) -> ThreadContext:
        thread = await get().conversations.get_thread(thread_id)
        if thread is None:
            raise ToolError(f"NotFoundError: thread {thread_id!r} does not exist or expired")
        return thread

    @tool(name="cache_get", description="Read a cached value.")
    @_zen_errors
    async def cache_get(key: str) -> CacheValue:
        value = await get().cache.get(key)
        return CacheValue(key=key, found=value is not None, value=value)

    @tool(name="cache_set", description="Cache a JSON value, with a TTL in seconds.")
    @_zen_errors
    async def cache_set(
        key: str, value: Any, ttl: float | None = None, op_id: str | None = None
    ) -> bool:
        await get().cache.set(key, value, ttl=ttl, op_id=op_id)
        return True

    @tool(name="health", description="Health of the Redis deployment (the seed's keys, more).")
    @_zen_errors
    async def health() -> dict[str, Any]:
        return await get().redis.check_health()

    @tool(name="metrics_query", description="A metric's time-bucketed series.")
    @_zen_errors
    async def metrics_query(
        name: str,
        since: datetime,
        until: datetime | None = None,
        tags: dict[str, str] | None = None,
    ) -> list[MetricPointOut]:
        zen_now = get()
        await zen_now.metrics.flush()  # include what this process recorded so far
        points = await zen_now.metrics.query(name, tags=tags, since=since, until=until)
        return [
            MetricPointOut(
                start=p.start,
                count=p.count,
                sum=p.sum,
                min=p.min,
                max=p.max,
                mean=p.mean,
                p50=p.p50,
                p90=p.p90,
                p99=p.p99,
            )
            for p in points
        ]


def _register_memory_tools(server: MCPServer[Any], get: ZenProvider) -> None:
    """The memory tools (``zen.memory`` of the server's tenant)."""
    tool = server.tool

    @tool(
        name="memory_store",
        description="Store a memory (text, or a JSON object or array) for an agent, or in the "
        "shared space with agent_id null; an exact duplicate is reinforced, not copied.",
    )
    @_zen_errors
    async def memory_store(
        agent_id: str | None,
        content: str | dict[str, Any] | list[Any],
        memory_type: MemoryType = MemoryType.WORKING,
        priority: MemoryPriority = MemoryPriority.MEDIUM,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        vector: list[float] | None = None,
        op_id: str | None = None,
    ) -> MemoryOut:
        entry = await get().memory.store_memory(
            agent_id,
            content,
            memory_type=memory_type,
            priority=priority,
            tags=tags or (),
            metadata=metadata,
            vector=vector,
            op_id=op_id,
        )
        return MemoryOut.of(entry)

    @tool(
        name="memory_search",
        description="Memories most similar to a query text (or a 384-dim vector), most "
        "relevant first; agent_id null searches the shared space alone.",
    )
    @_zen_errors
    async def memory_search(
        agent_id: str | None,
        query: str | None = None,
        vector: list[float] | None = None,
        memory_types: list[MemoryType] | None = None,
        tags: list[str] | None = None,
        limit: int = 10,
        similarity_threshold: float = 0.0,
        include_shared: bool = True,
    ) -> list[MemoryHitOut]:
        hits = await get().memory.search_memories(
            agent_id,
            query,
            vector=vector,
            memory_types=memory_types,
            tags=tags,
            limit=limit,
            similarity_threshold=similarity_threshold,
            include_shared=include_shared,
        )
        return [MemoryHitOut.of(hit) for hit in hits]

    @tool(
        name="memory_get",
        description="Get a memory by id (counting the read unless count_access is false).",
    )
    @_zen_errors
    async def memory_get(
        memory_id: str, count_access: bool = True, include_vector: bool = False
    ) -> MemoryOut:
        memory = get().memory
        if count_access:
            entry = await memory.retrieve_memory(memory_id)
        else:
            entry = await memory.get_memory(memory_id)
        if entry is None:
            raise ToolError(f"NotFoundError: memory {memory_id!r} does not exist or expired")
        return MemoryOut.of(entry, with_vector=include_vector)

    @tool(name="memory_delete", description="Delete a memory; false when it did not exist.")
    @_zen_errors
    async def memory_delete(memory_id: str) -> bool:
        return await get().memory.delete_memory(memory_id)

    @tool(
        name="memory_consolidate",
        description="Consolidate an agent's memories (agent_id null: the shared space): "
        "forget expired and low-relevance ones, merge near-duplicates, promote, link.",
    )
    @_zen_errors
    async def memory_consolidate(agent_id: str | None) -> ConsolidationOut:
        return ConsolidationOut.of(await get().memory.consolidate(agent_id))

    @tool(
        name="memory_analytics",
        description="Figures on an agent's memories (agent_id null: the shared space).",
    )
    @_zen_errors
    async def memory_analytics(agent_id: str | None) -> MemoryAnalyticsOut:
        return MemoryAnalyticsOut.of(await get().memory.get_memory_analytics(agent_id))
