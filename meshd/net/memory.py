"""An in-memory py-libp2p transport on `/memory/<n>` addresses, with a link model.

simnet runs many real nodes in one process: each host gets a `MemoryTransport` instead
of TCP, and Noise, yamux, the DHT and GossipSub run over it unchanged (LIBP2P.md, "In-memory
transport and virtual time"). Every connection is two `_Pipe`s (one per direction); a pipe
delays each chunk by the link's latency (plus jitter), its bandwidth (serialisation time)
and, for a lost chunk, a retransmission timeout: the raw connection is a reliable byte
stream like TCP, so loss shows up as delay, never as missing bytes (Noise would fail).

`Links` is the one object a scenario controls: default link, regions and their latencies,
per-pair overrides, and partitions. A partition resets the connections that cross it (as a
TCP keepalive would, only at once) and refuses dials across it until `heal()`.

All waiting uses trio's clock (`trio.sleep_until`), so the transport runs the same in real
time and under `trio.testing.MockClock`. Every buffer is bounded: a full pipe makes the
writer wait, as a full socket buffer would.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import trio
from libp2p.abc import IListener, IRawConnection, ITransport
from libp2p.custom_types import THandler
from libp2p.io.abc import ReadWriteCloser
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.transport.exceptions import OpenConnectionError
from multiaddr import Multiaddr

__all__ = ["LinkSpec", "Links", "MemoryStream", "MemoryTransport", "memory_addr"]

log = logging.getLogger("meshd.net.memory")

# Chunks in flight per direction of a connection; a full pipe blocks the writer.
_PIPE_CHUNKS = 512
# A lost chunk is resent after max(this, 2 x latency), like a TCP retransmission timeout.
_MIN_RTO_S = 0.2
# Dialing a peer that does not listen, or across a partition, fails after this long
# (a SYN that is never answered), so that dial loops cannot spin.
_UNREACHABLE_DIAL_S = 0.05


def memory_addr(number: int) -> str:
    """The multiaddr text of memory listener `number` (1 and up)."""
    return f"/memory/{number}"


def _number(maddr: Multiaddr) -> int:
    value = maddr.value_for_protocol("memory")
    if value is None:
        raise OpenConnectionError(f"{maddr} has no /memory/ component")
    return int(value)


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One direction of a link: delay, jitter, loss probability and bandwidth."""

    latency_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    bandwidth_bps: float | None = None  # bytes per second; None = unlimited

    def __post_init__(self) -> None:
        if self.latency_s < 0 or self.jitter_s < 0:
            raise ValueError("latency and jitter must be >= 0")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError("loss must be in [0, 1)")
        if self.bandwidth_bps is not None and self.bandwidth_bps <= 0:
            raise ValueError("bandwidth must be > 0")


class Links:
    """The link model between memory endpoints: what the scenario changes while it runs."""

    def __init__(self, default: LinkSpec | None = None, *, seed: int = 0) -> None:
        self.default = default or LinkSpec()
        self._rng = random.Random(seed)
        self._region: dict[int, str] = {}
        self._region_links: dict[tuple[str, str], LinkSpec] = {}
        self._pair_links: dict[tuple[int, int], LinkSpec] = {}
        self._group_of: dict[int, int] | None = None  # None: no partition
        self._listeners: dict[int, _MemoryListener] = {}
        self._conns: set[MemoryStream] = set()
        self.counters: dict[str, int] = {
            "dials": 0,
            "dials_refused": 0,
            "resets": 0,
            "chunks": 0,
            "bytes": 0,
            "lost_chunks": 0,
        }

    # -- model --------------------------------------------------------------------------

    def set_region(self, node: int, region: str) -> None:
        """Put endpoint `node` in `region` (links between regions use `set_region_link`)."""
        self._region[node] = region

    def set_region_link(self, a: str, b: str, spec: LinkSpec) -> None:
        """Links between regions `a` and `b` (both directions)."""
        self._region_links[(a, b)] = spec
        self._region_links[(b, a)] = spec

    def set_link(self, a: int, b: int, spec: LinkSpec) -> None:
        """Override the link between endpoints `a` and `b` (both directions)."""
        self._pair_links[(a, b)] = spec
        self._pair_links[(b, a)] = spec

    def update_default(self, **changes: Any) -> None:
        """Change fields of the default link (e.g. `latency_s=0.05, loss=0.01`)."""
        self.default = replace(self.default, **changes)

    def spec(self, a: int, b: int) -> LinkSpec:
        """The link from `a` to `b`: pair override, else region pair, else the default."""
        pair = self._pair_links.get((a, b))
        if pair is not None:
            return pair
        ra, rb = self._region.get(a), self._region.get(b)
        if ra is not None and rb is not None:
            region = self._region_links.get((ra, rb))
            if region is not None:
                return region
        return self.default

    def partition(self, groups: Iterable[Iterable[int]]) -> int:
        """Split endpoints into `groups`; reset connections that cross; return how many.

        Endpoints named in no group form one more group together.
        """
        group_of: dict[int, int] = {}
        for index, group in enumerate(groups):
            for node in group:
                group_of[node] = index
        self._group_of = group_of
        return self._reset_where(self.blocked)

    def heal(self) -> None:
        """End the partition: every endpoint may reach every other again."""
        self._group_of = None

    def blocked(self, a: int, b: int) -> bool:
        """Whether a partition separates `a` and `b`."""
        if self._group_of is None:
            return False
        return self._group_of.get(a, -1) != self._group_of.get(b, -1)

    def reset_node(self, node: int) -> int:
        """A crash of endpoint `node` as its peers see it: its listener and connections go."""
        self._listeners.pop(node, None)
        return self._reset_where(lambda a, b: node in (a, b))

    def _reset_where(self, test: Any) -> int:
        doomed = [c for c in self._conns if test(c.local, c.remote)]
        for conn in doomed:
            conn.reset()
        self.counters["resets"] += len(doomed)
        return len(doomed)

    def delay(self, a: int, b: int, size: int) -> tuple[float, float]:
        """(serialisation time, propagation delay) of `size` bytes from `a` to `b`."""
        spec = self.spec(a, b)
        serialise = 0.0 if spec.bandwidth_bps is None else size / spec.bandwidth_bps
        delay = spec.latency_s
        if spec.jitter_s:
            delay += self._rng.uniform(0.0, spec.jitter_s)
        if spec.loss:
            rto = max(_MIN_RTO_S, 2 * spec.latency_s)
            while self._rng.random() < spec.loss:  # each resend may be lost again
                self.counters["lost_chunks"] += 1
                delay += rto
        return serialise, delay

    # -- endpoints ----------------------------------------------------------------------

    def _listen(self, number: int, listener: _MemoryListener) -> None:
        if number in self._listeners:
            raise OpenConnectionError(f"{memory_addr(number)} is already in use")
        self._listeners[number] = listener

    def _unlisten(self, number: int, listener: _MemoryListener) -> None:
        if self._listeners.get(number) is listener:
            del self._listeners[number]

    def listening(self, number: int) -> bool:
        """Whether an endpoint listens on `/memory/<number>` now."""
        return number in self._listeners

    async def _connect(self, local: int, remote: int) -> MemoryStream:
        self.counters["dials"] += 1
        listener = self._listeners.get(remote)
        if listener is None or self.blocked(local, remote):
            self.counters["dials_refused"] += 1
            await trio.sleep(_UNREACHABLE_DIAL_S)
            raise OpenConnectionError(f"{memory_addr(remote)} is unreachable")
        # One round trip for the "handshake", as TCP's SYN/SYN-ACK would cost.
        await trio.sleep(self.spec(local, remote).latency_s + self.spec(remote, local).latency_s)
        ours, theirs = MemoryStream.pair(self, local, remote)
        if not listener.accept(theirs):
            ours.reset()
            raise OpenConnectionError(f"{memory_addr(remote)} refused the connection")
        return ours

    def _track(self, conn: MemoryStream) -> None:
        self._conns.add(conn)

    def _untrack(self, conn: MemoryStream) -> None:
        self._conns.discard(conn)

    def connections(self) -> int:
        """Open connection ends (two per connection)."""
        return len(self._conns)


class _Pipe:
    """One direction of a connection: chunks with the trio time they may be read."""

    def __init__(self, links: Links, src: int, dst: int) -> None:
        self.links = links
        self.src = src
        self.dst = dst
        self.send, self.receive = trio.open_memory_channel[tuple[float, bytes]](_PIPE_CHUNKS)
        self._free_at = 0.0  # when the sender's "wire" is free again (bandwidth)
        self._last_due = 0.0  # chunks never overtake each other

    def stamp(self, size: int) -> float:
        now = trio.current_time()
        serialise, delay = self.links.delay(self.src, self.dst, size)
        self._free_at = max(now, self._free_at) + serialise
        due = max(self._free_at + delay, self._last_due)
        self._last_due = due
        return due


class MemoryStream(ReadWriteCloser):
    """One end of an in-memory connection: the raw byte stream Noise runs on."""

    def __init__(self, links: Links, local: int, remote: int, out: _Pipe, inc: _Pipe) -> None:
        self.links = links
        self.local = local
        self.remote = remote
        self._out = out
        self._in = inc
        self._pending = b""
        self._peer: MemoryStream | None = None
        self._closed = False
        self.on_close: Callable[[], object] | None = None  # told once, when this end shuts
        self._write_lock = trio.Lock()
        self._read_lock = trio.Lock()
        links._track(self)

    @classmethod
    def pair(cls, links: Links, a: int, b: int) -> tuple[MemoryStream, MemoryStream]:
        """Two connected ends: `a`'s and `b`'s."""
        ab, ba = _Pipe(links, a, b), _Pipe(links, b, a)
        end_a, end_b = cls(links, a, b, ab, ba), cls(links, b, a, ba, ab)
        end_a._peer, end_b._peer = end_b, end_a
        return end_a, end_b

    async def write(self, data: bytes) -> None:
        """Queue `data` for the peer (waits while the pipe is full)."""
        if self._closed:
            return  # as TrioTCPStream: writing after our own close is a no-op
        async with self._write_lock:
            due = self._out.stamp(len(data))
            try:
                await self._out.send.send((due, bytes(data)))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionClosedError("memory connection reset", transport="memory") from exc
            self.links.counters["chunks"] += 1
            self.links.counters["bytes"] += len(data)

    async def read(self, n: int | None = None) -> bytes:
        """Up to `n` bytes once their delivery time has come; b"" at end of stream."""
        if n == 0:
            return b""
        async with self._read_lock:
            if not self._pending:
                try:
                    due, chunk = await self._in.receive.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return b""
                if due > trio.current_time():
                    # Not when it is due already (no latency): receive() was a checkpoint,
                    # and a sleep's cancel scope per chunk was 10% of a 200-node settle.
                    await trio.sleep_until(due)
                self._pending = chunk
            if n is None or n >= len(self._pending):
                out, self._pending = self._pending, b""
            else:
                out, self._pending = self._pending[:n], self._pending[n:]
            return out

    async def close(self) -> None:
        """Close both directions; the peer reads what is in flight, then end of stream."""
        self._shut()
        await trio.lowlevel.checkpoint()

    def reset(self) -> None:
        """Drop both ends at once, data in flight included (a partition or a crash)."""
        self._shut(drop=True)
        if self._peer is not None:
            self._peer._shut(drop=True)

    def _shut(self, *, drop: bool = False) -> None:
        if not self._closed:
            self._closed = True
            self.links._untrack(self)
            if self.on_close is not None:
                self.on_close()
        self._out.send.close()
        self._in.receive.close()
        if drop:
            self._out.receive.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        """None: no IP, so py-libp2p's IP-based gating stays out of the simulation."""
        return None


class _MemoryListener(IListener):
    """Accepts connections on one `/memory/<n>`; handlers run in the swarm's nursery."""

    def __init__(self, transport: MemoryTransport, handler: THandler) -> None:
        self._transport = transport
        self._handler = handler
        self._number: int | None = None
        self._maddr: Multiaddr | None = None
        # The swarm sets this attribute before listen() (see Swarm.listen).
        self.background_nursery: trio.Nursery | None = None

    async def listen(self, maddr: Multiaddr) -> None:
        """Register `/memory/<n>` with the link model."""
        number = _number(maddr)
        if number == 0:
            raise OpenConnectionError("/memory/0: simnet assigns explicit memory numbers")
        if self.background_nursery is None:
            raise OpenConnectionError("memory listener started outside a swarm")
        self._transport.links._listen(number, self)
        self._transport.local = number
        self._number, self._maddr = number, maddr
        await trio.lowlevel.checkpoint()

    def accept(self, stream: MemoryStream) -> bool:
        """Hand an inbound connection to the swarm (in its nursery); False if closed."""
        if self._number is None or self.background_nursery is None:
            return False
        try:
            self.background_nursery.start_soon(self._serve, stream)
        except RuntimeError:  # the swarm's nursery is closing: the node is stopping
            return False
        return True

    async def _serve(self, stream: MemoryStream) -> None:
        # py-libp2p's handler returns only when the whole swarm stops, holding its task and
        # the connection's objects for every inbound connection the node ever accepted (as
        # over TCP); here it ends with the connection.
        try:
            with trio.CancelScope() as scope:
                stream.on_close = scope.cancel
                await self._handler(stream)
        finally:
            stream.reset()

    def get_addrs(self) -> tuple[Multiaddr, ...]:
        """The one address we listen on (once listening)."""
        return () if self._maddr is None else (self._maddr,)

    async def close(self) -> None:
        """Stop accepting (connections already made stay until closed)."""
        if self._number is not None:
            self._transport.links._unlisten(self._number, self)
            self._number = None
        await trio.lowlevel.checkpoint()


class MemoryTransport(ITransport):
    """A py-libp2p transport whose endpoints live in one `Links` (one process)."""

    def __init__(self, links: Links, local: int) -> None:
        self.links = links
        self.local = local  # our memory number, used as the dialing side of each link

    async def dial(self, maddr: Multiaddr) -> IRawConnection:
        """Connect to the endpoint at `maddr` (through the link model)."""
        remote = _number(maddr)
        stream = await self.links._connect(self.local, remote)
        return RawConnection(stream, True, addresses=[maddr])

    def create_listener(self, handler_function: THandler) -> IListener:
        """A listener whose inbound connections go to `handler_function`."""
        return _MemoryListener(self, handler_function)

    def can_dial(self, maddr: Multiaddr) -> bool:
        """Memory addresses only."""
        return "memory" in {p.name for p in maddr.protocols()}

    def can_listen(self, maddr: Multiaddr) -> bool:
        """Memory addresses only."""
        return self.can_dial(maddr)

    def protocols(self) -> list[str]:
        """The multiaddr protocol this transport handles."""
        return ["memory"]
