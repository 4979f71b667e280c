"""The agent SDK: what an agent author writes against.

An agent is a Python class derived from `Agent`. The runtime creates one instance when the
agent activates (a message arrives for it), calls `on_start`, then `on_message` for each
message, one at a time, and `on_stop` when the agent is evicted back to dormant, suspended,
migrated or deleted. Between activations the instance is gone; what must survive lives in
`ctx.state`, a JSON/CBOR-friendly dict that the runtime saves after every handler that
changed it.

    from meshd.runtime.sdk import Agent, Context, Message

    class Greeter(Agent):
        async def on_message(self, ctx: Context, msg: Message) -> None:
            ctx.state["greeted"] = ctx.state.get("greeted", 0) + 1
            await ctx.reply(msg, {"hello": msg.sender})

Register it as `module:Greeter` (`meshd agent spawn mypkg.agents:Greeter`) or through the
entry-point group `meshd.agents` (`greeter = "mypkg.agents:Greeter"` in pyproject.toml).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from protocol.envelope import Envelope

__all__ = [
    "Agent",
    "AgentError",
    "Context",
    "DeliveryReport",
    "Message",
    "RequestTimeout",
    "SwarmHandle",
    "SwarmStateHandle",
]


class AgentError(Exception):
    """An agent asked for something the runtime refuses (quota, budget, bad target...)."""


class RequestTimeout(AgentError):
    """`ctx.request` got no reply before its deadline."""


@dataclass(frozen=True, slots=True)
class Message:
    """A message as an agent sees it; `envelope` keeps the signed original for provenance."""

    sender: str
    kind: str
    body: Any
    msg_id: bytes
    reply_to: bytes | None
    topic: str | None
    envelope: Envelope

    @classmethod
    def from_envelope(cls, envelope: Envelope) -> Message:
        """Wrap a verified envelope."""
        topic = envelope.recipient if isinstance(envelope.recipient, str) else None
        return cls(
            sender=envelope.sender.did,
            kind=envelope.kind,
            body=envelope.body,
            msg_id=envelope.msg_id,
            reply_to=envelope.reply_to,
            topic=topic,
            envelope=envelope,
        )


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What became of a sent message: delivered, queued, not_here, gone, rejected:<reason>..."""

    msg_id: bytes
    outcome: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Whether the message reached (or was durably queued for) its recipient."""
        return self.outcome in ("delivered", "queued")


class SwarmHandle(Protocol):
    """One swarm as an agent sees it (`ctx.swarm(name)`; see docs/swarms.md)."""

    @property
    def name(self) -> str:
        """The swarm's name."""
        ...

    async def join(self) -> bool:
        """Become a member; False if this agent already was one."""
        ...

    async def leave(self) -> bool:
        """Stop being a member; False if this agent was not one."""
        ...

    def members(self) -> dict[str, str]:
        """The live members (agent id -> hosting node id), as this node sees them."""
        ...

    def coordinator(self) -> str | None:
        """The coordinator's agent id (lowest live member id), or None if there is none."""
        ...

    async def contribute(self, values: dict[str, int | float]) -> None:
        """Set this member's numbers, summed up the swarm hierarchy (replaces the last ones)."""
        ...

    def aggregate(self) -> dict[str, Any]:
        """This swarm's subtree as this node sees it: agents, totals, children's reports."""
        ...

    @property
    def state(self) -> SwarmStateHandle:
        """The swarm's shared key/value state (read by anyone here, written by members)."""
        ...

    def tasks(self) -> list[dict[str, Any]]:
        """The task board: id, spec, state (open, claimed, done), claimant, result."""
        ...

    async def add_task(self, spec: Any) -> str:
        """Put a task (any JSON) on the board; return its id."""
        ...

    async def claim(self, task: str) -> bool:
        """Claim a task; True once this agent won it (after the settle delay)."""
        ...

    async def complete(self, task: str, result: Any = None) -> bool:
        """Mark a task done with its result; False if it already was."""
        ...

    async def next_task(self) -> dict[str, Any] | None:
        """Claim the oldest open task this agent wins; None when no open task is left."""
        ...

    async def propose(self, text: str) -> str:
        """Propose `text` to the swarm's live members; return the proposal id (hex)."""
        ...

    async def vote(self, proposal: str, yes: bool) -> dict[str, Any]:
        """Sign and cast this agent's ballot; return the decision so far."""
        ...

    def decision(self, proposal: str) -> dict[str, Any]:
        """A proposal's verdict as its ballots here prove it (outcome, yes, no, quorum)."""
        ...


class SwarmStateHandle(Protocol):
    """`ctx.swarm(name).state`: the swarm's shared key/value document (docs/swarms.md)."""

    def snapshot(self) -> dict[str, Any]:
        """Every key and its JSON value, as this node's replica holds them."""
        ...

    def get(self, key: str, default: Any = None) -> Any:
        """One key's value, or `default`."""
        ...

    async def set(self, key: str, value: Any) -> None:
        """Write one key (any JSON value); replicated to every node following the swarm."""
        ...

    async def delete(self, key: str) -> None:
        """Remove one key."""
        ...


class Context(Protocol):
    """What a running agent can do; passed to every handler."""

    @property
    def agent_id(self) -> str:
        """This agent's id (`did:key:...`)."""
        ...

    @property
    def kind(self) -> str:
        """This agent's kind."""
        ...

    @property
    def state(self) -> dict[str, Any]:
        """Persistent state; changes are saved after the handler returns."""
        ...

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger that names this agent."""
        ...

    async def send(
        self, to: str, body: Any, *, kind: str = "msg", reliable: bool = False
    ) -> DeliveryReport:
        """Send a message to another agent (at-least-once when `reliable`)."""
        ...

    async def send_many(
        self, messages: Sequence[tuple[str, Any]], *, kind: str = "msg"
    ) -> list[DeliveryReport]:
        """Send (to, body) messages at most once, together; their reports, in order."""
        ...

    async def request(
        self, to: str, body: Any, *, kind: str = "req", timeout: float = 10.0
    ) -> Message:
        """Send a request and wait for its reply; raise RequestTimeout after `timeout` s."""
        ...

    async def reply(self, msg: Message, body: Any, *, kind: str = "reply") -> DeliveryReport:
        """Answer `msg`."""
        ...

    async def publish(self, topic: str, body: Any, *, kind: str = "pub") -> None:
        """Publish on a topic."""
        ...

    async def subscribe(self, topic: str) -> None:
        """Receive the topic's messages in `on_message` from now on (kept while dormant)."""
        ...

    async def spawn(
        self,
        kind: str,
        *,
        caps: tuple[str, ...] = (),
        state: dict[str, Any] | None = None,
        ttl: float | None = None,
        name: str | None = None,
        budget: int | None = None,
    ) -> str:
        """Spawn a child agent on this node within this agent's budget; return its id."""
        ...

    def swarm(self, name: str) -> SwarmHandle:
        """The swarm `name`, to join, leave, and read its members and coordinator."""
        ...

    def done(self) -> None:
        """Declare this agent finished: it is deleted once the current handler returns."""
        ...


class Agent:
    """Base class of agent behaviours; override the handlers you need."""

    #: Capability tags every agent of this kind has (spawn may add more).
    capabilities: ClassVar[tuple[str, ...]] = ()

    async def on_start(self, ctx: Context) -> None:
        """Called when the agent activates, before its first message."""

    async def on_message(self, ctx: Context, msg: Message) -> None:
        """Called for each message, one at a time."""

    async def on_stop(self, ctx: Context) -> None:
        """Called before the agent goes dormant, is suspended, migrated or deleted."""
