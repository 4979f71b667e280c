"""The store's exceptions: every failure is a `StoreError` whose message names the operation,
and the subclasses carry what a caller acts on (the agent id, the expected and actual state
version). `_show` renders an agent id for these messages. Nothing here touches SQLite.
"""

from __future__ import annotations

from protocol.ids import AGENT_ID_LEN, AgentId

__all__ = [
    "AgentGone",
    "AgentNotFound",
    "DuplicateAgent",
    "InboxFull",
    "OutboxFull",
    "StoreClosed",
    "StoreConflict",
    "StoreError",
]


class StoreError(Exception):
    """A store operation failed; the message names the operation."""


class StoreClosed(StoreError):
    """The store is not open."""


class AgentNotFound(StoreError):
    """No agent with this id is stored here."""

    def __init__(self, op: str, agent_id: bytes) -> None:
        super().__init__(f"{op}: no agent {_show(agent_id)}")
        self.agent_id = agent_id


class AgentGone(StoreError):
    """The agent was deleted; only its tombstone remains."""

    def __init__(self, op: str, agent_id: bytes) -> None:
        super().__init__(f"{op}: agent {_show(agent_id)} is gone")
        self.agent_id = agent_id


class DuplicateAgent(StoreError):
    """An agent id or name is already taken; nothing of the call was written."""

    def __init__(self, op: str, agent_id: bytes, detail: str) -> None:
        super().__init__(f"{op}: agent {_show(agent_id)}: {detail}")
        self.agent_id = agent_id


class StoreConflict(StoreError):
    """An optimistic state write found another version than the caller expected."""

    def __init__(self, op: str, agent_id: bytes, expected: int, actual: int) -> None:
        super().__init__(
            f"{op}: agent {_show(agent_id)} has state version {actual}, expected {expected}"
        )
        self.agent_id = agent_id
        self.expected = expected
        self.actual = actual


class InboxFull(StoreError):
    """The agent's inbox is at its bound; nothing of the call was written."""

    def __init__(self, op: str, agent_id: bytes, detail: str) -> None:
        super().__init__(f"{op}: inbox of agent {_show(agent_id)} is full ({detail})")
        self.agent_id = agent_id


class OutboxFull(StoreError):
    """The outbox is at its bound; nothing of the call was written."""


def _show(agent_id: object) -> str:
    """An agent id as text for messages: its did:key, else whatever was passed, shortened."""
    if isinstance(agent_id, bytes):
        return AgentId(agent_id).did if len(agent_id) == AGENT_ID_LEN else f"0x{agent_id.hex()}"
    return f"{agent_id!r:.80}"
