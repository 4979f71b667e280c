"""Ten real daemons on loopback: routing without the DHT, capability search, churn, and the
mesh-wide estimates of `meshd status --mesh` (one mesh for both: ten daemons take a while to
start and converge on two cores)."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from meshd.localmesh import LocalDaemon, daemon_env, meshd_command, wait_until
from protocol.sketch import HyperLogLog
from protocol.telemetry import NODE_PRECISION

pytestmark = pytest.mark.slow

NODES = 10
AGENTS = 24  # per node; more than the publisher's small spawn, so no DHT record is written
MESSAGES = 40
FP_RATE = 0.05
INTERVAL_S = 2.0
ENV = daemon_env(
    MESHD_SUMMARY_INTERVAL_S=str(INTERVAL_S),
    MESHD_SUMMARY_FP_RATE=str(FP_RATE),
    MESHD_SUMMARY_MIN_PUSH_GAP_S="1",  # churn reaches neighbours sooner (default 5 s)
    MESHD_DHT_JOIN_JITTER_S="0.5",
    # Less background work (DHT walks, telemetry) on a machine that runs ten daemons at once.
    MESHD_DHT_FAST_WALK_S="5",
    MESHD_TELEMETRY_INTERVAL_S="2",
)


def _status(node: LocalDaemon) -> dict[str, Any]:
    return node.get("/v1/status")  # type: ignore[no-any-return]


def _converged(nodes: list[LocalDaemon]) -> bool:
    """Every node holds a summary from each peer it is connected to, and they hold its own."""
    for node in nodes:
        status = _status(node)
        summaries = status["summaries"]
        if status["peers"] < 3 or summaries["neighbours"] < status["peers"]:
            return False
        if summaries["neighbours_in_sync"] < status["peers"]:
            return False
    return True


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("mesh")
    nodes = [LocalDaemon(root / f"n{i}") for i in range(NODES)]
    try:
        for node in nodes:
            node.init()
        nodes[0].start(env=ENV)
        nodes[0].wait_ready()
        for node in nodes[1:]:
            node.start("--bootstrap", nodes[0].addrs[0], env=ENV)
        for node in nodes[1:]:
            node.wait_ready()
        yield nodes
    finally:
        for node in nodes:
            node.kill()


def _send(node: LocalDaemon, to: str) -> str:
    return str(node.post("/v1/send", {"to": to, "body": {"n": 1}})["outcome"])


def test_ten_nodes_route_by_summaries(mesh: list[LocalDaemon]) -> None:
    rng = random.Random(6)
    print("seed 6")
    hosted: list[list[str]] = []
    translators: set[str] = set()
    for index, node in enumerate(mesh):
        spawned = node.post("/v1/agents", {"kind": "echo", "count": AGENTS})["agents"]
        hosted.append([agent["id"] for agent in spawned])
        if index % 3 == 1:
            tagged = node.post("/v1/agents", {"kind": "echo", "count": 2, "caps": ["translate"]})[
                "agents"
            ]
            translators.update(agent["id"] for agent in tagged)
    started = time.monotonic()
    wait_until(lambda: _converged(mesh), timeout=90, interval=1.0, what="summaries converged")
    print(f"converged after {time.monotonic() - started:.1f} s")

    before = [_status(node)["router"] for node in mesh]
    plan = []
    for _ in range(MESSAGES):
        sender = rng.randrange(NODES)
        target = rng.choice([i for i in range(NODES) if i != sender])
        plan.append((mesh[sender], rng.choice(hosted[target])))
    outcomes: dict[str, int] = {}
    # In parallel: each send is an API request to a daemon sharing two cores with nine more.
    with ThreadPoolExecutor(8) as pool:
        for outcome in pool.map(lambda step: _send(*step), plan):
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    after = [_status(node)["router"] for node in mesh]
    print(f"messages sent after {time.monotonic() - started:.1f} s")
    assert outcomes.get("delivered", 0) >= MESSAGES * 0.95, outcomes

    def total(stats: list[dict[str, Any]], key: str) -> int:
        return sum(int(s[key]) for s in stats)

    dht = total(after, "dht_lookups") - total(before, "dht_lookups")
    probes = total(after, "summary_probes") - total(before, "summary_probes")
    matches = total(after, "summary_matches") - total(before, "summary_matches")
    paths: dict[str, int] = {}
    for b, a in zip(before, after, strict=True):
        for path, count in a["paths"].items():
            paths[path] = paths.get(path, 0) + count - b["paths"].get(path, 0)
    print(f"paths {paths}, dht lookups {dht}, probes {probes}, matches {matches}")
    assert 1 - dht / MESSAGES >= 0.95, paths
    assert paths.get("summary", 0) + paths.get("summary-2hop", 0) >= MESSAGES * 0.95

    # False positives: level-0 matches beyond the one true host, over the filters probed.
    neighbours = [_status(node)["summaries"] for node in mesh]
    mean_neighbours = sum(s["neighbours"] for s in neighbours) / NODES
    trials = probes * (mean_neighbours - 1)
    observed = max(0, matches - paths.get("summary", 0)) / trials
    estimate = sum(s["fp_estimate"] for s in neighbours) / NODES
    print(f"false-positive rate observed {observed:.4f}, filters predict {estimate:.4f}")
    # A false positive is a fixed (agent, filter) pair: every message to that agent meets it
    # again, so with 40 messages the observed rate scatters far more than a binomial's.
    assert observed <= max(3 * estimate, estimate + 0.03)
    assert observed <= FP_RATE * 1.5

    # Capability search finds every tagged agent, wherever it lives.
    result = meshd_command(
        "agent", "find", "--cap", "translate", "--json", "--data-dir", str(mesh[0].data_dir)
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)["agents"]
    assert {agent["id"] for agent in found} == translators
    assert {agent["node"] for agent in found} <= {node.peer_id for node in mesh}

    # Churn: a spawn and a delete on node 5 reach node 0's routing within a bounded time.
    node5 = mesh[5]
    fresh = node5.post("/v1/agents", {"kind": "echo", "count": AGENTS})["agents"][0]["id"]

    def routed_without_dht() -> bool:
        lookups = _status(mesh[0])["router"]["dht_lookups"]
        delivered = _send(mesh[0], fresh) == "delivered"
        return delivered and _status(mesh[0])["router"]["dht_lookups"] == lookups

    wait_until(routed_without_dht, timeout=5 * INTERVAL_S + 10, what="spawn reaches node 0")
    print(f"spawn reached node 0 after {time.monotonic() - started:.1f} s")
    gone = hosted[5][0]
    node5.post(f"/v1/agents/{gone}/delete")

    def forgotten() -> bool:
        false_positives = _status(mesh[0])["router"]["false_positives"].get("summary", 0)
        _send(mesh[0], gone)
        return bool(
            _status(mesh[0])["router"]["false_positives"].get("summary", 0) == false_positives
        )

    wait_until(forgotten, timeout=5 * INTERVAL_S + 10, what="delete reaches node 0")


def test_status_mesh_estimates_agents_and_nodes(mesh: list[LocalDaemon]) -> None:
    # However many agents the routing test left (spawned, tagged, churned), the truth is
    # the sum of the nodes' own counts; the estimate comes from gossiped sketches.
    truth = sum(_status(node)["agents"]["total"] for node in mesh)
    assert truth >= NODES * AGENTS
    # Ten node ids in 1,024 registers: two share one about 4% of the time, and the estimate
    # is then exactly one short; the Gaussian 3-sigma bound (1 node) does not cover a
    # discrete count that small, so one node of slack.
    node_slack = max(3 * HyperLogLog(NODE_PRECISION).relative_error * NODES, 1.0)

    def converged() -> dict[str, Any] | None:
        result = meshd_command("status", "--mesh", "--json", "--data-dir", str(mesh[-1].data_dir))
        assert result.returncode == 0, result.stderr
        estimates: dict[str, Any] = json.loads(result.stdout)["mesh"]
        complete = estimates["nodes_reporting"] == NODES and estimates["agents_reported"] == truth
        within = abs(estimates["agents"] - truth) <= 3 * estimates["agents_error"] * truth
        # The epochs' sketches fill as reports spread: wait for the nodes' too.
        within = within and abs(estimates["nodes"] - NODES) <= node_slack
        return estimates if complete and within else None

    estimates = wait_until(converged, timeout=60, interval=1.0, what="mesh estimates converge")
    # The sketch's stated error: 3 standard errors (99.7%), for agents and for nodes.
    assert estimates["agents_bound"][0] <= truth <= estimates["agents_bound"][1]
    assert abs(estimates["nodes"] - NODES) <= node_slack
    print(f"agents: estimate {estimates['agents']} truth {truth}; nodes {estimates['nodes']}")
    text = meshd_command("status", "--mesh", "--data-dir", str(mesh[0].data_dir))
    assert text.returncode == 0, text.stderr
    assert "std error" in text.stdout
