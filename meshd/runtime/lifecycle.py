"""Agent lifecycle states and the transitions between them (virtual actors, as in Orleans).

spawn -> dormant <-> active          (a message activates; idleness or memory evicts)
dormant/active -> suspended -> dormant   (suspend holds the inbox; resume delivers it)
any but gone -> gone                 (delete, TTL, or the agent declaring itself done)
dormant/active/suspended -> migrating -> gone here (and dormant on the target node)
"""

from __future__ import annotations

import enum

__all__ = ["LifecycleError", "State", "UnknownAgent", "check_transition"]


class State(enum.Enum):
    """Where an agent is in its life; the value is what the API and the store show."""

    ACTIVE = "active"
    DORMANT = "dormant"
    SUSPENDED = "suspended"
    MIGRATING = "migrating"
    GONE = "gone"


class UnknownAgent(LookupError):
    """No agent with that id (or name) is hosted here."""


class LifecycleError(Exception):
    """An operation is not allowed in the agent's current state; the message says which."""


_ALLOWED: dict[str, dict[State, frozenset[State]]] = {
    "activate": {State.DORMANT: frozenset({State.ACTIVE})},
    "evict": {State.ACTIVE: frozenset({State.DORMANT})},
    "suspend": {
        State.ACTIVE: frozenset({State.SUSPENDED}),
        State.DORMANT: frozenset({State.SUSPENDED}),
    },
    "resume": {State.SUSPENDED: frozenset({State.DORMANT})},
    "delete": {
        State.ACTIVE: frozenset({State.GONE}),
        State.DORMANT: frozenset({State.GONE}),
        State.SUSPENDED: frozenset({State.GONE}),
    },
    "migrate": {
        State.ACTIVE: frozenset({State.MIGRATING}),
        State.DORMANT: frozenset({State.MIGRATING}),
        State.SUSPENDED: frozenset({State.MIGRATING}),
    },
}


def check_transition(operation: str, current: State) -> State:
    """The state `operation` leads to from `current`; raise LifecycleError if not allowed."""
    targets = _ALLOWED.get(operation)
    if targets is None:
        raise LifecycleError(f"unknown lifecycle operation {operation!r}")
    allowed = targets.get(current)
    if not allowed:
        possible = ", ".join(sorted(s.value for s in targets)) or "no state"
        raise LifecycleError(
            f"cannot {operation} an agent that is {current.value} (only from {possible})"
        )
    (target,) = allowed
    return target
