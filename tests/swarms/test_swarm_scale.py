"""A hierarchical swarm over 50 simnet nodes (real node code and libp2p on the in-memory
transport, in one process): how long until the root counts every agent, how long a shared
state write takes to reach every follower, and how many swarm records each agent costs.

Out of CI (minutes on two cores): runs only with MESHD_SWARM_SCALE=1, e.g.

    MESHD_SWARM_SCALE=1 .venv/bin/pytest -q -s tests/swarms/test_swarm_scale.py

Layout: 25 leaf swarms (each on 2 nodes, 4 worker agents per node: 200 workers), 5 mid
swarms (one member each, parents of 5 leaves), the root `org` (one member). Every leaf member
contributes {"work": 1}. Then each leaf's board gets TASKS_PER_LEAF tasks, which its workers
(`tests.swarms.kinds:Worker`) finish; no task may run twice. MESHD_SWARM_NODES changes the
node count (even, at least 10). Virtual time (trio's MockClock, libp2p's clocks redirected)
unless MESHD_SWARM_REAL_TIME=1.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from meshd.swarms import Swarms
from protocol.ids import AgentId
from simnet.inprocess import in_process
from simnet.runner import virtual_clock
from simnet.scenario import parse_scenario
from tests.swarms import kinds

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("MESHD_SWARM_SCALE") != "1", reason="MESHD_SWARM_SCALE=1 runs it"
    ),
]

NODES = int(os.environ.get("MESHD_SWARM_NODES", "50"))
SEED = int(os.environ.get("MESHD_TEST_SEED", "0")) or 50
PER_NODE = 4
TASKS_PER_LEAF = 8
LIMIT_S = 600.0
_RECORDS = ("joins", "leaves", "heartbeats_sent", "aggregates_sent")
_SHARED = ("updates_sent", "announces_sent")


async def _wait(check: Any, what: str) -> float:
    start = trio.current_time()
    with trio.move_on_after(LIMIT_S):
        while not check():  # noqa: ASYNC110 - polling keeps the test off internals
            await trio.sleep(0.25)
        return trio.current_time() - start
    raise AssertionError(f"timed out waiting for {what} (seed {SEED})")


async def _run(root: Path) -> dict[str, Any]:
    scenario = parse_scenario(
        {"nodes": NODES, "duration_s": 1, "agents": [], "node_config": {"swarm.heartbeat_s": 1}}
    )
    leaves = NODES // 2
    mids = max(1, leaves // 5)
    async with in_process(scenario, root, SEED) as backend:
        for node in range(NODES):
            await backend.start_node(node)
        swarms: list[Swarms] = [backend.node(n).swarms for n in range(NODES)]
        await trio.sleep(5)  # the mesh settles (DHT bootstrap, GossipSub meshes)
        start = trio.current_time()

        async def join(node: int, name: str, parent: str | None, count: int) -> None:
            sw = swarms[node]
            if parent is not None:
                await sw.create(name, parent)
            kind = "tests.swarms.kinds:Worker" if name.startswith("leaf") else "echo"
            agents = [AgentId.from_did(a) for a in await backend.spawn(node, kind, count, ())]
            await sw.join_many(name, agents)
            if name.startswith("leaf"):
                for agent in agents:
                    await sw.contribute(name, agent, {"work": 1})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(join, 0, "org", None, 1)
            for m in range(mids):
                nursery.start_soon(join, (m * 7 + 1) % NODES, f"mid{m}", "org", 1)
            for leaf in range(leaves):
                for node in (2 * leaf, 2 * leaf + 1):
                    nursery.start_soon(join, node, f"leaf{leaf}", f"mid{leaf % mids}", PER_NODE)
        workers = leaves * 2 * PER_NODE
        total = workers + mids + 1

        def counted() -> bool:
            agg = swarms[0].aggregate("org")
            return bool(agg["agents"] == total and agg["totals"].get("work") == workers)

        counted_s = await _wait(counted, "the root counting every agent")
        # One shared-state write at a leaf: every node following that leaf gets it.
        followers = [sw for sw in swarms if "leaf0" in sw.names()]
        await swarms[0].shared.set_state("leaf0", "plan", {"step": 1})
        state_s = await _wait(
            lambda: all(sw.shared.state("leaf0").get("plan") == {"step": 1} for sw in followers),
            "the write on every follower",
        )
        # The task board: every leaf gets tasks; its workers finish them.
        kinds.RAN.clear()
        for leaf in range(leaves):
            for i in range(TASKS_PER_LEAF):
                await swarms[2 * leaf].shared.add_task(f"leaf{leaf}", {"n": i}, None)
        for node in range(NODES):
            for name in swarms[node].names():
                if name.startswith("leaf"):
                    for agent in swarms[node].local_members(name):
                        await backend.send(
                            node,
                            agent.did,
                            {"work": name, "for_s": 300},
                            kind="msg",
                            reliable=False,
                            wait=False,
                            timeout=10,
                        )

        def all_done() -> bool:
            return all(
                {t["state"] for t in swarms[2 * leaf].shared.tasks(f"leaf{leaf}")} == {"done"}
                for leaf in range(leaves)
            )

        tasks_s = await _wait(all_done, "every leaf's tasks done")
        runs = Counter(task for task, _ in kinds.RAN)
        elapsed = trio.current_time() - start
        stats = [sw.stats() for sw in swarms]
        records = sum(s.get(k, 0) for s in stats for k in _RECORDS)
        shared = sum(s["shared"].get(k, 0) for s in stats for k in _SHARED)
        received = sum(s.get("received", 0) for s in stats)
        return {
            "nodes": NODES,
            "agents": total,
            "swarms": leaves + mids + 1,
            "root_counts_all_s": round(counted_s, 2),
            "state_write_reaches_followers_s": round(state_s, 2),
            "followers_of_leaf0": len(followers),
            "tasks": leaves * TASKS_PER_LEAF,
            "tasks_done_s": round(tasks_s, 2),
            "tasks_run": sum(runs.values()),
            "tasks_run_twice": sum(1 for n in runs.values() if n > 1),
            "task_runs_per_worker": round(sum(runs.values()) / workers, 2),
            "elapsed_s": round(elapsed, 2),
            "records_sent": records,
            "state_messages_sent": shared,
            "records_received": received,
            "records_sent_per_agent": round((records + shared) / total, 2),
            "records_sent_per_agent_s": round((records + shared) / total / elapsed, 3),
            "root_children": sorted(swarms[0].aggregate("org")["children"]),
        }


def test_hierarchical_swarm_over_simnet_nodes() -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if os.environ.get("MESHD_SWARM_REAL_TIME") == "1":
            report = trio.run(_run, Path(tmp))
            report["clock"] = "real"
        else:
            with virtual_clock() as clock:
                report = trio.run(_run, Path(tmp), clock=clock)
            report["clock"] = "virtual"
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["seed"] = SEED
    print(json.dumps(report, indent=2))
    assert report["root_children"] == [f"mid{m}" for m in range(max(1, NODES // 10))]
    assert report["tasks_run"] == report["tasks"]
    assert report["tasks_run_twice"] == 0
