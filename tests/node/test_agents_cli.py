"""`meshd agent ...` and `meshd send` against one real daemon on loopback.

A few commands run as real `meshd` processes; the rest run in-process through click's
CliRunner (same code, no interpreter start-up per command), talking to the same daemon.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import click.testing
import pytest

from meshd.cli import cli
from meshd.cli_client import EXIT_API_ERROR, EXIT_ERROR, EXIT_NO_DAEMON, EXIT_USAGE

if TYPE_CHECKING:
    from tests.node.conftest import Daemons

pytestmark = pytest.mark.slow


def invoke(*args: str) -> click.testing.Result:
    return click.testing.CliRunner().invoke(cli, list(args), catch_exceptions=False)


def as_json(result: Any) -> Any:
    return json.loads(result.stdout)


def test_agent_commands_against_a_daemon(daemons: Daemons) -> None:
    node = daemons.init("a")
    node.start()
    node.wait_ready()
    dd = ("--data-dir", str(node.data_dir))

    spawned = daemons.cli("agent", "spawn", "echo", "--count", "5", "--json", *dd)
    assert spawned.returncode == 0, spawned.stderr
    document = json.loads(spawned.stdout)
    ids = document["ids"]
    assert document["count"] == 5
    assert document["complete"] is True
    assert len(set(ids)) == 5
    assert all(agent_id.startswith("did:key:z") for agent_id in ids)

    listed = invoke("agent", "list", "--kind", "echo", "--json", *dd)
    assert listed.exit_code == 0, listed.stderr
    assert [a["id"] for a in as_json(listed)["agents"]] == ids
    human = invoke("agent", "list", "--limit", "2", *dd)
    assert ids[0] in human.stdout
    assert "--after" in human.stdout  # a full page says how to get the next

    shown = invoke("agent", "show", ids[0], "--json", *dd)
    assert shown.exit_code == 0, shown.stderr
    assert as_json(shown)["kind"] == "echo"
    assert as_json(shown)["state"] == "dormant"

    suspended = invoke("agent", "suspend", ids[0], "--json", *dd)
    assert as_json(suspended) == {"id": ids[0], "state": "suspended"}
    again = invoke("agent", "suspend", ids[0], *dd)
    assert again.exit_code == EXIT_API_ERROR
    assert ids[0] in again.stderr
    assert "cannot suspend an agent that is suspended" in again.stderr
    resumed = invoke("agent", "resume", ids[0], *dd)
    assert resumed.exit_code == 0, resumed.stderr
    assert "resumed" in resumed.stdout

    reply = daemons.cli("send", ids[0], '{"x": 1}', "--wait", "--json", *dd)
    assert reply.returncode == 0, reply.stderr
    answer = json.loads(reply.stdout)
    assert answer["outcome"] == "delivered"
    assert answer["reply"]["from"] == ids[0]
    assert answer["reply"]["body"] == {"x": 1}

    deleted = invoke("agent", "delete", ids[1], "--json", *dd)
    assert as_json(deleted) == {"id": ids[1], "state": "gone"}
    missing = invoke("agent", "show", ids[1], *dd)
    assert missing.exit_code == EXIT_API_ERROR
    assert f"no agent {ids[1]}" in missing.stderr
    lost = invoke("send", ids[1], '{"x": 1}', "--json", *dd)
    assert lost.exit_code == EXIT_ERROR
    assert as_json(lost)["outcome"] in ("not_here", "gone")
    assert "not delivered" in lost.stderr

    bad = invoke("send", ids[0], "{x: 1}", *dd)
    assert bad.exit_code == EXIT_USAGE
    assert "not valid JSON" in bad.stderr
    bad_state = invoke("agent", "spawn", "echo", "--state", "[1]", *dd)
    assert bad_state.exit_code == EXIT_USAGE
    unknown = invoke("agent", "spawn", "no-such-kind", *dd)
    assert unknown.exit_code == EXIT_API_ERROR
    assert "unknown kind 'no-such-kind'" in unknown.stderr

    started = time.monotonic()
    mass = invoke("agent", "spawn", "echo", "--count", "100000", "--json", *dd)
    elapsed = time.monotonic() - started
    assert mass.exit_code == 0, mass.stderr
    summary = as_json(mass)
    assert summary["count"] == 100_000
    assert summary["complete"] is False
    assert len(summary["ids"]) == 1000
    counts = as_json(invoke("agent", "list", "--limit", "1", "--json", *dd))["counts"]
    assert counts["total"] >= 100_000 + 4
    print(f"spawn --count 100000 through the CLI: {elapsed:.1f} s")  # informative only

    node.stop()
    gone = invoke("agent", "list", *dd)
    assert gone.exit_code == EXIT_NO_DAEMON


def test_attach_prints_and_acks_an_external_agents_messages(daemons: Daemons) -> None:
    node = daemons.init("b")
    node.start()
    node.wait_ready()
    dd = ("--data-dir", str(node.data_dir))
    assert invoke("agent", "spawn", "external", "--name", "worker", *dd).exit_code == 0
    for n in range(2):
        sent = invoke("send", "worker", json.dumps({"n": n}), "--json", *dd)
        assert as_json(sent)["outcome"] == "queued"

    attached = daemons.cli("agent", "attach", "worker", "--once", "--wait", "0", *dd)
    assert attached.returncode == 0, attached.stderr
    lines = [json.loads(line) for line in attached.stdout.splitlines()]
    assert [m["body"] for m in lines] == [{"n": 0}, {"n": 1}]
    operator = as_json(invoke("agent", "show", "operator", "--json", *dd))["id"]
    assert {m["from"] for m in lines} == {operator}

    # Acked: nothing is left; the next batch waits (briefly) and comes back empty.
    empty = invoke("agent", "attach", "worker", "--once", "--wait", "0.2", *dd)
    assert empty.exit_code == 0, empty.stderr
    assert empty.stdout == ""
    # The attached process answers as the agent. The operator sent without --wait, so no one
    # claims the reply: the operator takes it (and counts it) instead of piling it up.
    answer = ("send", operator, '"done"', "--from", "worker", "--reply-to", lines[0]["id"])
    reply = invoke(*answer, "--json", *dd)
    assert reply.exit_code == 0, reply.stderr
    assert as_json(reply)["outcome"] == "delivered"
    assert as_json(reply)["from"] != operator

    echo = as_json(invoke("agent", "spawn", "echo", "--json", *dd))["ids"][0]
    not_external = invoke("agent", "attach", echo, "--once", *dd)
    assert not_external.exit_code == EXIT_API_ERROR
    assert "not an external agent" in not_external.stderr
    assert node.stop() == 0
