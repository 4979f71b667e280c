"""Connection benchmark: daemon start to listening, dial time, and a 20-daemon mesh's discovery.

1. Time from `meshd run` (process start) until its control API answers, which happens only
   after the network listens: median of a few runs.
2. Dial time to a new peer on loopback (TCP + Noise + yamux + registration), with our
   connection config and with py-libp2p's default config, measured in the same run so the
   ratio means something on any machine (the default waits 250 ms for a second connection).
3. Twenty daemons started at once, nodes 2-20 knowing only node 1: time until every node's
   DHT routing table holds all 19 others, and until every node knows an address for them.

Everything runs on 127.0.0.1, every wait is bounded; the last line is a JSON summary.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
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

from meshd.api.client import ApiClient, ApiError, DaemonNotRunning
from meshd.logs import configure_logging
from meshd.net.host import HostLimits, build_host, dial, multiaddrs

START_RUNS = 3
DIAL_SAMPLES = 12
MESH_SIZE = 20
READY_TIMEOUT_S = 60.0
MESH_TIMEOUT_S = 180.0
LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHD_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _init(data_dir: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "meshd", "init", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=True,
    )
    peer_id: str = json.loads(out.stdout)["peer_id"]
    return peer_id


def _start(data_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    log = (data_dir.parent / f"{data_dir.name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "meshd", "run", "--data-dir", str(data_dir), *args],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=_env(),
    )


def _get(data_dir: Path, path: str) -> Any:
    try:
        with ApiClient(data_dir, timeout=2.0) as client:
            return client.get(path)
    except (DaemonNotRunning, ApiError):
        return None


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def bench_start_to_listening(root: Path) -> list[float]:
    """Seconds from spawning `meshd run` until `/v1/id` answers, for START_RUNS runs."""
    data_dir = root / "start"
    _init(data_dir)
    times = []
    for _ in range(START_RUNS):
        began = time.perf_counter()
        proc = _start(data_dir, "--listen", LOOPBACK)
        try:
            while _get(data_dir, "/v1/id") is None:
                if proc.poll() is not None or time.perf_counter() - began > READY_TIMEOUT_S:
                    raise SystemExit(f"daemon did not come up; see {data_dir}.log")
                time.sleep(0.01)
            times.append(time.perf_counter() - began)
        finally:
            _stop([proc])
    return times


async def _dial_times(limits: HostLimits | None) -> list[float]:
    """Dial DIAL_SAMPLES fresh peers from one host; return each dial's seconds."""
    times = []
    dialer = build_host(os.urandom(32), limits)
    async with dialer.run(multiaddrs([LOOPBACK])):
        for _ in range(DIAL_SAMPLES):
            target = build_host(os.urandom(32), limits)
            async with target.run(multiaddrs([LOOPBACK])):
                addr = str(target.get_addrs()[0])
                with trio.fail_after(10):
                    began = trio.current_time()
                    await dial(dialer, addr)
                    times.append(trio.current_time() - began)
    return times


def bench_dial() -> tuple[list[float], list[float]]:
    """Dial times with our connection config and with py-libp2p's default."""

    async def both() -> tuple[list[float], list[float]]:
        ours = await _dial_times(HostLimits())
        default = await _dial_times(None)
        return ours, default

    return trio.run(both)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def bench_mesh(root: Path) -> dict[str, Any]:
    """Start MESH_SIZE daemons at once; time until every one knows all the others."""
    dirs = [root / f"m{i:02d}" for i in range(MESH_SIZE)]
    ids = [_init(d) for d in dirs]
    port = _free_port()
    seed = f"/ip4/127.0.0.1/tcp/{port}/p2p/{ids[0]}"
    target = MESH_SIZE - 1
    began = time.perf_counter()
    procs = [_start(dirs[0], "--listen", f"/ip4/127.0.0.1/tcp/{port}")]
    procs += [_start(d, "--listen", LOOPBACK, "--bootstrap", seed) for d in dirs[1:]]
    result: dict[str, Any] = {"nodes": MESH_SIZE, "target": target}
    try:
        while time.perf_counter() - began < MESH_TIMEOUT_S:
            now = time.perf_counter() - began
            statuses = [_get(d, "/v1/status") for d in dirs]
            up = [s for s in statuses if s]
            if len(up) == MESH_SIZE:
                result.setdefault("all_up_s", now)
                tables = [s["dht_routing_table"] for s in up]
                known = [s["known_peers"] for s in up]
                if min(tables) >= target:
                    result.setdefault("full_routing_tables_s", now)
                if min(known) >= target:
                    result.setdefault("all_known_s", now)
                result["routing_table_min"] = min(tables)
                result["routing_table_median"] = statistics.median(tables)
                result["connected_median"] = statistics.median(s["peers"] for s in up)
                if "full_routing_tables_s" in result and "all_known_s" in result:
                    break
            dead = [d.name for d, p in zip(dirs, procs, strict=True) if p.poll() is not None]
            if dead:
                raise SystemExit(f"daemons exited early: {dead}; see {root}/*.log")
            time.sleep(0.5)
    finally:
        _stop(procs)
    return result


def main() -> int:
    """Run the three measurements and print them."""
    # The in-process dial bench runs py-libp2p here, and tears each target down while
    # identify may still be running: keep py-libp2p's complaints out of the report.
    configure_logging("warning", "text").quiet = True
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        root = Path(tmp)
        start = bench_start_to_listening(root)
        print(f"meshd run -> listening (API answers): median {statistics.median(start):.2f} s "
              f"over {len(start)} runs ({', '.join(f'{t:.2f}' for t in start)})")
        ours, default = bench_dial()
        ours_ms, default_ms = statistics.median(ours) * 1000, statistics.median(default) * 1000
        print(f"dial a new peer, our config:         median {ours_ms:.1f} ms "
              f"(min {min(ours) * 1000:.1f}, max {max(ours) * 1000:.1f}; target < 50 ms)")
        print(f"dial a new peer, py-libp2p default:  median {default_ms:.1f} ms "
              f"(min {min(default) * 1000:.1f}, max {max(default) * 1000:.1f})")
        print(f"default / ours: {default_ms / ours_ms:.1f}x")
        mesh = bench_mesh(root)
        full = mesh.get("full_routing_tables_s")
        known = mesh.get("all_known_s")
        print(f"{MESH_SIZE} daemons started at once, nodes 2-{MESH_SIZE} know only node 1:")
        print(f"  all APIs up after {mesh.get('all_up_s', float('nan')):.1f} s")
        print(f"  every routing table holds all {mesh['target']} others after "
              + (f"{full:.1f} s" if full else f"> {MESH_TIMEOUT_S:g} s (timed out)"))
        print(f"  every node knows an address for all {mesh['target']} others after "
              + (f"{known:.1f} s" if known else f"> {MESH_TIMEOUT_S:g} s (timed out)"))
        print(f"  routing table min/median {mesh.get('routing_table_min')}/"
              f"{mesh.get('routing_table_median')}, connections median "
              f"{mesh.get('connected_median')}")
        summary = {
            "start_to_listening_s": statistics.median(start),
            "dial_ms_ours": ours_ms,
            "dial_ms_default": default_ms,
            "dial_ratio": default_ms / ours_ms,
            "mesh": mesh,
        }
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
