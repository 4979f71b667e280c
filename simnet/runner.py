"""Run a scenario in-process: one trio run, real or virtual time.

Virtual time is trio's `MockClock(autojump_threshold=0)`: when every task waits, the clock
jumps to the next deadline. A task waiting for a worker thread (SQLite, signature checks)
also looks idle to trio, so the clock would jump while the thread works and timeouts would
fire early; `_hold_clock_during_threads` stops autojumping while any thread started with
`trio.to_thread.run_sync` is in flight (the loop then sleeps until the thread reports back).
Work in threads, like work in tasks, costs no virtual time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio
import trio.testing

from simnet.driver import Results, drive
from simnet.inprocess import in_process
from simnet.scenario import Event, Scenario

__all__ = ["run_in_process", "simulate", "virtual_clock"]


async def simulate(
    scenario: Scenario,
    events: list[Event],
    root: Path,
    seed: int,
    progress: Callable[[float, str], None] | None = None,
) -> Results:
    """The scenario's nodes under this task; what the driver measured."""
    async with in_process(scenario, root, seed) as backend:
        results = await drive(scenario, events, backend, progress=progress)
        if scenario.swarm is not None:
            from simnet.swarm import run_swarm

            results.swarm = await run_swarm(
                backend, scenario.swarm, scenario.nodes, progress or (lambda f, w: None)
            )
        results.transport = dict(backend.links.counters)
        return results


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
    with virtual_clock() as clock:
        return trio.run(run, clock=clock)


@contextmanager
def virtual_clock() -> Iterator[trio.testing.MockClock]:
    """A MockClock for `trio.run(..., clock=)`, with libp2p's clocks and threads held to it."""
    from meshd.net.virtual_time import redirect_libp2p_clocks

    clock = trio.testing.MockClock(autojump_threshold=0)
    with redirect_libp2p_clocks(clock), _hold_clock_during_threads(clock):
        yield clock


@contextmanager
def _hold_clock_during_threads(clock: trio.testing.MockClock) -> Iterator[None]:
    """While installed, no autojump while a `trio.to_thread.run_sync` call is in flight."""
    original = trio.to_thread.run_sync
    in_flight = 0

    async def run_sync(*args: Any, **kwargs: Any) -> Any:
        nonlocal in_flight
        in_flight += 1
        if in_flight == 1:
            clock.autojump_threshold = math.inf
        try:
            return await original(*args, **kwargs)
        finally:
            in_flight -= 1
            if in_flight == 0:
                clock.autojump_threshold = 0

    # Callers look the function up on the module at call time, so this reaches them all.
    trio.to_thread.run_sync = run_sync
    try:
        yield
    finally:
        trio.to_thread.run_sync = original
