"""Sans-IO parts of node summaries: sizing, reshaping, deltas, history and messages."""

from __future__ import annotations

import contextlib
import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.bloom import BloomFilter
from protocol.cbor import DecodeLimits
from protocol.errors import RemoteProtocolError
from protocol.ids import SigningKey
from protocol.records import NodeSummary, SummaryDelta
from protocol.summary import (
    PUSH_DELTA,
    PUSH_FULL,
    Found,
    Located,
    SummaryHistory,
    decode_ack,
    decode_find,
    decode_find_answer,
    decode_locate_answer,
    decode_request,
    encode_ack,
    encode_find,
    encode_find_answer,
    encode_locate,
    encode_locate_answer,
    encode_push,
    family_problem,
    hashes_for,
    match_agent,
    reshape,
    sized_filter,
    union_into,
)

NODE = SigningKey.from_seed(b"\x01" * 32)
OTHER = SigningKey.from_seed(b"\x02" * 32)
LIMITS = DecodeLimits(max_size=1 << 20, max_depth=6, max_str=1 << 20, max_items=64)


def ids(n: int, salt: str = "") -> list[bytes]:
    return [hashlib.sha256(f"{salt}{i}".encode()).digest() for i in range(n)]


def summary(
    agents: list[bytes], seq: int, key: SigningKey = NODE, fp: float = 0.01, bits: int = 0
) -> NodeSummary:
    bloom = sized_filter(len(agents), fp) if not bits else BloomFilter(bits, hashes_for(fp), 0)
    bloom.add_many(agents)
    caps = sized_filter(2, fp)
    caps.add_many([b"translate", b"echo"])
    level = sized_filter(100, fp)
    level.add_many(ids(100, "level"))
    return NodeSummary.create(
        key,
        seq=seq,
        created_ms=1000 + seq,
        agents=bloom,
        caps=caps,
        counts={"agents": len(agents)},
        levels=[level],
    )


@pytest.mark.parametrize("items", [1, 10, 100, 1000, 20_000])
@pytest.mark.parametrize("fp", [0.01, 0.05])
def test_sized_filter_meets_the_target_rate(items: int, fp: float) -> None:
    bloom = sized_filter(items, fp)
    words = bloom.bits // 64
    assert words & (words - 1) == 0
    assert bloom.seed == 0
    bloom.add_many(ids(items))
    assert all(bloom.contains_many(ids(items)))  # no false negatives
    probes = ids(20_000, "absent")
    observed = sum(bloom.contains_many(probes)) / len(probes)
    # At most the target (sampling slack included), and not absurdly oversized either.
    assert observed <= fp * 1.3 + 0.002
    assert sized_filter(items, fp).bits == 256 or bloom.estimate_fp_rate() > fp / 40


@given(st.integers(0, 5), st.integers(0, 5), st.integers(1, 300))
@settings(max_examples=40, deadline=None)
def test_reshape_keeps_every_item(size_from: int, size_to: int, n: int) -> None:
    bloom = BloomFilter(64 << size_from, 5, 0)
    items = ids(n, "r")
    bloom.add_many(items)
    other = reshape(bloom, 64 << size_to)
    assert other.bits == 64 << size_to
    assert all(item in other for item in items)


def test_union_of_filters_of_different_sizes() -> None:
    small, big = sized_filter(10, 0.01), sized_filter(5000, 0.01)
    small.add_many(ids(10, "s"))
    big.add_many(ids(5000, "b"))
    target = sized_filter(5010, 0.01)
    assert union_into(target, [small, big, BloomFilter(1024, 3, 0)]) == 2  # k=3: skipped
    assert all(target.contains_many(ids(10, "s") + ids(5000, "b")))


def test_delta_rebuilds_the_signed_summary() -> None:
    base = summary(ids(1000), seq=1, bits=16384)
    new = summary(ids(1000)[2:] + ids(3, "new"), seq=2, bits=16384)
    delta = SummaryDelta.between(base, new)
    assert delta is not None
    encoded = delta.encode()
    assert len(encoded) < len(new.encoded) / 2
    rebuilt = SummaryDelta.decode(encoded).apply(base)
    assert rebuilt == new
    assert rebuilt.encoded == new.encoded
    with pytest.raises(RemoteProtocolError):  # not the base it was made against
        SummaryDelta.decode(encoded).apply(new)


def test_tampered_delta_fails_its_signature() -> None:
    base = summary(ids(50), seq=1, bits=1024)
    new = summary(ids(60), seq=2, bits=1024)
    delta = SummaryDelta.between(base, new)
    assert delta is not None
    forged = SummaryDelta(
        delta.node, 1, 2, delta.created_ms, delta.agents, delta.caps,
        {"agents": 9999}, delta.levels, delta.signature,
    )  # fmt: skip
    with pytest.raises(RemoteProtocolError) as info:
        SummaryDelta.decode(forged.encode()).apply(base)
    assert info.value.reason.value == "bad_signature"


def test_resized_filter_needs_a_whole_summary() -> None:
    base = summary(ids(10), seq=1)
    grown = summary(ids(5000), seq=2)
    assert SummaryDelta.between(base, grown) is None


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_arbitrary_bytes_decode_or_raise_remote_errors(data: bytes) -> None:
    for decode in (
        lambda d: SummaryDelta.decode(d),
        lambda d: decode_request(d, LIMITS),
        decode_ack,
        decode_locate_answer,
        decode_find,
        decode_find_answer,
    ):
        with contextlib.suppress(RemoteProtocolError):
            decode(data)


def test_history_sends_deltas_against_what_a_neighbour_holds() -> None:
    history = SummaryHistory(keep=3)
    assert history.payload_for(None) is None
    agents = ids(200)
    for seq in range(1, 6):
        history.add(summary(agents[: 150 + seq], seq=seq, bits=4096))
    assert history.payload_for(5) is None  # up to date: nothing to send
    kind, body = history.payload_for(4) or (None, b"")
    assert kind == PUSH_DELTA
    assert SummaryDelta.decode(body).apply(summary(agents[:154], 4, bits=4096)).seq == 5
    assert (history.payload_for(1) or (None,))[0] == PUSH_FULL  # forgotten: whole summary
    assert (history.payload_for(None) or (None,))[0] == PUSH_FULL


def test_family_problem_names_filters_outside_the_family() -> None:
    good = summary(ids(10), seq=1)
    assert family_problem(good, 1 << 20) is None
    odd = BloomFilter(192, good.agents.hashes, 0)  # 3 words: not a power of two
    bad = NodeSummary.create(
        NODE, seq=2, created_ms=1, agents=odd, caps=good.caps, counts={}, levels=()
    )
    assert family_problem(bad, 1 << 20) is not None
    assert family_problem(good, 64) is not None  # larger than allowed


def test_message_round_trips() -> None:
    agent = ids(1)[0]
    assert decode_request(encode_push(PUSH_FULL, b"x"), LIMITS) == (PUSH_FULL, b"x")
    assert decode_request(encode_locate(agent), LIMITS) == (2, agent)
    for held in (None, 0, 17):
        assert decode_ack(encode_ack(held)) == held
    found = [Located("12D3Koo", ("/ip4/127.0.0.1/tcp/1",), 1)]
    assert decode_locate_answer(encode_locate_answer(found)) == found
    assert decode_find(encode_find("translate", 10, 1)) == ("translate", 10, 1)
    answer = [Found(agent, "echo", "12D3Koo")]
    assert decode_find_answer(encode_find_answer(answer)) == answer
    with pytest.raises(RemoteProtocolError):
        decode_find(encode_find("t", 10, 9))  # too many hops
    with pytest.raises(RemoteProtocolError):
        decode_request(encode_push(7, b""), LIMITS)


def test_observed_fp_rate_of_a_mesh_of_summaries() -> None:
    """Nine neighbours' filters, probed with the agents of the others: near the target."""
    rng = random.Random(6)
    fp = 0.02
    nodes = [ids(rng.randint(20, 400), f"node{i}") for i in range(9)]
    filters = []
    for agents in nodes:
        bloom = sized_filter(len(agents), fp)
        bloom.add_many(agents)
        filters.append(bloom)
    trials = hits = 0
    for i, agents in enumerate(nodes):
        for j, bloom in enumerate(filters):
            if i != j:
                trials += len(agents)
                hits += sum(bloom.contains_many(agents))
    assert hits / trials <= fp * 1.5


def test_match_agent_names_hosts_first_then_neighbours_of_hosts() -> None:
    mine, theirs = ids(10, "mine"), ids(10, "theirs")
    near = summary(mine, 1)  # hosts `mine`; its level 1 holds ids(100, "level")
    far = summary(theirs, 1, key=OTHER)
    held = [("near", near), ("far", far)]
    assert match_agent(mine[3], held) == (("near", 0),)
    assert match_agent(theirs[3], held) == (("far", 0),)
    # Named by both levels 1 (the same filter here) and hosted by nobody: both, at level 1.
    assert match_agent(ids(100, "level")[7], held) == (("near", 1), ("far", 1))
    # A host comes before a node next to it, whatever the order of the summaries.
    host = summary([*mine, ids(100, "level")[7]], 2, key=OTHER)
    assert match_agent(ids(100, "level")[7], [("near", near), ("host", host)]) == (
        ("host", 0),
        ("near", 1),
    )
    assert match_agent(ids(1, "nobody")[0], held) == ()
