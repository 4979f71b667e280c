"""HyperLogLog: a mergeable estimate of how many distinct items a mesh holds.

Nodes gossip these to estimate the whole mesh's agents and nodes without a collector: each
node adds what it hosts, neighbours merge by taking register maxima, and merging is
idempotent, so a sketch that reaches a node twice by two paths is not counted twice.

Definition (normative): `h = uint64 little-endian of the first 8 bytes of
MurmurHash3_x64_128(item, seed)`; the register index is the top `p` bits of `h`; the value is
the position of the first 1 bit in the remaining `64 - p` bits, counting from 1 (or
`65 - p` if they are all zero). Registers are one byte each. Estimate: the standard
HyperLogLog estimator with linear counting below 5/2 m (Flajolet et al. 2007).
CBOR form: `{0: p, 1: seed, 2: bstr of 2^p registers}`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import repeat
from typing import Any, Final

import mmh3
import numpy as np

from protocol.cbor import DecodeLimits, dumps_canonical, loads_strict
from protocol.errors import LocalProtocolError, RejectReason, RemoteProtocolError

__all__ = ["MAX_PRECISION", "MIN_PRECISION", "HyperLogLog"]

MIN_PRECISION: Final = 4
MAX_PRECISION: Final = 16
_LIMITS: Final = DecodeLimits(max_size=(1 << MAX_PRECISION) + 64, max_str=1 << MAX_PRECISION)
_CHUNK: Final = 1 << 16


def _alpha(m: int) -> float:
    if m == 16:
        return 0.673
    if m == 32:
        return 0.697
    if m == 64:
        return 0.709
    return 0.7213 / (1 + 1.079 / m)


class HyperLogLog:
    """A HyperLogLog sketch of 2^p one-byte registers; mutable, mergeable."""

    __slots__ = ("_p", "_registers", "_seed")

    def __init__(self, precision: int = 12, seed: int = 0) -> None:
        if type(precision) is not int or not MIN_PRECISION <= precision <= MAX_PRECISION:
            raise LocalProtocolError(f"precision must be {MIN_PRECISION}..{MAX_PRECISION}")
        if type(seed) is not int or not 0 <= seed < 2**32:
            raise LocalProtocolError("seed must be a uint32")
        self._p = precision
        self._seed = seed
        self._registers = np.zeros(1 << precision, dtype=np.uint8)

    @property
    def precision(self) -> int:
        """p: the sketch has 2^p registers."""
        return self._p

    @property
    def relative_error(self) -> float:
        """The standard error of the estimate, 1.04 / sqrt(2^p)."""
        return 1.04 / math.sqrt(1 << self._p)

    def add_many(self, items: Iterable[bytes]) -> None:
        """Add items (byte strings)."""
        batch = list(items)
        p = self._p
        for offset in range(0, len(batch), _CHUNK):
            chunk = batch[offset : offset + _CHUNK]
            if set(map(type, chunk)) - {bytes}:
                raise LocalProtocolError("sketch items must be bytes")
            digests = b"".join(map(mmh3.hash_bytes, chunk, repeat(self._seed)))
            h = np.frombuffer(digests, dtype="<u8")[::2]
            index = (h >> np.uint64(64 - p)).astype(np.int64)
            rest = (h << np.uint64(p)) & np.uint64(2**64 - 1)
            # Leading zeros of the remaining 64-p bits, plus one; all-zero gives 65-p.
            bits = np.zeros(rest.shape, dtype=np.int64)
            remaining = rest.copy()
            for shift in (32, 16, 8, 4, 2, 1):
                top_zero = (remaining >> np.uint64(64 - shift)) == 0
                bits += np.where(top_zero, shift, 0)
                remaining = np.where(top_zero, remaining << np.uint64(shift), remaining)
                remaining &= np.uint64(2**64 - 1)
            bits += ((remaining >> np.uint64(63)) == 0).astype(np.int64)
            rank = np.minimum(bits + 1, 65 - p).astype(np.uint8)
            np.maximum.at(self._registers, index, rank)

    def add(self, item: bytes) -> None:
        """Add one item."""
        self.add_many([item])

    def merge(self, other: HyperLogLog) -> None:
        """Take in another sketch's items (register-wise maximum; idempotent)."""
        if not isinstance(other, HyperLogLog) or (other._p, other._seed) != (self._p, self._seed):
            raise LocalProtocolError("can only merge sketches with the same precision and seed")
        np.maximum(self._registers, other._registers, out=self._registers)

    def estimate(self) -> float:
        """The estimated number of distinct items added."""
        m = 1 << self._p
        registers = self._registers.astype(np.float64)
        raw = _alpha(m) * m * m / float(np.sum(np.power(2.0, -registers)))
        zeros = int(np.count_nonzero(self._registers == 0))
        if raw <= 2.5 * m and zeros:
            return m * math.log(m / zeros)
        return raw

    def copy(self) -> HyperLogLog:
        """An independent copy."""
        clone = HyperLogLog(self._p, self._seed)
        clone._registers[:] = self._registers
        return clone

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, HyperLogLog)
            and (self._p, self._seed) == (other._p, other._seed)
            and bool(np.array_equal(self._registers, other._registers))
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def to_cbor_obj(self) -> dict[int, Any]:
        """The CBOR map form."""
        return {0: self._p, 1: self._seed, 2: self._registers.tobytes()}

    @classmethod
    def from_cbor_obj(cls, obj: object) -> HyperLogLog:
        """Parse an untrusted CBOR map form."""
        if type(obj) is not dict or set(obj) != {0, 1, 2} or any(type(k) is not int for k in obj):
            raise RemoteProtocolError(RejectReason.MALFORMED, "sketch keys must be exactly 0..2")
        p, seed, registers = obj[0], obj[1], obj[2]
        if type(p) is not int or not MIN_PRECISION <= p <= MAX_PRECISION:
            raise RemoteProtocolError(RejectReason.MALFORMED, "sketch precision out of range")
        if type(seed) is not int or not 0 <= seed < 2**32:
            raise RemoteProtocolError(RejectReason.MALFORMED, "sketch seed must be a uint32")
        if type(registers) is not bytes or len(registers) != 1 << p:
            raise RemoteProtocolError(RejectReason.MALFORMED, "sketch registers must be 2^p bytes")
        values = np.frombuffer(registers, dtype=np.uint8)
        if int(values.max(initial=0)) > 65 - p:
            raise RemoteProtocolError(RejectReason.MALFORMED, "sketch register out of range")
        sketch = cls(p, seed)
        sketch._registers[:] = values
        return sketch

    def encode(self) -> bytes:
        """Deterministic CBOR bytes."""
        return dumps_canonical(self.to_cbor_obj())

    @classmethod
    def decode(cls, data: bytes) -> HyperLogLog:
        """Parse untrusted CBOR bytes."""
        return cls.from_cbor_obj(loads_strict(data, _LIMITS))
