"""Discovery's walk rules, on fake host and DHT objects under the autojump clock.

- walks come fast only while they add peers the routing table never held (a quarter of the
  table, once it is not small): peers that come and go (connections dialed by other nodes'
  lookups, table entries lost and re-added) are not growth, so a stable mesh backs off to
  `walk_interval_s`;
- walks ask only connected DHT peers, so they dial nobody, except while the routing table
  is small (or no connected peer speaks our DHT): then a walk is a full lookup.
"""

from __future__ import annotations

import os
import random
from collections import Counter

import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from meshd.net.discovery import Discovery, DiscoverySettings


def _peer() -> ID:
    return ID.from_pubkey(create_new_key_pair(os.urandom(32)).public_key)


class _Table:
    def __init__(self) -> None:
        self.peers: list[ID] = []

    def get_peer_ids(self) -> list[ID]:
        return list(self.peers)

    def peer_in_table(self, peer: ID) -> bool:
        return peer in self.peers

    def remove_peer(self, peer: ID) -> bool:
        if peer in self.peers:
            self.peers.remove(peer)
            return True
        return False


class _Routing:
    """Records which kind of walk ran; `learn` says what each query adds to the table."""

    def __init__(self, table: _Table, learn: list[ID]) -> None:
        self._table = table
        self._learn = learn
        self.full: list[float] = []
        self.single: list[ID] = []

    def _add(self, count: int) -> None:
        for peer in self._learn[:count]:
            if peer not in self._table.peers:
                self._table.peers.append(peer)
        del self._learn[:count]

    async def find_closest_peers_network(self, key: bytes) -> list[ID]:
        self.full.append(trio.current_time())
        self._add(5)
        return []

    async def _query_peer_for_closest(self, peer: ID, key: bytes) -> list[ID]:
        self.single.append(peer)
        self._add(1)
        return []


class _Dht:
    def __init__(self, learn: list[ID]) -> None:
        self.routing_table = _Table()
        self.peer_routing = _Routing(self.routing_table, learn)

    def get_routing_table_size(self) -> int:
        return len(self.routing_table.peers)

    async def add_peer(self, peer: ID) -> bool:
        return True


class _Host:
    def __init__(self) -> None:
        self.me = _peer()
        self.connected: list[ID] = []

    def get_id(self) -> ID:
        return self.me

    def get_connected_peers(self) -> list[ID]:
        return list(self.connected)


SETTINGS = DiscoverySettings(
    join_jitter_s=0.0,
    fast_walk_s=1.0,
    small_table=5,
    small_table_walk_s=10.0,
    walk_interval_s=60.0,
    low_watermark=0,  # nothing to dial: only walks are under test
)


def _discovery(host: _Host, dht: _Dht) -> Discovery:
    return Discovery(host, dht, (), SETTINGS, lambda event: None, Counter(), random.Random(7))


async def test_walks_back_off_once_nothing_new_turns_up_whatever_connects_and_reconnects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = _Host()
    old = [_peer() for _ in range(8)]
    dht = _Dht(learn=[])
    dht.routing_table.peers = list(old)
    host.connected = old[:4]
    discovery = _discovery(host, dht)

    async def churn() -> None:
        # Every half second a new peer connects (another node's lookup) and a known one
        # leaves the table and comes back: neither is growth.
        for step in range(400):
            await trio.sleep(0.5)
            host.connected = [*old[:4], _peer()]
            dht.routing_table.remove_peer(old[step % 8])
            dht.routing_table.peers.append(old[step % 8])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(churn)
        nursery.start_soon(discovery._walk_loop)
        await trio.sleep(200.0)
        nursery.cancel_scope.cancel()
    walks = discovery._counters["walks"]
    # Backing off 1, 2, 4, ..., 60 s (x0.75..1.25): about 10 walks in 200 s. Counting
    # connected peers as growth walked every second or so: about 200.
    assert 5 <= walks <= 15


async def test_a_large_table_learning_a_few_peers_per_walk_backs_off_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # In a large mesh every walk of a random key learns someone new (py-libp2p's table has
    # no size bound): a handful of new peers to a table of 40 is not growth.
    host = _Host()
    dht = _Dht(learn=[_peer() for _ in range(500)])
    dht.routing_table.peers = [_peer() for _ in range(40)]
    host.connected = dht.routing_table.peers[:2]  # each walk asks these two: 2 new peers
    discovery = _discovery(host, dht)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(discovery._walk_loop)
        await trio.sleep(200.0)
        nursery.cancel_scope.cancel()
    assert 5 <= discovery._counters["walks_connected"] <= 15
    assert dht.peer_routing.full == []


async def test_walks_ask_connected_peers_and_look_up_only_while_the_table_is_small(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = _Host()
    seeds = [_peer() for _ in range(2)]
    learn = [_peer() for _ in range(40)]
    dht = _Dht(learn=learn)
    dht.routing_table.peers = list(seeds)
    host.connected = [*seeds, _peer()]  # the last one does not speak our DHT
    discovery = _discovery(host, dht)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(discovery._walk_loop)
        await trio.sleep(0.1)
        # The first walk, of our own id, asked the connected seeds (one peer each) and
        # left the table at 4, still small: the next walk is a full lookup.
        routing = dht.peer_routing
        assert sorted(map(str, routing.single)) == sorted(map(str, seeds))
        assert routing.full == []
        await trio.sleep(2.0)
        assert len(routing.full) == 1  # table now 9: not small
        await trio.sleep(30.0)
        nursery.cancel_scope.cancel()
    assert len(routing.full) == 1
    assert discovery._counters["walks_connected"] >= 3
    # Only connected peers in the routing table were asked: no dial to anyone else.
    assert set(routing.single) <= set(seeds)


async def test_a_walk_with_no_connected_dht_peer_falls_back_to_a_lookup(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = _Host()
    dht = _Dht(learn=[])
    dht.routing_table.peers = [_peer() for _ in range(6)]  # not small, but none connected
    discovery = _discovery(host, dht)
    await discovery._walk_connected(b"key")
    assert len(dht.peer_routing.full) == 1
    assert dht.peer_routing.single == []
