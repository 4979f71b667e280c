"""The runtime's limits and timings; a light module, so the config loader need not import trio."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RuntimeSettings"]


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """Limits and timings of the runtime (config keys `agents.*`)."""

    max_agents: int = 2_000_000
    max_active: int = 10_000
    idle_evict_s: float = 60.0
    spawn_rate: float = 50_000.0
    spawn_burst: float = 200_000.0
    default_budget: int = 1_000
    inbox_limit: int = 1_000
    max_handlers: int = 256
    sweep_interval_s: float = 1.0
    envelope_ttl_ms: int = 60_000

    def __post_init__(self) -> None:
        for name in ("max_agents", "max_active", "inbox_limit", "max_handlers"):
            if getattr(self, name) < 1:
                raise ValueError(f"agents.{name} must be at least 1")
        if self.idle_evict_s <= 0 or self.sweep_interval_s <= 0:
            raise ValueError("agents.idle_evict_s and agents.sweep_interval_s must be positive")
