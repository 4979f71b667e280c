"""Fuzzing the swarm state and decision decoders: whatever the bytes, they return a value or
raise `RemoteProtocolError` (`DocError` for pycrdt updates), and valid records round-trip."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map

from meshd.swarm_doc import DocError, SwarmDoc
from protocol.envelope import Envelope
from protocol.errors import RemoteProtocolError
from protocol.ids import SigningKey
from protocol.swarm_state import (
    KIND_STATE,
    KIND_UPDATE,
    StateAnnounce,
    StateUpdate,
    decode_state_vector,
    parse_state_record,
    state_body,
    update_body,
)
from protocol.swarm_vote import (
    KIND_BALLOT,
    KIND_PROPOSAL,
    ballot_body,
    open_ballot,
    open_proposal,
    proposal_body,
    verify_decision,
)

NODE = SigningKey.from_seed(b"n" * 32)
AGENTS = [SigningKey.from_seed(bytes([i]) * 32) for i in range(1, 4)]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _doc_update() -> tuple[bytes, bytes]:
    doc: Doc[Any] = Doc()
    m = doc.get("state", type=Map)
    for i in range(5):
        m[f"k{i}"] = f'{{"v": {i}}}'
    del m["k1"]
    return bytes(doc.get_update()), bytes(doc.get_state())


UPDATE, VECTOR = _doc_update()
PROPOSAL = Envelope.create(
    AGENTS[0],
    "swarm/team",
    KIND_PROPOSAL,
    proposal_body("team", "ship it", [a.agent_id for a in AGENTS]),
    now_ms=1,
).frame
BALLOT = Envelope.create(
    AGENTS[1],
    "swarm/team",
    KIND_BALLOT,
    ballot_body("team", open_proposal(PROPOSAL).id, True),
    now_ms=2,
).frame

_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.integers(0, 4), inner),
    max_leaves=10,
)


def _mutate(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in flips:
        out[pos % len(out)] = value
    return bytes(out)


_flips = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4)


@FUZZ
@given(st.binary(max_size=300))
def test_state_vectors_decode_or_refuse(data: bytes) -> None:
    try:
        clocks = decode_state_vector(data)
    except RemoteProtocolError:
        return
    assert all(isinstance(c, int) and isinstance(k, int) for k, c in clocks.items())


def test_real_state_vectors_decode() -> None:
    assert len(decode_state_vector(VECTOR)) == 1


@FUZZ
@given(st.sampled_from([KIND_UPDATE, KIND_STATE]), _values, _values, _values)
def test_state_records_with_hostile_bodies_refuse_cleanly(
    kind: str, name: Any, node: Any, payload: Any
) -> None:
    for body in ({0: name, 1: node, 2: payload}, {0: "team", 1: NODE.node_id.raw, 2: payload}):
        envelope = Envelope.create(NODE, "swarm/team", kind, body, now_ms=1)
        try:
            record = parse_state_record(envelope)
        except RemoteProtocolError:
            continue
        assert isinstance(record, StateUpdate | StateAnnounce)


def test_state_records_round_trip() -> None:
    for kind, body in (
        (KIND_UPDATE, update_body("team", NODE.node_id, UPDATE)),
        (KIND_STATE, state_body("team", NODE.node_id, VECTOR)),
    ):
        frame = Envelope.create(NODE, "swarm/team", kind, body, now_ms=5).frame
        record = parse_state_record(Envelope.decode(frame))
        assert record.node == NODE.node_id
        assert record.created_ms == 5


@FUZZ
@given(st.binary(max_size=400) | _flips.map(lambda f: _mutate(UPDATE, f)))
def test_doc_updates_apply_or_refuse(data: bytes) -> None:
    doc = SwarmDoc()
    with contextlib.suppress(DocError):
        doc.apply(data)
    # Whatever was merged, reading stays safe and writing still works.
    dict(doc.entries("state"))
    doc.change(lambda: doc.put("state", "after", 1))
    assert doc.get("state", "after") == 1


@FUZZ
@given(
    st.binary(max_size=300)
    | _flips.map(lambda f: _mutate(PROPOSAL, f))
    | _flips.map(lambda f: _mutate(BALLOT, f))
)
def test_signed_decision_records_open_or_refuse(data: bytes) -> None:
    for opener in (open_proposal, open_ballot):
        with contextlib.suppress(RemoteProtocolError):
            opener(data)
    verdict = verify_decision(open_proposal(PROPOSAL), [data, BALLOT])
    assert verdict.yes >= 1  # the genuine ballot still counts
    assert verdict.outcome in ("pending", "accepted", "rejected")


@FUZZ
@given(st.sampled_from([KIND_PROPOSAL, KIND_BALLOT]), _values, _values, _values)
def test_decision_records_with_hostile_bodies_refuse_cleanly(
    kind: str, name: Any, one: Any, two: Any
) -> None:
    frame = Envelope.create(
        AGENTS[0], "swarm/team", kind, {0: name, 1: one, 2: two}, now_ms=1
    ).frame
    with pytest.raises(RemoteProtocolError):
        (open_proposal if kind == KIND_PROPOSAL else open_ballot)(frame)


def test_random_keys_do_not_verify() -> None:
    frame = bytearray(BALLOT)
    at = frame.find(AGENTS[1].public_key)
    frame[at : at + 32] = SigningKey(os.urandom(32)).public_key
    with pytest.raises(RemoteProtocolError):
        open_ballot(bytes(frame))
