"""Connection trimming: above the high watermark a node closes connections down to the low one.

py-libp2p's own pruner never closes a connection with an open stream (GossipSub keeps one
on each), so without our trim every peer a DHT walk dialed stayed connected. The unit test
checks which peers the trim keeps; the mesh test runs simnet nodes (virtual time) with small
watermarks and checks that the degree stays bounded and messages still arrive. The last
test: a connection becomes a summary neighbour only after `summary.neighbour_after_s`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.kad_dht.routing_table import peer_id_to_key
from libp2p.peer.id import ID

from meshd.net.discovery import MESSAGE_PROTECT_S, MESSAGE_QUIET_S, Discovery, DiscoverySettings
from meshd.net.types import PeerSnapshot, RequestHandler
from meshd.summaries import Summaries, SummarySettings
from protocol.ids import AgentId, SigningKey
from simnet.inprocess import in_process
from simnet.runner import virtual_clock
from simnet.scenario import parse_scenario


def _peer() -> ID:
    return ID.from_pubkey(create_new_key_pair(os.urandom(32)).public_key)


class _Host:
    def __init__(self, me: ID) -> None:
        self._me = me

    def get_id(self) -> ID:
        return self._me


def _discovery(settings: DiscoverySettings) -> tuple[Discovery, ID]:
    me = _peer()
    return Discovery(_Host(me), None, (), settings, lambda event: None, Counter()), me


def _distance_class(me: ID, peer: ID) -> int:
    mine = int.from_bytes(peer_id_to_key(me), "big")
    return (int.from_bytes(peer_id_to_key(peer), "big") ^ mine).bit_length()


def test_trim_keeps_the_low_watermark_spread_over_distance_classes_and_spares_the_young() -> None:
    # A trim keeps (low + high) // 2 = 4 connections (py-libp2p's auto-connector target).
    settings = DiscoverySettings(low_watermark=4, high_watermark=5, trim_grace_s=20.0)
    discovery, me = _discovery(settings)
    peers = [_peer() for _ in range(12)]
    # Not above the high watermark: nothing to close.
    assert discovery.trim_choice(peers[:5], now=100.0) == []
    for peer in peers:
        discovery._connected_at[peer] = 0.0  # all old
    doomed = discovery.trim_choice(peers, now=100.0)
    kept = [p for p in peers if p not in doomed]
    assert len(kept) == 4
    # One per distance class first: the kept peers cover min(4, classes) classes.
    classes = {_distance_class(me, p) for p in peers}
    assert len({_distance_class(me, p) for p in kept}) == min(4, len(classes))
    # Two young connections are spared and count toward the low watermark.
    discovery._connected_at[peers[0]] = discovery._connected_at[peers[1]] = 95.0
    doomed = discovery.trim_choice(peers, now=100.0)
    assert peers[0] not in doomed
    assert peers[1] not in doomed
    assert len(peers) - len(doomed) == 4


def test_trim_keeps_connections_that_carried_messages_lately() -> None:
    settings = DiscoverySettings(low_watermark=2, high_watermark=3, trim_grace_s=5.0)
    discovery, _me = _discovery(settings)
    peers = [_peer() for _ in range(8)]
    for peer in peers:
        discovery._connected_at[peer] = 0.0  # all old
    discovery._message_at.update({peers[3]: 100.0, peers[6]: 100.0})  # note_messages at 100
    doomed = discovery.trim_choice(peers, now=110.0)
    assert peers[3] not in doomed
    assert peers[6] not in doomed
    # Quiet for longer than the protection: trimmed like any other.
    doomed = discovery.trim_choice(peers, now=100.0 + MESSAGE_PROTECT_S + 1)
    assert len(peers) - len(doomed) == 2


def test_room_goes_to_an_idle_lookup_connection_first_and_to_messages_last() -> None:
    settings = DiscoverySettings(low_watermark=2, high_watermark=3, trim_grace_s=10.0)
    discovery, _me = _discovery(settings)
    lookup, old, young, talker = (_peer() for _ in range(4))
    discovery._connected_at.update({lookup: 97.0, old: 50.0, young: 99.5, talker: 50.0})
    discovery.note_dialed(lookup, for_lookup=True)
    discovery._message_at[talker] = 99.0  # note_messages at 99
    peers = [lookup, old, young, talker]
    # Young, but a lookup's and idle: it goes first, even for an inbound dial (old_only).
    assert discovery.room_choice(peers, 100.0, old_only=True) == lookup
    # A stream of ours open on it (the lookup still asks it): the old one instead.
    assert discovery.room_choice(peers, 100.0, old_only=True, in_use={lookup}) == old
    # Being closed by a concurrent make_room: the next send takes another.
    discovery._closing.update({lookup, old})
    assert discovery.room_choice(peers, 100.0, old_only=True) is None
    assert discovery.room_choice(peers, 100.0, old_only=False) == young
    discovery._closing.add(young)
    # Only the connection that carried a message a second ago: kept ...
    assert discovery.room_choice(peers, 100.0, old_only=False) is None
    # ... until it has been quiet for a moment, even inside the grace period and protection.
    assert discovery.room_choice(peers, 99.0 + MESSAGE_QUIET_S, old_only=True) == talker


async def _bounded_mesh(root: Path) -> dict[str, Any]:
    nodes = 10
    scenario = parse_scenario(
        {
            "nodes": nodes,
            "duration_s": 1,
            "agents": [],
            "node_config": {
                "connections.low_watermark": 3,
                "connections.high_watermark": 4,
                "connections.trim_interval_s": 2.0,
                "connections.trim_grace_s": 3.0,
            },
        }
    )
    async with in_process(scenario, root, seed=7) as backend:
        for node in range(nodes):
            await backend.start_node(node)
        counters = [(await backend.spawn(n, "counter", 1, ()))[0] for n in range(nodes)]
        await trio.sleep(40)  # walks dial many peers; trims bring them back down
        peers = [len(backend.node(n).peers()) for n in range(nodes)]
        trimmed = sum(backend.node(n).status()["network"].get("trimmed", 0) for n in range(nodes))
        outcomes = []
        for src in range(nodes):
            dst = (src + nodes // 2) % nodes
            answer = await backend.send(
                src, counters[dst], {"add": 1}, kind="msg", reliable=False, wait=False, timeout=10
            )
            outcomes.append(answer.get("outcome"))
        return {"peers": peers, "trimmed": trimmed, "outcomes": outcomes}


def test_a_mesh_above_its_high_watermark_trims_and_still_delivers() -> None:
    with tempfile.TemporaryDirectory() as tmp, virtual_clock() as clock:
        result = trio.run(_bounded_mesh, Path(tmp), clock=clock)
    assert result["trimmed"] > 0
    # Young connections (walks, dials for sends) may sit above the high watermark for one
    # grace period; a 10-node mesh without the trim is fully connected (9 peers each).
    assert sorted(result["peers"])[len(result["peers"]) // 2] <= 6, result["peers"]
    assert result["outcomes"] == ["delivered"] * 10, result["outcomes"]


class _Runtime:
    def __init__(self, name: str) -> None:
        self.node_key = SigningKey.from_seed(hashlib.sha256(name.encode()).digest())
        self.agents = [hashlib.sha256(f"{name}/{i}".encode()).digest() for i in range(20)]
        self.store = self

    def agent_ids(self) -> Iterator[bytes]:
        return iter(list(self.agents))

    def hosts(self, agent: AgentId) -> bool:
        return agent.raw in self.agents

    async def list_agents(self, *, limit: int, after: bytes | None = None) -> list[Any]:
        return []


class _Net:
    """Two fake networks joined at `since`: a request is the other one's handler call."""

    def __init__(self, runtime: _Runtime, nets: dict[str, _Net]) -> None:
        self.peer_id = runtime.node_key.node_id.text
        self.nets = nets
        self.handlers: dict[str, RequestHandler] = {}
        self.peer: tuple[str, float] | None = None
        nets[self.peer_id] = self

    def listen_addrs(self) -> list[str]:
        return []

    def connected_peers(self) -> list[PeerSnapshot]:
        return [] if self.peer is None else [PeerSnapshot(self.peer[0], (), self.peer[1])]

    def peer_addrs(self, peer_id: str) -> list[str]:
        return []

    def set_request_handler(self, protocol: str, handler: RequestHandler | None) -> None:
        if handler is not None:
            self.handlers[protocol] = handler

    async def request(
        self, peer_id: str, addrs: Any, protocol: str, payload: bytes, *, timeout: float
    ) -> bytes:
        await trio.sleep(0.01)
        return await self.nets[peer_id].handlers[protocol](self.peer_id, payload)


async def test_a_connection_becomes_a_summary_neighbour_only_after_neighbour_after_s(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = SummarySettings(interval_s=5.0, tick_s=0.5, min_gap_s=1.0, neighbour_after_s=6.0)
    nets: dict[str, _Net] = {}
    a_runtime, b_runtime = _Runtime("a"), _Runtime("b")
    a_net, b_net = _Net(a_runtime, nets), _Net(b_runtime, nets)
    a = Summaries(a_runtime, a_net, settings)  # type: ignore[arg-type]
    b = Summaries(b_runtime, b_net, settings)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        now = trio.current_time()
        a_net.peer, b_net.peer = (b_net.peer_id, now), (a_net.peer_id, now)
        await trio.sleep(4.0)
        assert a.stats()["full_sent"] == b.stats()["full_sent"] == 0  # too young yet
        await trio.sleep(4.0)
        assert a.stats()["full_sent"] >= 1
        assert b.stats()["full_sent"] >= 1
        assert a.candidates(AgentId(b_runtime.agents[3])) == [(b_net.peer_id, 0)]
        nursery.cancel_scope.cancel()
