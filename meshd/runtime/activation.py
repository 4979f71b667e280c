"""An active agent in memory, and the `Context` its handlers receive."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from meshd.runtime.sdk import (
    Agent,
    AgentError,
    DeliveryReport,
    Message,
    RequestTimeout,
    SwarmHandle,
)
from protocol.errors import LocalProtocolError
from protocol.ids import AgentId, SigningKey

if TYPE_CHECKING:
    from meshd.runtime.runtime import Runtime

__all__ = ["Activation", "AgentContext"]

log = logging.getLogger("meshd.agent")


class Activation:
    """One active agent: its behaviour instance, state, inbox and bookkeeping.

    Slots only, no task of its own: an idle active agent costs these objects and nothing
    else; a task runs only while its inbox has messages.
    """

    __slots__ = (
        "agent",
        "behaviour",
        "caps",
        "ctx",
        "done",
        "handled",
        "idle",
        "inbox",
        "key",
        "kind",
        "last_used",
        "running",
        "saved_state",
        "state",
        "state_version",
        "stopping",
    )

    def __init__(
        self,
        agent: AgentId,
        kind: str,
        caps: tuple[str, ...],
        behaviour: Agent,
        state: dict[str, Any],
        saved_state: bytes,
        state_version: int,
        runtime: Runtime,
    ) -> None:
        self.agent = agent
        self.kind = kind
        self.caps = caps
        self.behaviour = behaviour
        self.state = state
        self.saved_state = saved_state
        self.state_version = state_version
        # (message, the ack owed to an at-least-once sender, or None)
        self.inbox: deque[tuple[Message, Any]] = deque()
        self.running = False
        self.idle: trio.Event | None = None  # set when a running drain finishes
        self.stopping = False
        self.done = False
        self.handled = 0  # messages handled since it activated (for `busiest`)
        self.key: SigningKey | None = None
        self.last_used = trio.current_time()
        self.ctx = AgentContext(runtime, self)


class AgentContext:
    """The `Context` of one activation (see `meshd.runtime.sdk.Context`)."""

    __slots__ = ("_act", "_logger", "_rt")

    def __init__(self, runtime: Runtime, activation: Activation) -> None:
        self._rt = runtime
        self._act = activation
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def agent_id(self) -> str:
        """This agent's id (`did:key:...`)."""
        return self._act.agent.did

    @property
    def kind(self) -> str:
        """This agent's kind."""
        return self._act.kind

    @property
    def state(self) -> dict[str, Any]:
        """Persistent state; changes are saved after the handler returns."""
        return self._act.state

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger that names this agent."""
        if self._logger is None:
            self._logger = logging.LoggerAdapter(log, {"agent": self._act.agent.did})
        return self._logger

    async def send(
        self, to: str, body: Any, *, kind: str = "msg", reliable: bool = False
    ) -> DeliveryReport:
        """Send a message to another agent (at-least-once when `reliable`)."""
        envelope = await self._rt.make_envelope(self._act, _parse_target(to), kind, body)
        return await self._rt.messenger.send(envelope, reliable=reliable)

    async def send_many(
        self, messages: Sequence[tuple[str, Any]], *, kind: str = "msg"
    ) -> list[DeliveryReport]:
        """Send (to, body) messages at most once, together; their reports, in order."""
        envelopes = [
            await self._rt.make_envelope(self._act, _parse_target(to), kind, body)
            for to, body in messages
        ]
        return await self._rt.messenger.send_many(envelopes)

    async def request(
        self, to: str, body: Any, *, kind: str = "req", timeout: float = 10.0
    ) -> Message:
        """Send a request and wait for its reply; raise RequestTimeout after `timeout` s."""
        envelope = await self._rt.make_envelope(self._act, _parse_target(to), kind, body)
        with self._rt.expect_reply(envelope) as slot:
            report = await self._rt.messenger.send(envelope, reliable=False)
            if not report.ok:
                raise AgentError(f"request to {to} not delivered: {report.outcome}")
            with trio.move_on_after(timeout):
                return await slot.wait()
        raise RequestTimeout(f"no reply from {to} within {timeout} s")

    async def reply(self, msg: Message, body: Any, *, kind: str = "reply") -> DeliveryReport:
        """Answer `msg`."""
        # A reply keeps the request's trace id, so the trace follows the answer back.
        envelope = await self._rt.make_envelope(
            self._act,
            msg.envelope.sender,
            kind,
            body,
            reply_to=msg.msg_id,
            trace=msg.envelope.trace,
        )
        return await self._rt.messenger.send(envelope, reliable=False)

    async def publish(self, topic: str, body: Any, *, kind: str = "pub") -> None:
        """Publish on a topic."""
        envelope = await self._rt.make_envelope(self._act, topic, kind, body)
        await self._rt.messenger.publish(envelope)

    async def subscribe(self, topic: str) -> None:
        """Receive the topic's messages in `on_message` from now on."""
        await self._rt.messenger.subscribe(topic, self._act.agent)

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
        infos = await self._rt.spawn(
            kind,
            caps=caps,
            state=state,
            ttl_s=ttl,
            name=name,
            parent=self._act.agent,
            budget=budget,
        )
        return str(infos[0]["id"])

    def swarm(self, name: str) -> SwarmHandle:
        """The swarm `name`, to join, leave, and read its members and coordinator."""
        if self._rt.swarms is None:
            raise AgentError("this node runs no swarm service")
        handle: SwarmHandle = self._rt.swarms.handle(name, self._act.agent)
        return handle

    def done(self) -> None:
        """Declare this agent finished: it is deleted once the current handler returns."""
        self._act.done = True


def _parse_target(to: object) -> AgentId:
    if isinstance(to, AgentId):
        return to
    if not isinstance(to, str):
        raise AgentError(f"a target is an agent id (did:key:...), not {type(to).__name__}")
    try:
        return AgentId.from_did(to)
    except (ValueError, LocalProtocolError) as exc:
        raise AgentError(str(exc)) from exc
