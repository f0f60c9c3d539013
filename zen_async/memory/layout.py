"""Where memory lives in Redis, and how an entry is encoded.

Key layout, in the ``memory`` keyspace of a tenant (``ks.key(...)``)::

    {m:<tenant>:<shard>}:e:<memory_id>              hash   one entry (PEXPIREAT its expiry)
    {m:<tenant>:<shard>}:h:<space>:<type>:<sha256>  string the id of the entry with this
                                                           content (the dedup key; same expiry)
    {m:<tenant>:<shard>}:ids:<space>                zset   the space's ids, scored by expiry
                                                           in ms (+inf: never)
    {m:<tenant>:<shard>}:st:<space>                 hash   counters and the last consolidation
    {m:<tenant>:<shard>}:changes                    stream the shard's change feed
    {m:<tenant>:<shard>}:seq                        string the shard's change counter
    ch:memory-changes                               pub/sub hint: "<shard>" after a change

``<space>`` is the agent id, or ``~shared`` for the tenant's shared space (``~`` is not valid
in an agent id). A space lives in one shard, ``crc32(space) % shards``, so every key of one
Lua step shares the hash tag ``{m:<tenant>:<shard>}``: one cluster slot. A memory id names its
shard (``m<shard>-<32 hex>``), so an entry is found from its id alone.

Entry hash fields: ``id agent type prio hash doc raw vec tags rel ac la ca exp ttl v``;
``doc`` is the codec-encoded JSON ``{"c": content, "m": metadata}`` (compressed above the
threshold), ``raw`` its uncompressed size, ``vec`` the little-endian float32 vector, times in
server milliseconds (``exp`` 0: never), ``ttl`` the entry's lifetime in ms (0: forever).

A change-feed entry has fields ``n`` (the shard's change number, from ``seq``), ``op``
(``u`` written, ``t`` touched, ``d`` deleted), ``id``, ``s`` (space), ``v`` (version), and for
``t`` the new ``ac la exp``.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from zen_async.codec import Codec, encode_vector, refuse_too_deep
from zen_async.errors import ValidationError
from zen_async.events.envelope import validate_agent_id
from zen_async.memory.models import (
    VECTOR_DIM,
    JSONValue,
    MemoryContent,
    MemoryEntry,
    MemoryPriority,
    MemoryType,
)
from zen_async.store import Keyspace

__all__ = ["SHARED_SPACE", "Layout", "Row", "content_hash", "content_text"]

SHARED_SPACE: Final = "~shared"
_INF: Final = float("inf")
_MEMORY_ID: Final = re.compile(r"^m(\d{1,4})-[0-9a-f]{32}$")
_TAG: Final = re.compile(r"^[^\x00-\x1f]{1,64}$")
_SORTED: Final = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def space_of(agent_id: str | None) -> str:
    """The space name of an agent (its id) or of the shared space."""
    return SHARED_SPACE if agent_id is None else validate_agent_id(agent_id)


class Layout:
    """Key names and ids of one tenant's memory (see the module docstring)."""

    __slots__ = ("_tags", "channel", "ks", "shards")

    def __init__(self, ks: Keyspace, shards: int) -> None:
        self.ks = ks
        self.shards = shards
        self._tags = [ks.key(f"{{m:{ks.tenant}:{s}}}") + ":" for s in range(shards)]
        self.channel = ks.key("ch", "memory-changes")

    def shard_of(self, space: str) -> int:
        return zlib.crc32(space.encode()) % self.shards

    def prefix(self, shard: int) -> str:
        return self._tags[shard]

    def entry(self, memory_id: str) -> str:
        return self._tags[self.parse_id(memory_id)] + "e:" + memory_id

    def dedup(self, shard: int, space: str, memory_type: str, digest: str) -> str:
        return f"{self._tags[shard]}h:{space}:{memory_type}:{digest}"

    def ids(self, shard: int, space: str) -> str:
        return self._tags[shard] + "ids:" + space

    def stats(self, shard: int, space: str) -> str:
        return self._tags[shard] + "st:" + space

    def changes(self, shard: int) -> str:
        return self._tags[shard] + "changes"

    def seq(self, shard: int) -> str:
        return self._tags[shard] + "seq"

    def new_id(self, shard: int) -> str:
        return f"m{shard}-{uuid.uuid4().hex}"

    def parse_id(self, memory_id: str) -> int:
        """The shard a memory id names.

        Raises:
            ValidationError: not an id this layout made.
        """
        match = _MEMORY_ID.fullmatch(memory_id) if isinstance(memory_id, str) else None
        if match is None or int(match.group(1)) >= self.shards:
            raise ValidationError(
                f"memory id {memory_id!r} is invalid: expected 'm<shard>-<32 hex digits>' "
                f"with a shard below {self.shards}, as store_memory returns"
            )
        return int(match.group(1))


@dataclass(slots=True)
class Row:
    """What the index keeps of an entry besides its vector and numeric columns."""

    memory_id: str
    agent_id: str | None
    memory_type: MemoryType
    priority: MemoryPriority
    content_hash: str
    doc: bytes
    raw_size: int
    tags: tuple[str, ...]
    related: tuple[str, ...]
    created_ms: int
    ttl_ms: int
    version: int

    @property
    def space(self) -> str:
        return SHARED_SPACE if self.agent_id is None else self.agent_id


@dataclass(slots=True)
class Decoded:
    """An entry read from its hash: the row, the vector and the numeric fields."""

    row: Row
    vector: npt.NDArray[np.float32]
    access_count: int
    last_accessed_ms: int
    expires_ms: int


# --- validation and encoding -------------------------------------------------------------
def content_text(content: MemoryContent) -> str:
    """The text an embedder sees: the string, or canonical JSON."""
    if isinstance(content, str):
        return content
    return orjson.dumps(content, option=_SORTED).decode()


def content_hash(content: MemoryContent) -> str:
    """SHA-256 (hex) of the canonical content (text and JSON never collide)."""
    if isinstance(content, str):
        payload = b"s" + content.encode()
    else:
        payload = b"j" + orjson.dumps(content, option=_SORTED)
    return hashlib.sha256(payload).hexdigest()


def check_content(content: object) -> MemoryContent:
    """Raises ValidationError unless content is non-empty text or a JSON object or array."""
    if isinstance(content, str):
        if not content.strip():
            raise ValidationError("memory content is empty: give some text or a JSON value")
        return content
    if isinstance(content, Mapping | list | tuple):
        if not content:
            raise ValidationError("memory content is an empty JSON value: give some content")
        return content
    raise ValidationError(
        f"memory content of type {type(content).__name__} is not supported: use str, or a "
        "JSON object (dict) or array (list)"
    )


def check_tags(tags: Sequence[str], limit: int) -> tuple[str, ...]:
    """Raises ValidationError for a bad tag list; returns the tags, unique, in order."""
    if isinstance(tags, str):
        raise ValidationError(f"tags must be a list of strings, not the string {tags!r}")
    out = tuple(dict.fromkeys(tags))
    if len(out) > limit:
        raise ValidationError(f"{len(out)} tags given; at most {limit} are allowed")
    for tag in out:
        if not isinstance(tag, str) or not _TAG.fullmatch(tag) or not _utf8(tag):
            raise ValidationError(
                f"tag {tag!r} is invalid: use 1-64 characters (valid Unicode), no control "
                "characters"
            )
    return out


def encode_doc(
    codec: Codec, content: MemoryContent, metadata: Mapping[str, JSONValue] | None, limit: int
) -> tuple[bytes, int]:
    """The stored document and its uncompressed size.

    Raises:
        ValidationError: not JSON-serialisable, or above ``limit`` bytes.
    """
    if metadata is not None and not isinstance(metadata, Mapping):
        raise ValidationError(f"metadata must be a dict, not {type(metadata).__name__}")
    try:
        payload = orjson.dumps({"c": content, "m": metadata or {}}, option=orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise ValidationError(
            f"memory content or metadata is not JSON-serialisable: {exc}"
        ) from exc
    refuse_too_deep({"c": content, "m": metadata or {}}, payload, "memory content or metadata")
    if len(payload) > limit:
        raise ValidationError(
            f"memory content and metadata take {len(payload)} bytes as JSON; at most {limit} "
            "are accepted (REDIS_MEMORY_MAX_CONTENT_BYTES)"
        )
    return codec.encode(payload), len(payload) + 1


def vector_bytes(vector: npt.ArrayLike) -> bytes:
    """Little-endian float32 bytes of a caller's vector.

    Raises:
        ValidationError: wrong dimension, NaN or infinity, all zeros, or not numeric.
    """
    try:
        return encode_vector(vector, dim=VECTOR_DIM)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"vector is not a sequence of {VECTOR_DIM} numbers: {exc}") from exc


def query_vector(vector: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """A caller's query vector as a unit float32 row.

    Raises:
        ValidationError: wrong dimension, NaN or infinity, all zeros, or not numeric.
    """
    try:
        with np.errstate(over="ignore"):  # beyond float32's range: inf, refused below
            arr = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"vector is not a sequence of {VECTOR_DIM} numbers: {exc}") from exc
    if arr.shape != (VECTOR_DIM,):
        raise ValidationError(f"vector has shape {arr.shape}, expected ({VECTOR_DIM},) float32")
    norm = float(np.sqrt(arr @ arr))
    if not math.isfinite(norm):
        raise ValidationError("vector contains NaN or infinity; every component must be finite")
    if norm == 0.0:
        raise ValidationError("vector is all zeros; it has no direction to compare by")
    unit: npt.NDArray[np.float32] = arr / np.float32(norm)
    return unit


def decode(fields: Mapping[Any, Any]) -> Decoded:
    """Read an entry hash (as HGETALL returns it)."""
    f = {_text(k): v for k, v in fields.items()}
    agent = _text(f["agent"])
    row = Row(
        memory_id=_text(f["id"]),
        agent_id=agent or None,
        memory_type=MemoryType(_text(f["type"])),
        priority=MemoryPriority(_text(f["prio"])),
        content_hash=_text(f["hash"]),
        doc=bytes(f["doc"]),
        raw_size=int(f["raw"]),
        tags=tuple(orjson.loads(f["tags"])),
        related=tuple(orjson.loads(f["rel"])),
        created_ms=int(f["ca"]),
        ttl_ms=int(f["ttl"]),
        version=int(f["v"]),
    )
    vector = np.frombuffer(bytes(f["vec"]), dtype="<f4").astype(np.float32, copy=False)
    return Decoded(row, vector, int(f["ac"]), int(float(f["la"])), int(float(f["exp"])))


def pairs(reply: Any) -> dict[Any, Any]:
    """A flat ``[k, v, k, v]`` script reply (or a dict) as a dict."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


def to_entry(
    namespace: str,
    row: Row,
    vector: npt.NDArray[np.float32],
    *,
    access_count: int,
    last_accessed_ms: float,
    expires_ms: float,
) -> MemoryEntry:
    """The public entry for a row (decodes its document). ``vector`` should be read-only."""
    doc = orjson.loads(Codec.decode(row.doc))
    return MemoryEntry(
        memory_id=row.memory_id,
        namespace=namespace,
        agent_id=row.agent_id,
        memory_type=row.memory_type,
        priority=row.priority,
        content=doc["c"],
        tags=row.tags,
        metadata=doc["m"],
        vector=vector,
        content_hash=row.content_hash,
        related_memories=row.related,
        access_count=int(access_count),
        last_accessed=datetime.fromtimestamp(last_accessed_ms / 1000.0, UTC),
        created_at=datetime.fromtimestamp(row.created_ms / 1000.0, UTC),
        expires_at=None
        if not expires_ms or expires_ms == _INF
        else datetime.fromtimestamp(expires_ms / 1000.0, UTC),
        version=row.version,
    )


def from_ms(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


text = _text


def _utf8(text: str) -> bool:
    """False for a string that cannot be UTF-8 encoded (it holds a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
