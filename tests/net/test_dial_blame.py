"""Dials at this node's connection cap: they blame no peer, and ours make room.

py-libp2p 0.8.1 puts every peer whose dial failed into a 60 s negative cache; without
`meshd.net.libp2p_net._spare_blameless_peers`, one dial refused by our own `max_connections`
made the peer undialable for a minute (simnet: messages to summary neighbours failed with
"negative cache" long after the cap had room again). A peer that really cannot be reached
is still cached. A message or request of ours that needs a dial at the cap closes another
connection first (`_make_room`); other dials (DHT lookups, walks) are refused.
"""

from __future__ import annotations

import os
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr

from meshd.net.discovery import _LOOKUP_MIN_AGE_S, DiscoverySettings
from meshd.net.host import HostLimits
from meshd.net.libp2p_net import Libp2pNetwork
from meshd.net.memory import memory_addr
from tests.net.memory_mesh import memory_mesh

PROTO = "/meshd/test-room/1.0.0"
GRACE_S = 4.0  # longer than a refused dial with its retries takes
# No auto-connector target (py-libp2p dials up to (low + high) // 2 after a disconnect).
ONE = HostLimits(low_watermark=0, high_watermark=1, max_connections=1)
LISTENERS = HostLimits(low_watermark=0, high_watermark=1, max_connections=8)


def three(
    count: int = 3, limits: HostLimits | None = None
) -> AbstractAsyncContextManager[list[Libp2pNetwork]]:
    """Node 1 may hold one connection (or `limits`); the others listen (in-memory transport)."""
    # No redials of their own: what a test dials is all there is (neither our discovery's
    # nor py-libp2p's auto-connector, which redials a peer that closed on us).
    quiet = DiscoverySettings(low_watermark=0, trim_grace_s=GRACE_S)
    return memory_mesh(count, first=limits or ONE, discovery=quiet, others=LISTENERS)


def _peer(net: Libp2pNetwork) -> PeerInfo:
    return PeerInfo(ID.from_base58(net.peer_id), [Multiaddr(memory_addr(_number(net)))])


def _number(net: Libp2pNetwork) -> int:
    return int(net.listen_addrs()[0].split("/")[2])


async def test_a_dial_refused_by_our_own_cap_leaves_the_peer_dialable() -> None:
    async with three() as (first, second, third):
        host = first.host
        swarm = host.get_network()
        with trio.fail_after(10):
            await host.connect(_peer(second))
        assert len(swarm.get_connections()) == 1
        host.get_peerstore().add_addrs(_peer(third).peer_id, _peer(third).addrs, 3600)
        with pytest.raises(Exception, match="unable to connect"), trio.fail_after(10):
            await swarm.dial_peer(_peer(third).peer_id)  # our cap of 1 is full
        assert not swarm._negative_peer_cache.is_blocked(third.peer_id)
        with trio.fail_after(10):
            await swarm.close_peer(_peer(second).peer_id)
            # At once, no unblock needed: the failure was ours, not the peer's.
            await swarm.dial_peer(_peer(third).peer_id)
        assert any(not c.is_closed for c in swarm.get_connections(_peer(third).peer_id))


async def test_a_peer_that_cannot_be_reached_is_still_cached() -> None:
    async with three() as (first, _second, _third):
        swarm = first.host.get_network()
        nobody = ID.from_base58(Libp2pNetwork(os.urandom(32), listen=[]).peer_id)
        first.host.get_peerstore().add_addrs(nobody, [Multiaddr(memory_addr(99))], 3600)
        with pytest.raises(Exception, match="unable to connect"), trio.fail_after(20):
            await swarm.dial_peer(nobody)
        assert swarm._negative_peer_cache.is_blocked(str(nobody))


async def test_a_request_at_our_cap_closes_another_connection_a_lookup_does_not() -> None:
    async with three(4) as (first, second, third, fourth):
        host = first.host
        swarm = host.get_network()

        async def answer(peer_id: str, payload: bytes) -> bytes:
            return b"ok:" + payload

        third.set_request_handler(PROTO, answer)
        with trio.fail_after(10):
            await host.connect(_peer(second))
        # Not our traffic (as a DHT lookup's dial): refused at the cap, nothing closed.
        with pytest.raises(Exception, match="unable to connect"), trio.fail_after(10):
            await host.connect(_peer(fourth))
        assert [c.muxed_conn.peer_id for c in swarm.get_connections()] == [_peer(second).peer_id]
        # A request of ours: the connection to node 2 makes way for it.
        with trio.fail_after(30):  # a bound, generous for a busy machine
            answer_bytes = await first.request(
                third.peer_id, third.listen_addrs(), PROTO, b"hi", timeout=20
            )
        assert answer_bytes == b"ok:hi"
        assert [c.muxed_conn.peer_id for c in swarm.get_connections()] == [_peer(third).peer_id]
        assert first.stats()["closed_for_room"] == 1


async def test_an_inbound_dial_at_our_cap_replaces_an_old_connection_not_a_young_one() -> None:
    async with three() as (first, second, third):
        swarm = first.host.get_network()
        with trio.fail_after(10):
            await first.host.connect(_peer(second))
        # Young (inside the grace period): the inbound dial is refused, as py-libp2p does.
        with pytest.raises(Exception, match="unable to connect"), trio.fail_after(10):
            await third.host.connect(_peer(first))
        assert [c.muxed_conn.peer_id for c in swarm.get_connections()] == [_peer(second).peer_id]
        await trio.sleep(GRACE_S)
        third.host.get_network().unblock_peer(_peer(first).peer_id)
        with trio.fail_after(10):
            await third.host.connect(_peer(first))
        assert [c.muxed_conn.peer_id for c in swarm.get_connections()] == [_peer(third).peer_id]
        assert first.stats()["closed_for_room"] == 1


async def test_an_inbound_dial_at_our_cap_replaces_a_young_idle_lookup_connection() -> None:
    async with three() as (first, second, third):
        swarm = first.host.get_network()
        with trio.fail_after(10):
            await first.host.connect(_peer(second))  # not a send of ours: a lookup's dial
        await trio.sleep(_LOOKUP_MIN_AGE_S + 0.5)  # still inside the grace period
        with trio.fail_after(10):
            await third.host.connect(_peer(first))
        assert [c.muxed_conn.peer_id for c in swarm.get_connections()] == [_peer(third).peer_id]
        assert first.stats()["closed_for_room"] == 1


async def test_an_inbound_dial_does_not_replace_a_connection_carrying_messages() -> None:
    async with three() as (first, second, third):
        swarm = first.host.get_network()

        async def answer(peer_id: str, payload: bytes) -> bytes:
            return b"ok"

        second.set_request_handler(PROTO, answer)
        with trio.fail_after(10):
            await first.host.connect(_peer(second))
        await trio.sleep(GRACE_S)  # old: an inbound dial could replace it ...
        first._discovery.note_messages(_peer(second).peer_id)  # ... but it carries messages
        with pytest.raises(Exception, match="unable to connect"), trio.fail_after(10):
            await third.host.connect(_peer(first))
        assert [c.muxed_conn.peer_id for c in swarm.get_connections()] == [_peer(second).peer_id]


async def test_the_last_slots_are_kept_for_our_sends() -> None:
    six = HostLimits(low_watermark=0, high_watermark=1, max_connections=6)  # 2 kept
    async with three(7, limits=six) as nets:
        first, others = nets[0], nets[1:]
        swarm = first.host.get_network()

        async def answer(peer_id: str, payload: bytes) -> bytes:
            return b"ok"

        for net in others:
            net.set_request_handler(PROTO, answer)
        with trio.fail_after(10):
            for net in others[:4]:
                await first.host.connect(_peer(net))
        with pytest.raises(Exception, match="kept for messages"), trio.fail_after(10):
            await first.host.connect(_peer(others[4]))
        assert not swarm._negative_peer_cache.is_blocked(others[4].peer_id)
        # Generous bounds: two handshakes in pure Python on a machine that may be busy (a
        # 5 s request timeout failed under heavy load); they bound the test, not its speed.
        with trio.fail_after(60):
            for net in others[4:]:
                assert await first.request(net.peer_id, net.listen_addrs(), PROTO, b"", timeout=25)
        assert len(swarm.get_connections()) == 6
        assert first.stats()["dials_kept_for_sends"] == 1
        assert first.stats().get("closed_for_room", 0) == 0


async def test_concurrent_lookup_dials_stop_below_the_kept_slots_too() -> None:
    six = HostLimits(low_watermark=0, high_watermark=1, max_connections=6)  # 2 kept
    async with three(7, limits=six) as nets:
        first, others = nets[0], nets[1:]
        swarm = first.host.get_network()
        with trio.fail_after(10):
            for net in others[:3]:
                await first.host.connect(_peer(net))
        refused: list[str] = []

        async def lookup_dial(net: Libp2pNetwork) -> None:
            try:
                await first.host.connect(_peer(net))
            except Exception as exc:
                refused.append(str(exc))

        # Three at once with one slot left below the kept ones: each dial counts as taken
        # from its start, so two are refused (all three passed a check of held connections).
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for net in others[3:]:
                    nursery.start_soon(lookup_dial, net)
        assert len(swarm.get_connections()) == 4
        assert len(refused) == 2
        assert first.stats()["dials_kept_for_sends"] == 2


async def test_a_send_whose_room_was_taken_makes_room_once_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with three(4) as (first, second, third, fourth):
        host = first.host
        swarm = host.get_network()

        async def answer(peer_id: str, payload: bytes) -> bytes:
            return b"ok"

        fourth.set_request_handler(PROTO, answer)
        with trio.fail_after(10):
            await host.connect(_peer(second))
        discovery = first._discovery
        make_room = discovery.make_room
        calls: list[int] = []

        async def raced(keep: Any = None, *, old_only: bool = False) -> bool:
            # The room goes to an inbound dial from node 3 before our dial gets it.
            done = await make_room(keep, old_only=old_only)
            if old_only:  # an inbound dial's (node 3 redials the connection we close)
                return done
            calls.append(len(calls))
            if len(calls) == 1:
                await third.host.connect(_peer(first))
                # Taken means settled here too, not only dialed from there: registered, and
                # no longer busy with its opening exchanges (identify), which would keep
                # `make_room` from closing it.
                taker = _peer(third).peer_id
                for _ in range(1000):
                    peers = [p for p in host.get_connected_peers() if p == taker]
                    now = trio.current_time()
                    in_use = discovery._in_use(peers)
                    if peers and discovery.room_choice(peers, now, old_only=False, in_use=in_use):
                        break
                    await trio.sleep(0.01)
            return done

        monkeypatch.setattr(discovery, "make_room", raced)
        with trio.fail_after(20):
            assert await first.request(
                fourth.peer_id, fourth.listen_addrs(), PROTO, b"", timeout=10
            ) == b"ok"
        assert len(calls) == 2
        assert first.stats()["room_retries"] == 1
        assert [c.muxed_conn.peer_id for c in swarm.get_connections()] == [_peer(fourth).peer_id]
