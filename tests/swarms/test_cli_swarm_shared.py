"""`meshd swarm state|task|propose|vote|proposals` against a fake API: requests and output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from meshd.api.client import ApiError
from meshd.cli import cli

DECISION = {
    "id": "ab" * 16,
    "swarm": "team",
    "text": "adopt plan B",
    "proposer": "did:key:z6MkA",
    "created_ms": 1,
    "electorate": ["did:key:z6MkA", "did:key:z6MkB", "did:key:z6MkC"],
    "quorum": 2,
    "yes": 2,
    "no": 0,
    "outcome": "accepted",
    "votes": {"did:key:z6MkA": "yes", "did:key:z6MkB": "yes"},
    "rejected": {"bad_signature": 1},
}
ANSWERS: dict[tuple[str, str], Any] = {
    ("GET", "/v1/swarms/team/state"): {
        "swarm": "team",
        "state": {"plan": {"step": 1}, "n": 3},
        "bytes": 120,
        "clients": 2,
    },
    ("POST", "/v1/swarms/team/state"): {"swarm": "team", "state": {}, "bytes": 2, "clients": 1},
    ("GET", "/v1/swarms/team/tasks"): {
        "swarm": "team",
        "tasks": [
            {
                "id": "t1",
                "spec": {"n": 1},
                "state": "done",
                "claimant": "did:key:z6MkA",
                "claims": 1,
                "done": {"agent": "did:key:z6MkA", "ms": 2, "result": 42},
            },
            {"id": "t2", "spec": "x", "state": "open", "claimant": None, "claims": 0, "done": None},
        ],
    },
    ("POST", "/v1/swarms/team/tasks"): {"swarm": "team", "id": "t3"},
    ("POST", "/v1/swarms/team/tasks/t2/claim"): {
        "swarm": "team",
        "task": "t2",
        "agent": "did:key:z6MkA",
        "won": True,
    },
    ("POST", "/v1/swarms/team/tasks/t2/done"): {
        "swarm": "team",
        "task": "t2",
        "agent": "did:key:z6MkA",
        "changed": True,
    },
    ("POST", "/v1/swarms/team/proposals"): DECISION,
    ("GET", "/v1/swarms/team/proposals"): {"swarm": "team", "proposals": [DECISION]},
    ("POST", f"/v1/swarms/team/proposals/{'ab' * 16}/vote"): DECISION,
}


class FakeClient:
    def __init__(self, calls: list[tuple[str, str, Any]]) -> None:
        self.calls = calls

    def _answer(self, method: str, path: str, body: Any) -> Any:
        self.calls.append((method, path, body))
        if (method, path) not in ANSWERS:
            raise ApiError(404, "this node follows no swarm", "unknown_swarm")
        return ANSWERS[(method, path)]

    def get(self, path: str, params: Any = None) -> Any:
        return self._answer("GET", path, None)

    def post(self, path: str, body: Any = None) -> Any:
        return self._answer("POST", path, body)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, Any]]:
    made: list[tuple[str, str, Any]] = []

    @contextmanager
    def fake(data_dir: Path | None, *, timeout: float = 10.0) -> Iterator[FakeClient]:
        yield FakeClient(made)

    monkeypatch.setattr("meshd.cli_swarm.api_client", fake)
    return made


def run(*args: str) -> Any:
    result = CliRunner().invoke(cli, ["swarm", *args])
    return result


def test_state_reads_and_writes(calls: list[tuple[str, str, Any]]) -> None:
    shown = run("state", "team")
    assert shown.exit_code == 0, shown.output
    assert "2 keys, 120 bytes, 2 writers" in shown.output
    assert '{"step": 1}' in shown.output
    assert run("state", "team", "--set", "plan", '{"step": 2}').exit_code == 0
    assert run("state", "team", "--delete", "plan", "--json").exit_code == 0
    assert calls[1:] == [
        ("POST", "/v1/swarms/team/state", {"key": "plan", "value": {"step": 2}}),
        ("POST", "/v1/swarms/team/state", {"key": "plan", "delete": True}),
    ]
    bad = run("state", "team", "--set", "plan", "{nope")
    assert bad.exit_code != 0
    assert "not valid JSON" in bad.output
    both = run("state", "team", "--set", "a", "1", "--delete", "a")
    assert both.exit_code != 0


def test_task_board_commands(calls: list[tuple[str, str, Any]]) -> None:
    added = run("task", "add", "team", '{"url": "x"}', "--agent", "w1")
    assert (added.exit_code, added.output.strip()) == (0, "t3")
    listed = run("task", "list", "team")
    assert listed.exit_code == 0
    lines = listed.output.splitlines()
    assert lines[0].split() == ["TASK", "STATE", "AGENT", "SPEC", "RESULT"]
    assert lines[1].split()[:3] == ["t1", "done", "did:key:z6MkA"]
    assert lines[2].split()[:3] == ["t2", "open", "-"]
    assert run("task", "claim", "team", "t2").output.strip() == "did:key:z6MkA won t2"
    done = run("task", "done", "team", "t2", "--result", "[1, 2]")
    assert done.output.strip() == "t2: done"
    assert calls[0] == ("POST", "/v1/swarms/team/tasks", {"spec": {"url": "x"}, "agent": "w1"})
    assert calls[-2:] == [
        ("POST", "/v1/swarms/team/tasks/t2/claim", {}),
        ("POST", "/v1/swarms/team/tasks/t2/done", {"result": [1, 2]}),
    ]


def test_propose_vote_and_list(calls: list[tuple[str, str, Any]]) -> None:
    proposed = run("propose", "team", "adopt plan B", "--agent", "w1")
    assert proposed.exit_code == 0
    assert "accepted" in proposed.output
    assert "2 yes, 0 no of 3 (quorum 2)" in proposed.output
    voted = run("vote", "team", "ab" * 16, "yes", "--json")
    assert json.loads(voted.output)["outcome"] == "accepted"
    assert run("vote", "team", "ab" * 16, "maybe").exit_code != 0  # yes or no only
    listed = run("proposals", "team")
    assert listed.output.splitlines()[1].split()[:5] == ["ab" * 16, "accepted", "2", "0", "3"]
    missing = run("proposals", "nope")
    assert missing.exit_code != 0
    assert "unknown_swarm" in missing.output
    assert calls[0] == (
        "POST",
        "/v1/swarms/team/proposals",
        {"text": "adopt plan B", "agent": "w1"},
    )
    assert calls[1][2] == {"choice": "yes"}
