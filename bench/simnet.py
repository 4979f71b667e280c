"""simnet benchmark: how large an in-process mesh this machine runs, and what it costs.

For each mesh size (nodes, agents spread evenly over them), in a fresh process so that
memory figures are its own, under virtual time (trio MockClock, libp2p's clock reads
redirected; `meshd.net.virtual_time`):
1. start every node (the daemon's composition, `meshd.build.build_node`, over the in-memory
   transport) and spawn the agents; real time to do so;
2. settle: joins, DHT walks, connection trims, first summaries (simulated seconds);
3. memory: resident set size after settling minus before starting, per node and per agent;
4. idle: real seconds per simulated second while nothing is sent (timers, gossip, DHT walks,
   summaries, telemetry), with the connection degree; every phase also in CPU seconds of
   this process, which another process on the machine barely changes (after the start, the
   garbage collector leaves the start's objects alone and runs less often: `GC_THRESHOLDS`);
5. load: the same under a stream of signed messages to random counters (half of them
   at-least-once), with the delivered fraction.
Every node runs with `BENCH_CONFIG` (bounded degree, telemetry scaled to the mesh; printed).
The first size is the baseline, measured in the same run: figures of larger meshes are
given as ratios to it. Every phase is bounded in simulated time, every send in count and
time, every size in real time (`--timeout-s`); a size that runs out of time ends the run
and the largest size that finished is reported. The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

# Run as a script, this file's directory comes first on sys.path, where bench/protocol.py would
# shadow the protocol package; the repository root must win.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

# The baseline, a mid size and the target (--sizes adds others, e.g. 100:50000).
SIZES = ((10, 5_000), (50, 25_000), (200, 100_000))
# Simulated seconds of each phase (--settle-s, --idle-s, --load-s override them): the 200-node
# size takes 680-720 s real on this 2-core machine with these, inside ONE_RUN_TIMEOUT_S.
PHASES = {"settle_s": 20.0, "idle_s": 5.0, "load_s": 5.0}
LOAD_RATE = 100.0  # messages per simulated second, mesh-wide
TARGETS = 50  # counters the load goes to (one per node on up to 50 nodes)
ONE_RUN_TIMEOUT_S = 900.0
GC_THRESHOLDS = (20_000, 10, 10)  # after the start (Python's default: 700, 10, 10)
# Every node's meshd config (a scenario's [node_config]), the same for every size:
# - degree: a real node holds a bounded number of connections, trimmed back to DHT-spread
#   peers (`meshd.net.discovery`), not one to every node; at most 24 even while walks dial;
# - summaries go to peers connected for 5 s, not to every peer a DHT lookup touched for an
#   instant: each first contact costs a whole summary (settle must outlast this: until the
#   first summaries arrive, mass-spawned agents are unreachable, having no DHT record);
# - DHT walks start 5 s apart and joins spread over 5 s (a mesh started all at once);
# - telemetry: every 30 s instead of 5 s (each exchange is a request stream each way, a
#   signed report with two sketches and up to 32 node entries; mesh estimates converge slower).
BENCH_CONFIG: dict[str, Any] = {
    "connections.low_watermark": 8,
    "connections.high_watermark": 16,
    "connections.max": 24,
    "connections.trim_interval_s": 5.0,
    "connections.trim_grace_s": 10.0,
    "summary.neighbour_after_s": 5.0,
    "dht.fast_walk_s": 5.0,
    "dht.join_jitter_s": 5.0,
    "telemetry.interval_s": 30.0,
}


def _rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _note(started: float, text: str) -> None:
    """Progress on stderr: if a size runs out of time, the parent shows how far it got."""
    print(f"[{time.perf_counter() - started:7.1f} s] {text}", file=sys.stderr, flush=True)


# Who dials: the first frame of the dialing task that belongs to one of these modules (a
# trio task's stack ends at its own coroutine, so this is the code that wanted the connection).
_DIAL_CAUSES = (
    ("kad_dht/peer_routing", "dht_lookup"),
    ("kad_dht/value_store.py:_get_from_peer", "dht_get"),
    ("kad_dht/value_store", "dht_store"),
    ("kad_dht/provider_store", "dht_provide"),
    ("kad_dht/routing_table", "dht_ping"),
    ("kad_dht/kad_dht", "dht_other"),
    ("network/auto_connector", "autoconnect"),
    ("meshd/net/discovery", "discovery"),
    ("meshd/net/streams", "messages"),
    ("meshd/net/rpc", "requests"),
    ("pubsub/", "gossip"),
)
DIAL_CAUSES: Counter[str] = Counter()
DIAL_FAILURES: Counter[str] = Counter()  # failed dials by cause, and whether our cap was full


def _count_dial_causes() -> None:
    """Wrap `Swarm.dial_peer` (in this bench process only) to count real dials by cause."""
    from libp2p.network.swarm import Swarm

    original = Swarm.dial_peer

    async def dial_peer(self: Any, peer_id: Any) -> Any:
        if not any(not c.is_closed for c in self.get_connections(peer_id)):
            frame: FrameType | None = sys._getframe(1)
            cause = "other"
            while frame is not None:
                name = f"{frame.f_code.co_filename}:{frame.f_code.co_name}"
                found = next((c for part, c in _DIAL_CAUSES if part in name), None)
                if found is not None:
                    cause = found
                    break
                frame = frame.f_back
            DIAL_CAUSES[cause] += 1
            try:
                return await original(self, peer_id)
            except Exception as exc:
                # Whose connection cap refused it: ours (full when the dial failed), or not.
                full = len(self.get_connections()) >= self.connection_config.max_connections
                DIAL_FAILURES[f"{cause}:{'our_cap' if full else 'other'}"] += 1
                if cause == "messages" and not full:
                    inner = " ".join(str(exc.__cause__ or exc).split())
                    inner = " ".join(w for w in inner.split() if "12D3" not in w)
                    DIAL_FAILURES[f"messages:other:{inner[:100]}"] += 1
                raise
        return await original(self, peer_id)

    Swarm.dial_peer = dial_peer  # type: ignore[method-assign]


def _degree(backend: Any, nodes: int) -> list[int]:
    peers = sorted(len(backend.node(n).peers()) for n in range(nodes))
    return [peers[0], peers[len(peers) // 2], peers[-1]]


# Network counters summed over the nodes (`Libp2pNetwork.stats`), to see what runs at idle.
_NET_COUNTERS = (
    "walks",
    "walks_connected",
    "dials_ok",
    "dials_failed",
    "peers_connected",
    "trimmed",
    "table_evictions",
    "dht_puts",
    "dht_gets",
    "dht_provides",
)


def _coverage(backend: Any, nodes: int, targets: list[tuple[int, str]]) -> dict[str, float]:
    """Per (sending node, target) pair, what the node's neighbour summaries say of the target:
    hosted by a neighbour (level 0), next to one (level 1), two out (level 2), nothing."""
    from protocol.ids import AgentId

    seen: Counter[str] = Counter()
    for n in range(nodes):
        view = backend.node(n).summaries
        for host, to in targets:
            if host == n:
                seen["local"] += 1
                continue
            found = view.candidates(AgentId.from_did(to))
            seen[f"level{found[0][1]}" if found else "none"] += 1
    total = sum(seen.values()) or 1
    return {name: round(count / total, 3) for name, count in sorted(seen.items())}


def _route_totals(backend: Any, nodes: int) -> dict[str, Any]:
    """Route paths, send outcomes and summary figures summed over the nodes."""
    paths: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    summary: Counter[str] = Counter()
    for n in range(nodes):
        status = backend.node(n).status()
        paths.update(status["router"]["paths"])
        sent.update(status["delivery"].get("sent", {}))
        stats = status["summaries"]
        for name in ("summary_bytes", "bytes_out", "locate_queries", "push_failures"):
            summary[name] += int(stats.get(name) or 0)
    return {
        "paths": dict(paths.most_common()),
        "sent": dict(sent.most_common()),
        "summary_bytes_per_node": round(summary["summary_bytes"] / nodes),
        "summary_bytes_out_per_node": round(summary["bytes_out"] / nodes),
        "locate_queries_per_node": round(summary["locate_queries"] / nodes, 2),
        "push_failures_per_node": round(summary["push_failures"] / nodes, 2),
    }


def _causes_since(before: Counter[str], nodes: int) -> dict[str, float]:
    return {c: round(n / nodes, 2) for c, n in (DIAL_CAUSES - before).most_common()}


def _net_totals(backend: Any, nodes: int) -> Counter[str]:
    totals: Counter[str] = Counter()
    for n in range(nodes):
        stats = backend.node(n).status()["network"]
        for name in _NET_COUNTERS:
            totals[name] += int(stats.get(name, 0))
    return totals


async def _measure(
    nodes: int, agents: int, root: Path, phases: dict[str, float], config: dict[str, Any]
) -> dict[str, Any]:
    from simnet.inprocess import in_process
    from simnet.scenario import parse_scenario

    settle_s, idle_s, load_s = phases["settle_s"], phases["idle_s"], phases["load_s"]
    scenario = parse_scenario(
        {"nodes": nodes, "duration_s": load_s, "agents": [], "node_config": config}
    )
    rng = random.Random(1)
    out: dict[str, Any] = {"nodes": nodes, "agents": agents, **phases}
    rss0 = _rss_bytes()
    wall = time.perf_counter()
    _note(wall, f"{nodes} nodes: starting")
    async with in_process(scenario, root, seed=1) as backend:
        for node in range(nodes):
            await backend.start_node(node)
        per_node = agents // nodes
        # The load's targets: one counter on each of TARGETS nodes spread over the mesh, the
        # same hot set at every size, so that the load figures compare across sizes.
        hosts = {node * nodes // min(TARGETS, nodes) for node in range(min(TARGETS, nodes))}
        targets: list[tuple[int, str]] = []
        for node in range(nodes):
            ids = await backend.spawn(node, "counter", per_node, ())
            if node in hosts:
                targets.append((node, ids[0]))
        out["start_real_s"] = round(time.perf_counter() - wall, 2)
        # The nodes and agents live until the end: out of the collector's sight, and
        # collections rarer. Default thresholds: 50 nodes spent 12% of the bench's CPU in
        # the collector, 34 full collections each walking every node's objects (2% after).
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        out["rss_after_start_kb_per_node"] = round((_rss_bytes() - rss0) / nodes / 1024, 1)
        _note(
            wall,
            f"{nodes} nodes: started, {agents} agents, "
            f"{out['rss_after_start_kb_per_node']} KB/node; settling {settle_s} sim s",
        )
        t_real, t_cpu = time.perf_counter(), time.process_time()
        steps = max(1, int(settle_s))
        for step in range(steps):  # joins, walks, trims, first summaries
            await trio.sleep(settle_s / steps)
            if step % 5 == 4 or step == steps - 1:
                _note(wall, f"settle {step + 1}/{steps} sim s, degree {_degree(backend, nodes)}")
        out["settle_real_s_per_sim_s"] = round((time.perf_counter() - t_real) / settle_s, 3)
        out["settle_cpu_s_per_sim_s"] = round((time.process_time() - t_cpu) / settle_s, 3)
        rss = _rss_bytes() - rss0
        out["rss_mb"] = round(rss / 2**20, 1)
        out["kb_per_node"] = round(rss / nodes / 1024, 1)
        out["bytes_per_agent_incl_nodes"] = round(rss / agents, 1)
        out["degree_min_median_max"] = _degree(backend, nodes)
        tables = sorted(backend.node(n).status()["dht_routing_table"] for n in range(nodes))
        out["table_min_median_max"] = [tables[0], tables[len(tables) // 2], tables[-1]]
        out["connections"] = backend.links.connections() // 2

        out["coverage_after_settle"] = _coverage(backend, nodes, targets)
        _note(wall, f"settled: summaries name the targets {out['coverage_after_settle']}")
        out["settle_dials_per_node"] = {
            cause: round(count / nodes, 1) for cause, count in DIAL_CAUSES.most_common()
        }
        chunks0, dials0 = backend.links.counters["bytes"], backend.links.counters["dials"]
        causes0, net0 = Counter(DIAL_CAUSES), _net_totals(backend, nodes)
        t_sim, t_real, t_cpu = trio.current_time(), time.perf_counter(), time.process_time()
        await trio.sleep(idle_s)
        out["idle_cpu_s_per_sim_s"] = round((time.process_time() - t_cpu) / idle_s, 3)
        out["idle_dials_by_cause_per_node_per_sim_s"] = {
            cause: round(count / nodes / idle_s, 3)
            for cause, count in (DIAL_CAUSES - causes0).most_common()
        }
        out["idle_net_per_node_per_sim_s"] = {
            name: round(count / nodes / idle_s, 3)
            for name, count in (_net_totals(backend, nodes) - net0).most_common()
        }
        out["idle_real_s_per_sim_s"] = round((time.perf_counter() - t_real) / idle_s, 3)
        out["idle_kb_per_node_per_sim_s"] = round(
            (backend.links.counters["bytes"] - chunks0) / 1024 / nodes / idle_s, 1
        )
        out["idle_dials_per_node_per_sim_s"] = round(
            (backend.links.counters["dials"] - dials0) / nodes / idle_s, 2
        )
        out["trimmed_per_node"] = round(
            sum(backend.node(n).status()["network"].get("trimmed", 0) for n in range(nodes))
            / nodes,
            1,
        )
        _note(
            wall,
            f"idle done: {out['idle_real_s_per_sim_s']} real s per sim s; per node per sim s: "
            f"dials {out['idle_dials_by_cause_per_node_per_sim_s']}, "
            f"network {out['idle_net_per_node_per_sim_s']}; load",
        )

        limiter = trio.CapacityLimiter(256)
        ok = 0
        outcomes: Counter[str] = Counter()  # of the current phase
        reasons: Counter[str] = Counter()  # of failed sends, by their detail

        async def one(src: int, to: str, reliable: bool, token: object) -> None:
            nonlocal ok
            try:
                with trio.move_on_after(5.0):
                    answer = await backend.send(
                        src, to, {"add": 1}, kind="msg", reliable=reliable, wait=False, timeout=5
                    )
                    outcome = str(answer.get("outcome"))
                    outcomes[outcome] += 1
                    if outcome not in ("delivered", "queued"):
                        # Why: the reason without peer ids (12D3Koo...), to group them.
                        words = str(answer.get("detail", "")).split()
                        reasons[" ".join(w for w in words if "12D3" not in w)[:90]] += 1
                    ok += outcome in ("delivered", "queued")
            finally:
                limiter.release_on_behalf_of(token)

        # First contact, measured apart: a dormant counter's first message activates it, and
        # an activated agent's record goes into the DHT (meshd.publisher), a put at the 20
        # closest peers, each dialed; later messages to it cost none of that.
        causes0 = Counter(DIAL_CAUSES)
        t_sim, t_real, t_cpu = trio.current_time(), time.perf_counter(), time.process_time()
        async with trio.open_nursery() as firsts:
            for _, to in targets:
                token = object()
                await limiter.acquire_on_behalf_of(token)
                firsts.start_soon(one, rng.randrange(nodes), to, False, token)
        out["first_contact_msgs"] = len(targets)
        out["first_contact_delivered"] = ok
        out["first_contact_outcomes"] = dict(outcomes)
        out["first_contact_real_s"] = round(time.perf_counter() - t_real, 1)
        out["first_contact_cpu_s"] = round(time.process_time() - t_cpu, 1)
        out["first_contact_dials_per_node"] = _causes_since(causes0, nodes)
        out["first_contact_sim_s"] = round(trio.current_time() - t_sim, 2)
        out["first_contact_routes"] = _route_totals(backend, nodes)
        out["first_contact_failures"] = dict(reasons.most_common(6))
        out["dial_failures_until_first_contact"] = dict(DIAL_FAILURES.most_common())
        reasons.clear()
        _note(
            wall,
            f"first contact with {len(targets)} counters: {out['first_contact_real_s']} s, "
            f"{out['first_contact_outcomes']}, dials/node {out['first_contact_dials_per_node']}, "
            f"routes {out['first_contact_routes']}, failures {out['first_contact_failures']}, "
            f"failed dials {out['dial_failures_until_first_contact']}",
        )
        await trio.sleep(2.0)  # the records' puts finish

        sent = ok = 0
        outcomes.clear()
        causes0 = Counter(DIAL_CAUSES)
        t_sim, t_real, t_cpu = trio.current_time(), time.perf_counter(), time.process_time()

        async with trio.open_nursery() as sends:
            next_at = t_sim
            cap = int(LOAD_RATE * load_s * 2) + 10  # bounded in count as well as in time
            while trio.current_time() - t_sim < load_s and sent < cap:
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
        out["load_dials_per_node"] = _causes_since(causes0, nodes)
        out["load_outcomes"] = dict(outcomes)
        out["load_real_s_per_sim_s"] = round((time.perf_counter() - t_real) / sim, 3)
        out["load_cpu_s_per_sim_s"] = round((time.process_time() - t_cpu) / sim, 3)
        out["degree_after_load"] = _degree(backend, nodes)
        out["load_routes"] = _route_totals(backend, nodes)
        out["load_failures"] = dict(reasons.most_common(6))
        out["dial_failures_until_load"] = dict(DIAL_FAILURES.most_common())
        out["coverage_after_load"] = _coverage(backend, nodes, targets)
        _note(
            wall,
            f"load done: {out['load_real_s_per_sim_s']} real s per sim s, "
            f"{out['load_outcomes']}, dials/node {out['load_dials_per_node']}, "
            f"routes {out['load_routes']}, failures {out['load_failures']}, "
            f"coverage {out['coverage_after_load']}, "
            f"failed dials {out['dial_failures_until_load']}; stopping",
        )
    return out


def _one(
    nodes: int, agents: int, phases: dict[str, float], config: dict[str, Any]
) -> dict[str, Any]:
    import libp2p  # noqa: F401  (resets its logger on import: quiet it after)

    from simnet.runner import virtual_clock

    _count_dial_causes()
    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="simnet-bench-") as tmp, virtual_clock() as clock:
        result: dict[str, Any] = trio.run(
            _measure, nodes, agents, Path(tmp), phases, config, clock=clock
        )
    return result


def _ratio(value: float, base: float) -> str:
    return f"x{value / base:.2f}" if base else "x-"


def _print_row(row: dict[str, Any], base: dict[str, Any]) -> None:
    nodes, agents, of = row["nodes"], row["agents"], f"of {base['nodes']} nodes"
    idle_node = row["idle_real_s_per_sim_s"] / nodes
    load_node = row["load_real_s_per_sim_s"] / nodes
    print(
        f"{nodes:>4} nodes {agents:>7} agents: start {row['start_real_s']} s real; "
        f"RSS {row['rss_mb']} MB = {row['kb_per_node']} KB/node "
        f"({_ratio(row['kb_per_node'], base['kb_per_node'])} {of}); degree min/median/max "
        f"{row['degree_min_median_max']} ({row['connections']} connections), "
        f"{row['trimmed_per_node']} trims/node"
    )
    print(
        f"      settle {row['settle_real_s_per_sim_s']} real s per sim s; "
        f"idle {row['idle_real_s_per_sim_s']} real s per sim s = {idle_node * 1000:.1f} ms "
        f"per node ({_ratio(idle_node, base['idle_real_s_per_sim_s'] / base['nodes'])} {of}), "
        f"{row['idle_kb_per_node_per_sim_s']} KB/node/sim s on the wire, "
        f"{row['idle_dials_per_node_per_sim_s']} dials/node/sim s"
    )
    print(
        f"      load {LOAD_RATE:.0f} msg/s: {row['load_real_s_per_sim_s']} real s per sim s = "
        f"{load_node * 1000:.1f} ms per node "
        f"({_ratio(load_node, base['load_real_s_per_sim_s'] / base['nodes'])} {of}; "
        f"{_ratio(row['load_real_s_per_sim_s'], row['idle_real_s_per_sim_s'])} of idle), "
        f"{row['load_msgs']} sent, delivered {row['load_delivered_ratio']}; before it, first "
        f"contact with {row['first_contact_msgs']} dormant counters took "
        f"{row['first_contact_real_s']} s real ({row['first_contact_sim_s']} sim s)"
    )


def _print_cpu(row: dict[str, Any]) -> None:
    # CPU seconds of this process (threads included): unlike real time, other processes on
    # the machine barely move them, so runs on a busy machine compare.
    if "load_cpu_s_per_sim_s" in row:
        print(
            f"      CPU s per sim s: settle {row['settle_cpu_s_per_sim_s']}, "
            f"idle {row['idle_cpu_s_per_sim_s']}, load {row['load_cpu_s_per_sim_s']}; "
            f"first contact {row['first_contact_cpu_s']} CPU s"
        )


def _print_causes(row: dict[str, Any]) -> None:
    # Older rows (from before these figures existed) have none of them.
    if "idle_dials_by_cause_per_node_per_sim_s" in row:
        print(
            f"      routing table min/median/max {row['table_min_median_max']}; dials per node "
            f"in settle {row['settle_dials_per_node']}; at idle per node per sim s: dials "
            f"{row['idle_dials_by_cause_per_node_per_sim_s']}, "
            f"network {row['idle_net_per_node_per_sim_s']}; dials per node at first contact "
            f"{row['first_contact_dials_per_node']}, under load {row['load_dials_per_node']}"
        )


def main() -> None:
    """Run each size in a child process; print a table, ratios and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, type=int, metavar=("NODES", "AGENTS"))
    parser.add_argument("--sizes", default=",".join(f"{n}:{a}" for n, a in SIZES))
    parser.add_argument("--config", default="{}", help="JSON: node config keys over BENCH_CONFIG")
    parser.add_argument("--timeout-s", type=float, default=ONE_RUN_TIMEOUT_S)
    for phase, default in PHASES.items():
        parser.add_argument(f"--{phase.replace('_', '-')}", type=float, default=default)
    args = parser.parse_args()
    phases = {phase: float(getattr(args, phase)) for phase in PHASES}
    config = {**BENCH_CONFIG, **json.loads(args.config)}
    if args.one:
        nodes, agents = args.one
        print(json.dumps(_one(nodes, agents, phases, config)))
        return
    flags = [f"--{p.replace('_', '-')}={v}" for p, v in phases.items()]
    flags.append(f"--config={json.dumps(config)}")
    sizes = [tuple(int(x) for x in item.split(":")) for item in args.sizes.split(",")]
    print(
        "simnet bench: in-process; clock: virtual (trio MockClock(autojump_threshold=0), "
        f"libp2p clock reads redirected); simulated seconds per phase {phases}; "
        f"node config {config}; {LOAD_RATE:.0f} msg/s under load; "
        f"each size in its own process, at most {args.timeout_s:.0f} s real"
    )
    rows: list[dict[str, Any]] = []
    unfinished: dict[str, Any] | None = None
    for nodes, agents in sizes:
        started = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", str(nodes), str(agents), *flags],
                stdout=subprocess.PIPE,
                text=True,
                timeout=args.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            print(f"{nodes} nodes / {agents} agents: did not finish in {args.timeout_s:.0f} s")
            unfinished = {"nodes": nodes, "agents": agents, "timeout_s": args.timeout_s}
            break
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            print(f"{nodes} nodes / {agents} agents: failed (exit {proc.returncode})")
            unfinished = {"nodes": nodes, "agents": agents, "exit": proc.returncode}
            break
        row = json.loads(lines[-1])
        row["run_real_s"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        _print_row(row, rows[0])
        _print_cpu(row)
        _print_causes(row)
    largest = rows[-1] if rows else None
    if largest is not None:
        print(
            f"largest mesh run: {largest['nodes']} nodes, {largest['agents']} agents "
            f"({largest['run_real_s']} s real for the whole size); baseline "
            f"{rows[0]['nodes']} nodes in the same run"
        )
    print(
        json.dumps(
            {
                "clock": "virtual",
                "config": config,
                "phases": phases,
                "sizes": rows,
                "largest": largest,
                "unfinished": unfinished,
            }
        )
    )


if __name__ == "__main__":
    main()
