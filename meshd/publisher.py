"""Which agents get a record in the DHT, when, and how fast (see docs/publication.md).

One DHT record per agent cannot scale to a million agents per node: a put reaches the 20
closest peers and costs hundreds of milliseconds, and records expire after a day. So records
are published only where they buy reachability that summaries do not give, in priority order:

0. migrated: the agent's location changed; stale records would misroute senders;
1. tombstone: a deleted agent that had a record gets a `gone` record, so senders stop;
2. spawned: agents from small spawns (interactive, named, or a handful at a time);
3. activated: an agent that just did work (it sends, so peers will answer it);
4. refresh: records of agents active within the last record lifetime, before they expire.

Mass spawns (thousands at once) and agents that stay dormant get no record: neighbours find
them through node summaries (issue 6). Puts go through a token bucket (`rate` per second),
the queue is bounded (lower priorities are dropped first, and counted), and an agent queued
twice is published once, at its best priority.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import trio

from meshd.clock import WallClock, wall_ms
from meshd.runtime.lifecycle import UnknownAgent
from meshd.runtime.quota import TokenBucket
from meshd.runtime.records import RECORD_TTL_MS, build_record
from meshd.runtime.runtime import Runtime
from protocol.ids import AgentId
from protocol.records import agent_record_key

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = ["ACTIVATED", "MIGRATED", "REFRESH", "SPAWNED", "TOMBSTONE", "Publisher"]

log = logging.getLogger("meshd.publisher")

MIGRATED, TOMBSTONE, SPAWNED, ACTIVATED, REFRESH = 0, 1, 2, 3, 4
PRIORITY_NAMES = ("migrated", "tombstone", "spawned", "activated", "refresh")
SMALL_SPAWN = 16  # spawns of at most this many agents publish each agent's record

DhtPut = Callable[[str, bytes], Awaitable[None]]


class Publisher:
    """Publishes agent records to the DHT under the policy above; also the runtime's listener."""

    def __init__(
        self,
        runtime: Runtime,
        dht_put: DhtPut,
        addrs: Callable[[], Sequence[str]],
        *,
        rate: float = 20.0,
        burst: float = 100.0,
        queue_limit: int = 10_000,
        put_timeout_s: float = 30.0,
        refresh_check_s: float = 60.0,
        clock: WallClock = wall_ms,
    ) -> None:
        self._runtime = runtime
        self._put = dht_put
        self._addrs = addrs
        self._bucket = TokenBucket(rate, burst)
        self._queue_limit = queue_limit
        self._put_timeout_s = put_timeout_s
        self._refresh_check_s = refresh_check_s
        self._clock = clock
        self._heap: list[tuple[int, int, bytes]] = []
        self._queued: dict[bytes, int] = {}
        self._prebuilt: dict[bytes, bytes] = {}
        self._counter = 0
        self._wakeup = trio.Event()
        # agent -> (trio time its record should be refreshed, trio time it was last active)
        self._published: dict[bytes, tuple[float, float]] = {}
        self.published: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.failures = 0
        self._publishing = 0  # records being built or put right now (0 or 1)

    # -- the runtime's listener ----------------------------------------------------------

    def spawned(self, agents: Sequence[bytes]) -> None:
        """Agents were spawned: small spawns are published."""
        if len(agents) <= SMALL_SPAWN:
            for raw in agents:
                self.request(AgentId(raw), SPAWNED)

    def activated(self, agent: AgentId) -> None:
        """An agent became active: publish it unless its record is fresh."""
        entry = self._published.get(agent.raw)
        now = trio.current_time()
        if entry is None:
            self.request(agent, ACTIVATED)
        else:
            self._published[agent.raw] = (entry[0], now)

    def migrated(self, agent: AgentId, arrived: bool) -> None:
        """A migration: the migrator publishes the agent's new record itself (`moved`)."""
        del agent, arrived

    async def deleting(self, agent: AgentId) -> None:
        """An agent is about to be deleted: sign its tombstone while its key still exists."""
        if agent.raw not in self._published and agent.raw not in self._queued:
            return
        try:
            record = await build_record(
                self._runtime, agent, self._addrs(), now_ms=self._clock(), gone=True
            )
        except UnknownAgent:
            return
        self._prebuilt[agent.raw] = record.encoded
        self._published.pop(agent.raw, None)
        self.request(agent, TOMBSTONE)

    def moved(self, agent: AgentId) -> None:
        """An agent arrived here by migration: publish its new location first."""
        self.request(agent, MIGRATED)

    # -- queue ---------------------------------------------------------------------------

    def request(self, agent: AgentId, priority: int) -> bool:
        """Queue the agent's record at `priority`; False if the queue is full (counted)."""
        current = self._queued.get(agent.raw)
        if current is not None and current <= priority:
            return True
        if current is None and len(self._queued) >= self._queue_limit and priority > TOMBSTONE:
            self.dropped[PRIORITY_NAMES[priority]] += 1
            return False
        self._queued[agent.raw] = priority
        self._counter += 1
        heapq.heappush(self._heap, (priority, self._counter, agent.raw))
        self._wakeup.set()
        return True

    def queue_depth(self) -> int:
        """How many records wait to be published."""
        return len(self._queued)

    # -- service -------------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish queued records at the allowed rate, and refresh live ones, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._refresh_loop)
            task_status.started()
            while True:
                if not self._heap:
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                    continue
                priority, _, raw = heapq.heappop(self._heap)
                if self._queued.get(raw) != priority:
                    continue  # superseded by a better priority, already handled
                del self._queued[raw]
                wait = self._bucket.wait_time(1, trio.current_time())
                if wait > 0:
                    await trio.sleep(wait)
                self._bucket.try_take(1, trio.current_time())
                self._publishing += 1
                try:
                    await self._publish(AgentId(raw), priority)
                finally:
                    self._publishing -= 1

    async def _publish(self, agent: AgentId, priority: int) -> None:
        encoded = self._prebuilt.pop(agent.raw, None)
        if encoded is None:
            if not self._runtime.hosts(agent):
                return  # deleted or moved away since it was queued
            try:
                record = await build_record(
                    self._runtime, agent, self._addrs(), now_ms=self._clock()
                )
            except UnknownAgent:
                return
            encoded = record.encoded
        succeeded = False
        with trio.move_on_after(self._put_timeout_s):
            try:
                await self._put(agent_record_key(agent), encoded)
                succeeded = True
            except Exception as exc:  # the DHT reports failures in many shapes; count them all
                log.info("publishing %s failed: %s", agent.did, exc)
        if not succeeded:
            self.failures += 1
            return
        self.published[PRIORITY_NAMES[priority]] += 1
        if priority != TOMBSTONE:
            now = trio.current_time()
            refresh_at = now + RECORD_TTL_MS / 1000 * 0.75
            last_active = self._published.get(agent.raw, (0.0, now))[1]
            self._published[agent.raw] = (refresh_at, last_active)

    async def _refresh_loop(self) -> None:
        while True:
            await trio.sleep(self._refresh_check_s)
            now = trio.current_time()
            horizon = RECORD_TTL_MS / 1000
            for raw, (refresh_at, last_active) in list(self._published.items()):
                if refresh_at > now:
                    continue
                if now - last_active > horizon or not self._runtime.hosts(AgentId(raw)):
                    del self._published[raw]  # dormant for a whole record lifetime: let it lapse
                    continue
                self.request(AgentId(raw), REFRESH)

    def stats(self) -> dict[str, object]:
        """Counters for status and metrics."""
        return {
            "published": dict(self.published),
            "dropped": dict(self.dropped),
            "failures": self.failures,
            "queued": len(self._queued),
            "publishing": self._publishing,
            "tracked": len(self._published),
        }
