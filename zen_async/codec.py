"""Value encoding: orjson for structured values, zlib above a size threshold, and a one-byte
format header so any reader can decode any stored value whatever the writer's settings.

Vectors are stored apart from JSON, as little-endian float32 bytes.
"""

from __future__ import annotations

import zlib
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from zen_async.errors import ValidationError

__all__ = ["Codec", "decode_vector", "encode_vector"]

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

    def encode(self, value: Any) -> bytes:
        """Encode a JSON-serialisable value (``bytes`` are stored as they are).

        Raises:
            ValidationError: the value cannot be serialised.
        """
        if isinstance(value, bytes | bytearray | memoryview):
            return self._pack(bytes(value), BYTES, BYTES_ZLIB)
        try:
            payload = orjson.dumps(value, option=_ORJSON_OPTS)
        except TypeError as exc:
            raise ValidationError(
                f"cannot encode a value of type {type(value).__name__}: {exc}; "
                "use JSON types (dict, list, str, int, float, bool, None), dataclasses, "
                "pydantic models dumped to dicts, or bytes"
            ) from exc
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
