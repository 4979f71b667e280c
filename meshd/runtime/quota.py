"""Quotas: the error every refused spawn raises, and the token bucket rates use."""

from __future__ import annotations

from protocol.ratelimit import TokenBucket

__all__ = ["QuotaExceeded", "TokenBucket"]


class QuotaExceeded(Exception):
    """A quota refused the request; `reason` is the metric label (max_agents, spawn_rate...)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)
