"""The DHT validator for the `/ma/` namespace: signed agent records, newest wins.

py-libp2p calls `validate(key, value)` on every put (local and from peers) and on every
value a lookup returns; raising rejects the value. `select(key, values)` picks the value
to keep. The record logic itself lives in `protocol.records`; this adapter adds what
only the DHT knows: the key must be the record's own key (else anyone could file a
valid record of theirs under someone else's agent), and sequence ties go to the
*last* value, because py-libp2p refuses a re-put when `select` prefers the old copy.
"""

from __future__ import annotations

from collections import Counter

from libp2p.records.validator import Validator

from meshd.clock import WallClock, wall_ms
from protocol.errors import RemoteProtocolError
from protocol.records import (
    AGENT_RECORD_NAMESPACE,
    AgentRecord,
    agent_record_key,
    select_newest,
)

__all__ = ["AGENT_RECORD_NAMESPACE", "AgentRecordValidator"]


class AgentRecordValidator(Validator):
    """Accept only agent records signed by their agent, unexpired, under their own key."""

    def __init__(self, now_ms: WallClock = wall_ms) -> None:
        # Record expiry is wall-clock time (it travels between machines).
        self._now_ms = now_ms
        self.rejected: Counter[str] = Counter()

    def _check(self, key: str, value: bytes) -> AgentRecord:
        try:
            record = AgentRecord.decode(value)
            record.verify(self._now_ms())
        except RemoteProtocolError as exc:
            self.rejected[exc.reason.value] += 1
            raise
        if agent_record_key(record.agent) != key:
            self.rejected["wrong_key"] += 1
            raise ValueError(f"agent record filed under {key!r}, not its own key")
        return record

    def validate(self, key: str, value: bytes) -> None:
        """Raise unless `value` is a valid, live agent record stored under its own key."""
        if not isinstance(value, bytes | bytearray):
            self.rejected["malformed"] += 1
            raise ValueError("agent record must be bytes")
        self._check(key, bytes(value))

    def select(self, key: str, values: list[bytes]) -> int:
        """Index of the best value: highest sequence number, ties to the last index."""
        if not values:
            raise ValueError("select needs at least one value")
        valid: list[tuple[int, AgentRecord]] = []
        for index, value in enumerate(values):
            try:
                valid.append((index, self._check(key, bytes(value))))
            except (RemoteProtocolError, ValueError, TypeError):
                continue  # an invalid value never wins; already counted in `rejected`
        if not valid:
            # py-libp2p only passes values it validated; if all of them went bad since
            # (expired), keeping the last one is the least surprising answer.
            return len(values) - 1
        return valid[select_newest([record for _, record in valid])][0]
