"""simnet benchmark: how large an in-process mesh this machine runs, and what it costs.

For each mesh size (nodes, agents spread evenly over them), in a fresh process so that
memory figures are its own, under virtual time (trio MockClock, libp2p's clock reads
redirected; `meshd.net.virtual_time`):
1. start every node (the daemon's composition, `meshd.build.build_node`, over the in-memory
   transport) and spawn the agents; real time to do so;
2. memory: resident set size after start minus before, per node and per agent;
3. idle: real seconds per simulated second while nothing is sent (timers, gossip, DHT walks,
   summaries, telemetry);
4. load: the same under a stream of signed messages to random counters (half of them
   at-least-once), with the delivered fraction.
The smallest size is the baseline: per-node figures of larger meshes are given as ratios to
it. Every wait is bounded. The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's directory comes first on sys.path, where bench/protocol.py would
# shadow the protocol package; the repository root must win.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

SIZES = ((10, 5_000), (50, 25_000), (100, 50_000), (200, 100_000))
# Simulated seconds of each phase (--settle-s, --idle-s, --load-s override them).
PHASES = {"settle_s": 10.0, "idle_s": 10.0, "load_s": 10.0}
LOAD_RATE = 100.0  # messages per simulated second, mesh-wide
ONE_RUN_TIMEOUT_S = 1500.0


def _rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def _measure(nodes: int, agents: int, root: Path, phases: dict[str, float]) -> dict[str, Any]:
    from simnet.inprocess import in_process
    from simnet.scenario import parse_scenario

    settle_s, idle_s, load_s = phases["settle_s"], phases["idle_s"], phases["load_s"]
    scenario = parse_scenario({"nodes": nodes, "duration_s": load_s, "agents": []})
    rng = random.Random(1)
    out: dict[str, Any] = {"nodes": nodes, "agents": agents, **phases}
    rss0 = _rss_bytes()
    wall = time.perf_counter()
    async with in_process(scenario, root, seed=1) as backend:
        for node in range(nodes):
            await backend.start_node(node)
        per_node = agents // nodes
        targets: list[tuple[int, str]] = []
        for node in range(nodes):
            ids = await backend.spawn(node, "counter", per_node, ())
            targets.extend((node, agent) for agent in ids[:5])
        out["start_real_s"] = round(time.perf_counter() - wall, 2)
        await trio.sleep(settle_s)  # joins, walks, first summaries
        rss = _rss_bytes() - rss0
        out["rss_mb"] = round(rss / 2**20, 1)
        out["kb_per_node"] = round(rss / nodes / 1024, 1)
        out["bytes_per_agent_incl_nodes"] = round(rss / agents, 1)
        peers = [len(backend.node(n).peers()) for n in range(nodes)]
        out["peers_min_median"] = [min(peers), sorted(peers)[len(peers) // 2]]

        t_sim, t_real = trio.current_time(), time.perf_counter()
        await trio.sleep(idle_s)
        out["idle_real_s_per_sim_s"] = round((time.perf_counter() - t_real) / idle_s, 3)

        sent = ok = 0
        t_sim, t_real = trio.current_time(), time.perf_counter()
        limiter = trio.CapacityLimiter(256)

        async def one(src: int, to: str, reliable: bool, token: object) -> None:
            nonlocal ok
            try:
                with trio.move_on_after(5.0):
                    answer = await backend.send(
                        src, to, {"add": 1}, kind="msg", reliable=reliable, wait=False, timeout=5
                    )
                    ok += answer.get("outcome") in ("delivered", "queued")
            finally:
                limiter.release_on_behalf_of(token)

        async with trio.open_nursery() as sends:
            next_at = t_sim
            while trio.current_time() - t_sim < load_s:
                next_at += rng.expovariate(LOAD_RATE)
                await trio.sleep_until(next_at)
                token = object()
                await limiter.acquire_on_behalf_of(token)
                _, to = rng.choice(targets)
                sends.start_soon(one, rng.randrange(nodes), to, rng.random() < 0.5, token)
                sent += 1
        sim = trio.current_time() - t_sim
        out["load_msgs"] = sent
        out["load_delivered_ratio"] = round(ok / sent, 4) if sent else None
        out["load_real_s_per_sim_s"] = round((time.perf_counter() - t_real) / sim, 3)
    return out


def _one(nodes: int, agents: int, phases: dict[str, float]) -> dict[str, Any]:
    import libp2p  # noqa: F401  (resets its logger on import: quiet it after)

    from simnet.runner import virtual_clock

    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="simnet-bench-") as tmp, virtual_clock() as clock:
        result: dict[str, Any] = trio.run(_measure, nodes, agents, Path(tmp), phases, clock=clock)
    return result


def main() -> None:
    """Run each size in a child process; print a table, ratios and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, type=int, metavar=("NODES", "AGENTS"))
    parser.add_argument("--sizes", default=",".join(f"{n}:{a}" for n, a in SIZES))
    for phase, default in PHASES.items():
        parser.add_argument(f"--{phase.replace('_', '-')}", type=float, default=default)
    args = parser.parse_args()
    phases = {phase: float(getattr(args, phase)) for phase in PHASES}
    if args.one:
        nodes, agents = args.one
        print(json.dumps(_one(nodes, agents, phases)))
        return
    flags = [f"--{p.replace('_', '-')}={v}" for p, v in phases.items()]
    sizes = [tuple(int(x) for x in item.split(":")) for item in args.sizes.split(",")]
    print(
        "simnet bench: in-process, virtual time (trio MockClock, libp2p clocks redirected); "
        f"simulated seconds per phase {phases}"
    )
    rows: list[dict[str, Any]] = []
    for nodes, agents in sizes:
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", str(nodes), str(agents), *flags],
                capture_output=True,
                text=True,
                timeout=ONE_RUN_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            print(f"{nodes} nodes / {agents} agents: did not finish in {ONE_RUN_TIMEOUT_S:.0f} s")
            break
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = "\n".join(proc.stderr.splitlines()[-5:])
            print(f"{nodes} nodes / {agents} agents: failed (exit {proc.returncode})\n{tail}")
            break
        row = json.loads(lines[-1])
        rows.append(row)
        base = rows[0]
        print(
            f"{nodes:>4} nodes {agents:>7} agents: start {row['start_real_s']} s real, "
            f"RSS {row['rss_mb']} MB ({row['kb_per_node']} KB/node, "
            f"x{row['kb_per_node'] / base['kb_per_node']:.2f} of {base['nodes']} nodes), "
            f"peers min/median {row['peers_min_median']}"
        )
        print(
            f"      idle {row['idle_real_s_per_sim_s']} real s per simulated s "
            f"(x{row['idle_real_s_per_sim_s'] / base['idle_real_s_per_sim_s']:.1f} of "
            f"{base['nodes']} nodes); load {LOAD_RATE:.0f} msg/s: "
            f"{row['load_real_s_per_sim_s']} real s per simulated s "
            f"(x{row['load_real_s_per_sim_s'] / row['idle_real_s_per_sim_s']:.2f} of idle), "
            f"delivered {row['load_delivered_ratio']}"
        )
    largest = rows[-1] if rows else None
    print(json.dumps({"sizes": rows, "largest": largest}))


if __name__ == "__main__":
    main()
