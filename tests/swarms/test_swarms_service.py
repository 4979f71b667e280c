"""The swarm service over an in-process bus: joins, heartbeats, crash, restart, bad input."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from meshd.clock import wall_ms
from meshd.pubsub import Topics
from meshd.runtime.runtime import Runtime
from meshd.runtime.sdk import AgentError
from meshd.store import Store
from meshd.swarm_settings import SwarmSettings
from meshd.swarms import SwarmError, Swarms
from protocol.envelope import Envelope, open_envelope
from protocol.errors import RemoteProtocolError
from protocol.ids import AgentId, SigningKey
from protocol.swarm import KIND_HEARTBEAT, heartbeat_body
from simnet.topicbus import TopicBus, TopicBusNet
from tests.swarms import kinds

STEP_S = 10.0
SEED = int(os.environ.get("MESHD_TEST_SEED", "0")) or random.randrange(1, 2**32)
print(f"swarm bus seed: {SEED} (MESHD_TEST_SEED reproduces it)")
FAST = SwarmSettings(heartbeat_s=0.05, misses=3)


async def until(check: Callable[[], Any], what: str) -> None:
    """Poll `check` until true; fail after STEP_S (bounded)."""
    with trio.move_on_after(STEP_S):
        while not check():  # noqa: ASYNC110 - polling keeps the tests off internals
            await trio.sleep(0.01)
        return
    pytest.fail(f"timed out waiting for {what}")


def Bus() -> TopicBus:
    """A topic bus for these tests, its latency drawn from the run's seed."""
    return TopicBus(seed=SEED)


@asynccontextmanager
async def swarm_node(
    bus: TopicBus, path: Path, seed: bytes, settings: SwarmSettings = FAST
) -> AsyncIterator[tuple[Runtime, Swarms, TopicBusNet]]:
    """A runtime, its pub/sub and its swarms over the bus; all stopped on exit (a crash)."""
    async with Store(path) as store, trio.open_nursery() as nursery:
        runtime = Runtime(store, SigningKey(seed))
        net = TopicBusNet(bus)
        topics = net.topics = Topics(runtime, net)
        swarms = Swarms(runtime, net, topics, node_key=SigningKey(seed), settings=settings)
        runtime.swarms = swarms  # as build_node does, for ctx.swarm
        await nursery.start(runtime.serve)
        await nursery.start(topics.serve)
        await nursery.start(swarms.serve)
        try:
            yield runtime, swarms, net
        finally:
            bus.leave(net)
            nursery.cancel_scope.cancel()


async def spawn(runtime: Runtime) -> AgentId:
    (info,) = await runtime.spawn("echo")
    return AgentId.from_did(info["id"])


def view(swarms: Swarms, name: str = "team") -> tuple[Any, Any]:
    return (tuple(swarms.members(name).items()), swarms.coordinator(name))


async def test_three_nodes_agree_then_a_crash_re_chooses(tmp_path: Path) -> None:
    bus = Bus()
    seeds = [os.urandom(32) for _ in range(3)]
    async with (
        swarm_node(bus, tmp_path / "a.db", seeds[0]) as (rt_a, sw_a, _),
        swarm_node(bus, tmp_path / "b.db", seeds[1]) as (rt_b, sw_b, _),
        trio.open_nursery() as crash_scope,
    ):
        # Node C runs in a scope we can cancel: its heartbeats simply stop.
        got: dict[str, Any] = {}

        async def run_c(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            async with swarm_node(bus, tmp_path / "c.db", seeds[2]) as (rt_c, sw_c, _):
                got["c"] = (rt_c, sw_c)
                task_status.started()
                await trio.sleep_forever()

        await crash_scope.start(run_c)
        rt_c, sw_c = got["c"]
        everyone = {}
        for rt, sw in ((rt_a, sw_a), (rt_b, sw_b), (rt_c, sw_c)):
            for _ in range(2):
                agent = await spawn(rt)
                assert await sw.join("team", agent)
                everyone[agent] = sw.node_id
        assert not await sw_a.join(
            "team", next(a for a, n in everyone.items() if n == sw_a.node_id)
        )
        expected = dict(sorted(everyone.items(), key=lambda item: item[0].raw))
        lowest = min(everyone, key=lambda a: a.raw)
        await until(
            lambda: all(view(sw) == (tuple(expected.items()), lowest) for sw in (sw_a, sw_b, sw_c)),
            "three views agreeing",
        )
        # Crash the coordinator's node (or C if the coordinator is elsewhere).
        crash_scope.cancel_scope.cancel()
        survivors = {a: n for a, n in expected.items() if n != sw_c.node_id}
        new_lowest = min(survivors, key=lambda a: a.raw)
        await until(
            lambda: all(view(sw) == (tuple(survivors.items()), new_lowest) for sw in (sw_a, sw_b)),
            "the crashed node's agents leaving both views",
        )
        assert sw_a.show("team")["coordinator"] == new_lowest.did
        # The new coordinator leaves: both survivors move on to the next lowest.
        host = sw_a if survivors[new_lowest] == sw_a.node_id else sw_b
        assert await host.leave("team", new_lowest)
        assert not await host.leave("team", new_lowest)
        rest = {a: n for a, n in survivors.items() if a != new_lowest}
        third = min(rest, key=lambda a: a.raw)
        await until(
            lambda: all(view(sw) == (tuple(rest.items()), third) for sw in (sw_a, sw_b)),
            "the leave seen by both survivors",
        )


async def test_leave_and_show_and_list(tmp_path: Path) -> None:
    bus = Bus()
    async with (
        swarm_node(bus, tmp_path / "a.db", os.urandom(32)) as (rt_a, sw_a, _),
        swarm_node(bus, tmp_path / "b.db", os.urandom(32)) as (rt_b, sw_b, net_b),
    ):
        assert await sw_a.create("team", parent="org")
        assert not await sw_a.create("team")
        with pytest.raises(SwarmError):
            await sw_a.create("team", parent="other")
        with pytest.raises(SwarmError):
            await sw_a.create("bad/name")
        x, y = await spawn(rt_a), await spawn(rt_b)
        await sw_a.join("team", x)
        await sw_b.join("team", y)
        await until(lambda: len(sw_b.members("team")) == 2, "b seeing both")
        shown = sw_b.show("team")
        assert shown["parent"] == "org"  # learned from A's records
        assert shown["state"] == "active"
        assert {m["id"]: m["local"] for m in shown["members"]} == {x.did: False, y.did: True}
        assert await sw_a.leave("team", x)
        await until(lambda: list(sw_b.members("team")) == [y], "b seeing the leave")
        assert sw_b.coordinator("team") == y
        await sw_b.leave("team", y)
        await until(lambda: sw_a.show("team")["state"] == "empty", "an empty swarm")
        listed = sw_a.list()
        # A node that hosted team's coordinator may also follow the parent, to report to it.
        (team,) = [s for s in listed if s["name"] == "team"]
        assert team["members"] == 0
        assert {s["name"] for s in listed} <= {"org", "team"}
        # Agents cannot take over a swarm topic through pub/sub.
        assert net_b.topics is not None
        with pytest.raises(AgentError):
            await net_b.topics.subscribe("swarm/team", y)


async def test_memberships_survive_a_restart(tmp_path: Path) -> None:
    bus, seed = Bus(), os.urandom(32)
    async with swarm_node(bus, tmp_path / "a.db", seed) as (rt, sw, _):
        agent = await spawn(rt)
        await sw.join("team", agent)
    async with (
        swarm_node(bus, tmp_path / "a.db", seed) as (_, sw, _),
        swarm_node(bus, tmp_path / "b.db", os.urandom(32)) as (_, sw_b, _),
    ):
        assert sw.names() == ["team"]
        await until(lambda: sw.coordinator("team") == agent, "the reloaded member")
        # B learns of the member from heartbeats alone, once it follows the swarm.
        await sw_b.create("team")
        await until(lambda: sw_b.coordinator("team") == agent, "b learning from heartbeats")


async def test_bad_records_are_counted_not_fatal(tmp_path: Path) -> None:
    bus = Bus()
    async with swarm_node(bus, tmp_path / "a.db", os.urandom(32)) as (rt, sw, net):
        agent = await spawn(rt)
        await sw.join("team", agent)
        assert net.handler is not None
        intruder = SigningKey(os.urandom(32))
        # A heartbeat for another node's id, and junk, from the network.
        forged = Envelope.create(
            intruder,
            "swarm/team",
            KIND_HEARTBEAT,
            heartbeat_body("team", sw.node_id, [intruder.agent_id], 1000, None),
            now_ms=wall_ms(),
        )
        await net.handler("swarm/team", forged.frame)
        await net.handler("swarm/team", b"\x00junk")
        await net.handler("swarm/nobody", forged.frame)
        stats = sw.stats()
        assert stats["rejected"] == {"malformed": 1, "unauthorized": 1}
        assert stats["unknown_swarm"] == 1
        assert list(sw.members("team")) == [agent]


async def test_deleted_member_drops_out(tmp_path: Path) -> None:
    bus = Bus()
    async with (
        swarm_node(bus, tmp_path / "a.db", os.urandom(32)) as (rt, sw, _),
        swarm_node(bus, tmp_path / "b.db", os.urandom(32)) as (_, sw_b, _),
    ):
        await sw_b.create("team")  # a node follows the swarms it knows
        x, y = await spawn(rt), await spawn(rt)
        await sw.join("team", x)
        await sw.join("team", y)
        await until(lambda: len(sw_b.members("team")) == 2, "both members")
        await rt.delete(x)
        await until(lambda: list(sw_b.members("team")) == [y], "the deleted agent leaving")


def test_open_envelope_is_what_the_bus_checks() -> None:
    with pytest.raises(RemoteProtocolError):
        open_envelope(b"junk", now_ms=0)


async def test_agents_use_ctx_swarm(tmp_path: Path) -> None:
    kinds.SEEN.clear()
    bus = Bus()
    async with swarm_node(bus, tmp_path / "a.db", os.urandom(32)) as (rt, sw, _):
        (info,) = await rt.spawn("tests.swarms.kinds:Member")
        agent = AgentId.from_did(info["id"])
        sender = SigningKey(os.urandom(32))

        async def tell(body: Any) -> None:
            envelope = Envelope.create(sender, agent, "msg", body, now_ms=wall_ms())
            assert await rt.deliver(envelope, to=agent) == "delivered"

        await tell({"join": "crew"})
        await tell({"join": "crew"})
        await until(lambda: len(kinds.SEEN) == 2, "two joins handled")
        first, second = kinds.SEEN
        assert (first["changed"], second["changed"]) == (True, False)
        assert first["members"] == {agent.did: sw.node_id.text}
        assert first["coordinator"] == agent.did
        assert sw.coordinator("crew") == agent
        await tell({"leave": "crew"})
        await until(lambda: len(kinds.SEEN) == 3, "the leave handled")
        assert kinds.SEEN[2]["changed"] is True
        assert kinds.SEEN[2]["members"] == {}
        assert kinds.SEEN[2]["coordinator"] is None


async def test_three_level_hierarchy_aggregates_through_coordinators(tmp_path: Path) -> None:
    bus = Bus()
    async with (
        swarm_node(bus, tmp_path / "a.db", os.urandom(32)) as (rt_a, sw_a, _),
        swarm_node(bus, tmp_path / "b.db", os.urandom(32)) as (rt_b, sw_b, _),
        swarm_node(bus, tmp_path / "c.db", os.urandom(32)) as (rt_c, sw_c, _),
    ):
        nodes = [(rt_a, sw_a), (rt_b, sw_b), (rt_c, sw_c)]
        parents = {"m0": "org", "m1": "org", "l0": "m0", "l1": "m0", "l2": "m1", "l3": "m1"}
        # One leader in org and in each mid swarm; three workers in each leaf swarm.
        plan = [("org", 0), ("m0", 1), ("m1", 2)]
        plan += [(f"l{i}", (i + j) % 3) for i in range(4) for j in range(3)]
        work = 0
        for n, (name, where) in enumerate(plan):
            runtime, swarms = nodes[where]
            if name in parents:
                await swarms.create(name, parent=parents[name])
            agent = await spawn(runtime)
            await swarms.join(name, agent)
            await swarms.contribute(name, agent, {"work": n})
            work += n
        with pytest.raises(SwarmError):
            await sw_a.contribute("org", await spawn(rt_a), {"work": 1})  # not a member

        def root() -> dict[str, Any]:
            return sw_a.aggregate("org")

        await until(
            lambda: root()["agents"] == len(plan) and root()["totals"] == {"work": work},
            "the root summing three levels",
        )
        # Each parent hears from its children only: org from m0 and m1, never from a leaf.
        assert sorted(root()["children"]) == ["m0", "m1"]
        mid_host = sw_b if "m0" in sw_b.names() and sw_b.coordinator("m0") else sw_a
        assert sorted(mid_host.aggregate("m0")["children"]) == ["l0", "l1"]
        assert sw_a.show("org")["aggregate"] == root()
        assert sum(sw.stats().get("aggregates_sent", 0) for _, sw in nodes) > 0


async def test_members_per_node_are_capped_by_what_a_heartbeat_carries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("meshd.swarms.MAX_MEMBERS_PER_NODE", 2)
    async with swarm_node(Bus(), tmp_path / "a.db", os.urandom(32)) as (rt, sw, _):
        for _ in range(2):
            await sw.join("team", await spawn(rt))
        with pytest.raises(SwarmError) as info:
            await sw.join("team", await spawn(rt))
        assert info.value.code == "max_members"
        await sw.tick()  # the heartbeat still goes out
        assert len(sw.members("team")) == 2
        # A batch joins all or none.
        batch = [await spawn(rt) for _ in range(3)]
        with pytest.raises(SwarmError):
            await sw.join_many("crew", batch)
        assert await sw.join_many("crew", batch[:2] + batch[:1]) == 2
        assert await sw.join_many("crew", batch[:2]) == 0
        assert set(sw.members("crew")) == set(batch[:2])
