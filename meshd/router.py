"""Where is agent X? Local registry, then (issue 6) neighbour summaries, then the location
cache, then the agent's record in the DHT. Every path taken is counted, so the node can say
what fraction of its messages needed a DHT lookup.

The router only answers questions; the delivery layer acts on the answers. A `not_here`
answer from a peer makes the delivery layer call `invalidate` and ask once more.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from meshd.clock import WallClock, wall_ms
from protocol.errors import RemoteProtocolError
from protocol.ids import AgentId
from protocol.records import AgentRecord, LifecycleState, agent_record_key

__all__ = ["Route", "Router", "no_dht"]

log = logging.getLogger("meshd.router")

DhtGet = Callable[[str], Awaitable[bytes | None]]


async def no_dht(key: str) -> bytes | None:
    """A DHT that knows nothing (nodes and tests without one)."""
    del key
    return None


Hosts = Callable[[AgentId], bool]


@dataclass(frozen=True, slots=True)
class Route:
    """How to reach an agent: `path` is local, cache, dht or gone; peer and addrs if remote."""

    path: str
    peer_id: str = ""
    addrs: tuple[str, ...] = ()


class Router:
    """Resolves agent ids to the node hosting them, with a bounded location cache."""

    def __init__(
        self,
        hosts: Hosts,
        dht_get: DhtGet,
        *,
        cache_size: int = 100_000,
        cache_ttl_s: float = 600.0,
        lookup_timeout_s: float = 10.0,
        clock: WallClock = wall_ms,
    ) -> None:
        self._hosts = hosts
        self._dht_get = dht_get
        self._cache: OrderedDict[bytes, tuple[str, tuple[str, ...], float]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_ttl_s = cache_ttl_s
        self._lookup_timeout_s = lookup_timeout_s
        self._clock = clock
        self.paths: Counter[str] = Counter()
        self.dht_lookups = 0
        self.dht_failures = 0
        # Called with each DHT lookup's duration in seconds (the metrics histogram).
        self.observe_lookup: Callable[[float], object] = lambda seconds: None

    def learn(self, agent: AgentId, peer_id: str, addrs: tuple[str, ...] = ()) -> None:
        """Remember where an agent lives (from a record, a reply, or a summary hit)."""
        self._cache[agent.raw] = (peer_id, addrs, trio.current_time() + self._cache_ttl_s)
        self._cache.move_to_end(agent.raw)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def invalidate(self, agent: AgentId, peer_id: str | None = None) -> None:
        """Forget a cached location (only if it points at `peer_id`, when given)."""
        cached = self._cache.get(agent.raw)
        if cached is not None and (peer_id is None or cached[0] == peer_id):
            del self._cache[agent.raw]

    def knows(self, agent: AgentId) -> bool:
        """Whether a fresh location of `agent` is cached."""
        cached = self._cache.get(agent.raw)
        return cached is not None and cached[2] > trio.current_time()

    def __len__(self) -> int:
        return len(self._cache)

    async def locate(self, agent: AgentId, *, use_cache: bool = True) -> Route | None:
        """The route to `agent`, or None when no path knows it."""
        if self._hosts(agent):
            self.paths["local"] += 1
            return Route("local")
        if use_cache:
            cached = self._cache.get(agent.raw)
            if cached is not None:
                peer_id, addrs, expires = cached
                if expires > trio.current_time():
                    self.paths["cache"] += 1
                    return Route("cache", peer_id, addrs)
                del self._cache[agent.raw]
        record = await self._lookup(agent)
        if record is None:
            self.paths["unknown"] += 1
            return None
        if record.state is LifecycleState.GONE:
            self.paths["gone"] += 1
            return Route("gone", record.node.text)
        self.learn(agent, record.node.text, record.addrs)
        self.paths["dht"] += 1
        return Route("dht", record.node.text, record.addrs)

    async def _lookup(self, agent: AgentId) -> AgentRecord | None:
        self.dht_lookups += 1
        value = None
        started = trio.current_time()
        with trio.move_on_after(self._lookup_timeout_s):
            value = await self._dht_get(agent_record_key(agent))
        self.observe_lookup(trio.current_time() - started)
        if value is None:
            self.dht_failures += 1
            return None
        try:
            record = AgentRecord.decode(value)
            record.verify(self._clock())
        except RemoteProtocolError as exc:
            # The DHT validator should have refused it; a stale local copy can expire.
            self.dht_failures += 1
            log.info("agent record for %s refused: %s", agent.did, exc)
            return None
        if record.agent != agent:
            self.dht_failures += 1
            return None
        return record

    def stats(self) -> dict[str, object]:
        """Route paths taken and DHT lookups, for status and metrics."""
        return {
            "paths": dict(self.paths),
            "dht_lookups": self.dht_lookups,
            "dht_failures": self.dht_failures,
            "cache_size": len(self._cache),
        }
