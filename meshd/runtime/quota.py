"""Quotas: a token bucket for rates, and the error every refused spawn raises."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["QuotaExceeded", "TokenBucket"]


class QuotaExceeded(Exception):
    """A quota refused the request; `reason` is the metric label (max_agents, spawn_rate...)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens per second up to `burst`; time comes in as `now` (seconds)."""

    rate: float
    burst: float
    tokens: float = -1.0
    updated: float | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst <= 0:
            raise ValueError("rate and burst must be positive")
        if self.tokens < 0:
            self.tokens = self.burst

    def _refill(self, now: float) -> None:
        if self.updated is not None and now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now if self.updated is None else max(self.updated, now)

    def try_take(self, amount: float, now: float) -> bool:
        """Take `amount` tokens if available; return whether it did."""
        self._refill(now)
        if amount <= self.tokens:
            self.tokens -= amount
            return True
        return False

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until `amount` tokens would be available (inf if over the burst)."""
        self._refill(now)
        if amount > self.burst:
            return float("inf")
        return max(0.0, (amount - self.tokens) / self.rate)
