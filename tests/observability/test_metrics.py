"""`/metrics` on real daemons: present, Prometheus-parsable, and moving when traffic flows."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshd.paths import API_SOCKET

if TYPE_CHECKING:
    from tests.node.conftest import Daemon, Daemons

pytestmark = pytest.mark.slow


def scrape(daemon: Daemon) -> dict[str, float]:
    """GET /metrics over the daemon's Unix socket; {name{labels}: value}."""
    transport = httpx.HTTPTransport(uds=str(daemon.data_dir / API_SOCKET))
    with httpx.Client(transport=transport, base_url="http://meshd") as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def test_metrics_move_with_traffic(daemons: Daemons) -> None:
    a, b = daemons.init("a"), daemons.init("b")
    a.start("--log-format", "json")
    a.wait_ready()
    b.start("--bootstrap", a.addrs[0], "--log-format", "json")
    b.wait_ready()
    daemons.wait_for(lambda: a.peer_ids() and b.peer_ids(), timeout=20, what="peers")
    spawned = b.post("/v1/agents", {"kind": "echo", "count": 3})
    target = spawned["agents"][0]["id"]

    before = scrape(a)
    for name in (
        "meshd_info",
        "meshd_peers",
        "meshd_agents",
        "meshd_event_loop_lag_seconds_count",
        "meshd_delivery_latency_seconds_count",
        "meshd_dht_lookup_duration_seconds_count",
        "meshd_uptime_seconds",
    ):
        assert any(key.startswith(name + "{") for key in before), name
    assert before["meshd_peers{}"] == 1

    for i in range(5):
        result = a.post("/v1/send", {"to": target, "body": {"n": i}, "wait": True})
        assert result["outcome"] == "delivered", result
    after_a, after_b = scrape(a), scrape(b)
    assert after_a["meshd_messages_sent_total{outcome=delivered}"] >= 5
    assert after_a["meshd_delivery_latency_seconds_count{}"] >= 5
    # Every DHT lookup is timed (how a is routed, DHT or cache, is the router's business).
    lookups = after_a["meshd_dht_lookups_total{}"]
    assert after_a["meshd_dht_lookup_duration_seconds_count{}"] == lookups
    routes = sum(v for k, v in after_a.items() if k.startswith("meshd_route_paths_total{"))
    assert routes >= 5
    # The lag is sampled every LAG_INTERVAL_S: the five sends may all fit between two samples.
    lag_count = "meshd_event_loop_lag_seconds_count{}"
    daemons.wait_for(
        lambda: scrape(a)[lag_count] > before[lag_count], timeout=10, what="a lag sample"
    )
    assert after_b["meshd_messages_received_total{outcome=delivered}"] >= 5
    assert after_b["meshd_messages_handled_total{}"] >= 5
    hosted = sum(v for k, v in after_b.items() if k.startswith("meshd_agents{state="))
    agents = b.get("/v1/status")["agents"]
    assert hosted == agents["total"] >= 1, (agents, after_b)
    assert after_b["meshd_agent_spawns_total{}"] >= 1
    assert after_b["meshd_agent_activations_total{}"] >= 1
    # Each node exchanges telemetry with the other (interval 5 s by default: not waited for).
    assert "meshd_mesh_agents_estimate{}" in after_b
    assert b.get("/v1/status")["loop"]["loop_lag_s"] >= 0
    # The abuse limits in force, and their counters (zero here: nobody misbehaved).
    assert after_b["meshd_limit{limit=peer_msgs_per_s}"] == 20_000
    assert after_b["meshd_peer_bans_total{}"] == 0
    assert after_b["meshd_peers_banned{}"] == 0


def trace_steps(daemon: Daemon, trace: str) -> list[str]:
    """The steps of `trace` in the daemon's JSON log."""
    steps = []
    for line in daemon.log_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == "trace" and record.get("trace") == trace:
                steps.append(record["step"])
    return steps


def test_send_trace_is_logged_by_every_node(daemons: Daemons) -> None:
    a, b = daemons.init("a"), daemons.init("b")
    a.start("--log-format", "json")
    a.wait_ready()
    b.start("--bootstrap", a.addrs[0], "--log-format", "json")
    b.wait_ready()
    daemons.wait_for(lambda: a.peer_ids() and b.peer_ids(), timeout=20, what="peers")
    target = b.post("/v1/agents", {"kind": "echo"})["agents"][0]["id"]
    result = daemons.cli(
        "send", target, '{"hi": 1}', "--wait", "--trace", "--json", "--data-dir", str(a.data_dir)
    )
    assert result.returncode == 0, result.stderr
    trace = json.loads(result.stdout)["trace"]
    assert len(trace) == 16
    # a sends the request and receives the reply; b receives the request and sends the reply.
    daemons.wait_for(lambda: len(trace_steps(a, trace)) >= 2, timeout=5, what="a's trace lines")
    assert trace_steps(a, trace) == ["send", "receive"]
    assert trace_steps(b, trace) == ["receive", "send"]
    untraced = a.post("/v1/send", {"to": target, "body": 1, "wait": True})
    assert "trace" not in untraced


def test_counting_histogram_exposes_what_a_prometheus_histogram_would() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from meshd.metrics import CountingHistogram

    buckets = (0.001, 0.01, 0.1, 1.0)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counting = CountingHistogram("x_seconds", "doc", buckets)
    ours.register(counting)
    reference = Histogram("x_seconds", "doc", buckets=buckets, registry=theirs)
    for value, count in ((0.0005, 3), (0.001, 2), (0.05, 1), (0.5, 4), (7.0, 1), (0.01, 0)):
        counting.observe(value, count)
        for _ in range(count):
            reference.observe(value)

    def samples(registry: CollectorRegistry) -> dict[str, float]:
        lines = generate_latest(registry).decode().splitlines()
        wanted = [line for line in lines if line.startswith("x_seconds_") and "created" not in line]
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in wanted}

    assert samples(ours) == samples(theirs)
    assert samples(ours)['x_seconds_bucket{le="0.001"}'] == 5
    assert samples(ours)["x_seconds_count"] == 11
