"""`make run`: three real daemons on loopback whose agents find and message each other.

It starts three `meshd run` processes with their own data directories (in a temporary
directory, removed afterwards), lets them discover each other through the DHT, spawns agents
on each, and has them exchange direct messages, requests and relayed requests across nodes,
publishes one message on a topic that a subscribed agent on every node receives, then prints
what happened (outcomes, route paths, latencies) and stops every daemon cleanly.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from meshd.localmesh import DaemonFailed, LocalDaemon, start_mesh, wait_until

NAMES = ("alpha", "beta", "gamma")
ROUNDS = 20
TOPIC = "demo/news"


def _say(text: str) -> None:
    print(text, flush=True)


def _spawn(node: LocalDaemon, kind: str, **fields: Any) -> str:
    answer = node.post("/v1/agents", {"kind": kind, **fields})
    agent: str = answer["agents"][0]["id"]
    return agent


def _send(node: LocalDaemon, to: str, body: Any, **fields: Any) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    result: dict[str, Any] = node.post("/v1/send", {"to": to, "body": body, **fields})
    return result, (time.perf_counter() - start) * 1000


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def run(root: Path) -> int:
    """Run the demo mesh under `root`; return an exit status."""
    _say("starting 3 daemons on 127.0.0.1 ...")
    nodes = start_mesh(root, NAMES, "--log-level", "warning")
    try:
        alpha, beta, gamma = nodes
        for node in nodes:
            _say(f"  {node.data_dir.name:<6} {node.peer_id}  {node.addrs[0]}")
        wait_until(
            lambda: all(len(n.peer_ids()) >= 2 for n in nodes),
            timeout=30,
            what="every daemon to see the other two",
        )
        _say("discovery: every daemon is connected to the other two")

        echo = _spawn(beta, "echo")
        counter = _spawn(gamma, "counter")
        relay = _spawn(gamma, "relay", state={"target": echo})
        _say(f"spawned echo on beta {echo[-8:]}, counter and relay on gamma {counter[-8:]}")

        outcomes: dict[str, int] = {}
        latencies: dict[str, list[float]] = {"echo": [], "counter": [], "relay": []}
        for i in range(ROUNDS):
            for label, target, body in (
                ("echo", echo, {"ping": i}),
                ("counter", counter, {"add": 1}),
                ("relay", relay, {"payload": {"via-relay": i}}),
            ):
                kind = "req" if label == "counter" else "msg"
                result, ms = _send(alpha, target, body, wait=True, kind=kind, timeout=10)
                outcomes[result["outcome"]] = outcomes.get(result["outcome"], 0) + 1
                if "reply" in result:
                    latencies[label].append(ms)
        last, _ = _send(alpha, relay, {"payload": "hello through a relay"}, wait=True)
        _say(f"relay answered: {last.get('reply', {}).get('body')}")
        count, _ = _send(alpha, counter, {"add": 0}, wait=True, kind="req")
        _say(f"counter on gamma counted {count.get('reply', {}).get('body')}")

        _say("\nmessages from alpha's operator (request -> reply, through the control API):")
        for label, values in latencies.items():
            if values:
                p50, p99 = statistics.median(values), _percentile(values, 0.99)
                _say(f"  {label:<8} {len(values):>3} replies  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms")
            else:
                _say(f"  {label:<8}   0 replies")
        _say(f"  outcomes: {outcomes}")
        for node in nodes:
            status = node.get("/v1/status")
            routes = status.get("router", {}).get("paths", {})
            agents = status.get("agents", {})
            _say(
                f"  {node.data_dir.name:<6} agents {agents.get('total', 0)}"
                f" (active {agents.get('active', 0)})  routes {routes}"
            )
        # Pub/sub: one counter per node subscribes to a topic; one publication reaches all.
        listeners = [_spawn(node, "counter") for node in nodes]
        for node, listener in zip(nodes, listeners, strict=True):
            node.post(f"/v1/agents/{listener}/subscribe", {"topic": TOPIC})
        time.sleep(2.5)  # GossipSub meshes form on the 1 s heartbeat

        def counted() -> list[Any]:
            return [
                _send(node, listener, {"add": 0}, wait=True, kind="req")[0]
                .get("reply", {})
                .get("body", {})
                .get("count")
                for node, listener in zip(nodes, listeners, strict=True)
            ]

        gamma.post("/v1/send", {"topic": TOPIC, "body": {"add": 1}})
        reached = wait_until(
            lambda: (lambda c: c if all(n == 1 for n in c) else None)(counted()),
            timeout=15,
            what="the topic message to reach every subscriber",
        )
        _say(f"topic {TOPIC!r}: one publication from gamma counted on {len(reached)} nodes")

        replies = sum(len(v) for v in latencies.values())
        ok = replies == 3 * ROUNDS
        _say("\nthe mesh works" if ok else f"\nonly {replies} of {3 * ROUNDS} requests answered")
        return 0 if ok else 1
    finally:
        for node in nodes:
            node.terminate()
        codes = [node.wait() for node in nodes]
        _say(f"stopped all daemons (exit codes {codes})")


def main() -> int:
    """Run the demo in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="meshd-demo-") as root:
        try:
            return run(Path(root))
        except (DaemonFailed, TimeoutError) as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
