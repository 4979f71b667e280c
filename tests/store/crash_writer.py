"""Writes to a store until killed, printing every acknowledged write (for the crash test).

Usage: `python tests/store/crash_writer.py DB RUN`. One task inserts agents in batches while
four tasks rewrite the state of agents already acknowledged; each prints a line only after
its `await` returned, so every line names a write the store acknowledged:

    A <first index> <count>     agents first..first+count-1 of this run were inserted
    S <index> <version>         agent <index> has state `state_bytes(RUN, index, version)`

Agent ids and states are derived from (RUN, index), so the test can rebuild them.
"""

from __future__ import annotations

import hashlib
import sys

import trio

from meshd.store import AgentRow, Store

BATCH = 200
STATE_TASKS = 4
LIMIT = 1_000_000  # the test kills us long before; bounded all the same


def agent_id(run: int, index: int) -> bytes:
    """The id of agent `index` of run `run`."""
    return hashlib.sha256(f"crash:{run}:{index}".encode()).digest()


def state_bytes(run: int, index: int, version: int) -> bytes:
    """The state written as `version` of agent `index`."""
    return f"{run}:{index}:{version}:".encode() * 8


def ack(line: str) -> None:
    """Report one acknowledged write."""
    print(line, flush=True)


async def main(path: str, run: int) -> None:
    """Write until killed."""
    acked = 0  # agents 0..acked-1 are acknowledged
    first_batch = trio.Event()
    async with Store(path) as store:

        async def inserter() -> None:
            nonlocal acked
            while acked < LIMIT:
                rows = [
                    AgentRow(
                        id=agent_id(run, i),
                        kind="crash",
                        created_ms=i,
                        updated_ms=i,
                        secret=b"s" * 72,
                        caps=("kind:crash",),
                    )
                    for i in range(acked, acked + BATCH)
                ]
                await store.insert_agents(rows)
                ack(f"A {acked} {BATCH}")
                acked += BATCH
                first_batch.set()

        async def state_writer(lane: int) -> None:
            versions: dict[int, int] = {}
            await first_batch.wait()
            for turn in range(1, LIMIT):
                # Each lane owns the agents whose index is `lane` modulo STATE_TASKS.
                candidates = range(lane, acked, STATE_TASKS)
                index = candidates[turn % len(candidates)]
                version = versions.get(index, 0)
                new = await store.save_state(
                    agent_id(run, index), state_bytes(run, index, version + 1), version, turn
                )
                versions[index] = new
                ack(f"S {index} {new}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(inserter)
            for lane in range(STATE_TASKS):
                nursery.start_soon(state_writer, lane)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
