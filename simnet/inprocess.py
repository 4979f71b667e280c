"""In-process mode: N real meshd nodes in one trio run over the in-memory transport.

Each node is what `meshd run` builds (`meshd.build.build_node`) over a `Libp2pNetwork`
whose transport is `meshd.net.memory.MemoryTransport`; node `i` listens on
`/memory/<i+1>` and keeps its data directory for the whole run, so a restart finds its
agents, outbox and dedupe table again. Every node lives in its own task (its own nursery
tree) under the backend's nursery, with its own cancel scope: a crash cancels it without
the clean shutdown and resets its connections; a leave is the daemon's clean stop.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel
import trio.testing

from meshd.build import build_node
from meshd.clock import WallClock, wall_ms
from meshd.config import ConfigError, load_config
from meshd.guard import PeerGuard
from meshd.net.addrs import BootstrapAddr
from meshd.net.host import HostLimits
from meshd.net.libp2p_net import Libp2pNetwork
from meshd.net.memory import Links, LinkSpec, MemoryTransport, memory_addr
from meshd.node import Node
from protocol.ids import AgentId
from simnet.scenario import Event, Scenario, ScenarioError

__all__ = ["InProcessBackend", "in_process"]

log = logging.getLogger("simnet")

# Simulated nodes start faster than daemons: no need to spread joins over seconds.
_SIM_DEFAULTS: dict[str, Any] = {"dht.join_jitter_s": 0.5}
_STOP_TIMEOUT_S = 10.0
_BOOTSTRAP_PEERS = 3


class _SimNode:
    """One node's identity, data directory and (while it runs) its `Node`."""

    def __init__(self, index: int, seed: bytes, directory: Path) -> None:
        self.index = index
        self.number = index + 1
        self.seed = seed
        self.directory = directory
        self.node: Node | None = None
        self.scope: trio.CancelScope | None = None
        self.done = trio.Event()
        self.operator: AgentId | None = None
        self.peer_id = ""


class InProcessBackend:
    """Runs scenario nodes as tasks of one trio run; see the module docstring."""

    mode = "in-process"

    def __init__(
        self, scenario: Scenario, root: Path, nursery: trio.Nursery, links: Links, seed: int
    ) -> None:
        self._scenario = scenario
        self._nursery = nursery
        self.links = links
        rng = random.Random(seed ^ 0x5EED)  # node keys: same seed, same peer ids
        self._join_rng = random.Random(seed ^ 0xB007)
        self._nodes = [
            _SimNode(i, rng.randbytes(32), root / f"node{i}") for i in range(scenario.nodes)
        ]
        flags = {**_SIM_DEFAULTS, **scenario.node_config}
        for sim in self._nodes:
            sim.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._config = load_config(self._nodes[0].directory, env={}, flags=flags)
        except ConfigError as exc:
            raise ScenarioError(f"node_config: {exc}") from exc
        _apply_links(scenario, links)
        self.wall_clock = _wall_clock()

    def _bootstrap(self, index: int) -> tuple[BootstrapAddr, ...]:
        # Join through a few running nodes drawn from the seeded rng, not all through node 0:
        # a single seed refuses connections past its maximum (64) in a large mesh.
        running = [
            sim
            for sim in self._nodes
            if sim.index != index and sim.node is not None and sim.peer_id
        ]
        chosen = self._join_rng.sample(running, min(_BOOTSTRAP_PEERS, len(running)))
        return tuple(
            BootstrapAddr(f"{memory_addr(sim.number)}/p2p/{sim.peer_id}", sim.peer_id)
            for sim in chosen
        )

    async def start_node(self, node: int) -> None:
        """Start (or restart with its data) node `node`; return once it listens."""
        sim = self._nodes[node]
        sim.done = trio.Event()
        await self._nursery.start(self._life, sim)

    async def _life(self, sim: _SimNode, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        guard = PeerGuard(self._config.limits)
        connections = self._config.connections
        network = Libp2pNetwork(
            sim.seed,
            listen=[memory_addr(sim.number)],
            bootstrap=self._bootstrap(sim.index),
            limits=HostLimits(
                low_watermark=connections.low_watermark,
                high_watermark=connections.high_watermark,
                max_connections=connections.max,
                dial_timeout_s=connections.dial_timeout_s,
                auto_connect_interval_s=connections.auto_connect_interval_s,
            ),
            discovery=self._config.dht,
            guard=guard,
            transport=MemoryTransport(self.links, sim.number),
            wall_clock=self.wall_clock,
        )
        sim.peer_id = network.peer_id
        try:
            with trio.CancelScope() as scope:
                sim.scope = scope
                async with build_node(
                    network, sim.directory, self._config, sim.seed, guard, clock=self.wall_clock
                ) as n:
                    sim.node = n
                    await n.serve(task_status=task_status)
        finally:
            sim.node = None
            sim.scope = None
            sim.operator = None
            sim.done.set()

    async def stop_node(self, node: int, *, crash: bool) -> None:
        """Crash (cancel, connections reset) or leave (the clean shutdown) `node`."""
        sim = self._nodes[node]
        if sim.node is None or sim.scope is None:
            return
        if crash:
            self.links.reset_node(sim.number)
            sim.scope.cancel()
        else:
            sim.node.request_stop("simnet: leave")
        with trio.move_on_after(_STOP_TIMEOUT_S):
            await sim.done.wait()
        if not sim.done.is_set():  # a clean stop that hangs becomes a crash
            sim.scope.cancel()
            await sim.done.wait()

    def is_up(self, node: int) -> bool:
        """Whether node `node` runs."""
        return self._nodes[node].node is not None

    def node(self, node: int) -> Node:
        """The running `Node` of `node` (for tests and the benchmark)."""
        running = self._nodes[node].node
        if running is None:
            raise RuntimeError(f"node {node} is down")
        return running

    async def _operator(self, node: int) -> AgentId:
        sim = self._nodes[node]
        if sim.operator is None:
            sim.operator = await self.node(node).runtime.operator()
        return sim.operator

    async def spawn(self, node: int, kind: str, count: int, caps: tuple[str, ...]) -> list[str]:
        """Spawn `count` agents on `node`."""
        infos = await self.node(node).runtime.spawn(kind, count=count, caps=caps)
        return [str(info["id"]) for info in infos]

    async def subscribe(self, node: int, agent: str, topic: str) -> None:
        """Subscribe a hosted agent to `topic` (durably, as the API does)."""
        await self.node(node).runtime.messenger.subscribe(topic, AgentId.from_did(agent))

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
        """Send as `node`'s operator (what `POST /v1/send` does)."""
        runtime = self.node(node).runtime
        sender = await self._operator(node)
        return await runtime.send_as(
            sender,
            AgentId.from_did(to),
            body,
            kind=kind,
            reliable=reliable,
            wait=wait,
            timeout=timeout,
        )

    async def publish(self, node: int, topic: str, body: Any) -> dict[str, Any]:
        """Publish on `topic` as `node`'s operator."""
        sender = await self._operator(node)
        return await self.node(node).runtime.send_as(sender, topic, body)

    async def network_fault(self, event: Event) -> str:
        """Partition, heal or change the links."""
        fault = event.fault
        assert fault is not None
        if fault.kind == "partition":
            self.links.partition([[n + 1 for n in group] for group in fault.groups])
        elif fault.kind == "heal":
            self.links.heal()
        elif fault.kind == "link":
            changes: dict[str, float] = {}
            if fault.latency_ms is not None:
                changes["latency_s"] = fault.latency_ms / 1000
            if fault.jitter_ms is not None:
                changes["jitter_s"] = fault.jitter_ms / 1000
            if fault.loss is not None:
                changes["loss"] = fault.loss
            if fault.nodes:
                for a in fault.nodes:  # the links of these nodes to everyone
                    for b in range(self._scenario.nodes):
                        if a != b:
                            base = self.links.spec(a + 1, b + 1)
                            self.links.set_link(a + 1, b + 1, _changed(base, changes))
            else:
                self.links.update_default(**changes)
        return ""

    async def status(self, node: int) -> dict[str, Any]:
        """`Node.status()` of a running node."""
        return self.node(node).status()

    async def stop_all(self) -> None:
        """Stop every running node cleanly (in parallel)."""
        async with trio.open_nursery() as nursery:
            for sim in self._nodes:
                if sim.node is not None:
                    nursery.start_soon(lambda i=sim.index: self.stop_node(i, crash=False))


def _wall_clock() -> WallClock:
    """The nodes' wall clock: the real one, or under virtual time one that moves with it.

    Envelopes expire 60 s of wall-clock time after they were sent. A busy mesh runs slower
    than real time (a 50-node mesh under load at 17 real seconds per simulated second), so
    on the real clock envelopes expired after 3.5 simulated seconds in flight, and records
    and TTLs drifted the same way: a measurement artefact, not the mesh's behaviour.
    """
    if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        return wall_ms
    epoch_ms = wall_ms() - int(trio.current_time() * 1000)
    return lambda: epoch_ms + int(trio.current_time() * 1000)


def _changed(base: LinkSpec, changes: dict[str, float]) -> LinkSpec:
    fields = {
        "latency_s": base.latency_s,
        "jitter_s": base.jitter_s,
        "loss": base.loss,
        "bandwidth_bps": base.bandwidth_bps,
    }
    fields.update(changes)
    return LinkSpec(**fields)  # type: ignore[arg-type]


def _apply_links(scenario: Scenario, links: Links) -> None:
    model = scenario.links
    links.default = LinkSpec(
        latency_s=model.latency_ms / 1000,
        jitter_s=model.jitter_ms / 1000,
        loss=model.loss,
        bandwidth_bps=None if model.bandwidth_kbps is None else model.bandwidth_kbps * 125,
    )
    for region, members in model.regions.items():
        for node in members:
            links.set_region(node + 1, region)
    for (a, b), ms in model.region_latency_ms.items():
        links.set_region_link(a, b, _changed(links.default, {"latency_s": ms / 1000}))


@asynccontextmanager
async def in_process(scenario: Scenario, root: Path, seed: int) -> AsyncIterator[InProcessBackend]:
    """A backend whose nodes run under this context's nursery; all stopped on exit."""
    links = Links(seed=seed)
    async with trio.open_nursery() as nursery:
        backend = InProcessBackend(scenario, root, nursery, links, seed)
        try:
            yield backend
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(_STOP_TIMEOUT_S * 2):
                await backend.stop_all()
            nursery.cancel_scope.cancel()
