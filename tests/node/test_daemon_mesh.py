"""Five real daemons on loopback: discovery through the DHT, churn, restart, clean stop."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.node.conftest import Daemons

pytestmark = pytest.mark.slow

DISCOVERY_TIMEOUT_S = 45.0
DISCONNECT_TIMEOUT_S = 20.0


def test_five_daemons_one_bootstrap(daemons: Daemons) -> None:
    """Nodes 2-5 know only node 1, yet each ends up connected to at least 3 others."""
    seed = daemons.init("n1")
    seed.start()
    seed.wait_ready()
    others = [daemons.init(f"n{i}") for i in range(2, 6)]
    for index, node in enumerate(others):
        # One node logs JSON lines, to check that format end to end too.
        extra = ("--log-format", "json") if index == 0 else ()
        node.start("--bootstrap", seed.addrs[0], *extra)
    for node in others:
        node.wait_ready()
    everyone = [seed, *others]
    ids = {node.peer_id for node in everyone}
    assert len(ids) == 5

    def discovered() -> bool:
        return all(len(node.peer_ids() & (ids - {node.peer_id})) >= 3 for node in everyone)

    daemons.wait_for(discovered, timeout=DISCOVERY_TIMEOUT_S, what="every node to know 3 others")
    for node in everyone:
        status = node.get("/v1/status")
        assert status["dht_routing_table"] >= 3, status
        for peer in node.get("/v1/peers"):
            assert peer["connected_for_s"] >= 0

    def addressed() -> bool:
        # A peer that connected an instant ago (an inbound dial) has no addresses until
        # identify answers; every peer connected for a second has them.
        for node in everyone:
            peers = node.get("/v1/peers")
            if sum(bool(p["addrs"]) for p in peers) < 3:
                return False
            if any(not p["addrs"] and p["connected_for_s"] >= 1.0 for p in peers):
                return False
        return True

    daemons.wait_for(addressed, timeout=DISCOVERY_TIMEOUT_S, what="peers listed with addresses")

    # The command line shows the same: `meshd peers --json` on the seed lists the others.
    listed = daemons.cli("peers", "--json", "--data-dir", str(seed.data_dir))
    assert listed.returncode == 0, listed.stderr
    listed_ids = {peer["peer_id"] for peer in json.loads(listed.stdout)}
    assert len(listed_ids & (ids - {seed.peer_id})) >= 3
    shown = daemons.cli("id", "--json", "--data-dir", str(seed.data_dir))
    assert json.loads(shown.stdout)["peer_id"] == seed.peer_id

    # The json-logging node wrote only JSON objects, and logged its peers.
    lines = others[0].log_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(e["event"] == "peer_connected" for e in events)
    assert any(e["event"] == "listening" for e in events)

    # A second daemon on the same data directory is refused.
    second = others[1]
    refused = daemons.cli("run", "--data-dir", str(second.data_dir))
    assert refused.returncode == 1
    assert "already running" in refused.stderr

    # Kill one daemon without warning: the others notice it is gone.
    victim = others[-1]
    victim.kill()
    survivors = [node for node in everyone if node is not victim]
    daemons.wait_for(
        lambda: all(victim.peer_id not in node.peer_ids() for node in survivors),
        timeout=DISCONNECT_TIMEOUT_S,
        what="the killed daemon to disappear from peers",
    )

    # Restarted on the same data directory it keeps its id and rejoins the mesh.
    victim.start("--bootstrap", seed.addrs[0])
    identity = victim.wait_ready()
    assert identity["peer_id"] == victim.peer_id
    daemons.wait_for(
        lambda: victim.peer_id in seed.peer_ids(),
        timeout=DISCOVERY_TIMEOUT_S,
        what="the restarted daemon to reconnect",
    )

    # SIGTERM: each stops cleanly (exit 0) and removes its socket and pid file.
    for node in everyone:
        node.terminate()
    for node in everyone:
        assert node.wait() == 0, node.log_tail()
        assert not (node.data_dir / "api.sock").exists()
        assert not (node.data_dir / "meshd.pid").exists()
        assert "stopped" in node.log_text()
