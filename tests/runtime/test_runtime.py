"""The agent runtime over a real SQLite store: spawn, activation, lifecycle, quotas, TTL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio

from meshd.runtime.kinds import KindError
from meshd.runtime.lifecycle import LifecycleError, State
from meshd.runtime.quota import QuotaExceeded
from meshd.runtime.runtime import Runtime, RuntimeSettings, UnknownAgent
from meshd.runtime.sdk import AgentError
from meshd.store import Store
from protocol.envelope import Envelope
from protocol.ids import AgentId, SigningKey
from tests.runtime import kinds_for_tests as kinds

NODE_KEY = SigningKey.from_seed(b"N" * 32)
CLIENT = SigningKey.from_seed(b"C" * 32)
REC = "tests.runtime.kinds_for_tests:Recorder"


class Clock:
    """A settable wall clock in ms (time is an argument of the runtime)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now


@asynccontextmanager
async def running(
    path: Path, clock: Clock | None = None, **settings: Any
) -> AsyncIterator[Runtime]:
    kinds.reset()
    async with Store(path / "meshd.db") as store, trio.open_nursery() as nursery:
        runtime = Runtime(
            store,
            NODE_KEY,
            RuntimeSettings(**settings),
            clock=clock or Clock(),
        )
        await nursery.start(runtime.serve)
        try:
            yield runtime
        finally:
            nursery.cancel_scope.cancel()


def message(runtime: Runtime, to: str | AgentId, body: Any, kind: str = "msg") -> Envelope:
    target = to if isinstance(to, AgentId) else AgentId.from_did(to)
    return Envelope.create(CLIENT, target, kind, body, now_ms=runtime.clock())


async def settle(check: Callable[[], bool], limit: float = 5.0) -> None:
    # Polling keeps the tests independent of the runtime's internals; fail_after bounds it.
    with trio.fail_after(limit):
        while not check():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_spawn_creates_dormant_agents(tmp_path: Path) -> None:
    async with running(tmp_path) as rt:
        infos = await rt.spawn("echo", count=250, caps=["translate"])
        assert len(infos) == 250
        assert all(i["state"] == "dormant" for i in infos)
        assert infos[0]["caps"] == ["echo", "translate"]
        assert rt.counts()["dormant"] == 250
        assert rt.counts()["active"] == 0
        listed = await rt.list_agents(limit=10)
        assert len(listed) == 10
        assert rt.hosts(AgentId.from_did(infos[0]["id"]))


async def test_message_activates_and_echo_replies(tmp_path: Path) -> None:
    async with running(tmp_path) as rt:
        (echo,) = await rt.spawn("echo")
        (rec,) = await rt.spawn(REC)
        outcome = await rt.deliver(message(rt, rec["id"], {"ask": echo["id"], "payload": "hi"}))
        assert outcome == "delivered"
        await settle(lambda: any(k == "answer" for _, k, _ in kinds.RECEIVED))
        assert (rec["id"], "answer", "hi") in kinds.RECEIVED
        assert rt.state_of(AgentId.from_did(echo["id"])) is State.ACTIVE
        assert rt.stats.activations == 2


async def test_state_persists_across_eviction_and_restart(tmp_path: Path) -> None:
    async with running(tmp_path) as rt:
        (counter,) = await rt.spawn("counter")
        agent = AgentId.from_did(counter["id"])
        for _ in range(3):
            assert await rt.deliver(message(rt, agent, {"add": 2})) == "delivered"
        await settle(lambda: rt.stats.handled == 3)
        await rt.evict(agent)
        assert rt.state_of(agent) is State.DORMANT
        assert (await rt.describe(agent))["state_version"] >= 1
    async with running(tmp_path) as rt:
        assert rt.state_of(agent) is State.DORMANT
        await rt.deliver(message(rt, agent, {"add": 1}))
        await settle(lambda: rt.stats.handled == 1)
        await rt.evict(agent)
        row = await rt.store.get_agent(agent.raw)
        assert row is not None
        assert b"count" in row.state
        assert cbor2.loads(row.state) == {"count": 7}


async def test_idle_agents_are_evicted(tmp_path: Path) -> None:
    async with running(tmp_path, idle_evict_s=0.05, sweep_interval_s=0.02) as rt:
        (rec,) = await rt.spawn(REC)
        await rt.deliver(message(rt, rec["id"], "x"))
        await settle(lambda: rt.counts()["active"] == 1)
        await settle(lambda: rt.counts()["active"] == 0)
        assert [rec["id"]] == kinds.STOPPED
        assert rt.stats.evictions == 1


async def test_memory_budget_evicts_least_recently_used(tmp_path: Path) -> None:
    async with running(tmp_path, max_active=3, idle_evict_s=3600) as rt:
        infos = await rt.spawn(REC, count=6)
        for info in infos:
            await rt.deliver(message(rt, info["id"], "x"))
        await settle(lambda: len(kinds.RECEIVED) == 6)
        await rt.sweep()
        assert rt.counts()["active"] == 3
        assert set(kinds.STOPPED) == {i["id"] for i in infos[:3]}


async def test_suspend_holds_and_resume_delivers(tmp_path: Path) -> None:
    async with running(tmp_path) as rt:
        (rec,) = await rt.spawn(REC)
        agent = AgentId.from_did(rec["id"])
        await rt.suspend(agent)
        assert rt.state_of(agent) is State.SUSPENDED
        for i in range(3):
            assert await rt.deliver(message(rt, agent, i)) == "queued"
        assert kinds.RECEIVED == []
        with pytest.raises(LifecycleError, match="cannot suspend an agent that is suspended"):
            await rt.suspend(agent)
        assert await rt.resume(agent) == 3
        await settle(lambda: len(kinds.RECEIVED) == 3)
        assert [body for _, _, body in kinds.RECEIVED] == [0, 1, 2]
        with pytest.raises(LifecycleError, match="cannot resume"):
            await rt.resume(agent)


async def test_delete_tombstones(tmp_path: Path) -> None:
    async with running(tmp_path) as rt:
        (rec,) = await rt.spawn(REC)
        agent = AgentId.from_did(rec["id"])
        await rt.deliver(message(rt, agent, "x"))
        await settle(lambda: len(kinds.RECEIVED) == 1)
        await rt.delete(agent)
        assert not rt.hosts(agent)
        assert await rt.deliver(message(rt, agent, "y")) == "not_here"
        with pytest.raises(UnknownAgent):
            await rt.delete(agent)
        row = await rt.store.get_agent(agent.raw)
        assert row is not None
        assert row.lifecycle == "gone"
        assert not row.secret


async def test_done_deletes_the_agent(tmp_path: Path) -> None:
    async with running(tmp_path) as rt:
        (rec,) = await rt.spawn(REC)
        agent = AgentId.from_did(rec["id"])
        await rt.deliver(message(rt, agent, {"finish": True}))
        await settle(lambda: not rt.hosts(agent))
        assert rt.stats.deleted == 1


async def test_ttl_deletes_the_agent(tmp_path: Path) -> None:
    clock = Clock()
    async with running(tmp_path, clock=clock, sweep_interval_s=0.02) as rt:
        (short,) = await rt.spawn("echo", ttl_s=5)
        (long,) = await rt.spawn("echo", ttl_s=500)
        clock.now += 6_000
        await settle(lambda: not rt.hosts(AgentId.from_did(short["id"])))
        assert rt.hosts(AgentId.from_did(long["id"]))
        assert rt.stats.expired == 1


async def test_quotas(tmp_path: Path) -> None:
    async with running(tmp_path, max_agents=10, spawn_rate=5, spawn_burst=8) as rt:
        await rt.spawn("echo", count=8)
        with pytest.raises(QuotaExceeded) as info:
            await rt.spawn("echo", count=1)
        assert info.value.reason == "spawn_rate"
        with pytest.raises(QuotaExceeded) as info:
            await rt.spawn("echo", count=3)
        assert info.value.reason == "max_agents"
        assert rt.stats.quota_refusals == {"spawn_rate": 1, "max_agents": 1}


async def test_spawn_budget_of_parent_agents(tmp_path: Path) -> None:
    async with running(tmp_path, default_budget=4) as rt:
        (parent,) = await rt.spawn("tests.runtime.kinds_for_tests:Spawner")
        agent = AgentId.from_did(parent["id"])
        await rt.deliver(message(rt, agent, {"n": 2, "budget": 0}))
        await settle(lambda: rt.counts()["total"] == 3)
        assert (await rt.describe(agent))["budget"] == 2
        await rt.deliver(message(rt, agent, {"n": 3, "budget": 0}))
        await settle(lambda: rt.stats.quota_refusals.get("budget", 0) == 1)
        assert rt.counts()["total"] == 5  # two more fitted, the third did not
        children = await rt.list_agents(kind="echo")
        assert {c["parent"] for c in children} == {parent["id"]}


async def test_handler_errors_are_contained(tmp_path: Path) -> None:
    async with running(tmp_path) as rt:
        (bad,) = await rt.spawn("tests.runtime.kinds_for_tests:Crasher")
        for _ in range(3):
            await rt.deliver(message(rt, bad["id"], "x"))
        await settle(lambda: rt.stats.handler_errors == 3)
        (echo,) = await rt.spawn("echo")
        assert await rt.deliver(message(rt, echo["id"], "x")) == "delivered"


async def test_external_agents_queue_their_inbox(tmp_path: Path) -> None:
    async with running(tmp_path) as rt:
        (ext,) = await rt.spawn("external")
        agent = AgentId.from_did(ext["id"])
        assert rt.is_external(agent)
        assert await rt.deliver(message(rt, agent, {"q": 1})) == "queued"
        assert await rt.store.inbox_count(agent.raw) == 1
        key = await rt.signing_key(agent)
        assert key.agent_id == agent


async def test_bad_arguments_are_clear(tmp_path: Path) -> None:
    async with running(tmp_path) as rt:
        with pytest.raises(KindError, match="unknown kind"):
            await rt.spawn("nope")
        with pytest.raises(KindError, match="cannot import"):
            await rt.spawn("no.such.module:Agent")
        with pytest.raises(AgentError, match="--count 1"):
            await rt.spawn("echo", count=2, name="x")
        with pytest.raises(AgentError, match="ttl"):
            await rt.spawn("echo", ttl_s=-1)
        with pytest.raises(AgentError, match="CBOR"):
            await rt.spawn("echo", state={"x": object()})
        (one,) = await rt.spawn("echo", name="solo")
        assert (await rt.find_by_name("solo")).did == one["id"]
        with pytest.raises(UnknownAgent):
            await rt.find_by_name("nobody")


async def test_send_as_the_operator_and_wait_for_the_reply(tmp_path: Path) -> None:
    async with running(tmp_path) as rt:
        (echo,) = await rt.spawn("echo")
        operator = await rt.operator()
        assert await rt.operator() == operator  # one operator per node
        result = await rt.send_as(operator, AgentId.from_did(echo["id"]), {"hi": 1}, wait=True)
        assert result["outcome"] == "delivered"
        assert result["reply"]["body"] == {"hi": 1}
        assert result["reply"]["from"] == echo["id"]
        (rec,) = await rt.spawn(REC)
        quiet = await rt.send_as(operator, AgentId.from_did(rec["id"]), 1, wait=True, timeout=0.2)
        assert quiet["outcome"] == "timeout"
        gone = await rt.send_as(operator, SigningKey.generate().agent_id, 1)
        assert gone["outcome"] == "not_here"


async def test_busiest_lists_active_agents_by_messages_handled(tmp_path: Path) -> None:
    async with running(tmp_path) as rt:
        operator = await rt.operator()
        ids = [AgentId.from_did(info["id"]) for info in await rt.spawn("counter", count=3)]
        for agent, times in zip(ids, (1, 3, 2), strict=True):
            for _ in range(times):
                await rt.send_as(operator, agent, {"add": 1}, kind="req", wait=True)
        busiest = rt.busiest(limit=2)
        assert [(a["id"], a["handled"]) for a in busiest] == [(ids[1].did, 3), (ids[2].did, 2)]
        assert busiest[0]["kind"] == "counter"


async def test_concurrent_first_sends_share_one_operator(tmp_path: Path) -> None:
    # Many API requests arriving at once on a fresh node all ask for the operator first.
    async with running(tmp_path) as rt:
        found: list[AgentId] = []

        async def ask() -> None:
            found.append(await rt.operator())

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(ask)
        assert len(set(found)) == 1
        assert (await rt.find_by_name("operator")) == found[0]


async def test_at_least_once_is_handled_once_and_answered_after_commit(tmp_path: Path) -> None:
    async with running(tmp_path) as rt:
        (counter,) = await rt.spawn("counter")
        agent = AgentId.from_did(counter["id"])
        envelope = message(rt, agent, {"add": 5})
        # three copies at once (a sender retrying), and one more after the first finished
        outcomes: list[str] = []

        async def deliver_copy() -> None:
            outcomes.append(await rt.deliver(envelope, reliable=True))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(deliver_copy)
        outcomes.append(await rt.deliver(envelope, reliable=True))
        assert outcomes == ["delivered"] * 4
        assert rt.stats.handled == 1
        assert rt.stats.duplicates >= 1
        row = await rt.store.get_agent(agent.raw)
        assert row is not None
        assert cbor2.loads(row.state) == {"count": 5}  # committed before the answer
    async with running(tmp_path) as rt:  # and after a restart, still a duplicate
        assert await rt.deliver(envelope, reliable=True) == "delivered"
        assert rt.stats.handled == 0


async def test_at_least_once_to_a_suspended_agent_is_queued_once(tmp_path: Path) -> None:
    async with running(tmp_path) as rt:
        (rec,) = await rt.spawn(REC)
        agent = AgentId.from_did(rec["id"])
        await rt.suspend(agent)
        envelope = message(rt, agent, "once")
        assert await rt.deliver(envelope, reliable=True) == "queued"
        # the retry is recognised: accepted (already done), not queued a second time
        assert await rt.deliver(envelope, reliable=True) == "delivered"
        assert await rt.store.inbox_count(agent.raw) == 1
        assert await rt.resume(agent) == 1
        await settle(lambda: len(kinds.RECEIVED) == 1)


async def test_lifecycle_changes_wait_for_the_running_handler(tmp_path: Path) -> None:
    async with running(tmp_path) as rt:
        slow = "tests.runtime.kinds_for_tests:Slow"
        (a,) = await rt.spawn(slow)
        (b,) = await rt.spawn(slow)
        agent_a, agent_b = AgentId.from_did(a["id"]), AgentId.from_did(b["id"])
        await rt.deliver(message(rt, agent_a, 1))
        await rt.deliver(message(rt, agent_a, 2))  # still queued when suspend comes
        await rt.deliver(message(rt, agent_b, 1))
        await trio.sleep(0.05)  # both handlers are now mid-way
        await rt.suspend(agent_a)  # waits for the first handler, keeps the second message
        await rt.delete(agent_b)
        row = await rt.store.get_agent(agent_a.raw)
        assert row is not None
        assert cbor2.loads(row.state) == {"n": 1}
        assert await rt.store.inbox_count(agent_a.raw) == 1
        assert not rt.hosts(agent_b)
        assert rt.stats.handler_errors == 0


async def test_deliver_nowait_takes_running_agents_and_leaves_the_rest_to_deliver(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, inbox_limit=2) as rt:
        (rec,) = await rt.spawn(REC)
        (ext,) = await rt.spawn("external")
        running_agent, external = AgentId.from_did(rec["id"]), AgentId.from_did(ext["id"])
        # Dormant: activation needs the store, so the caller must await `deliver`.
        assert rt.deliver_nowait(message(rt, running_agent, 0)) is None
        assert kinds.RECEIVED == []
        assert await rt.deliver(message(rt, running_agent, 1)) == "delivered"
        await settle(lambda: len(kinds.RECEIVED) == 1)
        assert rt.state_of(running_agent) is State.ACTIVE
        # Running: taken at once, and handled in order.
        assert rt.deliver_nowait(message(rt, running_agent, 2)) == "delivered"
        assert rt.deliver_nowait(message(rt, running_agent, 3)) == "delivered"
        # The inbox limit holds on this path too (the handler has not run yet).
        assert rt.deliver_nowait(message(rt, running_agent, 4)) == "rejected:rate_limited"
        await settle(lambda: len(kinds.RECEIVED) == 3)
        assert [body for _, _, body in kinds.RECEIVED] == [1, 2, 3]
        # Replies, external and suspended agents and strangers are `deliver`'s to answer.
        reply = Envelope.create(
            CLIENT, running_agent, "msg", 5, now_ms=rt.clock(), reply_to=b"r" * 16
        )
        assert rt.deliver_nowait(reply) is None
        assert rt.deliver_nowait(message(rt, external, 6)) is None
        stranger = SigningKey.from_seed(b"S" * 32).agent_id
        assert rt.deliver_nowait(message(rt, stranger, 7)) is None
        await rt.suspend(running_agent)
        assert rt.deliver_nowait(message(rt, running_agent, 8)) is None
        assert await rt.deliver(message(rt, running_agent, 8)) == "queued"
        assert len(kinds.RECEIVED) == 3
