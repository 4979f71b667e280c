"""The network layer: the only package that imports py-libp2p.

This `__init__` exports the libp2p-free interface (`meshd.net.types`); the py-libp2p
implementation is `meshd.net.libp2p_net.Libp2pNetwork`, imported explicitly by whoever
builds a daemon, so that importing the interface never pays for (or configures) libp2p.
"""

from meshd.net.types import (
    BootstrapDone,
    Listening,
    NetEvent,
    Network,
    NetworkError,
    PeerConnected,
    PeerDisconnected,
    PeerSnapshot,
    RoutingTableChanged,
)

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
