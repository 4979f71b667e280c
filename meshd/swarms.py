"""Swarms on this node: local memberships, heartbeats, and each swarm's membership view.

A swarm is a named group of agents on any number of nodes (records and view:
`protocol.swarm`; wire: SPEC "Swarms"; guide: docs/swarms.md). This service

- keeps which local agents belong to which swarm, durably (store meta `swarms`: CBOR map
  name -> [parent or null, [agent ids]]), so memberships survive a restart;
- subscribes the node to the topic `swarm/<name>` of every swarm it knows (GossipSub, through
  `Network.subscribe_topic`; `Topics` hands this prefix's messages to us, not to agents);
- publishes an agent-signed `swarm.join` / `swarm.leave` when a local agent joins or leaves,
  and one node-signed `swarm.hb` per swarm with local members every `heartbeat_s`;
- folds every record, its own included, into a `SwarmView`, and logs coordinator changes.
- when a local agent coordinates a swarm with a parent, publishes the swarm's aggregate
  (members, summed contributions, children's reports) as one `swarm.agg` on the parent's
  topic every `heartbeat_s`, following the parent for that.

A record that does not parse is counted by reason and logged (at most once a minute per
reason); it never stops the service.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import cbor2
import trio

from meshd.clock import WallClock, wall_ms
from meshd.net.types import TopicHandler
from meshd.runtime.lifecycle import UnknownAgent
from meshd.runtime.sdk import AgentError
from meshd.swarm_doc import SwarmError
from meshd.swarm_settings import SwarmSettings
from meshd.swarm_shared import SharedState
from protocol.envelope import Envelope
from protocol.errors import RemoteProtocolError
from protocol.ids import AgentId, NodeId, SigningKey
from protocol.swarm import (
    KIND_AGGREGATE,
    KIND_HEARTBEAT,
    KIND_JOIN,
    KIND_LEAVE,
    MAX_MEMBERS_PER_NODE,
    SWARM_TOPIC_PREFIX,
    SwarmView,
    aggregate_body,
    check_sums,
    check_swarm_name,
    heartbeat_body,
    join_body,
    leave_body,
    parse_record,
    swarm_topic,
)
from protocol.swarm_state import KIND_STATE, KIND_UPDATE

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from meshd.runtime.runtime import Runtime

__all__ = ["META_SWARMS", "AgentSwarm", "AgentSwarmState", "SwarmError", "SwarmNetwork", "Swarms"]

T = TypeVar("T")

log = logging.getLogger("meshd.swarms")

META_SWARMS = "swarms"
_ENVELOPE_TTL_MS = 60_000
_REJECT_LOG_INTERVAL_S = 60.0


class SwarmNetwork(Protocol):
    """The part of `meshd.net.types.Network` that swarms use."""

    async def subscribe_topic(self, topic: str) -> None:
        """Receive the topic's messages from now on."""
        ...

    async def publish_topic(self, topic: str, envelope: bytes) -> None:
        """Publish an envelope addressed to `topic` to the other nodes."""
        ...


class TopicRouter(Protocol):
    """What `meshd.pubsub.Topics` offers node services: a topic prefix of their own."""

    def reserve(self, prefix: str, handler: TopicHandler) -> None:
        """Hand messages of topics starting with `prefix` to `handler`, not to agents."""
        ...


class AgentSwarm:
    """`ctx.swarm(name)`: one swarm as a local agent sees it (`meshd.runtime.sdk.SwarmHandle`)."""

    __slots__ = ("_agent", "_name", "_swarms")

    def __init__(self, swarms: Swarms, name: str, agent: AgentId) -> None:
        self._swarms = swarms
        self._name = name
        self._agent = agent

    @property
    def name(self) -> str:
        """The swarm's name."""
        return self._name

    async def join(self) -> bool:
        """Become a member; False if this agent already was one."""
        try:
            return await self._swarms.join(self._name, self._agent)
        except SwarmError as exc:
            raise AgentError(str(exc)) from None

    async def leave(self) -> bool:
        """Stop being a member; False if this agent was not one."""
        return await self._swarms.leave(self._name, self._agent)

    def members(self) -> dict[str, str]:
        """The live members (agent id -> hosting node id), as this node sees them."""
        if self._name not in self._swarms.names():
            return {}
        return {a.did: n.text for a, n in self._swarms.members(self._name).items()}

    def coordinator(self) -> str | None:
        """The coordinator's agent id (lowest live member id), or None if there is none."""
        if self._name not in self._swarms.names():
            return None
        coordinator = self._swarms.coordinator(self._name)
        return None if coordinator is None else coordinator.did

    async def contribute(self, values: dict[str, int | float]) -> None:
        """Set this member's numbers, summed up the swarm hierarchy (replaces the last ones)."""
        try:
            await self._swarms.contribute(self._name, self._agent, values)
        except SwarmError as exc:
            raise AgentError(str(exc)) from None

    def aggregate(self) -> dict[str, Any]:
        """This swarm's subtree as this node sees it: agents, totals, children's reports."""
        if self._name not in self._swarms.names():
            return {"agents": 0, "totals": {}, "children": {}}
        return self._swarms.aggregate(self._name)

    @property
    def state(self) -> AgentSwarmState:
        """The swarm's shared key/value state (read by anyone here, written by members)."""
        return AgentSwarmState(self)

    def _member(self) -> SharedState:
        """The shared state, if this agent is a member here (else AgentError)."""
        if not self._swarms.is_local_member(self._name, self._agent):
            raise AgentError(f"{self._agent.did} is not a member of swarm {self._name}")
        return self._swarms.shared

    async def _call(self, op: Awaitable[T]) -> T:
        try:
            return await op
        except SwarmError as exc:
            raise AgentError(str(exc)) from None

    def tasks(self) -> list[dict[str, Any]]:
        """The task board: id, spec, state (open, claimed, done), claimant, result."""
        if self._name not in self._swarms.names():
            return []
        return self._swarms.shared.tasks(self._name)

    async def add_task(self, spec: Any) -> str:
        """Put a task (any JSON) on the board; return its id."""
        return await self._call(self._member().add_task(self._name, spec, self._agent))

    async def claim(self, task: str) -> bool:
        """Claim a task; True once this agent won it (after the settle delay)."""
        shared = self._member()
        return await self._call(shared.claim(self._name, task, self._agent, self._swarms.settle_s))

    async def complete(self, task: str, result: Any = None) -> bool:
        """Mark a task done with its result; False if it already was."""
        return await self._call(self._member().complete(self._name, task, self._agent, result))

    async def next_task(self) -> dict[str, Any] | None:
        """Claim the oldest open task this agent wins; None when no open task is left."""
        shared = self._member()
        for task in shared.tasks(self._name):
            if task["state"] == "open" and await self.claim(task["id"]):
                return task
        return None

    async def propose(self, text: str) -> str:
        """Propose `text` to the swarm's live members; return the proposal id (hex)."""
        decision = await self._call(self._member().propose(self._name, text, self._agent))
        return str(decision["id"])

    async def vote(self, proposal: str, yes: bool) -> dict[str, Any]:
        """Sign and cast this agent's ballot; return the decision so far."""
        return await self._call(self._member().vote(self._name, proposal, self._agent, yes))

    def decision(self, proposal: str) -> dict[str, Any]:
        """A proposal's verdict as its ballots here prove it (outcome, yes, no, quorum)."""
        try:
            return self._swarms.shared.decision(self._name, proposal)
        except (SwarmError, KeyError) as exc:
            raise AgentError(str(exc)) from None


class AgentSwarmState:
    """`ctx.swarm(name).state`: the swarm's shared key/value document."""

    __slots__ = ("_swarm",)

    def __init__(self, swarm: AgentSwarm) -> None:
        self._swarm = swarm

    def snapshot(self) -> dict[str, Any]:
        """Every key and its JSON value, as this node's replica holds them."""
        swarms = self._swarm._swarms
        if self._swarm.name not in swarms.names():
            return {}
        return swarms.shared.state(self._swarm.name)

    def get(self, key: str, default: Any = None) -> Any:
        """One key's value, or `default`."""
        return self.snapshot().get(key, default)

    async def set(self, key: str, value: Any) -> None:
        """Write one key (any JSON value); replicated to every node following the swarm."""
        swarm = self._swarm
        await swarm._call(swarm._member().set_state(swarm.name, key, value))

    async def delete(self, key: str) -> None:
        """Remove one key."""
        swarm = self._swarm
        await swarm._call(swarm._member().set_state(swarm.name, key, None, delete=True))


@dataclass(slots=True)
class _Local:
    """A swarm as this node takes part in it: its parent and the local members."""

    parent: str | None
    members: set[bytes] = field(default_factory=set)
    # agent raw id -> its contribution to the swarm's sums (hierarchy aggregation)
    contributions: dict[bytes, dict[str, int | float]] = field(default_factory=dict)


class Swarms:
    """Swarm memberships of local agents and the views of every known swarm; run `serve`."""

    def __init__(
        self,
        runtime: Runtime,
        network: SwarmNetwork,
        topics: TopicRouter,
        *,
        node_key: SigningKey,
        settings: SwarmSettings | None = None,
        clock: WallClock = wall_ms,
    ) -> None:
        self._runtime = runtime
        self._network = network
        self._topics = topics
        self._key = node_key
        self.node_id: NodeId = node_key.node_id
        self._settings = settings or SwarmSettings()
        self._clock = clock
        self._local: dict[str, _Local] = {}
        self._views: dict[str, SwarmView] = {}
        self._coordinators: dict[str, AgentId | None] = {}
        self._lock = trio.Lock()  # one change of local memberships (and its write) at a time
        self._serving = False
        self._last_ms = 0
        self._reject_logged: dict[str, float] = {}
        self.counters: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.shared = SharedState(self)

    # -- queries --------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The swarms this node knows."""
        return sorted(self._local)

    def members(self, name: str) -> dict[AgentId, NodeId]:
        """The swarm's live members and their nodes, as this node sees them."""
        return self._view(name).members(trio.current_time())

    def coordinator(self, name: str) -> AgentId | None:
        """The swarm's coordinator (lowest live member id), or None if it has no member."""
        return self._view(name).coordinator(trio.current_time())

    def show(self, name: str) -> dict[str, Any]:
        """The swarm as JSON: parent, state, coordinator, members with their nodes."""
        view = self._view(name)
        now = trio.current_time()
        members = view.members(now)
        coordinator = view.coordinator(now)
        local = self._local[name]
        return {
            "name": name,
            "parent": local.parent if local.parent is not None else view.parent,
            "state": "active" if members else "empty",
            "coordinator": coordinator.did if coordinator is not None else None,
            "coordinator_node": (members[coordinator].text if coordinator is not None else None),
            "members": [
                {"id": agent.did, "node": node.text, "local": node == self.node_id}
                for agent, node in members.items()
            ],
            "nodes": [node.text for node in view.nodes(now)],
            "local_members": len(local.members),
            "aggregate": _aggregate_json(view, now),
            "shared": self.shared.summary(name),
        }

    def list(self) -> list[dict[str, Any]]:
        """Every known swarm, summarised."""
        out = []
        for name in self.names():
            shown = self.show(name)
            out.append(
                {
                    "name": name,
                    "parent": shown["parent"],
                    "state": shown["state"],
                    "members": len(shown["members"]),
                    "local_members": shown["local_members"],
                    "coordinator": shown["coordinator"],
                }
            )
        return out

    def stats(self) -> dict[str, Any]:
        """Counters for `status`: swarms, local memberships, records, rejections by reason."""
        out: dict[str, Any] = dict(sorted(self.counters.items()))
        out["swarms"] = len(self._local)
        out["local_memberships"] = sum(len(s.members) for s in self._local.values())
        out["rejected"] = dict(sorted(self.rejected.items()))
        out["shared"] = self.shared.stats()
        return out

    def is_local_member(self, name: str, agent: AgentId) -> bool:
        """Whether a local agent is a member of the swarm here."""
        local = self._local.get(name)
        return local is not None and agent.raw in local.members

    def local_members(self, name: str) -> Sequence[AgentId]:
        """The swarm's members hosted here."""
        local = self._local.get(name)
        return [] if local is None else [AgentId(raw) for raw in sorted(local.members)]

    @property
    def settle_s(self) -> float:
        """How long a claim waits for concurrent claims before it counts (2 heartbeats, <= 5 s)."""
        return min(5.0, max(0.1, 2 * self._settings.heartbeat_s))

    def aggregate(self, name: str) -> dict[str, Any]:
        """The swarm's subtree: agents and summed contributions, with its children's reports."""
        return _aggregate_json(self._view(name), trio.current_time())

    def _view(self, name: str) -> SwarmView:
        view = self._views.get(name)
        if view is None:
            raise KeyError(name)
        return view

    # -- operations -----------------------------------------------------------------------

    async def create(self, name: str, parent: str | None = None) -> bool:
        """Know the swarm (with `parent`) and follow its topic; False if already known."""
        try:
            check_swarm_name(name)
            if parent is not None:
                check_swarm_name(parent)
        except ValueError as exc:
            raise SwarmError("bad_name", str(exc)) from None
        if parent == name:
            raise SwarmError("bad_name", "a swarm cannot be its own parent")
        async with self._lock:
            local = self._local.get(name)
            if local is not None:
                if parent is not None and local.parent not in (None, parent):
                    raise SwarmError(
                        "parent_conflict", f"swarm {name} already has parent {local.parent}"
                    )
                if parent is None or local.parent == parent:
                    return False
                local.parent = parent
                await self._save()
                return False
            await self._add(name, _Local(parent))
            return True

    async def join(self, name: str, agent: AgentId) -> bool:
        """Make a local agent a member (creating the swarm here if new); False if it was."""
        return await self.join_many(name, [agent]) == 1

    async def join_many(self, name: str, agents: Sequence[AgentId]) -> int:
        """Make local agents members, with one durable write; return how many were not yet."""
        for agent in agents:
            if not self._runtime.hosts(agent):
                raise UnknownAgent(f"no agent {agent.did} on this node")
        await self.create(name)
        async with self._lock:
            local = self._local[name]
            new = sorted({a.raw for a in agents} - local.members)
            if len(local.members) + len(new) > MAX_MEMBERS_PER_NODE:
                # One heartbeat lists them all and must fit in an envelope.
                raise SwarmError(
                    "max_members",
                    f"{name} would have {len(local.members) + len(new)} members on this node, "
                    f"more than one heartbeat carries ({MAX_MEMBERS_PER_NODE})",
                )
            body = join_body(name, self.node_id, local.parent)
            envelopes = [
                self._envelope(await self._runtime.signing_key(AgentId(raw)), name, KIND_JOIN, body)
                for raw in new
            ]
            local.members.update(new)
            await self._save()
            self.counters["joins"] += len(new)
        for envelope in envelopes:
            await self._emit(name, envelope)
        return len(new)

    async def leave(self, name: str, agent: AgentId) -> bool:
        """Take a local agent out of the swarm; False if it was not a member here."""
        async with self._lock:
            local = self._local.get(name)
            if local is None or agent.raw not in local.members:
                return False
            local.members.discard(agent.raw)
            local.contributions.pop(agent.raw, None)
            await self._save()
            self.counters["leaves"] += 1
            try:
                key = await self._runtime.signing_key(agent)
            except UnknownAgent:
                # Deleted meanwhile: no signed leave; it drops out of our next heartbeat.
                return True
            envelope = self._envelope(key, name, KIND_LEAVE, leave_body(name))
        await self._emit(name, envelope)
        return True

    async def contribute(self, name: str, agent: AgentId, values: dict[str, int | float]) -> None:
        """Set a local member's contribution to the swarm's sums (replacing its last one)."""
        try:
            checked = check_sums(values)
        except ValueError as exc:
            raise SwarmError("bad_sums", str(exc)) from None
        async with self._lock:
            local = self._local.get(name)
            if local is None or agent.raw not in local.members:
                raise SwarmError("not_member", f"{agent.did} is not a member of {name} here")
            local.contributions[agent.raw] = checked
            await self._save()

    def handle(self, name: str, agent: AgentId) -> AgentSwarm:
        """The SDK's `ctx.swarm(name)` for a local agent (a bad name is an AgentError)."""
        try:
            check_swarm_name(name)
        except ValueError as exc:
            raise AgentError(str(exc)) from None
        return AgentSwarm(self, name, agent)

    # -- the service ----------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load memberships, follow their topics, heartbeat every `heartbeat_s` until cancelled."""
        self._topics.reserve(SWARM_TOPIC_PREFIX, self._on_message)
        async with self._lock:
            await self._load()
            for name in sorted(self._local):
                await self._network.subscribe_topic(swarm_topic(name))
            self._serving = True
        log.info(
            "swarms: %d local memberships in %d swarms",
            sum(len(s.members) for s in self._local.values()),
            len(self._local),
        )
        try:
            async with trio.open_nursery() as nursery:
                # Sync answers leave from their own task: the receive path never waits on
                # publishing (a full queue drops them; the next announce asks again).
                nursery.start_soon(self.shared.send_queued)
                task_status.started()
                # On a fixed schedule, not a sleep after each round: receivers expect a
                # heartbeat every interval, however long a round of many swarms takes.
                deadline = trio.current_time()
                while True:
                    await self.tick()
                    deadline = max(deadline + self._settings.heartbeat_s, trio.current_time())
                    await trio.sleep_until(deadline)
        finally:
            self._serving = False

    async def tick(self) -> None:
        """One heartbeat round: a heartbeat per swarm with local members, then expiry."""
        for name in sorted(self._local):
            local = self._local[name]
            # Deleted or migrated agents drop out here, without a signed leave.
            hosted = [AgentId(raw) for raw in sorted(local.members)]
            hosted = [a for a in hosted if self._runtime.hosts(a)]
            if len(hosted) != len(local.members):
                async with self._lock:
                    local.members = {a.raw for a in hosted}
                    await self._save()
            if hosted:
                sums: dict[str, int | float] = {}
                for agent in hosted:
                    for key, value in local.contributions.get(agent.raw, {}).items():
                        sums[key] = sums.get(key, 0) + value
                body = heartbeat_body(
                    name, self.node_id, hosted, self._interval_ms, local.parent, sums
                )
                envelope = self._envelope(self._key, name, KIND_HEARTBEAT, body)
                self.counters["heartbeats_sent"] += 1
                await self._emit(name, envelope)
            self._check_coordinator(name)
        for name in sorted(self._views):
            await self._report_upward(name)
        await self.shared.tick()

    @property
    def _interval_ms(self) -> int:
        return max(1, round(self._settings.heartbeat_s * 1000))

    def _parent_of(self, name: str) -> str | None:
        local = self._local.get(name)
        if local is not None and local.parent is not None:
            return local.parent
        view = self._views.get(name)
        return None if view is None else view.parent

    async def _report_upward(self, name: str) -> None:
        """If a local agent coordinates `name` and it has a parent, report its subtree there."""
        parent = self._parent_of(name)
        if parent is None:
            return
        now = trio.current_time()
        view = self._views[name]
        coordinator = view.coordinator(now)
        if coordinator is None or view.members(now).get(coordinator) != self.node_id:
            return
        # A parent chain that comes back here would count the subtree again every round.
        seen: set[str] = {name}
        up: str | None = parent
        while up is not None:
            if up in seen:
                self.counters["parent_cycle"] += 1
                return
            seen.add(up)
            up = self._parent_of(up)
        if parent not in self._local:
            try:
                async with self._lock:
                    if parent not in self._local:
                        await self._add(parent, _Local(None))
            except SwarmError as exc:
                self.counters["report_refused"] += 1
                log.warning("swarms: cannot follow parent %s of %s: %s", parent, name, exc)
                return
        try:
            key = await self._runtime.signing_key(coordinator)
        except UnknownAgent:  # deleted or migrating since the heartbeat: next round
            return
        agents, totals = view.aggregate(now)
        body = aggregate_body(parent, name, agents, totals, self._interval_ms)
        self.counters["aggregates_sent"] += 1
        await self._emit(parent, self._envelope(key, parent, KIND_AGGREGATE, body))

    # -- for the shared state (meshd.swarm_shared) -----------------------------------------

    @property
    def store(self) -> Any:
        """The node's store (meta entries)."""
        return self._runtime.store

    @property
    def heartbeat_s(self) -> float:
        """Seconds between heartbeats."""
        return self._settings.heartbeat_s

    def view_nodes(self, name: str) -> Sequence[NodeId]:
        """The live nodes hosting members of the swarm, as this node sees them."""
        view = self._views.get(name)
        return [] if view is None else view.nodes(trio.current_time())

    def wall_ms(self) -> int:
        """Wall-clock milliseconds (the envelopes' clock)."""
        return self._clock()

    async def agent_key(self, agent: AgentId) -> SigningKey:
        """A local agent's signing key (UnknownAgent if it is not hosted here)."""
        return await self._runtime.signing_key(agent)

    def sign(self, key: SigningKey, name: str, kind: str, body: Any, ttl_ms: int) -> Envelope:
        """An envelope to the swarm's topic signed by `key`, living `ttl_ms`."""
        self._last_ms = max(self._clock(), self._last_ms + 1)
        return Envelope.create(
            key, swarm_topic(name), kind, body, now_ms=self._last_ms, ttl_ms=ttl_ms
        )

    def node_envelope(self, name: str, kind: str, body: Any) -> Envelope:
        """An envelope to the swarm's topic signed by this node's key."""
        return self._envelope(self._key, name, kind, body)

    async def publish(self, name: str, envelope: Envelope) -> None:
        """Publish on the swarm's topic (best effort), without folding it into the view."""
        if not self._serving:
            return
        try:
            await self._network.publish_topic(swarm_topic(name), envelope.frame)
        except (RuntimeError, ValueError, OSError) as exc:
            self.counters["publish_failed"] += 1
            log.warning("swarms: publishing on swarm %s failed: %s", name, exc)

    # -- inside ---------------------------------------------------------------------------

    def _envelope(self, key: SigningKey, name: str, kind: str, body: Any) -> Envelope:
        # Strictly rising created times: the view orders one node's records by them.
        self._last_ms = max(self._clock(), self._last_ms + 1)
        return Envelope.create(
            key, swarm_topic(name), kind, body, now_ms=self._last_ms, ttl_ms=_ENVELOPE_TTL_MS
        )

    async def _emit(self, name: str, envelope: Envelope) -> None:
        """Apply our own record to our view, then publish it (best effort, like GossipSub)."""
        self._apply(name, envelope)
        await self.publish(name, envelope)

    async def _on_message(self, topic: str, frame: bytes) -> None:
        """A validated envelope from another node on a `swarm/...` topic."""
        name = topic[len(SWARM_TOPIC_PREFIX) :]
        if name not in self._views:
            self.counters["unknown_swarm"] += 1
            return
        try:
            envelope = Envelope.decode(frame)
        except RemoteProtocolError as exc:
            self._reject(exc)
            return
        self.counters["received"] += 1
        if envelope.kind in (KIND_UPDATE, KIND_STATE):
            self.shared.on_record(name, envelope)
            return
        if envelope.kind == KIND_AGGREGATE:
            self.counters["aggregates_received"] += 1
        self._apply(name, envelope)

    def _apply(self, name: str, envelope: Envelope) -> None:
        try:
            record = parse_record(envelope)
        except RemoteProtocolError as exc:
            self._reject(exc)
            return
        view = self._views.get(name)
        if view is None or record.swarm != name:
            self.counters["unknown_swarm"] += 1
            return
        if not view.apply(record, trio.current_time()):
            self.counters["stale"] += 1
        self._check_coordinator(name)

    def _check_coordinator(self, name: str) -> None:
        """Log when the coordinator this node sees changes."""
        coordinator = self._views[name].coordinator(trio.current_time())
        if coordinator == self._coordinators.get(name):
            return
        self._coordinators[name] = coordinator
        self.counters["coordinator_changes"] += 1
        log.info(
            "swarm %s: coordinator is now %s",
            name,
            coordinator.did if coordinator is not None else "none (no live member)",
        )

    def reject(self, exc: RemoteProtocolError) -> None:
        """Count and (at most once a minute per reason) log a refused record."""
        self._reject(exc)

    def _reject(self, exc: RemoteProtocolError) -> None:
        reason = exc.reason.value
        self.rejected[reason] += 1
        now = trio.current_time()
        if now - self._reject_logged.get(reason, -math.inf) >= _REJECT_LOG_INTERVAL_S:
            self._reject_logged[reason] = now
            log.info(
                "swarms: refused a record: %s: %s (%d so far)",
                reason,
                exc.detail,
                self.rejected[reason],
            )

    async def _add(self, name: str, local: _Local) -> None:
        """Know a new swarm: view, durable entry, topic (locked)."""
        if len(self._local) >= self._settings.max_swarms:
            raise SwarmError(
                "max_swarms", f"this node follows {len(self._local)} swarms, the most it allows"
            )
        self._local[name] = local
        self._views[name] = self._new_view(name)
        await self.shared.open(name)
        await self._save()
        if self._serving:
            await self._network.subscribe_topic(swarm_topic(name))

    def _new_view(self, name: str) -> SwarmView:
        return SwarmView(
            name,
            misses=self._settings.misses,
            default_interval_s=self._settings.heartbeat_s,
            max_nodes=self._settings.max_nodes,
        )

    async def _save(self) -> None:
        data = {
            n: [s.parent, sorted(s.members), s.contributions]
            for n, s in sorted(self._local.items())
        }
        await self._runtime.store.set_meta(META_SWARMS, cbor2.dumps(data))

    async def _load(self) -> None:
        raw = await self._runtime.store.get_meta(META_SWARMS)
        if raw is None:
            return
        try:
            data = cbor2.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a map")
            for name, (parent, members, *rest) in data.items():
                contributions = rest[0] if rest else {}  # layer-1 entries had none
                check_swarm_name(name)
                if parent is not None:
                    check_swarm_name(parent)
                valid = sorted(m for m in members if isinstance(m, bytes) and len(m) == 32)
                kept = set(valid[:MAX_MEMBERS_PER_NODE])
                given = {m: check_sums(c) for m, c in contributions.items() if m in kept}
                self._local[name] = _Local(parent, kept, given)
                self._views[name] = self._new_view(name)
        except (cbor2.CBORDecodeError, ValueError, TypeError) as exc:
            log.error(
                "swarms: meta %r is unreadable (%s); starting with no swarms", META_SWARMS, exc
            )
            self._local.clear()
            self._views.clear()
        for name in sorted(self._local):
            await self.shared.open(name)


def _aggregate_json(view: SwarmView, now: float) -> dict[str, Any]:
    agents, totals = view.aggregate(now)
    children = {
        name: {"agents": count, "totals": sums}
        for name, (count, sums) in view.children(now).items()
    }
    return {"agents": agents, "totals": totals, "children": children}
