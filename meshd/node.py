"""The node: composes the network and the control API in one nursery and owns shutdown.

`Node` depends on the network only through `meshd.net.types.Network`, so tests and
simnet can run it over another network. It is also the control API's `NodeView`: the
API asks it for `identity()`, `peers()` and `status()`.

Lifecycle: `serve()` starts the network (which listens and joins the mesh), then the
API, then reports `started()`. `request_stop()` (from a signal handler) makes `serve()`
close every connection, bounded in time, and cancel its nursery; nothing outlives it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from meshd import __version__
from meshd.logs import LogCounters, log_event
from meshd.net.types import (
    BootstrapDone,
    Listening,
    NetEvent,
    Network,
    PeerConnected,
    PeerDisconnected,
    RoutingTableChanged,
)
from meshd.runtime.runtime import Runtime

if TYPE_CHECKING:
    # trio 0.35 ships TaskStatus, but libp2p pulls in trio-typing whose trio-stubs (which
    # mypy prefers) lack it; trio_typing.TaskStatus is the same type for both.
    from trio_typing import TaskStatus

    from meshd.delivery import Delivery
    from meshd.metrics import NodeMetrics
    from meshd.migration import Migrator
    from meshd.publisher import Publisher
    from meshd.summaries import Summaries
    from meshd.swarms import Swarms
    from meshd.telemetry import Telemetry
    from meshd.trust import Trust

__all__ = ["ApiRunner", "Node"]

log = logging.getLogger("meshd.node")

_EVENT_BUFFER = 256

# serve_api(view, *, task_status): the control API service, bound to its data dir.
ApiRunner = Callable[..., Awaitable[None]]


class Node:
    """One meshd node: the services of a daemon, and the view the control API reads."""

    def __init__(
        self,
        network: Network,
        *,
        api: ApiRunner | None = None,
        runtime: Runtime | None = None,
        delivery: Delivery | None = None,
        publisher: Publisher | None = None,
        migrator: Migrator | None = None,
        summaries: Summaries | None = None,
        metrics: NodeMetrics | None = None,
        telemetry: Telemetry | None = None,
        trust: Trust | None = None,
        swarms: Swarms | None = None,
        version: str = __version__,
        log_counters: LogCounters | None = None,
    ) -> None:
        self._network = network
        self._api = api
        self._runtime = runtime
        self._delivery = delivery
        self._publisher = publisher
        self._migrator = migrator
        self._summaries = summaries
        self._metrics = metrics
        self._telemetry = telemetry
        self._trust = trust
        self._swarms = swarms
        self._version = version
        self._log_counters = log_counters
        self._started_at: float | None = None
        self._stop = trio.Event()
        self._stop_reason = ""

    # -- NodeView (read by the control API) ---------------------------------------------

    @property
    def runtime(self) -> Runtime:
        """The agent runtime (the API's agent routes use it)."""
        if self._runtime is None:
            raise RuntimeError("this node runs no agent runtime")
        return self._runtime

    @property
    def summaries(self) -> Summaries:
        """Node summaries: routing and capability search (the API's find route uses it)."""
        if self._summaries is None:
            raise RuntimeError("this node keeps no summaries")
        return self._summaries

    @property
    def trust(self) -> Trust:
        """Admission policy and per-agent allow/deny lists (the API's acl routes use it)."""
        if self._trust is None:
            raise RuntimeError("this node has no trust policy")
        return self._trust

    @property
    def swarms(self) -> Swarms:
        """Swarm memberships and views (the API's swarm routes use it)."""
        if self._swarms is None:
            raise RuntimeError("this node runs no swarms")
        return self._swarms

    @property
    def migrator(self) -> Migrator:
        """Moves agents to other nodes (the API's migrate route uses it)."""
        if self._migrator is None:
            raise RuntimeError("this node cannot migrate agents")
        return self._migrator

    def identity(self) -> dict[str, Any]:
        """This node's peer id, listen addresses (ending in /p2p/<id>) and version."""
        return {
            "peer_id": self._network.peer_id,
            "addrs": self._network.listen_addrs(),
            "version": self._version,
        }

    def peers(self) -> list[dict[str, Any]]:
        """The connected peers: id, addresses, seconds connected."""
        now = trio.current_time()
        return [
            {
                "peer_id": peer.peer_id,
                "addrs": list(peer.addrs),
                "connected_for_s": round(now - peer.connected_at, 3),
            }
            for peer in sorted(self._network.connected_peers(), key=lambda p: p.peer_id)
        ]

    def status(self) -> dict[str, Any]:
        """Counters: uptime, peers, routing table, known peers, network and log counters."""
        uptime = 0.0 if self._started_at is None else trio.current_time() - self._started_at
        status: dict[str, Any] = {
            "peer_id": self._network.peer_id,
            "version": self._version,
            "uptime_s": round(uptime, 3),
            "peers": len(self._network.connected_peers()),
            "dht_routing_table": self._network.routing_table_size(),
            "known_peers": self._network.known_peers(),
            "addrs": self._network.listen_addrs(),
            "network": self._network.stats(),
        }
        if self._runtime is not None:
            status["agents"] = self._runtime.counts()
            status["busiest_agents"] = self._runtime.busiest()
            status["runtime"] = self._runtime.stats_dict()
        if self._delivery is not None:
            status["delivery"] = self._delivery.stats()
            status["router"] = self._delivery.router.stats()
        if self._publisher is not None:
            status["publisher"] = self._publisher.stats()
        if self._migrator is not None:
            status["migration"] = self._migrator.stats()
        if self._summaries is not None:
            status["summaries"] = self._summaries.stats()
        if self._trust is not None:
            status["trust"] = self._trust.stats()
        if self._swarms is not None:
            status["swarms"] = self._swarms.stats()
        if self._log_counters is not None:
            status["libp2p_log"] = dict(self._log_counters.libp2p)
        if self._metrics is not None:
            status["loop"] = self._metrics.status()
        if self._telemetry is not None:
            status["telemetry"] = self._telemetry.status()
        return status

    def metrics_text(self) -> bytes:
        """The Prometheus text exposition of this node's metrics (`/metrics`)."""
        if self._metrics is None:
            raise RuntimeError("this node exports no metrics")
        return self._metrics.render()

    # -- lifecycle ------------------------------------------------------------------------

    def request_stop(self, reason: str = "") -> None:
        """Ask `serve()` to shut down cleanly (idempotent; safe from any task)."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the network and the API until `request_stop()`; then close and return."""
        self._started_at = trio.current_time()
        send, receive = trio.open_memory_channel[NetEvent](_EVENT_BUFFER)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._log_events, receive)
            await nursery.start(self._network.serve, send)
            if self._runtime is not None:
                await nursery.start(self._runtime.serve)
            # Delivery needs both the network and the runtime running; the publisher, the
            # runtime (it listens to it) and the DHT.
            if self._delivery is not None:
                await nursery.start(self._delivery.serve)
            if self._publisher is not None:
                await nursery.start(self._publisher.serve)
            if self._swarms is not None:
                # After delivery: its topics hand the swarm topics over.
                await nursery.start(self._swarms.serve)
            if self._summaries is not None:
                # Before the migrator: an arriving agent changes the summary.
                await nursery.start(self._summaries.serve)
            if self._migrator is not None:
                # Last: an arriving agent needs the runtime, delivery and publisher running.
                await nursery.start(self._migrator.serve)
            if self._metrics is not None:
                depth = self._runtime.store.outbox_depth if self._runtime is not None else None
                await nursery.start(self._metrics.serve, depth)
            if self._telemetry is not None:
                await nursery.start(self._telemetry.serve)
            if self._api is not None:
                await nursery.start(self._api, self)
            task_status.started()
            await self._stop.wait()
            reason = f" ({self._stop_reason})" if self._stop_reason else ""
            log_event(log, "shutdown", f"shutting down{reason}", reason=self._stop_reason)
            if self._log_counters is not None:
                # py-libp2p logs tracebacks for every task torn down; we count them only.
                self._log_counters.quiet = True
            await self._network.close()
            nursery.cancel_scope.cancel()
        log_event(log, "stopped", "stopped")

    async def _log_events(self, events: trio.MemoryReceiveChannel[NetEvent]) -> None:
        async for event in events:
            self._log_event(event)

    def _log_event(self, event: NetEvent) -> None:
        if isinstance(event, Listening):
            log_event(
                log,
                "listening",
                f"node {self._network.peer_id} listening on {', '.join(event.addrs)}",
                peer_id=self._network.peer_id,
                addrs=list(event.addrs),
            )
        elif isinstance(event, PeerConnected):
            direction = "inbound" if event.inbound else "outbound"
            log_event(
                log,
                "peer_connected",
                f"peer connected {event.peer_id} ({direction}, {event.addr})",
                peer_id=event.peer_id,
                addr=event.addr,
                inbound=event.inbound,
            )
        elif isinstance(event, PeerDisconnected):
            log_event(
                log,
                "peer_disconnected",
                f"peer disconnected {event.peer_id} after {event.connected_for_s:.1f} s",
                peer_id=event.peer_id,
                connected_for_s=round(event.connected_for_s, 3),
            )
        elif isinstance(event, BootstrapDone):
            total = len(event.connected) + len(event.failed)
            if total == 0:
                log_event(
                    log, "bootstrap", "no bootstrap peers configured: waiting for peers to dial us"
                )
                return
            log_event(
                log,
                "bootstrap",
                f"bootstrap: reached {len(event.connected)} of {total} peers",
                connected=list(event.connected),
                failed=[{"addr": addr, "error": error} for addr, error in event.failed],
            )
            for addr, error in event.failed:
                log.warning("bootstrap peer %s unreachable: %s", addr, error)
        elif isinstance(event, RoutingTableChanged):
            log_event(
                log,
                "dht_table",
                f"DHT routing table: {event.size} peers (was {event.previous})",
                size=event.size,
                previous=event.previous,
            )
