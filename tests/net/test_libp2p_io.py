"""py-libp2p I/O fixes (meshd.net.libp2p_io): window credit, buffered reads, quick locks."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
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
    init = YamuxStream.__init__
    libp2p_io.install()
    assert YamuxStream.__init__ is init  # the locks are swapped once per instance


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


class StepCounter(trio.abc.Instrument):
    """Counts the scheduler steps of one task."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task, self.steps = task, 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def test_a_small_write_passes_free_locks_without_yielding() -> None:
    async def sink(stream: Any) -> None:
        try:
            while await stream.read(65536):
                pass
        except Exception:
            return

    async with stream_pair(sink) as stream:
        muxed = stream.muxed_stream
        for lock in (stream._state_lock, muxed.window_lock, muxed.conn._write_lock):
            assert isinstance(lock, libp2p_io.QuickLock)
        await stream.write(b"w" * SMALL)  # the stream is open and acknowledged
        steps: list[int] = []
        for _ in range(20):  # another task may hold a lock now and then: take the least
            counter = StepCounter(trio.lowlevel.current_task())
            trio.lowlevel.add_instrument(counter)
            try:
                with trio.fail_after(10):
                    await stream.write(b"m" * SMALL)
            finally:
                trio.lowlevel.remove_instrument(counter)
            steps.append(counter.steps)
        # `send_all` and yamux's checkpoint after each frame; py-libp2p's five free locks
        # added five more passes of the event loop.
        assert min(steps) <= 2, steps
        await stream.reset()


async def test_quick_lock_excludes_and_waits_like_a_trio_lock() -> None:
    lock = libp2p_io.QuickLock()
    inside: list[str] = []
    overlap: list[bool] = []

    async def worker(name: str) -> None:
        async with lock:
            overlap.append(bool(inside))
            inside.append(name)
            await trio.sleep(0.01)  # hold it across a schedule point
            inside.remove(name)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(worker, str(i))
    assert overlap == [False] * 4
    assert not lock.locked()
    # Taken by this task, it refuses another and is released only by its owner.
    await lock.acquire()
    refused: list[bool] = []

    async def other() -> None:
        with pytest.raises(trio.WouldBlock):
            lock.acquire_nowait()
        with pytest.raises(RuntimeError):
            lock.release()
        refused.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
    assert refused == [True]
    assert lock.statistics().owner is trio.lowlevel.current_task()
    lock.release()
    # A cancelled caller stops at the lock even when it is free.
    with trio.CancelScope() as scope:
        scope.cancel()
        await lock.acquire()
    assert scope.cancelled_caught
    assert not lock.locked()


async def test_tcp_stream_locks_are_quick() -> None:
    libp2p_io.install()
    ours, theirs = trio.socket.socketpair()
    stream = TrioTCPStream(trio.SocketStream(ours))
    with theirs:
        assert isinstance(stream.read_lock, libp2p_io.QuickLock)
        assert isinstance(stream.write_lock, libp2p_io.QuickLock)
        await stream.write(b"x")
        assert await theirs.recv(1) == b"x"
    await stream.close()
