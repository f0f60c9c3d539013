"""Turning a :class:`NewMemory` into a ``memory_store`` call, and its reply into an entry."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson

from zen_async.codec import Codec
from zen_async.errors import ValidationError
from zen_async.memory import layout as lay
from zen_async.memory.layout import Decoded, Layout, Row
from zen_async.memory.models import MemoryPriority, MemoryType, NewMemory
from zen_async.memory.options import MemoryOptions
from zen_async.store import Arg

__all__ = ["Prepared", "enum_value", "prepare", "store_call", "stored"]

_B64 = ("doc", "vector")


@dataclass(slots=True)
class Prepared:
    """One validated, encoded memory, ready for ``memory_store``."""

    memory_id: str
    agent_id: str | None
    space: str
    shard: int
    memory_type: MemoryType
    priority: MemoryPriority
    digest: str
    doc: bytes
    raw: int
    tags: tuple[str, ...]
    ttl_ms: int
    text: str
    vector: bytes | None

    def to_json(self) -> dict[str, object]:
        """JSON-safe fields, for the outage journal (bytes as base64)."""
        out: dict[str, object] = {f: getattr(self, f) for f in self.__slots__}
        for name in _B64:
            out[name] = base64.b64encode(getattr(self, name) or b"").decode()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Prepared:
        """The inverse of :meth:`to_json`."""
        values = dict(data)
        for name in _B64:
            values[name] = base64.b64decode(values[name])
        values["memory_type"] = MemoryType(values["memory_type"])
        values["priority"] = MemoryPriority(values["priority"])
        values["tags"] = tuple(values["tags"])
        return cls(**values)


def prepare(item: NewMemory, layout: Layout, codec: Codec, options: MemoryOptions) -> Prepared:
    """Validate and encode one memory to store.

    Raises:
        ValidationError: anything wrong with it.
    """
    memory_type = enum_value(MemoryType, item.memory_type, "memory type")
    priority = enum_value(MemoryPriority, item.priority, "priority")
    content = lay.check_content(item.content)
    shared = item.agent_id is None or memory_type is MemoryType.SHARED
    space = lay.space_of(None if shared else item.agent_id)
    if item.agent_id is not None:
        lay.space_of(item.agent_id)  # validated even when it goes to the shared space
    shard = layout.shard_of(space)
    doc, raw = lay.encode_doc(codec, content, item.metadata, options.max_content_bytes)
    return Prepared(
        memory_id=layout.new_id(shard),
        agent_id=None if shared else item.agent_id,
        space=space,
        shard=shard,
        memory_type=memory_type,
        priority=priority,
        digest=lay.content_hash(content),
        doc=doc,
        raw=raw,
        tags=lay.check_tags(item.tags, options.max_tags),
        ttl_ms=options.ttl_ms(memory_type, priority),
        text=lay.content_text(content),
        vector=None if item.vector is None else lay.vector_bytes(item.vector),
    )


def store_call(
    p: Prepared, layout: Layout, options: MemoryOptions, hint: str
) -> tuple[list[str], list[Arg]]:
    """KEYS and ARGV of ``memory_store.lua`` for one prepared memory."""
    shard = p.shard
    keys = [
        layout.prefix(shard) + "e:" + p.memory_id,
        layout.dedup(shard, p.space, p.memory_type.value, p.digest),
        layout.ids(shard, p.space),
        layout.stats(shard, p.space),
        layout.changes(shard),
        layout.seq(shard),
    ]
    assert p.vector is not None
    args: list[Arg] = [
        layout.prefix(shard),
        p.memory_id,
        p.agent_id or "",
        p.space,
        p.memory_type.value,
        p.priority.value,
        p.digest,
        p.doc,
        p.raw,
        p.vector,
        orjson.dumps(p.tags),
        p.ttl_ms,
        options.change_stream_max_len,
        hint,
        shard,
    ]
    return keys, args


def stored(p: Prepared, reply: list[object]) -> Decoded:
    """The entry a ``memory_store`` reply stands for (the new one, or the duplicate)."""
    created, now = int(str(reply[0])), int(str(reply[2]))
    if not created:
        return lay.decode(lay.pairs(reply[3]))
    assert p.vector is not None
    row = Row(
        memory_id=p.memory_id,
        agent_id=p.agent_id,
        memory_type=p.memory_type,
        priority=p.priority,
        content_hash=p.digest,
        doc=p.doc,
        raw_size=p.raw,
        tags=p.tags,
        related=(),
        created_ms=now,
        ttl_ms=p.ttl_ms,
        version=1,
    )
    vector = np.frombuffer(p.vector, dtype="<f4").astype(np.float32, copy=False)
    return Decoded(row, vector, 0, now, int(str(reply[3])))


E = TypeVar("E", MemoryType, MemoryPriority)


def enum_value(kind: type[E], value: object, what: str) -> E:
    """``value`` as a member of ``kind`` (a member or its string value).

    Raises:
        ValidationError: no such member.
    """
    if isinstance(value, kind):
        return value
    try:
        return kind(str(value))
    except ValueError:
        raise ValidationError(
            f"unknown {what} {value!r}: use one of {[m.value for m in kind]}"
        ) from None
