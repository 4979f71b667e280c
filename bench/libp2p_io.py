"""py-libp2p stream costs with and without meshd's I/O fixes (meshd/net/libp2p_io.py).

Two hosts in one process, on loopback, one yamux stream over Noise between them:
1. ping-pong: a 300-byte message (about a signed envelope in its frame) written and echoed
   back, one at a time: CPU per round trip (both hosts' share; one process, so CPU time and
   wall time agree) and the WINDOW_UPDATEs the echoing side sent;
2. bulk: 16 MiB one way in 64 KiB writes, read 64 KiB at a time: MiB/s.

Each variant runs in a process of its own, because the fixes patch py-libp2p's classes
for the whole process: first py-libp2p as it is, then with `libp2p_io.install()`, in
alternation, `ROUNDS` times; the median of each is reported with the ratio of the two, so
the figures mean something on a noisy machine. Everything is bounded in time; the last
line is a JSON summary.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# Run as a script, this file's directory comes first on sys.path, where bench/protocol.py would
# shadow the protocol package; the repository root must win.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

ROUNDS = 3
PING_PONGS = 2_000
WARMUP = 200
MESSAGE = 300
BULK_BYTES = 16 * 1024 * 1024
CHUNK = 65536
STEP_TIMEOUT_S = 60.0
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
PROTOCOL = "/meshd/bench/io/1.0.0"


def _window_updates(stream: Any) -> int:
    """WINDOW_UPDATEs a py-libp2p yamux stream sent after reads (its own counters)."""
    return sum(
        getattr(stream, f"_window_update_{kind}")
        for kind in ("full_grow", "pending_flush", "partial_slack", "bytes_read_only")
    )


async def _measure(fixed: bool) -> dict[str, float]:
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from multiaddr import Multiaddr

    from meshd.logs import configure_logging
    from meshd.net.host import HostLimits, build_host

    configure_logging("warning", "text").quiet = True
    a = build_host(os.urandom(32), HostLimits(), io_fixes=fixed)
    b = build_host(os.urandom(32), HostLimits(), io_fixes=fixed)
    served: list[Any] = []

    async def echo(stream: Any) -> None:
        served.append(stream.muxed_stream)
        try:
            while data := await stream.read(CHUNK):
                if data == b"bulk":
                    seen = 0
                    while seen < BULK_BYTES:
                        seen += len(await stream.read(CHUNK))
                    await stream.write(b"done")
                else:
                    await stream.write(data)
        except Exception:  # the bench resets the stream when done
            return

    out: dict[str, float] = {}
    async with a.run([Multiaddr(LOOPBACK)]), b.run([Multiaddr(LOOPBACK)]):
        b.set_stream_handler(TProtocol(PROTOCOL), echo)
        with trio.fail_after(STEP_TIMEOUT_S):
            info = info_from_p2p_addr(Multiaddr(f"{b.get_addrs()[0]}"))
            await a.connect(info)
            stream = await a.new_stream(info.peer_id, [TProtocol(PROTOCOL)])
            payload = b"m" * MESSAGE
            for _ in range(WARMUP):
                await stream.write(payload)
                await stream.read(CHUNK)
            updates = _window_updates(served[0])
            cpu = time.process_time()
            for _ in range(PING_PONGS):
                await stream.write(payload)
                await stream.read(CHUNK)
            out["cpu_us_per_round_trip"] = (time.process_time() - cpu) / PING_PONGS * 1e6
            updates = _window_updates(served[0]) - updates
            out["window_updates_per_round_trip"] = updates / PING_PONGS
            await stream.write(b"bulk")
            blob = os.urandom(CHUNK)
            began = time.perf_counter()
            for _ in range(BULK_BYTES // CHUNK):
                await stream.write(blob)
            await stream.read(64)
            out["bulk_mib_per_s"] = BULK_BYTES / (time.perf_counter() - began) / 2**20
            await stream.reset()
    return out


def _child(fixed: bool, conn: Connection) -> None:
    conn.send(trio.run(_measure, fixed))


def _run(fixed: bool) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(fixed, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(STEP_TIMEOUT_S * 3):
            raise SystemExit("the measuring process did not answer")
        result: dict[str, float] = parent.recv()
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    return result


def main() -> int:
    """Run both variants in alternation; print the medians and their ratios."""
    runs: dict[str, list[dict[str, float]]] = {"as_is": [], "fixed": []}
    for _ in range(ROUNDS):
        runs["as_is"].append(_run(False))
        runs["fixed"].append(_run(True))
    med = {
        variant: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for variant, results in runs.items()
    }
    as_is, fixed = med["as_is"], med["fixed"]
    print(f"py-libp2p ping-pong of {MESSAGE} B, {PING_PONGS} round trips, median of {ROUNDS}:")
    for name, figures in (("as is", as_is), ("with meshd's fixes", fixed)):
        print(
            f"  {name:20s} {figures['cpu_us_per_round_trip']:7.0f} us CPU per round trip, "
            f"{figures['window_updates_per_round_trip']:.3f} WINDOW_UPDATEs each, "
            f"bulk {figures['bulk_mib_per_s']:6.1f} MiB/s"
        )
    cpu_ratio = fixed["cpu_us_per_round_trip"] / as_is["cpu_us_per_round_trip"]
    bulk_ratio = fixed["bulk_mib_per_s"] / as_is["bulk_mib_per_s"]
    print(f"  ratio fixed / as is: CPU per round trip {cpu_ratio:.2f}, bulk rate {bulk_ratio:.2f}")
    summary = {"as_is": as_is, "fixed": fixed, "cpu_ratio": round(cpu_ratio, 3),
               "bulk_ratio": round(bulk_ratio, 3), "rounds": ROUNDS}  # fmt: skip
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
