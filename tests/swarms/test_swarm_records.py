"""Swarm records and the membership view (protocol.swarm): parsing, ordering, expiry."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.envelope import Envelope
from protocol.errors import RejectReason, RemoteProtocolError
from protocol.ids import AgentId, NodeId, SigningKey
from protocol.swarm import (
    KIND_AGGREGATE,
    KIND_HEARTBEAT,
    KIND_JOIN,
    KIND_LEAVE,
    Aggregate,
    Heartbeat,
    Join,
    Leave,
    SwarmView,
    aggregate_body,
    check_swarm_name,
    heartbeat_body,
    join_body,
    leave_body,
    parse_record,
    swarm_topic,
)

NODE_A, NODE_B = SigningKey(b"\x01" * 32), SigningKey(b"\x02" * 32)


def env(key: SigningKey, kind: str, body: Any, ms: int, topic: str = "swarm/s") -> Envelope:
    return Envelope.create(key, topic, kind, body, now_ms=ms)


def join(agent: SigningKey, node: SigningKey, ms: int, parent: str | None = None) -> Join:
    record = parse_record(env(agent, KIND_JOIN, join_body("s", node.node_id, parent), ms))
    assert isinstance(record, Join)
    return record


def leave(agent: SigningKey, ms: int) -> Leave:
    record = parse_record(env(agent, KIND_LEAVE, leave_body("s"), ms))
    assert isinstance(record, Leave)
    return record


def hb(
    node: SigningKey,
    members: list[SigningKey],
    ms: int,
    interval_ms: int = 1000,
    sums: dict[str, int | float] | None = None,
) -> Heartbeat:
    ids = [m.agent_id for m in members]
    body = heartbeat_body("s", node.node_id, ids, interval_ms, None, sums)
    record = parse_record(env(node, KIND_HEARTBEAT, body, ms))
    assert isinstance(record, Heartbeat)
    return record


def agents(n: int) -> list[SigningKey]:
    return sorted((SigningKey(os.urandom(32)) for _ in range(n)), key=lambda k: k.public_key)


def test_names_and_topic() -> None:
    assert swarm_topic("team-1.a_b") == "swarm/team-1.a_b"
    for bad in ("", "-x", "a/b", "x" * 65, "é", 3):
        with pytest.raises(ValueError, match="a swarm name is"):
            check_swarm_name(bad)


def test_records_round_trip() -> None:
    (a,) = agents(1)
    j = join(a, NODE_A, 10, parent="top")
    assert (j.swarm, j.agent, j.node, j.parent, j.created_ms) == (
        "s",
        a.agent_id,
        NODE_A.node_id,
        "top",
        10,
    )
    assert leave(a, 11).agent == a.agent_id
    h = hb(NODE_A, [a], 12, interval_ms=500)
    assert (h.node, h.members, h.interval_ms) == (NODE_A.node_id, (a.agent_id,), 500)


def test_heartbeat_must_be_signed_by_its_node() -> None:
    (a,) = agents(1)
    body = heartbeat_body("s", NODE_A.node_id, [a.agent_id], 1000, None)
    for signer in (NODE_B, a):
        with pytest.raises(RemoteProtocolError) as info:
            parse_record(env(signer, KIND_HEARTBEAT, body, 1))
        assert info.value.reason is RejectReason.UNAUTHORIZED


def test_bad_records_are_refused_with_a_reason() -> None:
    (a,) = agents(1)
    node = NODE_A.node_id.raw
    cases = [
        (KIND_JOIN, {0: "s", 1: node}, RejectReason.MALFORMED),
        (KIND_JOIN, {0: "s", 1: b"not a node", 2: None}, RejectReason.MALFORMED),
        (KIND_JOIN, {0: "../x", 1: node, 2: None}, RejectReason.MALFORMED),
        (KIND_LEAVE, ["s"], RejectReason.MALFORMED),
        (KIND_LEAVE, {0: "other"}, RejectReason.WRONG_RECIPIENT),
        ("swarm.what", {0: "s"}, RejectReason.MALFORMED),
    ]
    for kind, body, reason in cases:
        with pytest.raises(RemoteProtocolError) as info:
            parse_record(env(a, kind, body, 1))
        assert info.value.reason is reason, (kind, body)
    hb_cases = [
        {0: "s", 1: node, 2: [b"short"], 3: 1000, 4: None, 5: {}},
        {0: "s", 1: node, 2: [], 3: 0, 4: None, 5: {}},
        {0: "s", 1: node, 2: [os.urandom(32)] * 1501, 3: 1000, 4: None, 5: {}},
        {0: "s", 1: node, 2: [], 3: 1000, 4: None, 5: {"x": "1"}},
        {0: "s", 1: node, 2: [], 3: 1000, 4: None, 5: {"x": float("inf")}},
        {0: "s", 1: node, 2: [], 3: 1000, 4: None},
    ]
    for body in hb_cases:
        with pytest.raises(RemoteProtocolError):
            parse_record(env(NODE_A, KIND_HEARTBEAT, body, 1))


@given(
    st.dictionaries(
        st.integers(0, 5),
        st.one_of(st.none(), st.integers(), st.binary(), st.text(), st.lists(st.binary())),
    )
)
def test_arbitrary_bodies_parse_or_raise_remote_protocol_error(body: dict[int, Any]) -> None:
    for kind in (KIND_JOIN, KIND_LEAVE, KIND_HEARTBEAT, KIND_AGGREGATE):
        with contextlib.suppress(RemoteProtocolError):
            parse_record(env(NODE_A, kind, body, 1))


def test_view_members_and_lowest_id_coordinator() -> None:
    a, b, c = agents(3)
    view = SwarmView("s")
    assert view.coordinator(0.0) is None
    assert view.apply(join(c, NODE_B, 1), 0.0)
    assert view.coordinator(0.0) == c.agent_id
    view.apply(join(b, NODE_A, 1), 0.0)
    view.apply(join(a, NODE_B, 2), 0.0)
    assert view.members(0.0) == {
        a.agent_id: NODE_B.node_id,
        b.agent_id: NODE_A.node_id,
        c.agent_id: NODE_B.node_id,
    }
    assert view.coordinator(0.0) == a.agent_id
    view.apply(leave(a, 3), 0.1)
    assert view.coordinator(0.1) == b.agent_id
    assert view.nodes(0.1) == sorted([NODE_A.node_id, NODE_B.node_id], key=lambda n: n.raw)


def test_crashed_node_leaves_after_misses_intervals() -> None:
    a, b = agents(2)
    view = SwarmView("s", misses=3)
    view.apply(hb(NODE_A, [a], 100, interval_ms=1000), 0.0)
    view.apply(hb(NODE_B, [b], 100, interval_ms=1000), 0.0)
    assert view.coordinator(0.0) == a.agent_id
    view.apply(hb(NODE_B, [b], 200, interval_ms=1000), 2.5)
    assert view.coordinator(2.9) == a.agent_id  # A missed fewer than 3 intervals
    assert view.coordinator(3.1) == b.agent_id  # A is gone, B re-chosen
    assert view.members(3.1) == {b.agent_id: NODE_B.node_id}
    assert view.expire(10.0) == [NODE_B.node_id]
    assert view.coordinator(10.0) is None


def test_ordering_by_the_nodes_own_clock() -> None:
    a, b = agents(2)
    view = SwarmView("s")
    view.apply(hb(NODE_A, [a, b], 100), 0.0)
    # A leave made after the heartbeat wins over that heartbeat arriving late, and a
    # heartbeat made before the leave does not bring the agent back.
    view.apply(leave(a, 150), 0.1)
    assert not view.apply(hb(NODE_A, [a, b], 90), 0.2)  # older than the last heartbeat
    view.apply(hb(NODE_A, [a, b], 140), 0.2)
    assert a.agent_id not in view.members(0.2)
    # A join made after a heartbeat survives that heartbeat; a join before a leave does not.
    c = agents(1)[0]
    view.apply(join(c, NODE_A, 300), 0.3)
    view.apply(hb(NODE_A, [b], 250), 0.3)
    assert c.agent_id in view.members(0.3)
    assert not view.apply(join(a, NODE_A, 120), 0.3)
    assert view.apply(join(a, NODE_A, 400), 0.3)
    assert a.agent_id in view.members(0.3)
    # A heartbeat that no longer lists an agent drops it.
    view.apply(hb(NODE_A, [b], 500), 0.4)
    assert set(view.members(0.4)) == {b.agent_id}


def test_views_fed_the_same_records_in_any_order_agree() -> None:
    keys = agents(6)
    records: list[Any] = [join(k, NODE_A if i % 2 else NODE_B, 10 + i) for i, k in enumerate(keys)]
    records += [leave(keys[0], 50), leave(keys[3], 51)]
    records += [hb(NODE_A, [keys[1], keys[5]], 60), hb(NODE_B, [keys[2], keys[4]], 60)]
    rng = random.Random(7)
    results = set()
    for _ in range(20):
        shuffled = records[:]
        rng.shuffle(shuffled)
        view = SwarmView("s")
        for record in shuffled:
            view.apply(record, 0.0)
        results.add((tuple(view.members(0.0).items()), view.coordinator(0.0)))
    assert len(results) == 1
    ((members, coordinator),) = results
    assert coordinator == keys[1].agent_id
    assert [m for m, _ in members] == [keys[i].agent_id for i in (1, 2, 4, 5)]


def test_view_is_bounded_in_nodes() -> None:
    view = SwarmView("s", max_nodes=2)
    (a,) = agents(1)
    nodes = [SigningKey(os.urandom(32)) for _ in range(3)]
    assert view.apply(hb(nodes[0], [a], 1), 0.0)
    assert view.apply(hb(nodes[1], [], 1), 0.0)
    assert not view.apply(hb(nodes[2], [], 1), 0.0)
    assert NodeId(nodes[0].node_id.raw) in view.nodes(0.0)
    assert AgentId(a.public_key) in view.members(0.0)


def agg(signer: SigningKey, child: str, agents_: int, totals: dict[str, int | float]) -> Aggregate:
    body = aggregate_body("s", child, agents_, totals, 1000)
    record = parse_record(env(signer, KIND_AGGREGATE, body, 1))
    assert isinstance(record, Aggregate)
    return record


def test_aggregate_sums_members_and_child_reports() -> None:
    a, b, c = agents(3)
    view = SwarmView("s", misses=3)
    view.apply(hb(NODE_A, [a, b], 1, sums={"work": 2, "cpu": 0.5}), 0.0)
    view.apply(hb(NODE_B, [c], 1, sums={"work": 3}), 0.0)
    view.apply(agg(a, "kid1", 100, {"work": 40}), 0.0)
    view.apply(agg(b, "kid2", 7, {"work": 1, "mem": 9}), 0.0)
    assert view.aggregate(0.0) == (110, {"cpu": 0.5, "mem": 9, "work": 46})
    # A later report from another signer (a new coordinator) replaces the child's last one.
    view.apply(agg(c, "kid2", 8, {"work": 2}), 1.0)
    assert view.children(1.0) == {"kid1": (100, {"work": 40}), "kid2": (8, {"work": 2})}
    # Reports expire like heartbeats: kid1 silent for more than 3 intervals.
    view.apply(agg(c, "kid2", 8, {"work": 2}), 3.5)
    view.apply(hb(NODE_A, [a, b], 2, sums={"work": 2}), 3.5)
    view.apply(hb(NODE_B, [c], 2, sums={"work": 3}), 3.5)
    assert view.aggregate(3.5) == (11, {"work": 7})


def test_bad_aggregates_are_refused() -> None:
    (a,) = agents(1)
    for body in (
        {0: "s", 1: "s", 2: 1, 3: {}, 4: 1000},
        {0: "s", 1: "k", 2: -1, 3: {}, 4: 1000},
        {0: "s", 1: "k", 2: True, 3: {}, 4: 1000},
        {0: "s", 1: "k", 2: 1, 3: {"": 1}, 4: 1000},
        {0: "s", 1: "k", 2: 1, 3: {}, 4: 0},
        {0: "other", 1: "k", 2: 1, 3: {}, 4: 1000},
    ):
        with pytest.raises(RemoteProtocolError):
            parse_record(env(a, KIND_AGGREGATE, body, 1))
