"""In-process py-libp2p networks on loopback: Noise only, private DHT id, records, discovery."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.kad_dht import common as kad_common
from libp2p.network.exceptions import SwarmException
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.records.utils import InvalidRecordType
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from multiaddr import Multiaddr

from meshd.clock import wall_ms
from meshd.net.addrs import parse_bootstrap_addr
from meshd.net.discovery import DiscoverySettings
from meshd.net.host import advertised_addrs
from meshd.net.kad import IPFS_KAD_PROTOCOL_ID, KAD_PROTOCOL_ID, install_kad_protocol_id
from meshd.net.libp2p_net import Libp2pNetwork
from meshd.net.types import NetEvent, NetworkError, PeerConnected, PeerDisconnected
from protocol.errors import RemoteProtocolError
from protocol.ids import SigningKey
from protocol.records import AgentRecord, BirthCert, LifecycleState, Provenance, agent_record_key

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
FAST = DiscoverySettings(join_jitter_s=0.0, fast_walk_s=0.2, small_table_walk_s=1.0)
STEP_TIMEOUT_S = 15.0


@asynccontextmanager
async def running(
    count: int, *, bootstrap_first: bool = False
) -> AsyncIterator[tuple[list[Libp2pNetwork], trio.MemoryReceiveChannel[NetEvent]]]:
    """Start `count` networks; with `bootstrap_first`, nodes 2.. know only node 1."""
    send, receive = trio.open_memory_channel[NetEvent](1000)
    nets: list[Libp2pNetwork] = []
    async with trio.open_nursery() as nursery:
        first = Libp2pNetwork(os.urandom(32), listen=[LOOPBACK], discovery=FAST)
        await nursery.start(first.serve, send)
        nets.append(first)
        seeds = [parse_bootstrap_addr(first.listen_addrs()[0])] if bootstrap_first else []
        for _ in range(count - 1):
            net = Libp2pNetwork(os.urandom(32), listen=[LOOPBACK], bootstrap=seeds, discovery=FAST)
            await nursery.start(net.serve, send)
            nets.append(net)
        yield nets, receive
        nursery.cancel_scope.cancel()


async def until(check: Callable[[], Any], what: str) -> None:
    """Poll `check` every 50 ms until true; fail after STEP_TIMEOUT_S."""
    deadline = trio.current_time() + STEP_TIMEOUT_S
    while not check():
        if trio.current_time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await trio.sleep(0.05)


def test_kad_protocol_id_is_patched_everywhere() -> None:
    assert install_kad_protocol_id() == KAD_PROTOCOL_ID
    assert install_kad_protocol_id() == KAD_PROTOCOL_ID  # idempotent
    assert kad_common.PROTOCOL_ID == KAD_PROTOCOL_ID
    import libp2p.kad_dht.kad_dht as kad
    import libp2p.kad_dht.peer_routing as routing
    import libp2p.kad_dht.provider_store as providers
    import libp2p.kad_dht.value_store as values

    for module in (kad, routing, providers, values):
        assert module.PROTOCOL_ID == KAD_PROTOCOL_ID, module.__name__


async def test_identify_advertises_meshd_kad_not_ipfs() -> None:
    async with running(2) as (nets, _):
        a, b = nets
        await a.host.connect(info_from_p2p_addr(Multiaddr(b.listen_addrs()[0])))
        peerstore = a.host.get_peerstore()

        def identified() -> list[str]:
            try:
                return [str(p) for p in peerstore.get_protocols(b.host.get_id())]
            except KeyError:
                return []

        await until(identified, "identify to report b's protocols")
        advertised = identified()
        assert KAD_PROTOCOL_ID in advertised
        assert IPFS_KAD_PROTOCOL_ID not in advertised
        assert IPFS_KAD_PROTOCOL_ID not in [str(p) for p in b.host.get_mux().get_protocols()]
        # ...and the DHT really runs over it: each adds the other to its routing table.
        await until(lambda: a.routing_table_size() == 1 == b.routing_table_size(), "tables")


async def test_plaintext_only_peer_cannot_connect() -> None:
    async with running(1) as (nets, events):
        ours = nets[0]
        key_pair = create_new_key_pair()
        plaintext = new_host(
            key_pair=key_pair,
            sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)},
            muxer_preference="YAMUX",
        )
        async with plaintext.run([Multiaddr(LOOPBACK)]):
            # The plaintext peer dials us...
            with trio.fail_after(STEP_TIMEOUT_S), pytest.raises(SwarmException):
                await plaintext.connect(info_from_p2p_addr(Multiaddr(ours.listen_addrs()[0])))
            # ...and we dial it: both fail at security negotiation.
            addr = f"{plaintext.get_addrs()[0]}"
            with trio.fail_after(STEP_TIMEOUT_S), pytest.raises(SwarmException):
                await ours.host.connect(info_from_p2p_addr(Multiaddr(addr)))
            assert ours.connected_peers() == []
            assert plaintext.get_connected_peers() == []
        assert events.statistics().current_buffer_used >= 1  # Listening only, no PeerConnected
        while True:
            try:
                event = events.receive_nowait()
            except trio.WouldBlock:
                break
            assert not isinstance(event, PeerConnected)


async def test_five_networks_discover_each_other_through_one_seed() -> None:
    async with running(5, bootstrap_first=True) as (nets, _):
        await until(
            lambda: all(len(net.connected_peers()) >= 3 for net in nets),
            "every node to connect to 3 others",
        )
        await until(lambda: all(net.routing_table_size() >= 3 for net in nets), "DHT tables")
        assert all(net.stats()["walks"] >= 1 for net in nets)


async def test_close_is_seen_as_a_disconnect() -> None:
    async with running(2, bootstrap_first=True) as (nets, events):
        a, b = nets
        await until(lambda: len(a.connected_peers()) == 1, "a connected")
        await b.close()
        # a reports b gone (from the notifee, or from the one-second reconcile at worst).
        with trio.fail_after(STEP_TIMEOUT_S):
            async for event in events:
                if isinstance(event, PeerDisconnected) and event.peer_id == b.peer_id:
                    break
        assert a.stats()["peers_disconnected"] >= 1


async def test_agent_records_go_through_the_validator() -> None:
    node, agent = SigningKey.generate(), SigningKey.generate()
    now_ms = wall_ms()  # record expiry is wall-clock time
    cert = BirthCert.issue(
        node, agent=agent.agent_id, kind="echo", node=node.node_id, created_ms=now_ms, budget=1
    )
    value = AgentRecord.create(
        agent,
        node=node.node_id,
        addrs=[],
        seq=1,
        expires_ms=now_ms + 600_000,
        state=LifecycleState.ACTIVE,
        provenance=Provenance.root(cert),
    ).encoded
    key = agent_record_key(agent.agent_id)
    async with running(2, bootstrap_first=True) as (nets, _):
        a, b = nets
        await until(lambda: b.routing_table_size() == 1, "b's table")
        with trio.fail_after(STEP_TIMEOUT_S):
            await b.dht.put_value(key, value)
        await until(lambda: a.dht.value_store.get(key.encode()) is not None, "a to store it")
        with trio.fail_after(STEP_TIMEOUT_S):
            assert await a.dht.get_value(key) == value
        with pytest.raises(RemoteProtocolError):
            await b.dht.put_value(agent_record_key(node.agent_id), b"garbage")
        with pytest.raises(InvalidRecordType):  # strict: unknown namespaces are refused
            await b.dht.put_value("/other/key", b"x")


async def test_port_in_use_is_a_clear_error() -> None:
    async with running(1) as (nets, _):
        taken = nets[0].listen_addrs()[0].split("/p2p/")[0]
        clash = Libp2pNetwork(os.urandom(32), listen=[taken], discovery=FAST)
        send, _receive = trio.open_memory_channel[NetEvent](10)
        refused = pytest.RaisesGroup(
            pytest.RaisesExc(NetworkError, match="already in use"), flatten_subgroups=True
        )
        with trio.fail_after(STEP_TIMEOUT_S), refused:
            async with trio.open_nursery() as nursery:
                await nursery.start(clash.serve, send)


def test_wildcard_listen_addresses_are_advertised_as_interfaces() -> None:
    wildcard, exact = Multiaddr("/ip4/0.0.0.0/tcp/4001"), Multiaddr("/ip4/127.0.0.1/tcp/5")
    advertised = [str(a) for a in advertised_addrs([wildcard, exact])]
    assert "/ip4/127.0.0.1/tcp/4001" in advertised
    assert not any(a.startswith("/ip4/0.0.0.0/") for a in advertised)
    assert advertised[-1] == "/ip4/127.0.0.1/tcp/5"
