"""Record publication policy and routing through agent records.

The DHT here is a dictionary: the boundary is the network's put/get of values by key; the
real Kademlia DHT carries the same calls in tests/delivery and the daemon tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from meshd.publisher import Publisher
from meshd.router import Router
from meshd.runtime.runtime import Runtime, RuntimeSettings
from meshd.store import Store
from protocol.ids import AgentId, SigningKey
from protocol.records import AgentRecord, LifecycleState, agent_record_key
from tests.runtime.test_runtime import Clock, message, settle


class Table:
    """Values by key, as the DHT keeps them for the key's closest peers."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    async def put(self, key: str, value: bytes) -> None:
        self.values[key] = value

    async def get(self, key: str) -> bytes | None:
        return self.values.get(key)


@asynccontextmanager
async def node(
    path: Path, seed: bytes, table: Table, clock: Clock
) -> AsyncIterator[tuple[Runtime, Publisher]]:
    async with Store(path / "meshd.db") as store, trio.open_nursery() as nursery:
        runtime = Runtime(store, SigningKey.from_seed(seed), RuntimeSettings(), clock=clock)
        publisher = Publisher(
            runtime, table.put, lambda: ["/ip4/127.0.0.1/tcp/9"], rate=1000, clock=clock
        )
        runtime.listener = publisher
        await nursery.start(runtime.serve)
        await nursery.start(publisher.serve)
        try:
            yield runtime, publisher
        finally:
            nursery.cancel_scope.cancel()


async def test_small_spawns_and_activations_are_published(tmp_path: Path) -> None:
    table, clock = Table(), Clock()
    async with node(tmp_path, b"A" * 32, table, clock) as (rt, pub):
        few = await rt.spawn("echo", count=3)
        await settle(lambda: pub.published["spawned"] == 3)
        for info in few:
            value = table.values[agent_record_key(AgentId.from_did(info["id"]))]
            record = AgentRecord.decode(value)
            record.verify(clock())
            assert record.node == rt.node_key.node_id
            assert record.addrs == ("/ip4/127.0.0.1/tcp/9",)
        many = await rt.spawn("echo", count=100)
        await trio.sleep(0.05)
        assert len(table.values) == 3  # a mass spawn publishes nothing
        woken = AgentId.from_did(many[0]["id"])
        await rt.deliver(message(rt, woken, "wake"))
        await settle(lambda: pub.published["activated"] == 1)
        assert agent_record_key(woken) in table.values


async def test_stats_show_a_put_in_progress_until_it_ends(tmp_path: Path) -> None:
    # What a caller waits on to know publication has gone quiet (bench/messaging.py).
    class SlowTable(Table):
        def __init__(self) -> None:
            super().__init__()
            self.gate = trio.Event()

        async def put(self, key: str, value: bytes) -> None:
            await self.gate.wait()
            await super().put(key, value)

    table, clock = SlowTable(), Clock()
    async with node(tmp_path, b"A" * 32, table, clock) as (rt, pub):
        await rt.spawn("echo", count=2)
        await settle(lambda: pub.stats()["publishing"] == 1)
        assert pub.stats()["queued"] == 1
        table.gate.set()
        await settle(lambda: pub.published["spawned"] == 2)
        assert (pub.stats()["queued"], pub.stats()["publishing"]) == (0, 0)


async def test_deleted_agents_get_a_tombstone_the_router_reports(tmp_path: Path) -> None:
    table, clock = Table(), Clock()
    async with node(tmp_path, b"A" * 32, table, clock) as (rt_a, pub_a):
        (info,) = await rt_a.spawn("echo")
        agent = AgentId.from_did(info["id"])
        await settle(lambda: pub_a.published["spawned"] == 1)
        # another node finds it through its record, then through its cache
        router = Router(lambda a: False, table.get, clock=clock)
        route = await router.locate(agent)
        assert route is not None
        assert (route.path, route.peer_id) == ("dht", rt_a.node_key.node_id.text)
        route = await router.locate(agent)
        assert route is not None
        assert route.path == "cache"
        await rt_a.delete(agent)
        await settle(lambda: pub_a.published["tombstone"] == 1)
        record = AgentRecord.decode(table.values[agent_record_key(agent)])
        record.verify(clock())
        assert record.state is LifecycleState.GONE
        router.invalidate(agent)
        route = await router.locate(agent)
        assert route is not None
        assert route.path == "gone"
        assert await router.locate(SigningKey.generate().agent_id) is None
        assert router.stats()["paths"] == {"dht": 1, "cache": 1, "gone": 1, "unknown": 1}


async def test_router_prefers_local_agents(tmp_path: Path) -> None:
    table, clock = Table(), Clock()
    async with node(tmp_path, b"A" * 32, table, clock) as (rt, _pub):
        (info,) = await rt.spawn("echo")
        router = Router(rt.hosts, table.get, clock=clock)
        route = await router.locate(AgentId.from_did(info["id"]))
        assert route is not None
        assert route.path == "local"
        assert router.dht_lookups == 0


async def test_forged_records_are_refused(tmp_path: Path) -> None:
    table, clock = Table(), Clock()
    async with node(tmp_path, b"A" * 32, table, clock) as (rt, pub):
        (info,) = await rt.spawn("echo")
        agent = AgentId.from_did(info["id"])
        await settle(lambda: pub.published["spawned"] == 1)
        key = agent_record_key(agent)
        table.values[key] = table.values[key][:-1] + bytes([table.values[key][-1] ^ 1])
        router = Router(lambda a: False, table.get, clock=clock)
        assert await router.locate(agent) is None
        assert router.dht_failures == 1
