"""Swarm hierarchy example: count 10,000 agents in three levels of swarms, one report per child.

In one process, N nodes (each a real store, runtime, pub/sub and swarm service) share an
in-memory topic bus instead of libp2p. The swarms form a tree: `root`, B mid swarms under it,
B*B leaf swarms under those; the agents are spread over the leaves (and over the nodes), and
one leader agent joins each mid swarm and the root. Every leaf's coordinator reports its count
to its mid swarm, every mid's coordinator to the root (`swarm.agg`), so the root receives B
reports per heartbeat interval whatever the number of agents.

Reported: time from the first join until the root's aggregate counts every agent, records
carried by the bus by kind, records per agent, and the reports the root's topic received per
interval. Figures only, no assertions on timing; the last line is a JSON summary.
Usage: python bench/swarm_hierarchy.py [--agents 10000] [--nodes 10] [--branching 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

# Run as a script, this file's directory comes first on sys.path, where bench/protocol.py would
# shadow the protocol package; the repository root must win.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from meshd.pubsub import Topics
from meshd.runtime.runtime import Runtime
from meshd.runtime.settings import RuntimeSettings
from meshd.store import Store
from meshd.swarm_settings import SwarmSettings
from meshd.swarms import Swarms
from protocol.ids import AgentId, SigningKey
from simnet.topicbus import TopicBus, TopicBusNet

_STEP_LIMIT_S = 120.0


@asynccontextmanager
async def node(
    bus: TopicBus, path: Path, settings: SwarmSettings, max_agents: int
) -> AsyncIterator[tuple[Runtime, Swarms]]:
    """One node's runtime, pub/sub and swarms on the bus; cancelled on exit."""
    seed = SigningKey.generate().seed
    limits = RuntimeSettings(max_agents=max_agents, spawn_rate=1e6, spawn_burst=max_agents)
    async with Store(path) as store, trio.open_nursery() as nursery:
        runtime = Runtime(store, SigningKey(seed), limits)
        net = TopicBusNet(bus)
        topics = Topics(runtime, net)
        swarms = Swarms(runtime, net, topics, node_key=SigningKey(seed), settings=settings)
        await nursery.start(runtime.serve)
        await nursery.start(topics.serve)
        await nursery.start(swarms.serve)
        yield runtime, swarms
        nursery.cancel_scope.cancel()


async def run(agents: int, nodes: int, branching: int, heartbeat_s: float) -> dict[str, Any]:
    """Build the tree, join everyone, wait for the root's count; return the figures."""
    bus = TopicBus(validate=False)  # counts records; checking them is not what is measured
    settings = SwarmSettings(heartbeat_s=heartbeat_s)
    leaves = [f"leaf{i}" for i in range(branching * branching)]
    mids = [f"mid{i}" for i in range(branching)]
    parent = {leaf: mids[i // branching] for i, leaf in enumerate(leaves)}
    parent.update({mid: "root" for mid in mids})
    per_node = -(-agents // nodes) + branching + 1
    with tempfile.TemporaryDirectory(prefix="meshd-swarm-bench-") as tmp:
        async with AsyncExitStack() as stack:
            members = [
                await stack.enter_async_context(
                    node(bus, Path(tmp) / f"n{i}.db", settings, per_node + 16)
                )
                for i in range(nodes)
            ]
            # Spawn first (not measured), then assign: agent k goes to leaf k % leaves.
            plan: dict[int, dict[str, list[AgentId]]] = {i: {} for i in range(nodes)}
            for i, (runtime, _) in enumerate(members):
                mine = range(i, agents, nodes)
                spawned = await runtime.spawn("echo", count=len(mine)) if mine else []
                for k, info in zip(mine, spawned, strict=True):
                    leaf = leaves[k % len(leaves)]
                    plan[i].setdefault(leaf, []).append(AgentId.from_did(info["id"]))
            leaders = [("root", 0)] + [(mid, (j + 1) % nodes) for j, mid in enumerate(mids)]
            for name, i in leaders:
                (info,) = await members[i][0].spawn("echo")
                plan[i].setdefault(name, []).append(AgentId.from_did(info["id"]))
            expected = agents + len(leaders)
            root_swarms = members[0][1]
            start = trio.current_time()
            wall = time.perf_counter()
            for i, (_, swarms) in enumerate(members):
                for name, ids in sorted(plan[i].items()):
                    if name in parent:
                        await swarms.create(name, parent=parent[name])
                    await swarms.join_many(name, ids)
            joined_s = trio.current_time() - start
            with trio.move_on_after(_STEP_LIMIT_S):
                while root_swarms.aggregate("root")["agents"] != expected:  # noqa: ASYNC110 - polling a view
                    await trio.sleep(heartbeat_s / 10)
            done_s = trio.current_time() - start
            counted = root_swarms.aggregate("root")
            to_complete = dict(sorted(bus.kinds.items()))
            # Steady state: what the root's topic carries over a few intervals.
            kinds_before = Counter(bus.kinds)
            root_before = bus.to_topic["swarm/root"]
            window = 5 * heartbeat_s
            await trio.sleep(window)
            intervals = window / heartbeat_s
            steady = {k: (bus.kinds[k] - kinds_before[k]) / intervals for k in bus.kinds}
            root_per_interval = (bus.to_topic["swarm/root"] - root_before) / intervals
            return {
                "agents": agents,
                "memberships": expected,
                "nodes": nodes,
                "levels": 3,
                "swarms": 1 + len(mids) + len(leaves),
                "heartbeat_s": heartbeat_s,
                "root_counted": counted["agents"],
                "root_children": len(counted["children"]),
                "joins_s": round(joined_s, 3),
                "complete_s": round(done_s, 3),
                "complete_heartbeats": round(done_s / heartbeat_s, 1),
                "wall_s": round(time.perf_counter() - wall, 3),
                "records_to_complete": to_complete,
                "records_per_agent_to_complete": round(sum(to_complete.values()) / expected, 3),
                "steady_records_per_interval": {k: round(v, 1) for k, v in sorted(steady.items())},
                "steady_records_per_agent_per_interval": round(sum(steady.values()) / expected, 4),
                "root_topic_records_per_interval": round(root_per_interval, 1),
            }


def main() -> None:
    """Parse the options, run once, print the figures and a JSON summary line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--branching", type=int, default=10)
    parser.add_argument("--heartbeat", type=float, default=0.5, help="swarm.heartbeat_s")
    args = parser.parse_args()
    result = trio.run(run, args.agents, args.nodes, args.branching, args.heartbeat)
    ok = result["root_counted"] == result["memberships"]
    print(
        f"{result['agents']} agents in {result['swarms']} swarms on {result['nodes']} nodes "
        f"(3 levels): the root counted {result['root_counted']} of {result['memberships']} "
        f"memberships {'in' if ok else 'NOT within'} {result['complete_s']} s "
        f"({result['complete_heartbeats']} heartbeats) after the first join"
    )
    print(
        f"steady state: {result['steady_records_per_agent_per_interval']} records per agent "
        f"per interval; the root's topic carries {result['root_topic_records_per_interval']} "
        f"per interval ({result['root_children']} child reports + the root leader's heartbeat)"
    )
    print(json.dumps(result))
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
