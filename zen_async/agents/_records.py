"""How an agent is stored and read back: the hash fields, the JSON document, and the fast
construction of :class:`AgentRecord` for bulk reads.

An agent hash holds ``type state version created updated seen host pid doc`` and, once
heartbeats reported them, the gauges ``mem cpu conns``; ``doc`` is one JSON object with
``capabilities current_task_id allocated_resources performance metadata``.

Every value in a hash was written from a validated model (or by a script from validated
arguments), so reading it back does not validate it again field by field: a record is
built directly from values already of its field types (what pydantic's ``model_construct``
does, without its per-call overhead, which is most of a bulk read's cost). A document whose
``capabilities`` or ``performance`` do not have exactly the current model's fields (written
by another version) goes through full validation instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import orjson
from pydantic import BaseModel

from zen_async.agents.models import (
    AgentCapabilities,
    AgentPerformance,
    AgentRecord,
    AgentSpec,
    LifecycleState,
)
from zen_async.errors import ValidationError

__all__ = [
    "FIELDS",
    "Times",
    "encode_doc",
    "from_ms",
    "new_performance",
    "new_record",
    "record_doc",
    "record_from_row",
    "spec_doc",
    "text",
]

FIELDS: Final = (
    "type",
    "state",
    "version",
    "created",
    "updated",
    "seen",
    "host",
    "pid",
    "doc",
    "mem",
    "cpu",
    "conns",
)
"""The hash fields a read fetches (by HMGET), in the order :func:`record_from_row` reads."""

Times = dict[bytes | int, datetime]
"""A cache of server timestamps (ms) already turned into datetimes, for one bulk call."""

M = TypeVar("M", bound=BaseModel)

_DOC_FIELDS: Final = (
    "capabilities",
    "current_task_id",
    "allocated_resources",
    "performance",
    "metadata",
)
_new = object.__new__
_setattr = object.__setattr__
_STATES: Final = {s.value.encode(): s for s in LifecycleState}
_CAPABILITY_FIELDS: Final = frozenset(AgentCapabilities.model_fields)
_PERFORMANCE_FIELDS: Final = frozenset(AgentPerformance.model_fields)
_DEFAULT_PERFORMANCE: Final = AgentPerformance().model_dump()
_ALL_SET: Final[dict[type[BaseModel], set[str]]] = {
    cls: set(cls.model_fields) for cls in (AgentRecord, AgentCapabilities, AgentPerformance)
}
_DEFAULT_PERFORMANCE_JSON: Final = orjson.Fragment(AgentPerformance().model_dump_json())


def construct(cls: type[M], values: dict[str, Any]) -> M:
    """An instance of the frozen model ``cls`` holding ``values`` (every field, each already
    of its type), without validation: ``model_construct`` minus its handling of defaults and
    aliases. Instances share one set of set fields (all of them): pydantic never changes it
    in place on a frozen model (``model_copy`` copies it first)."""
    obj = _new(cls)
    _setattr(obj, "__dict__", values)
    _setattr(obj, "__pydantic_fields_set__", _ALL_SET[cls])
    _setattr(obj, "__pydantic_extra__", None)
    _setattr(obj, "__pydantic_private__", None)
    return obj


def spec_doc(spec: AgentSpec) -> bytes:
    """The JSON document of a new agent.

    Raises:
        ValidationError: its metadata is not JSON-serialisable.
    """
    return encode_doc(
        {
            "capabilities": orjson.Fragment(spec.capabilities.model_dump_json()),
            "current_task_id": None,
            "allocated_resources": {},
            "performance": _DEFAULT_PERFORMANCE_JSON,
            "metadata": spec.metadata,
        }
    )


def record_doc(record: AgentRecord) -> bytes:
    """The JSON document of ``record`` (what an update stores).

    Raises:
        ValidationError: its metadata or resources are not JSON-serialisable.
    """
    return encode_doc({name: _dump(getattr(record, name)) for name in _DOC_FIELDS})


def encode_doc(doc: dict[str, Any]) -> bytes:
    """``doc`` as JSON.

    Raises:
        ValidationError: a value is not JSON-serialisable.
    """
    try:
        return orjson.dumps(doc)
    except TypeError as exc:
        raise ValidationError(f"agent metadata is not JSON-serialisable: {exc}") from exc


def new_performance(created: datetime) -> AgentPerformance:
    """The performance of agents created at ``created`` (immutable: one instance may serve
    every agent of a call)."""
    return construct(AgentPerformance, {**_DEFAULT_PERFORMANCE, "last_activity": created})


def new_record(
    spec: AgentSpec, agent_id: str, host: str, created: datetime, performance: AgentPerformance
) -> AgentRecord:
    """The record of an agent just created from ``spec`` (``performance``: see
    :func:`new_performance`)."""
    return construct(
        AgentRecord,
        {
            "agent_id": agent_id,
            "agent_type": spec.agent_type,
            "lifecycle_state": LifecycleState.INITIALIZING,
            "capabilities": spec.capabilities,
            "current_task_id": None,
            "allocated_resources": {},
            "performance": performance,
            "metadata": dict(spec.metadata),
            "created_at": created,
            "updated_at": created,
            "version": 1,
            "host": host,
            "pid": spec.pid,
            "stale": False,
            "provisional": False,
        },
    )


def record_from_row(agent_id: str, row: Sequence[Any], times: Times) -> AgentRecord | None:
    """The record of ``agent_id`` from the values of :data:`FIELDS` (None if it has none:
    the agent does not exist)."""
    kind, state, version, created, updated, seen, host, pid, doc, mem, cpu, conns = row
    if state is None:
        return None
    document = orjson.loads(doc)  # a fresh object: its dicts become the models' own
    performance = document.get("performance")
    if not isinstance(performance, dict):
        performance = {}
    performance["last_activity"] = None if seen is None else times.get(seen) or from_ms(seen, times)
    if mem is not None:
        performance["memory_mb"] = float(mem)
    if cpu is not None:
        performance["cpu_percent"] = float(cpu)
    if conns is not None:
        performance["connections"] = int(conns)
    lifecycle = _STATES.get(state)
    return construct(
        AgentRecord,
        {
            "agent_id": agent_id,
            "agent_type": kind.decode(),
            "lifecycle_state": LifecycleState(text(state)) if lifecycle is None else lifecycle,
            "capabilities": _capabilities(document.get("capabilities") or {}),
            "current_task_id": document.get("current_task_id"),
            "allocated_resources": document.get("allocated_resources") or {},
            "performance": _performance(performance),
            "metadata": document.get("metadata") or {},
            "created_at": times.get(created) or from_ms(created, times),
            "updated_at": times.get(updated) or from_ms(updated, times),
            "version": int(version),
            "host": host.decode() if host else None,
            "pid": int(pid) if pid else None,
            "stale": False,
            "provisional": False,
        },
    )


def _capabilities(values: dict[str, Any]) -> AgentCapabilities:
    if values.keys() != _CAPABILITY_FIELDS:
        return AgentCapabilities(**values)
    port_range = values["port_range"]
    if port_range is not None:
        values["port_range"] = tuple(port_range)
    return construct(AgentCapabilities, values)


def _performance(values: dict[str, Any]) -> AgentPerformance:
    if values.keys() != _PERFORMANCE_FIELDS:
        return AgentPerformance(**values)
    return construct(AgentPerformance, values)


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def from_ms(value: bytes | int, times: Times | None = None) -> datetime:
    """A server timestamp in ms (as a reply gives it) as a UTC datetime, remembered in
    ``times`` when given."""
    at = datetime.fromtimestamp(int(float(text(value))) / 1000, tz=UTC)
    if times is not None:
        times[value] = at
    return at


def text(value: Any) -> str:
    """A reply value as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
