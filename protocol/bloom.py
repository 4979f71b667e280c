"""Bloom filters of agent ids and capability tags, as carried in node summaries.

No I/O: filters are built, queried, merged and (de)serialized in memory only.

Normative definition; another implementation must reproduce it bit for bit:

* Parameters travel with the filter: ``m`` bits (a multiple of 64, ``64 <= m <= MAX_BITS``),
  ``k`` hash functions (``1 <= k <= 32``) and a ``seed`` (uint32). Items are byte strings.
* Hash: ``d = MurmurHash3_x64_128(item, seed)``, the 16-byte digest as the reference C code
  writes it on a little-endian machine (Python: ``mmh3.hash_bytes(item, seed)``), split into
  ``h1 = uint64_le(d[0:8])`` and ``h2 = uint64_le(d[8:16])`` (Python: ``mmh3.hash64(item,
  seed=seed, signed=False)``; pass ``signed`` by keyword, mmh3 5.3 ignores it positionally).
* Positions (Kirsch-Mitzenmacher double hashing): ``p_i = (h1 + i * h2) mod m`` for
  ``i = 0 .. k-1``, in exact integer arithmetic, NOT wrapped to 64 bits. The same value is
  ``((h1 mod m) + i * (h2 mod m)) mod m``, whose intermediate stays below 2**32 here.
* Layout: bit ``p`` is bit ``p mod 64`` (0 = least significant) of 64-bit word ``p // 64``;
  words are serialized little-endian, so bit ``p`` is bit ``p mod 8`` of byte ``p // 8``.
* CBOR filter: map ``{0: m, 1: k, 2: seed, 3: bstr of m/8 bytes}``.
  CBOR delta: map ``{0: m, 1: k, 2: seed, 3: bstr of 12-byte entries}``, each entry a
  uint32 LE word index then the uint64 LE new word value, indices strictly increasing.
  ``decode`` accepts only the deterministic encoding, the one ``encode`` writes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Final

import mmh3
import numpy as np
import numpy.typing as npt

from protocol.cbor import DecodeLimits, dumps_canonical, loads_strict
from protocol.errors import LocalProtocolError, RejectReason, RemoteProtocolError

__all__ = ["MAX_BITS", "MAX_HASHES", "BloomDelta", "BloomFilter"]

MAX_BITS: Final = 1 << 27
"""Largest filter accepted anywhere (2**27 bits, 16 MiB); bounds what a peer makes us allocate."""
MAX_HASHES: Final = 32

_WORD_BITS: Final = 64
_WORD_LIMIT: Final = 1 << _WORD_BITS
_MAX_SEED: Final = (1 << 32) - 1
_DIGEST: Final = struct.Struct("<QQ")
_DELTA_ENTRY: Final = struct.Struct("<IQ")
_CHUNK: Final = 1 << 16  # items hashed per batch in the bulk paths: bounds the scratch memory
_VECTOR_MIN: Final = 256  # below this many items, unpacking the whole filter costs more
_BLOCK: Final = 512  # bytes compared at once by delta_since before looking at single words
_CBOR_OVERHEAD: Final = 32  # map header, three uints and a bstr header fit in far less
# DecodeLimits tops out at 16 MiB, a few bytes short of a filter of exactly MAX_BITS; such
# filters still travel inside node summaries, whose own limit is what applies there.
_DECODE_CEILING: Final = 16 * 1024 * 1024
_FILTER_LIMITS: Final = DecodeLimits(
    max_size=min(MAX_BITS // 8 + _CBOR_OVERHEAD, _DECODE_CEILING), max_depth=2
)
_DELTA_LIMITS: Final = DecodeLimits(
    max_size=min(MAX_BITS // _WORD_BITS * _DELTA_ENTRY.size + _CBOR_OVERHEAD, _DECODE_CEILING),
    max_depth=2,
)
_KEYS: Final = frozenset({0, 1, 2, 3})


def _param_problem(bits: object, hashes: object, seed: object) -> str | None:
    """Say what is wrong with a parameter set, or None if it is valid."""
    if type(bits) is not int or type(hashes) is not int or type(seed) is not int:
        return "bits, hashes and seed must be integers"
    if bits < _WORD_BITS or bits % _WORD_BITS or bits > MAX_BITS:
        return f"bits must be a multiple of 64 in [64, {MAX_BITS}], got {bits}"
    if not 1 <= hashes <= MAX_HASHES:
        return f"hashes must be in [1, {MAX_HASHES}], got {hashes}"
    if not 0 <= seed <= _MAX_SEED:
        return f"seed must be a uint32, got {seed}"
    return None


def _remote_fields(obj: object, what: str) -> tuple[int, int, int, bytes]:
    """Check the shape shared by filter and delta maps and return (m, k, seed, payload)."""
    if type(obj) is not dict:
        raise RemoteProtocolError(RejectReason.MALFORMED, f"{what} is not a map")
    # The key type check matters: True == 1 and hashes alike, so set equality alone lets it in.
    if any(type(key) is not int for key in obj) or obj.keys() != _KEYS:
        raise RemoteProtocolError(RejectReason.MALFORMED, f"{what} keys must be exactly 0..3")
    bits, hashes, seed, payload = obj[0], obj[1], obj[2], obj[3]
    if type(bits) is int and bits > MAX_BITS:
        raise RemoteProtocolError(RejectReason.TOO_LARGE, f"{what} has {bits} bits")
    problem = _param_problem(bits, hashes, seed)
    if problem is not None:
        raise RemoteProtocolError(RejectReason.MALFORMED, f"{what}: {problem}")
    if type(payload) is not bytes:
        raise RemoteProtocolError(RejectReason.MALFORMED, f"{what} payload is not a byte string")
    return bits, hashes, seed, payload


def _require_deterministic(obj: dict[int, Any], data: bytes, what: str) -> None:
    """Refuse an encoding other than the one we write, so that equal filters have equal bytes."""
    if dumps_canonical(obj) != data:
        raise RemoteProtocolError(RejectReason.MALFORMED, f"{what} is not deterministic CBOR")


def _cardinality(set_bits: int, bits: int, hashes: int) -> float:
    """Swamidass-Baldi estimate of the number of items that set `set_bits` of `bits` bits."""
    if set_bits >= bits:
        return math.inf
    return -(bits / hashes) * math.log1p(-set_bits / bits)


class BloomFilter:
    """A Bloom filter over byte strings whose parameters travel with it; mutable."""

    __slots__ = ("_bits", "_data", "_hashes", "_seed")

    def __init__(self, bits: int, hashes: int, seed: int = 0) -> None:
        """Create an empty filter of `bits` bits probed by `hashes` hash functions."""
        problem = _param_problem(bits, hashes, seed)
        if problem is not None:
            raise LocalProtocolError(problem)
        self._bits = bits
        self._hashes = hashes
        self._seed = seed
        self._data = bytearray(bits // 8)

    @classmethod
    def for_capacity(cls, expected_items: int, fp_rate: float, seed: int = 0) -> BloomFilter:
        """Size an empty filter so that `expected_items` items give about `fp_rate` false hits."""
        if type(expected_items) is not int or expected_items < 1:
            raise LocalProtocolError(f"expected_items must be a positive int, not {expected_items}")
        if not isinstance(fp_rate, int | float) or not 0 < fp_rate < 1:
            raise LocalProtocolError(f"fp_rate must be in (0, 1), not {fp_rate}")
        ln2 = math.log(2)
        optimal = -expected_items * math.log(fp_rate) / (ln2 * ln2)
        bits = max(_WORD_BITS, math.ceil(optimal / _WORD_BITS) * _WORD_BITS)
        if bits > MAX_BITS:
            raise LocalProtocolError(f"{expected_items} items at {fp_rate} need {bits} bits")
        hashes = min(MAX_HASHES, max(1, round(bits / expected_items * ln2)))
        return cls(bits, hashes, seed)

    @property
    def bits(self) -> int:
        """Number of bits m."""
        return self._bits

    @property
    def hashes(self) -> int:
        """Number of hash functions k."""
        return self._hashes

    @property
    def seed(self) -> int:
        """Seed of the MurmurHash3 hash."""
        return self._seed

    def _positions(self, item: bytes) -> list[int]:
        """Return the k bit positions of one item."""
        if type(item) is not bytes:
            raise LocalProtocolError(f"Bloom filter items must be bytes, not {type(item).__name__}")
        h1, h2 = _DIGEST.unpack(mmh3.hash_bytes(item, self._seed))
        m = self._bits
        start, step = h1 % m, h2 % m
        return [(start + i * step) % m for i in range(self._hashes)]

    def add(self, item: bytes) -> None:
        """Add one item."""
        data = self._data
        for p in self._positions(item):
            data[p >> 3] |= 1 << (p & 7)

    def add_many(self, items: Iterable[bytes]) -> None:
        """Add every item of `items`; the fast path for building a filter in bulk."""
        batch = list(items)
        if len(batch) < _VECTOR_MIN:
            for item in batch:
                self.add(item)
            return
        # Vectorised: one unpacked bool per bit, set by fancy indexing, packed back once.
        flags = np.unpackbits(np.frombuffer(self._data, dtype=np.uint8), bitorder="little")
        for positions in self._position_blocks(batch):
            flags[positions.ravel()] = 1
        self._data[:] = np.packbits(flags, bitorder="little").tobytes()

    def _position_blocks(self, items: list[bytes]) -> Iterator[npt.NDArray[np.uint64]]:
        """Yield, per batch of items, their k bit positions as an (n, k) array."""
        m = np.uint64(self._bits)
        probes = np.arange(self._hashes, dtype=np.uint64)
        for offset in range(0, len(items), _CHUNK):
            chunk = items[offset : offset + _CHUNK]
            # One C-level type pass per batch is far cheaper than an isinstance per item.
            if set(map(type, chunk)) != {bytes}:
                raise LocalProtocolError("Bloom filter items must be bytes")
            digests = b"".join(map(mmh3.hash_bytes, chunk, repeat(self._seed)))
            pairs = np.frombuffer(digests, dtype="<u8").reshape(-1, 2)
            # (h1 mod m) + i*(h2 mod m) stays below 32 * 2**27 = 2**32: no uint64 overflow.
            start, step = pairs[:, 0] % m, pairs[:, 1] % m
            yield (start[:, None] + probes[None, :] * step[:, None]) % m

    def __contains__(self, item: bytes) -> bool:
        """Whether the item may have been added (never False for an added item)."""
        if type(item) is not bytes:
            raise LocalProtocolError(f"Bloom filter items must be bytes, not {type(item).__name__}")
        # Probed one at a time: a miss (most lookups of most filters) ends at the first
        # clear bit, mostly the first or second one.
        h1, h2 = _DIGEST.unpack(mmh3.hash_bytes(item, self._seed))
        data, m = self._data, self._bits
        position, step = h1 % m, h2 % m
        for _ in range(self._hashes):
            if not data[position >> 3] >> (position & 7) & 1:
                return False
            position = (position + step) % m
        return True

    def contains_many(self, items: Iterable[bytes]) -> list[bool]:
        """Membership of every item of `items`, in order."""
        batch = list(items)
        if len(batch) < _VECTOR_MIN:
            return [item in self for item in batch]
        flags = np.unpackbits(np.frombuffer(self._data, dtype=np.uint8), bitorder="little")
        found: list[bool] = []
        for positions in self._position_blocks(batch):
            hits = np.asarray(flags[positions].all(axis=1), dtype=np.bool_)
            found.extend(bool(hit) for hit in hits)
        return found

    def _same_shape(self, other: BloomFilter, operation: str) -> None:
        """Refuse to combine filters whose bit positions mean different things."""
        if not isinstance(other, BloomFilter):
            raise LocalProtocolError(f"{operation} needs a BloomFilter, not {type(other).__name__}")
        mine = (self._bits, self._hashes, self._seed)
        theirs = (other._bits, other._hashes, other._seed)
        if mine != theirs:
            raise LocalProtocolError(f"{operation} of filters with parameters {mine} != {theirs}")

    def _as_int(self) -> int:
        """The bit array as one integer, bit p of the filter being bit p of the integer."""
        return int.from_bytes(self._data, "little")

    def union(self, other: BloomFilter) -> BloomFilter:
        """A new filter holding the items of both filters."""
        merged = self.copy()
        merged.update(other)
        return merged

    def update(self, other: BloomFilter) -> None:
        """Add the items of `other` to this filter in place."""
        self._same_shape(other, "update")
        self._data[:] = (self._as_int() | other._as_int()).to_bytes(len(self._data), "little")

    def bit_count(self) -> int:
        """Number of bits set."""
        return self._as_int().bit_count()

    def estimate_cardinality(self) -> float:
        """Estimated number of distinct items added (math.inf once every bit is set)."""
        return _cardinality(self.bit_count(), self._bits, self._hashes)

    def estimate_fp_rate(self) -> float:
        """Estimated probability that an absent item tests present, from the fill ratio."""
        return float((self.bit_count() / self._bits) ** self._hashes)

    def intersection_estimate(self, other: BloomFilter) -> float:
        """Estimated number of items added to both filters (math.nan if their union is full)."""
        self._same_shape(other, "intersection_estimate")
        union_bits = (self._as_int() | other._as_int()).bit_count()
        in_union = _cardinality(union_bits, self._bits, self._hashes)
        if math.isinf(in_union):
            return math.nan
        return max(0.0, self.estimate_cardinality() + other.estimate_cardinality() - in_union)

    def copy(self) -> BloomFilter:
        """An independent copy."""
        twin = BloomFilter(self._bits, self._hashes, self._seed)
        twin._data[:] = self._data
        return twin

    def __eq__(self, other: object) -> bool:
        """Same parameters and same bits; filters mutate, so this also makes them unhashable."""
        if not isinstance(other, BloomFilter):
            return NotImplemented
        return (self._bits, self._hashes, self._seed, self._data) == (
            other._bits,
            other._hashes,
            other._seed,
            other._data,
        )

    def __repr__(self) -> str:
        """Parameters and fill, not the bits themselves."""
        return (
            f"BloomFilter(bits={self._bits}, hashes={self._hashes}, seed={self._seed}, "
            f"set_bits={self.bit_count()})"
        )

    def to_cbor_obj(self) -> dict[int, Any]:
        """The filter as a CBOR-ready map, for embedding in other structures."""
        return {0: self._bits, 1: self._hashes, 2: self._seed, 3: bytes(self._data)}

    @classmethod
    def from_cbor_obj(cls, obj: object) -> BloomFilter:
        """Rebuild a filter from an untrusted decoded CBOR map."""
        bits, hashes, seed, payload = _remote_fields(obj, "Bloom filter")
        if len(payload) != bits // 8:
            raise RemoteProtocolError(
                RejectReason.MALFORMED, f"Bloom filter of {bits} bits has {len(payload)} bytes"
            )
        bloom = cls(bits, hashes, seed)
        bloom._data[:] = payload
        return bloom

    def encode(self) -> bytes:
        """Deterministic CBOR encoding of the filter."""
        return dumps_canonical(self.to_cbor_obj())

    @classmethod
    def decode(cls, data: bytes) -> BloomFilter:
        """Parse a filter from untrusted bytes."""
        obj = loads_strict(data, _FILTER_LIMITS)
        bloom = cls.from_cbor_obj(obj)
        _require_deterministic(bloom.to_cbor_obj(), data, "Bloom filter")
        return bloom

    def delta_since(self, old: BloomFilter) -> BloomDelta:
        """The words that changed from `old` to this filter."""
        self._same_shape(old, "delta_since")
        new, prev = self._data, old._data
        changes: list[tuple[int, int]] = []
        for block in range(0, len(new), _BLOCK):
            # Comparing whole blocks in C skips the mostly unchanged bulk of a large filter.
            if new[block : block + _BLOCK] == prev[block : block + _BLOCK]:
                continue
            for at in range(block, min(block + _BLOCK, len(new)), 8):
                word = new[at : at + 8]
                if word != prev[at : at + 8]:
                    changes.append((at // 8, int.from_bytes(word, "little")))
        return BloomDelta(self._bits, self._hashes, self._seed, tuple(changes))

    def apply_delta(self, delta: BloomDelta) -> BloomFilter:
        """A new filter: this one with the words of `delta` written over it; self is unchanged.

        A delta that does not fit this filter (other parameters, a word out of range) is taken
        to be a peer's fault and raises RemoteProtocolError.
        """
        if (delta.bits, delta.hashes, delta.seed) != (self._bits, self._hashes, self._seed):
            raise RemoteProtocolError(
                RejectReason.MALFORMED, "Bloom delta parameters do not match the filter"
            )
        result = self.copy()
        data, words = result._data, self._bits // _WORD_BITS
        for index, value in delta.words:
            if not (0 <= index < words and 0 <= value < _WORD_LIMIT):
                raise RemoteProtocolError(
                    RejectReason.MALFORMED, f"Bloom delta word {index}={value} out of range"
                )
            data[index * 8 : index * 8 + 8] = value.to_bytes(8, "little")
        return result


@dataclass(frozen=True, slots=True)
class BloomDelta:
    """The 64-bit words that changed between two versions of a filter, with their new values."""

    bits: int
    hashes: int
    seed: int
    words: tuple[tuple[int, int], ...]
    """(word index, new word value) pairs, indices strictly increasing."""

    def to_cbor_obj(self) -> dict[int, Any]:
        """The delta as a CBOR-ready map, for embedding in other structures."""
        pack = _DELTA_ENTRY.pack
        try:
            entries = b"".join(pack(index, value) for index, value in self.words)
        except struct.error as exc:
            raise LocalProtocolError(f"Bloom delta entry out of range: {exc}") from exc
        return {0: self.bits, 1: self.hashes, 2: self.seed, 3: entries}

    @classmethod
    def from_cbor_obj(cls, obj: object) -> BloomDelta:
        """Rebuild a delta from an untrusted decoded CBOR map."""
        bits, hashes, seed, payload = _remote_fields(obj, "Bloom delta")
        words = bits // _WORD_BITS
        if len(payload) > words * _DELTA_ENTRY.size:
            raise RemoteProtocolError(
                RejectReason.TOO_LARGE, f"Bloom delta of {len(payload)} bytes for {words} words"
            )
        if len(payload) % _DELTA_ENTRY.size:
            raise RemoteProtocolError(RejectReason.MALFORMED, "Bloom delta payload is truncated")
        entries = tuple(_DELTA_ENTRY.iter_unpack(payload))
        previous = -1
        for index, _ in entries:
            if not previous < index < words:
                raise RemoteProtocolError(
                    RejectReason.MALFORMED, f"Bloom delta index {index} out of order or range"
                )
            previous = index
        return cls(bits, hashes, seed, entries)

    def encode(self) -> bytes:
        """Deterministic CBOR encoding of the delta."""
        return dumps_canonical(self.to_cbor_obj())

    @classmethod
    def decode(cls, data: bytes) -> BloomDelta:
        """Parse a delta from untrusted bytes."""
        obj = loads_strict(data, _DELTA_LIMITS)
        delta = cls.from_cbor_obj(obj)
        _require_deterministic(delta.to_cbor_obj(), data, "Bloom delta")
        return delta
