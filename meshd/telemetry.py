"""Mesh-wide figures with no collector: telemetry gossip between neighbours.

Every `interval_s` the node refreshes its own entry (totals and rates of messages, rejects,
spawns, hosted agents: see `protocol.telemetry`), adds its agent ids and node id to the
current epoch's HyperLogLogs, and exchanges reports with up to `fanout` connected peers over
`/meshd/telemetry/1.0.0` (one request each: our report in, theirs back). Reports are signed
by the sending node; one that fails to decode, is not signed by its stream's peer, or has a
bad signature is counted by reason, logged (once a minute per reason) and ignored.

Hashing every hosted agent into the sketch costs about 1 s per million agents, so the
node rebuilds its own contribution only when the count changed, and at most once every
20 times the last rebuild took (at most about 5% of a core).

From the merged state, `status()` gives estimates of the whole mesh (agents and nodes from
the sketches, with their standard error; message, reject and spawn rates summed over the
per-node entries) and anomalies: a node (this one or another) whose rate of messages,
rejects or spawns is more than `anomaly_factor` times the mean of the other nodes.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

import trio
import trio.lowlevel

from meshd.clock import WallClock, wall_ms
from meshd.net.types import Network, RequestError
from meshd.telemetry_settings import TelemetrySettings
from protocol.errors import RemoteProtocolError
from protocol.ids import NodeId, SigningKey
from protocol.sketch import HyperLogLog
from protocol.telemetry import (
    AGENT_PRECISION,
    NODE_PRECISION,
    EpochSketches,
    MeshTable,
    NodeEntry,
    TelemetryReport,
)

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from meshd.delivery import Delivery
    from meshd.runtime.runtime import Runtime

__all__ = ["TELEMETRY_PROTOCOL", "Telemetry", "TelemetrySettings"]

log = logging.getLogger("meshd.telemetry")

TELEMETRY_PROTOCOL = "/meshd/telemetry/1.0.0"
_LOG_INTERVAL_S = 60.0
_REBUILD_COST_FACTOR = 20.0
_CHUNK = 16_384
# Rates with fewer events than this per second are never called anomalous.
_MIN_ANOMALY_RATE = 1.0
# The per-node figures exchanged; rates are of these (except agents, a level).
_RATE_NAMES = ("msgs_in", "msgs_out", "rejects", "spawns")
_ANOMALY_METRICS = {"msgs_in": "messages", "rejects": "rejects", "spawns": "spawns"}
# An HLL estimate lies within this many standard errors of the truth 99.7% of the time.
_BOUND_SIGMAS = 3.0


class Telemetry:
    """The telemetry service of one node: its own figures, the merged mesh state, gossip."""

    def __init__(
        self,
        node_key: SigningKey,
        network: Network,
        runtime: Runtime | None,
        delivery: Delivery | None,
        settings: TelemetrySettings | None = None,
        *,
        clock: WallClock = wall_ms,
    ) -> None:
        self._key = node_key
        self._node = node_key.node_id.raw
        self._network = network
        self._runtime = runtime
        self._delivery = delivery
        self.settings = settings or TelemetrySettings()
        self._clock = clock
        self._sketches = EpochSketches()
        self._table = MeshTable(max_nodes=self.settings.max_nodes, ttl_s=self.settings.node_ttl_s)
        self._seq = 0
        self._history: deque[tuple[float, dict[str, int]]] = deque(maxlen=256)
        self._own_rates: dict[str, float] = {}
        self._agents_added = -1  # hosted agents at the last sketch rebuild
        self._agents_epoch = -1  # and the epoch it went into
        self._next_rebuild = -math.inf
        self.exchanges: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.bytes_in = 0
        self.bytes_out = 0
        self._logged: dict[str, float] = {}

    # -- own figures ----------------------------------------------------------------------

    def _totals(self) -> dict[str, int]:
        totals = dict.fromkeys((*_RATE_NAMES, "agents"), 0)
        if self._delivery is not None:
            totals["msgs_in"] = sum(self._delivery.received.values())
            totals["msgs_out"] = sum(self._delivery.sent.values())
            totals["rejects"] = sum(self._delivery.rejected.values())
        if self._runtime is not None:
            totals["spawns"] = self._runtime.stats.spawned
            totals["agents"] = self._runtime.counts()["total"]
        return totals

    def _refresh_own(self, now: float) -> None:
        """Recompute this node's entry: totals, rates over the window, a higher seq."""
        totals = self._totals()
        self._history.append((now, totals))
        while len(self._history) > 2 and now - self._history[1][0] >= self.settings.rate_window_s:
            self._history.popleft()
        first_time, first = self._history[0]
        span = now - first_time
        self._own_rates = {
            name: (totals[name] - first[name]) / span if span > 0 else 0.0 for name in _RATE_NAMES
        }
        # The wall clock in ms as the sequence keeps rising across restarts.
        self._seq = max(self._seq + 1, self._clock())
        entry = NodeEntry(
            node=self._node,
            seq=self._seq,
            age_ms=0,
            counters=totals,
            rates={k: max(0, round(v * 1000)) for k, v in self._own_rates.items()},
        )
        self._table.merge(entry, now)
        self._sketches.rotate(self._clock() // int(self.settings.epoch_s * 1000))
        self._sketches.add((), (self._node,))

    async def _rebuild_agents(self) -> None:
        """Add every hosted agent id to the current epoch's sketch (rate-limited)."""
        if self._runtime is None:
            return
        now = trio.current_time()
        count = self._runtime.counts()["total"]
        epoch = self._sketches.epoch
        if (count, epoch) == (self._agents_added, self._agents_epoch):
            return
        if now < self._next_rebuild:
            return
        started = trio.current_time()
        ids = list(self._runtime.agent_ids())
        for offset in range(0, len(ids), _CHUNK):
            self._sketches.add(ids[offset : offset + _CHUNK], ())
            await trio.lowlevel.checkpoint()  # let messages through between chunks
        cost = trio.current_time() - started
        self._agents_added = len(ids)
        self._agents_epoch = epoch
        self._next_rebuild = trio.current_time() + cost * _REBUILD_COST_FACTOR

    # -- reports --------------------------------------------------------------------------

    def _report(self) -> bytes:
        # Part of the table: news first, our own entry always (`MeshTable.pick`).
        now = trio.current_time()
        entries = self._table.pick(now, self.settings.report_entries, first=self._node)
        return TelemetryReport.encode(
            self._key,
            created_ms=self._clock(),
            sketches=self._sketches.items(),
            entries=entries,
        )

    def _take(self, peer_id: str, payload: bytes) -> bool:
        """Check and merge a peer's report; count and log what is refused."""
        self.bytes_in += len(payload)
        try:
            report = TelemetryReport.decode(payload)
            if report.node.text != peer_id:
                self._refuse(peer_id, "wrong_sender", f"signed by {report.node.text}")
                return False
            report.verify()
            now = trio.current_time()
            for epoch, agents, nodes in report.sketches:
                self._sketches.merge(epoch, agents, nodes)
        except RemoteProtocolError as exc:
            self._refuse(peer_id, exc.reason.value, str(exc))
            return False
        for entry in report.entries:
            if entry.node != self._node:  # our own entry only we make
                self._table.merge(entry, now)
        return True

    def _refuse(self, peer_id: str, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        now = trio.current_time()
        if now - self._logged.get(reason, -math.inf) >= _LOG_INTERVAL_S:
            self._logged[reason] = now
            log.info(
                "telemetry from %s refused: %s (%d %s so far)",
                peer_id,
                detail,
                self.rejected[reason],
                reason,
            )

    async def _on_request(self, peer_id: str, payload: bytes) -> bytes:
        """Answer a neighbour's report with ours (also when theirs was refused)."""
        self._take(peer_id, payload)
        answer = self._report()
        self.bytes_out += len(answer)
        return answer

    async def _exchange(self, peer_id: str, addrs: tuple[str, ...]) -> None:
        payload = self._report()
        self.bytes_out += len(payload)
        try:
            answer = await self._network.request(
                peer_id,
                addrs,
                TELEMETRY_PROTOCOL,
                payload,
                timeout=self.settings.request_timeout_s,
            )
        except RequestError as exc:
            self.exchanges["failed"] += 1
            log.debug("telemetry exchange with %s failed: %s", peer_id, exc)
            return
        self.exchanges["ok" if self._take(peer_id, answer) else "refused"] += 1

    # -- the service ----------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Gossip telemetry with neighbours every `interval_s` until cancelled."""
        self._network.set_request_handler(TELEMETRY_PROTOCOL, self._on_request)
        try:
            self._refresh_own(trio.current_time())
            task_status.started()
            while True:
                # Jitter: nodes started together must not all exchange at once.
                await trio.sleep(self.settings.interval_s * random.uniform(0.8, 1.2))
                self._refresh_own(trio.current_time())
                await self._rebuild_agents()
                peers = self._network.connected_peers()
                chosen = random.sample(peers, min(self.settings.fanout, len(peers)))
                # One at a time: exchanges are small, and the peer serves few at once.
                for peer in chosen:
                    await self._exchange(peer.peer_id, tuple(peer.addrs))
        finally:
            self._network.set_request_handler(TELEMETRY_PROTOCOL, None)

    # -- figures --------------------------------------------------------------------------

    def _anomalies(self, entries: list[NodeEntry]) -> list[dict[str, Any]]:
        if len(entries) < 3:
            return []  # with two nodes, "far from the others" means nothing
        connected = {p.peer_id for p in self._network.connected_peers()}
        out: list[dict[str, Any]] = []
        for name, metric in _ANOMALY_METRICS.items():
            total = sum(e.rates.get(name, 0) for e in entries) / 1000.0
            for entry in entries:
                rate = entry.rates.get(name, 0) / 1000.0
                others = (total - rate) / (len(entries) - 1)
                if rate >= _MIN_ANOMALY_RATE and rate > self.settings.anomaly_factor * others:
                    node = NodeId.from_bytes(entry.node).text
                    out.append(
                        {
                            "node": node,
                            "metric": metric,
                            "rate_per_s": round(rate, 3),
                            "mesh_mean_per_s": round(others, 3),
                            "self": entry.node == self._node,
                            "neighbour": node in connected,
                        }
                    )
        return out

    def status(self) -> dict[str, Any]:
        """Mesh estimates, anomalies and gossip counters, for `Node.status()`."""
        now = trio.current_time()
        entries = self._table.entries(now)
        counters, rates = self._table.sums()
        agents, nodes = self._sketches.estimates()
        agents_error = HyperLogLog(AGENT_PRECISION).relative_error
        nodes_error = HyperLogLog(NODE_PRECISION).relative_error
        return {
            "mesh": {
                "agents": round(agents, 1),
                "agents_error": round(agents_error, 4),
                "agents_bound": [
                    round(agents * (1 - _BOUND_SIGMAS * agents_error), 1),
                    round(agents * (1 + _BOUND_SIGMAS * agents_error), 1),
                ],
                "nodes": round(nodes, 1),
                "nodes_error": round(nodes_error, 4),
                "nodes_reporting": len(entries),
                "agents_reported": counters.get("agents", 0),
                "messages_per_s": round(rates.get("msgs_in", 0.0), 3),
                "sent_per_s": round(rates.get("msgs_out", 0.0), 3),
                "rejects_per_s": round(rates.get("rejects", 0.0), 3),
                "spawns_per_s": round(rates.get("spawns", 0.0), 3),
                "epoch": self._sketches.epoch,
            },
            "self": {name: round(value, 3) for name, value in self._own_rates.items()},
            "anomalies": self._anomalies(entries),
            "exchanges": dict(sorted(self.exchanges.items())),
            "rejected": dict(sorted(self.rejected.items())),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "table_dropped": self._table.dropped_full,
        }
