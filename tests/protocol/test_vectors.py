"""Every test vector gets its expected verdict, and the files match their generator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from protocol.bloom import BloomFilter
from protocol.cbor import DecodeLimits
from protocol.envelope import Envelope, EnvelopePolicy, open_envelope, open_envelopes
from protocol.errors import RemoteProtocolError
from protocol.ids import AgentId
from protocol.records import AgentRecord, BirthCert, NodeSummary, SummaryDelta
from protocol.replay import ReplayWindow
from scripts import gen_vectors

VECTOR_DIR = Path(__file__).resolve().parents[2] / "protocol" / "vectors"


def _load() -> list[dict[str, Any]]:
    vectors = []
    for path in sorted(VECTOR_DIR.glob("*.json")):
        vectors.extend(json.loads(path.read_text())["vectors"])
    return vectors


VECTORS = _load()


def verdict(vec: dict[str, Any]) -> str:
    """Run the receive-side checks a vector's type calls for; return 'valid' or the reason."""
    data = bytes.fromhex(vec["cbor"])
    now = vec["now_ms"]
    try:
        if vec["type"] == "envelope":
            limits = DecodeLimits(**vec.get("policy", {}))
            hosted_ids = {AgentId.from_did(d) for d in vec.get("hosted", [])}
            hosted = (lambda a: a in hosted_ids) if "hosted" in vec else None
            window = ReplayWindow()
            kwargs: dict[str, Any] = {
                "now_ms": now, "policy": EnvelopePolicy(limits=limits),
                "hosted": hosted, "replay": window,
            }  # fmt: skip
            if vec.get("seen_before"):
                open_envelope(data, **kwargs)
            open_envelope(data, **kwargs)
        elif vec["type"] == "birth_cert":
            cert = BirthCert.decode(data)
            if not cert.signature_valid():
                return "bad_signature"
        elif vec["type"] == "agent_record":
            AgentRecord.decode(data).verify(now)
        elif vec["type"] == "node_summary":
            NodeSummary.decode(data).verify()
        elif vec["type"] == "summary_delta":
            base = NodeSummary.decode(bytes.fromhex(vec["base"]))
            rebuilt = SummaryDelta.decode(data).apply(base)
            assert rebuilt.encoded.hex() == vec.get("result", rebuilt.encoded.hex())
        elif vec["type"] == "bloom":
            bloom = BloomFilter.decode(data)
            assert all(bytes.fromhex(item) in bloom for item in vec.get("contains", []))
            assert not any(bytes.fromhex(item) in bloom for item in vec.get("lacks", []))
        else:
            raise AssertionError(f"unknown vector type {vec['type']}")
    except RemoteProtocolError as exc:
        return exc.reason.value
    return "valid"


def test_there_are_enough_vectors_covering_every_reason() -> None:
    assert len(VECTORS) >= 30
    expected = {vec["expect"] for vec in VECTORS}
    for reason in (
        "valid", "malformed", "too_large", "bad_signature", "expired", "from_future",
        "ttl_too_long", "replayed", "wrong_recipient", "unknown_version", "unauthorized",
    ):  # fmt: skip
        assert reason in expected, reason
    assert len({vec["name"] for vec in VECTORS}) == len(VECTORS)


@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(vec: dict[str, Any]) -> None:
    assert verdict(vec) == vec["expect"], vec["description"]


ENVELOPE_VECTORS = [v for v in VECTORS if v["type"] == "envelope" and not v.get("seen_before")]


@pytest.mark.parametrize("vec", ENVELOPE_VECTORS, ids=[v["name"] for v in ENVELOPE_VECTORS])
def test_envelope_vector_in_a_batch(vec: dict[str, Any]) -> None:
    # The receive path checks chunks of envelopes at once (signatures in one call).
    hosted_ids = {AgentId.from_did(d) for d in vec.get("hosted", [])}
    results = open_envelopes(
        [bytes.fromhex(vec["cbor"])] * 3,
        now_ms=vec["now_ms"],
        policy=EnvelopePolicy(limits=DecodeLimits(**vec.get("policy", {}))),
        hosted=(lambda a: a in hosted_ids) if "hosted" in vec else None,
    )
    verdicts = {"valid" if isinstance(r, Envelope) else r.reason.value for r in results}
    assert verdicts == {vec["expect"]}, vec["description"]


def test_files_match_the_generator() -> None:
    for name, content in gen_vectors.build().items():
        committed = (VECTOR_DIR / name).read_text()
        assert committed == gen_vectors.render(content), f"regenerate {name}: make vectors"
