"""The `[swarm]` workload: a hierarchical swarm over the scenario's in-process nodes.

After the scenario's workload, `run_swarm` builds the hierarchy of `SwarmPlan` (leaves on
consecutive nodes, their parents `midM`, the root `org`), has every worker contribute
{"work": 1}, waits for the root's aggregate to count every agent, then fills each leaf's task
board and lets its workers (`simnet.kinds:SwarmWorker`) finish it. It reports how long each
step took on the run's clock, how often each task ran (from the shared documents: each run
is written there), and the swarm records and shared-state messages sent per agent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import trio

from meshd.swarms import Swarms
from protocol.ids import AgentId
from simnet.inprocess import InProcessBackend
from simnet.scenario import SwarmPlan

__all__ = ["WORKER_KIND", "run_swarm"]

WORKER_KIND = "simnet.kinds:SwarmWorker"
ROOT = "org"
_POLL_S = 0.25
_RECORDS = ("joins", "leaves", "heartbeats_sent", "aggregates_sent")
_SHARED = ("updates_sent", "announces_sent")


def _leaf_nodes(plan: SwarmPlan, leaf: int) -> range:
    first = leaf * plan.nodes_per_leaf
    return range(first, first + plan.nodes_per_leaf)


async def _wait(check: Callable[[], bool], timeout_s: float) -> float | None:
    """Seconds until `check()` holds, or None after `timeout_s`."""
    start = trio.current_time()
    with trio.move_on_after(timeout_s):
        while not check():  # noqa: ASYNC110 - the swarms expose views, not events
            await trio.sleep(_POLL_S)
        return trio.current_time() - start
    return None


def _runs(swarms: list[Swarms], plan: SwarmPlan) -> Counter[str]:
    """How often each task ran, from each leaf's shared document ("ran/<task>/<agent>")."""
    runs: Counter[str] = Counter()
    for leaf in range(plan.leaves):
        state = swarms[_leaf_nodes(plan, leaf)[0]].shared.state(f"leaf{leaf}")
        for key in state:
            if key.startswith("ran/"):
                runs[f"leaf{leaf}/{key.split('/')[1]}"] += 1
    return runs


async def run_swarm(
    backend: InProcessBackend,
    plan: SwarmPlan,
    nodes: int,
    note: Callable[[float, str], None] = lambda fraction, what: None,
) -> dict[str, Any]:
    """Build the hierarchy, count it at the root, finish the boards; the figures."""
    swarms = [backend.node(n).swarms for n in range(nodes)]
    mids = -(-plan.leaves // plan.leaves_per_mid)
    start = trio.current_time()
    note(0.0, "swarm: joining")

    async def join(node: int, name: str, parent: str | None, kind: str, count: int) -> None:
        sw = swarms[node]
        if parent is not None:
            await sw.create(name, parent)
        agents = [AgentId.from_did(a) for a in await backend.spawn(node, kind, count, ())]
        await sw.join_many(name, agents)
        if kind == WORKER_KIND:
            for agent in agents:
                await sw.contribute(name, agent, {"work": 1})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(join, 0, ROOT, None, "echo", 1)
        for mid in range(mids):
            # Spread the mid coordinators over the nodes, away from the leaves' order.
            nursery.start_soon(join, (mid * 7 + 1) % nodes, f"mid{mid}", ROOT, "echo", 1)
        for leaf in range(plan.leaves):
            parent = f"mid{leaf // plan.leaves_per_mid}"
            for node in _leaf_nodes(plan, leaf):
                nursery.start_soon(
                    join, node, f"leaf{leaf}", parent, WORKER_KIND, plan.workers_per_node
                )
    workers = plan.leaves * plan.nodes_per_leaf * plan.workers_per_node
    total = workers + mids + 1
    joined_s = trio.current_time() - start

    def counted() -> bool:
        aggregate = swarms[0].aggregate(ROOT)
        return bool(aggregate["agents"] == total and aggregate["totals"].get("work") == workers)

    note(0.3, "swarm: counting at the root")
    counted_s = await _wait(counted, plan.timeout_s)

    note(0.6, "swarm: task boards")
    board_start = trio.current_time()
    for leaf in range(plan.leaves):
        for n in range(plan.tasks_per_leaf):
            await swarms[_leaf_nodes(plan, leaf)[0]].shared.add_task(f"leaf{leaf}", {"n": n}, None)
    for leaf in range(plan.leaves):
        for node in _leaf_nodes(plan, leaf):
            for agent in swarms[node].local_members(f"leaf{leaf}"):
                await backend.send(
                    node,
                    agent.did,
                    {"work": f"leaf{leaf}", "for_s": plan.timeout_s},
                    kind="msg",
                    reliable=False,
                    wait=False,
                    timeout=10.0,
                )

    def finished() -> bool:
        for leaf in range(plan.leaves):
            tasks = swarms[_leaf_nodes(plan, leaf)[0]].shared.tasks(f"leaf{leaf}")
            if len(tasks) < plan.tasks_per_leaf or any(t["state"] != "done" for t in tasks):
                return False
        return True

    tasks_s = await _wait(finished, plan.timeout_s)
    completion_s = trio.current_time() - board_start  # tasks added, workers told, all done
    # The last "ran" entries may still be on their way to the first node of a leaf.
    await trio.sleep(2.0)
    runs = _runs(swarms, plan)
    elapsed = trio.current_time() - start
    stats = [sw.stats() for sw in swarms]
    records = sum(s.get(k, 0) for s in stats for k in _RECORDS)
    shared = sum(s["shared"].get(k, 0) for s in stats for k in _SHARED)
    note(1.0, "swarm: done")
    return {
        "swarms": plan.leaves + mids + 1,
        "agents": total,
        "workers": workers,
        "joined_s": round(joined_s, 3),
        "root_counts_all_s": None if counted_s is None else round(counted_s, 3),
        "root_aggregate": swarms[0].aggregate(ROOT),
        "tasks": plan.leaves * plan.tasks_per_leaf,
        "tasks_done_s": None if tasks_s is None else round(tasks_s, 3),
        "tasks_completed": tasks_s is not None,
        "task_runs": sum(runs.values()),
        "tasks_run_twice": sum(1 for count in runs.values() if count > 1),
        "completion_s": round(completion_s, 3) if tasks_s is not None else None,
        "elapsed_s": round(elapsed, 3),
        "swarm_records_sent": records,
        "state_messages_sent": shared,
        "messages_per_agent": round((records + shared) / total, 2),
    }
