"""Shared state, task board and decisions across three real daemons, through the CLI and API."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from meshd.api.client import ApiError
from meshd.localmesh import LocalDaemon, meshd_command, wait_until
from protocol.envelope import Envelope
from protocol.ids import AgentId, SigningKey
from protocol.swarm_vote import KIND_BALLOT, ballot_body, open_proposal, verify_decision
from tests.swarms.test_swarm_daemons import AGREE_S, ENV, cli, mesh  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

N_TASKS = 9


def state(daemon: LocalDaemon) -> dict[str, Any]:
    return dict(daemon.get("/v1/swarms/team/state")["state"])


def board(daemon: LocalDaemon) -> list[dict[str, Any]]:
    return list(daemon.get("/v1/swarms/team/tasks")["tasks"])


def decision(daemon: LocalDaemon, pid: str) -> dict[str, Any]:
    return dict(daemon.get(f"/v1/swarms/team/proposals/{pid}"))


def test_state_tasks_and_votes_across_three_daemons(mesh: list[LocalDaemon]) -> None:  # noqa: F811
    workers: dict[str, LocalDaemon] = {}
    for daemon in mesh:
        spawned = daemon.post("/v1/agents", {"kind": "tests.swarms.kinds:Worker", "count": 2})
        for agent in spawned["agents"]:
            joined = daemon.post("/v1/swarms/team/join", {"agent": agent["id"]})
            assert joined["changed"] is True
            workers[agent["id"]] = daemon
    wait_until(
        lambda: all(len(d.get("/v1/swarms/team")["members"]) == len(workers) for d in mesh),
        timeout=AGREE_S,
        interval=0.2,
        what="every daemon seeing every worker",
    )

    # Concurrent writes from three nodes (each its own keys, all the same key) converge.
    def write(daemon: LocalDaemon, i: int) -> None:
        cli(daemon, "state", "team", "--set", f"n{i}", json.dumps({"node": i}))
        for key, value in (("same", i), (f"list{i}", [i, None])):
            daemon.post("/v1/swarms/team/state", {"key": key, "value": value})

    threads = [threading.Thread(target=write, args=(d, i)) for i, d in enumerate(mesh)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until(
        lambda: len({json.dumps(state(d), sort_keys=True) for d in mesh}) == 1,
        timeout=AGREE_S,
        interval=0.2,
        what="three replicas agreeing",
    )
    final = cli(mesh[0], "state", "team")["state"]
    assert final["n2"] == {"node": 2}
    assert final["list1"] == [1, None]
    assert final["same"] in (0, 1, 2)

    # The task board: worker agents on three nodes finish N tasks, none twice.
    first = mesh[0]
    tasks = [cli(first, "task", "add", "team", json.dumps({"n": 0}))["id"]]
    tasks += [
        first.post("/v1/swarms/team/tasks", {"spec": {"n": i}})["id"] for i in range(1, N_TASKS)
    ]
    wait_until(
        lambda: all(len(board(d)) == N_TASKS for d in mesh),
        timeout=AGREE_S,
        interval=0.2,
        what="the board on every daemon",
    )
    for worker, daemon in workers.items():
        daemon.post("/v1/send", {"to": worker, "body": {"work": "team", "for_s": 120}})
    wait_until(
        lambda: all({t["state"] for t in board(d)} == {"done"} for d in mesh),
        timeout=120,
        interval=0.5,
        what="every task done on every daemon",
    )
    wait_until(
        lambda: len([k for k in state(mesh[2]) if k.startswith("ran/")]) >= N_TASKS,
        timeout=AGREE_S,
        interval=0.2,
        what="the workers' run records",
    )
    runs = [key.split("/")[1] for key in state(mesh[2]) if key.startswith("ran/")]
    assert sorted(runs) == sorted(tasks)  # each task ran exactly once
    assert cli(first, "show", "team")["shared"]["tasks"]["done"] == N_TASKS
    listed = meshd_command("swarm", "task", "list", "team", "--data-dir", str(first.data_dir))
    assert listed.returncode == 0
    assert listed.stdout.count("done") >= N_TASKS

    # Decisions: a forged ballot is refused; four genuine yes of six decide everywhere.
    by_node = {d.peer_id: [w for w, h in workers.items() if h is d] for d in mesh}
    a_workers, b_workers = by_node[mesh[0].peer_id], by_node[mesh[1].peer_id]
    proposed = cli(first, "propose", "team", "adopt plan B", "--agent", a_workers[0])
    pid = proposed["id"]
    assert (proposed["outcome"], proposed["quorum"], len(proposed["electorate"])) == (
        "pending",
        4,
        6,
    )
    wait_until(
        lambda: all(d.get("/v1/swarms/team/proposals")["proposals"] for d in mesh),
        timeout=AGREE_S,
        interval=0.2,
        what="the proposal on every daemon",
    )
    intruder = SigningKey.generate()
    forged = bytearray(
        Envelope.create(
            intruder,
            "swarm/team",
            KIND_BALLOT,
            ballot_body("team", bytes.fromhex(pid), True),
            now_ms=proposed["created_ms"] + 1,
        ).frame
    )
    at = forged.find(intruder.public_key)
    forged[at : at + 32] = AgentId.from_did(b_workers[0]).raw  # posing as a member
    for frame in (
        bytes(forged),
        bytes(
            Envelope.create(
                intruder,
                "swarm/team",
                KIND_BALLOT,
                ballot_body("team", bytes.fromhex(pid), True),
                now_ms=proposed["created_ms"] + 1,
            ).frame
        ),
    ):
        with pytest.raises(ApiError) as info:
            mesh[1].post("/v1/swarms/team/ballots", {"ballot": frame.hex()})
        assert (info.value.status, info.value.code) == (400, "bad_ballot")
    refused = mesh[1].get("/v1/status")["swarms"]["shared"]["state_rejected"]
    assert refused == {"ballot_bad_signature": 1, "ballot_unauthorized": 1}
    assert cli(mesh[0], "vote", "team", pid, "yes", "--agent", a_workers[0])["outcome"] == (
        "pending"
    )
    c_worker = by_node[mesh[2].peer_id][0]
    for daemon, agent, choice in (
        (mesh[0], a_workers[1], "yes"),
        (mesh[1], b_workers[0], "no"),
        (mesh[1], b_workers[1], "yes"),
        (mesh[2], c_worker, "yes"),
    ):
        body = {"choice": choice, "agent": agent}
        daemon.post(f"/v1/swarms/team/proposals/{pid}/vote", body)
    wait_until(
        lambda: all(decision(d, pid)["outcome"] == "accepted" for d in mesh),
        timeout=AGREE_S,
        interval=0.2,
        what="the decision on every daemon",
    )
    shown = cli(mesh[2], "proposals", "team", pid)
    assert (shown["yes"], shown["no"]) == (4, 1)
    verdict = verify_decision(
        open_proposal(bytes.fromhex(shown["proposal"])),
        [bytes.fromhex(b) for b in shown["ballots"]],
    )
    assert verdict.outcome == "accepted"
    result = meshd_command(
        "swarm",
        "vote",
        "team",
        pid,
        "no",
        "--agent",
        c_worker,
        "--data-dir",
        str(mesh[2].data_dir),
        env=ENV,
    )
    assert result.returncode != 0
    assert "already_voted" in result.stderr
