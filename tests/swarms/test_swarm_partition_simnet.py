"""Shared swarm state over real libp2p (GossipSub on simnet's in-memory transport): concurrent
edits from three nodes converge, and converge again after a partition heals."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from meshd.swarms import Swarms
from protocol.ids import AgentId
from simnet.inprocess import in_process
from simnet.scenario import parse_scenario

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("MESHD_TEST_SEED", "0")) or 7
AGREE_S = 40.0


async def until(check: Callable[[], Any], what: str, timeout: float = AGREE_S) -> float:
    """Poll `check` until true; return the seconds it took; fail after `timeout`."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while not check():  # noqa: ASYNC110 - polling keeps the test off internals
            await trio.sleep(0.05)
        return trio.current_time() - start
    pytest.fail(f"timed out waiting for {what} (seed {SEED})")


def agree(nodes: list[Swarms], keys: int) -> bool:
    texts = {json.dumps(sw.shared.state("team"), sort_keys=True) for sw in nodes}
    return len(texts) == 1 and len(nodes[0].shared.state("team")) == keys


async def test_concurrent_edits_converge_over_libp2p_and_after_a_partition(
    tmp_path: Path,
) -> None:
    scenario = parse_scenario(
        {
            "nodes": 3,
            "duration_s": 1,
            "agents": [],
            "node_config": {"swarm.heartbeat_s": 0.25, "connections.auto_connect_interval_s": 1},
        }
    )
    print(f"seed {SEED}")
    async with in_process(scenario, tmp_path, SEED) as backend:
        for i in range(3):
            await backend.start_node(i)
        nodes = [backend.node(i).swarms for i in range(3)]
        for i, sw in enumerate(nodes):
            (agent,) = await backend.spawn(i, "echo", 1, ())
            await sw.join("team", AgentId.from_did(agent))
        await until(lambda: all(len(sw.members("team")) == 3 for sw in nodes), "membership")

        async with trio.open_nursery() as nursery:
            for i, sw in enumerate(nodes):
                for j in range(4):
                    nursery.start_soon(sw.shared.set_state, "team", f"n{i}.{j}", [i, j])
                nursery.start_soon(sw.shared.set_state, "team", "same", {"by": i})
        took = await until(lambda: agree(nodes, 13), "three replicas agreeing")
        print(f"12 + 3 concurrent writes agreed on 3 nodes in {took:.2f} s")

        # Node 1 alone on one side, nodes 2 and 3 on the other; both sides write.
        backend.links.partition([[1], [2, 3]])
        await nodes[0].shared.set_state("team", "x", "from 1")
        await nodes[1].shared.set_state("team", "x", "from 2")
        await nodes[2].shared.set_state("team", "y", "from 3")
        # Longer than GossipSub's gossip window (3 heartbeats of 1 s): after the heal its
        # message cache no longer offers the partition's writes, which a quick reconnect
        # would otherwise fetch before any state-vector answer (seen at 0.16 s).
        await trio.sleep(4.5)
        assert "y" not in nodes[0].shared.state("team")
        assert nodes[1].shared.state("team")["y"] == "from 3"
        backend.links.heal()
        took = await until(lambda: agree(nodes, 15), "agreement after the heal")
        print(f"caught up {took:.2f} s after the partition healed (reconnect included)")
        assert nodes[2].shared.state("team")["x"] in ("from 1", "from 2")
        answers = sum(sw.stats()["shared"].get("sync_answers", 0) for sw in nodes)
        assert answers > 0  # the catch-up came from state-vector answers
