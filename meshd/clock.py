"""The one place meshd reads the wall clock.

Timestamps that travel (envelope created/expires, record expiry, TTL deadlines kept across
restarts) are wall-clock milliseconds since the Unix epoch. Everything that only measures
intervals inside one process uses `trio.current_time()`, so simnet's virtual time works.
Services take a `WallClock` so that simnet can hand them one derived from the trio clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["WallClock", "wall_ms"]

WallClock = Callable[[], int]


def wall_ms() -> int:
    """Milliseconds since the Unix epoch, from the system clock."""
    return time.time_ns() // 1_000_000
