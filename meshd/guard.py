"""Abuse resistance for inbound messages: rate limits, penalties and timed bans of peers.

Three defences, all counted (see `stats`) and configured by the `limits.*` keys:
- a token bucket per peer that shapes rather than refuses: the peer's message stream is
  read no faster than its rate, so a flooding peer is slowed by TCP backpressure and its
  excess costs us nothing at all (no read, no parse, no verification);
- a token bucket per sending agent, checked after verification (before it, a forger could
  drain an honest agent's bucket with envelopes that only claim to come from it);
- a penalty score per peer that decays with time: invalid frames, bad signatures and other
  malformed input add to it; past `ban_threshold` the peer is banned for `ban_s` seconds
  (the network disconnects it and refuses its connections until then).

Fairness between peers comes from the shape of the intake: each inbound stream hands over
at most a few batches before its ACKs are written, and blocked peers are served in turn
(FIFO) when the node's queue is full, so a flooder waits its turn like everyone else; its
bucket then caps how often its turn comes.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol.errors import RejectReason
from protocol.ratelimit import DecayingScore, TokenBucket

__all__ = ["GuardSettings", "PeerGuard"]

log = logging.getLogger("meshd.guard")

# How much each kind of rejection counts against the peer that sent it. Honest peers cause
# the light ones now and then (clock skew, a retry after our restart); only forgery and
# garbage weigh much.
PENALTIES: dict[str, float] = {
    RejectReason.MALFORMED.value: 10.0,
    RejectReason.TOO_LARGE.value: 10.0,
    RejectReason.BAD_SIGNATURE.value: 10.0,
    RejectReason.UNKNOWN_VERSION.value: 2.0,
    RejectReason.WRONG_RECIPIENT.value: 1.0,
    RejectReason.EXPIRED.value: 0.2,
    RejectReason.FROM_FUTURE.value: 0.2,
    RejectReason.TTL_TOO_LONG.value: 1.0,
    RejectReason.REPLAYED.value: 0.2,
    "bad_frames": 50.0,
    "bad_summary": 10.0,
}


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """Rate limits, penalty weights' threshold and ban length (the `limits.*` keys)."""

    peer_msgs_per_s: float = 20_000.0
    peer_burst: float = 40_000.0
    agent_msgs_per_s: float = 5_000.0
    agent_burst: float = 10_000.0
    ban_threshold: float = 500.0
    penalty_half_life_s: float = 60.0
    ban_s: float = 600.0
    max_tracked: int = 100_000

    def __post_init__(self) -> None:
        for name in ("peer_msgs_per_s", "peer_burst", "agent_msgs_per_s", "agent_burst"):
            if getattr(self, name) <= 0:
                raise ValueError(f"limits.{name} must be positive")
        if self.ban_threshold <= 0 or self.penalty_half_life_s <= 0 or self.ban_s < 0:
            raise ValueError("limits: ban_threshold and penalty_half_life_s > 0, ban_s >= 0")
        if self.max_tracked < 16:
            raise ValueError("limits.max_tracked must be at least 16")


class PeerGuard:
    """Per-peer and per-agent token buckets, penalty scores and bans (time passed in)."""

    def __init__(self, settings: GuardSettings | None = None) -> None:
        self.settings = settings or GuardSettings()
        self._peers: OrderedDict[str, TokenBucket] = OrderedDict()
        self._agents: OrderedDict[bytes, TokenBucket] = OrderedDict()
        self._scores: dict[str, DecayingScore] = {}
        self._banned: dict[str, float] = {}  # peer -> ban end (the caller's clock)
        self.counters: Counter[str] = Counter()
        self.penalties: Counter[str] = Counter()  # by reason
        # Called with a peer id when it is banned: the network disconnects it.
        self.on_ban: Callable[[str], None] | None = None

    def peer_delay(self, peer_id: str, count: int, now: float) -> float:
        """Seconds to wait before taking `count` more messages from `peer_id` (0: at once).

        The message streams wait that long before reading on: a peer over its rate is slowed
        by TCP backpressure, and costs us nothing more while it waits.
        """
        settings = self.settings
        bucket = self._bucket(self._peers, peer_id, settings.peer_msgs_per_s, settings.peer_burst)
        delay = bucket.borrow(count, now, max_debt=settings.peer_burst)
        if delay > 0:
            self.counters["throttled_batches"] += 1
            self.counters["throttled_ms"] += int(delay * 1000)
        return delay

    def admit_agent(self, sender: bytes, now: float) -> bool:
        """Whether a verified message from agent `sender` is within its rate."""
        settings = self.settings
        bucket = self._bucket(self._agents, sender, settings.agent_msgs_per_s, settings.agent_burst)
        if bucket.try_take(1, now):
            return True
        self.counters["rate_limited_agent"] += 1
        return False

    def penalise(self, peer_id: str, reason: str, now: float, count: int = 1) -> bool:
        """Count misbehaviour by `peer_id`; return True when it has just earned a ban."""
        weight = PENALTIES.get(reason, 0.0) * count
        if weight <= 0 or self.banned(peer_id, now):
            return False
        self.penalties[reason] += count
        score = self._scores.get(peer_id)
        if score is None:
            if len(self._scores) >= self.settings.max_tracked:
                self._forget_scores(now)
            score = self._scores[peer_id] = DecayingScore(self.settings.penalty_half_life_s, now)
        if score.add(now, weight) < self.settings.ban_threshold:
            return False
        del self._scores[peer_id]
        self._banned[peer_id] = now + self.settings.ban_s
        self.counters["bans"] += 1
        log.warning(
            "banned peer %s for %g s (%s and earlier misbehaviour)",
            peer_id,
            self.settings.ban_s,
            reason,
        )
        if self.on_ban is not None:
            self.on_ban(peer_id)
        return True

    def banned(self, peer_id: str, now: float) -> bool:
        """Whether `peer_id` is banned at `now`."""
        until = self._banned.get(peer_id)
        if until is None:
            return False
        if until <= now:
            del self._banned[peer_id]
            return False
        return True

    def score(self, peer_id: str, now: float) -> float:
        """The peer's current penalty score (0 when it has none)."""
        score = self._scores.get(peer_id)
        return 0.0 if score is None else score.at(now)

    def stats(self, now: float) -> dict[str, Any]:
        """Counters, penalties by reason, peers banned now and the limits in force."""
        for peer_id in [p for p, until in self._banned.items() if until <= now]:
            del self._banned[peer_id]
        settings = self.settings
        return {
            **dict(self.counters),
            "penalties": dict(self.penalties),
            "banned": sorted(self._banned),
            "limits": {
                "peer_msgs_per_s": settings.peer_msgs_per_s,
                "peer_burst": settings.peer_burst,
                "agent_msgs_per_s": settings.agent_msgs_per_s,
                "agent_burst": settings.agent_burst,
                "ban_threshold": settings.ban_threshold,
                "ban_s": settings.ban_s,
            },
        }

    def _bucket(
        self, table: OrderedDict[Any, TokenBucket], key: Any, rate: float, burst: float
    ) -> TokenBucket:
        """The bucket of `key`, made on first use; the table keeps the most recently used."""
        bucket = table.get(key)
        if bucket is None:
            bucket = table[key] = TokenBucket(rate, burst)
            while len(table) > self.settings.max_tracked:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        return bucket

    def _forget_scores(self, now: float) -> None:
        # Scores near zero carry no information: drop them; if none is, the oldest half.
        small = [p for p, s in self._scores.items() if s.at(now) < 1.0]
        victims = small or list(self._scores)[: len(self._scores) // 2]
        for peer_id in victims:
            del self._scores[peer_id]
