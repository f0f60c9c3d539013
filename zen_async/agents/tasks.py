"""AgentTaskManager (``zen.tasks``): agent tasks queued per agent type, claimed atomically
by priority, run under a deadline on a port leased to the executing agent, with a message
stream per task.

Key layout (keyspace ``tasks``; ``P`` is ``<prefix>{q:<agent_type>}:``)::

    P task:<id>         HASH   the task
    P queue             ZSET   pending tasks: score -priority, member "<seq:016d>:<id>";
                               ZPOPMIN takes the highest priority, then the lowest sequence
    P seq               STRING the agent type's sequence counter
    P idx:all           ZSET   every task of the type, by creation sequence
    P idx:<status>      ZSET   the type's tasks in <status>, by creation sequence
    P deadlines         ZSET   starting and running tasks, by deadline (server ms)
    P release           ZSET   port leases of finished tasks not yet released, by due time
    P op:<uuid>         STRING the task one claim took, kept a minute (a resend returns it)
    {t:<id>}:type       STRING the directory: the task's agent type
    {t:<id>}:messages   STREAM the task's messages (exactly trimmed to ``max_messages``)
    types               ZSET   every agent type that ever had a task (score 0, by name)

Cluster: a claim pops the queue and rewrites the task in one script, so the queue and the
task hashes of one agent type share the hash tag ``{q:<agent_type>}``. The trade-off: each
agent type lives in one slot, on one master; types spread over the cluster, one type does
not. The directory and the messages of a task live in its own tag ``{t:<id>}``, so reading
and appending messages never touch the type's slot; ``create_task`` reserves the id in the
directory (``SET NX``) before the task is written in its type's slot.

Port leases: a claim takes the task, leases a port to the claiming agent through
:class:`~zen_async.agents.ports.PortAllocator` and records the lease (port, host and fencing
token) in the task; ``claim_next(start=True)`` also starts it. Where every key lives on one
server (standalone, Sentinel) that is ONE script call, ``task_claim_lease.lua``: the claim,
the lease (the allocator's own steps, ``lib/port_lease.lua``, in the state keyspace's DB,
reached with SELECT in the databases layout), the agent's host index, its record in the task,
the start and the task's events, all or nothing; a range with no free port refuses the claim
before anything is written, so the task stays pending exactly as it was. On Cluster the agent
type's slot and the host's differ, so a claim is three steps there: take the task
(``task_claim``), lease the port (``port_allocate``), record it (``task_set_port``; with the
start, ``task_lease_start``); a task that moved on meanwhile is skipped and its lease
released, a failed lease gives the task back (``task_unclaim``). So is a claim with an
allocator that test-binds its ports (``check_bindable``): that check happens here, between the
lease and its record. A task that finishes (completed, failed, timeout, cancelled) puts its
lease in the type's release outbox *in the same script*; the caller then releases the lease
and clears the entry. If the caller dies in between, the sweeper releases it after
``release_retry`` seconds. Releases are fenced by the token, so a late second release can
never free a port that was since leased again (even to the same agent), which an unfenced
``release_port(agent_id, port)`` would.

Events: with an :class:`~zen_async.events.EventLog`, each status change of a task that has an
agent is published to that agent's audit trail as ``task_<status>``. The claim's events
(``task_starting``, and ``task_running`` with ``start``) are appended by the one-step claim's
script itself, atomic with the claim, redacted as a publish would redact them; every other
one (and a stepwise claim's) is published *after* the task is written: best effort, not
atomic with the write (a crash in between loses the event, never the change). The lease's
``port_allocated`` event comes from the allocator's ``on_event`` hook, after the claim.

Reads: a task is built from its stored hash without running the model's validation again
(each value is checked as it is converted, as validation would check it); a hash that does
not make a valid task raises a :class:`~zen_async.errors.BackendError` naming it.

Data protection: a task's ``request`` and ``result`` are caller payloads, so fields named in
``REDIS_REDACT_FIELDS`` (``api_key``, ``password``, ``token``...; see :mod:`zen_async.redact`)
are stored as ``"[redacted]"`` and read back that way; the returned :class:`AgentTask` shows
what was stored. An ``error`` text and message contents are free text and stored as given.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import uuid
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

import anyio
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from zen_async.agents._records import DECODE_ERRORS, construct
from zen_async.agents.models import AGENT_TYPE, validate_agent_type
from zen_async.agents.ports import PortLease
from zen_async.codec import Codec, refuse_non_finite, refuse_too_deep
from zen_async.errors import (
    BackendError,
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
    ZenError,
)
from zen_async.redact import Redactor
from zen_async.store import Arg, Keyspace, RedisManager

if TYPE_CHECKING:
    from zen_async.agents.ports import PortAllocator
    from zen_async.events import EventLog

__all__ = [
    "FINISHED_STATUSES",
    "MAX_PAYLOAD_BYTES",
    "TASK_TRANSITIONS",
    "AgentTask",
    "AgentTaskManager",
    "TaskMessage",
    "TaskSpec",
    "TaskStatus",
    "task_spec",
]

log = structlog.get_logger(__name__)


class TaskStatus(StrEnum):
    """Where a task is in its life."""

    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


T = TaskStatus

TASK_TRANSITIONS: Final[dict[TaskStatus, frozenset[TaskStatus]]] = {
    T.PENDING: frozenset({T.STARTING, T.CANCELLED}),
    T.STARTING: frozenset({T.RUNNING, T.FAILED, T.TIMEOUT, T.CANCELLED}),
    T.RUNNING: frozenset({T.COMPLETED, T.FAILED, T.TIMEOUT, T.CANCELLED}),
    T.COMPLETED: frozenset(),
    T.FAILED: frozenset({T.PENDING}),
    T.TIMEOUT: frozenset({T.PENDING}),
    T.CANCELLED: frozenset(),
}
"""The task transition table: status -> the statuses it may move to.

=========  =====================================  ==========================================
from       to                                     by
=========  =====================================  ==========================================
pending    starting, cancelled                    claim_next (only), cancel
starting   running, failed, timeout, cancelled    update_status, fail, the sweeper, cancel
running    completed, failed, timeout, cancelled  complete, fail, the sweeper, cancel
failed     pending                                retry (queued again at the back)
timeout    pending                                retry (queued again at the back)
completed  (none: final)
cancelled  (none: final)
=========  =====================================  ==========================================

A retry keeps ``attempts``: it counts claims, so the claim that runs the task again makes it
one more. ``failed`` and ``timeout`` are finished (the port is released) but not final.
"""

FINISHED_STATUSES: Final = frozenset({T.COMPLETED, T.FAILED, T.TIMEOUT, T.CANCELLED})
"""Statuses in which a task no longer runs and holds no port."""

MAX_PAYLOAD_BYTES: Final = 1_048_576
"""The largest request or result accepted, as JSON bytes."""

_TASK_ID: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_AGENT_ID: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_ROLE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MESSAGE_ID: Final = re.compile(r"\d{1,20}-\d{1,20}")
_MAX_PRIORITY: Final = 1_000_000_000
_MAX_TIMEOUT: Final = 30 * 86_400.0
_MAX_ERROR_CHARS: Final = 65_536
_MAX_CONTENT_CHARS: Final = 1_000_000
_MAX_PAGE: Final = 10_000
_SWEEP_BATCH: Final = 500
_OP_TTL_MS: Final = 60_000  # longer than any retry sequence of one call
_DIRECTORY_CACHE: Final = 10_000  # task id -> agent type entries remembered per manager
_EPOCH: Final = datetime.fromtimestamp(0, UTC)
# The fields of a task event's data (see _emit), for the one-step claim's in-script events.
_EVENT_FIELDS: Final = ("task_id", "agent_type", "from", "status", "attempts", "version", "port")


class AgentTask(BaseModel):
    """A task as stored; ``version`` is bumped by every write.

    Attributes:
        task_id: the id (1-128 characters of ``A-Z a-z 0-9 _ . : -``).
        agent_type: the kind of agent that may claim it.
        request: the payload the agent works on.
        status: where it is in its life (see :data:`TASK_TRANSITIONS`).
        result: what :meth:`AgentTaskManager.complete` stored.
        error: what :meth:`AgentTaskManager.fail` stored, or why it timed out.
        agent_id: the agent that claimed it last.
        agent_port: the port leased to that agent for this task.
        process_id: the process id the claimer gave.
        priority: higher is claimed first; FIFO within a priority.
        attempts: how many times it was claimed.
        timeout_seconds: how long it may take from its claim to its end.
        deadline: when a starting or running task times out (server clock).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: str
    agent_type: str
    request: dict[str, Any] = Field(default_factory=dict)
    status: TaskStatus = TaskStatus.PENDING
    result: Any | None = None
    error: str | None = None
    created_at: datetime
    updated_at: datetime
    agent_id: str | None = None
    agent_port: int | None = None
    process_id: int | None = None
    priority: int = 0
    attempts: int = 0
    timeout_seconds: float = 300.0
    deadline: datetime | None = None
    version: int = 1


class TaskSpec(BaseModel):
    """What :meth:`AgentTaskManager.create_tasks` needs for one task."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    agent_type: str
    request: dict[str, Any] = Field(default_factory=dict)
    priority: int = 0
    timeout_seconds: float = 300.0
    task_id: str | None = None


class TaskMessage(BaseModel):
    """One entry of a task's message stream."""

    model_config = ConfigDict(frozen=True)

    message_id: str
    role: str
    content: str
    time: datetime


class AgentTaskManager:
    """Agent tasks of one tenant.

    Args:
        redis: the core.
        ports: the port allocator that leases each claimed task's port to its agent.
        events: where task events go (the executing agent's audit trail); None for none.
        tenant: the tenant (default: the configured namespace).
        sweep_interval: seconds between timeout sweeps in :meth:`run`.
        max_messages: the length bound of each task's message stream.
        release_retry: seconds after which a sweeper releases a finished task's port lease
            that the finishing caller did not (it crashed in between).

    Raises:
        ValidationError: a bad interval or bound.
    """

    def __init__(
        self,
        redis: RedisManager,
        *,
        ports: PortAllocator,
        events: EventLog | None = None,
        tenant: str | None = None,
        sweep_interval: float = 1.0,
        max_messages: int = 1000,
        release_retry: float = 10.0,
    ) -> None:
        for name, value, least in (
            ("sweep_interval", sweep_interval, 0.001),
            ("release_retry", release_retry, 0.0),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= least):
                raise ValidationError(
                    f"{name}={value!r}: expected a number of seconds >= {least:g}"
                )
        if isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1:
            raise ValidationError(f"max_messages={max_messages!r}: expected an integer >= 1")
        self._ks: Keyspace = redis.keyspace("tasks", tenant=tenant)
        self._codec = redis.codec
        self._redactor = Redactor.from_settings(redis.settings)
        # The event fields REDIS_REDACT_FIELDS names, as task_claim_lease.lua takes them: the
        # events it appends are redacted as EventLog.publish_agent_event would redact them.
        self._redacted_event_fields = ",".join(
            ["", *(n for n in _EVENT_FIELDS if self._redactor.redact({n: 0}) != {n: 0}), ""]
        )
        self._ports = ports
        self._events = events
        self._sweep_interval = float(sweep_interval)
        self._max_messages = max_messages
        self._retry_ms = math.ceil(release_retry * 1000)
        self._directory: OrderedDict[str, str] = OrderedDict()

    # --- keys -----------------------------------------------------------------------------
    def _prefix(self, agent_type: str) -> str:
        return self._ks.key(f"{{q:{agent_type}}}") + ":"

    def _task_key(self, agent_type: str, task_id: str) -> str:
        return self._prefix(agent_type) + "task:" + task_id

    def _dir_key(self, task_id: str) -> str:
        return self._ks.key(f"{{t:{task_id}}}", "type")

    def _messages_key(self, task_id: str) -> str:
        return self._ks.key(f"{{t:{task_id}}}", "messages")

    @property
    def _types_key(self) -> str:
        return self._ks.key("types")

    # --- create and read ------------------------------------------------------------------
    async def create_task(
        self,
        agent_type: str,
        request: dict[str, Any],
        *,
        priority: int = 0,
        timeout_seconds: float = 300.0,
        task_id: str | None = None,
    ) -> AgentTask:
        """Store a new ``pending`` task and queue it for ``agent_type``.

        Args:
            agent_type: who may claim it (1-64 characters of ``a-z 0-9 _ . -``).
            request: the payload, a JSON object of at most :data:`MAX_PAYLOAD_BYTES`;
                sensitive fields (``REDIS_REDACT_FIELDS``) are stored as ``"[redacted]"``.
            priority: higher is claimed first (|priority| <= 10^9); FIFO within a priority.
            timeout_seconds: how long it may take from its claim (0 < t <= 30 days).
            task_id: the id (default: a new UUID).

        Raises:
            ValidationError: a bad argument; nothing was written.
            ConflictError: a task with this id exists.
        """
        spec = task_spec(
            agent_type=agent_type,
            request=request,
            priority=priority,
            timeout_seconds=timeout_seconds,
            task_id=task_id,
        )
        return (await self.create_tasks([spec]))[0]

    async def create_tasks(self, specs: Sequence[TaskSpec]) -> list[AgentTask]:
        """Create many tasks, pipelined in batches (slot-aware on Cluster).

        Raises:
            ValidationError: any bad spec, or an id given twice (then nothing is written).
            ConflictError: the first id that was taken (the others were created).
        """
        prepared = [_prepare(spec, self._codec, self._redactor) for spec in specs]
        ids = [p.task_id for p in prepared]
        if len(set(ids)) != len(ids):
            twice = sorted(i for i, n in Counter(ids).items() if n > 1)
            raise ValidationError(f"task ids given more than once: {twice[:10]}")
        if not prepared:
            return []
        types = sorted({p.agent_type for p in prepared})
        reserve: list[tuple[Arg, ...]] = [
            ("SET", self._dir_key(p.task_id), p.agent_type, "NX") for p in prepared
        ]
        reserve += [("ZADD", self._types_key, 0, t) for t in types]
        replies = await self._ks.batch(reserve, idempotent=True)
        # A refused SET NX is either another task's id or our own reservation from a call
        # whose reply was lost, or that failed before writing the task: only the latter go on.
        refused = [p for p, ok in zip(prepared, replies, strict=False) if not ok]
        owners = await self._ks.mget([self._dir_key(p.task_id) for p in refused])
        failed: dict[str, ZenError] = {}
        for p, owner in zip(refused, owners, strict=True):
            if owner is None:  # deleted in between: the id is free, but not reserved by us
                failed[p.task_id] = ConflictError(
                    f"task {p.task_id!r} was being deleted while created: create it again"
                )
            elif _text(owner) != p.agent_type:
                failed[p.task_id] = ConflictError(
                    f"task {p.task_id!r} already exists (agent type {_text(owner)!r})"
                )
        go = [p for p in prepared if p.task_id not in failed]
        calls: list[tuple[list[str], list[Arg]]] = [
            (
                [self._task_key(p.agent_type, p.task_id)],
                [
                    self._prefix(p.agent_type),
                    p.task_id,
                    p.agent_type,
                    uuid.uuid4().hex,
                    p.priority,
                    p.timeout_ms,
                    p.request_bytes,
                ],
            )
            for p in go
        ]
        outcomes = await self._ks.run_script_many("task_create", calls, raise_on_error=False)
        created: dict[str, AgentTask] = {}
        for p, outcome in zip(go, outcomes, strict=True):
            if isinstance(outcome, ZenError):
                failed[p.task_id] = _explain(outcome, p.task_id)
                continue
            self._remember(p.task_id, p.agent_type)
            at = _from_ms(outcome[0])
            created[p.task_id] = _new_task(p, at)
        for p in prepared:
            if p.task_id in failed:
                raise failed[p.task_id]
        return [created[p.task_id] for p in prepared]

    async def get_task(self, task_id: str) -> AgentTask | None:
        """The task, or None if it does not exist.

        Raises:
            ValidationError: a malformed id.
            BackendError: the stored task cannot be decoded (written by another version or
                by hand); the message names it.
        """
        _check_task_id(task_id)
        for fresh in (False, True):
            agent_type, cached = await self._locate(task_id, fresh=fresh)
            if agent_type is None:
                return None
            raw = await self._ks.execute("HGETALL", self._task_key(agent_type, task_id))
            if raw:
                return self._decode(raw)
            if not cached:
                return None
        return None

    async def list_tasks(
        self,
        status: TaskStatus | str | None = None,
        *,
        agent_type: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> tuple[list[AgentTask], str | None]:
        """A page of tasks from the indexes (never SCAN): by agent type, then by creation
        order. Pass the returned cursor to get the next page; None means there is none.

        Raises:
            ValidationError: a bad status, type, cursor or limit.
            BackendError: a stored task of the page cannot be decoded (the message names it).
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_PAGE:
            raise ValidationError(f"limit={limit!r}: expected an integer from 1 to {_MAX_PAGE}")
        index = "idx:all" if status is None else "idx:" + _status(status).value
        if agent_type is not None:
            validate_agent_type(agent_type)
        current, after = _parse_cursor(cursor)
        if current is not None and agent_type is not None and current != agent_type:
            raise ValidationError(f"cursor {cursor!r} belongs to another agent type's listing")
        if current is None:
            current = agent_type if agent_type is not None else await self._next_type(None)
        found: list[tuple[str, str]] = []
        while current is not None and len(found) < limit:
            reply = await self._ks.execute(
                "ZRANGE",
                self._prefix(current) + index,
                "-inf" if after is None else f"({after}",
                "+inf",
                "BYSCORE",
                "LIMIT",
                0,
                limit - len(found),
                "WITHSCORES",
            )
            page = [(_text(m), int(float(score))) for m, score in _pairs(reply)]
            found.extend((current, task_id) for task_id, _ in page)
            if len(found) >= limit:
                after = page[-1][1]
                break
            current = None if agent_type is not None else await self._next_type(current)
            after = None
        replies = await self._ks.batch(
            [("HGETALL", self._task_key(t, i)) for t, i in found], idempotent=True
        )
        tasks = [self._decode(r) for r in replies if r]
        next_cursor = f"{current}:{after}" if current is not None and after is not None else None
        return tasks, next_cursor

    async def _next_type(self, after: str | None) -> str | None:
        reply = await self._ks.execute(
            "ZRANGE",
            self._types_key,
            "-" if after is None else f"({after}",
            "+",
            "BYLEX",
            "LIMIT",
            0,
            1,
        )
        return _text(reply[0]) if reply else None

    async def count_by_status(self, *, agent_type: str | None = None) -> dict[TaskStatus, int]:
        """How many tasks are in each status (one pipelined round of ZCARD).

        Raises:
            ValidationError: a bad agent type.
        """
        if agent_type is not None:
            types = [validate_agent_type(agent_type)]
        else:
            types = [_text(t) for t in await self._ks.execute("ZRANGE", self._types_key, 0, -1)]
        statuses = list(TaskStatus)
        counts = await self._ks.batch(
            [("ZCARD", self._prefix(t) + "idx:" + s.value) for t in types for s in statuses],
            idempotent=True,
        )
        totals = dict.fromkeys(statuses, 0)
        for i, count in enumerate(counts):
            totals[statuses[i % len(statuses)]] += int(count)
        return totals

    # --- claim ------------------------------------------------------------------------------
    async def claim_next(
        self,
        agent_type: str,
        agent_id: str,
        *,
        process_id: int | None = None,
        start: bool = False,
    ) -> AgentTask | None:
        """Take the next pending task of ``agent_type`` for ``agent_id``: the highest priority
        first, FIFO within a priority, never a task another claim took. The task moves to
        ``starting`` with ``attempts + 1`` and a deadline (server time + its timeout), and a
        port is leased to the agent for it (``agent_port``).

        On standalone and Sentinel the claim, the port lease, its record in the task, the
        start (with ``start``) and the task's events are one script call: all of it happens
        or none of it does. On Cluster, where the agent type's slot and the host's differ,
        the claim, the lease and its record (with the start) are three steps (see the
        module's "Port leases"); so also with ``check_bindable`` ports, which are test-bound
        here between their lease and their record.

        Args:
            agent_type: the queue to take from.
            agent_id: the claiming agent.
            process_id: the process id to record (an integer >= 0), or None.
            start: also start the task (``running``, as ``update_status(task_id,
                "running")`` would, with its ``task_running`` event) in the same step.

        Returns:
            The claimed task (``starting``, or ``running`` with ``start``), or None when
            nothing is pending.

        Raises:
            ValidationError: a bad type, agent id, process id or ``start``.
            CapacityError: no port was free for the agent; the task stays pending at its
                place, as if never claimed.
        """
        validate_agent_type(agent_type)
        _check_agent(agent_id)
        if process_id is not None and (
            isinstance(process_id, bool) or not isinstance(process_id, int) or process_id < 0
        ):
            raise ValidationError(f"process_id={process_id!r}: expected an integer >= 0")
        if not isinstance(start, bool):
            raise ValidationError(f"start={start!r}: expected True or False")
        if not self._ks.cluster and self._ports.leases_in_scripts:
            return await self._claim_in_one_step(agent_type, agent_id, process_id, start=start)
        prefix = self._prefix(agent_type)
        while True:
            op_key = prefix + "op:" + uuid.uuid4().hex
            reply = await self._ks.run_script(
                "task_claim",
                [prefix + "queue", op_key],
                [prefix, agent_id, "" if process_id is None else process_id, _OP_TTL_MS],
            )
            if not reply:
                return None
            claimed = self._decode(reply)
            self._remember(claimed.task_id, agent_type)
            task = await self._lease_port(claimed, start=start)
            if task is not None:
                await self._emit_claim(task, started=start)
                return task
            # Cancelled, timed out or deleted while its port was being leased: take the next.

    async def _claim_in_one_step(
        self, agent_type: str, agent_id: str, process_id: int | None, *, start: bool
    ) -> AgentTask | None:
        """``task_claim_lease.lua``: claim, lease, record, start and events in one call."""
        prefix = self._prefix(agent_type)
        step = await self._ports.lease_step(agent_id)
        dbs: list[Arg] = ["", ""] if self._ks.db == step.db else [self._ks.db, step.db]
        events: list[Arg] = ["", 0, "", ""]
        if self._events is not None:
            ref = self._events.agent_stream(agent_id)
            events = [
                ref.ks.key(ref.tag) + ":",
                self._events.audit_max_len,
                self._events.agent_channel,
                ref.name,
            ]
        reply = await self._ks.run_script(
            "task_claim_lease",
            [prefix + "queue", prefix + "op:" + uuid.uuid4().hex, *step.keys],
            [
                prefix,
                agent_id,
                "" if process_id is None else process_id,
                _OP_TTL_MS,
                *dbs,
                *step.args,
                "1" if start else "0",
                *events,
                self._redacted_event_fields,
            ],
        )
        if not reply:
            return None
        outcome, lease, reclaimed, raw = _text(reply[0]), reply[1], reply[2], reply[3]
        if outcome == "capacity":
            raise await self._ports.lease_refused(step, _text(lease[0]), reclaimed)
        task = self._decode(raw)
        self._remember(task.task_id, agent_type)
        if outcome == "claimed":
            port, token = int(lease[0]), int(lease[1])
        else:  # "replayed": a resend of a claim applied by a send whose reply was lost
            f = _fields(raw)
            if "token" not in f or _text(f.get("agent", b"")) != agent_id:
                return task  # moved on meanwhile: its lease is someone else's business now
            port, token = int(f["port"]), int(f["token"])
        await self._ports.lease_taken(step, port, token, reclaimed)
        return task

    async def _lease_port(self, task: AgentTask, *, start: bool) -> AgentTask | None:
        """Lease the claimed task's port and record it (and start the task with ``start``);
        None when the task moved on first."""
        agent_id = task.agent_id
        if agent_id is None:  # a claim always sets it; a broken hash would be a bug
            raise ValidationError(f"claimed task {task.task_id!r} has no agent")
        key = self._task_key(task.agent_type, task.task_id)
        lease: PortLease | None = None
        try:
            lease = await self._ports.allocate(agent_id)
            if start:
                reply = await self._ks.run_script(
                    "task_lease_start",
                    [key],
                    [
                        self._prefix(task.agent_type),
                        task.task_id,
                        agent_id,
                        task.attempts,
                        lease.port,
                        lease.host,
                        lease.token,
                    ],
                )
            else:
                reply = await self._ks.run_script(
                    "task_set_port",
                    [key],
                    [agent_id, task.attempts, lease.port, lease.host, lease.token],
                )
        except BaseException:
            # No port (or no way to record it): give the task back, as if never claimed.
            # Shielded, so a cancelled claimer still leaves the task claimable.
            with anyio.CancelScope(shield=True):
                await self._undo_claim(task, key, lease)
            raise
        if not reply:
            await self._release_lease(lease)
            return None
        return self._decode(reply)

    async def _emit_claim(self, task: AgentTask, *, started: bool) -> None:
        """The events of a stepwise claim: ``task_starting``, then ``task_running`` when the
        claim also started the task."""
        if not started:
            await self._emit(task, T.PENDING)
            return
        starting = task.model_copy(update={"status": T.STARTING, "version": task.version - 1})
        await self._emit(starting, T.PENDING)
        await self._emit(task, T.STARTING)

    async def _undo_claim(self, task: AgentTask, key: str, lease: PortLease | None) -> None:
        try:
            if lease is not None:
                await self._release_lease(lease)
            await self._ks.run_script(
                "task_unclaim",
                [key],
                [self._prefix(task.agent_type), task.task_id, task.agent_id or "", task.attempts],
            )
        except ZenError as exc:  # it stays claimed: the sweeper times it out at its deadline
            log.warning("task_unclaim_failed", task_id=task.task_id, error=str(exc))

    # --- status changes --------------------------------------------------------------------
    async def update_status(
        self,
        task_id: str,
        status: TaskStatus | str,
        *,
        expected_version: int | None = None,
    ) -> AgentTask:
        """Move a task to ``status`` in one atomic step (see :data:`TASK_TRANSITIONS`).
        A task that finishes releases its port lease.

        Raises:
            ValidationError: a bad id or status, or ``starting`` (only a claim starts a task).
            NotFoundError: no such task.
            ConflictError: the stored version is not ``expected_version``.
            InvalidTransitionError: the table does not allow it; names from, to and the
                allowed targets. Nothing was written.
        """
        return await self._change(task_id, _status(status), expected_version=expected_version)

    async def complete(
        self, task_id: str, result: Any, *, expected_version: int | None = None
    ) -> AgentTask:
        """Store the result of a running task and move it to ``completed``. Sensitive fields
        of ``result`` (``REDIS_REDACT_FIELDS``) are stored as ``"[redacted]"``.

        Raises:
            ValidationError: a result that is not JSON or is too large.
            NotFoundError, ConflictError, InvalidTransitionError: as :meth:`update_status`.
        """
        encoded = _encode_payload(
            self._redactor.redact(result, what="result"), "result", self._codec
        )
        return await self._change(
            task_id, T.COMPLETED, expected_version=expected_version, result=encoded
        )

    async def fail(
        self, task_id: str, error: str, *, expected_version: int | None = None
    ) -> AgentTask:
        """Store why a starting or running task failed and move it to ``failed``.

        Raises:
            ValidationError: an empty or too long error message.
            NotFoundError, ConflictError, InvalidTransitionError: as :meth:`update_status`.
        """
        if not isinstance(error, str) or not 1 <= len(error) <= _MAX_ERROR_CHARS:
            raise ValidationError(
                f"error of {len(error) if isinstance(error, str) else type(error).__name__}: "
                f"expected a message of 1-{_MAX_ERROR_CHARS} characters"
            )
        _check_utf8(error, "error")
        return await self._change(task_id, T.FAILED, expected_version=expected_version, error=error)

    async def cancel(self, task_id: str, *, expected_version: int | None = None) -> AgentTask:
        """Cancel a pending, starting or running task (a pending one leaves the queue).

        Raises:
            NotFoundError, ConflictError, InvalidTransitionError: as :meth:`update_status`.
        """
        return await self._change(task_id, T.CANCELLED, expected_version=expected_version)

    async def retry(self, task_id: str, *, expected_version: int | None = None) -> AgentTask:
        """Queue a failed or timed-out task again, behind the pending tasks of its priority;
        its agent, port, result and error are cleared, its attempts kept.

        Raises:
            NotFoundError, ConflictError, InvalidTransitionError: as :meth:`update_status`.
        """
        return await self._change(task_id, T.PENDING, expected_version=expected_version)

    async def _change(
        self,
        task_id: str,
        to: TaskStatus,
        *,
        expected_version: int | None,
        result: bytes | None = None,
        error: str | None = None,
    ) -> AgentTask:
        _check_task_id(task_id)
        if expected_version is not None and (
            isinstance(expected_version, bool) or not isinstance(expected_version, int)
        ):
            raise ValidationError(f"expected_version={expected_version!r}: expected an integer")
        sources = ",".join(["", *(s for s, to_ in TASK_TRANSITIONS.items() if to in to_), ""])
        op = uuid.uuid4().hex
        for fresh in (False, True):
            agent_type, cached = await self._locate(task_id, fresh=fresh)
            if agent_type is None:
                break
            args: list[Arg] = [
                self._prefix(agent_type),
                task_id,
                to.value,
                sources,
                "" if expected_version is None else expected_version,
                op,
                "0" if result is None else "1",
                b"" if result is None else result,
                error or "",
                self._retry_ms,
            ]
            try:
                reply = await self._ks.run_script(
                    "task_transition", [self._task_key(agent_type, task_id)], args
                )
            except NotFoundError:
                if cached:
                    continue  # a stale directory cache entry: look the task up again
                break
            except ZenError as exc:
                raise _explain(exc, task_id) from None
            from_status, member = TaskStatus(_text(reply[0])), _text(reply[1])
            task = self._decode(reply[2:])
            if member:
                await self._release_member(agent_type, member)
            await self._emit(task, from_status)
            return task
        raise NotFoundError(f"task {task_id!r} does not exist")

    async def delete_task(self, task_id: str) -> bool:
        """Remove a task and its messages (releasing its port if it still held one).

        Returns:
            False if there was no such task.

        Raises:
            ValidationError: a malformed id.
        """
        _check_task_id(task_id)
        agent_type, _ = await self._locate(task_id, fresh=True)
        reply = None
        if agent_type is not None:
            reply = await self._ks.run_script(
                "task_delete",
                [self._task_key(agent_type, task_id)],
                [self._prefix(agent_type), task_id, self._retry_ms],
            )
            if reply and _text(reply[1]):
                await self._release_member(agent_type, _text(reply[1]))
        # Directory last: while it exists the id stays reserved and findable.
        removed = await self._ks.delete(self._messages_key(task_id), self._dir_key(task_id))
        self._directory.pop(task_id, None)
        return bool(reply) or removed > 0

    # --- messages ---------------------------------------------------------------------------
    async def append_message(self, task_id: str, role: str, content: str) -> str:
        """Append a message to the task's stream (bounded to ``max_messages``, oldest dropped).

        Returns:
            The message id (a stream entry id, increasing).

        Raises:
            ValidationError: a bad id, role (1-64 of ``A-Z a-z 0-9 _ . -``) or content (a string
                of at most 1,000,000 characters).
            NotFoundError: no such task.
        """
        _check_task_id(task_id)
        if not isinstance(role, str) or not _ROLE.fullmatch(role):
            raise ValidationError(
                f"role {role!r} is invalid: use 1-64 characters from A-Z a-z 0-9 _ . -"
            )
        if not isinstance(content, str) or len(content) > _MAX_CONTENT_CHARS:
            raise ValidationError(
                f"content of {len(content) if isinstance(content, str) else type(content).__name__}"
                f": expected a string of at most {_MAX_CONTENT_CHARS} characters"
            )
        _check_utf8(content, "content")
        try:
            entry = await self._ks.run_script(
                "task_message",
                [self._dir_key(task_id), self._messages_key(task_id)],
                [self._max_messages, role, content],
            )
        except NotFoundError:
            raise NotFoundError(f"task {task_id!r} does not exist") from None
        return _text(entry)

    async def read_messages(
        self, task_id: str, *, after: str | None = None, limit: int = 100
    ) -> list[TaskMessage]:
        """The task's messages in order, strictly after the message id ``after``.

        Raises:
            ValidationError: a bad id, ``after`` or limit.
            NotFoundError: no such task.
        """
        _check_task_id(task_id)
        if after is not None and (not isinstance(after, str) or not _MESSAGE_ID.fullmatch(after)):
            raise ValidationError(f"after={after!r}: expected a message id such as '1700000000-0'")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_PAGE:
            raise ValidationError(f"limit={limit!r}: expected an integer from 1 to {_MAX_PAGE}")
        entries = await self._ks.execute(
            "XRANGE",
            self._messages_key(task_id),
            "-" if after is None else f"({after}",
            "+",
            "COUNT",
            limit,
        )
        if not entries and not await self._ks.execute("EXISTS", self._dir_key(task_id)):
            raise NotFoundError(f"task {task_id!r} does not exist")
        messages = []
        for entry_id, raw in entries:
            f = {_text(k): v for k, v in raw.items()}
            messages.append(
                TaskMessage(
                    message_id=_text(entry_id),
                    role=_text(f["role"]),
                    content=_text(f["content"]),
                    time=_from_ms(f["time"]),
                )
            )
        return messages

    # --- timeouts ---------------------------------------------------------------------------
    async def sweep(self) -> list[str]:
        """One sweeper pass over every agent type: tasks past their deadline in starting or
        running move to ``timeout`` and release their port; port leases of finished tasks that
        their caller did not release (it crashed) are released. Safe to run on every
        instance at once: each task is handled by one sweeper. Returns the timed-out ids."""
        types = [_text(t) for t in await self._ks.execute("ZRANGE", self._types_key, 0, -1)]
        timed_out: list[str] = []
        while types:
            replies = await self._ks.run_script_many(
                "task_sweep",
                [
                    (
                        [self._prefix(t) + "deadlines"],
                        [self._prefix(t), _SWEEP_BATCH, self._retry_ms],
                    )
                    for t in types
                ],
            )
            more = []
            for agent_type, (expired, due) in zip(types, replies, strict=True):
                for task_id, agent, version, attempts, from_status, member in expired:
                    timed_out.append(_text(task_id))
                    if _text(member):
                        await self._release_member(agent_type, _text(member))
                    if self._events is not None and _text(agent):
                        await self._publish(
                            _text(agent),
                            T.TIMEOUT,
                            {
                                "task_id": _text(task_id),
                                "agent_type": agent_type,
                                "from": _text(from_status),
                                "status": T.TIMEOUT.value,
                                "attempts": int(attempts),
                                "version": int(version),
                            },
                        )
                for member in due:
                    await self._release_member(agent_type, _text(member))
                if len(expired) >= _SWEEP_BATCH or len(due) >= _SWEEP_BATCH:
                    more.append(agent_type)
            types = more
        if timed_out:
            log.warning("tasks_timed_out", count=len(timed_out), tasks=timed_out[:20])
        return timed_out

    async def run(self) -> None:
        """Sweep for timed-out tasks every ``sweep_interval`` seconds, until cancelled."""
        me = asyncio.current_task()
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                await self.sweep()
            except ZenError as exc:
                log.warning("task_sweep_failed", error=str(exc))
            # On Python 3.11, asyncio.wait_for (which redis-py wraps around each socket write)
            # swallows a cancel that lands as the write completes; the task still counts it,
            # so end here rather than loop on forever.
            if me is not None and me.cancelling():
                raise asyncio.CancelledError

    # --- helpers ----------------------------------------------------------------------------
    async def _locate(self, task_id: str, *, fresh: bool) -> tuple[str | None, bool]:
        """The task's agent type (from the cache unless ``fresh``), and whether it was cached."""
        if not fresh:
            cached = self._directory.get(task_id)
            if cached is not None:
                self._directory.move_to_end(task_id)
                return cached, True
        owner = await self._ks.get(self._dir_key(task_id))
        if owner is None:
            self._directory.pop(task_id, None)
            return None, False
        agent_type = _text(owner)
        self._remember(task_id, agent_type)
        return agent_type, False

    def _remember(self, task_id: str, agent_type: str) -> None:
        self._directory[task_id] = agent_type
        self._directory.move_to_end(task_id)
        if len(self._directory) > _DIRECTORY_CACHE:
            self._directory.popitem(last=False)

    async def _release_member(self, agent_type: str, member: str) -> None:
        """Release the lease an outbox member names, then clear the member."""
        token, port, host, agent, _ = member.split("|", 4)
        await self._release_lease(PortLease(int(port), host, agent, int(token), _EPOCH))
        await self._ks.execute(
            "ZREM", self._prefix(agent_type) + "release", member, idempotent=True
        )

    async def _release_lease(self, lease: PortLease) -> None:
        # ConflictError: the port was leased again since; this lease is long gone.
        with contextlib.suppress(ConflictError):
            await self._ports.release(lease)

    async def _emit(self, task: AgentTask, from_status: TaskStatus) -> None:
        if self._events is None or task.agent_id is None:
            return
        data: dict[str, Any] = {
            "task_id": task.task_id,
            "agent_type": task.agent_type,
            "from": from_status.value,
            "status": task.status.value,
            "attempts": task.attempts,
            "version": task.version,
            "port": task.agent_port,
        }
        if task.error is not None and task.status is T.FAILED:
            data["error"] = task.error[:1000]
        await self._publish(task.agent_id, task.status, data)

    async def _publish(self, agent_id: str, status: TaskStatus, data: dict[str, Any]) -> None:
        if self._events is None:
            return
        try:
            await self._events.publish_agent_event(agent_id, f"task_{status.value}", data)
        except ZenError as exc:  # best effort: the task write is done and stays done
            log.warning("task_event_failed", agent_id=agent_id, status=status.value, error=str(exc))

    def _decode(self, raw: Any) -> AgentTask:
        """The task in a hash our scripts wrote (HGETALL's dict or a script's flat list).

        Raises:
            BackendError: the hash does not make a valid task (written by another version
                or by hand); the message names the task and what is wrong.
        """
        try:
            return _task_from_hash(_hash(raw))
        except (*DECODE_ERRORS, ZenError) as exc:
            raise _undecodable(raw, exc) from exc


# --- validation -------------------------------------------------------------------------------
def task_spec(
    agent_type: str,
    request: dict[str, Any],
    *,
    priority: int = 0,
    timeout_seconds: float = 300.0,
    task_id: str | None = None,
) -> TaskSpec:
    """A :class:`TaskSpec`, with pydantic's errors turned into a :class:`ValidationError`.

    Raises:
        ValidationError: a value of the wrong type (the message names each field).
    """
    try:
        return TaskSpec(
            agent_type=agent_type,
            request=request,
            priority=priority,
            timeout_seconds=timeout_seconds,
            task_id=task_id,
        )
    except PydanticValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}={e['input']!r}: {e['msg']}" for e in exc.errors()
        )
        raise ValidationError(f"invalid task: {problems}") from None


@dataclass(frozen=True, slots=True)
class _Prepared:
    task_id: str
    agent_type: str
    request: dict[str, Any]
    request_bytes: bytes
    priority: int
    timeout_ms: int


def _prepare(spec: TaskSpec, codec: Codec, redactor: Redactor) -> _Prepared:
    validate_agent_type(spec.agent_type)
    if spec.task_id is not None:
        _check_task_id(spec.task_id)
    priority = spec.priority
    if isinstance(priority, bool) or not -_MAX_PRIORITY <= priority <= _MAX_PRIORITY:
        raise ValidationError(
            f"priority={priority!r}: expected an integer from {-_MAX_PRIORITY} to {_MAX_PRIORITY}"
        )
    timeout = spec.timeout_seconds
    if not (math.isfinite(timeout) and 0 < timeout <= _MAX_TIMEOUT):
        raise ValidationError(
            f"timeout_seconds={timeout!r}: expected seconds above 0, at most {_MAX_TIMEOUT:g}"
        )
    request = redactor.redact(spec.request, what="request")
    return _Prepared(
        task_id=spec.task_id or uuid.uuid4().hex,
        agent_type=spec.agent_type,
        request=request,
        request_bytes=_encode_payload(request, "request", codec),
        priority=priority,
        timeout_ms=max(1, math.ceil(timeout * 1000)),
    )


def _new_task(p: _Prepared, at: datetime) -> AgentTask:
    """The task ``task_create.lua`` just stored from ``p`` (checked input) at ``at``."""
    return construct(
        AgentTask,
        {
            "task_id": p.task_id,
            "agent_type": p.agent_type,
            "request": dict(p.request),  # as validation would copy it
            "status": TaskStatus.PENDING,
            "result": None,
            "error": None,
            "created_at": at,
            "updated_at": at,
            "agent_id": None,
            "agent_port": None,
            "process_id": None,
            "priority": p.priority,
            "attempts": 0,
            "timeout_seconds": p.timeout_ms / 1000,
            "deadline": None,
            "version": 1,
        },
    )


def _encode_payload(value: Any, what: str, codec: Codec) -> bytes:
    try:
        payload = orjson.dumps(value)
    except TypeError as exc:
        raise ValidationError(
            f"{what} is not JSON-serialisable ({exc}): use dict, list, str, int, float, bool, "
            "None, with string keys"
        ) from exc
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValidationError(
            f"{what} is {len(payload)} bytes as JSON: at most {MAX_PAYLOAD_BYTES} are accepted"
        )
    refuse_non_finite(value, payload, what)  # orjson would store NaN and infinity as null
    refuse_too_deep(value, payload, what)
    return codec.encode(orjson.Fragment(payload))


def _check_task_id(task_id: object) -> str:
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        raise ValidationError(
            f"task id {task_id!r} is invalid: use 1-128 characters from A-Z a-z 0-9 _ . : -"
        )
    return task_id


def _check_utf8(text: str, what: str) -> None:
    """Refuse text UTF-8 cannot encode (a lone surrogate) before it reaches the wire."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            raise ValidationError(
                f"{what} holds a lone surrogate at position {exc.start}: expected text that "
                "UTF-8 can encode"
            ) from None


def _check_agent(agent_id: object) -> str:
    if not isinstance(agent_id, str) or not _AGENT_ID.fullmatch(agent_id):
        raise ValidationError(
            f"agent id {agent_id!r} is invalid: use 1-128 characters from A-Z a-z 0-9 _ . : -"
        )
    return agent_id


def _status(value: TaskStatus | str) -> TaskStatus:
    try:
        return TaskStatus(value)
    except ValueError:
        raise ValidationError(
            f"unknown task status {value!r}: use one of {[s.value for s in TaskStatus]}"
        ) from None


def _parse_cursor(cursor: str | None) -> tuple[str | None, int | None]:
    if cursor is None:
        return None, None
    agent_type, sep, after = cursor.rpartition(":") if isinstance(cursor, str) else ("", "", "")
    if not sep or not AGENT_TYPE.fullmatch(agent_type) or not after.isdigit():
        raise ValidationError(f"cursor {cursor!r} is not one list_tasks returned")
    return agent_type, int(after)


def _explain(error: ZenError, task_id: str) -> ZenError:
    """Give a script's terse error reply a message that says what was wrong."""
    parts = str(error).split()
    if isinstance(error, InvalidTransitionError) and len(parts) == 3:
        _, from_status, to_status = parts
        allowed = sorted(s.value for s in TASK_TRANSITIONS[TaskStatus(from_status)])
        return InvalidTransitionError(
            f"task {task_id} cannot go from {from_status} to {to_status}; "
            f"from {from_status} it may go to: {', '.join(allowed) or 'nothing (final)'}"
        )
    if isinstance(error, ConflictError):
        if len(parts) == 3:
            return ConflictError(f"task {task_id} is at version {parts[1]}, expected {parts[2]}")
        return ConflictError(f"task {task_id!r} already exists")
    return error


# --- decoding ---------------------------------------------------------------------------------
_STATUS_OF: Final = {s.value.encode(): s for s in TaskStatus}


def _task_from_hash(f: dict[bytes, Any]) -> AgentTask:
    """The task of a stored hash, built without running the model's validation again: the
    hash holds what a script stored from checked input, and each value is checked here as
    it is converted, as validation would check it (a status of the table, a JSON object for
    the request, integers, text), so a hash that validation would refuse raises instead.

    Raises:
        KeyError, ValueError, ...: a field is missing or holds a bad value (see
            ``DECODE_ERRORS``); zen_async's ValidationError: a payload the codec refuses.
    """
    get = f.get
    request = Codec.decode(f[b"req"])
    if type(request) is not dict:
        raise ValueError(f"req is {type(request).__name__}, not a JSON object")
    result, error, agent = get(b"result"), get(b"error"), get(b"agent")
    port, pid, deadline = get(b"port"), get(b"pid"), get(b"deadline")
    return construct(
        AgentTask,
        {
            "task_id": f[b"id"].decode(),
            "agent_type": f[b"type"].decode(),
            "request": request,
            "status": _STATUS_OF[f[b"status"]],
            "result": None if result is None else Codec.decode(result),
            "error": None if error is None else error.decode(),
            "created_at": _from_ms(f[b"created"]),
            "updated_at": _from_ms(f[b"updated"]),
            "agent_id": None if agent is None else agent.decode(),
            "agent_port": None if port is None else int(port),
            "process_id": None if pid is None else int(pid),
            "priority": int(f[b"prio"]),
            "attempts": int(f[b"att"]),
            "timeout_seconds": int(f[b"tmo"]) / 1000,
            "deadline": None if deadline is None else _from_ms(deadline),
            "version": int(f[b"ver"]),
        },
    )


def _hash(raw: Any) -> dict[bytes, Any]:
    """A hash as a dict of bytes -> value, from HGETALL (a dict) or a script (a flat list)."""
    if isinstance(raw, dict):
        found = raw
    else:
        items = iter(raw)
        found = dict(zip(items, items, strict=True))
    if found and type(next(iter(found))) is not bytes:  # a client that decodes replies
        return {k if type(k) is bytes else str(k).encode(): v for k, v in found.items()}
    return found


def _undecodable(raw: Any, exc: BaseException) -> BackendError:
    try:
        task_id: object = _text(_hash(raw).get(b"id", b"?"))
    except DECODE_ERRORS:
        task_id = "?"
    reason = str(exc) if isinstance(exc, ZenError) else f"{type(exc).__name__}: {exc}"
    return BackendError(
        f"task {task_id!r} is stored but cannot be decoded ({reason}); it was written by "
        "another version or by hand: delete_task removes it"
    )


def _fields(raw: Any) -> dict[str, Any]:
    """A hash as a dict of str -> bytes, from HGETALL (a dict) or a script (a flat list)."""
    return {_text(k): v for k, v in _hash(raw).items()}


def _pairs(reply: Any) -> list[tuple[Any, Any]]:
    """``WITHSCORES`` replies: pairs in RESP3, a flat list in RESP2."""
    items = list(reply)
    if items and isinstance(items[0], list | tuple):
        return [(m, s) for m, s in items]
    return [(items[i], items[i + 1]) for i in range(0, len(items), 2)]


def _from_ms(value: Any) -> datetime:
    try:
        ms = int(value)
    except ValueError:  # "1.7e12" and the like: what a float formatted by Lua looks like
        ms = int(float(_text(value)))
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
