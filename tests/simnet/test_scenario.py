"""Scenario files: validation with the key in every error, and seeded plans."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from simnet.cli import main
from simnet.scenario import ScenarioError, load_scenario, parse_scenario, plan, plan_digest

SCENARIOS = Path(__file__).resolve().parents[2] / "simnet" / "scenarios"
BASE: dict[str, Any] = {
    "nodes": 4,
    "duration_s": 10,
    "agents": [{"kind": "counter", "count": 3}, {"kind": "echo", "count": 1}],
    "workload": {"direct_rate": 20, "reliable_fraction": 0.5, "request_rate": 2},
    "faults": [
        {"at_s": 2, "kind": "partition", "groups": [[0, 1], [2, 3]]},
        {"at_s": 5, "kind": "heal"},
    ],
}


@pytest.mark.parametrize("name", ["smoke", "partition", "churn"])
def test_shipped_scenarios_load(name: str) -> None:
    scenario = load_scenario(SCENARIOS / f"{name}.toml")
    assert scenario.name == name
    assert plan(scenario, scenario.seed)


def test_same_seed_same_events_other_seed_other_events() -> None:
    scenario = parse_scenario(BASE)
    first, again, other = plan(scenario, 5), plan(scenario, 5), plan(scenario, 6)
    assert [e.to_json() for e in first] == [e.to_json() for e in again]
    assert plan_digest(first) == plan_digest(again) != plan_digest(other)
    kinds = {e.kind for e in first}
    assert {"direct", "request", "partition", "heal"} <= kinds
    # Every counter gets one delivery mode, so its final count checks that mode alone.
    modes: dict[tuple[int, int] | None, set[bool]] = {}
    for event in first:
        if event.kind == "direct":
            modes.setdefault(event.target, set()).add(event.reliable)
    assert all(len(m) == 1 for m in modes.values())
    assert {True, False} == {next(iter(m)) for m in modes.values()}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nodes": "four"}, "scenario.nodes: expected an integer"),
        ({"nodes": 0}, "scenario.nodes: 0 is outside"),
        ({"duration_s": None}, "scenario.duration_s: required"),
        ({"colour": "red"}, "scenario: unknown key(s) colour"),
        ({"workload": {"direct_rate": -1}}, "workload.direct_rate"),
        ({"faults": [{"at_s": 1, "kind": "explode"}]}, "faults[0].kind: one of"),
        ({"faults": [{"at_s": 1, "kind": "crash", "nodes": [9]}]}, "node 9 does not exist"),
        ({"faults": [{"at_s": 1, "kind": "crash", "nodes": [0]}]}, "node 0 is the bootstrap"),
        ({"faults": [{"at_s": 1, "kind": "partition"}]}, "a partition needs groups"),
        ({"agents": [{"kind": "echo"}], "workload": {"direct_rate": 1}}, "needs `counter`"),
        ({"late_nodes": [2]}, "node 2 has no join fault"),
        ({"links": {"loss": 2}}, "links.loss"),
    ],
)
def test_invalid_scenarios_name_the_key(change: dict[str, Any], message: str) -> None:
    data = {**BASE, **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ScenarioError, match=re.escape(message)):
        plan(parse_scenario(data), 1)


def test_cli_reports_a_bad_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("nodes = [\n")
    result = CliRunner().invoke(main, ["run", str(bad), "--no-progress"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("simnet: ")
    assert "invalid TOML" in result.output
    assert "Traceback" not in result.output
    missing = CliRunner().invoke(main, ["run", str(tmp_path / "none.toml"), "--no-progress"])
    assert missing.exit_code == 1
    assert "cannot read" in missing.output
