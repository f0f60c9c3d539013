"""Value encoding: orjson for structured values, zlib above a size threshold, and a one-byte
format header so any reader can decode any stored value whatever the writer's settings.

Vectors are stored apart from JSON, as little-endian float32 bytes.

JSON has no NaN or infinity, and orjson writes them as ``null``: a value holding one would be
stored as something else than what was given (a ``null`` where a model requires a number
poisons every later read). :func:`dump_json` and :meth:`Codec.encode` refuse them, and bound
the size of what they write (``REDIS_MAX_VALUE_BYTES`` where a service passes it).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from zen_async.errors import ValidationError

__all__ = [
    "Codec",
    "check_size",
    "decode_vector",
    "dump_json",
    "encode_vector",
    "non_finite",
    "refuse_non_finite",
]

# Format header, the first byte of every encoded value.
JSON: Final = 0x01
JSON_ZLIB: Final = 0x02
BYTES: Final = 0x03
BYTES_ZLIB: Final = 0x04

_ORJSON_OPTS: Final = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_F32_LE: Final = np.dtype("<f4")


class Codec:
    """Encode values to header-tagged bytes and back.

    Args:
        compression_threshold: payloads longer than this many bytes are zlib-compressed when
            that makes them smaller; 0 compresses everything worth compressing.
    """

    __slots__ = ("_threshold",)

    def __init__(self, *, compression_threshold: int = 1024) -> None:
        self._threshold = compression_threshold

    def encode(self, value: Any, *, limit: int | None = None, what: str = "value") -> bytes:
        """Encode a JSON-serialisable value (``bytes`` are stored as they are).

        Args:
            value: the value.
            limit: the most bytes its JSON (or the bytes given) may take, before compression;
                None: no bound.
            what: how an error names the value (``cache value``).

        Raises:
            ValidationError: the value cannot be serialised, holds NaN or infinity, or takes
                more than ``limit`` bytes.
        """
        if isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            if limit is not None:
                check_size(len(raw), limit, what)
            return self._pack(raw, BYTES, BYTES_ZLIB)
        try:
            payload = orjson.dumps(value, option=_ORJSON_OPTS)
        except TypeError as exc:
            raise ValidationError(
                f"cannot encode a value of type {type(value).__name__}: {exc}; "
                "use JSON types (dict, list, str, int, float, bool, None), dataclasses, "
                "pydantic models dumped to dicts, or bytes"
            ) from exc
        if limit is not None:
            check_size(len(payload), limit, what)
        refuse_non_finite(value, payload, what)
        refuse_too_deep(value, payload, what)
        return self._pack(payload, JSON, JSON_ZLIB)

    def _pack(self, payload: bytes, plain: int, compressed: int) -> bytes:
        if len(payload) > self._threshold:
            packed = zlib.compress(payload, 1)
            if len(packed) < len(payload):
                return bytes((compressed,)) + packed
        return bytes((plain,)) + payload

    @staticmethod
    def decode(data: bytes) -> Any:
        """Decode a value written by :meth:`encode`, with any writer's threshold.

        Raises:
            ValidationError: the bytes are not a value written by this codec.
        """
        if not data:
            raise ValidationError("cannot decode an empty value: expected a format header byte")
        header, body = data[0], data[1:]
        try:
            if header == JSON:
                return orjson.loads(body)
            if header == JSON_ZLIB:
                return orjson.loads(zlib.decompress(body))
            if header == BYTES:
                return body
            if header == BYTES_ZLIB:
                return zlib.decompress(body)
        except (orjson.JSONDecodeError, zlib.error) as exc:
            raise ValidationError(f"corrupt value with format header {header:#04x}: {exc}") from exc
        raise ValidationError(
            f"unknown format header {header:#04x}: expected 0x01-0x04 (a value written by "
            "zen_async's codec)"
        )


def dump_json(value: Any, *, what: str, limit: int | None = None) -> bytes:
    """``value`` as JSON (orjson, str keys or not, numpy arrays), checked.

    Raises:
        ValidationError: not JSON-serialisable, NaN or infinity in it, or more than
            ``limit`` bytes of JSON; the message names ``what`` (and the limit).
    """
    try:
        payload = orjson.dumps(value, option=_ORJSON_OPTS)
    except TypeError as exc:
        raise ValidationError(
            f"{what} is not JSON-serialisable ({exc}): use dict, list, str, int, float, bool "
            "and None"
        ) from exc
    if limit is not None:
        check_size(len(payload), limit, what)
    refuse_non_finite(value, payload, what)
    refuse_too_deep(value, payload, what)
    return payload


def check_size(size: int, limit: int, what: str) -> None:
    """Refuse a value of ``size`` bytes above ``limit`` (REDIS_MAX_VALUE_BYTES).

    Raises:
        ValidationError: naming ``what``, its size and the limit.
    """
    if size > limit:
        raise ValidationError(
            f"{what} takes {size} bytes as JSON; at most {limit} are accepted "
            "(REDIS_MAX_VALUE_BYTES)"
        )


MAX_JSON_DEPTH: Final = 64
"""How deeply a stored JSON document may nest. MCP clients' JSON parsers stop near 200 levels
and an answer wraps a document in a few more: a deeper stored document would make every
answer holding it unreadable (one agent's metadata would break agent_list for its tenant)."""


def refuse_too_deep(value: Any, payload: bytes, what: str) -> None:
    """Refuse ``value`` when it nests more than :data:`MAX_JSON_DEPTH` levels; a payload
    with fewer brackets than that cannot, so most values are never walked.

    Raises:
        ValidationError: naming the limit.
    """
    if payload.count(b"[") + payload.count(b"{") <= MAX_JSON_DEPTH:
        return
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise ValidationError(
                f"{what} is nested more than {MAX_JSON_DEPTH} levels deep: at most "
                f"{MAX_JSON_DEPTH} are accepted"
            )
        stack.extend((child, depth + 1) for child in children)


def refuse_non_finite(value: Any, payload: bytes, what: str) -> None:
    """Refuse ``value`` when it holds NaN or infinity, which its JSON ``payload`` (orjson's)
    shows as ``null``: a payload without ``null`` in it has none, so most values are never
    walked.

    Raises:
        ValidationError: naming where in ``value`` the number is.
    """
    if b"null" not in payload:
        return
    path = non_finite(value)
    if path is not None:
        raise ValidationError(
            f"{what}{path} is NaN or infinity, which JSON cannot hold (it would be stored as "
            "null); use a finite number"
        )


def non_finite(value: Any, path: str = "") -> str | None:
    """Where the first NaN or infinity in a JSON-like ``value`` is (``.a[2].b``; ``""`` for
    ``value`` itself), or None when it holds none. Looks into dicts, lists, tuples,
    dataclasses and numpy arrays, as orjson serialises them."""
    if isinstance(value, float | np.floating):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            found = non_finite(item, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = non_finite(item, f"{path}[{i}]")
            if found is not None:
                return found
    elif isinstance(value, np.ndarray):
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            return path
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            found = non_finite(getattr(value, field.name), f"{path}.{field.name}")
            if found is not None:
                return found
    return None


def encode_vector(vector: npt.ArrayLike, *, dim: int) -> bytes:
    """Encode a vector as little-endian float32 bytes.

    Raises:
        ValidationError: wrong dimension, NaN or infinity, or all zeros.
    """
    # A component beyond float32's range becomes infinity (refused below), not a warning.
    with np.errstate(over="ignore"):
        arr = np.asarray(vector, dtype=_F32_LE)
    if arr.ndim != 1 or arr.shape[0] != dim:
        raise ValidationError(f"vector has shape {arr.shape}, expected ({dim},) float32")
    if not np.isfinite(arr).all():
        raise ValidationError(
            "vector contains NaN or infinity (or a value beyond float32's range, 3.4e38); "
            "every component must be finite"
        )
    if not arr.any():
        raise ValidationError("vector is all zeros; it has no direction to compare by")
    return arr.tobytes()


def decode_vector(data: bytes, *, dim: int) -> npt.NDArray[np.float32]:
    """Decode little-endian float32 bytes into a read-only vector.

    Raises:
        ValidationError: the byte length does not match ``dim``.
    """
    if len(data) != dim * 4:
        raise ValidationError(f"vector has {len(data)} bytes, expected {dim * 4} ({dim} float32)")
    return np.frombuffer(data, dtype=_F32_LE).astype(np.float32, copy=False)
