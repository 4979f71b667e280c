"""The values the store takes and returns (`AgentRow`, `AgentExport`, `OutboxMessage`,
`IndexEntry`, `MessageKey`, `StoreStatistics`) and their mapping to and from SQLite row
tuples, in the column order of `schema._AGENT_COLS` and `schema._OUTBOX_COLS`. A stored
lifecycle is 'dormant', 'suspended' or 'gone': 'active' is runtime state and is stored as
'dormant' (see the `meshd.store` package docstring).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from meshd.store.errors import StoreError

__all__ = [
    "AgentExport",
    "AgentRow",
    "IndexEntry",
    "Lifecycle",
    "MessageKey",
    "OutboxMessage",
    "StoreStatistics",
]

Lifecycle = Literal["active", "dormant", "suspended", "gone"]
_STORED_LIFECYCLES = ("dormant", "suspended", "gone")


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRow:
    """One agent as stored; `secret` is the seed encrypted by the caller, `state` opaque CBOR."""

    id: bytes
    kind: str
    created_ms: int
    updated_ms: int
    secret: bytes
    name: str | None = None
    caps: tuple[str, ...] = ()
    lifecycle: Lifecycle = "dormant"
    expires_ms: int | None = None
    parent: bytes | None = None
    budget: int = 0
    birth_cert: bytes | None = None
    state: bytes = b""
    state_version: int = 0
    record_seq: int = 0


@dataclass(frozen=True, slots=True)
class AgentExport:
    """What migrates: the agent's row (with state and secret) and its waiting inbox frames."""

    row: AgentRow
    inbox: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxMessage:
    """One at-least-once message waiting for its recipient's acknowledgement."""

    msg_id: bytes
    sender: bytes
    recipient: bytes
    frame: bytes
    next_attempt_ms: int
    expires_ms: int
    attempts: int = 0


class IndexEntry(NamedTuple):
    """What the runtime keeps in memory per agent, loaded by `iter_agent_index` at startup."""

    id: bytes
    lifecycle: Lifecycle
    kind: str


class MessageKey(NamedTuple):
    """A message's identity: its sender and the sender's message id."""

    sender: bytes
    msg_id: bytes


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """Counters since the store opened (trio-style `statistics()`)."""

    transactions: int  # write transactions committed
    writes: int  # writes acknowledged (committed)
    failed_writes: int  # writes that raised and were rolled back
    largest_group: int  # most writes committed in one transaction
    pending_writes: int  # writes queued or waiting to queue, not yet taken by the writer
    outbox_depth: int


def _row_tuple(op: str, row: AgentRow, caps_cache: dict[tuple[str, ...], str]) -> tuple[Any, ...]:
    caps = caps_cache.get(row.caps)
    if caps is None:
        # Most agents of a spawn share their tags: encode each distinct tuple once.
        caps = caps_cache[row.caps] = json.dumps(list(row.caps), separators=(",", ":"))
    return (
        row.id, row.kind, row.name, caps, _stored_lifecycle(op, row.lifecycle),
        row.created_ms, row.expires_ms, row.parent, row.budget, row.secret, row.birth_cert,
        row.state, row.state_version, row.record_seq, row.updated_ms,
    )  # fmt: skip


def _agent(r: Sequence[Any]) -> AgentRow:
    return AgentRow(
        id=r[0], kind=r[1], name=r[2], caps=tuple(json.loads(r[3])), lifecycle=r[4],
        created_ms=r[5], expires_ms=r[6], parent=r[7], budget=r[8], secret=r[9],
        birth_cert=r[10], state=r[11], state_version=r[12], record_seq=r[13], updated_ms=r[14],
    )  # fmt: skip


def _outbox_message(r: Sequence[Any]) -> OutboxMessage:
    return OutboxMessage(
        msg_id=r[0], sender=r[1], recipient=r[2], frame=r[3], attempts=r[4],
        next_attempt_ms=r[5], expires_ms=r[6],
    )  # fmt: skip


def _stored_lifecycle(op: str, lifecycle: str) -> str:
    if lifecycle == "active":
        return "dormant"  # in-memory state only: see the `meshd.store` package docstring
    if lifecycle not in _STORED_LIFECYCLES:
        raise StoreError(f"{op}: unknown lifecycle {lifecycle!r}")
    return lifecycle
