"""Discovery settings: a libp2p-free module, so the config loader can build them cheaply."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DiscoverySettings"]


@dataclass(frozen=True, slots=True)
class DiscoverySettings:
    """Timing and sizes of discovery (see `meshd.config` for their meaning and defaults)."""

    join_jitter_s: float = 1.0
    fast_walk_s: float = 1.0
    small_table: int = 8
    small_table_walk_s: float = 10.0
    walk_interval_s: float = 120.0
    lookup_timeout_s: float = 10.0
    low_watermark: int = 8
    high_watermark: int = 32
    trim_interval_s: float = 0.0  # off: see connections.trim_interval_s
    trim_grace_s: float = 20.0
    dial_timeout_s: float = 5.0
    max_parallel_dials: int = 4
    bootstrap_retry_s: float = 2.0
    bootstrap_retry_max_s: float = 15.0
