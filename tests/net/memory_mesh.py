"""Networks on the in-memory transport, serving in one nursery: the small meshes of tests/net."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from meshd.net.discovery import DiscoverySettings
from meshd.net.host import HostLimits
from meshd.net.libp2p_net import Libp2pNetwork
from meshd.net.memory import Links, MemoryTransport, memory_addr
from meshd.net.types import NetEvent


@asynccontextmanager
async def memory_mesh(
    count: int,
    *,
    first: HostLimits | None,
    discovery: DiscoverySettings,
    others: HostLimits | None = None,
) -> AsyncIterator[list[Libp2pNetwork]]:
    """Nodes 1..`count` on `/memory/<n>`, node 1 with limits `first`, the rest `others`."""
    links = Links()
    send, _receive = trio.open_memory_channel[NetEvent](1000)
    async with trio.open_nursery() as nursery:
        nets = [
            Libp2pNetwork(
                os.urandom(32),
                listen=[memory_addr(n)],
                limits=first if n == 1 else others,
                discovery=discovery,
                transport=MemoryTransport(links, n),
            )
            for n in range(1, count + 1)
        ]
        for net in nets:
            await nursery.start(net.serve, send)
        yield nets
        nursery.cancel_scope.cancel()
