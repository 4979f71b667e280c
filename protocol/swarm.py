"""Swarm membership records and the membership view they build (sans-IO).

A swarm is a named group of agents on any number of nodes. Its records travel as envelopes
(`protocol.envelope`) on the topic `swarm/<name>` (SPEC section "Swarms"):

- `swarm.join`: signed by the joining agent; body `{0: name, 1: hosting node PeerID, 2:
  parent swarm name or null}`. The agent names its node.
- `swarm.leave`: signed by the leaving agent; body `{0: name}`.
- `swarm.hb` (heartbeat): signed by the *node key* (the envelope's sender is the node's
  Ed25519 public key, the one inside its PeerID); body `{0: name, 1: node PeerID, 2: [agent
  ids], 3: interval ms, 4: parent or null, 5: {key: number}}`. One per node and swarm, every
  interval, listing the node's member agents and the sums of their contributions. It is the
  node's word for its own agents: the node holds their secret keys, so it could sign their
  joins anyway.
- `swarm.agg` (hierarchy): on the *parent's* topic, signed by the child swarm's coordinator;
  body `{0: parent, 1: child, 2: agents in the child's subtree, 3: {key: number} totals, 4:
  interval ms}`. One per child swarm and interval, whatever the child's size.

`SwarmView` folds records into a view: a node's members are live while its last heartbeat (or
a join naming it) is younger than `misses` of its intervals, so a crashed node's agents leave
within `misses` intervals. Order between records of one node uses their `created` times
(that node's clock): a heartbeat made before a leave does not bring the agent back, one made
before a join does not drop it. The coordinator is the live member with the lowest id (bytes
order), so all nodes with the same view agree on it. `now` is the caller's monotonic time in
seconds; nothing here reads a clock.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from protocol.envelope import Envelope
from protocol.errors import RejectReason, RemoteProtocolError
from protocol.ids import AGENT_ID_LEN, AgentId, NodeId

__all__ = [
    "KIND_AGGREGATE",
    "KIND_HEARTBEAT",
    "KIND_JOIN",
    "KIND_LEAVE",
    "MAX_MEMBERS_PER_NODE",
    "SWARM_TOPIC_PREFIX",
    "Aggregate",
    "Heartbeat",
    "Join",
    "Leave",
    "SwarmView",
    "aggregate_body",
    "check_sums",
    "check_swarm_name",
    "heartbeat_body",
    "join_body",
    "leave_body",
    "parse_record",
    "swarm_topic",
]

SWARM_TOPIC_PREFIX: Final = "swarm/"
KIND_JOIN: Final = "swarm.join"
KIND_LEAVE: Final = "swarm.leave"
KIND_HEARTBEAT: Final = "swarm.hb"
KIND_AGGREGATE: Final = "swarm.agg"
MAX_SUM_KEYS: Final = 32
_MAX_KEY_LEN: Final = 64
# A heartbeat of 1,500 ids is about 50 KiB, under the 64 KiB envelope limit.
MAX_MEMBERS_PER_NODE: Final = 1_500
_MAX_INTERVAL_MS: Final = 600_000
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_swarm_name(name: object) -> str:
    """The name if valid (1..64 of A-Z a-z 0-9 . _ -, not starting with . _ -); else ValueError."""
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise ValueError(f"a swarm name is 1..64 letters, digits, '.', '_' or '-': {name!r:.80}")
    return name


def swarm_topic(name: str) -> str:
    """The pub/sub topic that carries the swarm's records."""
    return SWARM_TOPIC_PREFIX + check_swarm_name(name)


@dataclass(frozen=True, slots=True)
class Join:
    """An agent joins `swarm`, hosted by `node`."""

    swarm: str
    agent: AgentId
    node: NodeId
    parent: str | None
    created_ms: int


@dataclass(frozen=True, slots=True)
class Leave:
    """An agent leaves `swarm`."""

    swarm: str
    agent: AgentId
    created_ms: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """`node` is alive and hosts `members` of `swarm`; the next one comes in `interval_ms`."""

    swarm: str
    node: NodeId
    members: tuple[AgentId, ...]
    interval_ms: int
    parent: str | None
    created_ms: int
    sums: dict[str, int | float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Aggregate:
    """`child`'s coordinator reports its subtree to the parent `swarm`."""

    swarm: str
    child: str
    signer: AgentId
    agents: int
    totals: dict[str, int | float]
    interval_ms: int
    created_ms: int


Record = Join | Leave | Heartbeat | Aggregate


def join_body(swarm: str, node: NodeId, parent: str | None) -> dict[int, Any]:
    """The body of a `swarm.join` envelope."""
    return {0: check_swarm_name(swarm), 1: node.raw, 2: parent}


def leave_body(swarm: str) -> dict[int, Any]:
    """The body of a `swarm.leave` envelope."""
    return {0: check_swarm_name(swarm)}


def heartbeat_body(
    swarm: str,
    node: NodeId,
    members: Iterable[AgentId],
    interval_ms: int,
    parent: str | None,
    sums: dict[str, int | float] | None = None,
) -> dict[int, Any]:
    """The body of a `swarm.hb` envelope (members sorted, at most MAX_MEMBERS_PER_NODE)."""
    raws = sorted({m.raw for m in members})
    if len(raws) > MAX_MEMBERS_PER_NODE:
        raise ValueError(f"{len(raws)} members, at most {MAX_MEMBERS_PER_NODE} per heartbeat")
    body = {0: check_swarm_name(swarm), 1: node.raw, 2: raws, 3: interval_ms, 4: parent}
    body[5] = check_sums(sums or {})
    return body


def aggregate_body(
    parent: str, child: str, agents: int, totals: dict[str, int | float], interval_ms: int
) -> dict[int, Any]:
    """The body of a `swarm.agg` envelope."""
    return {
        0: check_swarm_name(parent),
        1: check_swarm_name(child),
        2: agents,
        3: check_sums(totals),
        4: interval_ms,
    }


def check_sums(sums: object) -> dict[str, int | float]:
    """A map of at most MAX_SUM_KEYS keys (1..64 chars) to finite numbers; else ValueError."""
    if not isinstance(sums, dict) or len(sums) > MAX_SUM_KEYS:
        raise ValueError(f"sums are a map of at most {MAX_SUM_KEYS} keys")
    for key, value in sums.items():
        if not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY_LEN:
            raise ValueError(f"a sum's key is 1..{_MAX_KEY_LEN} characters: {key!r:.80}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"sum {key!r:.80} is not a number")
        if not math.isfinite(value) or abs(value) > 2**53:
            raise ValueError(f"sum {key!r:.80} is not finite or too large")
    return dict(sums)


def _sums(value: object) -> dict[str, int | float]:
    try:
        return check_sums(value)
    except ValueError as exc:
        raise _bad(str(exc)) from None


def _interval(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_INTERVAL_MS:
        raise _bad(f"interval must be 1..{_MAX_INTERVAL_MS} ms")
    return value


def _bad(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(RejectReason.MALFORMED, detail)


def _name(value: object) -> str:
    try:
        return check_swarm_name(value)
    except ValueError as exc:
        raise _bad(str(exc)) from None


def _parent(value: object) -> str | None:
    return None if value is None else _name(value)


def _body(envelope: Envelope, keys: frozenset[int]) -> dict[int, Any]:
    body = envelope.body
    if not isinstance(body, dict) or set(body) != keys:
        raise _bad(f"{envelope.kind} body must be a map with keys {sorted(keys)}")
    return body


def parse_record(envelope: Envelope) -> Record:
    """The swarm record an opened envelope carries; RemoteProtocolError if it is not one.

    The envelope must be addressed to its swarm's topic; a heartbeat must be signed by the
    key of the node it names (UNAUTHORIZED otherwise). The caller has verified the signature.
    """
    kind = envelope.kind
    if kind == KIND_JOIN:
        body = _body(envelope, frozenset({0, 1, 2}))
        record: Record = Join(
            _name(body[0]),
            envelope.sender,
            NodeId.from_bytes(body[1]),
            _parent(body[2]),
            envelope.created_ms,
        )
    elif kind == KIND_LEAVE:
        body = _body(envelope, frozenset({0}))
        record = Leave(_name(body[0]), envelope.sender, envelope.created_ms)
    elif kind == KIND_HEARTBEAT:
        body = _body(envelope, frozenset({0, 1, 2, 3, 4, 5}))
        node = NodeId.from_bytes(body[1])
        if node.public_key != envelope.sender.raw:
            raise RemoteProtocolError(
                RejectReason.UNAUTHORIZED, "a heartbeat must be signed by the node it names"
            )
        members = body[2]
        if not isinstance(members, list) or len(members) > MAX_MEMBERS_PER_NODE:
            raise _bad(f"heartbeat members must be a list of at most {MAX_MEMBERS_PER_NODE}")
        if not all(isinstance(m, bytes) and len(m) == AGENT_ID_LEN for m in members):
            raise _bad("heartbeat members must be 32-byte agent ids")
        record = Heartbeat(
            _name(body[0]),
            node,
            tuple(AgentId(m) for m in members),
            _interval(body[3]),
            _parent(body[4]),
            envelope.created_ms,
            _sums(body[5]),
        )
    elif kind == KIND_AGGREGATE:
        body = _body(envelope, frozenset({0, 1, 2, 3, 4}))
        agents = body[2]
        if isinstance(agents, bool) or not isinstance(agents, int) or not 0 <= agents < 2**53:
            raise _bad("aggregate agents must be a count")
        record = Aggregate(
            _name(body[0]),
            _name(body[1]),
            envelope.sender,
            agents,
            _sums(body[3]),
            _interval(body[4]),
            envelope.created_ms,
        )
        if record.child == record.swarm:
            raise _bad("a swarm cannot report to itself")
    else:
        raise _bad(f"not a swarm record kind: {kind!r:.40}")
    if envelope.recipient != SWARM_TOPIC_PREFIX + record.swarm:
        raise RemoteProtocolError(
            RejectReason.WRONG_RECIPIENT, "a swarm record goes on its own swarm's topic"
        )
    return record


@dataclass(slots=True)
class _NodeEntry:
    """What the view knows of one hosting node."""

    seen: float  # local time of its last heartbeat (or a join naming it)
    interval_s: float
    hb_ms: int = -1  # created time of the last heartbeat taken
    # agent raw id -> created ms of the record that put it here
    members: dict[bytes, int] = field(default_factory=dict)
    sums: dict[str, int | float] = field(default_factory=dict)  # of its members' contributions


@dataclass(slots=True)
class _Child:
    """The last report of a child swarm."""

    seen: float
    interval_s: float
    agents: int
    totals: dict[str, int | float]


class SwarmView:
    """One swarm's membership as one node sees it: records in, members and coordinator out."""

    def __init__(
        self, name: str, *, misses: int = 3, default_interval_s: float = 1.0, max_nodes: int = 1024
    ) -> None:
        self.name = check_swarm_name(name)
        self.parent: str | None = None
        self._misses = misses
        self._default_interval_s = default_interval_s
        self._max_nodes = max_nodes
        self._nodes: dict[bytes, _NodeEntry] = {}
        self._children: dict[str, _Child] = {}
        # agent raw id -> (created ms of its leave, local time seen): a heartbeat made before
        # the leave must not bring the agent back; kept for `misses` intervals.
        self._left: dict[bytes, tuple[int, float]] = {}

    def apply(self, record: Record, now: float) -> bool:
        """Fold a record in; return False if it was ignored (stale, or the view is full)."""
        if record.swarm != self.name:
            return False
        if isinstance(record, Join):
            return self._join(record, now)
        if isinstance(record, Leave):
            return self._leave(record, now)
        if isinstance(record, Aggregate):
            return self._aggregate(record, now)
        return self._heartbeat(record, now)

    def _aggregate(self, agg: Aggregate, now: float) -> bool:
        # The latest report wins: after a coordinator change the new one takes over.
        if agg.child not in self._children:
            self.expire(now)
            if len(self._children) >= self._max_nodes:
                return False
        self._children[agg.child] = _Child(now, agg.interval_ms / 1000, agg.agents, agg.totals)
        return True

    def _entry(self, node: NodeId, now: float) -> _NodeEntry | None:
        entry = self._nodes.get(node.raw)
        if entry is None:
            self.expire(now)
            if len(self._nodes) >= self._max_nodes:
                return None
            entry = self._nodes[node.raw] = _NodeEntry(now, self._default_interval_s)
        return entry

    def _join(self, join: Join, now: float) -> bool:
        left = self._left.get(join.agent.raw)
        if left is not None:
            if left[0] >= join.created_ms:
                return False
            del self._left[join.agent.raw]
        entry = self._entry(join.node, now)
        if entry is None:
            return False
        # An agent lives on one node: a join naming another node (a move) supersedes.
        for other_raw, other in self._nodes.items():
            if other_raw != join.node.raw:
                other.members.pop(join.agent.raw, None)
        entry.members[join.agent.raw] = join.created_ms
        entry.seen = max(entry.seen, now)
        if join.parent is not None and self.parent is None:
            self.parent = join.parent
        return True

    def _leave(self, leave: Leave, now: float) -> bool:
        raw = leave.agent.raw
        previous = self._left.get(raw)
        if previous is not None and previous[0] >= leave.created_ms:
            return False
        self._left[raw] = (leave.created_ms, now)
        for entry in self._nodes.values():
            stamp = entry.members.get(raw)
            if stamp is not None and stamp <= leave.created_ms:
                del entry.members[raw]
        return True

    def _heartbeat(self, hb: Heartbeat, now: float) -> bool:
        entry = self._entry(hb.node, now)
        if entry is None or hb.created_ms <= entry.hb_ms:
            return False
        members = {
            m.raw: hb.created_ms
            for m in hb.members
            if m.raw not in self._left or self._left[m.raw][0] < hb.created_ms
        }
        # Joins made after this heartbeat stay: the next heartbeat will list them.
        for raw, stamp in entry.members.items():
            if stamp > hb.created_ms:
                members[raw] = stamp
        entry.members = members
        entry.hb_ms = hb.created_ms
        entry.seen = now
        entry.interval_s = hb.interval_ms / 1000
        entry.sums = hb.sums
        if hb.parent is not None and self.parent is None:
            self.parent = hb.parent
        return True

    def expire(self, now: float) -> list[NodeId]:
        """Forget nodes silent for `misses` intervals (and old leaves); return those nodes."""
        gone = [
            raw
            for raw, entry in self._nodes.items()
            if now - entry.seen > self._misses * entry.interval_s
        ]
        for raw in gone:
            del self._nodes[raw]
        for child in [
            c for c, e in self._children.items() if now - e.seen > self._misses * e.interval_s
        ]:
            del self._children[child]
        horizon = self._misses * max(
            [self._default_interval_s, *(e.interval_s for e in self._nodes.values())]
        )
        for raw in [r for r, (_, seen) in self._left.items() if now - seen > horizon]:
            del self._left[raw]
        return [NodeId(raw) for raw in gone]

    def forget_node(self, node: NodeId) -> None:
        """Drop a node's entry (its own view of itself is rebuilt by the caller)."""
        self._nodes.pop(node.raw, None)

    def members(self, now: float) -> dict[AgentId, NodeId]:
        """The live members and the node hosting each."""
        self.expire(now)
        out: dict[AgentId, NodeId] = {}
        for node_raw, entry in sorted(self._nodes.items()):
            for raw in entry.members:
                out[AgentId(raw)] = NodeId(node_raw)
        return dict(sorted(out.items(), key=lambda item: item[0].raw))

    def nodes(self, now: float) -> list[NodeId]:
        """The live hosting nodes (those with at least one member)."""
        self.expire(now)
        return [NodeId(raw) for raw, e in sorted(self._nodes.items()) if e.members]

    def coordinator(self, now: float) -> AgentId | None:
        """The live member with the lowest id, or None if the swarm is empty."""
        self.expire(now)
        lowest = min((raw for e in self._nodes.values() for raw in e.members), default=None)
        return None if lowest is None else AgentId(lowest)

    def children(self, now: float) -> dict[str, tuple[int, dict[str, int | float]]]:
        """The live child swarms' last reports: name -> (agents, totals)."""
        self.expire(now)
        return {name: (c.agents, dict(c.totals)) for name, c in sorted(self._children.items())}

    def aggregate(self, now: float) -> tuple[int, dict[str, int | float]]:
        """Agents and summed contributions of this swarm's subtree (members + child reports)."""
        self.expire(now)
        agents = 0
        totals: dict[str, int | float] = {}
        parts = [(len(e.members), e.sums) for e in self._nodes.values()]
        parts += [(c.agents, c.totals) for c in self._children.values()]
        for count, sums in parts:
            agents += count
            for key, value in sums.items():
                totals[key] = totals.get(key, 0) + value
        return agents, dict(sorted(totals.items()))
