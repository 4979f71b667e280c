"""The `[swarm]` workload of simnet: a small hierarchical swarm, run like `simnet run`."""

from __future__ import annotations

from pathlib import Path

import pytest

from simnet.cli import run_scenario
from simnet.scenario import ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[2]

SMALL = {
    "name": "swarm-small",
    "nodes": 4,
    "duration_s": 1,
    "warmup_s": 4,
    "drain_s": 0,
    "agents": [],
    "node_config": {"swarm": {"heartbeat_s": 1}},
    "swarm": {
        "leaves": 2,
        "nodes_per_leaf": 2,
        "workers_per_node": 2,
        "leaves_per_mid": 1,
        "tasks_per_leaf": 3,
        "timeout_s": 120,
    },
}


def test_a_small_hierarchical_swarm_counts_everyone_and_runs_each_task_once(
    tmp_path: Path,
) -> None:
    scenario = parse_scenario(SMALL)
    report = run_scenario(scenario, seed=7, out=tmp_path, virtual_time=True, plots=False)
    swarm = report["swarm"]
    # 8 workers, 2 mids and the root's member: the root's aggregate counts all 11.
    assert (swarm["swarms"], swarm["agents"], swarm["workers"]) == (5, 11, 8)
    assert swarm["root_counts_all_s"] is not None
    assert swarm["root_aggregate"]["agents"] == 11
    assert swarm["root_aggregate"]["totals"]["work"] == 8
    assert sorted(swarm["root_aggregate"]["children"]) == ["mid0", "mid1"]
    # Every task of both boards ran exactly once (counted from the shared documents).
    assert swarm["tasks_completed"]
    assert (swarm["tasks"], swarm["task_runs"], swarm["tasks_run_twice"]) == (6, 6, 0)
    assert swarm["messages_per_agent"] > 0
    assert (tmp_path / "report.json").exists()


def test_the_shipped_swarm_scenario_parses_and_bad_plans_are_refused() -> None:
    shipped = load_scenario(ROOT / "simnet" / "scenarios" / "swarm.toml")
    assert shipped.nodes == 50
    assert shipped.swarm is not None
    assert shipped.swarm.leaves * shipped.swarm.nodes_per_leaf == 50
    with pytest.raises(ScenarioError, match="need 8 nodes"):
        parse_scenario({**SMALL, "swarm": {"leaves": 4, "nodes_per_leaf": 2}})
    with pytest.raises(ScenarioError, match="swarm"):
        parse_scenario({**SMALL, "swarm": {"leaves": 1, "surprise": 1}})
    with pytest.raises(ScenarioError, match="in-process mode only"):
        run_scenario(parse_scenario(SMALL), seed=1, out=None, processes=True)
