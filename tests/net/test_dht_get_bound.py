"""`Libp2pNetwork.dht_get` bounds py-libp2p's `get_value`.

py-libp2p 0.8.1 asks every peer it hears of for a value until none is left (unless a quorum
of records arrived), then stores the record at each close peer that lacked it: with a
bounded degree, a get of a key nobody holds dialed every peer near it and beyond. Our get
passes a quorum, asks at most GET_MAX_QUERIES peers and skips those stores; puts and
other DHT work are untouched. The fake `get_value` below runs its queries in nursery tasks,
as py-libp2p's does, so the test also shows the budget reaches them.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from meshd.net import libp2p_net
from meshd.net.libp2p_net import GET_MAX_QUERIES, GET_QUORUM, Libp2pNetwork


class _Calls:
    def __init__(self) -> None:
        self.gets = 0
        self.stores = 0
        self.quorum: int | None = None


def _network() -> tuple[Libp2pNetwork, _Calls]:
    network = Libp2pNetwork(os.urandom(32), listen=["/ip4/127.0.0.1/tcp/0"])
    calls = _Calls()
    store = network.dht.value_store

    # What the network would answer: no record anywhere (a mass-spawned agent's key).
    async def get_from_peer(peer_id: Any, key: bytes, *args: Any, **kwargs: Any) -> Any:
        calls.gets += 1
        return None

    async def store_at_peer(peer_id: Any, key: bytes, *args: Any, **kwargs: Any) -> bool:
        calls.stores += 1
        return True

    # Under the bound installed by Libp2pNetwork: rewrap the fakes the same way.
    store._get_from_peer = get_from_peer
    store._store_at_peer = store_at_peer
    libp2p_net._bound_gets(store)

    async def get_value(key: str, quorum: int = 0) -> bytes | None:
        calls.quorum = quorum
        # Like py-libp2p: every peer it hears of, in tasks of a nursery, then entry correction.
        async with trio.open_nursery() as nursery:
            for peer in range(200):
                nursery.start_soon(store._get_from_peer, peer, key.encode())
        async with trio.open_nursery() as nursery:
            for peer in range(20):
                nursery.start_soon(store._store_at_peer, peer, key.encode(), b"v")
        return None

    network.dht.get_value = get_value
    return network, calls


async def test_a_get_asks_at_most_k_peers_with_a_quorum_and_stores_nothing() -> None:
    network, calls = _network()
    assert await network.dht_get("/ma/key") is None
    assert calls.quorum == GET_QUORUM
    assert calls.gets == GET_MAX_QUERIES
    assert calls.stores == 0
    # Each get has a budget of its own.
    assert await network.dht_get("/ma/other") is None
    assert calls.gets == 2 * GET_MAX_QUERIES


async def test_outside_a_get_queries_and_stores_are_not_bounded() -> None:
    network, calls = _network()
    store = network.dht.value_store
    async with trio.open_nursery() as nursery:
        for peer in range(50):
            nursery.start_soon(store._get_from_peer, peer, b"/ma/key")
            nursery.start_soon(store._store_at_peer, peer, b"/ma/key", b"v")
    assert calls.gets == 50
    assert calls.stores == 50
