"""py-libp2p's clock reads follow trio's MockClock inside `redirect_libp2p_clocks`."""

from __future__ import annotations

import time

import trio
import trio.testing

import meshd.net.libp2p_net  # noqa: F401  (loads the py-libp2p modules a node uses)
from meshd.net.virtual_time import CLOCK_READERS, redirect_libp2p_clocks


def test_libp2p_reads_the_mock_clock_and_gets_the_real_one_back() -> None:
    import libp2p.pubsub.gossipsub as gossipsub
    import libp2p.tools.timed_cache.base_timed_cache as timed_cache

    clock = trio.testing.MockClock(autojump_threshold=0)
    seen: list[tuple[float, float]] = []

    def clocks() -> tuple[float, float]:
        return vars(gossipsub)["time"].monotonic(), vars(timed_cache)["time"].time()

    async def main() -> None:
        before = clocks()
        await trio.sleep(3600)  # an hour of virtual time, no real time
        after = clocks()
        seen.extend([before, after])

    with redirect_libp2p_clocks(clock) as patched:
        assert patched >= len(CLOCK_READERS)
        trio.run(main, clock=clock)
        assert vars(gossipsub)["time"].sleep is time.sleep  # everything else is the real module
    (mono0, wall0), (mono1, wall1) = seen
    assert mono1 - mono0 == 3600.0
    assert abs((wall1 - wall0) - 3600.0) < 1e-3
    assert vars(gossipsub)["time"] is time
    assert vars(timed_cache)["time"] is time
