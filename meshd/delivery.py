"""Delivery: carries agents' messages to other nodes and checks every message that arrives.

Outbound, `Delivery` is the runtime's `Messenger` while it serves: a message for an agent
hosted here goes straight to `Runtime.deliver`; any other is located (the location table,
then the pluggable `locate`, later the router), queued on that peer's message stream
(`Network.send_message`: bounded per peer, so a slow peer makes its senders wait) and
answered by the peer's ACK, or `timeout` after `send_timeout_s`, or `unreachable`.
Topic messages (`publish`, `subscribe`) are `meshd.pubsub.Topics`: local subscribers, then
GossipSub.

Inbound, the network hands over batches of MSG frames. Nothing reaches an agent before
`protocol.envelope.open_envelopes` passed it: size and structure, expiry and clock skew,
recipient hosted here, signature; then the replay window. The first checks run in worker
threads, two at a time, on chunks of a batch, in order; each chunk's signatures go to
libsodium in one call that releases the GIL once (`protocol.sigbatch`), so both cores
verify and a worker does not wait for the GIL after every message while the event loop is
busy. A lone message at light load is checked on the event loop: the thread hand-off would
cost it more latency than the check. The replay window and the delivery itself run on the
event loop in arrival order. Every rejection is counted by reason and answered
`rejected:<reason>`; the peer's stream and the node carry on.

At-least-once (`reliable=True`): the mode travels in the MSG frame; the receiver passes it
to `Runtime.deliver` (which dedupes and answers once the handler is done) in a task of its
own beside the ordered loop, and ACKs it when that returns. The sender writes the message to
the store's outbox first and retries it with backoff until it is acknowledged or expires.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from meshd.clock import WallClock, wall_ms
from meshd.guard import PeerGuard
from meshd.net.types import UNREACHABLE, InboundBatch, Network
from meshd.pubsub import Topics
from meshd.router import Route, Router, no_dht
from meshd.runtime.runtime import Runtime
from meshd.runtime.sdk import DeliveryReport
from meshd.store import OutboxMessage
from meshd.tracing import trace_step
from meshd.trust import Trust, refusal_error
from protocol.envelope import (
    DEFAULT_POLICY,
    Envelope,
    EnvelopePolicy,
    open_envelopes,
)
from protocol.errors import RejectReason, RemoteProtocolError
from protocol.frames import AckEntry, Mode, Msg, is_outcome
from protocol.ids import AgentId
from protocol.replay import ReplayWindow

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = ["TIMEOUT", "Delivery", "DeliverySettings"]

T = TypeVar("T")

log = logging.getLogger("meshd.delivery")

# The outcome of a message whose ACK did not come back before the deadline.
TIMEOUT = "timeout"
# Outcomes after which an at-least-once message is tried again (the rest are final).
_RETRY_OUTCOMES = frozenset(
    {UNREACHABLE, TIMEOUT, "not_here", "rejected:rate_limited", "rejected:unavailable"}
)
_REJECT_LOG_INTERVAL_S = 60.0
# An AckEntry from a tuple, without NamedTuple's keyword-handling constructor (per message).
_answer = partial(tuple.__new__, AckEntry)
_LIMITED = RemoteProtocolError(RejectReason.RATE_LIMITED, "over this peer's or agent's rate")
_BANNED = RemoteProtocolError(RejectReason.UNAUTHORIZED, "this peer is banned for a while")


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """Deadlines, limits and parallelism of delivery."""

    send_timeout_s: float = 10.0
    verify_threads: int = 2
    verify_chunk: int = 64
    inbound_batches: int = 16
    verify_ahead: int = 8
    # Jobs of at most this many messages are checked on the event loop, not in a thread.
    inline_verify_max: int = 1
    policy: EnvelopePolicy = DEFAULT_POLICY
    replay_capacity: int = 500_000
    replay_per_sender: int = 50_000
    max_reliable_pending: int = 256
    retry_base_s: float = 0.2
    retry_max_s: float = 10.0
    retry_poll_s: float = 0.5
    retry_batch: int = 256

    def __post_init__(self) -> None:
        if self.send_timeout_s <= 0:
            raise ValueError("send_timeout_s must be positive")
        for name in (
            "verify_threads",
            "verify_chunk",
            "inbound_batches",
            "verify_ahead",
            "max_reliable_pending",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


async def _put(channel: trio.MemorySendChannel[T], value: T) -> None:
    """Send on a bounded channel; a schedule point only when it must wait for room.

    At light load each message crosses several tasks; a pass of the event loop per hop that
    did not need one is most of what a lone message costs here.
    """
    try:
        channel.send_nowait(value)
    except trio.WouldBlock:
        await channel.send(value)


class _Job:
    """Messages of one or more inbound batches: verified in a thread, then delivered in order."""

    __slots__ = ("done", "items", "results")

    def __init__(self, items: list[tuple[InboundBatch, Msg]]) -> None:
        self.items = items
        self.results: list[Envelope | RemoteProtocolError] = []
        self.done = trio.Event()


class Delivery:
    """The delivery service: a `Messenger` for the runtime and the node's message handler."""

    def __init__(
        self,
        runtime: Runtime,
        network: Network,
        *,
        router: Router | None = None,
        settings: DeliverySettings | None = None,
        clock: WallClock = wall_ms,
        guard: PeerGuard | None = None,
    ) -> None:
        self._runtime = runtime
        # Rate limits, penalties and bans; shared with the network, which enforces bans.
        self.guard = guard if guard is not None else PeerGuard()
        self._network = network
        # Not `router or ...`: an empty router has length 0 and would count as false.
        self.router = router if router is not None else Router(runtime.hosts, no_dht)
        self._settings = settings or DeliverySettings()
        self._clock = clock
        self.topics = Topics(runtime, network, clock=clock)  # agent pub/sub
        self._replay = ReplayWindow(
            self._settings.replay_capacity, self._settings.replay_per_sender
        )
        self._limiter = trio.CapacityLimiter(self._settings.verify_threads)
        # At-least-once deliveries answer only once handled: they run beside the ordered
        # loop (a handler that waits on a message from a peer would otherwise deadlock it).
        self._reliable_slots = trio.Semaphore(self._settings.max_reliable_pending)
        self.sent: Counter[str] = Counter()  # outcome of each send, "local:" for local ones
        self.received: Counter[str] = Counter()  # outcome of each message from a peer
        self.rejected: Counter[str] = Counter()  # inbound rejections by reason
        self.outbox_counts: Counter[str] = Counter()  # at-least-once: retried, settled, expired
        self._outbox_wakeup = trio.Event()
        self._reject_logged: dict[str, float] = {}
        # Called with remote sends' time to their ACK in seconds and how many messages took
        # it (the metrics histogram).
        self.observe_latency: Callable[[float, int], object] = lambda seconds, count: None
        # Admission of messages for hosted agents (trust policy, allow/deny lists); None: all.
        self.trust: Trust | None = None

    # -- Messenger ------------------------------------------------------------------------

    def learn(self, agent: AgentId, peer_id: str, addrs: Sequence[str] = ()) -> None:
        """Remember where `agent` lives (the router's location cache)."""
        self.router.learn(agent, peer_id, tuple(addrs))

    async def send(self, envelope: Envelope, *, reliable: bool) -> DeliveryReport:
        """Deliver a signed envelope to its agent, here or on another node; report the outcome.

        With `reliable` (at-least-once) a message for another node is first written to the
        store's outbox; if this attempt does not get it acknowledged, the outbox loop retries
        with backoff until it is, or it expires, and the report says `queued`.
        """
        recipient = envelope.recipient
        if reliable and isinstance(recipient, AgentId) and not self._runtime.hosts(recipient):
            return await self._send_reliable(envelope, recipient)
        return await self._send_once(envelope, reliable=reliable)

    async def send_many(self, envelopes: Sequence[Envelope]) -> list[DeliveryReport]:
        """Deliver several signed envelopes at most once; their reports, in order.

        Each distinct recipient is located once, and the messages for one peer are queued on
        its stream in one pass and awaited together: an agent fanning out pays per message
        only for what must be per message. Local recipients, and any message a peer answers
        `not_here` (a stale location), go the way of `send`.
        """
        reports: list[DeliveryReport | None] = [None] * len(envelopes)
        routes: dict[bytes, Route | None] = {}
        by_peer: dict[str, tuple[Route, list[int]]] = {}
        alone: list[int] = []
        for i, envelope in enumerate(envelopes):
            recipient = envelope.recipient
            if not isinstance(recipient, AgentId):
                alone.append(i)
                continue
            if recipient.raw not in routes:
                routes[recipient.raw] = await self.router.locate(recipient)
            route = routes[recipient.raw]
            if route is None or route.path in ("local", "gone") or not route.peer_id:
                alone.append(i)
                continue
            by_peer.setdefault(route.peer_id, (route, []))[1].append(i)
        async with trio.open_nursery() as nursery:
            for route, indices in by_peer.values():
                nursery.start_soon(self._send_batch, envelopes, indices, route, reports, alone)
        for i in sorted(alone):  # stale locations are re-resolved and retried, as `send` does
            reports[i] = await self._send_once(envelopes[i], reliable=False)
        done = [report for report in reports if report is not None]
        assert len(done) == len(envelopes), "every message has its report"
        return done

    async def _send_batch(
        self,
        envelopes: Sequence[Envelope],
        indices: list[int],
        route: Route,
        reports: list[DeliveryReport | None],
        stale: list[int],
    ) -> None:
        """Carry the messages at `indices` to the route's peer; fill in their reports."""
        started = trio.current_time()
        results = await self._network.send_messages(
            route.peer_id,
            route.addrs,
            [envelopes[i].frame for i in indices],
            mode=Mode.AT_MOST_ONCE,
            timeout=self._settings.send_timeout_s,
        )
        elapsed = trio.current_time() - started
        late = f"no answer from {route.peer_id} within {self._settings.send_timeout_s:g} s"
        answered = 0
        counts: dict[str, int] = {}  # added to `sent` once: this loop runs for every message
        for i, result in zip(indices, results, strict=True):
            envelope = envelopes[i]
            if result is None:
                outcome, detail = TIMEOUT, late
            else:
                answered += 1
                outcome, detail = result
            if outcome == "not_here" or (
                outcome == "rejected:wrong_recipient" and route.path.startswith("summary")
            ):
                assert isinstance(envelope.recipient, AgentId)
                self.router.invalidate(envelope.recipient, route.peer_id)
                stale.append(i)  # `send_many` retries it alone, and counts it there
                continue
            counts[outcome] = counts.get(outcome, 0) + 1
            if envelope.trace is not None:
                trace_step("send", envelope, path=route.path, peer=route.peer_id,
                           outcome=outcome)  # fmt: skip
            reports[i] = DeliveryReport(envelope.msg_id, outcome, detail)
        self.sent.update(counts)
        if answered:
            # The batch's time to its last ACK: an upper bound on each message's.
            self.observe_latency(elapsed, answered)

    async def _send_reliable(self, envelope: Envelope, recipient: AgentId) -> DeliveryReport:
        store = self._runtime.store
        now = self._clock()
        # First retry no sooner than this attempt's own deadline: no second copy in flight.
        first_retry = now + int(self._settings.send_timeout_s * 1000)
        await store.outbox_put(
            [
                OutboxMessage(
                    msg_id=envelope.msg_id,
                    sender=envelope.sender.raw,
                    recipient=recipient.raw,
                    frame=envelope.frame,
                    next_attempt_ms=first_retry,
                    expires_ms=envelope.expires_ms,
                )
            ]
        )
        report = await self._send_once(envelope, reliable=True)
        if await self._settle_outbox(envelope.msg_id, report.outcome, attempts=0):
            return report
        self._outbox_wakeup.set()
        return DeliveryReport(envelope.msg_id, "queued", f"will retry: {report.outcome}")

    async def _settle_outbox(self, msg_id: bytes, outcome: str, attempts: int) -> bool:
        """Remove a message from the outbox unless `outcome` calls for another try."""
        store = self._runtime.store
        if outcome in _RETRY_OUTCOMES:
            backoff = min(
                self._settings.retry_max_s, self._settings.retry_base_s * 2 ** min(attempts, 16)
            )
            # Jitter spreads the retries of many messages that failed together.
            delay_ms = int(backoff * 1000 * random.uniform(0.5, 1.0))
            await store.outbox_reschedule(msg_id, self._clock() + delay_ms)
            self.outbox_counts["retried"] += 1
            return False
        await store.outbox_ack([msg_id])
        self.outbox_counts["settled:" + outcome] += 1
        return True

    async def _outbox_loop(self) -> None:
        """Retry due at-least-once messages until acknowledged or expired."""
        store = self._runtime.store
        while True:
            with trio.move_on_after(self._settings.retry_poll_s):
                await self._outbox_wakeup.wait()
            self._outbox_wakeup = trio.Event()
            now = self._clock()
            for key in await store.outbox_drop_expired(now):
                self.outbox_counts["expired"] += 1
                log.info("at-least-once message %s expired unacknowledged", key.msg_id.hex())
            due = await store.outbox_due(now, self._settings.retry_batch)
            if not due:
                continue
            async with trio.open_nursery() as nursery:
                for message in due:
                    nursery.start_soon(self._retry_one, message)

    async def _retry_one(self, message: OutboxMessage) -> None:
        try:
            envelope = Envelope.decode(message.frame)
        except RemoteProtocolError:  # our own store: only corruption gets here
            self.outbox_counts["corrupt"] += 1
            await self._runtime.store.outbox_ack([message.msg_id])
            return
        report = await self._send_once(envelope, reliable=True)
        await self._settle_outbox(message.msg_id, report.outcome, message.attempts + 1)

    async def _send_once(self, envelope: Envelope, *, reliable: bool) -> DeliveryReport:
        """One attempt: route the envelope and carry it to its agent."""
        recipient = envelope.recipient
        if not isinstance(recipient, AgentId):
            return DeliveryReport(envelope.msg_id, "rejected:wrong_recipient", "use publish")
        route = await self.router.locate(recipient)
        for attempt in range(2):
            if route is None:
                self.sent["no_location"] += 1
                return DeliveryReport(envelope.msg_id, UNREACHABLE, "no known location")
            if route.path == "local":
                trust, refusal = self.trust, None
                if trust is not None and trust.active:
                    refusal = await trust.admit(envelope)
                if refusal is not None:
                    self.sent["local:rejected:" + refusal] += 1
                    detail = refusal_error(refusal).detail
                    return DeliveryReport(envelope.msg_id, "rejected:" + refusal, detail)
                outcome = await self._runtime.deliver(envelope, reliable=reliable)
                self.sent["local:" + outcome] += 1
                if envelope.trace is not None:
                    trace_step("deliver", envelope, path="local", outcome=outcome)
                return DeliveryReport(envelope.msg_id, outcome)
            if route.path == "gone":
                self.sent["gone"] += 1
                return DeliveryReport(envelope.msg_id, "gone", "the agent's record is a tombstone")
            report = await self._send_remote(envelope, route, reliable)
            # A node matched by a summary false positive never hosted the agent and answers
            # wrong_recipient: re-resolve as for not_here (the router then skips that node).
            stale = report.outcome == "not_here" or (
                report.outcome == "rejected:wrong_recipient" and route.path.startswith("summary")
            )
            if not stale or attempt:
                return report
            # A stale location: forget it and look the agent up afresh, once.
            self.router.invalidate(recipient, route.peer_id)
            fresh = await self.router.locate(recipient, use_cache=False)
            if fresh is None or fresh.peer_id == route.peer_id:
                return report
            route = fresh
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send_remote(
        self, envelope: Envelope, route: Route, reliable: bool
    ) -> DeliveryReport:
        mode = Mode.AT_LEAST_ONCE if reliable else Mode.AT_MOST_ONCE
        result = None
        started = trio.current_time()
        # A CancelScope, not move_on_after: trio 0.35's is a generator context manager
        # around one, and this runs for every message sent alone (5% of the sender's loop).
        with trio.CancelScope(deadline=started + self._settings.send_timeout_s):
            result = await self._network.send_message(
                route.peer_id, route.addrs, envelope.frame, mode=mode
            )
        if result is not None:
            self.observe_latency(trio.current_time() - started, 1)
        if result is None:
            self.sent[TIMEOUT] += 1
            detail = f"no answer from {route.peer_id} within {self._settings.send_timeout_s:g} s"
            return DeliveryReport(envelope.msg_id, TIMEOUT, detail)
        self.sent[result.outcome] += 1
        if envelope.trace is not None:
            trace_step(
                "send", envelope, path=route.path, peer=route.peer_id, outcome=result.outcome
            )
        return DeliveryReport(envelope.msg_id, result.outcome, result.detail)

    async def publish(self, envelope: Envelope) -> None:
        """Deliver a topic message to this node's subscribers, then publish it on GossipSub."""
        await self.topics.publish(envelope)

    async def subscribe(self, topic: str, agent: AgentId) -> None:
        """Subscribe a local agent to a topic, durably (kept while dormant and on restart)."""
        await self.topics.subscribe(topic, agent)

    async def unsubscribe(self, topic: str, agent: AgentId) -> bool:
        """Unsubscribe a local agent from a topic; return whether it was subscribed."""
        return await self.topics.unsubscribe(topic, agent)

    # -- status ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: sends by outcome, received by outcome, rejections by reason."""
        return {
            "sent": dict(sorted(self.sent.items())),
            "received": dict(sorted(self.received.items())),
            "rejected": dict(sorted(self.rejected.items())),
            "locations": len(self.router),
            "outbox": dict(sorted(self.outbox_counts.items())),
            "replay_window": len(self._replay),
            "topics": self.topics.stats(),
            "guard": self.guard.stats(trio.current_time()),
        }

    # -- the service ----------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take messages from peers and be the runtime's messenger, until cancelled."""
        settings = self._settings
        batches_send, batches_recv = trio.open_memory_channel[InboundBatch](
            settings.inbound_batches
        )
        jobs_send, jobs_recv = trio.open_memory_channel[_Job](settings.verify_ahead)
        previous = self._runtime.messenger
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._verify_loop, batches_recv, jobs_send, nursery)
                nursery.start_soon(self._outbox_loop)
                nursery.start_soon(self._deliver_loop, jobs_recv, nursery)
                await nursery.start(self.topics.serve)
                # The handler waits while our queue is full: that is the peers' backpressure.
                self._network.set_message_handler(partial(_put, batches_send))
                self._runtime.messenger = self
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._network.set_message_handler(None)
            self._runtime.messenger = previous

    async def _verify_loop(
        self,
        batches: trio.MemoryReceiveChannel[InboundBatch],
        jobs: trio.MemorySendChannel[_Job],
        nursery: trio.Nursery,
    ) -> None:
        # Chunks small enough that one big read keeps both threads busy, and, when batches
        # queue up (we are busy), as many of them as are waiting in each hand-off to the
        # threads: a hand-off costs about as much as verifying a few messages.
        settings = self._settings
        limit, threads = settings.verify_chunk, settings.verify_threads
        guard = self.guard
        async with jobs:
            async for first in batches:
                now = trio.current_time()
                items: list[tuple[InboundBatch, Msg]] = []
                refused: list[tuple[InboundBatch, Msg]] = []
                batch: InboundBatch | None = first
                while batch is not None:
                    # A banned peer's batches still in flight cost no verification. (Peers
                    # over their rate are slowed where their streams are read.)
                    into = refused if guard.banned(batch.peer_id, now) else items
                    into.extend((batch, msg) for msg in batch.msgs)
                    batch = None
                    if len(items) < limit * threads:
                        with contextlib.suppress(trio.WouldBlock):
                            batch = batches.receive_nowait()
                size = min(limit, max(8, math.ceil(len(items) / threads)))
                now_ms = self._clock()
                if len(items) <= settings.inline_verify_max:
                    # Light load: a message or two cost less to check here (about 0.1 ms
                    # each) than the hand-off to a worker thread and back adds to latency.
                    job = _Job(items)
                    job.results = self._check(job, now_ms)
                    job.done.set()
                    items = []
                    await _put(jobs, job)
                for start in range(0, len(items), size):
                    job = _Job(items[start : start + size])
                    # Bounded: at most `verify_ahead` jobs wait in `jobs`, plus one being sent.
                    nursery.start_soon(self._verify, job, now_ms)
                    await _put(jobs, job)
                if refused:
                    job = _Job(refused)
                    job.results = [_BANNED] * len(refused)
                    job.done.set()
                    await _put(jobs, job)

    async def _verify(self, job: _Job, now_ms: int) -> None:
        job.results = await trio.to_thread.run_sync(
            self._check, job, now_ms, limiter=self._limiter
        )
        job.done.set()

    def _check(self, job: _Job, now_ms: int) -> list[Envelope | RemoteProtocolError]:
        """Every receive check of a job's messages but the replay window (in a worker thread)."""
        # An agent that migrated away passes this check, and `Runtime.deliver` answers
        # `not_here`, so that its sender re-resolves instead of giving up on wrong_recipient.
        # Decoding here too measured faster than decoding on the event loop and sending
        # only the signatures here (7.2-8.0k against 6.4-7.9k messages/s, bench/messaging.py).
        return open_envelopes(
            [msg.envelope for _batch, msg in job.items],
            now_ms=now_ms,
            policy=self._settings.policy,
            hosted=self._runtime.hosts_or_moved,
        )

    async def _deliver_loop(
        self, jobs: trio.MemoryReceiveChannel[_Job], nursery: trio.Nursery
    ) -> None:
        runtime, replay, router, guard = self._runtime, self._replay, self.router, self.guard
        async for job in jobs:
            if not job.done.is_set():  # checked inline, or by a thread that already finished
                await job.done.wait()
            now_ms, now = self._clock(), trio.current_time()
            answers: dict[int, tuple[InboundBatch, list[AckEntry]]] = {}
            placed: set[bytes] = set()  # senders whose location was settled in this job
            for (batch, msg), result in zip(job.items, job.results, strict=True):
                known = answers.get(id(batch))
                if known is None:
                    known = answers[id(batch)] = (batch, [])
                entries = known[1]
                if isinstance(result, RemoteProtocolError):
                    entries.append(self._reject(batch.peer_id, msg.seq, result))
                    continue
                try:
                    # On the event loop, in arrival order: the window is not thread-safe.
                    replay.check(result.sender.raw, result.msg_id, result.expires_ms, now_ms)
                except RemoteProtocolError as exc:
                    # An at-least-once message seen before is its sender retrying one whose
                    # ACK it never got: the runtime's persistent dedupe answers it
                    # (`delivered`, handled once), as it would after our restart.
                    if msg.mode is not Mode.AT_LEAST_ONCE:
                        entries.append(self._reject(batch.peer_id, msg.seq, exc))
                        continue
                    self.received["retried"] += 1
                # `active` first: the open mesh without lists pays two attribute reads.
                trust, refusal = self.trust, None
                if trust is not None and trust.active:
                    refusal = await trust.admit(result, batch.peer_id)
                if refusal is not None:
                    entries.append(self._reject(batch.peer_id, msg.seq, refusal_error(refusal)))
                    continue
                sender = result.sender
                if not guard.admit_agent(sender.raw, now):
                    entries.append(self._reject(batch.peer_id, msg.seq, _LIMITED))
                    continue
                if sender.raw not in placed:
                    placed.add(sender.raw)  # a job's messages come from a few senders
                    if not router.knows(sender) and not runtime.hosts(sender):
                        # Where a verified message came from is where its sender's replies
                        # go. Only when nothing better is known: a peer relaying someone
                        # else's message first cannot take over a location learned elsewhere.
                        router.learn(sender, batch.peer_id)
                if msg.mode is Mode.AT_LEAST_ONCE:
                    await self._reliable_slots.acquire()  # bounded: waits when many pend
                    nursery.start_soon(self._deliver_reliable, batch, msg.seq, result)
                    continue
                outcome = runtime.deliver_nowait(result)  # a running agent: no await
                if outcome is None:
                    outcome = await runtime.deliver(result)
                outcome = self._count(outcome)
                if result.trace is not None:
                    trace_step("receive", result, peer=batch.peer_id, outcome=outcome)
                entries.append(_answer((msg.seq, outcome, "")))
            for batch, entries in answers.values():
                if entries:
                    batch.ack(entries)

    async def _deliver_reliable(self, batch: InboundBatch, seq: int, envelope: Envelope) -> None:
        try:
            outcome = await self._runtime.deliver(envelope, reliable=True)
        finally:
            self._reliable_slots.release()
        batch.ack([AckEntry(seq, self._count(outcome))])
        if envelope.trace is not None:
            trace_step("receive", envelope, peer=batch.peer_id, outcome=outcome, reliable=True)

    def _count(self, outcome: str) -> str:
        if not is_outcome(outcome):  # pragma: no cover - the runtime's set is fixed
            log.error("runtime answered %r, which cannot travel", outcome)
            outcome = "not_here"
        self.received[outcome] += 1
        return outcome

    def _reject(self, peer_id: str, seq: int, exc: RemoteProtocolError) -> AckEntry:
        reason = exc.reason.value
        self.rejected[reason] += 1
        self.received["rejected:" + reason] += 1
        now = trio.current_time()
        self.guard.penalise(peer_id, reason, now)
        # One line per reason a minute: a peer sending junk must not flood the log.
        if now - self._reject_logged.get(reason, -math.inf) >= _REJECT_LOG_INTERVAL_S:
            self._reject_logged[reason] = now
            log.info(
                "rejected a message from peer %s: %s (%d %s so far)",
                peer_id,
                exc,
                self.rejected[reason],
                reason,
            )
        return AckEntry(seq, "rejected:" + reason, exc.detail)
