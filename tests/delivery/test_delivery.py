"""Delivery between in-process nodes on loopback: real libp2p hosts, stores and runtimes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr

from meshd.clock import wall_ms
from meshd.delivery import TIMEOUT, Delivery, DeliverySettings
from meshd.guard import GuardSettings, PeerGuard
from meshd.net.discovery import DiscoverySettings
from meshd.net.libp2p_net import Libp2pNetwork
from meshd.net.streams import StreamSettings
from meshd.net.types import UNREACHABLE, InboundBatch, NetEvent
from meshd.runtime.runtime import Runtime
from meshd.store import Store
from protocol.cbor import encode_signed_map
from protocol.envelope import ENVELOPE_DOMAIN, Envelope
from protocol.frames import MSG_PROTOCOL_ID, Ack, AckEntry, FrameDecoder, Mode, encode_msg
from protocol.ids import AgentId, SigningKey
from tests.runtime import kinds_for_tests as kinds

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
QUIET = DiscoverySettings(join_jitter_s=0.0)
STEP_S = 15.0
REC = "tests.runtime.kinds_for_tests:Recorder"


@dataclass
class Node:
    """One in-process node: network, runtime and delivery."""

    net: Libp2pNetwork
    runtime: Runtime
    delivery: Delivery

    @property
    def addrs(self) -> list[str]:
        return self.net.listen_addrs()


@asynccontextmanager
async def running_nodes(
    tmp_path: Path,
    count: int = 2,
    *,
    streams: StreamSettings | None = None,
    settings: DeliverySettings | None = None,
    limits: GuardSettings | None = None,
) -> AsyncIterator[list[Node]]:
    """Start `count` nodes, each with its own store, runtime and delivery service.

    With `limits`, each node's network and delivery share a guard, as `meshd run` builds them.
    """
    kinds.reset()
    events, _unread = trio.open_memory_channel[NetEvent](10_000)
    async with AsyncExitStack() as stack:
        stores = [
            await stack.enter_async_context(Store(tmp_path / f"node{i}.db")) for i in range(count)
        ]
        async with trio.open_nursery() as nursery:
            nodes = []
            for store in stores:
                seed = os.urandom(32)
                guard = PeerGuard(limits) if limits is not None else None
                net = Libp2pNetwork(
                    seed, listen=[LOOPBACK], discovery=QUIET, messages=streams, guard=guard
                )
                runtime = Runtime(store, SigningKey(seed))
                delivery = Delivery(runtime, net, settings=settings, guard=guard)
                await nursery.start(net.serve, events)
                await nursery.start(runtime.serve)
                await nursery.start(delivery.serve)
                nodes.append(Node(net, runtime, delivery))
            try:
                yield nodes
            finally:
                nursery.cancel_scope.cancel()


async def until(check: Callable[[], Any], what: str) -> None:
    """Poll `check` until true; fail after STEP_S (bounded, never a wall-clock assertion)."""
    with trio.move_on_after(STEP_S):
        while not check():  # noqa: ASYNC110 - polling keeps the tests off internals
            await trio.sleep(0.01)
        return
    pytest.fail(f"timed out waiting for {what}")


async def spawn(node: Node, kind: str) -> AgentId:
    (info,) = await node.runtime.spawn(kind)
    return AgentId.from_did(info["id"])


async def raw_stream(sender: Node, receiver: Node) -> Any:
    """A raw `/meshd/msg/1.0.0` stream from `sender`'s host, to write frames by hand."""
    host = sender.net.host
    await host.connect(info_from_p2p_addr(Multiaddr(receiver.addrs[0])))
    return await host.new_stream(ID.from_base58(receiver.net.peer_id), [TProtocol(MSG_PROTOCOL_ID)])


async def read_acks(stream: Any, count: int) -> dict[int, AckEntry]:
    decoder = FrameDecoder()
    got: dict[int, AckEntry] = {}
    with trio.fail_after(STEP_S):
        while len(got) < count:
            decoder.feed(await stream.read(65536))
            for frame in decoder.frames():
                assert isinstance(frame, Ack)
                got.update((entry.seq, entry) for entry in frame.entries)
    return got


async def read_until_closed(stream: Any) -> None:
    """Read until the stream fails (the peer reset or closed it)."""
    while True:
        assert await stream.read(65536) == b""


def oversized(key: SigningKey, to: AgentId, now_ms: int) -> bytes:
    """A signed envelope just over the 64 KiB envelope limit (Envelope.create refuses it)."""
    fields: dict[int, Any] = {1: 1, 2: key.public_key, 3: to.raw, 4: os.urandom(16)}
    fields.update({5: now_ms, 6: now_ms + 60_000, 7: "msg", 8: b""})
    base = len(encode_signed_map(ENVELOPE_DOMAIN, fields, key))
    fields[8] = b"x" * (64 * 1024 + 200 - base)
    frame = encode_signed_map(ENVELOPE_DOMAIN, fields, key)
    assert 64 * 1024 < len(frame) < 64 * 1024 + 512
    return frame


async def test_echo_round_trip_across_nodes(tmp_path: Path) -> None:
    async with running_nodes(tmp_path) as (a, b):
        echo = await spawn(b, "echo")
        operator = await a.runtime.operator()
        # No router yet: A is told where the echo agent lives; B learns where the request
        # came from and sends the reply back there.
        a.delivery.learn(echo, b.net.peer_id, b.addrs)
        with trio.fail_after(STEP_S):
            result = await a.runtime.send_as(operator, echo, {"hello": "mesh"}, wait=True)
        assert result["outcome"] == "delivered"
        assert result["reply"]["body"] == {"hello": "mesh"}
        assert result["reply"]["from"] == echo.did
        # A second request reuses the streams both ways.
        with trio.fail_after(STEP_S):
            again = await a.runtime.send_as(operator, echo, [1, 2, 3], wait=True)
        assert again["reply"]["body"] == [1, 2, 3]
        assert a.delivery.stats()["sent"]["delivered"] == 2
        assert b.delivery.stats()["received"]["delivered"] == 2
        # The replies' ACKs reach B after A handed the replies to their waiters.
        await until(lambda: b.delivery.stats()["sent"].get("delivered") == 2, "reply ACKs")
        assert a.net.stats()["messages"]["streams_opened"] == 1
        assert b.net.stats()["messages"]["streams_opened"] == 1
        # An agent nobody knows the location of is reported, not waited for.
        stranger = SigningKey.generate().agent_id
        lost = await a.runtime.send_as(operator, stranger, "anyone?")
        assert lost["outcome"] == UNREACHABLE


def _yamux_streams(node: Node) -> list[Any]:
    """The yamux streams under every libp2p stream of `node`'s connections."""
    conns = node.net.host.get_network().connections.values()
    return [s.muxed_stream for conn_list in conns for conn in conn_list for s in conn.streams]


async def test_messages_one_at_a_time_cost_no_window_update_per_read(tmp_path: Path) -> None:
    # At light load every read is one message (or one ACK): py-libp2p's default would answer
    # each with a yamux WINDOW_UPDATE, a second write per message both ways. meshd.net.streams
    # turns that off; credit then goes back once half a window is read, go-yamux's way.
    async with running_nodes(tmp_path) as (a, b):
        rec = await spawn(b, REC)
        operator = await a.runtime.operator()
        a.delivery.learn(rec, b.net.peer_id, b.addrs)
        for n in range(40):
            with trio.fail_after(STEP_S):
                result = await a.runtime.send_as(operator, rec, n)
            assert result["outcome"] == "delivered"
        streams = [s for node in (a, b) for s in _yamux_streams(node)]
        assert streams
        assert sum(s._window_update_bytes_read_only for s in streams) == 0
        assert a.net.stats()["messages"]["writes"] == 40
        assert b.net.stats()["messages"]["ack_writes"] == 40


async def test_send_many_queues_per_peer_at_once_and_reports_in_order(tmp_path: Path) -> None:
    async with running_nodes(tmp_path) as (a, b):
        fan, local = await spawn(a, REC), await spawn(a, REC)
        far = [await spawn(b, REC) for _ in range(3)]
        ghost = SigningKey.generate().agent_id  # A is told it lives on B; B never hosted it
        for agent in (*far, ghost):
            a.delivery.learn(agent, b.net.peer_id, b.addrs)
        targets = [far[0], local, far[1], ghost, far[2], far[0]]
        operator = await a.runtime.operator()
        with trio.fail_after(STEP_S):
            await a.runtime.send_as(operator, fan, {"fanout": [t.did for t in targets]})
        await until(lambda: any(k == "fanout" for _, k, _ in kinds.RECEIVED), "the fan-out")
        (outcomes,) = [body for _, kind, body in kinds.RECEIVED if kind == "fanout"]
        assert outcomes == [
            "delivered",
            "delivered",
            "delivered",
            "rejected:wrong_recipient",
            "delivered",
            "delivered",
        ]

        # Each message reached its agent once: bodies are the messages' positions.
        def numbered() -> list[tuple[str, int]]:
            return sorted((agent, body) for agent, _, body in kinds.RECEIVED if type(body) is int)

        await until(lambda: len(numbered()) == 5, "deliveries")
        got = numbered()
        expected = [(t.did, n) for n, t in enumerate(targets) if t != ghost]
        assert got == sorted(expected)
        # The five messages for B were queued in one pass: one stream, one write.
        streams = a.net.stats()["messages"]
        assert (streams["streams_opened"], streams["msgs_sent"], streams["writes"]) == (1, 5, 1)
        assert a.delivery.stats()["sent"]["delivered"] == 4
        assert a.delivery.stats()["sent"]["rejected:wrong_recipient"] == 1


async def test_bad_envelopes_are_rejected_counted_and_answered(tmp_path: Path) -> None:
    async with running_nodes(tmp_path) as (a, b):
        rec = await spawn(b, REC)
        key, now = SigningKey.generate(), wall_ms()
        honest = Envelope.create(key, rec, "msg", "first", now_ms=now).frame
        forged = bytearray(Envelope.create(key, rec, "msg", "forged", now_ms=now).frame)
        forged[10] ^= 1  # inside the signature
        expired = Envelope.create(key, rec, "msg", "old", now_ms=now - 120_000).frame
        future = Envelope.create(key, rec, "msg", "soon", now_ms=now + 120_000).frame
        elsewhere = Envelope.create(key, SigningKey.generate().agent_id, "msg", "?", now_ms=now)
        cases = [
            (honest, "delivered"),
            (bytes(forged), "rejected:bad_signature"),
            (honest, "rejected:replayed"),
            (expired, "rejected:expired"),
            (future, "rejected:from_future"),
            (oversized(key, rec, now), "rejected:too_large"),
            (elsewhere.frame, "rejected:wrong_recipient"),
            (b"\xa1\x00\x00", "rejected:malformed"),
            (Envelope.create(key, rec, "msg", "last", now_ms=now).frame, "delivered"),
        ]
        stream = await raw_stream(a, b)
        await stream.write(
            b"".join(encode_msg(seq, Mode.AT_MOST_ONCE, env) for seq, (env, _) in enumerate(cases))
        )
        acks = await read_acks(stream, len(cases))
        assert [acks[seq].outcome for seq in range(len(cases))] == [want for _, want in cases]
        assert "signature" in acks[1].detail
        rejected = b.delivery.stats()["rejected"]
        for reason in ("bad_signature", "replayed", "expired", "from_future", "too_large"):
            assert rejected[reason] == 1, reason
        assert rejected["wrong_recipient"] == 1
        assert rejected["malformed"] == 1
        # Only the honest messages reached the agent, and the stream still carries more.
        await until(lambda: len(kinds.RECEIVED) == 2, "two honest messages handled")
        assert [body for _, _, body in kinds.RECEIVED] == ["first", "last"]
        more = Envelope.create(key, rec, "msg", "more", now_ms=wall_ms()).frame
        await stream.write(encode_msg(100, Mode.AT_LEAST_ONCE, more))
        assert (await read_acks(stream, 1))[100].outcome == "delivered"
        await stream.close()


async def test_an_at_least_once_retry_is_answered_delivered_and_handled_once(
    tmp_path: Path,
) -> None:
    # The sender lost our ACK (a partition, a broken stream) and sends the same message
    # again: the answer must be `delivered` (else it gives up on a message we have), and
    # the agent must not see it twice. At most once, the same copy is a replay.
    async with running_nodes(tmp_path) as (a, b):
        rec = await spawn(b, REC)
        key = SigningKey.generate()
        frame = Envelope.create(key, rec, "msg", "once", now_ms=wall_ms()).frame
        stream = await raw_stream(a, b)
        await stream.write(encode_msg(0, Mode.AT_LEAST_ONCE, frame))
        assert (await read_acks(stream, 1))[0].outcome == "delivered"
        await stream.write(encode_msg(1, Mode.AT_LEAST_ONCE, frame))
        assert (await read_acks(stream, 1))[1].outcome == "delivered"
        await stream.write(encode_msg(2, Mode.AT_MOST_ONCE, frame))
        assert (await read_acks(stream, 1))[2].outcome == "rejected:replayed"
        await until(lambda: len(kinds.RECEIVED) == 1, "the message handled")
        await trio.sleep(0.2)
        assert [body for _, _, body in kinds.RECEIVED] == ["once"]
        assert b.runtime.stats_dict()["duplicates"] >= 1
        await stream.close()


async def test_garbage_resets_the_stream_and_the_node_keeps_serving(tmp_path: Path) -> None:
    async with running_nodes(tmp_path) as (a, b):
        rec = await spawn(b, REC)
        for garbage, reason in [
            (b"\xff\xff\xff\xff", "too_large"),  # a hostile length prefix
            (b"\x03\x01\x02\x03", "malformed"),  # a frame that is not CBOR
            (b"\x02\x81\x01", "malformed"),  # an ACK sent to the listener
        ]:
            stream = await raw_stream(a, b)
            await stream.write(garbage)
            with trio.fail_after(STEP_S), pytest.raises(StreamError):
                await read_until_closed(stream)
            assert b.net.stats()["messages"]["rejected"][reason] >= 1
        assert sum(b.net.stats()["messages"]["rejected"].values()) == 3
        # The node still takes honest messages, from the same peer, on a new stream.
        operator = await a.runtime.operator()
        a.delivery.learn(rec, b.net.peer_id, b.addrs)
        with trio.fail_after(STEP_S):
            result = await a.runtime.send_as(operator, rec, "still here")
        assert result["outcome"] == "delivered"
        await until(lambda: kinds.RECEIVED, "the honest message handled")


async def test_a_receiver_that_stops_reading_blocks_senders_not_memory(tmp_path: Path) -> None:
    streams = StreamSettings(queue_size=8, max_in_flight_bytes=64 * 1024)
    async with running_nodes(tmp_path, streams=streams) as (a, c):
        gate = trio.Event()

        async def stalled(batch: InboundBatch) -> None:
            # Holding the handler stops this stream's reader: nothing more is read.
            await gate.wait()
            batch.ack([AckEntry(m.seq, "delivered") for m in batch.msgs])

        c.net.set_message_handler(stalled)
        target = SigningKey.generate().agent_id
        a.delivery.learn(target, c.net.peer_id, c.addrs)
        key, senders = SigningKey.generate(), 100
        body = b"p" * 8000  # 100 x 8 KB: well over yamux's 256 KiB window
        outcomes: list[str] = []

        async def one() -> None:
            envelope = Envelope.create(key, target, "msg", body, now_ms=wall_ms())
            outcomes.append((await a.delivery.send(envelope, reliable=False)).outcome)

        async with trio.open_nursery() as nursery:
            for _ in range(senders):
                nursery.start_soon(one)
            stats = a.net.stats
            # The queue fills at once; the stream opens (a dial) and starts writing after.
            await until(
                lambda: stats()["messages"]["queued"] == 8
                and stats()["messages"].get("msgs_sent", 0) > 0,
                "the peer's queue to fill and the stream to be written",
            )
            await trio.sleep(0.2)
            sent = stats()["messages"]
            # Bounded: 64 KiB unanswered (one message over at most) plus the queue of 8;
            # the other senders wait.
            assert sent["queued"] == 8
            assert sent["msgs_sent"] == sent["in_flight"] <= 9
            assert outcomes == []
            gate.set()
        assert outcomes == ["delivered"] * senders


async def test_timeout_unreachable_and_reopening(tmp_path: Path) -> None:
    settings = DeliverySettings(send_timeout_s=1.0)
    async with running_nodes(tmp_path, 3, settings=settings) as (a, b, c):
        rec = await spawn(b, REC)
        a.delivery.learn(rec, b.net.peer_id, b.addrs)
        lost = SigningKey.generate().agent_id
        a.delivery.learn(lost, c.net.peer_id, c.addrs)
        key = SigningKey.generate()

        def message(to: AgentId, text: str) -> Envelope:
            return Envelope.create(key, to, "msg", text, now_ms=wall_ms())

        # C takes messages and never answers: the sender's deadline says timeout.
        async def never(batch: InboundBatch) -> None:
            await trio.sleep_forever()

        c.net.set_message_handler(never)
        report = await a.delivery.send(message(lost, "one"), reliable=False)
        assert report.outcome == TIMEOUT
        assert report.detail.startswith("no answer from")
        # C goes away while a message waits for its ACK: it fails as unreachable at once.
        results: list[str] = []

        async def waiting() -> None:
            # At-most-once, so the report is the stream's outcome itself (an at-least-once
            # send would say `queued` and leave the message to the outbox's retries).
            results.append((await a.delivery.send(message(lost, "two"), reliable=False)).outcome)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiting)
            await until(lambda: a.net.stats()["messages"]["in_flight"] == 2, "both in flight")
            await c.net.close()
        assert results == [UNREACHABLE]
        assert a.net.stats()["messages"]["streams_failed"] == 1
        # B drops every connection (as a restart would); the next message dials again and
        # opens a new stream.
        assert (await a.delivery.send(message(rec, "before"), reliable=False)).ok
        await b.net.close()
        await until(lambda: a.net.stats()["messages"]["streams_failed"] == 2, "the stream to fail")
        assert (await a.delivery.send(message(rec, "after"), reliable=False)).ok
        assert a.net.stats()["messages"]["streams_opened"] == 3
        await until(lambda: len(kinds.RECEIVED) == 2, "both messages handled")
