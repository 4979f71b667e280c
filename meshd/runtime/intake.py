"""Message intake for the runtime: delivery to agents, at-least-once, and their inboxes.

`IntakeMixin` holds the `Runtime` methods that take a verified envelope to its agent: the
match of replies to pending requests (`expect_reply`, `ReplySlot`), the in-memory inbox and
its drain, the persistent inbox of suspended and external agents (`_queue`), and the
at-least-once bookkeeping (`_Ack`, dedupe, and the commit of a handled message with the new
state in one write). It also signs what agents send (`make_envelope`). The mixin owns no
state: it declares the `Runtime` attributes and methods it uses, which `Runtime` provides.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import cbor2
import trio

from meshd.clock import WallClock
from meshd.runtime.keys import KeyVault
from meshd.runtime.lifecycle import State
from meshd.runtime.sdk import AgentError, Message
from meshd.runtime.settings import RuntimeSettings
from meshd.store import InboxFull, Store, StoreError
from protocol.envelope import Envelope
from protocol.errors import LocalProtocolError
from protocol.ids import AgentId

if TYPE_CHECKING:
    from meshd.runtime.activation import Activation
    from meshd.runtime.runtime import RuntimeStats

__all__ = ["IntakeMixin", "ReplySlot"]

log = logging.getLogger("meshd.runtime")


class _Ack:
    """The answer owed to the sender of an at-least-once message, once it is handled."""

    __slots__ = ("event", "outcome")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.outcome = "rejected:unavailable"

    def finish(self, outcome: str) -> None:
        """Set the outcome and wake the delivery waiting to answer."""
        if not self.event.is_set():
            self.outcome = outcome
            self.event.set()


class ReplySlot:
    """Where a reply to a pending request lands."""

    __slots__ = ("_event", "message")

    def __init__(self) -> None:
        self._event = trio.Event()
        self.message: Message | None = None

    def fill(self, message: Message) -> None:
        """Store the reply and wake the waiter."""
        if self.message is None:
            self.message = message
            self._event.set()

    async def wait(self) -> Message:
        """Wait for the reply."""
        await self._event.wait()
        assert self.message is not None
        return self.message


_SAVE_TIMEOUT_S = 10.0  # a state write that takes longer has failed


def _encode_state(state: dict[str, Any]) -> bytes:
    try:
        return cbor2.dumps(state, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise AgentError(f"agent state is not CBOR-encodable: {exc}") from exc


# What an empty state is stored as: a stateless handler's state needs no encoding to compare.
_EMPTY_STATES = (b"", cbor2.dumps({}, canonical=True))


def _decode_state(data: bytes) -> dict[str, Any]:
    state = cbor2.loads(data) if data else {}
    return state if isinstance(state, dict) else {}


class IntakeMixin:
    """The `Runtime` methods that deliver messages to agents (see the module docstring)."""

    # Provided by `Runtime.__init__`.
    store: Store
    settings: RuntimeSettings
    vault: KeyVault
    clock: WallClock
    stats: RuntimeStats
    _index: dict[bytes, State]
    _external: set[bytes]
    _active: OrderedDict[bytes, Activation]
    _pending: dict[bytes, tuple[bytes, ReplySlot]]
    _inflight: dict[bytes, _Ack]
    _operator: bytes | None
    _inbox_waiters: dict[bytes, trio.Event]
    _nursery: trio.Nursery | None
    _limiter: trio.CapacityLimiter

    if TYPE_CHECKING:
        # Provided by `Runtime` and `BoundaryMixin`.
        def _hold(self, raw: bytes, envelope: Envelope, reliable: bool) -> str: ...

        async def _activate(self, agent: AgentId) -> Activation | None: ...

        async def delete(self, agent: AgentId, *, reason: str = "deleted") -> None: ...

    # -- delivery ----------------------------------------------------------------------

    @contextlib.contextmanager
    def expect_reply(self, request: Envelope) -> Iterator[ReplySlot]:
        """Register a pending request so that its reply is matched, not queued."""
        slot = ReplySlot()
        self._pending[request.msg_id] = (request.sender.raw, slot)
        try:
            yield slot
        finally:
            self._pending.pop(request.msg_id, None)

    async def deliver(
        self, envelope: Envelope, *, reliable: bool = False, to: AgentId | None = None
    ) -> str:
        """Hand a verified envelope to its local recipient; return the delivery outcome."""
        recipient = to if to is not None else envelope.recipient
        if not isinstance(recipient, AgentId):
            return "rejected:wrong_recipient"
        if envelope.reply_to is not None:
            pending = self._pending.get(envelope.reply_to)
            if pending is not None and pending[0] == recipient.raw:
                pending[1].fill(Message.from_envelope(envelope))
                return "delivered"
        if recipient.raw not in self._index:
            return "not_here"
        if envelope.reply_to is not None and recipient.raw == self._operator:
            # A reply nobody waits for any more (a `meshd send` that did not --wait, or that
            # timed out): the operator is no agent, so there is no one to keep it for.
            self.stats.unclaimed_replies += 1
            return "delivered"
        if not reliable:
            return await self._deliver_once(recipient, envelope, None)
        # At-least-once: the sender retries until we answer, so a copy may come again while
        # the first is being handled, or after it was: either way it is handled once.
        key = envelope.sender.raw + envelope.msg_id
        inflight = self._inflight.get(key)
        if inflight is not None:
            self.stats.duplicates += 1
            await inflight.event.wait()
            return inflight.outcome
        ack = self._inflight[key] = _Ack()
        try:
            if await self.store.dedupe_contains(envelope.sender.raw, envelope.msg_id):
                self.stats.duplicates += 1
                ack.finish("delivered")
            else:
                ack.finish(await self._deliver_once(recipient, envelope, ack))
        finally:
            ack.finish("rejected:unavailable")  # cancelled: answer the copies waiting too
            del self._inflight[key]
        return ack.outcome

    async def _deliver_once(self, recipient: AgentId, envelope: Envelope, ack: _Ack | None) -> str:
        """Queue or hand the message to the agent; with an ack, wait until it is handled."""
        raw = recipient.raw
        state = self._index.get(raw)
        if state is None:
            return "not_here"
        if state is State.MIGRATING:
            return self._hold(raw, envelope, ack is not None)
        if state is State.SUSPENDED or raw in self._external:
            return await self._queue(raw, envelope, ack is not None)
        activation = self._active.get(raw) or await self._activate(recipient)
        if activation is None:
            return "gone"
        outcome = self._enqueue(activation, envelope, ack)
        if ack is None or outcome != "delivered":
            return outcome
        # Answer only once the handler's effects are committed with the dedupe key.
        await ack.event.wait()
        return ack.outcome

    def deliver_nowait(self, envelope: Envelope) -> str | None:
        """`deliver`'s outcome for an at-most-once message to a running agent; else None.

        The receive loop calls this for every message and awaits `deliver` only for the
        rest (replies, dormant, suspended, external or moving agents): two coroutines a
        message are a measurable share of the loop at full rate.
        """
        recipient = envelope.recipient
        if envelope.reply_to is not None or type(recipient) is not AgentId:
            return None
        raw = recipient.raw
        activation = self._active.get(raw)
        if activation is None or self._index.get(raw) is not State.ACTIVE or raw in self._external:
            return None
        return self._enqueue(activation, envelope, None)

    def _enqueue(self, activation: Activation, envelope: Envelope, ack: _Ack | None) -> str:
        """Put a message in a running agent's inbox and make sure its drain task runs."""
        if len(activation.inbox) >= self.settings.inbox_limit:
            self.stats.inbox_full += 1
            return "rejected:rate_limited"
        activation.inbox.append((Message.from_envelope(envelope), ack))
        self._active.move_to_end(activation.agent.raw)
        if not activation.running:
            activation.running = True
            assert self._nursery is not None, "runtime is not serving"
            self._nursery.start_soon(self._drain, activation)
        return "delivered"

    async def _queue(self, raw: bytes, envelope: Envelope, reliable: bool) -> str:
        """Put a message in the agent's persistent inbox (suspended or external agents)."""
        try:
            if reliable:
                fresh = await self.store.inbox_put_once(
                    raw,
                    envelope.frame,
                    envelope.sender.raw,
                    envelope.msg_id,
                    envelope.expires_ms,
                    self.clock(),
                )
                if not fresh:
                    self.stats.duplicates += 1
                    return "queued"
            else:
                await self.store.inbox_put(raw, [envelope.frame], self.clock())
        except InboxFull:
            self.stats.inbox_full += 1
            return "rejected:rate_limited"
        self.stats.queued += 1
        waiter = self._inbox_waiters.pop(raw, None)
        if waiter is not None:
            waiter.set()
        return "queued"

    async def _drain(self, activation: Activation) -> None:
        try:
            # Entering the task was the schedule point: wait for a slot only when none is free.
            try:
                self._limiter.acquire_nowait()
            except trio.WouldBlock:
                await self._limiter.acquire()
            try:
                while activation.inbox and not activation.stopping:
                    message, ack = activation.inbox.popleft()
                    try:
                        await activation.behaviour.on_message(activation.ctx, message)
                        self.stats.handled += 1
                        activation.handled += 1
                    except Exception:  # an agent's bug must not take the node down
                        self.stats.handler_errors += 1
                        log.exception(
                            "agent %s: on_message failed for %s", activation.agent.did, message.kind
                        )
                    if ack is None:
                        await self._save_state(activation)
                    else:
                        await self._commit_delivery(activation, message, ack)
                    if activation.done:
                        # Not running any more: delete() must not wait for this very task.
                        activation.running = False
                        await self.delete(activation.agent, reason="done")
                        return
            finally:
                self._limiter.release()
        finally:
            activation.running = False
            activation.last_used = trio.current_time()
            if activation.idle is not None:
                activation.idle.set()

    async def _commit_delivery(self, activation: Activation, message: Message, ack: _Ack) -> None:
        """Record an at-least-once message as handled, in one write with the new state."""
        envelope = message.envelope
        encoded: bytes | None = None
        try:
            encoded = _encode_state(activation.state)
        except AgentError:
            self.stats.handler_errors += 1
            log.error("agent %s: state is not CBOR-encodable; not saved", activation.agent.did)
        changed = encoded is not None and encoded != activation.saved_state
        try:
            # Shielded, like _save_state: the write and our copy of its version go together.
            with trio.CancelScope(shield=True, deadline=trio.current_time() + _SAVE_TIMEOUT_S):
                await self.store.commit_delivery(
                    envelope.sender.raw,
                    envelope.msg_id,
                    envelope.expires_ms,
                    activation.agent.raw,
                    encoded if changed else None,
                    activation.state_version,
                    now_ms=self.clock(),
                )
        except StoreError as exc:
            log.error("agent %s: delivery not committed: %s", activation.agent.did, exc)
            ack.finish("rejected:unavailable")
            return
        if changed and encoded is not None:
            activation.saved_state = encoded
            activation.state_version += 1
        ack.finish("delivered")

    async def _save_state(self, activation: Activation) -> None:
        if not activation.state and activation.saved_state in _EMPTY_STATES:
            return
        try:
            encoded = _encode_state(activation.state)
        except AgentError:
            self.stats.handler_errors += 1
            log.error("agent %s: state is not CBOR-encodable; not saved", activation.agent.did)
            return
        if encoded == activation.saved_state:
            return
        # Shielded: cancelled between the store's commit and this assignment (a shutdown),
        # the activation would keep a stale version and its next save would conflict.
        # Bounded: one group commit, and a deadline in case the store is gone.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + _SAVE_TIMEOUT_S):
            activation.state_version = await self.store.save_state(
                activation.agent.raw, encoded, activation.state_version, self.clock()
            )
            activation.saved_state = encoded

    async def make_envelope(
        self,
        activation: Activation,
        to: AgentId | str,
        kind: str,
        body: Any,
        *,
        reply_to: bytes | None = None,
        trace: bytes | None = None,
    ) -> Envelope:
        """Sign an envelope as the activation's agent (opening its key on first use)."""
        if activation.key is None:
            row = await self.store.get_agent(activation.agent.raw)
            if row is None or not row.secret:
                raise AgentError(f"agent {activation.agent.did} has no key here")
            activation.key = self.vault.open(row.secret)
        try:
            return Envelope.create(
                activation.key,
                to,
                kind,
                body,
                now_ms=self.clock(),
                ttl_ms=self.settings.envelope_ttl_ms,
                reply_to=reply_to,
                trace=trace,
            )
        except (ValueError, LocalProtocolError) as exc:
            raise AgentError(f"cannot build the message: {exc}") from exc
