"""Agent and node identities: keys, did:key text form, PeerIDs."""

from __future__ import annotations

import pytest
from hypothesis import given

from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.ids import AgentId, NodeId, SigningKey
from tests.strategies import seeds, signing_keys

# The did:key spec's own ed25519 example; its key must decode to 32 bytes and back.
SPEC_DID = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
# A real libp2p Ed25519 PeerID from py-libp2p (identity multihash of the protobuf key).
PEER_ID_TEXT = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"


@given(signing_keys)
def test_did_round_trip(key: SigningKey) -> None:
    did = key.agent_id.did
    assert did.startswith("did:key:z6Mk")
    assert AgentId.from_did(did) == key.agent_id


def test_spec_did_example_parses() -> None:
    agent = AgentId.from_did(SPEC_DID)
    assert len(agent.raw) == 32
    assert agent.did == SPEC_DID


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected 'did:key:z"),
        ("did:web:example.com", "expected 'did:key:z"),
        ("did:key:z0OIl", "bad base58btc"),
        ("did:key:z6LSbysY2xFMRpGMhb7tFTLMpeuPRaqaWM1yECx2AtzE3KCc", "not an ed25519-pub"),
        ("did:key:z2DQV5Tm64jwFsRi2chqem1Wt2aP6bP34vi2itLNof8JFdG", "not 32"),
    ],
)
def test_bad_did_is_a_clear_error(text: str, reason: str) -> None:
    for _ in range(2):  # parsed ids are cached: a refusal must not be
        with pytest.raises(ValueError, match=reason):
            AgentId.from_did(text)


@given(signing_keys)
def test_sign_verify(key: SigningKey) -> None:
    sig = key.sign(b"hello")
    assert key.agent_id.verify(b"hello", sig)
    assert not key.agent_id.verify(b"hellO", sig)
    assert not key.agent_id.verify(b"hello", sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not key.agent_id.verify(b"hello", sig[:10])


@given(seeds)
def test_seed_is_deterministic(seed: bytes) -> None:
    assert SigningKey.from_seed(seed).public_key == SigningKey.from_seed(seed).public_key


def test_node_id_text_round_trip_and_key() -> None:
    node = NodeId.from_text(PEER_ID_TEXT)
    assert node.text == PEER_ID_TEXT
    assert NodeId.from_public_key(node.public_key) == node
    key = SigningKey.generate()
    assert key.node_id.text.startswith("12D3KooW")
    assert key.node_id.verify(b"x", key.sign(b"x"))


@pytest.mark.parametrize(
    "text",
    ["", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "12D3KooW!!", "x" * 500],
)
def test_bad_node_ids(text: str) -> None:
    with pytest.raises(ValueError, match="not a node id"):
        NodeId.from_text(text)


def test_wrong_lengths() -> None:
    with pytest.raises(LocalProtocolError):
        AgentId(b"short")
    with pytest.raises(RemoteProtocolError):
        AgentId.from_bytes(b"short")
    with pytest.raises(RemoteProtocolError):
        NodeId.from_bytes(b"\x00\x24" + b"\x00" * 36)
    with pytest.raises(LocalProtocolError):
        SigningKey(b"short")


def test_secret_not_in_repr() -> None:
    key = SigningKey.generate()
    assert key.seed.hex() not in repr(key)
