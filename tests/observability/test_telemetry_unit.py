"""Telemetry sketches and tables (sans-IO) and the service's checks of what peers send."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
import trio

from meshd.telemetry import Telemetry
from protocol.errors import RemoteProtocolError
from protocol.ids import SigningKey
from protocol.telemetry import EpochSketches, MeshTable, NodeEntry, TelemetryReport


def entry(node: bytes, seq: int, age_ms: int = 0, **rates: int) -> NodeEntry:
    return NodeEntry(node, seq, age_ms, {"agents": seq}, dict(rates))


def test_table_keeps_newest_seq_and_sums_each_node_once() -> None:
    table = MeshTable(max_nodes=8, ttl_s=60)
    a, b = SigningKey.generate().node_id.raw, SigningKey.generate().node_id.raw
    assert table.merge(entry(a, 5), now=0)
    assert not table.merge(entry(a, 4), now=0)  # older version
    assert not table.merge(entry(a, 5), now=0)  # the same version again, by another path
    assert table.merge(entry(b, 7), now=0)
    assert table.sums()[0]["agents"] == 12


def test_table_ages_entries_out_and_they_cannot_come_back() -> None:
    table = MeshTable(max_nodes=8, ttl_s=10)
    node = SigningKey.generate().node_id.raw
    table.merge(entry(node, 1, age_ms=4000), now=0)
    forwarded = table.entries(now=5)[0]
    assert forwarded.age_ms >= 9000  # 4 s old when it came, held 5 s
    assert table.entries(now=7) == []
    # Echoed back by a neighbour, it keeps its age: it leaves again when that passes the TTL.
    assert table.merge(forwarded, now=7)
    assert table.entries(now=8.1) == []
    assert not table.merge(NodeEntry(node, 1, 10_001, {}, {}), now=9)


def test_table_is_bounded_and_prefers_young_entries() -> None:
    table = MeshTable(max_nodes=2, ttl_s=60)
    nodes = [SigningKey.generate().node_id.raw for _ in range(3)]
    table.merge(entry(nodes[0], 1, age_ms=5000), now=0)
    table.merge(entry(nodes[1], 1, age_ms=1000), now=0)
    assert table.merge(entry(nodes[2], 1, age_ms=0), now=0)
    assert len(table) == 2
    assert table.get(nodes[0]) is None


def test_report_round_trip_and_merge_is_idempotent() -> None:
    key = SigningKey.generate()
    sketches = EpochSketches()
    sketches.rotate(3)
    sketches.add([os.urandom(32) for _ in range(2000)], [key.node_id.raw])
    data = TelemetryReport.encode(
        key, created_ms=1, sketches=sketches.items(), entries=[entry(key.node_id.raw, 1)]
    )
    report = TelemetryReport.decode(data)
    report.verify()
    other = EpochSketches()
    other.rotate(3)
    for _ in range(2):
        for epoch, agents, nodes in report.sketches:
            assert other.merge(epoch, agents, nodes)
    estimate, nodes_estimate = other.estimates()
    assert abs(estimate - 2000) <= 3 * 0.0163 * 2000
    assert round(nodes_estimate) == 1
    tampered = bytearray(data)
    tampered[-1] ^= 1
    with pytest.raises(RemoteProtocolError):
        TelemetryReport.decode(bytes(tampered)).verify()


class _Peers:
    """Just enough of a Network for Telemetry outside of serve()."""

    def __init__(self, peers: list[Any]) -> None:
        self.peers = peers

    def connected_peers(self) -> list[Any]:
        return self.peers


async def test_bad_reports_are_counted_by_reason() -> None:
    me, peer, stranger = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    telemetry = Telemetry(me, _Peers([]), None, None)  # type: ignore[arg-type]
    answer = await telemetry._on_request(peer.node_id.text, b"\xff junk")
    assert TelemetryReport.decode(answer).node == me.node_id  # still answered
    good = TelemetryReport.encode(stranger, created_ms=1, sketches=[], entries=[])
    await telemetry._on_request(peer.node_id.text, good)  # signed by someone else
    assert telemetry.rejected == {"malformed": 1, "wrong_sender": 1}
    await telemetry._on_request(stranger.node_id.text, good)
    assert sum(telemetry.rejected.values()) == 2


async def test_a_node_far_above_the_mesh_is_flagged() -> None:
    me = SigningKey.generate()
    telemetry = Telemetry(me, _Peers([]), None, None)  # type: ignore[arg-type]
    others = [SigningKey.generate().node_id.raw for _ in range(4)]
    now = trio.current_time()
    for i, node in enumerate(others):
        rejects = 50_000 if i == 0 else 1_000  # thousandths per second: 50/s vs 1/s
        telemetry._table.merge(entry(node, 1, rejects=rejects, msgs_in=100_000), now)
    anomalies = telemetry.status()["anomalies"]
    assert [(a["metric"], a["rate_per_s"]) for a in anomalies] == [("rejects", 50.0)]


def test_pick_sends_own_entry_and_news_first_and_the_rest_in_turn() -> None:
    table = MeshTable(max_nodes=256, ttl_s=60)
    own = SigningKey.generate().node_id.raw
    others = [SigningKey.generate().node_id.raw for _ in range(40)]
    table.merge(entry(own, 1), now=0)
    for node in others:
        table.merge(entry(node, 1), now=0)
    seen: list[bytes] = []
    for _ in range(5):  # 5 reports of 9 others: all 40 go out before any goes twice
        picked = table.pick(now=1, limit=10, first=own)
        assert len(picked) == 10
        assert picked[0].node == own
        seen += [e.node for e in picked[1:]]
    assert len(set(seen[:40])) == 40
    table.merge(entry(others[7], 2), now=2)  # a newer version: news, goes out next
    assert [e.node for e in table.pick(now=2, limit=2, first=own)] == [own, others[7]]


async def test_a_report_carries_a_bounded_part_of_a_large_table() -> None:
    me = SigningKey.generate()
    telemetry = Telemetry(me, _Peers([]), None, None)  # type: ignore[arg-type]
    telemetry._refresh_own(trio.current_time())
    for _ in range(200):
        telemetry._table.merge(entry(SigningKey.generate().node_id.raw, 1), trio.current_time())
    report = TelemetryReport.decode(telemetry._report())
    assert len(report.entries) == telemetry.settings.report_entries == 32
    assert report.entries[0].node == me.node_id.raw


def test_bounded_reports_still_give_every_table_every_node() -> None:
    # Push-pull gossip as the service runs it, over a random graph of degree 8: every node
    # refreshes its entry each round and exchanges 32-entry reports with 4 neighbours.
    rng = random.Random(7)
    count, limit, ttl_s = 150, 32, 120.0
    nodes = [SigningKey.generate().node_id.raw for _ in range(count)]
    tables = [MeshTable(max_nodes=256, ttl_s=ttl_s) for _ in nodes]
    neighbours = [rng.sample([j for j in range(count) if j != i], 8) for i in range(count)]
    for round_ in range(1, 13):
        now = round_ * 5.0
        for i, table in enumerate(tables):
            table.merge(entry(nodes[i], round_), now)
        for i in rng.sample(range(count), count):
            for j in rng.sample(neighbours[i], 4):
                ours = tables[i].pick(now, limit, first=nodes[i])
                theirs = tables[j].pick(now, limit, first=nodes[j])
                for e in ours:
                    tables[j].merge(e, now)
                for e in theirs:
                    tables[i].merge(e, now)
    assert all(len(table) == count for table in tables)
    # Every entry held is at most 10 rounds (50 s) behind, well inside the 120 s TTL, and
    # on average less than one round behind (measured: 8 at most and 0.48; 0.1 unbounded).
    seqs = [table.get(n).seq for table in tables for n in nodes]  # type: ignore[union-attr]
    assert min(seqs) >= 12 - 10
    assert sum(12 - s for s in seqs) / len(seqs) < 1.0
