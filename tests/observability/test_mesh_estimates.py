"""`meshd status --mesh` on a 10-node loopback mesh: agents and nodes within the stated error."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from meshd.localmesh import daemon_env

if TYPE_CHECKING:
    from tests.node.conftest import Daemons

pytestmark = pytest.mark.slow

NODES = 10


def test_status_mesh_estimates_agents_and_nodes(daemons: Daemons) -> None:
    env = daemon_env(MESHD_TELEMETRY_INTERVAL_S="1", MESHD_DHT_JOIN_JITTER_S="0.5")
    nodes = [daemons.init(f"n{i}") for i in range(NODES)]
    seed, *rest = nodes
    seed.start(env=env)
    seed.wait_ready()
    for node in rest:
        node.start("--bootstrap", seed.addrs[0], env=env)
    for node in rest:
        node.wait_ready()
    # A known, uneven number of agents: 30, 60, ... 300 (1,650 in all).
    for i, node in enumerate(nodes):
        node.post("/v1/agents", {"kind": "echo", "count": 30 * (i + 1)})
    truth = sum(node.get("/v1/status")["agents"]["total"] for node in nodes)
    assert truth == 30 * NODES * (NODES + 1) // 2

    def converged() -> dict[str, Any] | None:
        result = daemons.cli("status", "--mesh", "--json", "--data-dir", str(nodes[-1].data_dir))
        assert result.returncode == 0, result.stderr
        mesh: dict[str, Any] = json.loads(result.stdout)["mesh"]
        complete = mesh["nodes_reporting"] == NODES and mesh["agents_reported"] == truth
        within = abs(mesh["agents"] - truth) <= 3 * mesh["agents_error"] * truth
        return mesh if complete and within else None

    mesh = daemons.wait_for(converged, timeout=40, interval=1.0, what="mesh estimates converge")
    # The sketch's stated error: 3 standard errors (99.7%), for agents and for nodes.
    assert mesh["agents_bound"][0] <= truth <= mesh["agents_bound"][1]
    assert abs(mesh["nodes"] - NODES) <= 3 * mesh["nodes_error"] * NODES
    print(f"agents: estimate {mesh['agents']} truth {truth}; nodes: estimate {mesh['nodes']}")
    text = daemons.cli("status", "--mesh", "--data-dir", str(nodes[0].data_dir))
    assert text.returncode == 0, text.stderr
    assert "std error" in text.stdout
