"""HyperLogLog sketches: accuracy, idempotent merges, strict decoding."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.sketch import HyperLogLog


def ids(start: int, n: int) -> list[bytes]:
    return [
        hashlib.blake2b(i.to_bytes(8, "big"), digest_size=32).digest()
        for i in range(start, start + n)
    ]


@pytest.mark.parametrize("n", [0, 10, 1_000, 100_000])
def test_estimate_within_three_standard_errors(n: int) -> None:
    sketch = HyperLogLog(12)
    sketch.add_many(ids(0, n))
    error = 3 * sketch.relative_error * max(n, 1) + 1
    assert abs(sketch.estimate() - n) <= error


def test_merge_is_a_union_and_idempotent() -> None:
    a, b = HyperLogLog(12), HyperLogLog(12)
    a.add_many(ids(0, 30_000))
    b.add_many(ids(20_000, 30_000))  # 10,000 shared
    union = a.copy()
    union.merge(b)
    assert abs(union.estimate() - 50_000) < 3 * union.relative_error * 50_000
    again = union.copy()
    again.merge(b)
    again.merge(a)
    assert again == union  # merging what is already in changes nothing
    with pytest.raises(LocalProtocolError):
        a.merge(HyperLogLog(10))


@given(st.lists(st.binary(min_size=1, max_size=40), max_size=200))
@settings(max_examples=100)
def test_round_trip_and_order_independence(items: list[bytes]) -> None:
    forward, backward = HyperLogLog(8), HyperLogLog(8)
    forward.add_many(items)
    backward.add_many(reversed(items))
    assert forward == backward
    assert HyperLogLog.decode(forward.encode()) == forward


@given(st.binary(max_size=600))
@settings(max_examples=300)
def test_arbitrary_bytes_only_raise_remote_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        HyperLogLog.decode(data)


def test_bad_registers_are_refused() -> None:
    sketch = HyperLogLog(4)
    obj = sketch.to_cbor_obj()
    obj[2] = bytes([62] * 16)
    with pytest.raises(RemoteProtocolError, match="out of range"):
        HyperLogLog.from_cbor_obj(obj)
