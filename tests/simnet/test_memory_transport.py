"""The in-memory transport: Noise + yamux + our message streams over /memory/<n>, with links."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from libp2p.transport.exceptions import OpenConnectionError
from multiaddr import Multiaddr

from meshd.net.addrs import BootstrapAddr
from meshd.net.discovery import DiscoverySettings
from meshd.net.libp2p_net import Libp2pNetwork
from meshd.net.memory import Links, LinkSpec, MemoryStream, MemoryTransport, memory_addr
from meshd.net.types import NetEvent, SendResult
from protocol.frames import Mode

FAST = DiscoverySettings(join_jitter_s=0.0, fast_walk_s=0.2, small_table_walk_s=1.0)
STEP_TIMEOUT_S = 15.0


@asynccontextmanager
async def two_nodes(links: Links) -> AsyncIterator[list[Libp2pNetwork]]:
    """Node 1 listens on /memory/1; node 2 on /memory/2 joins through it."""
    send, _receive = trio.open_memory_channel[NetEvent](1000)
    async with trio.open_nursery() as nursery:
        first = Libp2pNetwork(
            os.urandom(32),
            listen=[memory_addr(1)],
            discovery=FAST,
            transport=MemoryTransport(links, 1),
        )
        await nursery.start(first.serve, send)
        boot = [BootstrapAddr(first.listen_addrs()[0], first.peer_id)]
        second = Libp2pNetwork(
            os.urandom(32),
            listen=[memory_addr(2)],
            bootstrap=boot,
            discovery=FAST,
            transport=MemoryTransport(links, 2),
        )
        await nursery.start(second.serve, send)
        yield [first, second]
        nursery.cancel_scope.cancel()


async def until(check: Callable[[], Any], what: str) -> None:
    """Poll `check` every 50 ms until true; fail after STEP_TIMEOUT_S (trio time)."""
    for _ in range(int(STEP_TIMEOUT_S / 0.05)):
        if check():
            return
        await trio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def connected(a: Libp2pNetwork, b: Libp2pNetwork) -> bool:
    return any(p.peer_id == b.peer_id for p in a.connected_peers())


async def test_listen_addrs_are_memory_and_peers_connect() -> None:
    links = Links(seed=1)
    async with two_nodes(links) as (a, b):
        assert a.listen_addrs()[0].startswith("/memory/1/p2p/")
        await until(lambda: connected(a, b) and connected(b, a), "the join")
        assert links.counters["dials"] >= 1
        assert links.connections() == 2  # one connection, two ends


async def test_message_round_trip_pays_the_link_latency() -> None:
    links = Links(LinkSpec(latency_s=0.05), seed=1)
    async with two_nodes(links) as (a, b):
        await until(lambda: connected(a, b), "the join")

        began = trio.current_time()
        result = await b.send_message(
            a.peer_id, a.listen_addrs(), b"x" * 10, mode=Mode.AT_MOST_ONCE
        )
        elapsed = trio.current_time() - began
        assert isinstance(result, SendResult)
        # The frame goes out and its ACK (or the refusal) comes back: two one-way delays.
        assert elapsed >= 0.1


async def test_partition_resets_connections_refuses_dials_and_heals() -> None:
    links = Links(seed=1)
    async with two_nodes(links) as (a, b):
        await until(lambda: connected(a, b) and connected(b, a), "the join")
        assert links.partition([[1], [2]]) == 2
        await until(lambda: not connected(a, b) and not connected(b, a), "the partition")
        assert links.blocked(1, 2)
        transport = MemoryTransport(links, 2)
        refused = links.counters["dials_refused"]
        with pytest.raises(OpenConnectionError, match="unreachable"):
            await transport.dial(Multiaddr(memory_addr(1)))
        assert links.counters["dials_refused"] == refused + 1
        links.heal()
        await b.host.connect(b.host.get_peerstore().peer_info(a.host.get_id()))
        await until(lambda: connected(a, b), "the reconnect after the heal")


async def test_stream_orders_chunks_and_applies_bandwidth() -> None:
    links = Links(LinkSpec(latency_s=0.01, bandwidth_bps=10_000), seed=3)
    ours, theirs = MemoryStream.pair(links, 1, 2)
    began = trio.current_time()
    await ours.write(b"a" * 1000)
    await ours.write(b"b" * 1000)
    data = b""
    while len(data) < 2000:
        data += await theirs.read(65536)
    assert data == b"a" * 1000 + b"b" * 1000
    # 2,000 bytes at 10,000 B/s take 0.2 s to serialise, plus 0.01 s on the wire.
    assert trio.current_time() - began >= 0.2
    await ours.close()
    assert await theirs.read(10) == b""


def test_link_spec_refuses_bad_values() -> None:
    for bad in ({"latency_s": -1}, {"loss": 1.0}, {"bandwidth_bps": 0}):
        try:
            LinkSpec(**bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")
