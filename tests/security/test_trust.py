"""Trust policy and per-agent allow/deny lists: `meshd.trust.Trust`, alone and inside delivery."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from meshd.clock import wall_ms
from meshd.runtime.records import build_record
from meshd.runtime.runtime import Runtime
from meshd.store import Store
from meshd.trust import Trust
from meshd.trust_settings import OPEN, TRUSTED_ROOTS, TrustSettings
from protocol.envelope import Envelope
from protocol.errors import RejectReason
from protocol.frames import is_outcome
from protocol.ids import AgentId, SigningKey
from protocol.records import (
    AgentRecord,
    BirthCert,
    LifecycleState,
    Provenance,
    agent_record_key,
)
from tests.delivery.test_delivery import running_nodes, spawn, until

REC = "tests.runtime.kinds_for_tests:Recorder"


class FakeDht:
    """A DHT holding records put by the test; counts the lookups."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.gets = 0

    async def get(self, key: str) -> bytes | None:
        self.gets += 1
        return self.values.get(key)

    def put(self, record: AgentRecord) -> None:
        self.values[agent_record_key(record.agent)] = record.encoded


def foreign_agent(node: SigningKey, *, ttl_ms: int = 60_000) -> tuple[SigningKey, AgentRecord]:
    """An agent spawned by `node` elsewhere, with its signed record."""
    key = SigningKey.generate()
    now = wall_ms()
    cert = BirthCert.issue(
        node, agent=key.agent_id, kind="echo", node=node.node_id, created_ms=now, budget=0
    )
    record = AgentRecord.create(
        key,
        node=node.node_id,
        addrs=[],
        seq=1,
        expires_ms=now + ttl_ms,
        state=LifecycleState.DORMANT,
        provenance=Provenance.root(cert),
    )
    return key, record


def message(sender: SigningKey, to: AgentId) -> Envelope:
    return Envelope.create(sender, to, "msg", {"hi": 1}, now_ms=wall_ms())


@asynccontextmanager
async def local_runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    async with Store(tmp_path / "node.db") as store, trio.open_nursery() as nursery:
        runtime = Runtime(store, SigningKey.generate())
        await nursery.start(runtime.serve)
        yield runtime
        nursery.cancel_scope.cancel()


async def one(runtime: Runtime, kind: str = "echo") -> AgentId:
    (info,) = await runtime.spawn(kind)
    return AgentId.from_did(info["id"])


def test_new_reasons_travel_in_acks() -> None:
    for reason in (RejectReason.DENIED, RejectReason.UNTRUSTED):
        assert is_outcome("rejected:" + reason.value)


async def test_open_policy_without_lists_admits_everyone_and_looks_nothing_up(
    tmp_path: Path,
) -> None:
    dht = FakeDht()
    async with local_runtime(tmp_path) as runtime:
        trust = Trust(TrustSettings(), runtime, dht.get)
        target = await one(runtime)
        for _ in range(3):
            assert await trust.admit(message(SigningKey.generate(), target)) is None
        assert dht.gets == 0
        assert trust.stats()["policy"] == OPEN
        assert not any(key.startswith("refused") for key in trust.counts)


async def test_deny_and_allow_lists_are_enforced_counted_and_persisted(tmp_path: Path) -> None:
    bad, good, other = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    async with local_runtime(tmp_path) as runtime:
        trust = Trust(TrustSettings(), runtime, FakeDht().get)
        target, bystander = await one(runtime), await one(runtime)
        await trust.update_acl(target, "deny", [bad.agent_id])
        assert await trust.admit(message(bad, target)) == "denied"
        assert await trust.admit(message(good, target)) is None
        assert await trust.admit(message(bad, bystander)) is None  # lists are per agent
        await trust.update_acl(target, "allow", [good.agent_id])
        assert await trust.admit(message(good, target)) is None
        assert await trust.admit(message(other, target)) == "denied"
        assert trust.counts["refused:denied"] == 2
        assert trust.acl_of(target).to_json() == {
            "allow": [good.agent_id.did],
            "deny": [bad.agent_id.did],
        }
        # Another Trust over the same store (a restart) reads the lists back.
        reloaded = Trust(TrustSettings(), runtime, FakeDht().get)
        await reloaded.load()
        assert reloaded.acl_of(target) == trust.acl_of(target)
        assert await reloaded.admit(message(other, target)) == "denied"
        # --clear empties a list; with both empty the agent has no lists any more.
        await reloaded.update_acl(target, "allow", [], clear=True)
        await reloaded.update_acl(target, "deny", [], clear=True)
        assert await reloaded.admit(message(bad, target)) is None
        assert reloaded.stats()["agents_with_lists"] == 0


async def test_a_deleted_agents_lists_leave_memory_and_the_store(tmp_path: Path) -> None:
    bad = SigningKey.generate()
    async with local_runtime(tmp_path) as runtime:
        trust = Trust(TrustSettings(), runtime, FakeDht().get)
        runtime.listener = trust  # as build_node wires it (beside the publisher, summaries)
        gone, kept, cleared = await one(runtime), await one(runtime), await one(runtime)
        for agent in (gone, kept, cleared):
            await trust.update_acl(agent, "deny", [bad.agent_id])
        await trust.update_acl(cleared, "deny", [], clear=True)
        assert await runtime.store.get_meta("acl/" + cleared.raw.hex()) is None
        await runtime.delete(gone)
        assert trust.acl_of(gone).to_json() == {"allow": [], "deny": []}
        assert await runtime.store.get_meta("acl/" + gone.raw.hex()) is None
        assert trust.counts["lists_removed"] == 1
        assert await trust.admit(message(bad, kept)) == "denied"
        reloaded = Trust(TrustSettings(), runtime, FakeDht().get)
        await reloaded.load()
        assert reloaded.stats()["agents_with_lists"] == 1
        assert reloaded.acl_of(kept) == trust.acl_of(kept)
        await runtime.delete(cleared)  # no lists: nothing to do
        assert trust.counts["lists_removed"] == 1


async def test_trusted_roots_checks_provenance_from_records_and_caches(tmp_path: Path) -> None:
    trusted_node, stranger_node = SigningKey.generate(), SigningKey.generate()
    friend, friend_record = foreign_agent(trusted_node)
    stranger, stranger_record = foreign_agent(stranger_node)
    unknown = SigningKey.generate()  # publishes no record
    dht = FakeDht()
    dht.put(friend_record)
    dht.put(stranger_record)
    async with local_runtime(tmp_path) as runtime:
        settings = TrustSettings(policy=TRUSTED_ROOTS, roots=(trusted_node.node_id.text,))
        trust = Trust(settings, runtime, dht.get)
        target = await one(runtime)
        local_sender = await one(runtime)  # rooted in this node: always trusted
        local_key = await runtime.signing_key(local_sender)
        assert await trust.admit(message(friend, target)) is None
        assert await trust.admit(message(stranger, target)) == "untrusted"
        assert await trust.admit(message(unknown, target)) == "untrusted"
        assert await trust.admit(message(local_key, target)) is None
        gets = dht.gets
        assert gets == 3  # the local sender was checked from the store
        # Verdicts are cached: more messages cost no lookups.
        for _ in range(5):
            assert await trust.admit(message(friend, target)) is None
            assert await trust.admit(message(stranger, target)) == "untrusted"
        assert dht.gets == gets
        assert trust.counts["refused:untrusted"] == 7
        assert trust.counts["local_checks"] == 1


async def test_lookups_are_paced_per_peer(tmp_path: Path) -> None:
    """A peer relaying messages from ever new agent ids cannot stall delivery with lookups."""
    trusted_node = SigningKey.generate()
    senders = [foreign_agent(trusted_node) for _ in range(4)]
    dht = FakeDht()
    for _, record in senders:
        dht.put(record)
    async with local_runtime(tmp_path) as runtime:
        settings = TrustSettings(
            policy=TRUSTED_ROOTS, roots=(trusted_node.node_id.text,), peer_lookups_per_s=0.1
        )
        trust = Trust(settings, runtime, dht.get)
        target = await one(runtime)
        (first, _), (second, _), (third, _), (fourth, _) = senders
        assert await trust.admit(message(first, target), "peer-p") is None  # burst of 1
        assert await trust.admit(message(second, target), "peer-p") == "untrusted"
        assert dht.gets == 1  # refused without a lookup
        assert await trust.admit(message(third, target), "peer-q") is None  # its own budget
        assert await trust.admit(message(first, target), "peer-p") is None  # cached: free
        assert await trust.admit(message(fourth, target)) is None  # local hand-over: no budget
        # The refusal was not cached: through a peer with budget, the second sender is admitted.
        assert await trust.admit(message(second, target), "peer-r") is None
        assert trust.counts["lookups_over_peer_budget"] == 1


async def test_a_forged_record_is_untrusted(tmp_path: Path) -> None:
    trusted_node = SigningKey.generate()
    friend, record = foreign_agent(trusted_node)
    # The impostor claims the friend's trusted provenance in a record it signs itself.
    impostor = SigningKey.generate()
    forged = bytearray(record.encoded)
    forged[forged.index(friend.agent_id.raw)] ^= 1  # any change breaks the agent signature
    dht = FakeDht()
    dht.values[agent_record_key(friend.agent_id)] = bytes(forged)
    dht.values[agent_record_key(impostor.agent_id)] = record.encoded  # someone else's record
    async with local_runtime(tmp_path) as runtime:
        settings = TrustSettings(policy=TRUSTED_ROOTS, roots=(trusted_node.node_id.text,))
        trust = Trust(settings, runtime, dht.get)
        target = await one(runtime)
        assert await trust.admit(message(friend, target)) == "untrusted"
        assert await trust.admit(message(impostor, target)) == "untrusted"


async def test_concurrent_first_messages_share_one_lookup(tmp_path: Path) -> None:
    trusted_node = SigningKey.generate()
    friend, record = foreign_agent(trusted_node)
    release = trio.Event()
    gets = 0

    async def slow_get(key: str) -> bytes | None:
        nonlocal gets
        gets += 1
        await release.wait()
        return record.encoded

    async with local_runtime(tmp_path) as runtime:
        settings = TrustSettings(policy=TRUSTED_ROOTS, roots=(trusted_node.node_id.text,))
        trust = Trust(settings, runtime, slow_get)
        target = await one(runtime)
        verdicts: list[str | None] = []

        async def admit_one() -> None:
            verdicts.append(await trust.admit(message(friend, target)))

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(admit_one)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        assert verdicts == [None] * 10
        assert gets == 1


async def test_migration_policy(tmp_path: Path) -> None:
    trusted_node, stranger_node = SigningKey.generate(), SigningKey.generate()
    _, friend = foreign_agent(trusted_node)
    _, stranger = foreign_agent(stranger_node)
    async with local_runtime(tmp_path) as runtime:
        dht = FakeDht().get
        open_trust = Trust(TrustSettings(), runtime, dht)
        assert open_trust.migration_policy("peer", stranger.provenance) is None
        closed = Trust(TrustSettings(accept_migrations=False), runtime, dht)
        assert "accepts no migrations" in (closed.migration_policy("p", friend.provenance) or "")
        rooted = Trust(
            TrustSettings(policy=TRUSTED_ROOTS, roots=(trusted_node.node_id.text,)), runtime, dht
        )
        assert rooted.migration_policy("peer", friend.provenance) is None
        assert "not a trusted root" in (rooted.migration_policy("p", stranger.provenance) or "")
        assert closed.counts["refused:migration"] == 1
        assert rooted.counts["refused:migration"] == 1


def test_settings_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="trust policy"):
        TrustSettings(policy="closed")
    with pytest.raises(ValueError, match="not a node id"):
        TrustSettings(roots=("not-a-peer-id",))


async def test_delivery_refuses_remote_and_local_senders_with_reasons(tmp_path: Path) -> None:
    async with running_nodes(tmp_path, 2) as (a, b):
        target = await spawn(b, REC)
        remote = await spawn(a, REC)
        local = await spawn(b, REC)
        remote_key = await a.runtime.signing_key(remote)
        local_key = await b.runtime.signing_key(local)
        dht = FakeDht()
        trust = Trust(
            TrustSettings(policy=TRUSTED_ROOTS, roots=(a.net.peer_id,)), b.runtime, dht.get
        )
        b.delivery.trust = trust
        a.delivery.learn(target, b.net.peer_id, b.addrs)

        # No record of a's agent yet: untrusted, answered with the reason, counted by b.
        report = await a.delivery.send(message(remote_key, target), reliable=False)
        assert report.outcome == "rejected:untrusted"
        assert b.delivery.rejected["untrusted"] == 1

        # Its record (rooted in a, a trusted root) is found after the cached miss expires.
        record = await build_record(a.runtime, remote, a.addrs, now_ms=wall_ms())
        dht.put(record)
        trust._verdicts.clear()  # the miss would otherwise stand for miss_ttl_s
        report = await a.delivery.send(message(remote_key, target), reliable=False)
        assert report.outcome == "delivered"

        # The recipient denies that sender: denied, from the peer and from a local agent.
        await trust.update_acl(target, "deny", [remote, local])
        report = await a.delivery.send(message(remote_key, target), reliable=False)
        assert report.outcome == "rejected:denied"
        assert b.delivery.rejected["denied"] == 1
        report = await b.delivery.send(message(local_key, target), reliable=False)
        assert report.outcome == "rejected:denied"
        assert b.delivery.sent["local:rejected:denied"] == 1
        await until(lambda: trust.counts["refused:denied"] == 2, "both refusals counted")
