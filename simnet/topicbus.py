"""An in-process topic bus: the pub/sub part of `meshd.net.types.Network`, without GossipSub.

For tests and benchmarks that run many nodes' pub/sub and swarms (which ride on topics) in
one process but do not need the network under them. A publish reaches every other net on
the bus subscribed to its topic, after the check the real topic validator makes first
(`open_envelope`; `validate=False` only decodes, for benchmarks that count, not check).
Groups of nets can be partitioned and healed, and deliveries can lag by a seeded random
latency. Records are counted by kind and by topic.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING

import trio

from meshd.clock import wall_ms
from meshd.net.types import TopicHandler
from protocol.envelope import Envelope, open_envelope

if TYPE_CHECKING:
    from meshd.pubsub import Topics

__all__ = ["TopicBus", "TopicBusNet"]


class TopicBus:
    """Topic messages between `TopicBusNet`s in one process."""

    def __init__(self, *, seed: int = 0, validate: bool = True) -> None:
        self.nets: list[TopicBusNet] = []
        self.cut: set[frozenset[int]] = set()  # pairs of nets (by id) that cannot talk
        self.latency_s = 0.0  # each delivery waits up to this long (seeded random)
        self.random = random.Random(seed)
        self.validate = validate
        self.kinds: Counter[str] = Counter()  # published records by envelope kind
        self.to_topic: Counter[str] = Counter()  # published records by topic

    def partition(self, *groups: list[TopicBusNet]) -> None:
        """Cut every link between nets of different groups (heal with `heal`)."""
        for i, group in enumerate(groups):
            for other in groups[i + 1 :]:
                self.cut.update(frozenset({id(a), id(b)}) for a in group for b in other)

    def heal(self) -> None:
        """Join every net again."""
        self.cut.clear()

    def leave(self, net: TopicBusNet) -> None:
        """Take `net` off the bus (its node stopped); nothing reaches it any more."""
        if net in self.nets:
            self.nets.remove(net)

    async def publish(self, sender: TopicBusNet, topic: str, frame: bytes) -> None:
        """Check `frame` as the topic validator would, then hand it to every subscriber."""
        if self.validate:
            envelope = open_envelope(frame, now_ms=wall_ms())
        else:
            envelope = Envelope.decode(frame)
        self.kinds[envelope.kind] += 1
        self.to_topic[topic] += 1
        for net in list(self.nets):
            if net is sender or frozenset({id(sender), id(net)}) in self.cut:
                continue
            if topic in net.subscribed and net.handler is not None:
                if self.latency_s:
                    await trio.sleep(self.random.uniform(0, self.latency_s))
                    if net.handler is None or net not in self.nets:
                        continue  # stopped meanwhile
                await net.handler(topic, frame)


class TopicBusNet:
    """The topic part of `meshd.net.types.Network`, on a `TopicBus`."""

    def __init__(self, bus: TopicBus) -> None:
        self.bus = bus
        self.handler: TopicHandler | None = None
        self.subscribed: set[str] = set()
        self.topics: Topics | None = None  # the node's pub/sub, for callers that use it
        bus.nets.append(self)

    def set_topic_handler(self, handler: TopicHandler | None) -> None:
        """Take the node's handler for topic messages (None: stop taking them)."""
        self.handler = handler

    async def subscribe_topic(self, topic: str) -> None:
        """Receive `topic`'s messages."""
        self.subscribed.add(topic)

    async def unsubscribe_topic(self, topic: str) -> None:
        """Stop receiving `topic`'s messages."""
        self.subscribed.discard(topic)

    async def publish_topic(self, topic: str, envelope: bytes) -> None:
        """Publish a signed envelope on `topic`."""
        await self.bus.publish(self, topic, envelope)
