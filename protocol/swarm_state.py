"""Shared swarm state on the wire: document updates, state-vector announces, claims (sans-IO).

Each swarm has a replicated document (a Yjs/Yrs CRDT, kept by `meshd.swarm_doc`; this module
treats its updates and state vectors as bytes and only reads state vectors). Two records
travel on the swarm's topic `swarm/<name>`, signed by the *node key* of the node they name
(as heartbeats are, SPEC "Swarms"):

- `swarm.upd`: body `{0: name, 1: node PeerID, 2: update bytes}`: a Yjs v1 update, at most
  MAX_UPDATE_BYTES. A local write, or the answer to another node's announce (what it lacks).
- `swarm.sv`: body `{0: name, 1: node PeerID, 2: state vector bytes}`: the node's Yjs state
  vector (varuint count, then count pairs of varuint client id and varuint clock), at most
  MAX_STATE_VECTOR_BYTES. Sent every few heartbeats; a node that holds more answers with
  the difference, so a node that joins or comes back from a partition catches up.

`answerers` picks which nodes answer an announce: the node whose own writes the announcer
lacks always answers; of the rest, only the first ANSWERERS of a ranking that each announce
reshuffles (SHA-256 of announce time, announcer and candidate), so a late joiner in a large
swarm gets a few copies of the difference instead of one per node, and another few next time
if those did not hold what it lacks.

`claim_winner` is the task board's rule: of the claims on a task whose claimant is live, the
lowest (claim time, agent id) wins, so every replica with the same claims and membership
picks the same worker. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Any, Final

from protocol.envelope import Envelope
from protocol.errors import RejectReason, RemoteProtocolError
from protocol.ids import NodeId
from protocol.swarm import SWARM_TOPIC_PREFIX, check_swarm_name

__all__ = [
    "ANSWERERS",
    "KIND_STATE",
    "KIND_UPDATE",
    "MAX_STATE_VECTOR_BYTES",
    "MAX_UPDATE_BYTES",
    "StateAnnounce",
    "StateUpdate",
    "answerers",
    "claim_winner",
    "decode_state_vector",
    "lacks",
    "parse_state_record",
    "state_body",
    "update_body",
]

KIND_UPDATE: Final = "swarm.upd"
KIND_STATE: Final = "swarm.sv"
# An envelope carries at most 64 KiB; this leaves room for the rest of it.
MAX_UPDATE_BYTES: Final = 60_000
MAX_STATE_VECTOR_BYTES: Final = 8_192
_MAX_CLIENTS: Final = 1_024
ANSWERERS: Final = 2
_MAX_VARUINT_BYTES: Final = 8  # Yjs client ids and clocks stay below 2**53


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """`node` sends a document update of `swarm`."""

    swarm: str
    node: NodeId
    update: bytes
    created_ms: int


@dataclass(frozen=True, slots=True)
class StateAnnounce:
    """`node` holds this state of `swarm`'s document (`clocks`: client id -> next clock)."""

    swarm: str
    node: NodeId
    vector: bytes
    clocks: dict[int, int]
    created_ms: int


def update_body(swarm: str, node: NodeId, update: bytes) -> dict[int, Any]:
    """The body of a `swarm.upd` envelope; ValueError if the update is too large."""
    if len(update) > MAX_UPDATE_BYTES:
        raise ValueError(f"update of {len(update)} bytes, at most {MAX_UPDATE_BYTES}")
    return {0: check_swarm_name(swarm), 1: node.raw, 2: bytes(update)}


def state_body(swarm: str, node: NodeId, vector: bytes) -> dict[int, Any]:
    """The body of a `swarm.sv` envelope; ValueError if the vector is too large."""
    if len(vector) > MAX_STATE_VECTOR_BYTES:
        raise ValueError(f"state vector of {len(vector)} bytes, at most {MAX_STATE_VECTOR_BYTES}")
    return {0: check_swarm_name(swarm), 1: node.raw, 2: bytes(vector)}


def _bad(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(RejectReason.MALFORMED, detail)


def _varuint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(_MAX_VARUINT_BYTES):
        if pos + i >= len(data):
            raise _bad("state vector ends inside a number")
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + i + 1
        shift += 7
    raise _bad("state vector number too long")


def decode_state_vector(data: bytes) -> dict[int, int]:
    """Client id -> clock of an encoded Yjs state vector; RemoteProtocolError if malformed."""
    if not isinstance(data, bytes) or len(data) > MAX_STATE_VECTOR_BYTES:
        raise _bad(f"a state vector is at most {MAX_STATE_VECTOR_BYTES} bytes")
    count, pos = _varuint(data, 0)
    if count > _MAX_CLIENTS:
        raise _bad(f"state vector of {count} clients, at most {_MAX_CLIENTS}")
    clocks: dict[int, int] = {}
    for _ in range(count):
        client, pos = _varuint(data, pos)
        clock, pos = _varuint(data, pos)
        if client in clocks:
            raise _bad("state vector names a client twice")
        clocks[client] = clock
    if pos != len(data):
        raise _bad("bytes after the state vector")
    return clocks


def lacks(have: dict[int, int], other: dict[int, int]) -> bool:
    """Whether a replica at state `have` lacks something a replica at `other` holds."""
    return any(clock > have.get(client, 0) for client, clock in other.items())


def _body(envelope: Envelope) -> dict[int, Any]:
    body = envelope.body
    if not isinstance(body, dict) or set(body) != {0, 1, 2}:
        raise _bad(f"{envelope.kind} body must be a map with keys [0, 1, 2]")
    return body


def parse_state_record(envelope: Envelope) -> StateUpdate | StateAnnounce:
    """The state record an opened envelope carries; RemoteProtocolError if it is not one.

    It must be signed by the node it names (UNAUTHORIZED) and sent on its swarm's topic
    (WRONG_RECIPIENT). The caller has verified the signature.
    """
    if envelope.kind not in (KIND_UPDATE, KIND_STATE):
        raise _bad(f"not a swarm state record kind: {envelope.kind!r:.40}")
    body = _body(envelope)
    try:
        name = check_swarm_name(body[0])
    except ValueError as exc:
        raise _bad(str(exc)) from None
    node = NodeId.from_bytes(body[1])
    if node.public_key != envelope.sender.raw:
        raise RemoteProtocolError(
            RejectReason.UNAUTHORIZED, "a state record must be signed by the node it names"
        )
    if envelope.recipient != SWARM_TOPIC_PREFIX + name:
        raise RemoteProtocolError(
            RejectReason.WRONG_RECIPIENT, "a state record goes on its own swarm's topic"
        )
    data = body[2]
    if not isinstance(data, bytes):
        raise _bad("state record payload must be bytes")
    if envelope.kind == KIND_UPDATE:
        if not 0 < len(data) <= MAX_UPDATE_BYTES:
            raise RemoteProtocolError(
                RejectReason.TOO_LARGE, f"an update is 1..{MAX_UPDATE_BYTES} bytes"
            )
        return StateUpdate(name, node, data, envelope.created_ms)
    return StateAnnounce(name, node, data, decode_state_vector(data), envelope.created_ms)


def claim_winner(claims: Iterable[tuple[int, bytes]], live: Container[bytes]) -> bytes | None:
    """The winning claimant of a task: lowest (claim ms, agent id) among live claimants."""
    best: tuple[int, bytes] | None = None
    for stamp, agent in claims:
        if agent in live and (best is None or (stamp, agent) < best):
            best = (stamp, agent)
    return None if best is None else best[1]


def answerers(
    announcer: bytes, created_ms: int, candidates: Iterable[bytes], k: int = ANSWERERS
) -> list[bytes]:
    """The `k` candidate nodes (raw ids) that answer this announce, best ranked first."""
    salt = created_ms.to_bytes(8, "big", signed=False) + announcer
    ranked = sorted(
        {c for c in candidates if c != announcer},
        key=lambda c: hashlib.sha256(salt + c).digest(),
    )
    return ranked[:k]
