"""Settings of node summaries (config keys `summary.*`); light, so the config loader need not
import trio."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SummarySettings"]


@dataclass(frozen=True, slots=True)
class SummarySettings:
    """How often summaries are pushed, how big their filters are and what they may cost."""

    interval_s: float = 30.0
    fp_rate: float = 0.01
    neighbour_bytes_per_s: float = 1024.0
    two_hop: bool = False
    min_gap_s: float = 5.0
    tick_s: float = 0.5
    max_bytes: int = 4 * 1024 * 1024
    max_level_bits: int = 1 << 20
    push_timeout_s: float = 10.0
    penalty_after: int = 5
    penalty_s: float = 300.0
    exclude_s: float = 60.0
    neighbour_after_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.fp_rate < 0.5:
            raise ValueError("summary.fp_rate must be in (0, 0.5)")
        if min(self.interval_s, self.tick_s, self.neighbour_bytes_per_s, self.push_timeout_s) <= 0:
            raise ValueError("summary intervals, timeouts and byte budgets must be positive")
        if self.max_bytes < 1024 or self.penalty_after < 1:
            raise ValueError("summary.max_bytes must be >= 1024 and penalty_after >= 1")
