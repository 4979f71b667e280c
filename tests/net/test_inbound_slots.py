"""A node keeps accepting inbound connections after many have come and gone.

py-libp2p 0.8.1 holds a token of its inbound limiter (max_connections - min_connections of
them) for each inbound connection until the whole swarm stops, so a node that had accepted
that many connections in its life refused every later one, however few it held
(`meshd.net.libp2p_net._release_inbound_slots`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr

from meshd.net.discovery import DiscoverySettings
from meshd.net.host import HostLimits
from meshd.net.libp2p_net import Libp2pNetwork
from meshd.net.memory import Links, MemoryTransport, memory_addr
from meshd.net.types import NetEvent
from tests.net.memory_mesh import memory_mesh

TWO = HostLimits(low_watermark=0, high_watermark=1, max_connections=2)
QUIET = DiscoverySettings(low_watermark=0)  # no dials of its own


async def until(check: Callable[[], bool]) -> None:
    """Poll `check` every 10 ms, at most 5 s."""
    for _ in range(500):
        if check():
            return
        await trio.sleep(0.01)
    raise AssertionError("timed out")


async def test_inbound_connections_that_closed_leave_room_for_new_ones() -> None:
    async with memory_mesh(5, first=TWO, discovery=QUIET) as nets:
        target, callers = nets[0], nets[1:]
        swarm = target.host.get_network()
        info = PeerInfo(ID.from_base58(target.peer_id), [Multiaddr(memory_addr(1))])
        # Four inbound connections one after the other, never more than one at a time:
        # with a cap of 2, the third used to be refused.
        for caller in callers:
            with trio.fail_after(10):
                await caller.host.connect(info)
                await until(lambda: bool(swarm.get_connections()))
                await caller.host.get_network().close_peer(info.peer_id)
                await until(lambda: not swarm.get_connections())
        assert target.stats()["peers_connected"] == 4


async def test_an_inbound_connection_s_task_ends_with_it_on_the_memory_transport() -> None:
    links = Links()
    send, _receive = trio.open_memory_channel[NetEvent](1000)
    async with trio.open_nursery() as nursery:
        a, b = (
            Libp2pNetwork(
                os.urandom(32),
                listen=[memory_addr(n)],
                discovery=QUIET,
                transport=MemoryTransport(links, n),
            )
            for n in (1, 2)
        )
        await nursery.start(a.serve, send)
        await nursery.start(b.serve, send)
        swarm = a.host.get_network()
        info = PeerInfo(ID.from_base58(a.peer_id), [Multiaddr(memory_addr(1))])
        tasks = _task_count()
        for _ in range(5):
            with trio.fail_after(10):
                await b.host.connect(info)
                await until(lambda: bool(swarm.get_connections()))
                await b.host.get_network().close_peer(info.peer_id)
                await until(lambda: not swarm.get_connections())
        await trio.sleep(0.5)
        # Five connections came and went: no task per connection is left behind.
        assert _task_count() - tasks < 5
        nursery.cancel_scope.cancel()


def _task_count() -> int:
    """Tasks alive in this trio run."""
    count = 0
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        count += 1
        for child in task.child_nurseries:
            todo.extend(child.child_tasks)
    return count
