"""The agent runtime: hosts many agents cheaply as virtual actors.

Memory model (DESIGN.md section 5, targets in section 8):
- A *dormant* agent costs one entry in `_index` (its 32-byte id mapped to its state), about
  120 bytes; everything else (kind, caps, sealed key, state) is in the store.
- An *active* agent is an `Activation` (behaviour instance, decoded state, an inbox deque)
  with no task of its own. A task runs only while its inbox is non-empty, in the runtime's
  nursery, under a limiter bounding concurrent handlers.
- Idle agents are evicted back to dormant after `idle_evict_s`, or sooner, least recently
  used first, when more than `max_active` are active.

Messages reach an agent through `deliver()`, which the delivery layer calls after verifying
the envelope. A reply to a pending `ctx.request` is matched there, before any inbox. `Runtime`
is assembled from mixins: delivery and at-least-once live in `meshd.runtime.intake`, the
migration hooks, `send_as` and the external-agent helpers in `meshd.runtime.boundary`; their
names stay importable from here.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import cbor2 as cbor2
import trio

from meshd.clock import WallClock, wall_ms
from meshd.runtime.activation import Activation
from meshd.runtime.boundary import _EXTERNAL as _EXTERNAL
from meshd.runtime.boundary import _MOVED_MAX as _MOVED_MAX
from meshd.runtime.boundary import OPERATOR_NAME as OPERATOR_NAME
from meshd.runtime.boundary import BoundaryMixin
from meshd.runtime.intake import ReplySlot
from meshd.runtime.intake import _Ack as _Ack
from meshd.runtime.intake import _decode_state as _decode_state
from meshd.runtime.intake import _encode_state as _encode_state
from meshd.runtime.keys import KeyVault, generate_agent_keys
from meshd.runtime.kinds import BUILTIN_KINDS, resolve_kind
from meshd.runtime.lifecycle import LifecycleError, State, UnknownAgent, check_transition
from meshd.runtime.quota import QuotaExceeded, TokenBucket
from meshd.runtime.records import birth_cert
from meshd.runtime.sdk import AgentError, DeliveryReport
from meshd.runtime.sdk import Message as Message
from meshd.runtime.settings import RuntimeSettings
from meshd.store import AgentExport as AgentExport
from meshd.store import AgentRow, DuplicateAgent, Store
from meshd.store import InboxFull as InboxFull
from meshd.store import StoreError as StoreError
from protocol.envelope import Envelope
from protocol.errors import LocalProtocolError as LocalProtocolError
from protocol.ids import AgentId, SigningKey

if TYPE_CHECKING:
    from trio_typing import TaskStatus

# The `name as name` imports above re-export what this module defined or imported before
# `IntakeMixin` and `BoundaryMixin` moved out, so that every old import still works.

__all__ = [
    "Listeners",
    "Messenger",
    "ReplySlot",
    "Runtime",
    "RuntimeListener",
    "RuntimeSettings",
    "UnknownAgent",
]

log = logging.getLogger("meshd.runtime")

_SPAWN_CHUNK = 5_000
_LIST_MAX = 10_000


class Messenger(Protocol):
    """Where the runtime sends what its agents send (the router, or local-only delivery)."""

    async def send(self, envelope: Envelope, *, reliable: bool) -> DeliveryReport:
        """Deliver a signed envelope to its recipient agent."""
        ...

    async def send_many(self, envelopes: Sequence[Envelope]) -> list[DeliveryReport]:
        """Deliver several signed envelopes at most once; their reports, in order."""
        ...

    async def publish(self, envelope: Envelope) -> None:
        """Publish a signed envelope on its topic."""
        ...

    async def subscribe(self, topic: str, agent: AgentId) -> None:
        """Deliver the topic's messages to `agent` from now on."""
        ...


class RuntimeListener(Protocol):
    """Told about agents appearing, waking and going (the record publisher listens)."""

    def spawned(self, agents: Sequence[bytes]) -> None:
        """Agents were spawned (ids of one durable batch)."""
        ...

    def activated(self, agent: AgentId) -> None:
        """An agent became active."""
        ...

    async def deleting(self, agent: AgentId) -> None:
        """An agent is about to be deleted; its key still exists."""
        ...

    def migrated(self, agent: AgentId, arrived: bool) -> None:
        """An agent arrived here, or left, by migration (the migrator publishes its record)."""
        ...


class Listeners:
    """Tells several runtime listeners (publisher, summaries, trust) about agents."""

    def __init__(self, *listeners: RuntimeListener) -> None:
        self._listeners = listeners

    def spawned(self, agents: Sequence[bytes]) -> None:
        """Agents were spawned."""
        for listener in self._listeners:
            listener.spawned(agents)

    def activated(self, agent: AgentId) -> None:
        """An agent became active."""
        for listener in self._listeners:
            listener.activated(agent)

    async def deleting(self, agent: AgentId) -> None:
        """An agent is about to be deleted."""
        for listener in self._listeners:
            await listener.deleting(agent)

    def migrated(self, agent: AgentId, arrived: bool) -> None:
        """An agent arrived or left by migration."""
        for listener in self._listeners:
            listener.migrated(agent, arrived)


class LocalMessenger:
    """Delivery to agents of this runtime only; what a node without a network uses."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._topics: dict[str, set[bytes]] = {}

    async def send(self, envelope: Envelope, *, reliable: bool) -> DeliveryReport:
        """Hand the envelope to the local recipient, or report not_here."""
        del reliable  # nothing to retry locally: the store is the outbox
        outcome = await self._runtime.deliver(envelope)
        return DeliveryReport(envelope.msg_id, outcome)

    async def send_many(self, envelopes: Sequence[Envelope]) -> list[DeliveryReport]:
        """Hand each envelope to its local recipient, in order."""
        return [await self.send(envelope, reliable=False) for envelope in envelopes]

    async def publish(self, envelope: Envelope) -> None:
        """Deliver to the local subscribers of the topic."""
        assert isinstance(envelope.recipient, str)
        for agent in sorted(self._topics.get(envelope.recipient, ())):
            await self._runtime.deliver(envelope, to=AgentId(agent))

    async def subscribe(self, topic: str, agent: AgentId) -> None:
        """Remember the subscription."""
        self._topics.setdefault(topic, set()).add(agent.raw)


@dataclass(slots=True)
class RuntimeStats:
    """Counters for status and metrics."""

    spawned: int = 0
    activations: int = 0
    evictions: int = 0
    deleted: int = 0
    expired: int = 0
    handled: int = 0
    handler_errors: int = 0
    inbox_full: int = 0
    queued: int = 0
    duplicates: int = 0
    unclaimed_replies: int = 0
    quota_refusals: dict[str, int] = field(default_factory=dict)


class Runtime(BoundaryMixin):
    """Hosts agents: spawn, activation, eviction, lifecycle, TTL and quotas."""

    def __init__(
        self,
        store: Store,
        node_key: SigningKey,
        settings: RuntimeSettings | None = None,
        *,
        clock: WallClock = wall_ms,
    ) -> None:
        self.store = store
        self.settings = settings or RuntimeSettings()
        self.node_key = node_key
        self.vault = KeyVault(node_key)
        self.clock = clock
        self.messenger: Messenger = LocalMessenger(self)
        self.listener: RuntimeListener | None = None
        self.swarms: Any = None  # meshd.swarms.Swarms, set by build_node (for ctx.swarm)
        self.stats = RuntimeStats()
        self._index: dict[bytes, State] = {}
        self._external: set[bytes] = set()
        self._active: OrderedDict[bytes, Activation] = OrderedDict()
        self._activating: dict[bytes, trio.Event] = {}
        self._pending: dict[bytes, tuple[bytes, ReplySlot]] = {}
        self._inflight: dict[bytes, _Ack] = {}
        self._operator: bytes | None = None
        self._inbox_waiters: dict[bytes, trio.Event] = {}
        self._spawn_bucket = TokenBucket(self.settings.spawn_rate, self.settings.spawn_burst)
        self._spawn_lock = trio.Lock()
        self._limiter = trio.CapacityLimiter(self.settings.max_handlers)
        self._nursery: trio.Nursery | None = None
        # Messages for agents in the middle of a migration, held until it ends (bounded).
        self._held: dict[bytes, list[tuple[Envelope, bool]]] = {}
        # Agents that migrated away lately: senders that still come here get not_here.
        self._moved: OrderedDict[bytes, None] = OrderedDict()

    # -- service -----------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the agent index from the store, then run sweepers and handlers until cancelled."""
        async for batch in self.store.iter_agent_index():
            for agent_id, lifecycle, kind in batch:
                state = State(lifecycle)
                if state is State.GONE:
                    continue
                self._index[agent_id] = State.DORMANT if state is State.ACTIVE else state
                if kind == _EXTERNAL:
                    self._external.add(agent_id)
        log.info("runtime: %d agents hosted", len(self._index))
        with contextlib.suppress(UnknownAgent):
            self._operator = (await self.find_by_name(OPERATOR_NAME)).raw
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._sweep_loop)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await self.evict_all()
                self._nursery = None

    # -- queries -----------------------------------------------------------------------

    def hosts(self, agent: AgentId) -> bool:
        """Whether the agent lives here (in any state but gone)."""
        return agent.raw in self._index

    def state_of(self, agent: AgentId) -> State | None:
        """The agent's lifecycle state here, or None."""
        state = self._index.get(agent.raw)
        if state is State.MIGRATING:
            return state  # even while its last handler finishes
        if agent.raw in self._active:
            return State.ACTIVE
        return state

    def counts(self) -> dict[str, int]:
        """How many agents are in each state."""
        counts = {state.value: 0 for state in State if state is not State.GONE}
        # The index marks active agents ACTIVE itself (see _activate), so a tally is exact.
        for state in self._index.values():
            counts[state.value] += 1
        counts["total"] = len(self._index)
        return counts

    def stats_dict(self) -> dict[str, Any]:
        """The runtime's counters as plain data."""
        return {
            "spawned": self.stats.spawned,
            "activations": self.stats.activations,
            "evictions": self.stats.evictions,
            "deleted": self.stats.deleted,
            "expired": self.stats.expired,
            "handled": self.stats.handled,
            "handler_errors": self.stats.handler_errors,
            "inbox_full": self.stats.inbox_full,
            "queued": self.stats.queued,
            "duplicates": self.stats.duplicates,
            "unclaimed_replies": self.stats.unclaimed_replies,
            "quota_refusals": dict(self.stats.quota_refusals),
        }

    def busiest(self, limit: int = 5) -> list[dict[str, Any]]:
        """The active agents that handled the most messages since they activated."""
        top = heapq.nlargest(limit, self._active.values(), key=lambda act: act.handled)
        return [
            {"id": act.agent.did, "kind": act.kind, "handled": act.handled}
            for act in top
            if act.handled
        ]

    def agent_ids(self) -> Iterator[bytes]:
        """The ids of every hosted agent (for summaries)."""
        return iter(list(self._index))

    async def describe(self, agent: AgentId) -> dict[str, Any]:
        """Everything the API shows about one agent (never its key)."""
        row = await self.store.get_agent(agent.raw)
        if row is None or (row.lifecycle == State.GONE.value and agent.raw not in self._index):
            raise UnknownAgent(f"no agent {agent.did} on this node")
        return self._info(row)

    async def find_by_name(self, name: str) -> AgentId:
        """The agent spawned with this name."""
        row = await self.store.get_agent_by_name(name)
        if row is None or row.lifecycle == State.GONE.value:
            raise UnknownAgent(f"no agent named {name!r} on this node")
        return AgentId(row.id)

    async def list_agents(
        self,
        *,
        lifecycle: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        after: bytes | None = None,
    ) -> list[dict[str, Any]]:
        """Agents hosted here, by id, filtered by state and kind."""
        limit = max(1, min(limit, _LIST_MAX))
        if lifecycle == State.ACTIVE.value:
            rows = []
            for raw in sorted(self._active):
                if after is not None and raw <= after:
                    continue
                row = await self.store.get_agent(raw)
                if row is not None and (kind is None or row.kind == kind):
                    rows.append(row)
                if len(rows) >= limit:
                    break
            return [self._info(row) for row in rows]
        # The store keeps active agents as dormant, and gone ones as tombstones: filter, and
        # page on until the page is full, so a short page means there is no more.
        infos: list[dict[str, Any]] = []
        cursor = after
        while len(infos) < limit:
            rows = await self.store.list_agents(
                lifecycle=lifecycle, kind=kind, limit=limit, after=cursor
            )
            for row in rows:
                if row.lifecycle == State.GONE.value and lifecycle != State.GONE.value:
                    continue
                info = self._info(row)
                if lifecycle == State.DORMANT.value and info["state"] != State.DORMANT.value:
                    continue
                infos.append(info)
            if len(rows) < limit:
                break
            cursor = rows[-1].id
        return infos[:limit]

    def _info(self, row: AgentRow) -> dict[str, Any]:
        state = self.state_of(AgentId(row.id))
        return {
            "id": AgentId(row.id).did,
            "kind": row.kind,
            "name": row.name,
            "caps": list(row.caps),
            "state": state.value if state is not None else row.lifecycle,
            "created_ms": row.created_ms,
            "expires_ms": row.expires_ms,
            "parent": AgentId(row.parent).did if row.parent else None,
            "budget": row.budget,
            "state_version": row.state_version,
        }

    # -- spawn -------------------------------------------------------------------------

    def _refuse(self, reason: str, message: str) -> QuotaExceeded:
        self.stats.quota_refusals[reason] = self.stats.quota_refusals.get(reason, 0) + 1
        log.warning("spawn refused (%s): %s", reason, message)
        return QuotaExceeded(reason, message)

    async def spawn(
        self,
        kind: str,
        *,
        count: int = 1,
        caps: tuple[str, ...] | list[str] = (),
        state: dict[str, Any] | None = None,
        ttl_s: float | None = None,
        name: str | None = None,
        parent: AgentId | None = None,
        budget: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Create `count` dormant agents, durably; return their descriptions."""
        behaviour = resolve_kind(kind)
        if count < 1:
            raise AgentError("count must be at least 1")
        if name is not None and count != 1:
            raise AgentError("--name gives one agent a name: use it with --count 1")
        if ttl_s is not None and not (0 < ttl_s < 10 * 365 * 86400):
            raise AgentError("ttl must be a positive number of seconds")
        tags = tuple(dict.fromkeys([*behaviour.capabilities, *caps]))
        for tag in tags:
            if not isinstance(tag, str) or not 0 < len(tag) <= 64:
                raise AgentError(f"capability tag {tag!r} must be 1..64 characters")
        state_bytes = _encode_state(state or {})
        async with self._spawn_lock:
            return await self._spawn_locked(
                kind, count, tags, state_bytes, ttl_s, name, parent, budget, progress
            )

    async def _spawn_locked(
        self,
        kind: str,
        count: int,
        caps: tuple[str, ...],
        state_bytes: bytes,
        ttl_s: float | None,
        name: str | None,
        parent: AgentId | None,
        budget: int | None,
        progress: Callable[[int, int], None] | None,
    ) -> list[dict[str, Any]]:
        settings = self.settings
        if len(self._index) + count > settings.max_agents:
            raise self._refuse(
                "max_agents",
                f"node holds {len(self._index)} agents; {count} more would pass the quota "
                f"of {settings.max_agents}",
            )
        now = self.clock()
        child_budget = settings.default_budget if budget is None else budget
        if child_budget < 0:
            raise AgentError("budget must be >= 0")
        parent_row = None
        if parent is not None:
            parent_row = await self.store.get_agent(parent.raw)
            if parent_row is None or parent_row.lifecycle == State.GONE.value:
                raise UnknownAgent(f"no parent agent {parent.did} on this node")
            if budget is None:
                child_budget = max(0, (parent_row.budget - count) // (2 * count))
            cost = count * (1 + child_budget)
            if cost > parent_row.budget:
                raise self._refuse(
                    "budget",
                    f"agent {parent.did} has a spawn budget of {parent_row.budget}; "
                    f"{count} children with budget {child_budget} each cost {cost}",
                )
        if name is not None:
            existing = await self.store.get_agent_by_name(name)
            if existing is not None and existing.lifecycle != State.GONE.value:
                raise DuplicateAgent("spawn", existing.id, f"the name {name!r} is taken")
        # The rate is charged last, so a spawn refused for another reason costs nothing.
        if not self._spawn_bucket.try_take(count, trio.current_time()):
            wait = self._spawn_bucket.wait_time(count, trio.current_time())
            hint = f"retry in {wait:.1f} s" if math.isfinite(wait) else "use a smaller --count"
            raise self._refuse(
                "spawn_rate",
                f"spawn rate limit ({settings.spawn_rate:.0f}/s, burst "
                f"{settings.spawn_burst:.0f}): {hint}",
            )
        if parent is not None and parent_row is not None:
            # Pin the parent's certificate before its budget first drops: it must keep
            # naming the budget the parent was born with.
            pinned = None if parent_row.birth_cert else (await birth_cert(self, parent)).encoded
            await self.store.set_budget(parent.raw, parent_row.budget - cost, now, pinned)
        expires = None if ttl_s is None else now + int(ttl_s * 1000)
        created: list[AgentRow] = []
        done = 0
        while done < count:
            n = min(_SPAWN_CHUNK, count - done)
            pairs = await self._keygen(n)
            sealed = await trio.to_thread.run_sync(self.vault.seal_many, [s for s, _ in pairs])
            rows = [
                AgentRow(
                    id=public,
                    kind=kind,
                    name=name,
                    caps=caps,
                    lifecycle=State.DORMANT.value,
                    created_ms=now,
                    expires_ms=expires,
                    parent=parent.raw if parent is not None else None,
                    budget=child_budget,
                    secret=secret,
                    birth_cert=None,
                    state=state_bytes,
                    state_version=0,
                    record_seq=0,
                    updated_ms=now,
                )
                for (_seed, public), secret in zip(pairs, sealed, strict=True)
            ]
            await self.store.insert_agents(rows)
            for row in rows:
                self._index[row.id] = State.DORMANT
            if kind == _EXTERNAL:
                self._external.update(row.id for row in rows)
            created.extend(rows)
            if self.listener is not None:
                self.listener.spawned([row.id for row in rows])
            done += n
            self.stats.spawned += n
            if progress is not None:
                progress(done, count)
        return [self._info(row) for row in created[:_LIST_MAX]]

    async def _keygen(self, n: int) -> list[tuple[bytes, bytes]]:
        # libsodium releases the GIL: two threads use both cores.
        if n < 200:
            return await trio.to_thread.run_sync(generate_agent_keys, n)
        half = n // 2
        results: list[list[tuple[bytes, bytes]]] = [[], []]

        async def part(slot: int, size: int) -> None:
            results[slot] = await trio.to_thread.run_sync(generate_agent_keys, size)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(part, 0, half)
            nursery.start_soon(part, 1, n - half)
        return results[0] + results[1]

    async def _activate(self, agent: AgentId) -> Activation | None:
        raw = agent.raw
        pending = self._activating.get(raw)
        if pending is not None:
            await pending.wait()
            return self._active.get(raw)
        self._activating[raw] = event = trio.Event()
        try:
            row = await self.store.get_agent(raw)
            if row is None or row.lifecycle == State.GONE.value:
                self._index.pop(raw, None)
                return None
            behaviour = resolve_kind(row.kind)()
            activation = Activation(
                agent,
                row.kind,
                tuple(row.caps),
                behaviour,
                _decode_state(row.state),
                row.state,
                row.state_version,
                self,
            )
            self._active[raw] = activation
            self._index[raw] = State.ACTIVE
            self.stats.activations += 1
            if self.listener is not None:
                self.listener.activated(agent)
            try:
                await behaviour.on_start(activation.ctx)
            except Exception:  # an agent's bug must not take the node down
                self.stats.handler_errors += 1
                log.exception("agent %s: on_start failed", agent.did)
            return activation
        finally:
            del self._activating[raw]
            event.set()

    # -- lifecycle ---------------------------------------------------------------------

    async def _stop(self, activation: Activation) -> None:
        activation.stopping = True
        if activation.running:
            # Let the handler in progress finish and save its state first (bounded).
            activation.idle = activation.idle or trio.Event()
            with trio.move_on_after(10):
                await activation.idle.wait()
        for _message, ack in activation.inbox:
            if ack is not None:
                ack.finish("rejected:unavailable")  # not handled: the sender will retry
        with trio.move_on_after(5):
            try:
                await activation.behaviour.on_stop(activation.ctx)
            except Exception:  # an agent's bug must not take the node down
                self.stats.handler_errors += 1
                log.exception("agent %s: on_stop failed", activation.agent.did)
        await self._save_state(activation)
        self._active.pop(activation.agent.raw, None)

    async def evict(self, agent: AgentId) -> None:
        """Send an active agent back to dormant (state saved)."""
        activation = self._active.get(agent.raw)
        if activation is None:
            raise LifecycleError(f"agent {agent.did} is not active")
        await self._stop(activation)
        if self._index.get(agent.raw) is State.ACTIVE:
            self._index[agent.raw] = State.DORMANT
        self.stats.evictions += 1

    async def evict_all(self) -> None:
        """Evict every active agent (on shutdown)."""
        for raw in list(self._active):
            with contextlib.suppress(LifecycleError):
                await self.evict(AgentId(raw))

    def _current(self, agent: AgentId) -> State:
        state = self.state_of(agent)
        if state is None:
            raise UnknownAgent(f"no agent {agent.did} on this node")
        return state

    async def suspend(self, agent: AgentId) -> None:
        """Pause an agent: messages wait in its inbox until `resume`."""
        check_transition("suspend", self._current(agent))
        activation = self._active.get(agent.raw)
        pending = list(activation.inbox) if activation is not None else []
        if activation is not None:
            activation.inbox.clear()
            await self._stop(activation)
        await self.store.set_lifecycle(agent.raw, State.SUSPENDED.value, self.clock())
        self._index[agent.raw] = State.SUSPENDED
        # What the agent had not handled yet waits in its persistent inbox, in order.
        for message, ack in pending:
            outcome = await self._queue(agent.raw, message.envelope, ack is not None)
            if ack is not None:
                ack.finish(outcome)

    async def resume(self, agent: AgentId) -> int:
        """Un-pause an agent and deliver what waited in its inbox; return how many."""
        check_transition("resume", self._current(agent))
        await self.store.set_lifecycle(agent.raw, State.DORMANT.value, self.clock())
        self._index[agent.raw] = State.DORMANT
        if agent.raw in self._external:
            return 0
        return await self._flush_inbox(agent)

    async def _flush_inbox(self, agent: AgentId) -> int:
        delivered = 0
        while True:
            items = await self.store.inbox_take(agent.raw, 500)
            if not items:
                return delivered
            for _seq, frame in items:
                envelope = Envelope.decode(frame)
                await self.deliver(envelope, to=agent)
                delivered += 1
            await self.store.inbox_ack(agent.raw, items[-1][0])

    async def delete(self, agent: AgentId, *, reason: str = "deleted") -> None:
        """Delete an agent: stop it, tombstone it, drop its key, state and inbox."""
        check_transition("delete", self._current(agent))
        activation = self._active.get(agent.raw)
        if activation is not None:
            for _message, ack in activation.inbox:
                if ack is not None:
                    ack.finish("gone")
            activation.inbox.clear()
            await self._stop(activation)
        if self.listener is not None:
            await self.listener.deleting(agent)
        await self.store.delete_agent(agent.raw, self.clock())
        self._index.pop(agent.raw, None)
        self._external.discard(agent.raw)
        self.stats.deleted += 1
        log.info("agent %s %s", agent.did, reason)

    # -- sweeping ----------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.sweep_interval_s)
            await self.sweep()

    async def sweep(self) -> None:
        """Evict idle agents, keep within `max_active`, and delete agents whose TTL passed."""
        now = trio.current_time()
        idle_before = now - self.settings.idle_evict_s
        for raw, activation in list(self._active.items()):
            if not activation.running and activation.last_used <= idle_before:
                with contextlib.suppress(LifecycleError):
                    await self.evict(AgentId(raw))
        excess = len(self._active) - self.settings.max_active
        for raw, activation in list(self._active.items()):
            if excess <= 0:
                break
            if not activation.running:
                with contextlib.suppress(LifecycleError):
                    await self.evict(AgentId(raw))
                excess -= 1
        for row_id in await self.store.expired_agents(self.clock(), 1_000):
            agent = AgentId(row_id)
            if agent.raw in self._index:
                with contextlib.suppress(LifecycleError, UnknownAgent):
                    await self.delete(agent, reason="expired (ttl)")
                    self.stats.expired += 1


def builtin_kinds() -> list[str]:
    """The names of the built-in kinds."""
    return sorted(BUILTIN_KINDS)
