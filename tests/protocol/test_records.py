"""Birth certificates, provenance chains, agent records and node summaries."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.bloom import BloomFilter
from protocol.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from protocol.ids import SigningKey
from protocol.records import (
    AgentRecord,
    BirthCert,
    LifecycleState,
    NodeSummary,
    Provenance,
    agent_record_key,
    select_newest,
)
from tests.strategies import signing_keys

NOW = 1_800_000_000_000
NODE = SigningKey.from_seed(b"n" * 32)


def root_of(agent: SigningKey, budget: int = 10, node: SigningKey = NODE) -> Provenance:
    cert = BirthCert.issue(
        node, agent=agent.agent_id, kind="echo", node=node.node_id, created_ms=NOW, budget=budget
    )
    return Provenance.root(cert)


def record_of(agent: SigningKey, prov: Provenance, seq: int = 1, **kw: object) -> AgentRecord:
    return AgentRecord.create(
        agent,
        node=NODE.node_id,
        addrs=["/ip4/127.0.0.1/tcp/4001"],
        seq=seq,
        expires_ms=NOW + 60_000,
        state=kw.get("state", LifecycleState.ACTIVE),  # type: ignore[arg-type]
        provenance=prov,
    )


@given(signing_keys, st.integers(0, 2**32), st.sampled_from(list(LifecycleState)))
@settings(max_examples=50)
def test_agent_record_round_trip(agent: SigningKey, seq: int, state: LifecycleState) -> None:
    rec = record_of(agent, root_of(agent), seq=seq, state=state)
    back = AgentRecord.decode(rec.encoded)
    back.verify(NOW)
    assert back == rec
    assert back.state is state
    assert back.provenance.root_node == NODE.node_id


def test_chain_of_three() -> None:
    a, b, c = (SigningKey.from_seed(bytes([i]) * 32) for i in (1, 2, 3))
    prov_a = root_of(a, budget=10)
    cert_b = BirthCert.issue(
        a, agent=b.agent_id, kind="w", node=NODE.node_id, created_ms=NOW, budget=5,
        parent=a.agent_id,
    )  # fmt: skip
    prov_b = prov_a.child(cert_b)
    cert_c = BirthCert.issue(
        b, agent=c.agent_id, kind="w", node=NODE.node_id, created_ms=NOW, budget=0,
        parent=b.agent_id,
    )  # fmt: skip
    prov_c = prov_b.child(cert_c)
    rec = record_of(c, prov_c)
    AgentRecord.decode(rec.encoded).verify(NOW)
    assert [cert.agent for cert in rec.provenance.certs] == [c.agent_id, b.agent_id, a.agent_id]
    with pytest.raises(LocalProtocolError):
        prov_b.child(cert_b)  # b is not its own parent
    # a chain missing its middle link is refused
    broken = Provenance((cert_c, *prov_a.certs))
    with pytest.raises(RemoteProtocolError) as info:
        record_of(c, broken).verify(NOW)
    assert info.value.reason is RejectReason.MALFORMED


def test_issue_requires_the_right_signer() -> None:
    a = SigningKey.from_seed(b"a" * 32)
    with pytest.raises(LocalProtocolError):
        BirthCert.issue(a, agent=a.agent_id, kind="x", node=NODE.node_id, created_ms=0, budget=1)


def test_select_newest_prefers_higher_seq_then_last() -> None:
    a = SigningKey.from_seed(b"a" * 32)
    prov = root_of(a)
    r1, r2, r3 = (record_of(a, prov, seq=s) for s in (5, 7, 7))
    assert select_newest([r1, r2]) == 1
    assert select_newest([r2, r1]) == 0
    assert select_newest([r2, r3]) == 1  # tie: the later one, so re-puts succeed
    with pytest.raises(LocalProtocolError):
        select_newest([])


def test_record_key_fits_the_dht_limit() -> None:
    key = agent_record_key(SigningKey.from_seed(b"a" * 32).agent_id)
    assert key.startswith("/ma/")
    assert len(key.encode()) == 47


def test_node_summary_round_trip_and_forgery() -> None:
    agents = BloomFilter.for_capacity(1000, 0.01)
    ids = [SigningKey.from_seed(bytes([i]) * 32).public_key for i in range(50)]
    agents.add_many(ids)
    caps = BloomFilter.for_capacity(16, 0.01)
    caps.add_many([b"echo"])
    summary = NodeSummary.create(
        NODE, seq=2, created_ms=NOW, agents=agents, caps=caps, counts={"agents": 50},
        levels=[agents.copy()],
    )  # fmt: skip
    back = NodeSummary.decode(summary.encoded)
    back.verify()
    assert all(i in back.agents for i in ids)
    assert b"echo" in back.caps
    assert back.counts == {"agents": 50}
    assert len(back.levels) == 1
    tampered = bytearray(summary.encoded)
    tampered[-1] ^= 1
    with pytest.raises(RemoteProtocolError):
        NodeSummary.decode(bytes(tampered)).verify()


@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_arbitrary_bytes_only_raise_remote_errors(data: bytes) -> None:
    for decode in (BirthCert.decode, AgentRecord.decode, NodeSummary.decode):
        with contextlib.suppress(RemoteProtocolError):
            decode(data)


@given(st.data())
@settings(max_examples=300)
def test_mutated_records_only_raise_remote_errors(data: st.DataObject) -> None:
    a = SigningKey.from_seed(b"a" * 32)
    frame = bytearray(record_of(a, root_of(a)).encoded)
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(frame) - 1))
        frame[pos] = data.draw(st.integers(0, 255))
    with contextlib.suppress(RemoteProtocolError):
        AgentRecord.decode(bytes(frame)).verify(NOW)


@given(
    signing_keys,
    st.text(min_size=1, max_size=64),
    st.integers(0, 2**53),
    st.integers(0, 2**40),
)
@settings(max_examples=50)
def test_birth_cert_round_trip(agent: SigningKey, kind: str, created: int, budget: int) -> None:
    cert = BirthCert.issue(
        NODE, agent=agent.agent_id, kind=kind, node=NODE.node_id, created_ms=created, budget=budget
    )
    back = BirthCert.decode(cert.encoded)
    assert back == cert
    assert back.signature_valid()


@given(
    st.lists(st.binary(min_size=32, max_size=32), max_size=200),
    st.lists(st.text(min_size=1, max_size=20), max_size=10),
    st.dictionaries(st.text(min_size=1, max_size=64), st.integers(0, 2**63 - 1), max_size=32),
    st.integers(0, 2**63 - 1),
)
@settings(max_examples=50)
def test_node_summary_round_trip(
    ids: list[bytes], tags: list[str], counts: dict[str, int], seq: int
) -> None:
    agents = BloomFilter.for_capacity(max(len(ids), 1), 0.01)
    agents.add_many(ids)
    caps = BloomFilter.for_capacity(16, 0.01)
    caps.add_many(tag.encode() for tag in tags)
    summary = NodeSummary.create(
        NODE, seq=seq, created_ms=NOW, agents=agents, caps=caps, counts=counts
    )
    back = NodeSummary.decode(summary.encoded)
    back.verify()
    assert back.agents == agents
    assert back.caps == caps
    assert dict(back.counts) == counts
    assert back.seq == seq
