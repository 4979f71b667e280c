"""Where the runtime meets other nodes and processes: migration, sending as an agent, externals.

`BoundaryMixin` holds the `Runtime` methods that `meshd.migration` drives to move an agent
out (`begin_migration`, `abort_migration`, `forget_migrated`) or in (`adopt`), and the
memory of agents that moved away (`hosts_or_moved`); the operator agent and `send_as`, with
which the CLI and attached processes send as a hosted agent; and the helpers of external
agents, whose behaviour runs in another process (`is_external`, `wait_inbox`,
`signing_key`). It builds on `IntakeMixin` and owns no state: it declares the `Runtime`
attributes and methods it uses, which `Runtime` provides.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from meshd.runtime.intake import IntakeMixin
from meshd.runtime.lifecycle import State, UnknownAgent, check_transition
from meshd.runtime.quota import QuotaExceeded
from meshd.runtime.sdk import AgentError
from meshd.store import AgentExport, DuplicateAgent
from protocol.envelope import Envelope
from protocol.errors import LocalProtocolError
from protocol.ids import AgentId, SigningKey

if TYPE_CHECKING:
    from meshd.runtime.activation import Activation
    from meshd.runtime.runtime import Messenger, RuntimeListener

__all__ = ["OPERATOR_NAME", "BoundaryMixin"]

log = logging.getLogger("meshd.runtime")

_EXTERNAL = "external"
OPERATOR_NAME = "operator"
# Agents that migrated away are remembered (to answer not_here) up to this many, newest kept.
_MOVED_MAX = 65_536


class BoundaryMixin(IntakeMixin):
    """The `Runtime` methods at its boundary (see the module docstring)."""

    # Provided by `Runtime.__init__`.
    messenger: Messenger
    listener: RuntimeListener | None
    _activating: dict[bytes, trio.Event]
    _held: dict[bytes, list[tuple[Envelope, bool]]]
    _moved: OrderedDict[bytes, None]

    if TYPE_CHECKING:
        # Provided by `Runtime`.
        def _current(self, agent: AgentId) -> State: ...

        async def _stop(self, activation: Activation) -> None: ...

        async def _flush_inbox(self, agent: AgentId) -> int: ...

        async def find_by_name(self, name: str) -> AgentId: ...

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
        ) -> list[dict[str, Any]]: ...

    # -- migration (meshd.migration drives these) ---------------------------------------

    async def begin_migration(self, agent: AgentId) -> State:
        """Stop an agent for its move to another node; return the state to restore on failure.

        Its running handler finishes and saves its state; what waited in its memory goes to
        its persistent inbox, which migrates with it; messages arriving from now on are held
        until `forget_migrated` (forwarded) or `abort_migration` (delivered here).
        """
        raw = agent.raw
        previous = self._current(agent)
        check_transition("migrate", previous)
        self._index[raw] = State.MIGRATING
        try:
            activating = self._activating.get(raw)
            if activating is not None:
                await activating.wait()  # that activation marks it active: mark it again
                if raw in self._index:
                    self._index[raw] = State.MIGRATING
            activation = self._active.get(raw)
            if activation is not None:
                pending = list(activation.inbox)
                activation.inbox.clear()
                await self._stop(activation)
                for message, ack in pending:
                    outcome = await self._queue(raw, message.envelope, ack is not None)
                    if ack is not None:
                        ack.finish(outcome)
            if self._index.get(raw) is not State.MIGRATING:
                # It declared itself done, and was deleted, while its last handler finished.
                raise UnknownAgent(f"agent {agent.did} was deleted as it stopped to migrate")
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.abort_migration(agent, previous)
            raise
        return previous

    def _hold(self, raw: bytes, envelope: Envelope, reliable: bool) -> str:
        held = self._held.setdefault(raw, [])
        if len(held) >= self.settings.inbox_limit:
            self.stats.inbox_full += 1
            return "rejected:rate_limited"
        held.append((envelope, reliable))
        self.stats.queued += 1
        return "queued"

    async def abort_migration(self, agent: AgentId, previous: State) -> None:
        """The move failed: the agent stays, as it was, and gets the messages held meanwhile."""
        raw = agent.raw
        if self._index.get(raw) is not State.MIGRATING:
            return
        restored = State.SUSPENDED if previous is State.SUSPENDED else State.DORMANT
        self._index[raw] = restored
        for envelope, reliable in self._held.pop(raw, []):
            await self._queue(raw, envelope, reliable)
        if restored is State.DORMANT and raw not in self._external:
            await self._flush_inbox(agent)
        log.info("agent %s stays here (%s): its migration failed", agent.did, restored.value)

    async def forget_migrated(self, agent: AgentId) -> list[tuple[Envelope, bool]]:
        """The agent now lives on another node: drop it here WITHOUT a tombstone record.

        The listener hears `migrated`, not `deleting` (which would publish `gone`). The row becomes
        a tombstone, which keeps the record sequence (for a later return) and the birth
        certificate (for its children's provenance). Returns the messages held during the
        move, for the caller to forward as (envelope, reliable).
        """
        raw = agent.raw
        held = self._held.pop(raw, [])
        await self.store.delete_agent(raw, self.clock())
        self._index.pop(raw, None)
        self._external.discard(raw)
        self._moved[raw] = None
        self._moved.move_to_end(raw)
        while len(self._moved) > _MOVED_MAX:
            self._moved.popitem(last=False)
        log.info("agent %s migrated away", agent.did)
        if self.listener is not None:
            # migrated(), not deleting(): that would publish a tombstone.
            self.listener.migrated(agent, arrived=False)
        return held

    def hosts_or_moved(self, agent: AgentId) -> bool:
        """Whether messages for `agent` are answered here: hosted, or lately moved away."""
        return agent.raw in self._index or agent.raw in self._moved

    async def adopt(self, exported: AgentExport) -> None:
        """Host an agent that migrated here: store it and its inbox, index it, deliver its inbox.

        Raises `DuplicateAgent` (id hosted here, or name taken), `QuotaExceeded` or `StoreError`.
        """
        row = exported.row
        raw = row.id
        if raw in self._index:
            raise DuplicateAgent("adopt", raw, "id already hosted here")
        if len(self._index) >= self.settings.max_agents:
            reason = f"node holds {len(self._index)} agents, its quota"
            self.stats.quota_refusals["max_agents"] = (
                self.stats.quota_refusals.get("max_agents", 0) + 1
            )
            raise QuotaExceeded("max_agents", reason)
        await self.store.import_agent(exported, self.clock())
        state = State.SUSPENDED if row.lifecycle == State.SUSPENDED.value else State.DORMANT
        self._index[raw] = state
        if row.kind == _EXTERNAL:
            self._external.add(raw)
        self._moved.pop(raw, None)
        agent = AgentId(raw)
        log.info("agent %s arrived (%s, %d waiting)", agent.did, state.value, len(exported.inbox))
        if self.listener is not None:
            self.listener.migrated(agent, arrived=True)
        if state is State.DORMANT and raw not in self._external and exported.inbox:
            await self._flush_inbox(agent)

    # -- sending on behalf of an agent (CLI, attached processes) -------------------------

    async def operator(self) -> AgentId:
        """This node's operator agent: what `meshd send` sends as when no --from is given."""
        try:
            agent = await self.find_by_name(OPERATOR_NAME)
        except UnknownAgent:
            try:
                infos = await self.spawn(_EXTERNAL, name=OPERATOR_NAME, budget=0)
                agent = AgentId.from_did(infos[0]["id"])
            except DuplicateAgent:
                # Concurrent first sends both found no operator; the other one created it.
                agent = await self.find_by_name(OPERATOR_NAME)
        self._operator = agent.raw
        return agent

    async def send_as(
        self,
        sender: AgentId,
        to: AgentId | str,
        body: Any,
        *,
        kind: str = "msg",
        reliable: bool = False,
        wait: bool = False,
        timeout: float = 10.0,
        reply_to: bytes | None = None,
        trace: bytes | None = None,
    ) -> dict[str, Any]:
        """Sign and send a message as a hosted agent; with `wait`, also wait for its reply."""
        key = await self.signing_key(sender)
        try:
            envelope = Envelope.create(
                key,
                to,
                kind,
                body,
                now_ms=self.clock(),
                ttl_ms=max(self.settings.envelope_ttl_ms, int(timeout * 1000)),
                reply_to=reply_to,
                trace=trace,
            )
        except (ValueError, LocalProtocolError) as exc:
            raise AgentError(f"cannot build the message: {exc}") from exc
        result: dict[str, Any] = {"id": envelope.msg_id.hex(), "from": sender.did}
        if trace is not None:
            result["trace"] = trace.hex()
        if isinstance(envelope.recipient, str):
            await self.messenger.publish(envelope)
            result["outcome"] = "published"
            return result
        with self.expect_reply(envelope) as slot:
            report = await self.messenger.send(envelope, reliable=reliable)
            result["outcome"] = report.outcome
            if report.detail:
                result["detail"] = report.detail
            if wait and report.ok:
                reply = None
                with trio.move_on_after(timeout):
                    reply = await slot.wait()
                if reply is None:
                    result["outcome"] = "timeout"
                    result["detail"] = f"no reply within {timeout} s"
                else:
                    result["reply"] = {
                        "from": reply.sender,
                        "kind": reply.kind,
                        "body": reply.body,
                        "id": reply.msg_id.hex(),
                    }
        return result

    # -- external agents ---------------------------------------------------------------

    def is_external(self, agent: AgentId) -> bool:
        """Whether the agent's behaviour runs in an attached process."""
        return agent.raw in self._external

    async def wait_inbox(self, agent: AgentId, timeout: float) -> None:
        """Wait until something is queued for an external agent, or `timeout` s pass."""
        event = self._inbox_waiters.setdefault(agent.raw, trio.Event())
        with trio.move_on_after(timeout):
            await event.wait()

    async def signing_key(self, agent: AgentId) -> SigningKey:
        """The key of a hosted agent, for an attached external process sending as it."""
        if self._index.get(agent.raw) is State.MIGRATING:
            # Nothing is signed as an agent on its way out: its new node signs from now on.
            raise UnknownAgent(f"agent {agent.did} is migrating away from this node")
        row = await self.store.get_agent(agent.raw)
        if row is None or not row.secret or row.lifecycle == State.GONE.value:
            raise UnknownAgent(f"no agent {agent.did} on this node")
        return self.vault.open(row.secret)
