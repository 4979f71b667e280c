"""Put py-libp2p's Kademlia DHT on meshd's private protocol id, `/meshd/kad/1.0.0`.

Why this module exists: py-libp2p 0.8.1 ignores `KadDHT(protocol_prefix=...)`. The
handler and every outgoing request use the module constant
`libp2p.kad_dht.common.PROTOCOL_ID` (`/ipfs/kad/1.0.0`), and `kad_dht.py`,
`peer_routing.py`, `value_store.py` and `provider_store.py` each bind their own copy
with `from .common import PROTOCOL_ID`; `routing_table.py` re-imports it at call time.
A meshd node must never answer or query IPFS's DHT, so we rewrite every copy of the
constant, once, for the whole process, before any `KadDHT` is built.

This is process-wide on purpose: a process runs either meshd DHTs or IPFS ones, never
both. `install_kad_protocol_id()` is idempotent, and it fails loudly if a loaded
libp2p module still carries the IPFS id after patching (a new libp2p version that
added another copy), instead of silently joining the public DHT.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["IPFS_KAD_PROTOCOL_ID", "KAD_PROTOCOL_ID", "install_kad_protocol_id"]

KAD_PROTOCOL_ID = "/meshd/kad/1.0.0"
IPFS_KAD_PROTOCOL_ID = "/ipfs/kad/1.0.0"

# Every module that holds its own binding of the constant in libp2p 0.8.1.
_KAD_MODULES = (
    "libp2p.kad_dht.common",
    "libp2p.kad_dht.kad_dht",
    "libp2p.kad_dht.peer_routing",
    "libp2p.kad_dht.value_store",
    "libp2p.kad_dht.provider_store",
)


def install_kad_protocol_id() -> str:
    """Make every py-libp2p Kademlia module speak `/meshd/kad/1.0.0`; return that id."""
    from libp2p.custom_types import TProtocol

    ours = TProtocol(KAD_PROTOCOL_ID)
    for name in _KAD_MODULES:
        module = importlib.import_module(name)
        current = getattr(module, "PROTOCOL_ID", None)
        if current not in (IPFS_KAD_PROTOCOL_ID, KAD_PROTOCOL_ID):
            raise RuntimeError(
                f"{name}.PROTOCOL_ID is {current!r}: unknown py-libp2p layout, "
                "refusing to run a DHT that might join another network"
            )
        setattr(module, "PROTOCOL_ID", ours)  # noqa: B010 (a module constant, on purpose)
    # A later libp2p may bind the constant in more modules: any loaded module still
    # holding the IPFS id would make us talk to the public DHT, so stop here.
    leftovers = [
        name
        for name, module in list(sys.modules.items())
        if name.startswith("libp2p.")
        and getattr(module, "PROTOCOL_ID", None) == IPFS_KAD_PROTOCOL_ID
    ]
    if leftovers:
        raise RuntimeError(f"py-libp2p modules still use {IPFS_KAD_PROTOCOL_ID}: {leftovers}")
    return KAD_PROTOCOL_ID
