"""The libp2p side of `/meshd/msg/1.0.0`: one long-lived stream per peer and direction.

Outbound, each peer has a `_PeerChannel`: a bounded queue (`meshd.net.sendqueue`) that
senders wait on when it is full (backpressure: a slow peer slows its senders, memory stays
bounded) and one task in our
nursery that opens the stream on the first message (dialing if needed), then writes every
queued message it can take at once (up to `max_frames_per_write` frames or
`max_bytes_per_write` bytes in one `write()`: py-libp2p costs about the same per write
whatever its size) and reads the ACK frames that come back on the same stream. At most
`max_in_flight` messages wait for their ACK; a stream that fails, or gives no ACK for
`ack_timeout_s`, is reset, and its waiting messages get `unreachable`; the next message
opens a new stream. After `idle_close_s` without traffic the stream is closed.

Inbound, py-libp2p runs our handler in a task per stream. It reads 64 KiB at a time, parses
the frames itself (py-libp2p's own readers go byte by byte), and gives the MSG frames of
each read to the node's `MessageHandler` as one batch; the batch's `ack` queues the answers,
which a second task writes back, all the ACKs available in one write. At most
`max_unacked_batches` batches per stream are in the node's hands or waiting to be written:
beyond that we stop reading, yamux stops the peer, and the peer's senders wait.

A peer that sends bytes that are not our frames has its stream reset; it is counted (by
reason) and logged, and everything else carries on.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr

from meshd.guard import PeerGuard
from meshd.net.sendqueue import Group, Outgoing, SendQueue
from meshd.net.types import UNREACHABLE, MessageHandler, SendResult
from protocol.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from protocol.frames import (
    MAX_ACK_ENTRIES,
    MAX_FRAME_SIZE,
    MSG_PROTOCOL_ID,
    Ack,
    AckEntry,
    FrameDecoder,
    Mode,
    Msg,
    encode_ack,
    encode_msg,
)

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = ["MessageStreams", "StreamSettings"]

log = logging.getLogger("meshd.net.msg")

_PROTOCOLS = [TProtocol(MSG_PROTOCOL_ID)]
# Room for a MSG frame's header around the envelope (array, type, seq, mode, bstr head).
_MSG_OVERHEAD = 32


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Sizes and timings of message streams."""

    queue_size: int = 256
    max_frames_per_write: int = 64
    max_bytes_per_write: int = 256 * 1024
    max_in_flight: int = 1024
    max_in_flight_bytes: int = 1024 * 1024
    ack_timeout_s: float = 30.0
    idle_close_s: float = 60.0
    dial_timeout_s: float = 5.0
    redial_backoff_s: float = 1.0
    read_size: int = 65536
    max_unacked_batches: int = 8
    max_inbound_streams_per_peer: int = 2
    drain_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        for name in (
            "queue_size",
            "max_frames_per_write",
            "max_bytes_per_write",
            "max_in_flight",
            "max_in_flight_bytes",
            "read_size",
            "max_unacked_batches",
            "max_inbound_streams_per_peer",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if min(self.ack_timeout_s, self.idle_close_s, self.dial_timeout_s) <= 0:
            raise ValueError("timeouts must be positive")


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


class _PeerChannel:
    """The outbound side of one peer: its queue, its stream's state, its waiting messages."""

    def __init__(self, peer_id: str, peer: ID, addrs: tuple[str, ...], size: int) -> None:
        self.peer_id = peer_id
        self.peer = peer
        self.addrs = addrs
        self.queue = SendQueue(size)
        self.pending: dict[int, Outgoing] = {}  # seq -> message, oldest first
        self.pending_bytes = 0
        self.next_seq = 0
        self.window = trio.Event()  # set when ACKs free room under max_in_flight
        self.unreachable_until = 0.0
        self.unreachable_detail = ""


class _Run:
    """One stream's tasks: the first failure is kept and cancels the others."""

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.failure: str | None = None

    def fail(self, detail: str) -> None:
        if self.failure is None:
            self.failure = detail
        self.scope.cancel()


class _AckOutbox:
    """ACK entries waiting to be written back on one inbound stream.

    Bounded by construction: every entry answers a message the stream handed over, and at
    most `max_unacked_batches` batches are handed over and not yet fully taken from here.
    """

    def __init__(self, slots: trio.Semaphore, counters: Counter[str]) -> None:
        self.slots = slots
        self.counters = counters
        self.entries: list[AckEntry] = []
        self.finished = 0  # batches whose last answer is in `entries`
        self.ready = trio.Event()
        self.closed = False

    def put(self, entries: Sequence[AckEntry], finished: bool) -> None:
        """Queue answers; `finished` when they are the last of their batch."""
        if self.closed:
            self.counters["acks_dropped"] += len(entries)  # the stream is gone
            return
        self.entries.extend(entries)
        self.finished += finished
        self.ready.set()

    def close(self) -> None:
        """No more answers: `take` returns None once the queued ones are taken."""
        self.closed = True
        self.ready.set()

    async def take(self) -> list[AckEntry] | None:
        """Wait for answers and take them all (None once closed and empty).

        A batch's slot is freed when its last answer is taken.
        """
        while not self.entries and not self.finished:
            if self.closed:
                return None
            self.ready = trio.Event()
            await self.ready.wait()
        entries, self.entries = self.entries, []
        for _ in range(self.finished):
            self.slots.release()
        self.finished = 0
        return entries


class _Batch:
    """An `InboundBatch` read from one stream (see `meshd.net.types.InboundBatch`)."""

    __slots__ = ("_outbox", "_unanswered", "msgs", "peer_id")

    def __init__(self, peer_id: str, msgs: list[Msg], outbox: _AckOutbox) -> None:
        self.peer_id = peer_id
        self.msgs = msgs
        self._outbox = outbox
        self._unanswered = len(msgs)

    def ack(self, entries: Sequence[AckEntry]) -> None:
        """Queue answers for the stream's ACK writer."""
        if len(entries) > self._unanswered:
            raise LocalProtocolError("more answers than messages in the batch")
        self._unanswered -= len(entries)
        self._outbox.put(entries, finished=not self._unanswered)


class MessageStreams:
    """Message streams of one libp2p host, outbound and inbound; run with `serve`."""

    def __init__(
        self, host: Any, settings: StreamSettings | None = None, guard: PeerGuard | None = None
    ) -> None:
        self._host = host
        self._guard = guard  # refuses banned peers' streams; told about bad frames
        self._self_id = str(host.get_id())
        self._settings = settings or StreamSettings()
        self._channels: dict[str, _PeerChannel] = {}
        self._inbound: Counter[str] = Counter()  # peer -> open inbound message streams
        self._handler: MessageHandler | None = None
        self._nursery: trio.Nursery | None = None
        self.counters: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()  # streams reset for bad frames, by reason

    # -- API ------------------------------------------------------------------------------

    def set_handler(self, handler: MessageHandler | None) -> None:
        """Accept message streams and hand their batches to `handler`; None refuses them."""
        self._handler = handler
        if handler is None:
            self._host.remove_stream_handler(_PROTOCOLS[0])
        else:
            self._host.set_stream_handler(_PROTOCOLS[0], self._serve_inbound)

    async def send(
        self, peer_id: str, addrs: Sequence[str], envelope: bytes, mode: Mode
    ) -> SendResult:
        """Queue one envelope for `peer_id` and wait for its ACK (see `Network.send_message`)."""
        if len(envelope) > MAX_FRAME_SIZE - _MSG_OVERHEAD:
            return SendResult("rejected:too_large", "envelope does not fit a frame")
        if self._nursery is None:
            return SendResult(UNREACHABLE, "network is not running")
        if peer_id == self._self_id:
            return SendResult(UNREACHABLE, "that peer id is this node")
        item = Outgoing(envelope, mode)
        try:
            for _attempt in range(2):
                try:
                    channel = self._channel(peer_id, addrs)
                except ValueError as exc:
                    return SendResult(UNREACHABLE, f"bad peer id: {_short(exc)}")
                if channel.unreachable_until > trio.current_time():
                    self.counters["sends_unreachable"] += 1
                    return SendResult(UNREACHABLE, channel.unreachable_detail)
                # No schedule point when there is room: the wait for the ACK below is one,
                # and a second per message costs a pass of the event loop. A full queue
                # makes us wait (the peer's backpressure).
                if await channel.queue.put((item,)):
                    break
                # Its task just retired after idling: a new channel takes over.
            else:  # pragma: no cover - a fresh channel accepts at once
                return SendResult(UNREACHABLE, "could not queue the message")
            await item.done.wait()
        finally:
            if item.result is None:
                item.abandoned = True
        assert item.result is not None
        return item.result

    async def send_many(
        self,
        peer_id: str,
        addrs: Sequence[str],
        envelopes: Sequence[bytes],
        mode: Mode,
        *,
        timeout: float,
    ) -> list[SendResult | None]:
        """Queue envelopes for `peer_id` and wait up to `timeout` s for their ACKs (or None).

        One queueing pass and one wake-up for the lot, where `send` costs both per message.
        """
        results: list[SendResult | None] = [None] * len(envelopes)
        if self._nursery is None or peer_id == self._self_id:
            detail = "network is not running" if self._nursery is None else "this node's id"
            return [SendResult(UNREACHABLE, detail)] * len(envelopes)
        limit = MAX_FRAME_SIZE - _MSG_OVERHEAD
        fitting = [i for i, envelope in enumerate(envelopes) if len(envelope) <= limit]
        for i in set(range(len(envelopes))) - set(fitting):
            results[i] = SendResult("rejected:too_large", "envelope does not fit a frame")
        group = Group(len(fitting))
        items = [Outgoing(envelopes[i], mode, group) for i in fitting]
        try:
            with trio.move_on_after(timeout) as scope:
                await self._queue_all(peer_id, addrs, items)
                if group.remaining:
                    await group.done.wait()
            if scope.cancelled_caught:
                self.counters["send_many_timeouts"] += 1
        finally:
            for item in items:
                if item.result is None:
                    item.abandoned = True
        for i, item in zip(fitting, items, strict=True):
            results[i] = item.result
        return results

    async def _queue_all(self, peer_id: str, addrs: Sequence[str], items: list[Outgoing]) -> None:
        """Put every item on the peer's queue, waiting only while it is full."""
        queued = 0
        for _attempt in range(2):
            try:
                channel = self._channel(peer_id, addrs)
            except ValueError as exc:
                for item in items:
                    item.resolve(UNREACHABLE, f"bad peer id: {_short(exc)}")
                return
            if channel.unreachable_until > trio.current_time():
                self.counters["sends_unreachable"] += len(items) - queued
                for item in items[queued:]:
                    item.resolve(UNREACHABLE, channel.unreachable_detail)
                return
            queued = await channel.queue.put(items, queued)  # waits while full: backpressure
            if queued == len(items):
                return
            # Its task just retired after idling: a new channel takes over the rest.
        for item in items[queued:]:  # pragma: no cover - a fresh channel accepts at once
            item.resolve(UNREACHABLE, "could not queue the message")

    def stats(self) -> dict[str, Any]:
        """Counters and gauges of the message streams."""
        out: dict[str, Any] = dict(sorted(self.counters.items()))
        out["peers"] = len(self._channels)
        out["queued"] = sum(len(c.queue) for c in self._channels.values())
        out["in_flight"] = sum(len(c.pending) for c in self._channels.values())
        out["inbound_streams"] = sum(self._inbound.values())
        out["rejected"] = dict(self.rejected)
        return out

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the per-peer sending tasks until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    # -- outbound -------------------------------------------------------------------------

    def _channel(self, peer_id: str, addrs: Sequence[str]) -> _PeerChannel:
        channel = self._channels.get(peer_id)
        if channel is None:
            assert self._nursery is not None
            peer = ID.from_base58(peer_id)
            channel = _PeerChannel(peer_id, peer, tuple(addrs), self._settings.queue_size)
            self._channels[peer_id] = channel
            self._nursery.start_soon(self._run_channel, channel)
        elif addrs:
            channel.addrs = tuple(addrs)
        return channel

    async def _run_channel(self, channel: _PeerChannel) -> None:
        settings = self._settings
        try:
            while True:
                first: Outgoing | None = None
                with trio.move_on_after(settings.idle_close_s):
                    first = await channel.queue.get()
                if first is None:
                    try:
                        first = channel.queue.get_nowait()  # sent as the timer fired
                    except trio.WouldBlock:
                        return  # idle: retire (senders holding us retry on a new channel)
                if channel.unreachable_until > trio.current_time():
                    self.counters["sends_unreachable"] += 1
                    first.resolve(UNREACHABLE, channel.unreachable_detail)
                    self._fail_queued(channel, channel.unreachable_detail)
                    continue
                stream = await self._open(channel, first)
                if stream is not None:
                    await self._run_stream(channel, stream, first)
        finally:
            # No checkpoint from here on: nothing can be queued between the drain and the
            # close, and senders blocked on a full queue retry on a new channel.
            del self._channels[channel.peer_id]
            detail = channel.unreachable_detail or "message stream closed"
            for item in channel.pending.values():
                self.counters["sends_unreachable"] += 1
                item.resolve(UNREACHABLE, detail)
            channel.pending.clear()
            channel.pending_bytes = 0
            self._fail_queued(channel, detail)
            channel.queue.close()

    def _fail_queued(self, channel: _PeerChannel, detail: str) -> None:
        while True:
            try:
                item = channel.queue.get_nowait()
            except trio.WouldBlock:
                return
            self.counters["sends_unreachable"] += 1
            item.resolve(UNREACHABLE, detail)

    async def _open(self, channel: _PeerChannel, first: Outgoing) -> Any:
        """Open the peer's message stream, dialing if needed; on failure fail what waits."""
        network = self._host.get_network()
        try:
            with trio.fail_after(self._settings.dial_timeout_s):
                if not network.connections.get(channel.peer) and channel.addrs:
                    # py-libp2p refuses for 60 s to redial a peer that failed once; our
                    # own backoff (redial_backoff_s) paces dials instead.
                    network.unblock_peer(channel.peer)
                    addrs = [Multiaddr(a.split("/p2p/")[0]) for a in channel.addrs]
                    await self._host.connect(PeerInfo(channel.peer, addrs))
                stream = await self._host.new_stream(channel.peer, _PROTOCOLS)
        except trio.TooSlowError:
            detail = f"no message stream to {channel.peer_id} within the dial timeout"
        except Exception as exc:  # py-libp2p raises many types here; all mean "not now"
            detail = f"cannot open a message stream: {_short(exc)}"
        else:
            self.counters["streams_opened"] += 1
            return stream
        self.counters["dials_failed"] += 1
        log.debug("peer %s unreachable: %s", channel.peer_id, detail)
        channel.unreachable_until = trio.current_time() + self._settings.redial_backoff_s
        channel.unreachable_detail = detail
        self.counters["sends_unreachable"] += 1
        first.resolve(UNREACHABLE, detail)
        self._fail_queued(channel, detail)
        return None

    async def _run_stream(self, channel: _PeerChannel, stream: Any, first: Outgoing) -> None:
        """Write and read one outbound stream until it idles out or fails."""
        channel.unreachable_detail = ""
        async with trio.open_nursery() as nursery:
            run = _Run(nursery.cancel_scope)
            nursery.start_soon(self._read_acks, channel, stream, run)
            nursery.start_soon(self._watch_acks, channel, run)
            await self._write_loop(channel, stream, first, run)
            nursery.cancel_scope.cancel()
        if run.failure is None:
            self.counters["streams_closed_idle"] += 1
            await self._close(stream)
            return
        self.counters["streams_failed"] += 1
        log.info("message stream to %s failed: %s", channel.peer_id, run.failure)
        await self._reset(stream)
        detail = f"{run.failure}; the message may have been delivered"
        for item in channel.pending.values():
            self.counters["sends_unreachable"] += 1
            item.resolve(UNREACHABLE, detail)
        channel.pending.clear()
        channel.pending_bytes = 0
        channel.window.set()

    async def _write_loop(
        self, channel: _PeerChannel, stream: Any, item: Outgoing, run: _Run
    ) -> None:
        settings = self._settings
        max_count, max_bytes = settings.max_in_flight, settings.max_in_flight_bytes
        pending = channel.pending
        while True:
            # py-libp2p's yamux grows a stream's window up to 16 MiB, so what a peer that
            # stops reading (or answering) can make us send is bounded here, not there.
            while len(pending) >= max_count or channel.pending_bytes >= max_bytes:
                channel.window = trio.Event()
                await channel.window.wait()
            room = min(settings.max_frames_per_write, max_count - len(pending))
            room_bytes = min(settings.max_bytes_per_write, max_bytes - channel.pending_bytes)
            batch, size = [item], len(item.envelope)
            while len(batch) < room and size < room_bytes:
                try:
                    more = channel.queue.get_nowait()
                except trio.WouldBlock:
                    break
                batch.append(more)
                size += len(more.envelope)
            now = trio.current_time()
            parts = []
            for out in batch:
                if out.abandoned:
                    self.counters["abandoned_unsent"] += 1
                    continue
                seq = channel.next_seq
                channel.next_seq = seq + 1
                out.sent_at = now
                pending[seq] = out
                channel.pending_bytes += len(out.envelope)
                parts.append(encode_msg(seq, out.mode, out.envelope))
            if parts:
                try:
                    await stream.write(b"".join(parts))
                except Exception as exc:  # py-libp2p's stream errors have no common base
                    run.fail(f"write failed: {_short(exc)}")
                    return
                self.counters["writes"] += 1
                self.counters["msgs_sent"] += len(parts)
            try:
                item = channel.queue.get_nowait()
                continue
            except trio.WouldBlock:
                pass
            while True:
                next_item: Outgoing | None = None
                with trio.move_on_after(settings.idle_close_s):
                    next_item = await channel.queue.get()
                if next_item is not None:
                    item = next_item
                    break
                if not pending:
                    return  # idle: close the stream; the next message opens a new one

    async def _read_acks(self, channel: _PeerChannel, stream: Any, run: _Run) -> None:
        decoder = FrameDecoder()
        while True:
            try:
                data = await stream.read(self._settings.read_size)
            except Exception as exc:  # EOF, reset, connection closed...
                run.fail(f"stream closed by the peer ({type(exc).__name__})")
                return
            if not data:
                run.fail("stream closed by the peer")
                return
            decoder.feed(data)
            try:
                while (frame := decoder.next_frame()) is not None:
                    if not isinstance(frame, Ack):
                        raise RemoteProtocolError(RejectReason.MALFORMED, "MSG on an ACK stream")
                    self._take_acks(channel, frame)
            except RemoteProtocolError as exc:
                self._bad_frames(channel.peer_id, exc)
                run.fail(f"peer sent bad frames ({exc.reason.value})")
                return
            if not channel.window.is_set():
                channel.window.set()

    def _take_acks(self, channel: _PeerChannel, frame: Ack) -> None:
        pending, freed = channel.pending, 0
        for seq, outcome, detail in frame.entries:
            item = pending.pop(seq, None)
            if item is None:
                # Answers to messages given up on (after a timeout) land here too.
                self.counters["acks_unmatched"] += 1
                continue
            freed += len(item.envelope)
            item.resolve(outcome, detail)
        channel.pending_bytes -= freed
        self.counters["acks_received"] += len(frame.entries)

    async def _watch_acks(self, channel: _PeerChannel, run: _Run) -> None:
        # Reads are never cancelled (py-libp2p can lose data read under a cancelled window
        # update), so a silent peer is detected here, by the age of the oldest waiting message.
        timeout = self._settings.ack_timeout_s
        while True:
            await trio.sleep(timeout / 4)
            if channel.pending:
                oldest = next(iter(channel.pending.values()))
                if trio.current_time() - oldest.sent_at > timeout:
                    run.fail(f"no ACK within {timeout:g} s")
                    return

    # -- inbound --------------------------------------------------------------------------

    async def _serve_inbound(self, stream: Any) -> None:
        """py-libp2p's handler for an inbound message stream (one task per stream)."""
        peer_id = str(stream.muxed_conn.peer_id)
        handler = self._handler
        if handler is None or self._inbound[peer_id] >= self._settings.max_inbound_streams_per_peer:
            self.counters["inbound_refused"] += 1
            await self._reset(stream)
            return
        if self._guard is not None and self._guard.banned(peer_id, trio.current_time()):
            self.counters["inbound_banned"] += 1
            await self._reset(stream)
            return
        self._inbound[peer_id] += 1
        self.counters["inbound_streams"] += 1
        finished = False
        try:
            await self._read_inbound(peer_id, stream, handler)
            finished = True
        except Exception:
            # py-libp2p runs every handler of a connection in one nursery: an exception
            # escaping here would cancel the connection's other streams and stop it from
            # accepting new ones, while the connection itself stays up. Nothing escapes.
            self.counters["inbound_errors"] += 1
            log.exception("message stream from %s failed", peer_id)
        finally:
            self._inbound[peer_id] -= 1
            if not self._inbound[peer_id]:
                del self._inbound[peer_id]
            if not finished:
                # Cancelled (shutdown, or another handler's crash, see above) or failed:
                # tell the peer, so that its messages fail now instead of timing out.
                with trio.CancelScope(shield=True):
                    await self._reset(stream)

    async def _read_inbound(self, peer_id: str, stream: Any, handler: MessageHandler) -> None:
        settings = self._settings
        # A slot is a batch handed to the handler and not yet fully answered and taken by
        # the ACK writer: a peer that reads no ACKs soon stops being read.
        slots = trio.Semaphore(settings.max_unacked_batches)
        outbox = _AckOutbox(slots, self.counters)
        decoder = FrameDecoder()
        failure: str | None = None
        async with trio.open_nursery() as nursery:
            run = _Run(nursery.cancel_scope)
            nursery.start_soon(self._write_acks, stream, outbox, run)
            while True:
                try:
                    data = await stream.read(settings.read_size)
                except Exception as exc:  # EOF or reset: the peer is done with this stream
                    if type(exc).__name__ != "StreamEOF":
                        self.counters["inbound_read_errors"] += 1
                        log.info("message stream from %s ended: %s", peer_id, _short(exc))
                    data = b""
                if not data:
                    break
                decoder.feed(data)
                msgs: list[Msg] = []
                try:
                    while (frame := decoder.next_frame()) is not None:
                        if not isinstance(frame, Msg):
                            raise RemoteProtocolError(RejectReason.MALFORMED, "ACK on a MSG stream")
                        msgs.append(frame)
                except RemoteProtocolError as exc:
                    self._bad_frames(peer_id, exc)
                    failure = f"bad frames ({exc.reason.value})"
                    break
                if msgs:
                    self.counters["msgs_received"] += len(msgs)
                    self.counters["batches_received"] += 1
                    if self._guard is not None:
                        # Over its rate: read no more from this peer until it is back under.
                        delay = self._guard.peer_delay(peer_id, len(msgs), trio.current_time())
                        if delay > 0:
                            await trio.sleep(delay)
                    try:  # the read above was the schedule point; wait only when we must
                        slots.acquire_nowait()
                    except trio.WouldBlock:
                        await slots.acquire()
                    try:
                        await handler(_Batch(peer_id, msgs, outbox))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        failure = "the node stopped taking messages"
                        break
            if failure is None:
                # The peer closed its side: answer what we hold, then close ours; bounded,
                # in case the node never answers or the peer never reads.
                nursery.cancel_scope.deadline = trio.current_time() + settings.drain_timeout_s
                for _ in range(settings.max_unacked_batches):
                    await slots.acquire()
                outbox.close()  # the writer writes what is left, then returns
            else:
                run.fail(failure)
        outbox.close()  # answers that come after this are counted as dropped
        if run.failure is not None or nursery.cancel_scope.cancelled_caught:
            await self._reset(stream)
        else:
            await self._close(stream)

    async def _write_acks(self, stream: Any, outbox: _AckOutbox, run: _Run) -> None:
        while True:
            entries = await outbox.take()
            if entries is None:
                return
            if not entries:
                continue
            data = b"".join(
                encode_ack(entries[i : i + MAX_ACK_ENTRIES])
                for i in range(0, len(entries), MAX_ACK_ENTRIES)
            )
            try:
                await stream.write(data)
            except Exception as exc:  # py-libp2p's stream errors have no common base
                run.fail(f"ACK write failed: {_short(exc)}")
                return
            self.counters["ack_writes"] += 1

    # -- shared ---------------------------------------------------------------------------

    def _bad_frames(self, peer_id: str, exc: RemoteProtocolError) -> None:
        self.rejected[exc.reason.value] += 1
        log.info("peer %s sent bad message frames, stream reset: %s", peer_id, exc)
        if self._guard is not None:
            self._guard.penalise(peer_id, "bad_frames", trio.current_time())

    async def _reset(self, stream: Any) -> None:
        with trio.move_on_after(1.0):
            try:
                await stream.reset()
            except Exception as exc:  # already gone: nothing left to reset
                log.debug("stream reset failed: %s", _short(exc))

    async def _close(self, stream: Any) -> None:
        with trio.move_on_after(1.0):
            try:
                await stream.close()
            except Exception as exc:  # already gone: nothing left to close
                log.debug("stream close failed: %s", _short(exc))
