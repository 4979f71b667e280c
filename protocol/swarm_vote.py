"""Swarm decisions: signed proposals, signed ballots, and the verdict they prove (sans-IO).

- `swarm.prop`: an envelope to the topic `swarm/<name>`, signed by the proposing member
  agent; body `{0: name, 1: text, 2: [electorate agent ids, sorted]}`. The electorate is the
  swarm's live membership when the proposal was made, fixed by the proposer's signature. The
  proposal's id is the first 16 bytes of SHA-256 over its whole signed frame.
- `swarm.ballot`: signed by a voting agent; body `{0: name, 1: proposal id, 2: yes (bool)}`.

`verify_decision` needs nothing but the frames: a ballot counts if its signature verifies, it
names this proposal and swarm, and its signer is in the electorate; a voter that signed both
yes and no counts for neither. With n voters in the electorate and q = n // 2 + 1 (a
majority), the outcome is `accepted` once q voted yes, `rejected` once more than n - q voted
no (yes can no longer reach q), else `pending`. Adding valid ballots never changes a decided
outcome, so any holder of enough ballots reaches the same verdict. Frames are checked for
signature and structure, not for expiry: they are kept as proof.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from protocol.envelope import Envelope
from protocol.errors import RejectReason, RemoteProtocolError
from protocol.ids import AGENT_ID_LEN, AgentId
from protocol.swarm import SWARM_TOPIC_PREFIX, check_swarm_name

__all__ = [
    "KIND_BALLOT",
    "KIND_PROPOSAL",
    "MAX_ELECTORATE",
    "MAX_TEXT_LEN",
    "PROPOSAL_ID_LEN",
    "Ballot",
    "Decision",
    "Proposal",
    "ballot_body",
    "open_ballot",
    "open_proposal",
    "proposal_body",
    "verify_decision",
]

KIND_PROPOSAL: Final = "swarm.prop"
KIND_BALLOT: Final = "swarm.ballot"
MAX_TEXT_LEN: Final = 1_000
MAX_ELECTORATE: Final = 256
PROPOSAL_ID_LEN: Final = 16


@dataclass(frozen=True, slots=True)
class Proposal:
    """A verified proposal: `electorate` votes on `text` in `swarm`."""

    swarm: str
    id: bytes
    proposer: AgentId
    text: str
    electorate: tuple[AgentId, ...]
    created_ms: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class Ballot:
    """A verified ballot of `voter` on proposal `proposal` of `swarm`."""

    swarm: str
    proposal: bytes
    voter: AgentId
    yes: bool
    created_ms: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict a set of ballots proves, and what was refused among them (reason -> n)."""

    proposal: bytes
    outcome: str  # accepted | rejected | pending
    yes: int
    no: int
    electorate: int
    quorum: int
    voters: dict[AgentId, bool] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)


def proposal_body(swarm: str, text: str, electorate: Iterable[AgentId]) -> dict[int, Any]:
    """The body of a `swarm.prop` envelope; ValueError on a bad text or electorate."""
    raws = sorted({a.raw for a in electorate})
    if not 0 < len(raws) <= MAX_ELECTORATE:
        raise ValueError(f"an electorate has 1..{MAX_ELECTORATE} members, not {len(raws)}")
    if not isinstance(text, str) or not 0 < len(text) <= MAX_TEXT_LEN:
        raise ValueError(f"a proposal's text is 1..{MAX_TEXT_LEN} characters")
    return {0: check_swarm_name(swarm), 1: text, 2: raws}


def ballot_body(swarm: str, proposal: bytes, yes: bool) -> dict[int, Any]:
    """The body of a `swarm.ballot` envelope."""
    if len(proposal) != PROPOSAL_ID_LEN:
        raise ValueError(f"a proposal id is {PROPOSAL_ID_LEN} bytes")
    return {0: check_swarm_name(swarm), 1: bytes(proposal), 2: bool(yes)}


def _bad(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(RejectReason.MALFORMED, detail)


def _open(frame: bytes, kind: str) -> tuple[Envelope, dict[int, Any], str]:
    if not isinstance(frame, bytes):
        raise _bad("a signed record is bytes")
    envelope = Envelope.decode(frame)
    if envelope.kind != kind:
        raise _bad(f"expected a {kind} record, not {envelope.kind!r:.40}")
    body = envelope.body
    if not isinstance(body, dict) or set(body) != {0, 1, 2}:
        raise _bad(f"{kind} body must be a map with keys [0, 1, 2]")
    try:
        name = check_swarm_name(body[0])
    except ValueError as exc:
        raise _bad(str(exc)) from None
    if envelope.recipient != SWARM_TOPIC_PREFIX + name:
        raise RemoteProtocolError(RejectReason.WRONG_RECIPIENT, f"{kind} for another topic")
    envelope.check_signature()
    return envelope, body, name


def open_proposal(frame: bytes) -> Proposal:
    """Decode and verify a `swarm.prop` frame; RemoteProtocolError with a reason if refused."""
    envelope, body, name = _open(frame, KIND_PROPOSAL)
    text, raws = body[1], body[2]
    if not isinstance(text, str) or not 0 < len(text) <= MAX_TEXT_LEN:
        raise _bad(f"a proposal's text is 1..{MAX_TEXT_LEN} characters")
    if not isinstance(raws, list) or not 0 < len(raws) <= MAX_ELECTORATE:
        raise _bad(f"an electorate is a list of 1..{MAX_ELECTORATE} agent ids")
    if not all(isinstance(r, bytes) and len(r) == AGENT_ID_LEN for r in raws):
        raise _bad("an electorate lists 32-byte agent ids")
    if raws != sorted(set(raws)):
        raise _bad("an electorate is sorted, without repeats")
    digest = hashlib.sha256(envelope.frame).digest()[:PROPOSAL_ID_LEN]
    electorate = tuple(AgentId(r) for r in raws)
    return Proposal(name, digest, envelope.sender, text, electorate, envelope.created_ms, frame)


def open_ballot(frame: bytes) -> Ballot:
    """Decode and verify a `swarm.ballot` frame; RemoteProtocolError with a reason if refused."""
    envelope, body, name = _open(frame, KIND_BALLOT)
    proposal, yes = body[1], body[2]
    if not isinstance(proposal, bytes) or len(proposal) != PROPOSAL_ID_LEN:
        raise _bad(f"a ballot names a {PROPOSAL_ID_LEN}-byte proposal id")
    if not isinstance(yes, bool):
        raise _bad("a ballot's choice is true (yes) or false (no)")
    return Ballot(name, proposal, envelope.sender, yes, envelope.created_ms, frame)


def verify_decision(
    proposal: Proposal, ballots: Iterable[bytes], members: Iterable[AgentId] | None = None
) -> Decision:
    """The outcome the ballot frames prove for `proposal` (electorate: `members`, default the
    proposal's own); refused ballots are counted by reason, never raised."""
    electorate = {a.raw for a in (proposal.electorate if members is None else members)}
    rejected: Counter[str] = Counter()
    choices: dict[bytes, set[bool]] = {}
    for frame in ballots:
        try:
            ballot = open_ballot(frame)
        except RemoteProtocolError as exc:
            rejected[exc.reason.value] += 1
            continue
        if ballot.swarm != proposal.swarm or ballot.proposal != proposal.id:
            rejected["wrong_proposal"] += 1
        elif ballot.voter.raw not in electorate:
            rejected[RejectReason.UNAUTHORIZED.value] += 1
        else:
            choices.setdefault(ballot.voter.raw, set()).add(ballot.yes)
    voters: dict[AgentId, bool] = {}
    for raw, chosen in sorted(choices.items()):
        if len(chosen) > 1:
            rejected["equivocal"] += 1
        else:
            voters[AgentId(raw)] = next(iter(chosen))
    n = len(electorate)
    quorum = n // 2 + 1
    yes = sum(voters.values())
    no = len(voters) - yes
    if yes >= quorum:
        outcome = "accepted"
    elif no > n - quorum:
        outcome = "rejected"
    else:
        outcome = "pending"
    return Decision(
        proposal.id, outcome, yes, no, n, quorum, voters, dict(sorted(rejected.items()))
    )
