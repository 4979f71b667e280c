"""The task board over the in-process bus: worker agents finish N tasks once; a dead claimant's
task is released."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from meshd.clock import wall_ms
from meshd.runtime.runtime import Runtime
from meshd.swarm_settings import SwarmSettings
from meshd.swarms import SwarmError, Swarms
from protocol.envelope import Envelope
from protocol.ids import AgentId, SigningKey
from tests.swarms import kinds
from tests.swarms.test_swarms_service import Bus, spawn, swarm_node, until

N_TASKS = 24
# A lagging bus delays heartbeats too: a longer liveness window (10 misses of 50 ms) keeps a
# member from looking dead, and its claim from being released, while it works.
PATIENT = SwarmSettings(heartbeat_s=0.05, misses=10)


async def tell(runtime: Runtime, agent: AgentId, body: Any) -> None:
    envelope = Envelope.create(SigningKey(os.urandom(32)), agent, "msg", body, now_ms=wall_ms())
    assert await runtime.deliver(envelope, to=agent) == "delivered"


def board(sw: Swarms) -> list[tuple[str, str]]:
    return [(t["id"], t["state"]) for t in sw.shared.tasks("team")]


async def test_workers_finish_every_task_once(tmp_path: Path) -> None:
    kinds.RAN.clear()
    bus = Bus()
    bus.latency_s = 0.02  # deliveries lag, so concurrent claims really race
    async with (
        swarm_node(bus, tmp_path / "a.db", os.urandom(32), PATIENT) as (rt_a, sw_a, _),
        swarm_node(bus, tmp_path / "b.db", os.urandom(32), PATIENT) as (rt_b, sw_b, _),
        swarm_node(bus, tmp_path / "c.db", os.urandom(32), PATIENT) as (rt_c, sw_c, _),
    ):
        nodes = [(rt_a, sw_a), (rt_b, sw_b), (rt_c, sw_c)]
        for _, sw in nodes:
            await sw.create("team")
        workers: list[tuple[Runtime, AgentId]] = []
        for rt, _ in nodes:
            for _ in range(2):
                (info,) = await rt.spawn("tests.swarms.kinds:Worker")
                worker = AgentId.from_did(info["id"])
                await tell(rt, worker, {"join": "team"})
                workers.append((rt, worker))
        await until(
            lambda: all(len(sw.members("team")) == len(workers) for _, sw in nodes),
            "every node seeing every worker",
        )
        for i in range(N_TASKS):
            await sw_a.shared.add_task("team", {"n": i}, None)
        await until(lambda: len(board(sw_c)) == N_TASKS, "the board on every node")
        start = trio.current_time()
        for rt, worker in workers:
            await tell(rt, worker, {"work": "team", "for_s": 20})
        await until(
            lambda: all([s for _, s in board(sw)] == ["done"] * N_TASKS for _, sw in nodes),
            "every task done on every node",
        )
        print(f"{N_TASKS} tasks done by 6 workers in {trio.current_time() - start:.2f} s")
        runs = Counter(task for task, _ in kinds.RAN)
        assert len(runs) == N_TASKS
        assert max(runs.values()) == 1, runs.most_common(3)
        ran_keys = [k for k in sw_b.shared.state("team") if k.startswith("ran/")]
        await until(lambda: len([k for k in sw_b.shared.state("team")]) == N_TASKS, "records")
        assert len({k.split("/")[1] for k in ran_keys}) == len(ran_keys)
        shared = sw_c.show("team")["shared"]
        assert shared["tasks"] == {"open": 0, "claimed": 0, "done": N_TASKS}
        assert shared["keys"] == N_TASKS  # the workers' run records
        done_by = {t["done"]["agent"] for t in sw_c.shared.tasks("team")}
        assert len(done_by) > 1  # the work was shared
        assert {t["done"]["result"]["spec"]["n"] for t in sw_c.shared.tasks("team")} == set(
            range(N_TASKS)
        )


async def test_a_dead_claimants_task_is_released(tmp_path: Path) -> None:
    bus = Bus()
    async with (
        swarm_node(bus, tmp_path / "a.db", os.urandom(32)) as (rt_a, sw_a, _),
        trio.open_nursery() as crash_scope,
    ):
        got: dict[str, Any] = {}

        async def run_c(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            async with swarm_node(bus, tmp_path / "c.db", os.urandom(32)) as (rt_c, sw_c, _):
                got["c"] = (rt_c, sw_c)
                task_status.started()
                await trio.sleep_forever()

        await crash_scope.start(run_c)
        rt_c, sw_c = got["c"]
        mine, theirs = await spawn(rt_a), await spawn(rt_c)
        await sw_a.join("team", mine)
        await sw_c.join("team", theirs)
        await until(lambda: len(sw_a.members("team")) == 2, "both members")
        task = await sw_a.shared.add_task("team", "the job", mine)
        await until(lambda: len(sw_c.shared.tasks("team")) == 1, "c seeing the task")
        assert await sw_c.shared.claim("team", task, theirs, sw_c.settle_s)
        await until(
            lambda: sw_a.shared.tasks("team")[0]["claimant"] == theirs.did, "a seeing the claim"
        )
        # A claimed task is not claimed again while its claimant lives.
        assert not await sw_a.shared.claim("team", task, mine, sw_a.settle_s)
        crash_scope.cancel_scope.cancel()  # C dies: its claim no longer counts
        await until(lambda: sw_a.shared.tasks("team")[0]["state"] == "open", "the release")
        assert await sw_a.shared.claim("team", task, mine, sw_a.settle_s)
        assert await sw_a.shared.complete("team", task, mine, 42)
        assert not await sw_a.shared.complete("team", task, mine, 43)
        (done,) = sw_a.shared.tasks("team")
        assert done["state"] == "done"
        assert done["done"]["result"] == 42
        assert done["claims"] == 2
        with pytest.raises(SwarmError) as info:
            await sw_a.shared.claim("team", "nope", mine, 0)
        assert info.value.code == "unknown_task"
