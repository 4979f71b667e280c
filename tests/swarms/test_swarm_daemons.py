"""Swarms across three real daemons: the CLI and API agree everywhere; a SIGKILL re-chooses."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshd.api.client import ApiError
from meshd.cli_client import EXIT_API_ERROR
from meshd.localmesh import LocalDaemon, daemon_env, meshd_command, wait_until
from protocol.ids import AgentId

pytestmark = pytest.mark.slow

HEARTBEAT_S = "0.5"
ENV = daemon_env(MESHD_SWARM_HEARTBEAT_S=HEARTBEAT_S)
# Agreement and re-choice come within a few heartbeats (3 misses = 1.5 s); generous bounds
# for two busy cores, never asserted as durations.
AGREE_S = 30.0


@pytest.fixture
def mesh() -> Iterator[list[LocalDaemon]]:
    """Three daemons on loopback (short paths for the API socket); killed at teardown."""
    root = Path(tempfile.mkdtemp(prefix="meshd-sw-"))
    daemons = [LocalDaemon(root / name) for name in ("a", "b", "c")]
    try:
        for daemon in daemons:
            daemon.init()
        first, *rest = daemons
        first.start(env=ENV)
        first.wait_ready()
        for daemon in rest:
            daemon.start("--bootstrap", first.addrs[0], env=ENV)
        for daemon in rest:
            daemon.wait_ready()
        yield daemons
    except BaseException:
        for daemon in daemons:
            print(f"----- log of {daemon.data_dir.name} -----\n{daemon.log_tail()}")
        raise
    finally:
        for daemon in daemons:
            daemon.kill()
        shutil.rmtree(root, ignore_errors=True)


def cli(daemon: LocalDaemon, *args: str) -> Any:
    """Run `meshd swarm ARGS --json` against `daemon`; return the parsed JSON."""
    result = meshd_command("swarm", *args, "--json", "--data-dir", str(daemon.data_dir), env=ENV)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def seen(daemon: LocalDaemon) -> tuple[Any, ...]:
    """(members as (id, node) pairs, coordinator, its node) as `daemon` sees the swarm."""
    info = daemon.get("/v1/swarms/team")
    pairs = tuple((m["id"], m["node"]) for m in info["members"])
    return pairs, info["coordinator"], info["coordinator_node"]


def lowest(ids: list[str]) -> str:
    return min(ids, key=lambda did: AgentId.from_did(did).raw)


def test_three_daemons_agree_and_re_choose_after_a_kill(mesh: list[LocalDaemon]) -> None:
    a, b, _ = mesh
    assert cli(a, "create", "team", "--parent", "org") == {
        "name": "team",
        "parent": "org",
        "created": True,
    }
    hosts: dict[str, LocalDaemon] = {}
    for daemon in mesh:
        spawned = daemon.post("/v1/agents", {"kind": "echo", "count": 2})["agents"]
        first, second = (agent["id"] for agent in spawned)
        joined = cli(daemon, "join", "team", "--agent", first)
        assert joined == {"swarm": "team", "agent": first, "changed": True}
        assert daemon.post("/v1/swarms/team/join", {"agent": second})["changed"] is True
        hosts[first] = hosts[second] = daemon
    expected = tuple(
        sorted(
            ((did, d.peer_id) for did, d in hosts.items()), key=lambda p: AgentId.from_did(p[0]).raw
        )
    )
    coordinator = lowest(list(hosts))
    target = (expected, coordinator, hosts[coordinator].peer_id)
    wait_until(
        lambda: all(seen(d) == target for d in mesh),
        timeout=AGREE_S,
        interval=0.2,
        what="three nodes agreeing on members and coordinator",
    )
    shown = [cli(d, "show", "team") for d in mesh]
    assert all(s["coordinator"] == coordinator for s in shown)
    assert all(s["parent"] == "org" for s in shown)  # b and c learned it from a's records
    assert all(s["state"] == "active" for s in shown)
    # The coordinator's node also follows the parent, "org", to report to it.
    listed = {s["name"]: s for s in cli(b, "list")["swarms"]}
    assert (listed["team"]["members"], listed["team"]["local_members"]) == (6, 2)
    assert set(listed) <= {"org", "team"}

    # SIGKILL the coordinator's node: the others drop its agents and re-choose.
    victim = hosts[coordinator]
    victim.kill()
    survivors = [d for d in mesh if d is not victim]
    alive = [did for did, d in hosts.items() if d is not victim]
    after = (
        tuple(p for p in expected if p[1] != victim.peer_id),
        lowest(alive),
        hosts[lowest(alive)].peer_id,
    )
    wait_until(
        lambda: all(seen(d) == after for d in survivors),
        timeout=AGREE_S,
        interval=0.2,
        what="the survivors re-choosing a coordinator",
    )

    # The new coordinator leaves (CLI); everyone moves on to the next lowest.
    new = after[1]
    assert cli(hosts[new], "leave", "team", "--agent", new)["changed"] is True
    rest = [did for did in alive if did != new]
    wait_until(
        lambda: all(seen(d)[1] == lowest(rest) for d in survivors),
        timeout=AGREE_S,
        interval=0.2,
        what="the survivors seeing the leave",
    )

    # Refusals: a bad name, an unknown swarm, an agent not hosted here.
    survivor = survivors[0]
    for path, body, status in (
        ("/v1/swarms", {"name": "bad/name"}, 400),
        ("/v1/swarms/nope/leave", {"agent": alive[0]}, 404),
        ("/v1/swarms/team/join", {"agent": "no-such-agent"}, 404),
    ):
        with pytest.raises(ApiError) as info:
            survivor.post(path, body)
        assert info.value.status == status, (path, info.value)
    result = meshd_command("swarm", "show", "nope", "--data-dir", str(survivor.data_dir), env=ENV)
    assert result.returncode == EXIT_API_ERROR
    assert "unknown_swarm" in result.stderr
    status = survivor.get("/v1/status")["swarms"]
    assert status["swarms"] in (1, 2)  # team, and org if it coordinated team

    # Hierarchy: team's coordinator reports its subtree to the parent "org" on its node.
    leader = hosts[lowest(rest)]
    wait_until(
        lambda: (
            "org" in [s["name"] for s in leader.get("/v1/swarms")["swarms"]]
            and leader.get("/v1/swarms/org")["aggregate"]["children"].get("team", {}).get("agents")
            == len(rest)
        ),
        timeout=AGREE_S,
        interval=0.2,
        what="org receiving team's aggregate",
    )
    assert cli(leader, "show", "org")["aggregate"]["agents"] == len(rest)
    assert status["received"] > 0
