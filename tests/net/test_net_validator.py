"""The `/ma/` DHT validator: signed, live agent records under their own key; newest wins."""

from __future__ import annotations

import pytest

from meshd.net.validator import AgentRecordValidator
from protocol.errors import RemoteProtocolError
from protocol.ids import SigningKey
from protocol.records import (
    AgentRecord,
    BirthCert,
    LifecycleState,
    Provenance,
    agent_record_key,
)

NOW = 1_800_000_000_000
NODE = SigningKey.from_seed(b"n" * 32)
AGENT = SigningKey.from_seed(b"a" * 32)
OTHER = SigningKey.from_seed(b"o" * 32)


def record(agent: SigningKey = AGENT, seq: int = 1, expires_ms: int = NOW + 60_000) -> bytes:
    """An encoded agent record signed by `agent`, hosted by NODE."""
    cert = BirthCert.issue(
        NODE, agent=agent.agent_id, kind="echo", node=NODE.node_id, created_ms=NOW, budget=4
    )
    return AgentRecord.create(
        agent,
        node=NODE.node_id,
        addrs=["/ip4/127.0.0.1/tcp/4001"],
        seq=seq,
        expires_ms=expires_ms,
        state=LifecycleState.ACTIVE,
        provenance=Provenance.root(cert),
    ).encoded


@pytest.fixture
def validator() -> AgentRecordValidator:
    return AgentRecordValidator(now_ms=lambda: NOW)


KEY = agent_record_key(AGENT.agent_id)


def test_accepts_a_valid_record(validator: AgentRecordValidator) -> None:
    validator.validate(KEY, record())
    assert not validator.rejected


def test_rejects_a_forged_signature(validator: AgentRecordValidator) -> None:
    good = record()
    # Flip one byte of the signature (the last bytes of the record are in the signed map,
    # so we flip inside the 64-byte signature, which the encoder writes first).
    index = good.index(AgentRecord.decode(good).signature)
    forged = good[:index] + bytes([good[index] ^ 1]) + good[index + 1 :]
    with pytest.raises(RemoteProtocolError):
        validator.validate(KEY, forged)
    assert validator.rejected["bad_signature"] == 1


def test_rejects_garbage(validator: AgentRecordValidator) -> None:
    for junk in (b"", b"\x00", b"not cbor at all", b"\xa1\x00\x40"):
        with pytest.raises(RemoteProtocolError):
            validator.validate(KEY, junk)
    assert sum(validator.rejected.values()) == 4


def test_rejects_a_record_under_another_agents_key(validator: AgentRecordValidator) -> None:
    with pytest.raises(ValueError, match="not its own key"):
        validator.validate(agent_record_key(OTHER.agent_id), record(AGENT))
    assert validator.rejected["wrong_key"] == 1


def test_rejects_an_expired_record(validator: AgentRecordValidator) -> None:
    with pytest.raises(RemoteProtocolError):
        validator.validate(KEY, record(expires_ms=NOW - 1))
    assert validator.rejected["expired"] == 1


def test_select_prefers_the_highest_sequence(validator: AgentRecordValidator) -> None:
    assert validator.select(KEY, [record(seq=1), record(seq=3), record(seq=2)]) == 1


def test_select_breaks_ties_towards_the_last(validator: AgentRecordValidator) -> None:
    # py-libp2p refuses a re-put of the same record unless select picks the new (last) copy.
    same = record(seq=5)
    assert validator.select(KEY, [same, same]) == 1


def test_select_never_picks_an_invalid_value(validator: AgentRecordValidator) -> None:
    assert validator.select(KEY, [record(seq=2), b"garbage", record(OTHER, seq=9)]) == 0
