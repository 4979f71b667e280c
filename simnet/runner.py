"""Run a scenario in-process: one trio run, real or virtual time."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio
import trio.testing

from simnet.driver import Results, drive
from simnet.inprocess import in_process
from simnet.scenario import Event, Scenario

__all__ = ["run_in_process", "simulate"]


async def simulate(
    scenario: Scenario,
    events: list[Event],
    root: Path,
    seed: int,
    progress: Callable[[float, str], None] | None = None,
) -> Results:
    """The scenario's nodes under this task; what the driver measured."""
    async with in_process(scenario, root, seed) as backend:
        return await drive(scenario, events, backend, progress=progress)


def run_in_process(
    scenario: Scenario,
    events: list[Event],
    root: Path,
    seed: int,
    progress: Callable[[float, str], None] | None = None,
    virtual_time: bool = False,
) -> Results:
    """`simulate` under `trio.run`, with trio's MockClock when `virtual_time`."""
    run = partial(simulate, scenario, events, root, seed, progress)
    if not virtual_time:
        return trio.run(run)
    from meshd.net.virtual_time import redirect_libp2p_clocks

    clock = trio.testing.MockClock(autojump_threshold=0)
    with redirect_libp2p_clocks(clock):
        return trio.run(run, clock=clock)
