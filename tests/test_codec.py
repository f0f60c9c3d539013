"""The codec: any reader decodes any writer's value; bad input gets a typed error."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from zen_async import Codec, ValidationError
from zen_async.codec import decode_vector, encode_vector

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@given(json_values, st.sampled_from([0, 16, 1024, 10**9]))
def test_round_trip_with_any_threshold(value: object, threshold: int) -> None:
    data = Codec(compression_threshold=threshold).encode(value)
    # A reader with a different threshold still decodes it: the header says the format.
    assert Codec(compression_threshold=7).decode(data) == value


def test_large_values_are_compressed_and_small_ones_are_not() -> None:
    codec = Codec(compression_threshold=1024)
    big = {"text": "agent " * 1000}
    small = {"text": "agent"}
    assert codec.encode(big)[0] == 0x02
    assert len(codec.encode(big)) < 1024
    assert codec.encode(small)[0] == 0x01


def test_bytes_are_stored_as_they_are() -> None:
    codec = Codec(compression_threshold=8)
    raw = bytes(range(256)) * 10
    assert codec.decode(codec.encode(raw)) == raw
    assert codec.decode(codec.encode(b"ab")) == b"ab"


def test_unknown_header_and_garbage_raise_validation_error() -> None:
    with pytest.raises(ValidationError, match="unknown format header 0x7b"):
        Codec.decode(b'{"a": 1}')
    with pytest.raises(ValidationError, match="empty"):
        Codec.decode(b"")
    with pytest.raises(ValidationError, match="corrupt"):
        Codec.decode(b"\x02not-zlib")


def test_unencodable_value_raises_validation_error() -> None:
    with pytest.raises(ValidationError, match="cannot encode a value of type object"):
        Codec().encode(object())


def test_vectors_round_trip_as_little_endian_float32() -> None:
    v = np.arange(1, 385, dtype=np.float64)
    data = encode_vector(v, dim=384)
    assert len(data) == 384 * 4
    assert data[:4] == struct.pack("<f", 1.0)
    np.testing.assert_array_equal(decode_vector(data, dim=384), v.astype(np.float32))


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (np.ones(383), "expected \\(384,\\)"),
        (np.full(384, np.nan), "NaN or infinity"),
        (np.r_[np.ones(383), np.inf], "NaN or infinity"),
        (np.zeros(384), "all zeros"),
    ],
)
def test_bad_vectors_raise_validation_error(vector: np.ndarray, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        encode_vector(vector, dim=384)


def test_vector_with_wrong_byte_length_is_rejected() -> None:
    with pytest.raises(ValidationError, match="expected 1536"):
        decode_vector(b"\x00" * 12, dim=384)
