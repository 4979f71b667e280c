"""Provenance chains and agent records of hosted agents verify like any peer's would."""

from __future__ import annotations

from pathlib import Path

from meshd.runtime.records import build_provenance, build_record
from protocol.ids import AgentId
from protocol.records import AgentRecord, LifecycleState
from tests.runtime.test_runtime import message, running, settle

SPAWNER = "tests.runtime.kinds_for_tests:Spawner"


async def test_root_agent_record_verifies(tmp_path: Path) -> None:
    async with running(tmp_path) as rt:
        (info,) = await rt.spawn("echo")
        agent = AgentId.from_did(info["id"])
        record = await build_record(rt, agent, ["/ip4/127.0.0.1/tcp/1"], now_ms=rt.clock())
        back = AgentRecord.decode(record.encoded)
        back.verify(rt.clock())
        assert back.node == rt.node_key.node_id
        assert back.provenance.root_node == rt.node_key.node_id
        assert back.state is LifecycleState.DORMANT
        again = await build_record(rt, agent, [], now_ms=rt.clock())
        assert again.seq > record.seq


async def test_child_chain_survives_the_parents_budget_dropping(tmp_path: Path) -> None:
    async with running(tmp_path, default_budget=10) as rt:
        (parent,) = await rt.spawn(SPAWNER)
        parent_id = AgentId.from_did(parent["id"])
        before = await build_provenance(rt, parent_id)
        await rt.deliver(message(rt, parent_id, {"n": 1, "budget": 2}))
        await settle(lambda: rt.counts()["total"] == 2)
        await rt.deliver(message(rt, parent_id, {"n": 1, "budget": 1}))
        await settle(lambda: rt.counts()["total"] == 3)
        # the parent's own certificate did not change when its budget went down
        assert (await build_provenance(rt, parent_id)).certs[0].encoded == before.certs[0].encoded
        for child in await rt.list_agents(kind="echo"):
            agent = AgentId.from_did(child["id"])
            record = await build_record(rt, agent, [], now_ms=rt.clock())
            AgentRecord.decode(record.encoded).verify(rt.clock())
            chain = record.provenance.certs
            assert [c.agent for c in chain] == [agent, parent_id]
            assert chain[0].budget < chain[1].budget
