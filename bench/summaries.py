"""Node summary benchmark: traffic per agent, delta versus whole size, DHT-free routes.

1. Sizes (no network): a node's whole summary and the delta one spawn plus one delete makes,
   and the delta of 10% of its agents replaced, at several agent counts.
2. Real daemons on loopback (`meshd run`, summary.interval_s shortened so that a run is
   short): summary bytes sent per agent per hour at steady state, and while every node
   replaces 10% of its agents per minute; then the fraction of messages to random remote
   agents routed without a DHT lookup, by the routers' own counters.

Figures and ratios only, never assertions on timing; the last line is a JSON summary.
Usage: python bench/summaries.py [--nodes 6] [--agents 500] [--window 30]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's directory comes first on sys.path, where bench/protocol.py would
# shadow the protocol package; the repository root must win.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshd.localmesh import LocalDaemon, daemon_env
from protocol.ids import SigningKey
from protocol.records import NodeSummary, SummaryDelta
from protocol.summary import sized_filter

INTERVAL_S = 5.0
FP_RATE = 0.01


def _ids(n: int, salt: str) -> list[bytes]:
    return [hashlib.sha256(f"{salt}/{i}".encode()).digest() for i in range(n)]


def _summary(key: SigningKey, agents: list[bytes], seq: int, bits: int) -> NodeSummary:
    bloom = sized_filter(len(agents), FP_RATE)
    bloom = type(bloom)(max(bits, bloom.bits), bloom.hashes, 0)
    bloom.add_many(agents)
    caps = sized_filter(4, FP_RATE)
    caps.add_many([b"echo", b"translate"])
    counts = {"agents": len(agents), "caps": 2, "level_agents": 0}
    return NodeSummary.create(key, seq=seq, created_ms=seq, agents=bloom, caps=caps, counts=counts)


def sizes() -> list[dict[str, Any]]:
    """Whole summary and delta sizes at several agent counts (sans-IO)."""
    key = SigningKey.from_seed(b"\x07" * 32)
    rows = []
    for count in (100, 1_000, 10_000, 100_000):
        agents = _ids(count, "a")
        base = _summary(key, agents, 1, 0)
        bits = base.agents.bits
        one = _summary(key, agents[1:] + _ids(1, "new"), 2, bits)
        tenth = _summary(key, agents[count // 10 :] + _ids(count // 10, "new"), 3, bits)
        d_one = SummaryDelta.between(base, one)
        d_tenth = SummaryDelta.between(base, tenth)
        assert d_one is not None
        assert d_tenth is not None
        row = {
            "agents": count,
            "full_bytes": len(base.encoded),
            "full_bytes_per_agent": round(len(base.encoded) / count, 3),
            "delta_1_spawn_1_delete": len(d_one.encode()),
            "delta_10pct_replaced": len(d_tenth.encode()),
            "delta_ratio_1": round(len(d_one.encode()) / len(base.encoded), 4),
            "delta_ratio_10pct": round(len(d_tenth.encode()) / len(base.encoded), 4),
        }
        rows.append(row)
        print(
            f"{count:>7} agents: whole {row['full_bytes']:>8} B ({row['full_bytes_per_agent']} "
            f"B/agent); delta after 1 spawn + 1 delete {row['delta_1_spawn_1_delete']} B "
            f"(x{row['delta_ratio_1']}); after 10% replaced {row['delta_10pct_replaced']} B "
            f"(x{row['delta_ratio_10pct']})"
        )
    return rows


def _status(node: LocalDaemon) -> dict[str, Any]:
    return node.get("/v1/status")  # type: ignore[no-any-return]


def _bytes_out(nodes: list[LocalDaemon]) -> tuple[int, int, int, int, int]:
    stats = [_status(node)["summaries"] for node in nodes]
    return (
        sum(s["bytes_out"] for s in stats),
        sum(s["full_sent"] for s in stats),
        sum(s["deltas_sent"] for s in stats),
        sum(s["full_bytes_out"] for s in stats),
        sum(s["delta_bytes_out"] for s in stats),
    )


def _quiet(nodes: list[LocalDaemon], settle_s: float) -> None:
    """Wait until no node has pushed a summary for `settle_s` seconds (bounded)."""
    last, since = _bytes_out(nodes)[0], time.monotonic()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = _bytes_out(nodes)[0]
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle_s:
            return
    print("warning: summaries never went quiet within 120 s")


def mesh(count: int, agents: int, window: float) -> dict[str, Any]:
    """Traffic at steady state and under churn, then DHT-free routes, on real daemons."""
    env = daemon_env(MESHD_SUMMARY_INTERVAL_S=str(INTERVAL_S), MESHD_DHT_JOIN_JITTER_S="0.5")
    rng = random.Random(6)
    root = Path(tempfile.mkdtemp(prefix="meshd-bench-summaries-"))
    nodes = [LocalDaemon(root / f"n{i}") for i in range(count)]
    result: dict[str, Any] = {"nodes": count, "agents_per_node": agents, "window_s": window}
    try:
        for node in nodes:
            node.init()
        nodes[0].start(env=env)
        nodes[0].wait_ready()
        for node in nodes[1:]:
            node.start("--bootstrap", nodes[0].addrs[0], env=env)
        for node in nodes[1:]:
            node.wait_ready()
        hosted = [
            [a["id"] for a in node.post("/v1/agents", {"kind": "echo", "count": agents})["agents"]]
            for node in nodes
        ]
        total_agents = count * agents
        _quiet(nodes, settle_s=2 * INTERVAL_S)

        start, start_t = _bytes_out(nodes), time.monotonic()
        time.sleep(window)
        end, elapsed = _bytes_out(nodes), time.monotonic() - start_t
        steady = (end[0] - start[0]) / total_agents / elapsed * 3600
        result["steady_bytes_per_agent_hour"] = round(steady, 4)
        print(
            f"steady state: {end[0] - start[0]} summary bytes in {elapsed:.0f} s from {count} "
            f"nodes = {steady:.4f} B per agent per hour ({steady / 60:.5f} per minute)"
        )

        # Churn: each node replaces 10% of its agents per minute, in steps of one second.
        per_step = agents * 0.10 / 60
        owed = [0.0] * count
        start, start_t = _bytes_out(nodes), time.monotonic()
        while time.monotonic() - start_t < window:
            step_t = time.monotonic()
            for index, node in enumerate(nodes):
                owed[index] += per_step
                while owed[index] >= 1:
                    owed[index] -= 1
                    victim = hosted[index].pop(rng.randrange(len(hosted[index])))
                    node.post(f"/v1/agents/{victim}/delete")
                    new = node.post("/v1/agents", {"kind": "echo"})["agents"][0]["id"]
                    hosted[index].append(new)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - step_t)))
        end, elapsed = _bytes_out(nodes), time.monotonic() - start_t
        churn = (end[0] - start[0]) / total_agents / elapsed * 3600
        fulls, deltas = end[1] - start[1], end[2] - start[2]
        result["churn_bytes_per_agent_hour"] = round(churn, 2)
        result["churn_full_pushes"] = fulls
        result["churn_delta_pushes"] = deltas
        mean_full = (end[3] - start[3]) / fulls if fulls else None
        mean_delta = (end[4] - start[4]) / deltas if deltas else None
        result["churn_mean_full_bytes"] = mean_full and round(mean_full)
        result["churn_mean_delta_bytes"] = mean_delta and round(mean_delta)
        print(
            f"10%/min churn: {end[0] - start[0]} bytes in {elapsed:.0f} s = {churn:.2f} B per "
            f"agent per hour; {fulls} whole pushes (mean {result['churn_mean_full_bytes']} B), "
            f"{deltas} deltas (mean {result['churn_mean_delta_bytes']} B)"
        )

        # DHT-free routes: messages to random agents on other nodes, after the last churn.
        _quiet(nodes, settle_s=INTERVAL_S)
        before = [_status(node)["router"] for node in nodes]
        messages, delivered = 200, 0
        for _ in range(messages):
            sender = rng.randrange(count)
            target = rng.choice([i for i in range(count) if i != sender])
            answer = nodes[sender].post("/v1/send", {"to": rng.choice(hosted[target]), "body": {}})
            delivered += answer["outcome"] == "delivered"
        after = [_status(node)["router"] for node in nodes]
        lookups = sum(
            a["dht_lookups"] - b["dht_lookups"] for a, b in zip(after, before, strict=True)
        )
        fps = sum(
            sum(a["false_positives"].values()) - sum(b["false_positives"].values())
            for a, b in zip(after, before, strict=True)
        )
        result["messages"] = messages
        result["delivered"] = delivered
        result["dht_free_fraction"] = round(1 - lookups / messages, 4)
        result["false_positives"] = fps
        print(
            f"{messages} messages to random remote agents: {delivered} delivered, {lookups} DHT "
            f"lookups, DHT-free fraction {result['dht_free_fraction']}, {fps} false positives"
        )
    finally:
        for node in nodes:
            node.kill()
    return result


def main() -> int:
    """Run both parts and print a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--window", type=float, default=30.0)
    args = parser.parse_args()
    summary: dict[str, Any] = {"sizes": sizes()}
    summary["mesh"] = mesh(args.nodes, args.agents, args.window)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
