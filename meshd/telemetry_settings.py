"""Settings of the telemetry gossip (`telemetry.*` config keys); imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TelemetrySettings"]


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """How often and how widely the node gossips telemetry, and what it keeps."""

    interval_s: float = 5.0
    fanout: int = 8
    epoch_s: float = 600.0
    node_ttl_s: float = 120.0
    max_nodes: int = 256
    report_entries: int = 32
    rate_window_s: float = 30.0
    request_timeout_s: float = 5.0
    anomaly_factor: float = 5.0

    def __post_init__(self) -> None:
        for name in ("interval_s", "epoch_s", "node_ttl_s", "rate_window_s", "request_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if min(self.fanout, self.max_nodes, self.report_entries) < 1 or self.anomaly_factor <= 1:
            raise ValueError(
                "fanout, max_nodes and report_entries must be >= 1, anomaly_factor > 1"
            )
