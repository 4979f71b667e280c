"""Settings of swarm membership (`swarm.*` config keys); imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SwarmSettings"]


@dataclass(frozen=True, slots=True)
class SwarmSettings:
    """Heartbeat pace, how many missed heartbeats end a node's membership, and limits."""

    heartbeat_s: float = 1.0
    misses: int = 3
    max_swarms: int = 256
    max_nodes: int = 1024  # hosting nodes one swarm's view keeps

    def __post_init__(self) -> None:
        if not 0.05 <= self.heartbeat_s <= 600:
            raise ValueError("heartbeat_s must be in 0.05..600")
        if self.misses < 2 or self.max_swarms < 1 or self.max_nodes < 1:
            raise ValueError("misses must be >= 2, max_swarms and max_nodes >= 1")
