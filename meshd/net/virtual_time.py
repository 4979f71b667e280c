"""Redirect py-libp2p's direct clock reads to a trio clock, for simnet's virtual time.

Why this module exists: under `trio.testing.MockClock` trio's timers follow the mock
clock, but about 40 py-libp2p 0.8.1 modules also read `time.time()` / `time.monotonic()`
directly (GossipSub heartbeats and mesh backoffs, seen-message caches, Kademlia record
expiry and refresh, the swarm's connection bookkeeping, the resource manager's token
buckets). With real time in those reads and mock time in the timers, GossipSub meshes
misbehave (LIBP2P.md, "In-memory transport and virtual time"). Every one of them does
`import time`, so we replace that module global, in every loaded `libp2p.*` module, by a
proxy whose `time`, `monotonic` and `perf_counter` (and `_ns` forms) read the given clock;
everything else (`sleep`, `strftime`, ...) is the real `time` module.

This is process-wide while `redirect_libp2p_clocks` is active, on purpose: one process runs
one simulation. It fails loudly if a module we know to read the clock no longer has a
`time` global (a new py-libp2p layout), instead of running a half-virtual simulation.
"""

from __future__ import annotations

import importlib
import sys
import time as _real_time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["CLOCK_READERS", "redirect_libp2p_clocks"]

# Modules of py-libp2p 0.8.1 that a meshd node loads and that read the clock directly.
CLOCK_READERS = (
    "libp2p.pubsub.gossipsub",
    "libp2p.pubsub.pubsub",
    "libp2p.pubsub.floodsub",
    "libp2p.tools.timed_cache.base_timed_cache",
    "libp2p.tools.timed_cache.first_seen_cache",
    "libp2p.tools.timed_cache.last_seen_cache",
    "libp2p.kad_dht.kad_dht",
    "libp2p.kad_dht.routing_table",
    "libp2p.kad_dht.value_store",
    "libp2p.kad_dht.provider_store",
    "libp2p.discovery.random_walk.rt_refresh_manager",
    "libp2p.network.swarm",
    "libp2p.network.auto_connector",
    "libp2p.network.connection_pruner",
    "libp2p.network.connection.swarm_connection",
    "libp2p.network.tag_store",
    "libp2p.peer.peerdata",
    "libp2p.host.ping",
    "libp2p.security.noise.rekey",
    "libp2p.rcmgr.token_bucket",
    "libp2p.rcmgr.rate_limiter",
    "libp2p.rcmgr.circuit_breaker",
    "libp2p.rcmgr.connection_tracker",
)


class _ClockTime(types.ModuleType):
    """A stand-in for the `time` module whose clock reads come from a trio clock."""

    def __init__(self, clock: Any) -> None:
        super().__init__("time")
        self._clock = clock
        # Wall time starts at the real wall time and advances with the clock.
        self._epoch: float = _real_time.time() - float(clock.current_time())

    def __getattr__(self, name: str) -> Any:
        return getattr(_real_time, name)

    def monotonic(self) -> float:
        """The trio clock (readable from worker threads too)."""
        return float(self._clock.current_time())

    def perf_counter(self) -> float:
        """The trio clock."""
        return float(self._clock.current_time())

    def time(self) -> float:
        """Wall time that advances with the trio clock."""
        return self._epoch + float(self._clock.current_time())

    def monotonic_ns(self) -> int:
        """`monotonic()` in nanoseconds."""
        return int(self.monotonic() * 1e9)

    def perf_counter_ns(self) -> int:
        """`perf_counter()` in nanoseconds."""
        return int(self.perf_counter() * 1e9)

    def time_ns(self) -> int:
        """`time()` in nanoseconds."""
        return int(self.time() * 1e9)


@contextmanager
def redirect_libp2p_clocks(clock: Any) -> Iterator[int]:
    """While active, py-libp2p reads `clock` for time; yields how many modules it patched."""
    proxy = _ClockTime(clock)
    for name in CLOCK_READERS:
        module = importlib.import_module(name)
        if getattr(module, "time", None) is not _real_time:
            raise RuntimeError(
                f"{name} has no `time` module global: unknown py-libp2p layout, "
                "virtual time would be half real; refusing to run"
            )
    patched: list[types.ModuleType] = []
    for name, module in list(sys.modules.items()):
        if name.startswith("libp2p") and getattr(module, "time", None) is _real_time:
            module.time = proxy  # type: ignore[attr-defined]
            patched.append(module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            module.time = _real_time  # type: ignore[attr-defined]
