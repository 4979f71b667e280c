"""The shared swarm document over the in-process bus: convergence, partitions, restart, junk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
from pycrdt import Doc, Map

from meshd.clock import wall_ms
from meshd.swarms import SwarmError, Swarms
from protocol.envelope import Envelope
from protocol.errors import RejectReason, RemoteProtocolError
from protocol.ids import SigningKey
from protocol.swarm_state import (
    KIND_STATE,
    KIND_UPDATE,
    MAX_UPDATE_BYTES,
    StateAnnounce,
    answerers,
    claim_winner,
    decode_state_vector,
    lacks,
    parse_state_record,
    state_body,
    update_body,
)
from tests.swarms.test_swarms_service import Bus, spawn, swarm_node, until


def states(*nodes: Swarms) -> list[dict[str, Any]]:
    return [sw.shared.state("team") for sw in nodes]


def same(*nodes: Swarms) -> bool:
    first, *rest = states(*nodes)
    return all(s == first for s in rest)


async def test_concurrent_edits_converge_also_after_a_partition(tmp_path: Path) -> None:
    bus = Bus()
    async with (
        swarm_node(bus, tmp_path / "a.db", os.urandom(32)) as (rt_a, sw_a, net_a),
        swarm_node(bus, tmp_path / "b.db", os.urandom(32)) as (rt_b, sw_b, net_b),
        swarm_node(bus, tmp_path / "c.db", os.urandom(32)) as (rt_c, sw_c, net_c),
    ):
        nodes = (sw_a, sw_b, sw_c)
        for rt, sw in ((rt_a, sw_a), (rt_b, sw_b), (rt_c, sw_c)):
            await sw.join("team", await spawn(rt))
        # Concurrent writes: each node its own keys, all three the same key.
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i, sw in enumerate(nodes):
                for j in range(5):
                    nursery.start_soon(sw.shared.set_state, "team", f"n{i}.{j}", {"i": i, "j": j})
                nursery.start_soon(sw.shared.set_state, "team", "same", [i, None, 1.5])
        await until(lambda: same(*nodes) and len(states(sw_a)[0]) == 16, "three replicas agree")
        print(f"converged {trio.current_time() - start:.3f} s after 18 concurrent writes")
        state = states(sw_a)[0]
        assert state["n2.4"] == {"i": 2, "j": 4}
        assert state["same"] in ([0, None, 1.5], [1, None, 1.5], [2, None, 1.5])
        await sw_b.shared.set_state("team", "n0.0", None, delete=True)
        await until(lambda: all("n0.0" not in s for s in states(*nodes)), "the delete")

        # Partition A from B and C; both sides write; after healing all agree again.
        bus.partition([net_a], [net_b, net_c])
        await sw_a.shared.set_state("team", "x", "from a")
        await sw_b.shared.set_state("team", "x", "from b")
        await sw_c.shared.set_state("team", "y", 3)
        await trio.sleep(0.3)  # several sync rounds while cut: no crossing
        assert "y" not in states(sw_a)[0]
        assert states(sw_b)[0]["y"] == 3
        assert states(sw_b)[0]["x"] == "from b"
        healed = trio.current_time()
        bus.heal()
        await until(lambda: same(*nodes) and "y" in states(sw_a)[0], "agreement after healing")
        print(f"caught up {trio.current_time() - healed:.3f} s after the partition healed")
        assert states(sw_c)[0]["x"] in ("from a", "from b")
        stats = sw_a.stats()["shared"]
        # Someone answered A's announce with what it missed (not necessarily A itself).
        assert sum(s.stats()["shared"].get("sync_answers", 0) for s in nodes) > 0
        assert stats["state_rejected"] == {}


async def test_a_late_node_catches_up_and_state_survives_a_restart(tmp_path: Path) -> None:
    bus, seed = Bus(), os.urandom(32)
    async with swarm_node(bus, tmp_path / "a.db", seed) as (rt, sw, _):
        await sw.join("team", await spawn(rt))
        await sw.shared.set_state("team", "plan", {"steps": [1, 2, 3]})
        with pytest.raises(SwarmError):
            await sw.shared.set_state("team", "", 1)
        with pytest.raises(SwarmError):
            await sw.shared.set_state("team", "big", "x" * 20_000)
    async with (
        swarm_node(bus, tmp_path / "a.db", seed) as (_, sw, _),
        swarm_node(bus, tmp_path / "b.db", os.urandom(32)) as (_, sw_b, _),
    ):
        assert sw.shared.state("team") == {"plan": {"steps": [1, 2, 3]}}  # from the store
        await sw_b.create("team")  # B follows later: it learns the document by sync alone
        await until(lambda: sw_b.shared.state("team") == sw.shared.state("team"), "b catching up")
        info = sw_b.shared.info("team")
        assert info["bytes"] > 0
        assert info["clients"] == 1


async def test_bad_state_records_are_counted_not_fatal(tmp_path: Path) -> None:
    bus = Bus()
    async with swarm_node(bus, tmp_path / "a.db", os.urandom(32)) as (rt, sw, net):
        await sw.join("team", await spawn(rt))
        assert net.handler is not None
        other = SigningKey(os.urandom(32))
        junk = Envelope.create(
            other,
            "swarm/team",
            KIND_UPDATE,
            update_body("team", other.node_id, b"\x01\xff\xff\xff\xff\x0f"),
            now_ms=wall_ms(),
        )
        forged = Envelope.create(
            other,
            "swarm/team",
            KIND_STATE,
            state_body("team", sw.node_id, b"\x00"),  # names another node than its signer
            now_ms=wall_ms(),
        )
        await net.handler("swarm/team", junk.frame)
        await net.handler("swarm/team", forged.frame)
        assert sw.stats()["shared"]["state_rejected"] == {"bad_update": 1}
        assert sw.stats()["rejected"] == {"unauthorized": 1}
        await sw.shared.set_state("team", "still", "works")
        assert sw.shared.state("team") == {"still": "works"}


async def test_a_late_node_gets_few_answers_not_one_per_node(tmp_path: Path) -> None:
    bus = Bus()
    async with (
        swarm_node(bus, tmp_path / "1.db", os.urandom(32)) as (_, one, _),
        swarm_node(bus, tmp_path / "2.db", os.urandom(32)) as (_, two, _),
        swarm_node(bus, tmp_path / "3.db", os.urandom(32)) as (_, three, _),
        swarm_node(bus, tmp_path / "4.db", os.urandom(32)) as (_, four, _),
        swarm_node(bus, tmp_path / "5.db", os.urandom(32)) as (_, five, _),
    ):
        holders = [one, two, three, four, five]
        for sw in holders:
            await sw.create("team")
        async with swarm_node(bus, tmp_path / "w.db", os.urandom(32)) as (rt, writer, _):
            await writer.join("team", await spawn(rt))
            for i in range(5):
                await writer.shared.set_state("team", f"k{i}", i)
            await until(lambda: all(len(sw.shared.state("team")) == 5 for sw in holders), "copies")
        # The writer (the only author) is gone; five holders remain. A late node follows.
        await trio.sleep(0.3)  # holders hear each other's announces: who follows the swarm
        before = sum(sw.stats()["shared"].get("sync_answers", 0) for sw in holders)
        async with swarm_node(bus, tmp_path / "late.db", os.urandom(32)) as (_, late, _):
            await late.create("team")
            await until(lambda: len(late.shared.state("team")) == 5, "the late node")
            asked = late.stats()["shared"]["announces_sent"]
        answers = sum(sw.stats()["shared"].get("sync_answers", 0) for sw in holders) - before
        assert 1 <= answers <= 2 * asked, (answers, asked)  # not five per announce
        assert sum(sw.stats()["shared"].get("sync_left_to_others", 0) for sw in holders) > 0


def test_answerers_are_few_deterministic_and_reshuffled() -> None:
    nodes = [bytes([i]) * 38 for i in range(10)]
    first = answerers(nodes[0], 1000, nodes)
    assert len(first) == 2
    assert nodes[0] not in first  # never the announcer itself
    assert answerers(nodes[0], 1000, reversed(nodes)) == first  # order does not matter
    picks = {tuple(answerers(nodes[0], ms, nodes)) for ms in range(1000, 1040)}
    assert len({n for pick in picks for n in pick}) == 9  # every holder gets its turn
    assert answerers(nodes[0], 5, nodes[:2]) == [nodes[1]]


def _vector(*writers: int) -> bytes:
    doc: Doc[Any] = Doc()
    for n in writers:
        other: Doc[Any] = Doc()
        other.get("m", type=Map)["k"] = "v" * n
        doc.apply_update(other.get_update())
    return bytes(doc.get_state())


def test_state_vectors_decode_and_compare() -> None:
    assert decode_state_vector(b"\x00") == {}
    clocks = decode_state_vector(_vector(1, 2))
    assert len(clocks) == 2
    assert all(c >= 1 for c in clocks.values())
    assert lacks({}, clocks)
    assert not lacks(clocks, {})
    assert not lacks(clocks, clocks)
    for bad in (b"", b"\x01", b"\x01\x05", b"\x00\x00", b"\x02\x01\x01\x01\x01", b"\xff" * 9):
        with pytest.raises(RemoteProtocolError):
            decode_state_vector(bad)


def test_parse_state_record_checks_signer_topic_and_size() -> None:
    key = SigningKey(os.urandom(32))
    ok = Envelope.create(
        key, "swarm/team", KIND_STATE, state_body("team", key.node_id, b"\x00"), now_ms=1
    )
    record = parse_state_record(ok)
    assert isinstance(record, StateAnnounce)
    assert record.clocks == {}
    wrong_topic = Envelope.create(
        key, "swarm/other", KIND_STATE, state_body("team", key.node_id, b"\x00"), now_ms=1
    )
    with pytest.raises(RemoteProtocolError) as info:
        parse_state_record(wrong_topic)
    assert info.value.reason is RejectReason.WRONG_RECIPIENT
    with pytest.raises(ValueError, match="at most"):
        update_body("team", key.node_id, b"x" * (MAX_UPDATE_BYTES + 1))
    empty = Envelope.create(
        key, "swarm/team", KIND_UPDATE, {0: "team", 1: key.node_id.raw, 2: b""}, now_ms=1
    )
    with pytest.raises(RemoteProtocolError) as info:
        parse_state_record(empty)
    assert info.value.reason is RejectReason.TOO_LARGE


def test_claim_winner_is_lowest_live_time_then_id() -> None:
    a, b, c = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    claims = [(5, c), (5, b), (7, a)]
    assert claim_winner(claims, {a, b, c}) == b
    assert claim_winner(claims, {a, c}) == c  # b died: released to the next claimant
    assert claim_winner(claims, {a}) == a
    assert claim_winner(claims, set()) is None
    assert claim_winner(list(reversed(claims)), {a, b, c}) == b  # order does not matter


async def test_hostile_entries_in_the_document_are_skipped_and_counted(tmp_path: Path) -> None:
    async with swarm_node(Bus(), tmp_path / "a.db", os.urandom(32)) as (rt, sw, _):
        agent = await spawn(rt)
        await sw.join("team", agent)
        good = await sw.shared.add_task("team", {"n": 1}, agent)
        doc = sw.shared.doc("team")

        def junk() -> None:
            doc.put_frame("state", "bytes", b"\x00")  # not JSON text
            doc.put("tasks", "t-list", [1, 2])  # not a task map
            doc.put("tasks", "t-odd", {"spec": 1, "ms": "soon"})
            doc.put_frame("tasks", "t-bytes", b"\x01")
            doc.put("claims", f"{good}/not-a-did", {"ms": 1})
            doc.put("claims", f"{good}/{agent.did}", {"ms": "x"})
            doc.put("claims", "no-slash", 5)
            doc.put("done", "t-odd", "yes")
            doc.put("proposals", "ab" * 16, {"not": "a frame"})
            doc.put_frame("proposals", "cd" * 16, b"junk")
            doc.put_frame("ballots", "cd" * 16 + "/x", b"junk")

        await sw.shared._commit("team", doc.change(junk))
        assert sw.shared.state("team") == {}
        board = {t["id"]: t for t in sw.shared.tasks("team")}
        assert set(board) == {good, "t-odd"}
        assert board[good]["state"] == "open"  # its only claim is malformed
        assert board["t-odd"]["state"] == "open"
        assert sw.shared.proposals("team") == []
        bad = sw.stats()["shared"]["bad_entries"]
        assert bad["state"] >= 1
        assert bad["tasks"] >= 1
        assert bad["claims"] >= 1
        assert bad["proposals"] >= 1
        # The board still works around the junk.
        assert await sw.shared.claim("team", good, agent, 0)
        assert await sw.shared.complete("team", good, agent, "ok")


async def test_a_quiet_document_is_announced_rarely(tmp_path: Path) -> None:
    bus = Bus()
    async with (
        swarm_node(bus, tmp_path / "a.db", os.urandom(32)) as (rt, sw, _),
        swarm_node(bus, tmp_path / "b.db", os.urandom(32)) as (_, sw_b, _),
    ):
        await sw.join("team", await spawn(rt))
        await sw_b.create("team")
        await sw.shared.set_state("team", "k", 1)
        await until(lambda: sw_b.shared.state("team") == {"k": 1}, "the write")
        await trio.sleep(0.2)
        before = sw.stats()["shared"].get("announces_sent", 0)
        await trio.sleep(1.0)  # 20 heartbeats of 50 ms, nothing written
        sent = sw.stats()["shared"]["announces_sent"] - before
        assert 1 <= sent <= 3, sent  # every 10 heartbeats, not every 2
        assert sw.stats()["shared"]["announces_skipped"] > 0
        await sw.shared.set_state("team", "k", 2)  # a change is announced at once again
        await until(lambda: sw_b.shared.state("team") == {"k": 2}, "the second write")
