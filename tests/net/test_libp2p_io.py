"""py-libp2p I/O fixes (meshd.net.libp2p_io): yamux window credit and buffered TCP reads."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from libp2p.custom_types import TProtocol
from libp2p.io.trio import TrioTCPStream
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE, YamuxStream
from multiaddr import Multiaddr

from meshd.net import libp2p_io
from meshd.net.libp2p_net import Libp2pNetwork
from meshd.net.types import NetEvent

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
PROTOCOL = TProtocol("/meshd-test/credit/1.0.0")
SMALL = 300  # about one signed envelope in its frame
ROUNDS = 200  # 60 kB: less than half the 256 KiB window


@asynccontextmanager
async def stream_pair(handler: Any) -> AsyncIterator[Any]:
    """Two networks on loopback; yield a stream from the first to `handler` on the second."""
    events, _unread = trio.open_memory_channel[NetEvent](1000)
    async with trio.open_nursery() as nursery:
        a = Libp2pNetwork(os.urandom(32), listen=[LOOPBACK])
        b = Libp2pNetwork(os.urandom(32), listen=[LOOPBACK])
        for net in (a, b):
            await nursery.start(net.serve, events)
        b.host.set_stream_handler(PROTOCOL, handler)
        info = info_from_p2p_addr(Multiaddr(b.listen_addrs()[0]))
        with trio.fail_after(15):
            await a.host.connect(info)
            stream = await a.host.new_stream(info.peer_id, [PROTOCOL])
        yield stream
        nursery.cancel_scope.cancel()


def pending(sock: trio.socket.SocketType) -> bool:
    """Whether the kernel holds unread bytes for `sock` (peeked, nothing taken)."""
    with socket.socket(fileno=os.dup(sock.fileno())) as probe:
        try:
            return bool(probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return False


def test_install_is_idempotent() -> None:
    libp2p_io.install()
    read = TrioTCPStream.read
    libp2p_io.install()
    assert TrioTCPStream.read is read  # not wrapped twice
    assert YamuxStream._auto_tune_and_send_window_update.__module__ == libp2p_io.__name__
    assert read.__module__ == libp2p_io.__name__


async def test_tcp_reads_are_served_in_order_from_one_socket_read() -> None:
    libp2p_io.install()
    ours, theirs = trio.socket.socketpair()
    stream = TrioTCPStream(trio.SocketStream(ours))
    with theirs:
        await theirs.send(b"ab" + b"cdefgh" + b"ij")
        with trio.fail_after(5):
            assert await stream.read(2) == b"ab"
            # Everything sent was taken from the socket by that first read...
            assert not pending(ours)
            # ...and is handed out in order, in the sizes asked for.
            assert await stream.read(6) == b"cdefgh"
            assert await stream.read(0) == b""
            assert await stream.read(100) == b"ij"  # no more than is held
            await theirs.send(b"kl")
            assert await stream.read(None) == b"kl"
            theirs.shutdown(socket.SHUT_WR)
            assert await stream.read(5) == b""  # end of stream
    await stream.close()


async def test_small_reads_are_credited_once_per_half_window() -> None:
    served: list[Any] = []

    async def echo(stream: Any) -> None:
        served.append(stream.muxed_stream)
        try:
            while data := await stream.read(65536):
                await stream.write(data)
        except Exception:  # the test resets the stream when done
            return

    async with stream_pair(echo) as stream:
        ours = stream.muxed_stream
        payload = b"m" * SMALL
        with trio.fail_after(30):
            await stream.write(payload)
            assert await stream.read(65536) == payload
            window = ours.send_window
            for _ in range(ROUNDS):
                await stream.write(payload)
                assert await stream.read(65536) == payload
            # The peer read every byte, and credited none of it back: under half a window.
            # (py-libp2p's own rule credited every other read: the window stayed full.)
            assert ours.send_window == window - ROUNDS * SMALL
            assert served[0]._window_update_pending_flush == 0
            # Past half the window read, one update gives back everything read so far.
            needed = DEFAULT_WINDOW_SIZE // 2 - (ROUNDS + 1) * SMALL
            big = b"b" * (needed + SMALL)
            await stream.write(big)
            echoed = b""
            while len(echoed) < len(big):
                echoed += await stream.read(65536)
            assert echoed == big
            for _ in range(200):  # the update may trail the echo by a scheduling round
                if ours.send_window > window - ROUNDS * SMALL:
                    break
                await trio.sleep(0.01)
            assert served[0]._window_update_pending_flush == 1
            assert ours.send_window >= DEFAULT_WINDOW_SIZE - SMALL
        await stream.reset()


async def test_bulk_transfer_larger_than_the_window_arrives_whole() -> None:
    total = 4 * 1024 * 1024
    digest: list[str] = []
    served: list[Any] = []

    async def sink(stream: Any) -> None:
        served.append(stream.muxed_stream)
        seen, h = 0, hashlib.sha256()
        try:
            while seen < total:
                data = await stream.read(65536)
                if not data:
                    break
                h.update(data)
                seen += len(data)
            digest.append(h.hexdigest())
            await stream.write(b"done")
        except Exception:
            return

    async with stream_pair(sink) as stream:
        blob = os.urandom(total)
        with trio.fail_after(60):  # a writer stuck on a zero window fails after 5 s
            for start in range(0, total, 65536):
                await stream.write(blob[start : start + 65536])
            assert await stream.read(64) == b"done"
        assert digest == [hashlib.sha256(blob).hexdigest()]
        # Credit came back in updates of half a window or more, not one per read.
        assert 1 <= served[0]._window_update_pending_flush <= total // (DEFAULT_WINDOW_SIZE // 2)
        await stream.reset()
