"""How an agent is stored and read back: the hash fields, the JSON document, the checks
every write passes, and the fast construction of :class:`AgentRecord` for bulk reads.

An agent hash holds ``type state version created updated seen host pid doc`` and, once
heartbeats reported them, the gauges ``mem cpu conns``; ``doc`` is one JSON object with
``capabilities current_task_id allocated_resources performance metadata``.

Writes: every change goes through the model's field types (:func:`check_changes`) and the
updated record through the model as a whole (:func:`with_changes`); ``metadata`` and
``allocated_resources`` must be JSON objects without NaN or infinity, of at most
REDIS_MAX_VALUE_BYTES each as JSON (:func:`encode_doc`), and the gauges finite numbers
(:func:`gauge_args`).

Reads do not trust what is stored (a record may have been written by another version, or by
hand), yet stay cheap: the hash fields are checked as they are converted, and the
``capabilities`` and ``performance`` documents are validated by the model once per distinct
document in a bulk call (agents of a fleet mostly share them; :class:`ReadCache`), then the
record is built directly from values of its field types (what pydantic's ``model_construct``
does, without its per-call overhead, which is most of a bulk read's cost). A record that does
not decode raises a ``BackendError`` naming it (:func:`undecodable`); the caller decides
whether that fails the read or skips the record.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import orjson
import pydantic
from pydantic import BaseModel, TypeAdapter

from zen_async.agents.models import (
    AgentCapabilities,
    AgentPerformance,
    AgentRecord,
    AgentSpec,
    LifecycleState,
)
from zen_async.codec import dump_json
from zen_async.errors import BackendError, ValidationError

__all__ = [
    "DECODE_ERRORS",
    "FIELDS",
    "ReadCache",
    "Times",
    "ValidatedDocs",
    "check_changes",
    "construct",
    "encode_doc",
    "from_ms",
    "gauge_args",
    "new_performance",
    "new_record",
    "problems",
    "record_doc",
    "record_from_row",
    "spec_doc",
    "text",
    "undecodable",
    "with_changes",
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
_OBJECT_FIELDS: Final = ("metadata", "allocated_resources")
_FIELD_TYPES: Final[dict[str, Any]] = {
    name: AgentRecord.model_fields[name].annotation for name in _DOC_FIELDS
}
_CHANGE_TYPES: Final[dict[str, TypeAdapter[Any]]] = {
    name: TypeAdapter(annotation) for name, annotation in _FIELD_TYPES.items()
}
_DEFAULT_PERFORMANCE: Final = AgentPerformance().model_dump()
_MAX_CONNECTIONS: Final = 2**63 - 1
DECODE_ERRORS: Final = (ValueError, TypeError, AttributeError, KeyError, ArithmeticError, OSError)
"""What converting a stored value can raise: a bad record, never a bug elsewhere (pydantic's
and orjson's errors, UnicodeDecodeError are ValueErrors; a date out of range is an
OverflowError or OSError)."""
_ALL_SET: Final[dict[type[BaseModel], set[str]]] = {
    cls: set(cls.model_fields) for cls in (AgentRecord, AgentCapabilities, AgentPerformance)
}
_DEFAULT_PERFORMANCE_JSON: Final = orjson.Fragment(AgentPerformance().model_dump_json())


def construct(cls: type[M], values: dict[str, Any]) -> M:
    """An instance of the frozen model ``cls`` holding ``values`` (every field, each already
    of its type), without validation: ``model_construct`` minus its handling of defaults and
    aliases. Instances share one set of set fields (all of them): pydantic never changes it
    in place on a frozen model (``model_copy`` copies it first)."""
    every = _ALL_SET.get(cls)
    if every is None:
        every = _ALL_SET[cls] = set(cls.model_fields)
    obj = _new(cls)
    _setattr(obj, "__dict__", values)
    _setattr(obj, "__pydantic_fields_set__", every)
    _setattr(obj, "__pydantic_extra__", None)
    _setattr(obj, "__pydantic_private__", None)
    return obj


def spec_doc(spec: AgentSpec, limit: int) -> bytes:
    """The JSON document of a new agent.

    Raises:
        ValidationError: its metadata is not a JSON object of at most ``limit`` bytes
            without NaN or infinity.
    """
    return encode_doc(
        {
            "capabilities": orjson.Fragment(spec.capabilities.model_dump_json()),
            "current_task_id": None,
            "allocated_resources": {},
            "performance": _DEFAULT_PERFORMANCE_JSON,
            "metadata": spec.metadata,
        },
        limit,
    )


def record_doc(record: AgentRecord, limit: int) -> bytes:
    """The JSON document of ``record`` (what an update stores).

    Raises:
        ValidationError: its metadata or resources are not JSON objects of at most ``limit``
            bytes without NaN or infinity.
    """
    return encode_doc({name: _dump(getattr(record, name)) for name in _DOC_FIELDS}, limit)


def encode_doc(doc: dict[str, Any], limit: int) -> bytes:
    """``doc`` as JSON, its ``metadata`` and ``allocated_resources`` checked first (and
    replaced in ``doc`` by their JSON).

    Raises:
        ValidationError: one of them is not JSON-serialisable, holds NaN or infinity, or
            takes more than ``limit`` bytes (REDIS_MAX_VALUE_BYTES).
    """
    for name in _OBJECT_FIELDS:
        value = doc[name]
        if value:
            doc[name] = orjson.Fragment(dump_json(value, what=f"agent {name}", limit=limit))
    try:
        return orjson.dumps(doc)
    except TypeError as exc:
        raise ValidationError(f"agent document is not JSON-serialisable: {exc}") from exc


def check_changes(changes: Mapping[str, Any], limit: int | None) -> dict[str, Any]:
    """An update's ``changes`` (document fields only), each validated as the record's field
    of that name; ``metadata`` and ``allocated_resources`` also as :func:`encode_doc` checks
    them (without ``limit`` when None: a journaled update, checked when it was accepted).

    Raises:
        ValidationError: naming the first bad field and what is wrong with it.
    """
    checked: dict[str, Any] = {}
    for name, value in changes.items():
        try:
            checked[name] = _CHANGE_TYPES[name].validate_python(value)
        except pydantic.ValidationError as exc:
            raise ValidationError(f"invalid {name}: {problems(exc)}") from None
        if name in _OBJECT_FIELDS:
            dump_json(checked[name], what=f"agent {name}", limit=limit)
    return checked


def with_changes(record: AgentRecord, changes: Mapping[str, Any]) -> AgentRecord:
    """``record`` with ``changes`` (as :func:`check_changes` returns them) applied, validated
    as a whole by the model.

    Raises:
        ValidationError: the result is not a valid record.
    """
    try:
        return AgentRecord.model_validate({**record.__dict__, **changes})
    except pydantic.ValidationError as exc:
        raise ValidationError(
            f"invalid update of agent {record.agent_id!r}: {problems(exc)}"
        ) from None


def gauge_args(
    memory_mb: float | None, cpu_percent: float | None, connections: int | None
) -> list[str]:
    """A heartbeat's gauges as the script takes them (``""`` to keep one).

    Raises:
        ValidationError: a gauge that is not a finite number >= 0 (``connections``: an
            integer from 0 to 2**63 - 1).
    """
    gauges = [_real_gauge("memory_mb", memory_mb), _real_gauge("cpu_percent", cpu_percent)]
    if connections is None:
        gauges.append("")
    else:
        try:
            count = None if isinstance(connections, bool) else operator.index(connections)
        except TypeError:
            count = None
        if count is None or not 0 <= count <= _MAX_CONNECTIONS:
            raise ValidationError(
                f"connections={connections!r} is invalid: expected an integer from 0 to "
                f"{_MAX_CONNECTIONS}"
            )
        gauges.append(str(count))
    return gauges


def _real_gauge(name: str, value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, bool) and isinstance(value, numbers.Real):
        try:
            number = float(value)
        except OverflowError:  # an int beyond a float's range
            number = math.inf
        if math.isfinite(number) and number >= 0:
            return repr(number)
    raise ValidationError(f"{name}={value!r} is invalid: expected a finite number >= 0")


def problems(exc: pydantic.ValidationError) -> str:
    """pydantic's errors as one line: ``field: what was wrong; ...``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in exc.errors()
    )


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


class ValidatedDocs:
    """``capabilities`` and ``performance`` documents already validated by the model, by
    their JSON, kept across reads (an agent manager holds one): a read of a document seen
    before skips the validation, which costs more than the rest of a record's decoding. A
    document that does not validate is never kept, so it fails every read, as it did the
    first. Bounded: past ``size`` documents of a kind, the oldest is dropped.

    Reads never get these instances themselves (see :class:`ReadCache`): the model's
    ``supported_operations`` is a list, and a caller changing it in place must not change
    the records other reads return.
    """

    __slots__ = ("capabilities", "performance", "size")

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.capabilities: dict[bytes, AgentCapabilities] = {}
        self.performance: dict[bytes, dict[str, Any]] = {}

    def keep(self, memo: dict[bytes, Any], key: bytes, value: Any) -> None:
        """Remember ``value`` under ``key`` in ``memo`` (one of this object's)."""
        if len(memo) >= self.size:
            del memo[next(iter(memo))]
        memo[key] = value


class ReadCache:
    """What one read decodes once: server timestamps, and the ``capabilities`` and
    ``performance`` documents validated (or found in ``docs``, validated by an earlier
    read), by their JSON. The records of one read share a capabilities instance per
    distinct document; each read gets instances of its own."""

    __slots__ = ("capabilities", "docs", "performance", "times")

    def __init__(self, docs: ValidatedDocs | None = None) -> None:
        self.times: Times = {}
        self.capabilities: dict[bytes, AgentCapabilities] = {}
        self.performance: dict[bytes, dict[str, Any]] = {}
        self.docs = docs


def undecodable(agent_id: str, reason: str) -> BackendError:
    """The error of a stored record that does not make a valid :class:`AgentRecord`."""
    return BackendError(
        f"agent {agent_id!r} is stored but cannot be decoded ({reason}); it was written by "
        "another version or by hand: delete_agent removes it, create_agent writes it anew"
    )


def record_from_row(agent_id: str, row: Sequence[Any], cache: ReadCache) -> AgentRecord | None:
    """The record of ``agent_id`` from the values of :data:`FIELDS` (None if it has none:
    the agent does not exist).

    Raises:
        BackendError: the stored values do not make a valid record (see :func:`undecodable`).
    """
    if row[1] is None:
        return None
    try:
        return _decode(agent_id, row, cache)
    except DECODE_ERRORS as exc:
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, _BadValueError) else str(exc)
        raise undecodable(agent_id, reason) from exc


class _BadValueError(ValueError):
    """A stored value of the wrong kind (the message says which)."""


def _decode(agent_id: str, row: Sequence[Any], cache: ReadCache) -> AgentRecord:
    kind, state, version, created, updated, seen, host, pid, doc, mem, cpu, conns = row
    document = orjson.loads(doc)  # a fresh object: its dicts become the models' own
    if type(document) is not dict:
        raise _BadValueError("doc is not a JSON object")
    times = cache.times
    performance = _performance(document.get("performance"), cache)
    performance["last_activity"] = None if seen is None else times.get(seen) or from_ms(seen, times)
    if mem is not None:
        performance["memory_mb"] = _finite(mem, "mem")
    if cpu is not None:
        performance["cpu_percent"] = _finite(cpu, "cpu")
    if conns is not None:
        performance["connections"] = int(conns)
    task_id = document.get("current_task_id")
    if task_id is not None and type(task_id) is not str:
        raise _BadValueError("current_task_id is not a string")
    lifecycle = _STATES.get(state)
    return construct(
        AgentRecord,
        {
            "agent_id": agent_id,
            "agent_type": kind.decode(),
            "lifecycle_state": LifecycleState(text(state)) if lifecycle is None else lifecycle,
            "capabilities": _capabilities(document.get("capabilities"), cache),
            "current_task_id": task_id,
            "allocated_resources": _object(document, "allocated_resources"),
            "performance": construct(AgentPerformance, performance),
            "metadata": _object(document, "metadata"),
            "created_at": times.get(created) or from_ms(created, times),
            "updated_at": times.get(updated) or from_ms(updated, times),
            "version": int(version),
            "host": host.decode() if host else None,
            "pid": int(pid) if pid else None,
            "stale": False,
            "provisional": False,
        },
    )


def _capabilities(values: Any, cache: ReadCache) -> AgentCapabilities:
    key = orjson.dumps(values)
    found = cache.capabilities.get(key)
    if found is None:
        docs = cache.docs
        known = None if docs is None else docs.capabilities.get(key)
        if known is None:
            try:
                found = AgentCapabilities.model_validate({} if values is None else values)
            except pydantic.ValidationError as exc:
                raise _BadValueError(f"capabilities: {problems(exc)}") from None
            if docs is not None:
                docs.keep(docs.capabilities, key, found)
                found = _own_capabilities(found)
        else:
            found = _own_capabilities(known)
        cache.capabilities[key] = found
    return found


def _own_capabilities(known: AgentCapabilities) -> AgentCapabilities:
    """A copy of validated capabilities with a list of operations of its own (the rest of
    its values are immutable)."""
    values = dict(known.__dict__)
    values["supported_operations"] = list(known.supported_operations)
    return construct(AgentCapabilities, values)


def _performance(values: Any, cache: ReadCache) -> dict[str, Any]:
    """The validated fields of a stored ``performance`` document, in a fresh dict."""
    key = orjson.dumps(values)
    found = cache.performance.get(key)
    if found is None:
        docs = cache.docs
        found = None if docs is None else docs.performance.get(key)
        if found is None:
            try:
                model = AgentPerformance.model_validate({} if values is None else values)
            except pydantic.ValidationError as exc:
                raise _BadValueError(f"performance: {problems(exc)}") from None
            found = dict(model.__dict__)
            if docs is not None:
                docs.keep(docs.performance, key, found)
        cache.performance[key] = found
    return dict(found)  # its values are immutable: a copy of the dict is a record's own


def _finite(value: bytes, name: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise _BadValueError(f"{name} is {value!r}, not a finite number")
    return number


def _object(document: dict[str, Any], name: str) -> dict[str, Any]:
    value = document.get(name)
    if value is None:
        return {}
    if type(value) is not dict:
        raise _BadValueError(f"{name} is not a JSON object")
    return value


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
