"""One-shot request streams (`meshd.net.rpc`) between in-process py-libp2p networks on loopback."""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from meshd.net.libp2p_net import Libp2pNetwork
from meshd.net.rpc import STATUS_ERROR, RequestSettings
from meshd.net.types import NetEvent, RequestError
from protocol.ids import NodeId

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
PROTO = "/meshd/test-rpc/1.0.0"
STEP_TIMEOUT_S = 10.0


@asynccontextmanager
async def pair(server: RequestSettings | None = None) -> AsyncIterator[tuple[Libp2pNetwork, ...]]:
    """A client network and a server network (with `server` request settings), listening."""
    send, _receive = trio.open_memory_channel[NetEvent](1000)
    async with trio.open_nursery() as nursery:
        client = Libp2pNetwork(os.urandom(32), listen=[LOOPBACK])
        host = Libp2pNetwork(os.urandom(32), listen=[LOOPBACK], requests=server)
        await nursery.start(client.serve, send)
        await nursery.start(host.serve, send)
        yield client, host
        nursery.cancel_scope.cancel()


async def ask(client: Libp2pNetwork, host: Libp2pNetwork, payload: bytes) -> bytes:
    return await client.request(
        host.peer_id, host.listen_addrs(), PROTO, payload, timeout=STEP_TIMEOUT_S
    )


async def test_request_is_answered_and_large_payloads_travel() -> None:
    seen: list[str] = []

    async def handler(peer_id: str, payload: bytes) -> bytes:
        seen.append(peer_id)
        return payload[::-1]

    async with pair() as (client, host):
        host.set_request_handler(PROTO, handler)
        assert await ask(client, host, b"hello") == b"olleh"
        big = os.urandom(3 * 1024 * 1024)
        assert await ask(client, host, big) == big[::-1]
        assert await ask(client, host, b"") == b""
        assert seen == [client.peer_id] * 3
        assert host.stats()["requests"]["inbound_requests"] == 3
        assert client.stats()["requests"]["requests_answered"] == 3
        # Addresses of a peer we talked to come from the peerstore.
        assert client.peer_addrs(host.peer_id)
        assert client.peer_addrs("not a peer id") == []


async def test_handler_failure_is_contained_and_counted() -> None:
    async def handler(peer_id: str, payload: bytes) -> bytes:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        return b"fine"

    async with pair() as (client, host):
        host.set_request_handler(PROTO, handler)
        with pytest.raises(RequestError, match="handler failed"):
            await ask(client, host, b"boom")
        # The connection's other streams and handlers carry on.
        assert await ask(client, host, b"again") == b"fine"
        assert host.peer_id in {peer.peer_id for peer in client.connected_peers()}
        assert host.stats()["requests"]["handler_errors"] == 1


async def test_limits_timeouts_and_refusals() -> None:
    release = trio.Event()

    async def handler(peer_id: str, payload: bytes) -> bytes:
        if payload == b"slow":
            await release.wait()
        return b"ok"

    server = RequestSettings(max_request_bytes=1024, max_inbound=1, handler_timeout_s=30.0)
    async with pair(server) as (client, host):
        # Nobody answers this protocol yet: the stream cannot even be opened.
        with pytest.raises(RequestError, match="failed"):
            await ask(client, host, b"x")
        host.set_request_handler(PROTO, handler)
        with pytest.raises(RequestError, match="over the limit"):
            await ask(client, host, b"x" * 2048)  # the server's limit, not the client's
        with pytest.raises(RequestError, match="this node"):
            await client.request(client.peer_id, [], PROTO, b"x", timeout=1)
        with pytest.raises(RequestError, match="not a node id"):
            await client.request("nonsense", [], PROTO, b"x", timeout=1)
        with pytest.raises(RequestError, match="byte limit"):
            await client.request(host.peer_id, [], PROTO, b"x" * (17 * 1024 * 1024), timeout=1)

        async def slow() -> None:
            with pytest.raises(RequestError, match="no answer"):
                await client.request(host.peer_id, host.listen_addrs(), PROTO, b"slow", timeout=1.0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            with trio.fail_after(STEP_TIMEOUT_S):
                while not host.stats()["requests"].get("inbound_requests"):  # noqa: ASYNC110
                    await trio.sleep(0.01)
            # max_inbound=1 and the slow request holds the slot: this one is turned away.
            with pytest.raises(RequestError, match="busy"):
                await ask(client, host, b"quick")
        release.set()
        assert await ask(client, host, b"quick") == b"ok"
        counters = host.stats()["requests"]
        assert counters["inbound_busy"] == 1
        assert counters["inbound_too_large"] == 1
        assert client.stats()["requests"]["request_timeouts"] == 1


async def test_garbage_on_a_request_stream_is_refused() -> None:
    async def handler(peer_id: str, payload: bytes) -> bytes:
        return b"ok"

    async with pair(RequestSettings(read_timeout_s=1.0)) as (client, host):
        host.set_request_handler(PROTO, handler)
        assert await ask(client, host, b"hi") == b"ok"  # connects
        target = ID(NodeId.from_text(host.peer_id).raw)
        # A length far over the limit: answered with an error status, nothing is read.
        stream = await client.host.new_stream(target, [TProtocol(PROTO)])
        await stream.write(struct.pack(">I", 0xFFFFFFFF))
        head = await stream.read(5)
        assert head[0] == STATUS_ERROR
        await stream.reset()
        # A request that never completes: dropped after the read timeout.
        stream = await client.host.new_stream(target, [TProtocol(PROTO)])
        await stream.write(struct.pack(">I", 100) + b"short")
        with trio.fail_after(STEP_TIMEOUT_S):
            while not host.stats()["requests"].get("inbound_read_timeouts"):  # noqa: ASYNC110
                await trio.sleep(0.05)
        await stream.reset()
        assert await ask(client, host, b"still") == b"ok"
