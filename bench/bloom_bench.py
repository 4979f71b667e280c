"""Bloom filter benchmark: bulk add and bulk lookup rates, and the false-positive rate reached.

The ids are 32-byte keys derived from a counter, built before any timing starts, so every run
measures the same work.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, where bench/protocol.py would
# shadow the protocol package; the repository root must win.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocol.bloom import BloomFilter

FP_TARGET = 0.01


def make_ids(start: int, count: int, tag: bytes) -> list[bytes]:
    """`count` deterministic 32-byte ids, as agent public keys would look."""
    return [
        hashlib.blake2b(tag + i.to_bytes(8, "little"), digest_size=32).digest()
        for i in range(start, start + count)
    ]


def run_bloom_bench(n: int = 1_000_000) -> dict[str, float]:
    """Time building a filter sized for `n` ids at 1% and probing it with n ids, half absent."""
    present = make_ids(0, n, b"present")
    absent = make_ids(0, n - n // 2, b"absent")
    probes = present[: n // 2] + absent
    bloom = BloomFilter.for_capacity(n, FP_TARGET)

    start = time.perf_counter()
    bloom.add_many(present)
    add_seconds = time.perf_counter() - start

    start = time.perf_counter()
    found = bloom.contains_many(probes)
    lookup_seconds = time.perf_counter() - start

    if not all(found[: n // 2]):
        raise AssertionError("a Bloom filter lost an item it was given")
    return {
        "adds_per_s": n / add_seconds,
        "lookups_per_s": len(probes) / lookup_seconds,
        "add_seconds": add_seconds,
        "fp_rate": sum(found[n // 2 :]) / len(absent),
        "fp_estimate": bloom.estimate_fp_rate(),
        "bits": float(bloom.bits),
        "hashes": float(bloom.hashes),
    }


if __name__ == "__main__":
    for name, value in run_bloom_bench().items():
        print(f"bloom {name:<16s}{value:>14,.4g}")
