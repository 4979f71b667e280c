"""Prometheus metrics of one node, served at `/metrics` on the control API.

Counters are not instrumented on hot paths: `StatusCollector` reads the node's existing
counters (`Node.status()`: network, runtime, delivery, router, publisher, migration, and
summaries and telemetry when present) at scrape time and turns them into metric families.
Only histograms need observations as they happen; those are the three histograms of
`NodeMetrics`, fed by one-line hooks (delivery: send to ACK, one call per batch of messages
via `CountingHistogram`; router: DHT lookups) and by
`NodeMetrics.serve`, a small task that measures the event loop's lag and samples the
outbox depth (an async store query, so it cannot run inside a scrape).

Each node has its own `CollectorRegistry` (several nodes may share a process in tests and
simnet); names follow Prometheus conventions: `meshd_..._total` counters, base units.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from meshd.api.openapi import METRICS_CONTENT_TYPE

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = ["CONTENT_TYPE", "CountingHistogram", "NodeMetrics", "StatusCollector"]

CONTENT_TYPE = METRICS_CONTENT_TYPE

# The event loop is checked this often; the lag is how late the sleep woke up.
LAG_INTERVAL_S = 0.25
OUTBOX_SAMPLE_S = 5.0
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
_DHT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


class CountingHistogram(Collector):
    """A Prometheus histogram that takes many equal observations in one call (event loop only).

    A batch of messages answered by one ACK frame shares one latency: `observe(s, count)`
    costs one bucket search where prometheus_client's `Histogram` would take two locks per
    message. Exposed through prometheus_client's own `HistogramMetricFamily`.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self._name = name
        self._doc = documentation
        self._bounds = sorted(buckets)
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self._sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        """Record `count` observations of `value`."""
        # bisect_left: a value equal to a bound belongs in that bound's bucket (le).
        self._counts[bisect_left(self._bounds, value)] += count
        self._sum += value * count

    def collect(self) -> Iterator[Metric]:
        """The histogram's cumulative buckets, count and sum."""
        buckets, total = [], 0
        for bound, count in zip([*self._bounds, float("inf")], self._counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        yield HistogramMetricFamily(self._name, self._doc, buckets=buckets, sum_value=self._sum)


class NodeMetrics:
    """A node's metrics registry, its histograms, and the sampler task that feeds some."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.delivery_latency = CountingHistogram(
            "meshd_delivery_latency_seconds",
            "Time from handing a message to a peer's stream to its ACK.",
            _LATENCY_BUCKETS,
        )
        self.registry.register(self.delivery_latency)
        self.dht_lookup = Histogram(
            "meshd_dht_lookup_duration_seconds",
            "Duration of DHT lookups of agent records (successful or not).",
            buckets=_DHT_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "meshd_event_loop_lag_seconds",
            f"How late a {LAG_INTERVAL_S:g} s sleep in the node's event loop woke up.",
            buckets=_LAG_BUCKETS,
            registry=self.registry,
        )
        self.last_lag_s = 0.0
        self.max_lag_s = 0.0  # the worst lag since the last outbox sample window began
        self.outbox_depth: int | None = None
        self.collector = StatusCollector(status, self)
        self.registry.register(self.collector)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def status(self) -> dict[str, Any]:
        """Event-loop lag and outbox depth, for `Node.status()`."""
        return {
            "loop_lag_s": round(self.last_lag_s, 6),
            "loop_lag_max_s": round(self.max_lag_s, 6),
            "outbox_depth": self.outbox_depth,
        }

    async def serve(
        self,
        outbox_depth: Callable[[], Any] | None = None,
        *,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Measure the event loop's lag (and sample the outbox depth) until cancelled."""
        task_status.started()
        next_sample = trio.current_time()
        window_max = 0.0
        while True:
            before = trio.current_time()
            await trio.sleep(LAG_INTERVAL_S)
            lag = max(0.0, trio.current_time() - before - LAG_INTERVAL_S)
            self.loop_lag.observe(lag)
            self.last_lag_s = lag
            window_max = max(window_max, lag)
            self.max_lag_s = max(self.max_lag_s, lag)
            now = trio.current_time()
            if now >= next_sample:
                next_sample = now + OUTBOX_SAMPLE_S
                # The worst lag of the last window, not of all time: status shows "lately".
                self.max_lag_s, window_max = window_max, 0.0
                if outbox_depth is not None:
                    self.outbox_depth = int(await outbox_depth())


_Family = CounterMetricFamily | GaugeMetricFamily
# Entries of the trust status section that are sizes, not event counts.
_TRUST_GAUGES = frozenset({"policy", "roots", "agents_with_lists", "verdicts_cached"})


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> _Family:
    return CounterMetricFamily(name, doc, labels=labels)


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> _Family:
    return GaugeMetricFamily(name, doc, labels=labels)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _labelled(family: _Family, values: Any) -> None:
    """Add one sample per `{label: number}` entry (non-numbers are skipped)."""
    if not isinstance(values, Mapping):
        return
    for label, value in sorted(values.items()):
        number = _number(value)
        if number is not None:
            family.add_metric([str(label)], number)


def _single(family: _Family, value: Any) -> bool:
    number = _number(value)
    if number is None:
        return False
    family.add_metric([], number)
    return True


class StatusCollector(Collector):
    """Turns `Node.status()` into metric families at scrape time."""

    def __init__(self, status: Callable[[], Mapping[str, Any]], metrics: NodeMetrics) -> None:
        self._status = status
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """Every metric family read from the node's status (the histograms are separate)."""
        status = self._status()
        yield from self._node(status)
        if "runtime" in status:
            yield from self._runtime(status.get("agents", {}), status["runtime"])
        if "delivery" in status:
            yield from self._delivery(status["delivery"], status.get("router", {}))
            if "guard" in status["delivery"]:
                yield from self._guard(status["delivery"]["guard"])
        if "publisher" in status:
            family = _counter("meshd_records_published", "Agent records put in the DHT.", ("kind",))
            _labelled(family, status["publisher"].get("published"))
            yield family
        if "migration" in status:
            yield from self._migration(status["migration"])
        if "summaries" in status:
            yield from self._summaries(status["summaries"])
        if "trust" in status:
            # Verdicts and refusals of the trust policy and the per-agent lists.
            family = _counter("meshd_trust_events", "Trust decisions by kind.", ("event",))
            trust = status["trust"]
            _labelled(family, {k: v for k, v in trust.items() if k not in _TRUST_GAUGES})
            yield family
        if "telemetry" in status:
            yield from self._telemetry(status["telemetry"])

    def _node(self, status: Mapping[str, Any]) -> Iterator[Metric]:
        info = _gauge("meshd_info", "This node's id and version (value 1).", ("peer_id", "version"))
        info.add_metric([str(status.get("peer_id", "")), str(status.get("version", ""))], 1.0)
        yield info
        for name, key, doc in (
            ("meshd_uptime_seconds", "uptime_s", "Seconds since the node started."),
            ("meshd_peers", "peers", "Connected peers."),
            ("meshd_dht_routing_table_peers", "dht_routing_table", "Peers in the DHT table."),
            ("meshd_known_peers", "known_peers", "Peers in the peer store."),
        ):
            family = _gauge(name, doc)
            if _single(family, status.get(key)):
                yield family
        network = status.get("network", {})
        messages = network.get("messages", {}) if isinstance(network, Mapping) else {}
        family = _gauge("meshd_stream_queued_frames", "Frames waiting on peers' message streams.")
        if _single(family, messages.get("queued")):
            yield family
        family = _counter(
            "meshd_stream_rejected_frames", "Frames refused by the stream layer.", ("reason",)
        )
        _labelled(family, messages.get("rejected"))
        yield family
        family = _counter("meshd_libp2p_log_records", "py-libp2p log records.", ("level",))
        _labelled(family, status.get("libp2p_log"))
        yield family
        loop = status.get("loop", {})
        family = _gauge("meshd_outbox_messages", "At-least-once messages in the outbox.")
        if _single(family, loop.get("outbox_depth")):
            yield family

    def _runtime(self, agents: Mapping[str, Any], runtime: Mapping[str, Any]) -> Iterator[Metric]:
        family = _gauge("meshd_agents", "Hosted agents by state.", ("state",))
        _labelled(family, {k: v for k, v in agents.items() if k != "total"})
        yield family
        for name, key, doc in (
            ("meshd_agent_spawns", "spawned", "Agents spawned here."),
            ("meshd_agent_activations", "activations", "Agents brought from dormant to active."),
            ("meshd_agent_evictions", "evictions", "Active agents sent back to dormant."),
            ("meshd_agent_deletions", "deleted", "Agents deleted."),
            ("meshd_agent_expirations", "expired", "Agents deleted when their TTL passed."),
            ("meshd_messages_handled", "handled", "Messages handled by agents' handlers."),
            ("meshd_handler_errors", "handler_errors", "Handler calls that raised."),
            ("meshd_inbox_full", "inbox_full", "Messages refused because an inbox was full."),
            ("meshd_messages_queued", "queued", "Messages put in persistent inboxes."),
            ("meshd_messages_duplicate", "duplicates", "At-least-once copies recognised."),
        ):
            family = _counter(name, doc)
            if _single(family, runtime.get(key)):
                yield family
        family = _counter("meshd_quota_refusals", "Spawns refused by quotas.", ("reason",))
        _labelled(family, runtime.get("quota_refusals"))
        yield family

    def _delivery(self, delivery: Mapping[str, Any], router: Mapping[str, Any]) -> Iterator[Metric]:
        family = _counter("meshd_messages_sent", "Messages sent, by outcome.", ("outcome",))
        _labelled(family, delivery.get("sent"))
        yield family
        family = _counter(
            "meshd_messages_received", "Messages from peers, by outcome.", ("outcome",)
        )
        _labelled(family, delivery.get("received"))
        yield family
        family = _counter(
            "meshd_messages_rejected", "Messages from peers rejected, by reason.", ("reason",)
        )
        _labelled(family, delivery.get("rejected"))
        yield family
        family = _counter("meshd_outbox_events", "At-least-once outbox events.", ("event",))
        _labelled(family, delivery.get("outbox"))
        yield family
        family = _gauge("meshd_location_cache_entries", "Agent locations cached.")
        if _single(family, delivery.get("locations")):
            yield family
        family = _counter("meshd_route_paths", "Route lookups by path taken.", ("path",))
        _labelled(family, router.get("paths"))
        yield family
        for name, key, doc in (
            ("meshd_dht_lookups", "dht_lookups", "DHT lookups of agent records."),
            ("meshd_dht_lookup_failures", "dht_failures", "DHT lookups that found nothing usable."),
        ):
            family = _counter(name, doc)
            if _single(family, router.get(key)):
                yield family

    def _guard(self, guard: Mapping[str, Any]) -> Iterator[Metric]:
        family = _counter(
            "meshd_rate_limited_messages",
            "Messages refused for their sending agent's rate.",
            ("scope",),
        )
        _labelled(family, {"agent": guard.get("rate_limited_agent", 0)})
        yield family
        family = _counter("meshd_peer_throttled_batches", "Batches read late: peer over its rate.")
        if _single(family, guard.get("throttled_batches", 0)):
            yield family
        family = _counter(
            "meshd_peer_throttled_seconds", "Time peers' streams waited for their rate."
        )
        if _single(family, guard.get("throttled_ms", 0) / 1000):
            yield family
        family = _counter(
            "meshd_peer_penalties", "Penalised peer misbehaviour, by reason.", ("reason",)
        )
        _labelled(family, guard.get("penalties"))
        yield family
        family = _counter("meshd_peer_bans", "Peers banned.")
        if _single(family, guard.get("bans", 0)):
            yield family
        family = _gauge("meshd_peers_banned", "Peers banned now.")
        if _single(family, len(guard.get("banned", ()))):
            yield family
        family = _gauge("meshd_limit", "Abuse limits in force (limits.* keys).", ("limit",))
        _labelled(family, guard.get("limits"))
        yield family

    def _migration(self, migration: Mapping[str, Any]) -> Iterator[Metric]:
        family = _counter(
            "meshd_migrations",
            "Agent migrations by direction and outcome.",
            ("direction", "outcome"),
        )
        for direction in ("sent", "received"):
            values = migration.get(direction, {})
            for outcome, value in sorted(values.items()):
                number = _number(value)
                if number is not None:
                    family.add_metric([direction, str(outcome)], number)
        yield family

    def _summaries(self, summaries: Mapping[str, Any]) -> Iterator[Metric]:
        family = _counter("meshd_summary_bytes", "Node summary bytes.", ("direction",))
        _labelled(family, {"in": summaries.get("bytes_in"), "out": summaries.get("bytes_out")})
        yield family
        family = _counter("meshd_summaries_sent", "Summaries sent, full or delta.", ("type",))
        _labelled(
            family, {"full": summaries.get("full_sent"), "delta": summaries.get("deltas_sent")}
        )
        yield family
        family = _counter("meshd_summaries_rejected", "Summaries rejected by reason.", ("reason",))
        _labelled(family, summaries.get("rejected"))
        yield family
        family = _counter(
            "meshd_summary_false_positives", "Summary hits whose peer answered not_here."
        )
        if _single(family, summaries.get("false_positives")):
            yield family

    def _telemetry(self, telemetry: Mapping[str, Any]) -> Iterator[Metric]:
        mesh = telemetry.get("mesh", {})
        for name, key, doc in (
            ("meshd_mesh_agents_estimate", "agents", "Estimated agents in the whole mesh."),
            ("meshd_mesh_nodes_estimate", "nodes", "Estimated nodes in the whole mesh."),
            ("meshd_mesh_message_rate", "messages_per_s", "Mesh-wide messages received per s."),
            ("meshd_mesh_reject_rate", "rejects_per_s", "Mesh-wide rejections per second."),
            ("meshd_mesh_nodes_reporting", "nodes_reporting", "Nodes in the counters table."),
        ):
            family = _gauge(name, doc)
            if _single(family, mesh.get(key)):
                yield family
        family = _gauge(
            "meshd_mesh_estimate_relative_error", "Standard error of the HLL estimates.", ("of",)
        )
        _labelled(family, {"agents": mesh.get("agents_error"), "nodes": mesh.get("nodes_error")})
        yield family
        family = _counter(
            "meshd_telemetry_exchanges", "Telemetry exchanges by outcome.", ("outcome",)
        )
        _labelled(family, telemetry.get("exchanges"))
        yield family
        family = _counter(
            "meshd_telemetry_rejected", "Telemetry payloads rejected by reason.", ("reason",)
        )
        _labelled(family, telemetry.get("rejected"))
        yield family
        family = _counter("meshd_telemetry_bytes", "Telemetry payload bytes.", ("direction",))
        _labelled(family, {"in": telemetry.get("bytes_in"), "out": telemetry.get("bytes_out")})
        yield family
        family = _gauge(
            "meshd_anomaly",
            "1 for each node (this one or another) whose rate deviates far from the mesh's.",
            ("node", "metric"),
        )
        for anomaly in telemetry.get("anomalies", []):
            family.add_metric([str(anomaly.get("node")), str(anomaly.get("metric"))], 1.0)
        yield family
