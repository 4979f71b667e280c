"""The scenario driver: plays a plan against a backend (in-process nodes or daemons).

The driver is the same for both modes, so that their delivery outcomes can be compared:
it starts the nodes, spawns the agents, waits for the mesh to settle, then plays the
plan's events at their times (sends run concurrently, at most `MAX_IN_FLIGHT` at once),
waits for at-least-once messages to land (`drain_s`), and reads every counter's final
count on its own node. Time is `trio.current_time()` throughout, so a mock clock drives it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from simnet.scenario import Event, Scenario

__all__ = ["Backend", "Results", "Sample", "drive"]

MAX_IN_FLIGHT = 256
_DRAIN_POLL_S = 1.0
OK_OUTCOMES = ("delivered", "queued")


class Backend(Protocol):
    """What the driver needs from a way of running nodes."""

    mode: str

    async def start_node(self, node: int) -> None:
        """Start `node` (first start, join, or restart with its data)."""

    async def stop_node(self, node: int, *, crash: bool) -> None:
        """Stop `node`: cleanly (leave) or as a crash."""

    def is_up(self, node: int) -> bool:
        """Whether `node` runs now."""

    async def spawn(self, node: int, kind: str, count: int, caps: tuple[str, ...]) -> list[str]:
        """Spawn agents on `node`; return their ids (did:key) in order."""

    async def subscribe(self, node: int, agent: str, topic: str) -> None:
        """Subscribe a hosted agent to a topic."""

    async def send(
        self,
        node: int,
        to: str,
        body: Any,
        *,
        kind: str,
        reliable: bool,
        wait: bool,
        timeout: float,
    ) -> dict[str, Any]:
        """Send from `node`'s operator; the API's answer (`outcome`, maybe `reply`)."""

    async def publish(self, node: int, topic: str, body: Any) -> dict[str, Any]:
        """Publish on a topic from `node`'s operator."""

    async def network_fault(self, event: Event) -> str:
        """Apply a partition, heal or link change; return "" or why it was skipped."""

    async def status(self, node: int) -> dict[str, Any]:
        """The node's status document (as `GET /v1/status`)."""


@dataclass(slots=True)
class Sample:
    """What happened to one planned send."""

    at_s: float
    kind: str
    node: int
    target: tuple[int, int] | None
    reliable: bool
    outcome: str
    latency_s: float | None = None


@dataclass(slots=True)
class Results:
    """Everything a run measured, before the report turns it into figures."""

    mode: str
    samples: list[Sample] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[int, dict[str, Any]] = field(default_factory=dict)
    topic_received: int = 0
    topic_expected: int = 0
    drained_after_s: float | None = None
    settle_s: float = 0.0
    agents_total: int = 0
    notes: list[str] = field(default_factory=list)
    transport: dict[str, int] = field(default_factory=dict)  # in-process: the link counters
    swarm: dict[str, Any] = field(default_factory=dict)  # the [swarm] workload's figures


async def drive(
    scenario: Scenario,
    events: list[Event],
    backend: Backend,
    *,
    progress: Callable[[float, str], None] | None = None,
) -> Results:
    """Run the whole scenario on `backend`; return what it measured."""
    results = Results(mode=backend.mode)
    note = progress or (lambda fraction, what: None)
    late = set(scenario.late_nodes)
    t0 = trio.current_time()
    for node in range(scenario.nodes):
        if node not in late:
            await backend.start_node(node)
    ids: dict[int, list[str]] = {}
    subscribers: dict[int, list[str]] = {}

    async def populate(node: int) -> None:
        ids[node] = []
        for group in scenario.agents:
            if group.nodes is None or node in group.nodes:
                ids[node] += await backend.spawn(node, group.kind, group.count, group.caps)
        subscribers[node] = []
        if scenario.workload.topic_subscribers:
            subscribers[node] = await backend.spawn(
                node, "counter", scenario.workload.topic_subscribers, ()
            )
            for agent in subscribers[node]:
                await backend.subscribe(node, agent, scenario.workload.topic)
        results.agents_total += len(ids[node]) + len(subscribers[node])

    for node in range(scenario.nodes):
        if node not in late:
            await populate(node)
    await trio.sleep(scenario.warmup_s)
    results.settle_s = trio.current_time() - t0
    note(0.0, "running")

    start = trio.current_time()
    limiter = trio.CapacityLimiter(MAX_IN_FLIGHT)
    publishes = 0
    async with trio.open_nursery() as sends:
        for event in events:
            await trio.sleep_until(start + event.at_s)
            note(event.at_s / scenario.duration_s, event.kind)
            if event.fault is not None:
                record = await _fault(backend, event, late)
                if event.kind == "join":
                    for node in event.fault.nodes:
                        if node not in ids:
                            await populate(node)
                results.faults.append(record)
                continue
            if not backend.is_up(event.node):
                results.samples.append(
                    Sample(event.at_s, event.kind, event.node, event.target, event.reliable, "down")
                )
                continue
            if event.kind == "publish":
                publishes += 1
            token = object()  # the limiter's borrower: unique per send
            await limiter.acquire_on_behalf_of(token)
            sends.start_soon(_send, backend, scenario, event, ids, results, limiter, token)
        await trio.sleep_until(start + scenario.duration_s)
        note(1.0, "draining")
    # Each subscriber sees each publication once (our own copies are handed over locally).
    results.topic_expected = publishes * sum(len(s) for s in subscribers.values())
    await _drain(scenario, backend, ids, subscribers, results, start)
    for node in range(scenario.nodes):
        if backend.is_up(node):
            results.statuses[node] = await backend.status(node)
    return results


async def _fault(backend: Backend, event: Event, late: set[int]) -> dict[str, Any]:
    fault = event.fault
    assert fault is not None
    record: dict[str, Any] = {"at_s": event.at_s, "kind": event.kind, **event.to_json()["fault"]}
    skipped = ""
    if event.kind in ("crash", "leave"):
        for node in fault.nodes:
            if backend.is_up(node):
                await backend.stop_node(node, crash=event.kind == "crash")
    elif event.kind in ("restart", "join"):
        for node in fault.nodes:
            if not backend.is_up(node):
                await backend.start_node(node)
                late.discard(node)
    else:
        skipped = await backend.network_fault(event)
    if skipped:
        record["skipped"] = skipped
    return record


async def _send(
    backend: Backend,
    scenario: Scenario,
    event: Event,
    ids: dict[int, list[str]],
    results: Results,
    limiter: trio.CapacityLimiter,
    token: object,
) -> None:
    timeout = scenario.workload.send_timeout_s
    began = trio.current_time()
    outcome = "timeout"
    try:
        with trio.move_on_after(timeout + 1.0):
            if event.kind == "publish":
                answer = await backend.publish(event.node, scenario.workload.topic, {"add": 1})
            else:
                assert event.target is not None
                node, slot = event.target
                to = ids.get(node, [])
                if slot >= len(to):
                    outcome = "no_target"  # its node has not joined yet
                    return
                request = event.kind == "request"
                answer = await backend.send(
                    event.node,
                    to[slot],
                    {"add": 1} if not request else {"ping": event.at_s},
                    kind="req" if request else "msg",
                    reliable=event.reliable,
                    wait=request,
                    timeout=timeout,
                )
            outcome = str(answer.get("outcome", "error"))
    except Exception as exc:  # a failed send is a measured outcome, not a crash of the run
        outcome = f"error:{type(exc).__name__}"
    finally:
        latency = trio.current_time() - began
        ok = outcome in OK_OUTCOMES or outcome == "published"
        results.samples.append(
            Sample(
                event.at_s,
                event.kind,
                event.node,
                event.target,
                event.reliable,
                outcome,
                latency if ok else None,
            )
        )
        limiter.release_on_behalf_of(token)


async def _count(backend: Backend, node: int, agent: str) -> int | None:
    """A counter's count, asked on its own node (`add: 0` leaves it unchanged)."""
    if not backend.is_up(node):
        return None
    try:
        answer = await backend.send(
            node, agent, {"add": 0}, kind="req", reliable=False, wait=True, timeout=5.0
        )
    except Exception:  # a node that cannot answer has no count to report
        return None
    reply = answer.get("reply") or {}
    body = reply.get("body") if isinstance(reply, dict) else None
    if isinstance(body, dict) and isinstance(body.get("count"), int):
        return int(body["count"])
    return None


async def _drain(
    scenario: Scenario,
    backend: Backend,
    ids: dict[int, list[str]],
    subscribers: dict[int, list[str]],
    results: Results,
    start: float,
) -> None:
    """Wait (bounded) until every counter holds what was sent to it; record the counts."""
    expected: dict[tuple[int, int], dict[str, Any]] = {}
    for s in results.samples:
        if s.kind != "direct" or s.target is None:
            continue
        entry = expected.setdefault(
            s.target, {"reliable": s.reliable, "accepted": 0, "uncertain": 0, "sent": 0}
        )
        entry["sent"] += 1
        if s.outcome in OK_OUTCOMES:
            entry["accepted"] += 1
        elif s.outcome != "down" and s.outcome != "no_target":
            entry["uncertain"] += 1  # timed out or failed: it may still have arrived
    deadline = trio.current_time() + scenario.drain_s
    polls = max(1, math.ceil(scenario.drain_s / _DRAIN_POLL_S))
    for _ in range(polls + 1):
        pending = False
        for (node, slot), entry in expected.items():
            count = await _count(backend, node, ids[node][slot])
            entry["count"] = count
            # A node that left for good has no count to wait for (reported as unverified).
            waiting = count is None and backend.is_up(node)
            short = count is not None and count < entry["accepted"]
            if entry["reliable"] and (waiting or short):
                pending = True
        if not pending:
            results.drained_after_s = trio.current_time() - start - scenario.duration_s
            break
        if trio.current_time() >= deadline:
            break
        await trio.sleep(_DRAIN_POLL_S)
    for (node, slot), entry in sorted(expected.items()):
        results.counts[f"{node}/{slot}"] = entry
    received = 0
    for node, agents in subscribers.items():
        for agent in agents:
            received += await _count(backend, node, agent) or 0
    results.topic_received = received
