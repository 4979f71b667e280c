"""`simnet run SCENARIO.toml`: run a scenario, print its seed and summary, write the report.

In-process mode (default) runs every node in this process over the in-memory transport;
`--virtual-time` runs it under trio's MockClock; `--processes` runs real `meshd run`
daemons on loopback instead (`--netns`: each in a network namespace, so partitions
apply). Errors (a bad scenario file, an unwritable output directory) are one line
`simnet: <reason>` and exit status 1.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from simnet.scenario import Scenario, ScenarioError, load_scenario, plan, plan_digest

__all__ = ["main", "run_scenario"]


class SimnetError(click.ClickException):
    """Shown as `simnet: <reason>`, exit status 1."""

    def show(self, file: Any = None) -> None:
        """One line on stderr."""
        click.echo(f"simnet: {self.message}", err=True)


def run_scenario(
    scenario: Scenario,
    *,
    seed: int,
    out: Path | None,
    processes: bool = False,
    virtual_time: bool = False,
    progress: Callable[[float, str], None] | None = None,
    plots: bool = True,
    netns: bool = False,
) -> dict[str, Any]:
    """Run `scenario` with `seed`; write report.json and plots under `out`; return the report."""
    from simnet.driver import Results
    from simnet.report import build_report, write_plots, write_report

    events = plan(scenario, seed)
    digest = plan_digest(events)
    began = time.perf_counter()  # real time, for the report only
    with tempfile.TemporaryDirectory(prefix="simnet-") as tmp:
        root = Path(tmp)
        results: Results
        if processes:
            from simnet.processes import run_processes

            if virtual_time:
                raise ScenarioError("--virtual-time applies to the in-process mode only")
            if scenario.swarm is not None:
                raise ScenarioError("the [swarm] workload runs in the in-process mode only")
            results = run_processes(scenario, events, root, seed, progress, netns=netns)
            clock = "real (wall clock, separate processes)"
        elif netns:
            raise ScenarioError("--netns applies to --processes only")
        else:
            from simnet.runner import run_in_process

            results = run_in_process(scenario, events, root, seed, progress, virtual_time)
            clock = (
                "virtual (trio MockClock, autojump; libp2p clock reads redirected)"
                if virtual_time
                else "real (trio's clock)"
            )
    real_s = time.perf_counter() - began
    sim_s = scenario.warmup_s + scenario.duration_s + (results.drained_after_s or 0.0)
    sim_s += results.swarm.get("elapsed_s", 0.0)
    report = build_report(
        results,
        scenario=scenario,
        seed=seed,
        plan_digest=digest,
        clock=clock,
        real_s=real_s,
        sim_s=sim_s,
        events=[e.to_json() for e in events] if len(events) <= 5000 else None,
    )
    if out is not None:
        write_report(report, out)
        if plots:
            write_plots(report, results, out)
    return report


@click.group()
def main() -> None:
    """simnet: many real meshd nodes on one machine, with faults, workloads and reports."""


@main.command("run")
@click.argument("scenario_file", type=click.Path(path_type=Path))
@click.option("--seed", type=int, default=None, help="Seed for every choice [scenario's seed].")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Directory for report.json and the plots [simnet-out/<scenario>].",
)
@click.option("--processes", is_flag=True, help="Run real `meshd run` daemons on loopback.")
@click.option(
    "--virtual-time/--real-time",
    default=None,
    help="In-process only: trio's MockClock, idle time costs nothing [scenario's virtual_time].",
)
@click.option(
    "--netns",
    is_flag=True,
    help="With --processes: each daemon in a network namespace, so partitions apply (root).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def run_command(
    scenario_file: Path,
    seed: int | None,
    out: Path | None,
    processes: bool,
    virtual_time: bool | None,
    netns: bool,
    no_progress: bool,
) -> None:
    """Run a scenario and report delivery, latency, routes and summary traffic."""
    try:
        scenario = load_scenario(scenario_file)
    except ScenarioError as exc:
        raise SimnetError(str(exc)) from exc
    seed = scenario.seed if seed is None else seed
    out = out if out is not None else Path("simnet-out") / scenario.name
    vt = scenario.virtual_time if virtual_time is None else virtual_time
    if processes and virtual_time is None:
        vt = False  # a scenario's virtual_time key concerns the in-process mode
    mode = "processes" if processes else "in-process"
    click.echo(f"simnet: scenario {scenario.name}, seed {seed}, mode {mode}", err=True)
    _quiet_logs()
    try:
        out.mkdir(parents=True, exist_ok=True)  # refuse an unwritable --out before the run
        if no_progress:
            report = run_scenario(
                scenario, seed=seed, out=out, processes=processes, virtual_time=vt, netns=netns
            )
        else:
            report = _with_progress(scenario, seed, out, processes, vt, netns)
    except ScenarioError as exc:
        raise SimnetError(str(exc)) from exc
    except OSError as exc:
        raise SimnetError(f"{exc.strerror or exc}: {getattr(exc, 'filename', '')}") from exc
    except KeyboardInterrupt:
        raise SimnetError("interrupted; no report written") from None
    from simnet.report import summary_text

    click.echo(summary_text(report))
    click.echo(f"report: {out / 'report.json'} (+ latency, delivery, routes, summaries .png)")


def _with_progress(
    scenario: Scenario, seed: int, out: Path, processes: bool, vt: bool, netns: bool
) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[what]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=False, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(f"{scenario.name} (seed {seed})", total=1.0, what="starting")

        def progress(fraction: float, what: str) -> None:
            bar.update(task, completed=min(1.0, fraction), what=what)

        return run_scenario(
            scenario,
            seed=seed,
            out=out,
            processes=processes,
            virtual_time=vt,
            progress=progress,
            netns=netns,
        )


def _quiet_logs() -> None:
    """libp2p logs warnings on routine events; keep the terminal for the progress bar."""
    import libp2p  # noqa: F401  (resets its logger on import: configure after it)

    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    logging.getLogger("meshd").setLevel(logging.ERROR)
