"""The summary service over an in-memory network: pushes, deltas, rejections, byte budget."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import trio
import trio.testing

from meshd.guard import PeerGuard
from meshd.net.types import PeerSnapshot, RequestError, RequestHandler
from meshd.summaries import Summaries, SummarySettings
from protocol.bloom import BloomFilter
from protocol.ids import AgentId, SigningKey
from protocol.records import NodeSummary
from protocol.summary import (
    PUSH_FULL,
    SUMMARY_PROTOCOL,
    decode_ack,
    encode_push,
    sized_filter,
)


def ids(n: int, salt: str) -> list[bytes]:
    return [hashlib.sha256(f"{salt}/{i}".encode()).digest() for i in range(n)]


@dataclass
class Row:
    id: bytes
    kind: str = "echo"
    caps: tuple[str, ...] = ()


class FakeStore:
    def __init__(self, runtime: FakeRuntime) -> None:
        self.runtime = runtime

    async def list_agents(self, *, limit: int, after: bytes | None = None) -> list[Row]:
        rows = sorted(self.runtime.agents.items())
        if after is not None:
            rows = [r for r in rows if r[0] > after]
        return [Row(raw, caps=caps) for raw, caps in rows[:limit]]


class FakeRuntime:
    def __init__(self, key: SigningKey) -> None:
        self.node_key = key
        self.agents: dict[bytes, tuple[str, ...]] = {}
        self.store = FakeStore(self)

    def agent_ids(self) -> Iterator[bytes]:
        return iter(list(self.agents))

    def hosts(self, agent: AgentId) -> bool:
        return agent.raw in self.agents


class Wire:
    """Connects fake networks: a request is the handler call of the peer it is for."""

    def __init__(self) -> None:
        self.nets: dict[str, FakeNet] = {}


class FakeNet:
    def __init__(self, wire: Wire, key: SigningKey) -> None:
        self.wire = wire
        self.peer_id = key.node_id.text
        self.handlers: dict[str, RequestHandler] = {}
        self.peers: set[str] = set()
        wire.nets[self.peer_id] = self

    def listen_addrs(self) -> list[str]:
        return [f"/ip4/127.0.0.1/tcp/1/p2p/{self.peer_id}"]

    def connected_peers(self) -> list[PeerSnapshot]:
        return [PeerSnapshot(p, (), 0.0) for p in sorted(self.peers)]

    def peer_addrs(self, peer_id: str) -> list[str]:
        return []

    def routing_table_size(self) -> int:
        return len(self.wire.nets) - 1  # everyone else on the wire

    def set_request_handler(self, protocol: str, handler: RequestHandler | None) -> None:
        if handler is None:
            self.handlers.pop(protocol, None)
        else:
            self.handlers[protocol] = handler

    async def request(
        self, peer_id: str, addrs: Any, protocol: str, payload: bytes, *, timeout: float
    ) -> bytes:
        other = self.wire.nets.get(peer_id)
        if other is None or protocol not in other.handlers:
            raise RequestError("unreachable")
        await trio.sleep(0.01)
        return await other.handlers[protocol](self.peer_id, payload)


def connect(a: FakeNet, b: FakeNet) -> None:
    a.peers.add(b.peer_id)
    b.peers.add(a.peer_id)


SETTINGS = SummarySettings(
    interval_s=5.0, tick_s=0.5, neighbour_bytes_per_s=200.0, min_gap_s=1.0, two_hop=True
)


def node(wire: Wire, name: str, agents: int) -> tuple[Summaries, FakeRuntime, FakeNet]:
    key = SigningKey.from_seed(hashlib.sha256(name.encode()).digest())
    runtime = FakeRuntime(key)
    runtime.agents = {
        raw: ("translate",) if i < 2 else () for i, raw in enumerate(ids(agents, name))
    }
    net = FakeNet(wire, key)
    return Summaries(runtime, net, SETTINGS), runtime, net  # type: ignore[arg-type]


async def test_summaries_converge_follow_changes_and_find_caps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = Wire()
    a, ra, na = node(wire, "a", 300)
    b, rb, nb = node(wire, "b", 200)
    c, rc, nc = node(wire, "c", 100)
    connect(na, nb)
    connect(nb, nc)  # a and c are two hops apart
    async with trio.open_nursery() as nursery:
        for service in (a, b, c):
            await nursery.start(service.serve)
        await trio.sleep(3 * SETTINGS.interval_s)
        target = AgentId(ids(100, "c")[5])
        assert a.candidates(target) == [(nb.peer_id, 1)]  # through b's level 1
        # c hosts it; a's level 2 (b's neighbours, seen from a) matches too, one hop further.
        assert b.candidates(target) == [(nc.peer_id, 0), (na.peer_id, 2)]
        located = await a.ask_locate(nb.peer_id, target)
        assert [(f.peer, f.level) for f in located] == [(nc.peer_id, 0)]
        found = await a.find("translate", 100)
        assert {(f.agent, f.node) for f in found} == {
            (raw, net.peer_id)
            for raw, net, rt in (
                (r, n, rt) for rt, n in ((ra, na), (rb, nb), (rc, nc)) for r in rt.agents
            )
            if rt.agents[raw]
        }
        stats = b.stats()
        assert stats["full_sent"] >= 2
        # A change travels as a delta against what each neighbour acknowledged.
        fresh = ids(1, "fresh")[0]
        assert (nc.peer_id, 0) not in b.candidates(AgentId(fresh))  # answers are kept...
        rc.agents[fresh] = ()
        c.changed()
        await trio.sleep(SETTINGS.interval_s)
        assert b.candidates(AgentId(fresh))[0] == (nc.peer_id, 0)
        assert c.stats()["deltas_sent"] >= 1
        del rc.agents[fresh]
        c.changed()
        await trio.sleep(SETTINGS.interval_s)
        assert (nc.peer_id, 0) not in b.candidates(AgentId(fresh))
        # ...until a summary changes, and until a neighbour gone for the grace period goes.
        assert (nc.peer_id, 0) in b.candidates(target)
        nb.peers.discard(nc.peer_id)
        nc.peers.discard(nb.peer_id)
        await trio.sleep(5 * SETTINGS.interval_s)
        assert all(peer != nc.peer_id for peer, _level in b.candidates(target))
        nursery.cancel_scope.cancel()


async def test_churn_cannot_raise_traffic_over_the_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = Wire()
    a, ra, na = node(wire, "a", 2000)
    b, _, nb = node(wire, "b", 10)
    connect(na, nb)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        await trio.sleep(SETTINGS.interval_s)
        start, start_bytes = trio.current_time(), a.stats()["bytes_out"]
        for step in range(600):  # heavy churn: 20 agents replaced every 0.1 s for a minute
            for raw in list(ra.agents)[:20]:
                del ra.agents[raw]
            ra.agents.update(dict.fromkeys(ids(20, f"churn{step}"), ()))
            a.changed()
            await trio.sleep(0.1)
        elapsed = trio.current_time() - start
        sent = a.stats()["bytes_out"] - start_bytes
        budget = SETTINGS.neighbour_bytes_per_s
        # The allowance: the burst (rate x interval) plus one push of debt, then the rate.
        largest = len(a._history.current.encoded) + 64  # type: ignore[union-attr]
        assert sent <= budget * (elapsed + SETTINGS.interval_s) + largest
        assert sent > 0
        nursery.cancel_scope.cancel()


def _summary(key: SigningKey, seq: int, bits: int | None = None) -> NodeSummary:
    agents = sized_filter(10, 0.01) if bits is None else BloomFilter(bits, 7, 0)
    agents.add_many(ids(10, "x"))
    return NodeSummary.create(
        key, seq=seq, created_ms=1, agents=agents, caps=sized_filter(1, 0.01), counts={}
    )


async def test_invalid_summaries_are_rejected_counted_and_penalised() -> None:
    wire = Wire()
    service, _, _ = node(wire, "me", 10)
    peer = SigningKey.from_seed(b"\x09" * 32)
    other = SigningKey.from_seed(b"\x0a" * 32)
    handler = service._on_summary_request
    pid = peer.node_id.text
    guard = PeerGuard()
    service.on_invalid = lambda who: guard.penalise(who, "bad_summary", trio.current_time())

    async def push(summary_bytes: bytes) -> int | None:
        return decode_ack(await handler(pid, encode_push(PUSH_FULL, summary_bytes)))

    assert await push(_summary(peer, 5).encoded) == 5
    assert service.stats()["neighbours"] == 1
    assert service.candidates(AgentId(ids(10, "x")[0])) == [(pid, 0)]
    forged = bytearray(_summary(peer, 6).encoded)
    forged[10] ^= 1  # inside the signature
    assert await push(bytes(forged)) is None
    assert await push(_summary(other, 7).encoded) is None  # signed by someone else
    assert await push(_summary(peer, 8, bits=192).encoded) is None  # 3 words: not the family
    assert decode_ack(await handler(pid, b"\xff" * (SETTINGS.max_bytes + 1))) is None
    assert service.stats()["rejected"] == {
        "bad_signature": 1,
        "wrong_node": 1,
        "wrong_params": 1,
        "too_large": 1,
    }
    assert service.stats()["penalised"] == 0
    assert await push(b"\x00") is None  # the fifth: penalised
    stats = service.stats()
    assert stats["penalised"] == 1
    assert stats["banned"] == 1
    assert stats["neighbours"] == 0  # its summary no longer routes anything
    assert await push(_summary(peer, 9).encoded) is None  # ignored while banned
    assert service.stats()["rejected"]["penalised"] == 1
    assert service.candidates(AgentId(ids(10, "x")[0])) == []
    # The node's peer guard scored each invalid summary against the peer too.
    assert guard.stats(trio.current_time())["penalties"] == {"bad_summary": 5}


async def test_a_neighbour_pushing_too_fast_is_rate_limited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = Wire()
    service, _, _ = node(wire, "me", 10)
    peer = SigningKey.from_seed(b"\x09" * 32)
    handler = service._on_summary_request
    burst = 4 * SETTINGS.neighbour_bytes_per_s * SETTINGS.interval_s
    seq, sent = 1, 0
    while sent <= burst:
        payload = encode_push(PUSH_FULL, _summary(peer, seq).encoded)
        assert decode_ack(await handler(peer.node_id.text, payload)) == seq
        seq, sent = seq + 1, sent + len(payload)
    payload = encode_push(PUSH_FULL, _summary(peer, seq).encoded)
    assert decode_ack(await handler(peer.node_id.text, payload)) is None
    assert service.stats()["rejected"] == {"rate_limited": 1}
    await trio.sleep(SETTINGS.interval_s)  # the allowance refills at its rate
    assert decode_ack(await handler(peer.node_id.text, payload)) == seq


async def test_locate_requests_need_a_32_byte_id() -> None:
    wire = Wire()
    service, _, _ = node(wire, "me", 10)
    answer = await service._on_summary_request("peer", b"\xa2\x00\x02\x01\x41\x00")
    assert decode_ack(answer) is None
    assert service.stats()["rejected"] == {"malformed": 1}
    assert SUMMARY_PROTOCOL == "/meshd/summary/1.0.0"


async def test_find_falls_back_to_dht_providers(autojump_clock: trio.testing.MockClock) -> None:
    """A node no summary reaches is found through the provider records of the tag."""
    wire = Wire()
    a, _, _ = node(wire, "a", 5)
    far, rfar, nfar = node(wire, "far", 5)  # not connected to a at all
    announced: dict[str, list[str]] = {}

    async def provide(key: str) -> bool:
        announced.setdefault(key, []).append(nfar.peer_id)
        return True

    async def find_providers(key: str, count: int) -> list[str]:
        return announced.get(key, [])[:count]

    far._provide = provide
    a._find_providers = find_providers
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        await nursery.start(far.serve)
        # With no neighbour to judge by, it announces after waiting an interval for some.
        await trio.sleep(SETTINGS.interval_s + 1)
        assert far.stats()["caps_provided"] == 1  # its one tag, "translate"
        found = await a.find("translate", 10)
        tagged = {raw for raw, caps in rfar.agents.items() if caps}
        assert {f.agent for f in found} >= tagged
        assert {f.node for f in found if f.agent in tagged} == {nfar.peer_id}
        assert a.stats()["found_via"]["dht"] == len(tagged)
        nursery.cancel_scope.cancel()
