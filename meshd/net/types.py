"""The node's view of the network: a small typed interface with no libp2p in it.

`meshd.node.Node` depends only on this module, so the same node runs over py-libp2p on
TCP (`meshd.net.libp2p_net.Libp2pNetwork`) and, later, over simnet's in-memory network.
Events flow from the network to the node over a bounded trio channel; peer ids and
addresses are plain text (base58 PeerIDs, multiaddr strings).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import trio

    # trio 0.35 ships TaskStatus, but libp2p pulls in trio-typing whose trio-stubs (which
    # mypy prefers) lack it; trio_typing.TaskStatus is the same type for both.
    from trio_typing import TaskStatus

__all__ = [
    "BootstrapDone",
    "Listening",
    "NetEvent",
    "Network",
    "NetworkError",
    "PeerConnected",
    "PeerDisconnected",
    "PeerSnapshot",
    "RoutingTableChanged",
]


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
