"""Token buckets and decaying penalty scores: the arithmetic of rate limits and bans.

Sans-IO like the rest of `protocol`: every call takes `now` (seconds, any monotonic clock).
"""

from __future__ import annotations

import math

from protocol.errors import LocalProtocolError

__all__ = ["DecayingScore", "TokenBucket"]


class TokenBucket:
    """`rate` tokens per second up to `burst`; time comes in as `now` (seconds)."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float) -> None:
        if not (rate > 0 and burst > 0):
            raise LocalProtocolError("a token bucket needs a positive rate and burst")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated: float | None = None

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

    def take_up_to(self, count: int, now: float) -> int:
        """Take as many whole tokens as available, at most `count`; return how many."""
        self._refill(now)
        granted = count if count <= self.tokens else max(0, int(self.tokens))
        self.tokens -= granted
        return granted

    def borrow(self, count: int, now: float, max_debt: float) -> float:
        """Take `count` tokens, going into debt if need be; return seconds until it is repaid.

        A shaper rather than a gate: the caller waits that long before going on, so the
        average stays at `rate`. The debt never exceeds `max_debt` (the excess is forgiven),
        so one huge batch cannot stall its sender for ever.
        """
        self._refill(now)
        self.tokens = max(self.tokens - count, -max_debt)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until `amount` tokens would be available (inf if over the burst)."""
        self._refill(now)
        if amount > self.burst:
            return float("inf")
        return max(0.0, (amount - self.tokens) / self.rate)

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled to its burst (it can be forgotten)."""
        self._refill(now)
        return self.tokens >= self.burst


class DecayingScore:
    """A score that halves every `half_life` seconds: recent misbehaviour weighs most."""

    __slots__ = ("_decay", "stamp", "value")

    def __init__(self, half_life: float, now: float) -> None:
        if not half_life > 0:
            raise LocalProtocolError("a decaying score needs half_life > 0")
        self._decay = math.log(2) / half_life
        self.value = 0.0
        self.stamp = now

    def at(self, now: float) -> float:
        """The score at `now`."""
        return self.value * math.exp(-self._decay * max(0.0, now - self.stamp))

    def add(self, now: float, amount: float) -> float:
        """Add `amount` at `now`; return the new score."""
        self.value = self.at(now) + amount
        self.stamp = now
        return self.value
