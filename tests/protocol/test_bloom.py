"""Tests of protocol.bloom: no false negatives, bounded false positives, strict decoding."""

from __future__ import annotations

import contextlib
import hashlib
import math
from typing import Any

import cbor2
import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.bloom import MAX_BITS, BloomDelta, BloomFilter
from protocol.errors import LocalProtocolError, RejectReason, RemoteProtocolError

# Strategies (candidates for tests/strategies.py once other modules need them).
items_st = st.lists(st.binary(max_size=40), max_size=60)
params_st = st.tuples(
    st.integers(min_value=1, max_value=64).map(lambda words: words * 64),
    st.integers(min_value=1, max_value=32),
    st.integers(min_value=0, max_value=2**32 - 1),
)


def ids(start: int, count: int, tag: bytes = b"agent") -> list[bytes]:
    """Deterministic 32-byte ids, as agent public keys would look."""
    return [
        hashlib.blake2b(tag + i.to_bytes(8, "little"), digest_size=32).digest()
        for i in range(start, start + count)
    ]


def filled(params: tuple[int, int, int], items: list[bytes]) -> BloomFilter:
    bloom = BloomFilter(*params)
    bloom.add_many(items)
    return bloom


def reference_bits(params: tuple[int, int, int], items: list[bytes]) -> bytes:
    """The bit array straight from the module docstring's definition, unoptimised."""
    bits, hashes, seed = params
    value = 0
    for item in items:
        h1, h2 = mmh3.hash64(item, seed=seed, signed=False)
        for i in range(hashes):
            value |= 1 << ((h1 + i * h2) % bits)
    return value.to_bytes(bits // 8, "little")


# Known answer: catches any change of hashing, position formula or bit layout.
KAT_PARAMS = (256, 5, 42)
KAT_BITS = "0000000004000000000000000100000008000000000800400200020010008080"
KAT_CBOR = "a400190100010502182a035820" + KAT_BITS


def test_known_answer() -> None:
    bloom = BloomFilter(*KAT_PARAMS)
    bloom.add(b"alice")
    bloom.add(b"bob")
    assert bloom.to_cbor_obj()[3].hex() == KAT_BITS
    assert bloom.encode().hex() == KAT_CBOR
    assert BloomFilter.decode(bytes.fromhex(KAT_CBOR)) == bloom


@given(params_st, items_st)
def test_matches_reference_definition(params: tuple[int, int, int], items: list[bytes]) -> None:
    assert filled(params, items).to_cbor_obj()[3] == reference_bits(params, items)


@given(params_st, items_st, items_st)
def test_no_false_negatives(
    params: tuple[int, int, int], bulk: list[bytes], single: list[bytes]
) -> None:
    bloom = filled(params, bulk)
    for item in single:
        bloom.add(item)
    assert all(item in bloom for item in bulk + single)
    assert all(bloom.contains_many(bulk + single))


@given(params_st, items_st)
def test_add_many_equals_repeated_add(params: tuple[int, int, int], items: list[bytes]) -> None:
    one_by_one = BloomFilter(*params)
    for item in items:
        one_by_one.add(item)
    assert filled(params, items) == one_by_one


def test_bulk_paths_across_batches() -> None:
    # More items than one internal hashing batch, fed as a generator.
    items = ids(0, 70_000)
    bulk = BloomFilter(65_536, 4, 7)
    bulk.add_many(iter(items))
    one_by_one = BloomFilter(65_536, 4, 7)
    for item in items:
        one_by_one.add(item)
    assert bulk == one_by_one
    probes = items[::7] + ids(0, 5_000, b"absent")
    assert bulk.contains_many(iter(probes)) == [item in bulk for item in probes]


@given(params_st, items_st, items_st)
def test_union_contains_both_sides(
    params: tuple[int, int, int], left: list[bytes], right: list[bytes]
) -> None:
    a, b = filled(params, left), filled(params, right)
    before = a.copy()
    merged = a.union(b)
    assert a == before  # union does not touch its operands
    assert all(merged.contains_many(left + right))
    assert merged == filled(params, left + right)
    a.update(b)
    assert a == merged


@given(params_st, items_st)
def test_encode_decode_round_trip(params: tuple[int, int, int], items: list[bytes]) -> None:
    bloom = filled(params, items)
    assert BloomFilter.decode(bloom.encode()) == bloom
    # Embedded in a larger map, as node summaries do.
    outer = cbor2.loads(cbor2.dumps({7: bloom.to_cbor_obj()}))
    assert BloomFilter.from_cbor_obj(outer[7]) == bloom


@given(params_st, items_st, items_st, st.data())
def test_delta_reproduces_new_filter(
    params: tuple[int, int, int], old_items: list[bytes], more: list[bytes], data: st.DataObject
) -> None:
    old = filled(params, old_items)
    grown = filled(params, old_items + more)
    # A filter rebuilt after deletions clears bits, which whole-word deltas also carry.
    survivors = st.lists(st.sampled_from(old_items), max_size=10) if old_items else st.just([])
    kept = data.draw(survivors)
    rebuilt = filled(params, kept + more)
    for new in (grown, rebuilt, old):
        delta = new.delta_since(old)
        assert old.apply_delta(delta) == new
        assert old.apply_delta(BloomDelta.decode(delta.encode())) == new
    assert old == filled(params, old_items)  # apply_delta returns a new filter


def test_delta_lists_only_changed_words() -> None:
    old = BloomFilter(64 * 1024, 3)
    old.add_many(ids(0, 1_000))
    new = old.copy()
    new.add(b"one more")
    delta = new.delta_since(old)
    assert 1 <= len(delta.words) <= 3
    assert [index for index, _ in delta.words] == sorted({index for index, _ in delta.words})
    assert old.delta_since(old).words == ()


def decode_or_reject(data: bytes) -> None:
    """Both decoders return or raise RemoteProtocolError; anything else fails the test."""
    for decode in (BloomFilter.decode, BloomDelta.decode):
        with contextlib.suppress(RemoteProtocolError):
            decode(data)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    decode_or_reject(data)


cbor_value = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.binary(max_size=64),
    st.text(max_size=4),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.one_of(st.integers(min_value=-1, max_value=4), st.booleans(), st.text(max_size=1)),
        st.one_of(cbor_value, st.sampled_from([64, 128, 5, 0, 2**32, 2**27 + 64])),
        max_size=5,
    )
)
def test_decode_near_valid_maps(obj: dict[Any, Any]) -> None:
    data = cbor2.dumps(obj)
    decode_or_reject(data)


DELTA_CBOR = BloomDelta(512, 3, 1, ((0, 7), (5, 2**64 - 1))).encode().hex()


@given(st.sampled_from([KAT_CBOR, DELTA_CBOR]), st.integers(0, 200), st.integers(0, 255))
def test_decode_mutated_valid_encoding(valid: str, position: int, byte: int) -> None:
    data = bytearray.fromhex(valid)
    position %= len(data)
    data[position] = byte
    decode_or_reject(bytes(data))
    decode_or_reject(bytes(data[:position]))


def reject(data: bytes, reason: RejectReason = RejectReason.MALFORMED) -> None:
    for decode in (BloomFilter.decode, BloomDelta.decode):
        with pytest.raises(RemoteProtocolError) as caught:
            decode(data)
        assert caught.value.reason is reason


def test_decode_rejects() -> None:
    payload = bytes(8)
    reject(b"")
    reject(b"\x81" * 2_000 + b"\x00")  # deep nesting
    reject(bytes.fromhex("d81e820100"))  # a rational with a zero denominator
    reject(cbor2.dumps([64, 1, 0, payload]))
    reject(cbor2.dumps({0: 64, True: 1, 2: 0, 3: payload}))  # True == 1 in Python
    reject(cbor2.dumps({0: 64, 1: 1, 2: 0, 3: payload, 4: 0}))
    reject(cbor2.dumps({0: 64.0, 1: 1, 2: 0, 3: payload}))
    reject(cbor2.dumps({0: 64, 1: 1, 2: 0, 3: bytearray(payload).hex()}))
    reject(cbor2.dumps({0: 96, 1: 1, 2: 0, 3: payload}))
    reject(cbor2.dumps({0: 64, 1: 0, 2: 0, 3: payload}))
    reject(cbor2.dumps({0: 64, 1: 33, 2: 0, 3: payload}))
    reject(cbor2.dumps({0: 64, 1: 1, 2: 2**32, 3: payload}))
    reject(cbor2.dumps({0: MAX_BITS * 2, 1: 1, 2: 0, 3: b""}), RejectReason.TOO_LARGE)
    reject(bytes(MAX_BITS // 4), RejectReason.TOO_LARGE)
    # Valid content in a non-deterministic encoding: key order, then indefinite length.
    reject(cbor2.dumps({3: payload, 0: 64, 1: 1, 2: 0}))
    reject(bytes.fromhex("bf001840010102000348") + payload + b"\xff")


def test_decode_rejects_bad_payload_lengths() -> None:
    with pytest.raises(RemoteProtocolError, match="bytes"):
        BloomFilter.decode(cbor2.dumps({0: 128, 1: 1, 2: 0, 3: bytes(8)}))
    entry = (5).to_bytes(4, "little") + (1).to_bytes(8, "little")
    with pytest.raises(RemoteProtocolError, match="truncated"):
        BloomDelta.decode(cbor2.dumps({0: 64 * 8, 1: 1, 2: 0, 3: entry[:-1]}))
    with pytest.raises(RemoteProtocolError) as caught:
        BloomDelta.decode(cbor2.dumps({0: 64, 1: 1, 2: 0, 3: entry * 2}))
    assert caught.value.reason is RejectReason.TOO_LARGE


@pytest.mark.parametrize(
    "indices",
    [[5, 5], [6, 5], [8]],  # duplicate, out of order, past the last of 8 words
)
def test_delta_decode_rejects_bad_indices(indices: list[int]) -> None:
    entries = b"".join(i.to_bytes(4, "little") + bytes(8) for i in indices)
    with pytest.raises(RemoteProtocolError, match="index"):
        BloomDelta.decode(cbor2.dumps({0: 512, 1: 1, 2: 0, 3: entries}))


def test_apply_delta_rejects_foreign_delta() -> None:
    bloom = BloomFilter(128, 3, 1)
    for delta in (
        BloomDelta(128, 3, 2, ()),
        BloomDelta(192, 3, 1, ()),
        BloomDelta(128, 3, 1, ((2, 1),)),
        BloomDelta(128, 3, 1, ((0, 2**64),)),
    ):
        with pytest.raises(RemoteProtocolError):
            bloom.apply_delta(delta)
    assert bloom == BloomFilter(128, 3, 1)


def test_false_positive_rate_at_design_load() -> None:
    bloom = BloomFilter.for_capacity(20_000, 0.01, seed=3)
    bloom.add_many(ids(0, 20_000))
    hits = sum(bloom.contains_many(ids(0, 100_000, b"absent")))
    assert 0.5 * 0.01 <= hits / 100_000 <= 1.5 * 0.01
    assert 0.5 * 0.01 <= bloom.estimate_fp_rate() <= 1.5 * 0.01


def test_cardinality_and_intersection_estimates() -> None:
    left = BloomFilter.for_capacity(20_000, 0.01)
    right = left.copy()
    left.add_many(ids(0, 12_000))
    right.add_many(ids(8_000, 12_000))
    assert BloomFilter(64, 1).estimate_cardinality() == 0
    assert left.estimate_cardinality() == pytest.approx(12_000, rel=0.05)
    assert left.union(right).estimate_cardinality() == pytest.approx(20_000, rel=0.05)
    assert left.intersection_estimate(right) == pytest.approx(4_000, rel=0.1)


def test_saturated_filter_estimates() -> None:
    full = BloomFilter(64, 2)
    full.add_many(ids(0, 1_000))
    assert full.bit_count() == 64
    assert full.estimate_cardinality() == math.inf
    assert full.estimate_fp_rate() == 1.0
    assert math.isnan(full.intersection_estimate(BloomFilter(64, 2)))


def test_for_capacity_sizing() -> None:
    bloom = BloomFilter.for_capacity(1_000, 0.01)
    assert (bloom.bits, bloom.hashes, bloom.seed) == (9_600, 7, 0)
    assert BloomFilter.for_capacity(1, 0.5).bits == 64
    for bad in ((0, 0.01), (10, 0.0), (10, 1.0), (10, math.nan), (10**9, 1e-9)):
        with pytest.raises(LocalProtocolError):
            BloomFilter.for_capacity(*bad)


@pytest.mark.parametrize(
    ("bits", "hashes", "seed"),
    [
        (100, 3, 0),
        (0, 3, 0),
        (MAX_BITS + 64, 3, 0),
        (64, 0, 0),
        (64, 33, 0),
        (64, 3, -1),
        (64, 3, 2**32),
        (True, 3, 0),
        (64.0, 3, 0),
    ],
)
def test_bad_parameters(bits: Any, hashes: Any, seed: Any) -> None:
    with pytest.raises(LocalProtocolError):
        BloomFilter(bits, hashes, seed)


def test_misuse_raises_local_errors() -> None:
    bloom = BloomFilter(128, 3)
    for other in (BloomFilter(192, 3), BloomFilter(128, 4), BloomFilter(128, 3, seed=1)):
        with pytest.raises(LocalProtocolError):
            bloom.union(other)
        with pytest.raises(LocalProtocolError):
            bloom.update(other)
        with pytest.raises(LocalProtocolError):
            bloom.delta_since(other)
        with pytest.raises(LocalProtocolError):
            bloom.intersection_estimate(other)
    for item in ("text", bytearray(b"x"), 5):
        with pytest.raises(LocalProtocolError):
            bloom.add(item)  # type: ignore[arg-type]
        with pytest.raises(LocalProtocolError):
            bloom.add_many([b"ok", item])  # type: ignore[list-item]
        with pytest.raises(LocalProtocolError):
            bloom.contains_many([item])  # type: ignore[list-item]
    with pytest.raises(LocalProtocolError):
        BloomDelta(128, 3, 0, ((-1, 0),)).to_cbor_obj()


def test_copy_and_equality() -> None:
    bloom = filled((128, 3, 9), [b"a"])
    twin = bloom.copy()
    assert twin == bloom
    twin.add(b"b")
    assert twin != bloom
    assert bloom != filled((128, 3, 8), [b"a"])
    assert bloom != "not a filter"
    with pytest.raises(TypeError):
        hash(bloom)
