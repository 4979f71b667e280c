"""Agent topics over py-libp2p GossipSub v1.1: the libp2p side of pub/sub.

A topic `news` is the GossipSub topic `/meshd/topic/news`, so meshd topics never mix with
another application's. Every message is an agent-signed envelope (`protocol.envelope`)
addressed to the topic; nothing else travels.

Settings, chosen on purpose (py-libp2p 0.8.1, see ../shared/LIBP2P.md):
- `Pubsub` and its router are built with the host, before any connection: Pubsub learns of
  peers only from connection events, so connections made earlier would be ignored.
- GossipSub v1.1 only: v1.2 sends an IDONTWANT for every message, a cost that does not pay
  off for small envelopes. Heartbeat every second (the default is 120 s: a new subscriber
  would wait minutes to join a mesh). Adaptive gossip is off: it would raise the heartbeat
  to 30-60 s whenever it judged the network unhealthy.
- Spam protection: py-libp2p drops every message beyond 10 per second per forwarder and topic,
  our own publications included, and says nothing. A forwarder relays everything published
  on the topic, so the limit bounds the topic's whole rate; we allow 1,000/s, about a fifth
  of what one node can verify (two Ed25519 checks per message, libp2p's and the envelope's),
  so one flooding peer cannot take the whole event loop, and we pace our own publications
  to stay under it instead of losing them.
- Queues: each peer's outbound queue holds 256 RPCs (32 by default, which a burst of
  publications overflows; 256 small envelopes are about 100 KiB, 16 MiB at the 64 KiB
  envelope maximum) and each subscription buffers 256 messages. Whatever does not fit is
  dropped, as GossipSub does, but counted.
- The topic validator runs `open_envelope` (structure, size, expiry, clock skew, signature),
  requires `to` to be the topic, and refuses envelopes seen before (a replay window, so a
  peer cannot re-wrap a valid envelope in new GossipSub messages and flood the mesh with
  it). Refused messages are neither delivered nor forwarded, and are counted by reason.
- Validation results are cached for 60 s and GossipSub remembers message ids for 120 s, so
  a message coming back after both is validated again (and refused by the replay window or
  its expiry) instead of being taken from a stale cache.

Our own publications are not handed back to the topic handler: the publisher delivers them
to this node's subscribers itself, once.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.tools.anyio_service import background_trio_service

from meshd.clock import WallClock, wall_ms
from meshd.net.types import TopicHandler
from protocol.envelope import DEFAULT_POLICY, Envelope, EnvelopePolicy, open_envelope
from protocol.errors import RejectReason, RemoteProtocolError
from protocol.replay import ReplayWindow

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = ["TOPIC_PREFIX", "GossipSettings", "TopicService"]

log = logging.getLogger("meshd.net.gossip")

TOPIC_PREFIX = "/meshd/topic/"
_REJECT_LOG_INTERVAL_S = 60.0
# GossipSub counts a forwarder's messages over a sliding second of the wall clock; we pace on
# trio's clock, so keep a little margin for the two clocks' difference.
_PACE_MARGIN_S = 0.05
_MESH_SHOWN = 20  # topics listed with their peer counts in stats()


@dataclass(frozen=True, slots=True)
class GossipSettings:
    """GossipSub parameters, rate limits and buffer sizes (see the module doc for why)."""

    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    heartbeat_s: int = 1
    max_msgs_per_topic_per_s: int = 1_000
    peer_queue: int = 256
    publish_wait_s: float = 2.0
    topic_buffer: int = 256
    max_remote_topics: int = 1_000
    seen_ttl_s: int = 120
    validation_cache_ttl_s: int = 60
    replay_capacity: int = 200_000
    replay_per_sender: int = 50_000
    policy: EnvelopePolicy = DEFAULT_POLICY

    def __post_init__(self) -> None:
        if not 0 < self.degree_low <= self.degree <= self.degree_high:
            raise ValueError("need 0 < degree_low <= degree <= degree_high")
        for name in (
            "heartbeat_s",
            "max_msgs_per_topic_per_s",
            "peer_queue",
            "topic_buffer",
            "max_remote_topics",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.validation_cache_ttl_s >= self.seen_ttl_s:
            # Otherwise a message could come back after the seen-cache forgot it and be
            # accepted from the validation cache without passing the replay window.
            raise ValueError("validation_cache_ttl_s must be shorter than seen_ttl_s")


class _Pubsub(Pubsub):
    """py-libp2p's Pubsub handing topic messages to meshd's channels instead of its own.

    Its subscriptions buffer 32 messages (a module constant) and drop the rest with only a
    warning; ours are sized by `GossipSettings.topic_buffer` and count what they drop.
    """

    meshd_notify: Callable[[rpc_pb2.Message], None] | None = None

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        """Give a validated message to meshd (every topic is subscribed through meshd)."""
        if self.meshd_notify is not None:
            self.meshd_notify(publish_message)


class _PeerQueues(dict[Any, Any]):
    """`Pubsub.peer_queues` that resizes each new per-peer queue, counts what it drops, and
    tells publishers when a queue has room again.

    py-libp2p builds every `RpcQueue()` with its default of 32 entries, and GossipSub drops
    what does not fit without a word: a publisher that does not wait loses messages.
    """

    def __init__(self, size: int, high: int, counters: Counter[str]) -> None:
        super().__init__()
        self._size = size
        self._high = high
        self._counters = counters
        self.room = trio.Event()  # set (and replaced) whenever a queue drains below `high`

    def __setitem__(self, peer: Any, queue: Any) -> None:
        queue._queue.max_size = self._size
        push, pop = queue.push, queue.pop
        counters, high = self._counters, self._high

        def counted_push(rpc: Any, priority: bool = False) -> bool:
            ok = bool(push(rpc, priority))
            if not ok:
                counters["peer_queue_drops"] += 1  # full, or the peer just left
            return ok

        async def signalling_pop() -> Any:
            rpc = await pop()
            if len(queue) < high:
                self.room.set()
                self.room = trio.Event()
            return rpc

        queue.push = counted_push
        queue.pop = signalling_pop
        super().__setitem__(peer, queue)

    def full(self, peers: Any) -> bool:
        """Whether the queue of any of `peers` holds `high` RPCs or more."""
        for peer in peers:
            queue = self.get(peer)
            if queue is not None and len(queue) >= self._high:
                return True
        return False


def _check_libp2p_layout() -> None:
    """Fail loudly if py-libp2p changed what `_Pubsub` and `_PeerQueues` rely on."""
    probe = RpcQueue()
    if not hasattr(getattr(probe, "_queue", None), "max_size"):
        raise RuntimeError("libp2p RpcQueue has no _queue.max_size: unknown py-libp2p layout")
    if not callable(getattr(Pubsub, "notify_subscriptions", None)):
        raise RuntimeError("libp2p Pubsub has no notify_subscriptions: unknown layout")


class _Pacer:
    """Keeps our own publications on one topic under GossipSub's per-forwarder limit."""

    def __init__(self, limit: int) -> None:
        self._times: deque[float] = deque(maxlen=limit)
        self._lock = trio.Lock()

    @property
    def last(self) -> float:
        """When the latest publication went out (trio clock), or -inf."""
        return self._times[-1] if self._times else -math.inf

    async def wait(self) -> bool:
        """Wait until one more publication fits in the window; return whether we waited."""
        async with self._lock:  # one at a time: publishers queue up behind the window
            waited = False
            if len(self._times) == self._times.maxlen:
                delay = self._times[0] + 1.0 + _PACE_MARGIN_S - trio.current_time()
                if delay > 0:
                    await trio.sleep(delay)
                    waited = True
            self._times.append(trio.current_time())
            return waited


def gossip_topic(name: str) -> str:
    """The GossipSub topic id of a meshd topic."""
    return TOPIC_PREFIX + name


class TopicService:
    """GossipSub for one host: subscriptions, publications, validation; run with `serve`."""

    def __init__(
        self,
        host: Any,
        settings: GossipSettings | None = None,
        *,
        wall_clock: WallClock = wall_ms,
    ) -> None:
        _check_libp2p_layout()
        self._settings = s = settings or GossipSettings()
        self._clock = wall_clock
        self._my_id = host.get_id()
        self._my_id_bytes = self._my_id.to_bytes()
        self.counters: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()  # validator refusals by RejectReason value
        self._reject_logged: dict[str, float] = {}
        self._replay = ReplayWindow(s.replay_capacity, s.replay_per_sender)
        self.router = GossipSub(
            protocols=[PROTOCOL_ID_V11],
            degree=s.degree,
            degree_low=s.degree_low,
            degree_high=s.degree_high,
            heartbeat_interval=s.heartbeat_s,
            adaptive_gossip_enabled=False,
            spam_protection_enabled=True,
            max_messages_per_topic_per_second=float(s.max_msgs_per_topic_per_s),
        )
        # Built now, with the host: Pubsub ignores connections made before it exists.
        self.pubsub = _Pubsub(
            host,
            self.router,
            strict_signing=True,
            seen_ttl=s.seen_ttl_s,
            validation_cache_ttl=s.validation_cache_ttl_s,
            max_subscriptions_per_peer=s.max_remote_topics,
        )
        # Our publications stop at three quarters of a peer's queue: the rest stays free for
        # GossipSub's control messages and for what we relay.
        self._queues = _PeerQueues(s.peer_queue, max(1, s.peer_queue * 3 // 4), self.counters)
        self.pubsub.peer_queues = self._queues
        # py-libp2p starts its sequence numbers at time() in seconds: a node restarting after
        # publishing faster than one message a second would reuse them, and peers would drop
        # its new messages as already seen (ids are sender + seqno). go-libp2p starts at the
        # time in nanoseconds; so do we.
        self.pubsub.counter = time.time_ns()
        self.pubsub.meshd_notify = self._notify
        self._channels: dict[str, trio.MemorySendChannel[bytes]] = {}
        self._pacers: dict[str, _Pacer] = {}
        self._handler: TopicHandler | None = None
        self._nursery: trio.Nursery | None = None

    # -- API ------------------------------------------------------------------------------

    def set_handler(self, handler: TopicHandler | None) -> None:
        """Give every valid message from another node on a subscribed topic to `handler`."""
        self._handler = handler

    def subscribed(self) -> list[str]:
        """The meshd topics this node subscribes to."""
        return sorted(topic[len(TOPIC_PREFIX) :] for topic in self._channels)

    async def subscribe(self, name: str) -> None:
        """Join the topic's mesh and start its receive loop (idempotent)."""
        topic = gossip_topic(name)
        if topic in self._channels:
            return
        if self._nursery is None:
            raise RuntimeError("the topic service is not running")
        send, receive = trio.open_memory_channel[bytes](self._settings.topic_buffer)
        self._channels[topic] = send
        self.pubsub.set_topic_validator(topic, self._validate, False)
        self._nursery.start_soon(self._receive_loop, name, receive)
        try:
            await self.pubsub.subscribe(topic)
        except BaseException:
            self._forget(topic)
            raise
        self.counters["subscribed"] += 1

    async def unsubscribe(self, name: str) -> None:
        """Leave the topic's mesh; messages already buffered are still handed over."""
        topic = gossip_topic(name)
        if topic not in self._channels:
            return
        self._forget(topic)
        await self.pubsub.unsubscribe(topic)
        self.counters["unsubscribed"] += 1

    async def publish(self, name: str, envelope: bytes) -> None:
        """Publish an envelope addressed to topic `name`, paced under the spam limit."""
        decoded = Envelope.decode(envelope, self._settings.policy.limits)
        if decoded.recipient != name:
            raise ValueError(f"the envelope is addressed to {decoded.recipient!r}, not {name!r}")
        if self._nursery is None:
            raise RuntimeError("the topic service is not running")
        try:
            # Remembered as seen, so a copy that comes back re-wrapped is refused.
            self._replay.check(
                decoded.sender.raw, decoded.msg_id, decoded.expires_ms, self._clock()
            )
        except RemoteProtocolError as exc:
            self.counters["publish_refused:" + exc.reason.value] += 1
            return
        topic = gossip_topic(name)
        pacer = self._pacers.get(topic)
        if pacer is None:
            self._prune_pacers()
            pacer = self._pacers[topic] = _Pacer(self._settings.max_msgs_per_topic_per_s)
        if await pacer.wait():
            self.counters["publish_paced"] += 1
        await self._wait_for_room(topic)
        await self.pubsub.publish(topic, envelope)
        self.counters["published"] += 1

    def stats(self) -> dict[str, Any]:
        """Counters, refusals by reason, and peer counts of the first topics."""
        out: dict[str, Any] = dict(sorted(self.counters.items()))
        out["rejected"] = dict(sorted(self.rejected.items()))
        out["topics"] = len(self._channels)
        out["peers"] = len(self.pubsub.peers)
        out["queued"] = sum(c.statistics().current_buffer_used for c in self._channels.values())
        out["mesh"] = {name: self.topic_peers(name) for name in self.subscribed()[:_MESH_SHOWN]}
        return out

    def topic_peers(self, name: str) -> dict[str, int]:
        """How many peers subscribe to the topic, and how many are in our mesh for it."""
        topic = gossip_topic(name)
        return {
            "peers": len(self.pubsub.peer_topics.get(topic, ())),
            "mesh": len(self.router.mesh.get(topic, ())),
        }

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run Pubsub, GossipSub and the receive loops until cancelled."""
        try:
            async with (
                background_trio_service(self.pubsub),
                background_trio_service(self.router),
                trio.open_nursery() as nursery,
            ):
                await self.pubsub.wait_until_ready()
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for topic in list(self._channels):
                self._forget(topic)

    # -- inside ---------------------------------------------------------------------------

    def _forget(self, topic: str) -> None:
        send = self._channels.pop(topic, None)
        if send is not None:
            send.close()  # its receive loop drains what is buffered, then ends
        self.pubsub.remove_topic_validator(topic)

    def _prune_pacers(self) -> None:
        # Publishing needs no subscription, so a node may publish on any number of topics:
        # forget the pacers of topics idle for a second (their window is empty by then).
        if len(self._pacers) < 1_024:
            return
        idle = trio.current_time() - 1.0 - _PACE_MARGIN_S
        for topic in [t for t, p in self._pacers.items() if p.last < idle]:
            del self._pacers[topic]

    async def _wait_for_room(self, topic: str) -> None:
        """Wait (bounded) while a subscribed peer's queue is full: GossipSub would drop."""
        subscribers = self.pubsub.peer_topics.get(topic, ())
        if not self._queues.full(subscribers):
            return
        self.counters["publish_waited"] += 1
        with trio.move_on_after(self._settings.publish_wait_s):
            while self._queues.full(subscribers):
                await self._queues.room.wait()
            return
        # A peer that takes nothing for that long is stuck; the others must not wait on it.
        self.counters["publish_wait_timeouts"] += 1

    def _notify(self, msg: rpc_pb2.Message) -> None:
        """Called by Pubsub, on the event loop, for each validated message: never blocks."""
        if msg.from_id == self._my_id_bytes:
            return  # our own publication: the publisher already delivered it here
        for topic in msg.topicIDs:
            send = self._channels.get(topic)
            if send is None:
                continue
            try:
                send.send_nowait(msg.data)
                self.counters["received"] += 1
            except trio.WouldBlock:
                self.counters["topic_buffer_drops"] += 1

    async def _receive_loop(self, name: str, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        async with receive:
            async for data in receive:
                handler = self._handler
                if handler is None:
                    self.counters["unhandled"] += 1
                    continue
                await handler(name, data)

    def _validate(self, forwarder: Any, msg: rpc_pb2.Message) -> bool:
        """GossipSub's topic validator: True accepts, False refuses (and stops forwarding)."""
        if forwarder == self._my_id:
            return True  # our own publication, checked when `publish` took it
        try:
            refusal = self._check(msg)
        except Exception as exc:  # a peer's bytes must never take the pubsub service down
            log.warning("topic validator failed on a message from %s: %r", forwarder, exc)
            refusal = RejectReason.MALFORMED.value, f"validator error: {exc!r:.200}"
        if refusal is None:
            return True
        reason, detail = refusal
        self.rejected[reason] += 1
        now = trio.current_time()
        # One line per reason a minute: a peer sending junk must not flood the log.
        if now - self._reject_logged.get(reason, -math.inf) >= _REJECT_LOG_INTERVAL_S:
            self._reject_logged[reason] = now
            log.info(
                "refused a topic message forwarded by %s: %s: %s (%d %s so far)",
                forwarder,
                reason,
                detail,
                self.rejected[reason],
                reason,
            )
        return False

    def _check(self, msg: rpc_pb2.Message) -> tuple[str, str] | None:
        """Why the message must be refused (reason, detail), or None to accept it."""
        topics = list(msg.topicIDs)
        if len(topics) != 1:
            return RejectReason.MALFORMED.value, f"{len(topics)} topics, expected 1"
        topic = topics[0]
        now = self._clock()
        try:
            envelope = open_envelope(msg.data, now_ms=now, policy=self._settings.policy)
        except RemoteProtocolError as exc:
            return exc.reason.value, exc.detail
        if not isinstance(envelope.recipient, str) or gossip_topic(envelope.recipient) != topic:
            return RejectReason.WRONG_RECIPIENT.value, f"envelope is not addressed to {topic}"
        try:
            self._replay.check(envelope.sender.raw, envelope.msg_id, envelope.expires_ms, now)
        except RemoteProtocolError as exc:
            return exc.reason.value, exc.detail
        return None
