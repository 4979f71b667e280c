"""Agent migration between real daemons: state and inbox travel, senders follow the agent."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from meshd.cli_client import EXIT_API_ERROR
from meshd.localmesh import LocalDaemon, start_mesh
from protocol.ids import SigningKey

if TYPE_CHECKING:
    from tests.node.conftest import Daemons

pytestmark = pytest.mark.slow

MESH_TIMEOUT_S = 30.0
PUBLISH_TIMEOUT_S = 20.0


def mesh(daemons: Daemons, names: list[str]) -> list[LocalDaemon]:
    """Start daemons that know each other; the fixture cleans them up."""
    nodes = start_mesh(daemons.root, names)
    daemons.all.extend(nodes)
    others = len(nodes) - 1
    daemons.wait_for(
        lambda: all(len(node.peer_ids()) >= others for node in nodes),
        timeout=MESH_TIMEOUT_S,
        what="every daemon to be connected to the others",
    )
    return nodes


def spawn(node: LocalDaemon, kind: str, **fields: Any) -> str:
    agent: str = node.post("/v1/agents", {"kind": kind, **fields})["agents"][0]["id"]
    return agent


def count(node: LocalDaemon, agent: str, add: int = 1) -> int:
    """Ask the counter `agent` (wherever it lives) to add, as `node`'s operator; its count."""
    result = node.post("/v1/send", {"to": agent, "body": {"add": add}, "kind": "req", "wait": True})
    assert result["outcome"] == "delivered", result
    assert result["reply"]["from"] == agent
    value: int = result["reply"]["body"]["count"]
    return value


def migrate(daemons: Daemons, node: LocalDaemon, agent: str, to: str) -> Any:
    """`meshd agent migrate` on `node`; the finished process."""
    return daemons.cli(
        "agent", "migrate", agent, "--to", to, "--json", "--data-dir", str(node.data_dir)
    )


def test_agent_moves_with_its_state_and_senders_follow(daemons: Daemons) -> None:
    a, b, c = mesh(daemons, ["a", "b", "c"])
    counter = spawn(a, "counter")
    # Senders on C and on A talk to it where it was born.
    assert [count(c, counter), count(c, counter), count(a, counter)] == [1, 2, 3]

    moved = migrate(daemons, a, counter, b.peer_id)
    assert moved.returncode == 0, moved.stderr
    result = json.loads(moved.stdout)
    assert result["id"] == counter
    assert (result["from"], result["to"], result["state"]) == (a.peer_id, b.peer_id, "dormant")

    # Listed on B with its state, gone from A.
    on_b = {info["id"]: info for info in b.get("/v1/agents")["agents"]}
    assert on_b[counter]["kind"] == "counter"
    assert on_b[counter]["state"] == "dormant"
    assert counter not in {info["id"] for info in a.get("/v1/agents")["agents"]}
    shown = daemons.cli("agent", "show", counter, "--data-dir", str(a.data_dir))
    assert shown.returncode == EXIT_API_ERROR

    # B publishes the new location first; then C's next request, which goes to A (where C
    # last reached it), is answered not_here, C looks the agent up again and B's copy
    # answers. Unless B's summary, rebuilt when the agent arrived, reached C first: then C
    # goes straight to B by summary. Either way C follows the agent.
    daemons.wait_for(
        lambda: b.get("/v1/status")["publisher"]["published"].get("migrated"),
        timeout=PUBLISH_TIMEOUT_S,
        what="B to publish the migrated agent's record",
    )
    by_summary = c.get("/v1/status")["router"]["paths"].get("summary", 0)
    assert count(c, counter) == 4
    after = c.get("/v1/status")
    followed = after["delivery"]["sent"].get("not_here", 0) >= 1
    assert followed or after["router"]["paths"].get("summary", 0) > by_summary
    # A's own operator goes straight to B: A's router learned where the agent went.
    assert count(a, counter) == 5
    assert b.get(f"/v1/agents/{counter}")["state"] == "active"

    # A suspended agent moves with the messages waiting in its inbox, and stays suspended.
    waiting = spawn(a, "counter")
    a.post(f"/v1/agents/{waiting}/suspend")
    for _ in range(2):
        sent = a.post("/v1/send", {"to": waiting, "body": {"add": 10}})
        assert sent["outcome"] == "queued", sent
    result = a.post(f"/v1/agents/{waiting}/migrate", {"to": b.peer_id})
    assert (result["state"], result["inbox"]) == ("suspended", 2)
    assert b.get(f"/v1/agents/{waiting}")["inbox"] == 2
    assert b.post(f"/v1/agents/{waiting}/resume")["delivered"] == 2
    assert count(b, waiting) == 21

    # Migrating what is not there any more fails clearly.
    again = migrate(daemons, a, counter, b.peer_id)
    assert again.returncode == EXIT_API_ERROR
    assert f"no agent {counter} on this node" in again.stderr
    assert a.get("/v1/status")["migration"]["sent"] == {"migrated": 2}
    assert b.get("/v1/status")["migration"]["received"] == {"offers": 2, "accepted": 2}


def test_failed_migrations_leave_the_agent_where_it_was(daemons: Daemons) -> None:
    a, b = mesh(daemons, ["a", "b"])
    twin = spawn(a, "counter", name="twin")
    spawn(b, "echo", name="twin")
    assert count(a, twin) == 1

    # B refuses: the name is taken there. The agent stays on A and keeps counting.
    refused = migrate(daemons, a, "twin", b.peer_id)
    assert refused.returncode == EXIT_API_ERROR
    assert "name_taken" in refused.stderr
    assert "HTTP 502 migration_refused" in refused.stderr
    assert count(a, twin) == 2
    assert a.get(f"/v1/agents/{twin}")["state"] == "active"

    # A peer nobody knows, a malformed peer id, and this very node.
    stranger = SigningKey.generate().node_id.text
    unknown = migrate(daemons, a, twin, stranger)
    assert unknown.returncode == EXIT_API_ERROR
    assert f"no address known for peer {stranger}" in unknown.stderr
    assert "HTTP 502 peer_unreachable" in unknown.stderr
    malformed = migrate(daemons, a, twin, "12D3KooWnot-a-peer")
    assert "HTTP 400 bad_peer_id" in malformed.stderr
    itself = migrate(daemons, a, twin, a.peer_id)
    assert "is this node" in itself.stderr

    # B goes away: the move fails (its address is known, but nothing answers there).
    b.kill()
    down = migrate(daemons, a, twin, b.peer_id)
    assert down.returncode == EXIT_API_ERROR
    assert "HTTP 502 peer_unreachable" in down.stderr
    assert count(a, twin) == 3
    assert a.get("/v1/status")["migration"]["sent"]["refused:name_taken"] == 1
