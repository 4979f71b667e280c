"""simnet runs: the smoke scenario, partition-and-heal, crash-and-restart, and processes mode.

In-process runs use virtual time (trio's MockClock, libp2p's clock reads redirected), so
idle periods cost nothing; assertions are about delivery, never about wall-clock time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from simnet.cli import main, run_scenario
from simnet.scenario import parse_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "simnet" / "scenarios"


def _ratio(rows: list[dict[str, Any]], first: int, last: int, key: str = "ratio") -> float:
    """Delivered / sent (at-most-once and requests) over bins [first, last)."""
    chosen = rows[first:last]
    if key == "ratio":
        sent, ok = sum(r["sent"] for r in chosen), sum(r["ok"] for r in chosen)
    else:
        sent = sum(r["reliable_sent"] for r in chosen)
        ok = sum(r["reliable_ok"] for r in chosen)
    assert sent > 0, f"no messages in bins {first}..{last}"
    return float(ok) / float(sent)


def test_smoke_scenario_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["run", str(SCENARIOS / "smoke.toml"), "--out", str(out), "--virtual-time", "--seed", "3"],
    )
    assert result.exit_code == 0, result.output
    assert "seed 3" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["seed"] == 3
    assert report["mode"] == "in-process"
    assert report["clock"].startswith("virtual")
    for name in ("latency", "delivery", "routes", "summaries"):
        assert (out / f"{name}.png").stat().st_size > 1000
    delivery = report["delivery"]
    assert delivery["direct_at_most_once"]["sent"] > 0
    assert delivery["direct_at_most_once"]["ratio"] == 1.0
    assert delivery["request"]["ratio"] == 1.0
    alo = report["at_least_once"]
    assert alo["accepted"] > 0
    assert alo["all_delivered"]
    assert alo["duplicates"] == 0
    assert report["topic"]["received"] == report["topic"]["expected"] > 0
    # Every node ran the daemon's services: summaries flowed and routed messages.
    assert report["summary_bytes"]["out"] > 0
    assert report["route_paths"].get("summary", 0) > 0


def test_partition_drops_delivery_and_the_heal_restores_it(tmp_path: Path) -> None:
    scenario = parse_scenario(
        {
            "name": "partition-test",
            "nodes": 4,
            "duration_s": 16,
            "warmup_s": 4,
            "drain_s": 30,
            "agents": [{"kind": "counter", "count": 4}],
            "workload": {"direct_rate": 10, "reliable_fraction": 0.5, "send_timeout_s": 2},
            "links": {"latency_ms": 5},
            "faults": [
                {"at_s": 5, "kind": "partition", "groups": [[0, 1], [2, 3]]},
                {"at_s": 10, "kind": "heal"},
            ],
        }
    )
    report = run_scenario(scenario, seed=5, out=tmp_path, virtual_time=True, plots=False)
    rows = report["timeline"]
    before, during, after = _ratio(rows, 0, 4), _ratio(rows, 6, 10), _ratio(rows, 12, 16)
    assert before >= 0.9, rows
    assert during <= 0.75, rows  # about half the messages cross the cut
    assert after >= 0.9, rows
    # At-least-once messages across the cut waited in the outbox ...
    outcomes = report["delivery"]["direct_at_least_once"]["outcomes"]
    assert outcomes.get("queued", 0) > 0, outcomes
    # ... and all arrived after the heal, each once.
    alo = report["at_least_once"]
    assert alo["all_delivered"], alo
    assert alo["missing"] == 0
    assert alo["duplicates"] == 0
    assert alo["unverified"] == 0
    kinds = [f["kind"] for f in report["faults"]]
    assert kinds == ["partition", "heal"]


def test_crashed_nodes_reliable_messages_arrive_after_its_restart(tmp_path: Path) -> None:
    scenario = parse_scenario(
        {
            "name": "crash-test",
            "nodes": 3,
            "duration_s": 12,
            "warmup_s": 4,
            "drain_s": 40,
            # Only node 2 hosts counters: every message goes to the node that crashes.
            "agents": [{"kind": "counter", "count": 4, "nodes": [2]}],
            "workload": {
                "direct_rate": 6,
                "reliable_fraction": 1.0,
                "send_timeout_s": 2,
                "stop_s": 9,
            },
            "faults": [
                {"at_s": 2, "kind": "crash", "nodes": [2]},
                {"at_s": 7, "kind": "restart", "nodes": [2]},
            ],
        }
    )
    report = run_scenario(scenario, seed=9, out=tmp_path, virtual_time=True, plots=False)
    outcomes = report["delivery"]["direct_at_least_once"]["outcomes"]
    # Sent while node 2 was down: accepted into the senders' outboxes ...
    assert outcomes.get("queued", 0) > 0, outcomes
    alo = report["at_least_once"]
    # ... and every one was handled once by node 2's counters after the restart.
    assert alo["accepted"] > outcomes["queued"]
    assert alo["all_delivered"], (alo, report["counts"])
    assert alo["missing"] == 0
    assert alo["duplicates"] == 0
    assert alo["unverified"] == 0


@pytest.mark.slow
def test_same_scenario_same_outcome_in_process_and_with_daemons(tmp_path: Path) -> None:
    scenario = parse_scenario(
        {
            "name": "compare",
            "nodes": 3,
            "duration_s": 4,
            "warmup_s": 3,
            "drain_s": 20,
            "agents": [{"kind": "counter", "count": 3}, {"kind": "echo", "count": 1}],
            "workload": {
                "direct_rate": 4,
                "reliable_fraction": 0.5,
                "request_rate": 1,
                "send_timeout_s": 10,
            },
        }
    )
    inproc = run_scenario(scenario, seed=2, out=tmp_path / "a", virtual_time=True, plots=False)
    daemons = run_scenario(scenario, seed=2, out=tmp_path / "b", processes=True, plots=False)
    assert inproc["mode"] == "in-process"
    assert daemons["mode"] == "processes"
    assert inproc["plan_digest"] == daemons["plan_digest"]

    def outcome(report: dict[str, Any]) -> dict[str, Any]:
        return {
            "counts": {k: (v["sent"], v.get("count")) for k, v in report["counts"].items()},
            "requests_ok": report["delivery"]["request"]["ok"],
            "at_most_once_ok": report["delivery"]["direct_at_most_once"]["ok"],
            "at_least_once_arrived": report["at_least_once"]["arrived"],
        }

    assert outcome(inproc) == outcome(daemons)
    assert inproc["at_least_once"]["all_delivered"]
    assert inproc["delivery"]["direct_at_most_once"]["sent"] > 0
