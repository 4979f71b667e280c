"""Agent runtime benchmark: spawn rate, memory per dormant and active agent, activation latency.

One run, ratios against baselines measured in the same run:
- spawn rate through the runtime (keys, sealing, durable insert, index) against the raw rate
  of the same work done directly (libsodium keygen + SQLite executemany, one transaction);
- resident memory per dormant agent with N agents on one node (target <= 300 B), and per
  active idle agent (target <= 4 KB), from RSS deltas after a garbage collection;
- activation latency of a dormant agent (message delivered -> handler running).

`python bench/agents.py [N]` (default 1,000,000 agents; set MESHD_BENCH_AGENTS for less).
"""

from __future__ import annotations

import gc
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio.lowlevel

from meshd.runtime.keys import KeyVault, generate_agent_keys
from meshd.runtime.runtime import Runtime, RuntimeSettings
from meshd.runtime.sdk import Agent, Context, Message
from meshd.store import Store
from protocol.envelope import Envelope
from protocol.ids import AgentId, SigningKey

NODE = SigningKey.from_seed(b"B" * 32)
CLIENT = SigningKey.from_seed(b"c" * 32)
_HANDLED: list[float] = []


class Ping(Agent):
    """Notes when its handler ran."""

    async def on_message(self, ctx: Context, msg: Message) -> None:
        _HANDLED.append(trio.current_time())


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def raw_spawn_rate(n: int, path: Path) -> float:
    """Keygen + seal + one-transaction executemany, no runtime: the floor we compare with."""
    vault = KeyVault(NODE)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE a (id BLOB PRIMARY KEY, kind TEXT, secret BLOB, state BLOB)")
    start = time.perf_counter()
    pairs = generate_agent_keys(n)
    sealed = vault.seal_many([seed for seed, _ in pairs])
    with conn:
        conn.executemany(
            "INSERT INTO a VALUES (?, ?, ?, ?)",
            ((pub, "echo", sec, b"\xa0") for (_, pub), sec in zip(pairs, sealed, strict=True)),
        )
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


async def runtime_figures(n: int, path: Path) -> dict[str, float]:
    """Spawn n agents through the runtime and measure rate, memory and activation."""
    figures: dict[str, float] = {}
    settings = RuntimeSettings(
        max_agents=n + 100_000,
        spawn_rate=1e9,
        spawn_burst=1e9,
        max_active=100_000,
        idle_evict_s=3600,
    )
    async with Store(path) as store, trio.open_nursery() as nursery:
        runtime = Runtime(store, NODE, settings)
        await nursery.start(runtime.serve)
        gc.collect()
        rss0 = rss_bytes()
        start = trio.current_time()
        done = 0
        chunk = 20_000  # what `meshd agent spawn --count` sends per request
        while done < n:
            size = min(chunk, n - done)
            await runtime.spawn("bench.agents:Ping", count=size)
            done += size
        figures["spawn_per_s"] = n / (trio.current_time() - start)
        gc.collect()
        figures["dormant_bytes_per_agent"] = (rss_bytes() - rss0) / n

        # activation latency, one dormant agent at a time
        ids = [AgentId(raw) for raw in list(runtime.agent_ids())[:2_000]]
        latencies = []
        for agent in ids[:500]:
            envelope = Envelope.create(CLIENT, agent, "msg", {}, now_ms=runtime.clock())
            _HANDLED.clear()
            begin = trio.current_time()
            await runtime.deliver(envelope)
            with trio.fail_after(10):
                while not _HANDLED:
                    await trio.lowlevel.checkpoint()
            latencies.append(_HANDLED[0] - begin)
        latencies.sort()
        figures["activation_p50_ms"] = statistics.median(latencies) * 1000
        figures["activation_p99_ms"] = latencies[int(len(latencies) * 0.99) - 1] * 1000

        # active idle agents: activate many, let them go idle, measure the RSS delta
        await runtime.evict_all()
        active_n = min(10_000, n)
        targets = [AgentId(raw) for raw in list(runtime.agent_ids())[:active_n]]
        envelopes = [
            Envelope.create(CLIENT, agent, "msg", {}, now_ms=runtime.clock()) for agent in targets
        ]
        gc.collect()
        rss1 = rss_bytes()
        _HANDLED.clear()
        for envelope in envelopes:
            await runtime.deliver(envelope)
        with trio.fail_after(120):
            while len(_HANDLED) < active_n:  # noqa: ASYNC110 - bounded above
                await trio.sleep(0.01)
        gc.collect()
        figures["active_idle_bytes_per_agent"] = (rss_bytes() - rss1) / active_n
        figures["active_agents"] = float(runtime.counts()["active"])
        nursery.cancel_scope.cancel()
    return figures


def main() -> int:
    """Run and print the agent figures."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("MESHD_BENCH_AGENTS", 10**6))
    with tempfile.TemporaryDirectory() as tmp:
        raw_n = min(n, 100_000)
        raw = raw_spawn_rate(raw_n, Path(tmp) / "raw.db")
        figures: dict[str, Any] = trio.run(runtime_figures, n, Path(tmp) / "meshd.db")
    print(f"agents on the node                 {n:>12,}")
    print(f"raw keygen+seal+insert             {raw:>12,.0f} /s  (baseline, {raw_n:,} agents)")
    print(
        f"runtime spawn                      {figures['spawn_per_s']:>12,.0f} /s  (target 10,000)"
    )
    print(f"  ratio spawn / raw                {figures['spawn_per_s'] / raw:>12.2f}")
    print(
        f"RSS per dormant agent              {figures['dormant_bytes_per_agent']:>12,.0f} B"
        "  (target <= 300)"
    )
    print(
        f"RSS per active idle agent          {figures['active_idle_bytes_per_agent']:>12,.0f} B"
        "  (target <= 4,096)"
    )
    print(f"activation latency p50             {figures['activation_p50_ms']:>12.3f} ms")
    print(f"activation latency p99             {figures['activation_p99_ms']:>12.3f} ms")
    return 0


if __name__ == "__main__":
    # Run as the importable module, so the runtime's `bench.agents:Ping` and this code share
    # one module (and one _HANDLED list).
    from bench.agents import main as module_main

    sys.exit(module_main())
