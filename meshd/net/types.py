"""The node's view of the network: a small typed interface with no libp2p in it.

`meshd.node.Node` depends only on this module, so the same node runs over py-libp2p on
TCP (`meshd.net.libp2p_net.Libp2pNetwork`) and, later, over simnet's in-memory network.
Events flow from the network to the node over a bounded trio channel; peer ids and
addresses are plain text (base58 PeerIDs, multiaddr strings).

Messages between agents travel on `/meshd/msg/1.0.0` (framing in `protocol.frames`): the
network carries MSG frames to a peer and their answers back (`send_message`), and hands MSG
frames from peers to the one registered `MessageHandler` in batches (`InboundBatch`).
Rare, large exchanges between nodes (agent migration) are one-shot requests, each on a
stream of its own (`request`, answered by the `RequestHandler` set for its protocol).
Topic messages (agent pub/sub) go to every node subscribed to the topic (`publish_topic`,
`subscribe_topic`) and reach the node through its one `TopicHandler`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from protocol.frames import AckEntry, Mode, Msg

if TYPE_CHECKING:
    import trio

    # trio 0.35 ships TaskStatus, but libp2p pulls in trio-typing whose trio-stubs (which
    # mypy prefers) lack it; trio_typing.TaskStatus is the same type for both.
    from trio_typing import TaskStatus

__all__ = [
    "UNREACHABLE",
    "BootstrapDone",
    "InboundBatch",
    "Listening",
    "MessageHandler",
    "NetEvent",
    "Network",
    "NetworkError",
    "PeerConnected",
    "PeerDisconnected",
    "PeerSnapshot",
    "RequestError",
    "RequestHandler",
    "RoutingTableChanged",
    "SendResult",
    "TopicHandler",
]

# The outcome of a message whose peer could not be reached or whose stream broke.
UNREACHABLE = "unreachable"


class NetworkError(Exception):
    """The network could not start (for example a listen address is taken)."""


@dataclass(frozen=True, slots=True)
class PeerSnapshot:
    """A connected peer: id, known addresses, and when (trio clock) it connected."""

    peer_id: str
    addrs: tuple[str, ...]
    connected_at: float


@dataclass(frozen=True, slots=True)
class Listening:
    """The network listens on these addresses (each ends in `/p2p/<id>`)."""

    addrs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PeerConnected:
    """A connection to `peer_id` opened."""

    peer_id: str
    addr: str
    inbound: bool


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    """The last connection to `peer_id` closed after `connected_for_s` seconds."""

    peer_id: str
    connected_for_s: float


@dataclass(frozen=True, slots=True)
class BootstrapDone:
    """One bootstrap round finished: which seeds answered and which failed (and why)."""

    connected: tuple[str, ...]
    failed: tuple[tuple[str, str], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class RoutingTableChanged:
    """The DHT routing table now holds `size` peers (was `previous`)."""

    size: int
    previous: int


NetEvent = Listening | PeerConnected | PeerDisconnected | BootstrapDone | RoutingTableChanged


class SendResult(NamedTuple):
    """What became of one message sent to a peer: the peer's ACK outcome, or `unreachable`."""

    outcome: str
    detail: str = ""


class InboundBatch(Protocol):
    """MSG frames read from one peer's stream; every one of them must be answered once."""

    @property
    def peer_id(self) -> str:
        """The peer that sent them."""
        ...

    @property
    def msgs(self) -> Sequence[Msg]:
        """The frames, in the order the peer sent them."""
        ...

    def ack(self, entries: Sequence[AckEntry]) -> None:
        """Answer some of the frames, in any order and over any number of calls; never blocks.

        Slow answers (an at-least-once message waits for its handler) need not hold up the
        others. A no-op once the stream is gone.
        """
        ...


class RequestError(Exception):
    """A request to a peer got no answer: unreachable, refused, timed out or malformed."""


# Answers one request from a peer: (peer id, payload) -> answer. An exception it raises is
# counted and logged, and the requester sees a failure; nothing reaches the network layer.
RequestHandler = Callable[[str, bytes], Awaitable[bytes]]


# Takes ownership of a batch, waiting while the node is busy (that wait is the backpressure
# on the peer), and acks it later, so several batches can be in the works at once.
MessageHandler = Callable[[InboundBatch], Awaitable[None]]

# Takes one topic message from another node: (topic name, envelope bytes). The envelope has
# passed the topic validator (structure, size, expiry, skew, signature, `to` is the topic,
# not seen before); it is handed over once, and never for this node's own publications.
TopicHandler = Callable[[str, bytes], Awaitable[None]]


class Network(Protocol):
    """What a node needs from its network; implemented by `Libp2pNetwork`."""

    @property
    def peer_id(self) -> str:
        """This node's PeerID (base58 text)."""
        ...

    def listen_addrs(self) -> list[str]:
        """The addresses we listen on, each ending in `/p2p/<our id>` (empty before start)."""
        ...

    def connected_peers(self) -> list[PeerSnapshot]:
        """The peers we hold a connection to now."""
        ...

    def routing_table_size(self) -> int:
        """How many peers the DHT routing table holds."""
        ...

    def known_peers(self) -> int:
        """How many other peers we know an address for (peerstore), connected or not."""
        ...

    def peer_addrs(self, peer_id: str) -> list[str]:
        """The addresses we know for `peer_id` (connected or from the peerstore), or []."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters for status and metrics (dials, rejections, dropped events...)."""
        ...

    async def serve(
        self,
        events: trio.MemorySendChannel[NetEvent],
        *,
        task_status: TaskStatus[None] = ...,
    ) -> None:
        """Listen, join the mesh and run until cancelled; `started()` once listening."""
        ...

    async def close(self) -> None:
        """Close every connection politely (bounded in time); `serve` may then be cancelled."""
        ...

    def set_message_handler(self, handler: MessageHandler | None) -> None:
        """Accept message streams and give their MSG frames to `handler` (None: refuse them)."""
        ...

    def set_topic_handler(self, handler: TopicHandler | None) -> None:
        """Give the messages of subscribed topics to `handler` (None: count and drop them)."""
        ...

    async def subscribe_topic(self, topic: str) -> None:
        """Receive and relay the topic's messages from now on (idempotent)."""
        ...

    async def unsubscribe_topic(self, topic: str) -> None:
        """Stop receiving the topic's messages (idempotent)."""
        ...

    async def publish_topic(self, topic: str, envelope: bytes) -> None:
        """Publish an envelope addressed to `topic` to the other nodes subscribed to it.

        Best effort (GossipSub): returns once handed to the mesh, waiting while our own rate
        on the topic is at the network's limit. Raises ValueError if the envelope is not
        addressed to `topic`.
        """
        ...

    async def dht_put(self, key: str, value: bytes) -> None:
        """Store a validated record in the DHT (at the peers closest to `key`)."""
        ...

    async def dht_get(self, key: str) -> bytes | None:
        """The best record under `key` in the DHT, or None (failures count, never raise)."""
        ...

    async def send_message(
        self, peer_id: str, addrs: Sequence[str], envelope: bytes, *, mode: Mode
    ) -> SendResult:
        """Carry one encoded envelope to `peer_id` (dialing `addrs` if needed); await its ACK.

        Waits while the peer's bounded queue is full. Cancelling gives up waiting (the message
        may still arrive); a broken stream or failed dial gives `unreachable`.
        """
        ...

    async def send_messages(
        self,
        peer_id: str,
        addrs: Sequence[str],
        envelopes: Sequence[bytes],
        *,
        mode: Mode,
        timeout: float,
    ) -> list[SendResult | None]:
        """Carry several envelopes to `peer_id` as `send_message` does, queued in one pass.

        Each message not answered within `timeout` seconds is None (it may still arrive).
        """
        ...

    def set_request_handler(self, protocol: str, handler: RequestHandler | None) -> None:
        """Answer one-shot requests on `protocol` with `handler` (None: refuse them)."""
        ...

    async def request(
        self,
        peer_id: str,
        addrs: Sequence[str],
        protocol: str,
        payload: bytes,
        *,
        timeout: float,
    ) -> bytes:
        """Send one request to `peer_id` on its own stream (dialing `addrs` if needed).

        Returns the peer handler's answer; raises `RequestError` with the reason otherwise.
        """
        ...
