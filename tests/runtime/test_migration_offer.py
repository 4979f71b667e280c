"""Migration in-process: the offer's strict validation, and two runtimes over a fake network."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import cbor2
import pytest
import trio

from meshd.migration import (
    MAX_OFFER_BYTES,
    MIGRATE_PROTOCOL,
    MigrationError,
    MigrationOffer,
    MigrationPolicy,
    Migrator,
    OfferRefused,
    accept_any,
    build_offer,
    decode_answer,
    decode_offer,
)
from meshd.net.types import Network, RequestError, RequestHandler
from meshd.runtime.lifecycle import LifecycleError, State
from meshd.runtime.runtime import Runtime, RuntimeSettings, UnknownAgent
from meshd.runtime.sdk import DeliveryReport
from meshd.store import Store
from protocol.envelope import Envelope
from protocol.ids import AgentId, SigningKey
from protocol.records import BirthCert, Provenance
from tests.runtime import kinds_for_tests as kinds
from tests.runtime.test_runtime import Clock, settle

KEY_A = SigningKey.from_seed(b"A" * 32)
KEY_B = SigningKey.from_seed(b"B" * 32)
CLIENT = SigningKey.from_seed(b"C" * 32)
SLOW = "tests.runtime.kinds_for_tests:Slow"


class FakeNetwork:
    """Just the request side of a `Network`: requests go straight to the peer's handler."""

    def __init__(self, key: SigningKey, peers: dict[str, FakeNetwork]) -> None:
        self.peer_id = key.node_id.text
        self.peers = peers
        self.handlers: dict[str, RequestHandler] = {}
        self.gate: trio.Event | None = None  # when set, requests wait for it
        self.down = False
        peers[self.peer_id] = self

    def peer_addrs(self, peer_id: str) -> list[str]:
        return ["/ip4/127.0.0.1/tcp/1"] if peer_id in self.peers else []

    def set_request_handler(self, protocol: str, handler: RequestHandler | None) -> None:
        if handler is None:
            self.handlers.pop(protocol, None)
        else:
            self.handlers[protocol] = handler

    async def request(
        self, peer_id: str, addrs: Sequence[str], protocol: str, payload: bytes, *, timeout: float
    ) -> bytes:
        peer = self.peers[peer_id]
        if peer.gate is not None:
            await peer.gate.wait()
        if peer.down:
            raise RequestError("connection refused")
        with trio.fail_after(timeout):
            return await peer.handlers[protocol](self.peer_id, payload)


class Bridge:
    """A messenger that hands every message to whichever runtime hosts its recipient."""

    def __init__(self, runtimes: list[Runtime]) -> None:
        self.runtimes = runtimes

    async def send(self, envelope: Envelope, *, reliable: bool) -> DeliveryReport:
        for runtime in self.runtimes:
            assert isinstance(envelope.recipient, AgentId)
            if runtime.hosts(envelope.recipient):
                outcome = await runtime.deliver(envelope, reliable=reliable)
                return DeliveryReport(envelope.msg_id, outcome)
        return DeliveryReport(envelope.msg_id, "not_here")

    async def send_many(self, envelopes: Sequence[Envelope]) -> list[DeliveryReport]:
        raise AssertionError("not used")

    async def publish(self, envelope: Envelope) -> None:
        raise AssertionError("not used")

    async def subscribe(self, topic: str, agent: AgentId) -> None:
        raise AssertionError("not used")


class Moved:
    """The publisher's `moved` hook, recorded."""

    def __init__(self) -> None:
        self.agents: list[AgentId] = []

    def moved(self, agent: AgentId) -> None:
        self.agents.append(agent)


@asynccontextmanager
async def two_nodes(
    tmp_path: Path, policy: MigrationPolicy = accept_any, name: str = "n"
) -> AsyncIterator[tuple[Migrator, Migrator, Moved]]:
    """Runtimes A and B, each with a migrator; B's publisher hook is recorded."""
    kinds.reset()
    peers: dict[str, FakeNetwork] = {}
    moved = Moved()
    async with (
        Store(tmp_path / f"{name}-a.db") as store_a,
        Store(tmp_path / f"{name}-b.db") as store_b,
        trio.open_nursery() as nursery,
    ):
        runtimes = []
        migrators = []
        for store, key in ((store_a, KEY_A), (store_b, KEY_B)):
            runtime = Runtime(store, key, RuntimeSettings(), clock=Clock())
            await nursery.start(runtime.serve)
            network = cast(Network, FakeNetwork(key, peers))
            migrator = Migrator(runtime, network, moved, policy=policy, timeout_s=5.0)
            await nursery.start(migrator.serve)
            runtimes.append(runtime)
            migrators.append(migrator)
        bridge = Bridge(runtimes)
        for runtime in runtimes:
            runtime.messenger = bridge
        yield migrators[0], migrators[1], moved
        nursery.cancel_scope.cancel()


def rt(migrator: Migrator) -> Runtime:
    return migrator._runtime


def node(migrator: Migrator) -> FakeNetwork:
    return cast(FakeNetwork, migrator._network)


def message(runtime: Runtime, to: AgentId, body: Any, kind: str = "msg") -> Envelope:
    return Envelope.create(CLIENT, to, kind, body, now_ms=runtime.clock())


async def spawn(runtime: Runtime, kind: str, **fields: Any) -> AgentId:
    (info,) = await runtime.spawn(kind, **fields)
    return AgentId.from_did(info["id"])


async def count_of(runtime: Runtime, agent: AgentId) -> int:
    row = await runtime.store.get_agent(agent.raw)
    assert row is not None
    return int(cbor2.loads(row.state).get("count", 0)) if row.state else 0


# --- the offer -------------------------------------------------------------------------------


async def a_valid_offer(runtime: Runtime) -> MigrationOffer:
    agent = await spawn(runtime, "counter", state={"count": 3}, caps=["x"], name="mover")
    await runtime.suspend(agent)
    for n in range(2):
        assert await runtime.deliver(message(runtime, agent, {"n": n})) == "queued"
    return await build_offer(runtime, agent)


def refused(data: bytes) -> str:
    with pytest.raises(OfferRefused) as caught:
        decode_offer(data)
    return caught.value.code


def fields_of(offer: MigrationOffer) -> dict[int, Any]:
    decoded: dict[int, Any] = cbor2.loads(offer.encode())
    return decoded


async def test_offer_round_trip_and_forgeries_refused(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as (a, _b, _moved):
        offer = await a_valid_offer(rt(a))
        back = decode_offer(offer.encode())
        assert back == offer
        assert back.lifecycle == "suspended"
        assert len(back.inbox) == 2
        assert back.provenance.root_node == KEY_A.node_id

        other = SigningKey.generate()
        # The key must be the agent's: a forged seed, or another agent's id with its own key.
        assert refused(replace(offer, seed=other.seed).encode()) == "bad_key"
        assert refused(replace(offer, agent=other.agent_id, seed=other.seed).encode()) == (
            "bad_provenance"
        )
        # The provenance must verify and be about this agent, its kind, time and budget.
        cert = bytearray(offer.provenance.certs[0].encoded)
        cert[10] ^= 1  # inside the signature
        broken = fields_of(offer)
        broken[14] = [bytes(cert)]
        assert refused(cbor2.dumps(broken)) == "bad_provenance"
        assert refused(replace(offer, kind="echo").encode()) == "bad_provenance"
        assert refused(replace(offer, budget=offer.budget + 1).encode()) == "bad_provenance"
        child = BirthCert.issue(
            other,
            agent=offer.agent,
            kind=offer.kind,
            node=KEY_A.node_id,
            created_ms=offer.created_ms,
            budget=offer.budget,
            parent=other.agent_id,
        )
        root = BirthCert.issue(
            KEY_A, agent=other.agent_id, kind="echo", node=KEY_A.node_id, created_ms=1, budget=9999
        )
        chain = Provenance((child, root))
        assert refused(replace(offer, provenance=chain).encode()) == "unsupported"
        # Inbox frames are signed envelopes for this agent.
        elsewhere = message(rt(a), other.agent_id, "x").frame
        assert refused(replace(offer, inbox=(elsewhere,)).encode()) == "bad_inbox"
        forged = bytearray(offer.inbox[0])
        forged[10] ^= 1
        assert refused(replace(offer, inbox=(bytes(forged),)).encode()) == "bad_inbox"
        assert refused(replace(offer, inbox=(b"junk",)).encode()) == "bad_inbox"
        # State is a CBOR map; the structure is exact; the version is known.
        assert refused(replace(offer, state=cbor2.dumps([1, 2])).encode()) == "malformed"
        assert refused(replace(offer, state=b"\xff\xff").encode()) == "malformed"
        assert refused(replace(offer, name="operator").encode()) == "malformed"
        extra = fields_of(offer)
        extra[99] = 1
        assert refused(cbor2.dumps(extra)) == "malformed"
        missing = fields_of(offer)
        del missing[3]
        assert refused(cbor2.dumps(missing)) == "malformed"
        later = fields_of(offer)
        later[1] = 2
        assert refused(cbor2.dumps(later)) == "unknown_version"
        assert refused(b"") == "malformed"
        assert refused(cbor2.dumps([1, 2, 3])) == "malformed"
        assert refused(offer.encode()[:-7]) == "malformed"
        assert refused(b"\x00" * (MAX_OFFER_BYTES + 1)) == "too_large"


async def test_garbage_and_bit_flips_only_ever_refuse(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as (a, _b, _moved):
        data = (await a_valid_offer(rt(a))).encode()
    rng = random.Random(7)
    for _ in range(300):
        with suppress(OfferRefused):
            decode_offer(rng.randbytes(rng.randrange(0, 300)))
    for _ in range(400):
        flipped = bytearray(data)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        with suppress(OfferRefused):
            decode_offer(bytes(flipped))  # a flip inside the state can still be a valid offer
    # Answers too: empty, an empty map, a refusal without its code, a non-boolean, noise.
    for text in (b"", b"\xa0", b"\xa1\x01\xf4", b"\xa1\x01\x01", b"\xff" + os.urandom(63)):
        with pytest.raises(OfferRefused):
            decode_answer(text)


# --- two runtimes ----------------------------------------------------------------------------


class MigrationEars:
    """A runtime listener that records migrations (what summaries rebuild on)."""

    def __init__(self) -> None:
        self.heard: list[tuple[AgentId, bool]] = []

    def spawned(self, agents: Sequence[bytes]) -> None:
        """Not what this test listens for."""

    def activated(self, agent: AgentId) -> None:
        """Not what this test listens for."""

    async def deleting(self, agent: AgentId) -> None:
        """Not what this test listens for."""

    def migrated(self, agent: AgentId, arrived: bool) -> None:
        """Record it."""
        self.heard.append((agent, arrived))


async def test_agent_moves_with_state_inbox_and_running_handler(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as (a, b, moved):
        ra, rb = rt(a), rt(b)
        ears_a, ears_b = MigrationEars(), MigrationEars()
        ra.listener, rb.listener = ears_a, ears_b
        counter = await spawn(ra, "counter")
        for _ in range(3):
            await ra.deliver(message(ra, counter, {}))
        await settle(lambda: ra.stats.handled == 3)
        # A handler still running when the move starts finishes first, and its state travels.
        slow = await spawn(ra, SLOW)
        await ra.deliver(message(ra, slow, {}))
        assert ra.state_of(slow) is State.ACTIVE
        result = await a.migrate(slow, node(b).peer_id)
        assert result["to"] == node(b).peer_id
        assert result["state"] == "dormant"
        assert (await rb.describe(slow))["state_version"] == 1

        seq_before = (await ra.store.get_agent(counter.raw)).record_seq  # type: ignore[union-attr]
        await a.migrate(counter, node(b).peer_id)
        assert not ra.hosts(counter)
        assert ra.hosts_or_moved(counter)
        assert rb.hosts(counter)
        assert await count_of(rb, counter) == 3
        assert moved.agents == [slow, counter]
        # Both runtimes told their listeners (a node's summary changes both ways).
        assert ears_a.heard == [(slow, False), (counter, False)]
        assert ears_b.heard == [(slow, True), (counter, True)]
        stored = await rb.store.get_agent(counter.raw)
        assert stored is not None
        assert stored.record_seq > seq_before
        assert stored.birth_cert is not None  # the spawning node's certificate, pinned
        assert BirthCert.decode(stored.birth_cert).node == KEY_A.node_id
        # Its key works on B (re-sealed with B's vault), and A keeps only a tombstone.
        assert (await rb.signing_key(counter)).agent_id == counter
        with pytest.raises(UnknownAgent):
            await ra.signing_key(counter)
        assert await ra.deliver(message(ra, counter, {})) == "not_here"
        await rb.deliver(message(rb, counter, {}))
        await settle(lambda: rb.stats.handled >= 1)
        await settle(lambda: rb.state_of(counter) is State.ACTIVE)
        # Its tombstone on A lets it come back: record sequences keep growing.
        await b.migrate(counter, node(a).peer_id)
        assert ra.hosts(counter)
        assert not ra.hosts(slow)
        back = await ra.store.get_agent(counter.raw)
        assert back is not None
        assert back.record_seq > stored.record_seq
        assert await count_of(ra, counter) == 4
        assert a.stats()["sent"] == {"migrated": 2}
        assert b.stats()["received"] == {"offers": 2, "accepted": 2}


async def test_messages_during_a_move_are_held_then_forwarded(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as (a, b, _moved):
        ra, rb = rt(a), rt(b)
        counter = await spawn(ra, "counter")
        await ra.suspend(counter)
        assert await ra.deliver(message(ra, counter, {"add": 10})) == "queued"  # travels
        node(b).gate = gate = trio.Event()
        results: list[dict[str, Any]] = []

        async def move() -> None:
            results.append(await a.migrate(counter, node(b).peer_id))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(move)
            await settle(lambda: ra.state_of(counter) is State.MIGRATING)
            # Anything else is refused while it moves, and messages are held.
            with pytest.raises(LifecycleError, match="migrating"):
                await ra.resume(counter)
            with pytest.raises(LifecycleError, match="migrating"):
                await a.migrate(counter, node(b).peer_id)
            assert await ra.deliver(message(ra, counter, {"add": 100})) == "queued"
            gate.set()
        (result,) = results
        assert result["state"] == "suspended"
        assert result["inbox"] == 1
        assert result["forwarded"] == 1
        assert rb.state_of(counter) is State.SUSPENDED
        assert await rb.store.inbox_count(counter.raw) == 2
        assert await rb.resume(counter) == 2
        await settle(lambda: rb.stats.handled == 2)
        await rb.evict(counter)
        assert await count_of(rb, counter) == 110


async def test_failed_moves_leave_the_agent_as_it_was(tmp_path: Path) -> None:
    async with two_nodes(tmp_path) as (a, b, moved):
        ra, rb = rt(a), rt(b)
        named = await spawn(ra, "counter", name="twin")
        await spawn(rb, "echo", name="twin")
        with pytest.raises(MigrationError) as caught:
            await a.migrate(named, node(b).peer_id)
        assert (caught.value.code, caught.value.reason) == ("refused", "name_taken")
        assert ra.state_of(named) is State.DORMANT
        assert not rb.hosts(named)
        assert b.stats()["received"]["refused:name_taken"] == 1

        # Unreachable, with a message arriving meanwhile: restored, and the message handled.
        counter = await spawn(ra, "counter")
        node(b).down = True
        node(b).gate = gate = trio.Event()
        async with trio.open_nursery() as nursery:

            async def move() -> None:
                with pytest.raises(MigrationError, match="connection refused"):
                    await a.migrate(counter, node(b).peer_id)

            nursery.start_soon(move)
            await settle(lambda: ra.state_of(counter) is State.MIGRATING)
            assert await ra.deliver(message(ra, counter, {"add": 5})) == "queued"
            gate.set()
        assert ra.state_of(counter) in (State.DORMANT, State.ACTIVE)
        await settle(lambda: ra.stats.handled == 1)
        await ra.evict(counter)
        assert await count_of(ra, counter) == 5
        node(b).down = False
        node(b).gate = None

        # Refused up front: this node, a bad peer id, an unknown peer, an unknown agent.
        with pytest.raises(MigrationError, match="this node"):
            await a.migrate(counter, node(a).peer_id)
        with pytest.raises(MigrationError) as bad:
            await a.migrate(counter, "not-a-peer")
        assert bad.value.code == "bad_peer"
        with pytest.raises(MigrationError, match="no address known"):
            await a.migrate(counter, SigningKey.generate().node_id.text)
        with pytest.raises(UnknownAgent):
            await a.migrate(SigningKey.generate().agent_id, node(b).peer_id)
        operator = await ra.operator()
        with pytest.raises(MigrationError, match="operator"):
            await a.migrate(operator, node(b).peer_id)
        assert moved.agents == []
        assert ra.state_of(counter) is State.DORMANT


async def test_receiver_refusals(tmp_path: Path) -> None:
    def only_from_c(peer_id: str, provenance: Provenance) -> str | None:
        return None if peer_id == CLIENT.node_id.text else f"peer {peer_id} is not trusted"

    async with two_nodes(tmp_path, policy=only_from_c) as (a, b, _moved):
        ra = rt(a)
        agent = await spawn(ra, "echo")
        with pytest.raises(MigrationError) as caught:
            await a.migrate(agent, node(b).peer_id)
        assert caught.value.reason == "untrusted"
        assert ra.hosts(agent)

    async with two_nodes(tmp_path, name="again") as (a, b, _moved):
        ra = rt(a)
        ask = node(a).request
        # A peer never makes a node import a module: unloaded module:Class kinds are refused.
        key = SigningKey.generate()
        cert = BirthCert.issue(
            KEY_A, agent=key.agent_id, kind="no_such_module:Agent", node=KEY_A.node_id,
            created_ms=1, budget=5,
        )  # fmt: skip
        agent = await spawn(ra, "echo")
        offer = replace(
            await build_offer(ra, agent),
            agent=key.agent_id,
            seed=key.seed,
            kind="no_such_module:Agent",
            created_ms=1,
            budget=5,
            provenance=Provenance((cert,)),
        )
        answer = await ask(node(b).peer_id, [], MIGRATE_PROTOCOL, offer.encode(), timeout=5)
        assert decode_answer(answer)[:2] == (False, "unknown_kind")
        # The same agent offered twice: the second is refused, the first stays.
        offer = await build_offer(ra, agent)
        first = await ask(node(b).peer_id, [], MIGRATE_PROTOCOL, offer.encode(), timeout=5)
        again = await ask(node(b).peer_id, [], MIGRATE_PROTOCOL, offer.encode(), timeout=5)
        assert decode_answer(first)[0]
        assert decode_answer(again)[:2] == (False, "already_hosted")
        garbage = await ask(node(b).peer_id, [], MIGRATE_PROTOCOL, b"\x00junk", timeout=5)
        assert decode_answer(garbage)[:2] == (False, "malformed")
        assert b.stats()["received"] == {
            "offers": 4,
            "accepted": 1,
            "refused:unknown_kind": 1,
            "refused:already_hosted": 1,
            "refused:malformed": 1,
        }
