"""A replay window: remembers (sender, message id) until the message expires, in bounded memory.

The envelope checks already refuse anything expired or with a lifetime over the policy's
maximum, so an entry never needs to outlive its message's `expires`: memory is bounded by
the accepted rate times the maximum lifetime, and hard-capped by `capacity`. When the cap
would be passed the window refuses (rate_limited) instead of forgetting live entries, since
forgetting would let a replay through; a per-sender cap keeps one flooding sender from
taking the whole window.
"""

from __future__ import annotations

import heapq

from protocol.errors import LocalProtocolError, RejectReason, RemoteProtocolError

__all__ = ["ReplayWindow"]

_ID_LEN = 16


class ReplayWindow:
    """Sans-IO replay detector keyed by (sender, message id); time comes in as `now_ms`."""

    __slots__ = (
        "_bucket_ms",
        "_buckets",
        "_capacity",
        "_heap",
        "_max_per_sender",
        "_per_sender",
        "_seen",
    )

    def __init__(
        self, capacity: int = 500_000, max_per_sender: int = 50_000, bucket_ms: int = 1_000
    ) -> None:
        if capacity <= 0 or max_per_sender <= 0 or bucket_ms <= 0:
            raise LocalProtocolError("capacity, max_per_sender and bucket_ms must be positive")
        self._capacity = capacity
        self._max_per_sender = max_per_sender
        self._bucket_ms = bucket_ms
        self._seen: dict[bytes, int] = {}
        self._per_sender: dict[bytes, int] = {}
        # Entries are dropped a bucket at a time: one heap item per bucket, not per message.
        self._buckets: dict[int, list[bytes]] = {}
        self._heap: list[int] = []

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: tuple[bytes, bytes]) -> bool:
        return key[0] + key[1] in self._seen

    def check(self, sender: bytes, msg_id: bytes, expires_ms: int, now_ms: int) -> None:
        """Record a message, or raise replayed (seen before) or rate_limited (window full)."""
        if len(msg_id) != _ID_LEN:
            raise LocalProtocolError("message ids are 16 bytes")
        self.expire(now_ms)
        key = sender + msg_id
        if key in self._seen:
            raise RemoteProtocolError(RejectReason.REPLAYED, "message id seen before")
        if expires_ms <= now_ms:
            raise RemoteProtocolError(RejectReason.EXPIRED, "message already expired")
        held = self._per_sender.get(sender, 0)
        if held >= self._max_per_sender:
            raise RemoteProtocolError(RejectReason.RATE_LIMITED, "replay window full for sender")
        if len(self._seen) >= self._capacity:
            raise RemoteProtocolError(RejectReason.RATE_LIMITED, "replay window full")
        self._seen[key] = expires_ms
        self._per_sender[sender] = held + 1
        bucket = expires_ms // self._bucket_ms
        keys = self._buckets.get(bucket)
        if keys is None:
            self._buckets[bucket] = keys = []
            heapq.heappush(self._heap, bucket)
        keys.append(key)

    def expire(self, now_ms: int) -> int:
        """Forget entries whose message has expired by `now_ms`; return how many."""
        dropped = 0
        heap = self._heap
        # A bucket is dropped once all of it lies in the past; its entries cannot be
        # accepted again anyway because the expiry check refuses them.
        while heap and (heap[0] + 1) * self._bucket_ms <= now_ms:
            bucket = heapq.heappop(heap)
            for key in self._buckets.pop(bucket):
                del self._seen[key]
                sender = key[: len(key) - _ID_LEN]
                left = self._per_sender[sender] - 1
                if left:
                    self._per_sender[sender] = left
                else:
                    del self._per_sender[sender]
                dropped += 1
        return dropped

    def next_expiry_ms(self) -> int | None:
        """When the next `expire` call would free something (for timers), or None."""
        return (self._heap[0] + 1) * self._bucket_ms if self._heap else None
