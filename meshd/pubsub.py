"""Agent pub/sub on this node: who subscribes to what, and delivery of topic messages.

`Topics` is what `Delivery.publish` and `Delivery.subscribe` use. A subscription belongs to
an agent, not to its activation: agents are virtual actors, so a dormant agent keeps its
topics, and so does every agent across a restart. Subscriptions live in the store's meta
table: `topics` holds the list of topic names (CBOR), `topics/<name>` the sorted ids of the
local agents subscribed to it (CBOR list of 32-byte ids). A subscribe or unsubscribe is
durable when it returns.

The node subscribes to a topic on the network (GossipSub, `Network.subscribe_topic`) when
the topic gets its first local subscriber, and leaves it with the last one. A message that
comes in is delivered to every local subscriber through `Runtime.deliver` (which activates
dormant agents and queues for suspended or external ones), a few at a time. A publication
from this node goes to this node's subscribers first, then to the network, which never
hands our own publications back: each subscriber sees a message once.

Deleted agents are dropped from their topics when a message finds them gone.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import cbor2
import trio

from meshd.clock import WallClock, wall_ms
from meshd.net.types import TopicHandler
from meshd.runtime.quota import QuotaExceeded
from meshd.runtime.runtime import Runtime, UnknownAgent
from meshd.runtime.sdk import AgentError
from meshd.store import StoreError
from protocol.envelope import MAX_TOPIC_LEN, Envelope
from protocol.errors import RemoteProtocolError
from protocol.ids import AGENT_ID_LEN, AgentId

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = ["META_TOPICS", "TopicNetwork", "TopicSettings", "Topics", "check_topic"]

log = logging.getLogger("meshd.pubsub")

META_TOPICS = "topics"
_META_TOPIC_PREFIX = "topics/"
# Outcomes of Runtime.deliver that mean the agent is no longer here.
_GONE = frozenset({"not_here", "gone"})


class TopicNetwork(Protocol):
    """The part of `meshd.net.types.Network` that pub/sub uses."""

    def set_topic_handler(self, handler: TopicHandler | None) -> None:
        """Give the messages of subscribed topics to `handler`."""
        ...

    async def subscribe_topic(self, topic: str) -> None:
        """Receive the topic's messages from now on."""
        ...

    async def unsubscribe_topic(self, topic: str) -> None:
        """Stop receiving the topic's messages."""
        ...

    async def publish_topic(self, topic: str, envelope: bytes) -> None:
        """Publish an envelope addressed to `topic` to the other nodes."""
        ...


@dataclass(frozen=True, slots=True)
class TopicSettings:
    """Limits of pub/sub on one node."""

    # Each topic is a GossipSub mesh with its own heartbeat work, and peers accept at most
    # `GossipSettings.max_remote_topics` subscriptions from us.
    max_topics: int = 1_000
    # Deliveries of one message to local subscribers in progress at once.
    fanout: int = 64

    def __post_init__(self) -> None:
        if self.max_topics < 1 or self.fanout < 1:
            raise ValueError("max_topics and fanout must be at least 1")


def check_topic(topic: object) -> str:
    """The topic name if valid (1..256 characters, what an envelope accepts); else AgentError."""
    if not isinstance(topic, str) or not 0 < len(topic) <= MAX_TOPIC_LEN:
        raise AgentError(f"a topic is 1..{MAX_TOPIC_LEN} characters, got {topic!r:.80}")
    return topic


class Topics:
    """Subscriptions of local agents and delivery of topic messages; run with `serve`."""

    def __init__(
        self,
        runtime: Runtime,
        network: TopicNetwork,
        *,
        settings: TopicSettings | None = None,
        clock: WallClock = wall_ms,
    ) -> None:
        self._runtime = runtime
        self._network = network
        self._settings = settings or TopicSettings()
        self._clock = clock
        self._subscribers: dict[str, set[bytes]] = {}
        self._lock = trio.Lock()  # one change of subscriptions (and its write) at a time
        self._serving = False
        self._fanout = trio.Semaphore(self._settings.fanout)
        # Topic prefixes owned by node services (swarms), not by agents: prefix -> handler.
        self._reserved: dict[str, TopicHandler] = {}
        self.counters: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()  # Runtime.deliver outcomes, per subscriber

    # -- queries --------------------------------------------------------------------------

    def topics_of(self, agent: AgentId) -> list[str]:
        """The topics `agent` subscribes to."""
        return sorted(t for t, agents in self._subscribers.items() if agent.raw in agents)

    def subscribers(self, topic: str) -> list[AgentId]:
        """The local agents subscribed to `topic`."""
        return [AgentId(raw) for raw in sorted(self._subscribers.get(topic, ()))]

    def stats(self) -> dict[str, Any]:
        """Counters: topics, subscriptions, messages published and received, deliveries."""
        out: dict[str, Any] = dict(sorted(self.counters.items()))
        out["topics"] = len(self._subscribers)
        out["subscriptions"] = sum(len(agents) for agents in self._subscribers.values())
        out["delivered"] = dict(sorted(self.delivered.items()))
        return out

    # -- subscriptions --------------------------------------------------------------------

    def reserve(self, prefix: str, handler: TopicHandler) -> None:
        """Hand messages of topics starting with `prefix` to `handler`, not to agents."""
        self._reserved[prefix] = handler

    async def subscribe(self, topic: str, agent: AgentId) -> bool:
        """Deliver the topic to the local `agent` from now on, durably; False if it already was."""
        check_topic(topic)
        if any(topic.startswith(prefix) for prefix in self._reserved):
            # The service owns the node's subscription: an agent leaving must not end it.
            raise AgentError(f"topic {topic!r:.80} is reserved for the node")
        if not self._runtime.hosts(agent):
            raise UnknownAgent(f"no agent {agent.did} on this node")
        async with self._lock:
            agents = self._subscribers.get(topic)
            if agents is not None and agent.raw in agents:
                return False
            if agents is None and len(self._subscribers) >= self._settings.max_topics:
                raise QuotaExceeded(
                    "max_topics",
                    f"this node's agents subscribe to {len(self._subscribers)} topics, the "
                    f"most it allows",
                )
            new = {*(agents or ()), agent.raw}
            await self._save(topic, new, new_topic=agents is None)
            self._subscribers[topic] = new
            self.counters["subscribes"] += 1
            if agents is None and self._serving:
                await self._network.subscribe_topic(topic)
            return True

    async def unsubscribe(self, topic: str, agent: AgentId) -> bool:
        """Stop delivering the topic to `agent`; return whether it was subscribed."""
        check_topic(topic)
        async with self._lock:
            return await self._remove(topic, [agent.raw])

    # -- messages -------------------------------------------------------------------------

    async def publish(self, envelope: Envelope) -> None:
        """Deliver a topic envelope signed here to local subscribers, then to the network."""
        topic = envelope.recipient
        if not isinstance(topic, str):
            raise AgentError("publish takes an envelope addressed to a topic")
        self.counters["published"] += 1
        await self._deliver_local(topic, envelope)
        if self._serving:
            await self._network.publish_topic(topic, envelope.frame)

    async def _on_message(self, topic: str, frame: bytes) -> None:
        """The network's topic handler: a validated envelope from another node."""
        for prefix, handler in self._reserved.items():
            if topic.startswith(prefix):
                await handler(topic, frame)
                return
        try:
            envelope = Envelope.decode(frame)
        except RemoteProtocolError:  # the network's validator passed it: only a bug gets here
            self.counters["undecodable"] += 1
            return
        # Validated on arrival, but it may have waited in a buffer since.
        if envelope.expires_ms <= self._clock():
            self.counters["expired"] += 1
            return
        self.counters["received"] += 1
        await self._deliver_local(topic, envelope)

    async def _deliver_local(self, topic: str, envelope: Envelope) -> None:
        agents = sorted(self._subscribers.get(topic, ()))
        if not agents:
            self.counters["no_subscriber"] += 1
            return
        gone: list[bytes] = []
        # A few at a time: an external agent's delivery is a store write, and the store
        # commits concurrent writes together. All are done before the next message, so
        # each agent sees a topic's messages in the order they came.
        async with trio.open_nursery() as nursery:
            for raw in agents:
                await self._fanout.acquire()
                nursery.start_soon(self._deliver_one, envelope, raw, gone)
        if gone:
            async with self._lock:
                await self._remove(topic, gone)

    async def _deliver_one(self, envelope: Envelope, raw: bytes, gone: list[bytes]) -> None:
        try:
            outcome = await self._runtime.deliver(envelope, to=AgentId(raw))
        except StoreError as exc:  # e.g. an external agent's inbox write, while shutting down
            log.warning("pubsub: delivery to %s failed: %s", AgentId(raw).did, exc)
            outcome = "rejected:unavailable"
        finally:
            self._fanout.release()
        self.delivered[outcome] += 1
        if outcome in _GONE:
            gone.append(raw)

    # -- the service ----------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the subscriptions, join their topics, take topic messages until cancelled."""
        async with self._lock:
            await self._load()
            for topic in sorted(self._subscribers):
                await self._network.subscribe_topic(topic)
            self._network.set_topic_handler(self._on_message)
            self._serving = True
        log.info(
            "pubsub: %d subscriptions to %d topics",
            sum(len(a) for a in self._subscribers.values()),
            len(self._subscribers),
        )
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._serving = False
            self._network.set_topic_handler(None)

    # -- inside ---------------------------------------------------------------------------

    async def _remove(self, topic: str, raws: Iterable[bytes]) -> bool:
        """Drop agents from a topic, durably; leave the topic with its last one (locked)."""
        agents = self._subscribers.get(topic)
        if agents is None:
            return False
        left = agents.difference(raws)
        if left == agents:
            return False
        await self._save(topic, left, new_topic=False)
        self.counters["unsubscribes"] += len(agents) - len(left)
        if left:
            self._subscribers[topic] = left
            return True
        del self._subscribers[topic]
        if self._serving:
            await self._network.unsubscribe_topic(topic)
        return True

    async def _save(self, topic: str, agents: set[bytes], *, new_topic: bool) -> None:
        """Write a topic's subscribers, and the topic index when a topic comes or goes."""
        store = self._runtime.store
        # The topic's own key first: an index entry never points at a missing list, and a
        # list whose topic left the index is simply never read.
        await store.set_meta(_META_TOPIC_PREFIX + topic, cbor2.dumps(sorted(agents)))
        if new_topic or not agents:
            names = set(self._subscribers)
            if agents:
                names.add(topic)
            else:
                names.discard(topic)
            await store.set_meta(META_TOPICS, cbor2.dumps(sorted(names)))

    async def _load(self) -> None:
        """Read the subscriptions from the store, keeping agents still hosted here."""
        store = self._runtime.store
        names = _decode_list(await store.get_meta(META_TOPICS), META_TOPICS)
        for name in names:
            if not isinstance(name, str) or not 0 < len(name) <= MAX_TOPIC_LEN:
                log.warning("pubsub: ignoring a bad topic name in the store: %r", name)
                continue
            key = _META_TOPIC_PREFIX + name
            stored = _decode_list(await store.get_meta(key), key)
            agents = {
                raw
                for raw in stored
                if isinstance(raw, bytes)
                and len(raw) == AGENT_ID_LEN
                and self._runtime.hosts(AgentId(raw))
            }
            if agents:
                self._subscribers[name] = agents
            if len(agents) != len(stored):  # agents deleted while we were down
                self.counters["dropped_at_load"] += len(stored) - len(agents)
                await store.set_meta(key, cbor2.dumps(sorted(agents)))
        # The index may name topics whose last subscriber is gone: rewrite it, once, after
        # the lists (a crash in between leaves an index naming an empty list: harmless).
        if sorted(self._subscribers) != names:
            await store.set_meta(META_TOPICS, cbor2.dumps(sorted(self._subscribers)))


def _decode_list(data: bytes | None, key: str) -> list[Any]:
    if data is None:
        return []
    try:
        value = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError) as exc:
        log.error("pubsub: meta %r is not CBOR (%s); treating it as empty", key, exc)
        return []
    if not isinstance(value, list):
        log.error("pubsub: meta %r is not a list; treating it as empty", key)
        return []
    return value
