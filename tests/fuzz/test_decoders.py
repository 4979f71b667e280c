"""Fuzzing every decoder of peer input at once: whatever the bytes, a decoder returns a value or
raises its one documented error (`RemoteProtocolError`; `OfferRefused` for migration offers),
and never allocates much more than it was given.

tests/protocol already feeds arbitrary and bit-flipped bytes to the envelope, record, frame,
Bloom and sketch decoders one by one; this suite adds what random bytes rarely reach:
structure-aware inputs (CBOR maps with small integer keys and hostile values, which get past
the first parse), mutations of a corpus of valid encodings of every message type, the
decoders that had no fuzzing (signed-map helper, telemetry, summary protocol, ids, migration
answers), and the regression corpus in `corpus/` (inputs that once broke a decoder).
"""

from __future__ import annotations

import contextlib
import json
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from meshd.migration import OfferRefused, decode_answer, decode_offer, encode_answer
from protocol import summary as summary_protocol
from protocol.bloom import BloomDelta, BloomFilter
from protocol.cbor import (
    DEFAULT_LIMITS,
    check_plain,
    decode_signed_map,
    encode_signed_map,
    loads_strict,
)
from protocol.envelope import ENVELOPE_DOMAIN, Envelope, open_envelope
from protocol.errors import RemoteProtocolError
from protocol.frames import AckEntry, FrameDecoder, Mode, encode_ack, encode_msg
from protocol.ids import AgentId, NodeId, SigningKey
from protocol.records import (
    AGENT_RECORD_DOMAIN,
    BIRTH_CERT_DOMAIN,
    NODE_SUMMARY_DOMAIN,
    AgentRecord,
    BirthCert,
    LifecycleState,
    NodeSummary,
    Provenance,
    SummaryDelta,
)
from protocol.sketch import HyperLogLog
from protocol.telemetry import TelemetryReport

CORPUS = Path(__file__).parent / "corpus"
VECTORS = Path(__file__).parents[2] / "protocol" / "vectors"
NOW_MS = 1_750_000_000_000
NODE = SigningKey.from_seed(b"n" * 32)
AGENT = SigningKey.from_seed(b"a" * 32)
# Bounded for CI; MESHD_FUZZ_EXAMPLES=100000 runs a long campaign with the same tests.
FUZZ = settings(
    max_examples=int(os.environ.get("MESHD_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)


def _frames(data: bytes) -> object:
    decoder = FrameDecoder()
    decoder.feed(data)
    return decoder.frames()


def _record(data: bytes) -> object:
    record = AgentRecord.decode(data)
    record.verify(NOW_MS)
    return record


def _summary(data: bytes) -> object:
    summary = NodeSummary.decode(data)
    summary.verify()
    return summary


def _report(data: bytes) -> object:
    report = TelemetryReport.decode(data)
    report.verify()
    return report


def _provenance(data: bytes) -> object:
    provenance = Provenance.from_cbor_obj(loads_strict(data))
    provenance.verify()
    return provenance


def _delta(data: bytes) -> object:
    delta = SummaryDelta.decode(data)
    return delta.apply(BASE_SUMMARY)


def _signed_maps(data: bytes) -> object:
    return [
        decode_signed_map(data, domain)
        for domain in (ENVELOPE_DOMAIN, BIRTH_CERT_DOMAIN, AGENT_RECORD_DOMAIN, NODE_SUMMARY_DOMAIN)
    ]


def _text(parse: Callable[[str], object]) -> Callable[[bytes], object]:
    def run(data: bytes) -> object:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        try:
            return parse(text)
        except ValueError:  # the documented error of the text parsers (ids typed by users)
            return None

    return run


# Every decoder that sees bytes from a peer (or a user, for ids), by name.
DECODERS: dict[str, Callable[[bytes], object]] = {
    "envelope": Envelope.decode,
    "open_envelope": lambda data: open_envelope(data, now_ms=NOW_MS, hosted=lambda agent: True),
    "frames": _frames,
    "birth_cert": BirthCert.decode,
    "provenance": _provenance,
    "agent_record": _record,
    "node_summary": _summary,
    "summary_delta": _delta,
    "bloom": BloomFilter.decode,
    "bloom_delta": BloomDelta.decode,
    "hyperloglog": HyperLogLog.decode,
    "telemetry": _report,
    "loads_strict": loads_strict,
    "check_plain": lambda data: check_plain(loads_strict(data), DEFAULT_LIMITS, len(data)),
    "signed_map": _signed_maps,
    "summary_request": lambda data: summary_protocol.decode_request(data, DEFAULT_LIMITS),
    "summary_ack": summary_protocol.decode_ack,
    "locate_answer": summary_protocol.decode_locate_answer,
    "find": summary_protocol.decode_find,
    "find_answer": summary_protocol.decode_find_answer,
    "agent_id": AgentId.from_bytes,
    "node_id": NodeId.from_bytes,
    "did": _text(AgentId.from_did),
    "node_id_text": _text(NodeId.from_text),
    "migration_offer": decode_offer,
    "migration_answer": decode_answer,
}
EXPECTED = (RemoteProtocolError, OfferRefused)


def check_all(data: bytes) -> None:
    """Run every decoder on `data`: a value or the decoder's documented error, nothing else."""
    for name, decode in DECODERS.items():
        try:
            decode(data)
        except EXPECTED:
            pass
        except Exception as exc:  # the point of the test: anything else is a bug
            raise AssertionError(f"{name} raised {type(exc).__name__}: {exc!r:.300}") from exc


def _bloom(items: int) -> BloomFilter:
    bloom = BloomFilter(1024, 4, 7)
    for i in range(items):
        bloom.add(i.to_bytes(4, "big"))
    return bloom


def _valid_samples() -> list[bytes]:
    """One valid encoding of every message type (mutations of these get deep into decoders)."""
    cert = BirthCert.issue(
        NODE, agent=AGENT.agent_id, kind="echo", node=NODE.node_id, created_ms=NOW_MS, budget=5
    )
    record = AgentRecord.create(
        AGENT,
        node=NODE.node_id,
        addrs=["/ip4/127.0.0.1/tcp/4001"],
        seq=3,
        expires_ms=NOW_MS + 60_000,
        state=LifecycleState.ACTIVE,
        provenance=Provenance.root(cert),
    )
    hll = HyperLogLog(precision=8)
    hll.add(b"x")
    new_summary = NodeSummary.create(
        NODE, seq=2, created_ms=NOW_MS, agents=_bloom(20), caps=_bloom(2), counts={"agents": 20}
    )
    delta = SummaryDelta.between(BASE_SUMMARY, new_summary)
    assert delta is not None
    envelope = Envelope.create(AGENT, AGENT.agent_id, "msg", {"a": [1, 2]}, now_ms=NOW_MS)
    return [
        envelope.frame,
        encode_msg(7, Mode.AT_LEAST_ONCE, envelope.frame)
        + encode_ack([AckEntry(7, "rejected:denied", "no")]),
        cert.encoded,
        loads_and_dumps(Provenance.root(cert).to_cbor_obj()),
        record.encoded,
        new_summary.encoded,
        delta.encode(),
        _bloom(5).encode(),
        hll.encode(),
        TelemetryReport.encode(NODE, created_ms=NOW_MS, sketches=[(1, hll, hll)], entries=[]),
        encode_signed_map(ENVELOPE_DOMAIN, {1: 1, 2: b"x" * 32}, AGENT),
        summary_protocol.encode_locate(AGENT.agent_id.raw),
        summary_protocol.encode_ack(4),
        summary_protocol.encode_find("translate", 10, 2),
        summary_protocol.encode_find_answer(
            [summary_protocol.Found(AGENT.agent_id.raw, "echo", NODE.node_id.text)]
        ),
        encode_answer(False, "untrusted", "not a trusted root"),
        AGENT.agent_id.did.encode(),
        NODE.node_id.text.encode(),
    ]


def loads_and_dumps(obj: Any) -> bytes:
    return cbor2.dumps(obj, canonical=True)


def _vector_samples() -> list[bytes]:
    """Every hex string in the protocol's test vectors (valid and invalid on purpose)."""
    found: list[bytes] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str) and len(node) >= 8 and len(node) % 2 == 0:
            with contextlib.suppress(ValueError):  # not every even-length text is hex
                found.append(bytes.fromhex(node))

    for path in sorted(VECTORS.glob("*.json")):
        walk(json.loads(path.read_text()))
    return found


BASE_SUMMARY = NodeSummary.create(
    NODE, seq=1, created_ms=NOW_MS, agents=_bloom(10), caps=_bloom(1), counts={"agents": 10}
)
SAMPLES = _valid_samples() + _vector_samples()


def test_the_samples_are_valid_for_some_decoder() -> None:
    """Guard against a corpus of junk: mutations of valid inputs are what reach deep code."""
    for sample in _valid_samples():
        accepted = []
        for name, decode in DECODERS.items():
            try:
                decode(sample)
                accepted.append(name)
            except EXPECTED:
                pass
        assert accepted, f"no decoder accepts sample {sample[:40].hex()}"
    assert len(_vector_samples()) > 20


# -- structure-aware inputs -------------------------------------------------------------------

_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.binary(max_size=40)
    | st.sampled_from([AGENT.agent_id.raw, NODE.node_id.raw, b"\x00" * 32, b"\xff" * 64])
    | st.text(max_size=20)
    | st.sampled_from(["rejected:denied", "delivered", "/ip4/1.2.3.4/tcp/1", "echo"])
    | st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 24, 55799, 2**40]), st.integers(0, 9))
    | st.just(cbor2.undefined)
)
_values = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.integers(-2, 12) | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=30,
)
# Maps keyed like our messages: small integers, sometimes a signature-sized key 0.
_messages = st.dictionaries(st.integers(0, 16), _values, min_size=1, max_size=12) | st.lists(
    _values, max_size=6
)


@FUZZ
@given(_messages, st.booleans())
def test_structured_cbor_never_breaks_a_decoder(obj: Any, canonical: bool) -> None:
    try:
        data = cbor2.dumps(obj, canonical=canonical)
    except (ValueError, TypeError, cbor2.CBOREncodeError):
        return  # hypothesis built something cbor2 will not encode
    check_all(data)


# -- mutations of valid encodings ---------------------------------------------------------------

_mutation = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]),
    st.integers(min_value=0, max_value=4096),
    st.integers(min_value=0, max_value=255),
)


def mutate(data: bytes, steps: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for how, at, byte in steps:
        at = at % (len(out) + 1)
        if how == "flip" and at < len(out):
            out[at] ^= 1 << (byte % 8)
        elif how == "set" and at < len(out):
            out[at] = byte
        elif how == "insert":
            out[at:at] = bytes([byte])
        elif how == "delete":
            del out[at : at + 1 + byte % 4]
        elif how == "truncate":
            del out[at:]
        elif how == "splice":
            other = SAMPLES[byte % len(SAMPLES)]
            out[at:] = other[at % (len(other) + 1) :]
    return bytes(out)


@FUZZ
@given(st.sampled_from(SAMPLES), st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_valid_encodings_never_break_a_decoder(
    sample: bytes, steps: list[tuple[str, int, int]]
) -> None:
    check_all(mutate(sample, steps))


@FUZZ
@given(st.binary(max_size=512))
@example(b"")
@example(b"\xa0")
def test_arbitrary_bytes_never_break_a_decoder(data: bytes) -> None:
    check_all(data)


# -- memory: a claimed length is never trusted ahead of the bytes -------------------------------

_HOSTILE_HEADS = [
    bytes([0x5B]) + (2**62).to_bytes(8, "big"),  # byte string of 2^62 bytes
    bytes([0x7A]) + (2**31).to_bytes(4, "big"),  # text of 2 GiB
    bytes([0x9B]) + (2**40).to_bytes(8, "big"),  # array of 2^40 items
    bytes([0xBA]) + (2**31).to_bytes(4, "big"),  # map of 2^31 pairs
    bytes([0xA2, 0x00, 0x5A]) + (2**30).to_bytes(4, "big"),  # inside a map value
    bytes([0x81] * 5000),  # deep nesting
    bytes([0xC2, 0x5A]) + (2**30).to_bytes(4, "big"),  # a bignum of 1 GiB
]


@pytest.mark.parametrize("head", _HOSTILE_HEADS, ids=lambda head: head[:6].hex())
def test_hostile_lengths_cost_no_memory(head: bytes) -> None:
    data = head + b"\x00" * 64
    tracemalloc.start()
    try:
        check_all(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Generous (tracemalloc counts interpreter overhead), and far below any claimed length.
    assert peak < 8 * 1024 * 1024, f"{peak} bytes to refuse {len(data)} bytes"


# -- regression corpus ------------------------------------------------------------------------


def test_decoder_corpus() -> None:
    """Inputs that once broke a decoder (see corpus/README.md), fed to every decoder."""
    for path in sorted((CORPUS / "decoders").glob("*.json")):
        entry = json.loads(path.read_text())
        try:
            check_all(bytes.fromhex(entry["hex"]))
        except AssertionError as exc:
            raise AssertionError(f"{path.name} ({entry['found']}): {exc}") from exc
