"""Where is agent X? Local registry, then (issue 6) neighbour summaries, then the location
cache, then the neighbours asked, then the agent's record in the DHT. Every path taken is
counted, so the node can say what fraction of its messages needed a DHT lookup.

A neighbour's summary names what it hosts and (level 1) what its own neighbours host: two
hops. When no summary names the agent at all, the router asks its neighbours, a few at a
time: each answers from its own neighbours' summaries, so a level-1 match there points at a
node next to the host, three hops out, which is then asked for the host. Mass-spawned agents
have no DHT record, so in a mesh wider than two hops this is their only way to be found; it
costs a few small requests, and the answer goes into the location cache.

The router only answers questions; the delivery layer acts on the answers. A `not_here`
answer from a peer makes the delivery layer call `invalidate` and ask once more.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from meshd.clock import WallClock, wall_ms
from protocol.errors import RemoteProtocolError
from protocol.ids import AgentId
from protocol.records import AgentRecord, LifecycleState, agent_record_key
from protocol.summary import Located

__all__ = ["Route", "Router", "SummaryView", "no_dht"]

log = logging.getLogger("meshd.router")

DhtGet = Callable[[str], Awaitable[bytes | None]]


async def no_dht(key: str) -> bytes | None:
    """A DHT that knows nothing (nodes and tests without one)."""
    del key
    return None


Hosts = Callable[[AgentId], bool]

_HANDED_MAX = 4096  # summary routes remembered, to tell a false positive by its not_here
_EXCLUDED_MAX = 4096
# Asking around: neighbours asked at once, and at most this many in all (waves of _WAVE).
_WAVE = 4
_AROUND_MAX = 12
_FURTHER_MAX = 3  # nodes next to the host (from the answers) asked for the host itself


class SummaryView(Protocol):
    """What the router needs of the neighbours' summaries (`meshd.summaries.Summaries`)."""

    def candidates(self, agent: AgentId) -> list[tuple[str, int]]:
        """Neighbours whose summary matches, as (peer, level): 0 hosts it, 1+ hops beyond."""
        ...

    def addrs_of(self, peer_id: str) -> tuple[str, ...]:
        """Known addresses of a peer."""
        ...

    async def ask_locate(self, peer_id: str, agent: AgentId) -> Sequence[Located]:
        """Ask a neighbour which of its neighbours may host `agent`."""
        ...

    def count_false_positive(self) -> None:
        """A summary match was answered not_here."""
        ...

    def neighbours(self) -> list[str]:
        """Connected neighbours whose summary we hold (those a locate query can be sent to)."""
        ...


@dataclass(frozen=True, slots=True)
class Route:
    """How to reach an agent: `path` is local, summary, summary-2hop, summary-3hop (asked
    around), cache, dht or gone."""

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
        summaries: SummaryView | None = None,
        exclude_s: float = 60.0,
    ) -> None:
        self._hosts = hosts
        self.summaries = summaries
        self._exclude_s = exclude_s
        # (agent, peer) of recent summary routes, and those answered not_here (until when).
        self._handed: OrderedDict[tuple[bytes, str], str] = OrderedDict()
        self._excluded: OrderedDict[tuple[bytes, str], float] = OrderedDict()
        self.false_positives: Counter[str] = Counter()
        self.summary_probes = 0
        self.summary_matches = 0  # level-0 matches seen: beyond one per probe, false positives
        self.asked_around = 0  # locates no summary answered that asked the neighbours
        self.around_queries = 0  # locate queries those sent
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
        """Forget a cached location (only if it points at `peer_id`, when given).

        Called on `not_here`: if the peer came from a summary match, that was a false positive;
        the peer is skipped for this agent for a while, so the retry falls through.
        """
        if peer_id is not None:
            path = self._handed.pop((agent.raw, peer_id), None)
            if path is not None:
                self.false_positives[path] += 1
                if self.summaries is not None:
                    self.summaries.count_false_positive()
                self._excluded[(agent.raw, peer_id)] = trio.current_time() + self._exclude_s
                while len(self._excluded) > _EXCLUDED_MAX:
                    self._excluded.popitem(last=False)
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
        deeper: list[tuple[str, int]] = []
        direct = ""
        if self.summaries is not None:
            self.summary_probes += 1
            for peer_id, level in self.summaries.candidates(agent):
                if self._is_excluded(agent, peer_id):
                    continue
                if level == 0:
                    self.summary_matches += 1
                    direct = direct or peer_id
                    continue
                deeper.append((peer_id, level))
            if direct:
                return self._summary_route(agent, "summary", direct)
        if use_cache:
            cached = self._cache.get(agent.raw)
            if cached is not None:
                peer_id, addrs, expires = cached
                if expires > trio.current_time():
                    self.paths["cache"] += 1
                    return Route("cache", peer_id, addrs)
                del self._cache[agent.raw]
        if deeper:
            route = await self._via_neighbours(agent, deeper)
            if route is not None:
                return route
        elif self.summaries is not None:
            route = None
            with trio.move_on_after(self._lookup_timeout_s):  # as a DHT lookup: bounded
                route = await self._ask_around(agent)
            if route is not None:
                return route
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

    def _is_excluded(self, agent: AgentId, peer_id: str) -> bool:
        until = self._excluded.get((agent.raw, peer_id))
        if until is None:
            return False
        if until > trio.current_time():
            return True
        del self._excluded[(agent.raw, peer_id)]
        return False

    def _summary_route(
        self, agent: AgentId, path: str, peer_id: str, addrs: tuple[str, ...] = ()
    ) -> Route:
        self.paths[path] += 1
        self._handed[(agent.raw, peer_id)] = path
        self._handed.move_to_end((agent.raw, peer_id))
        while len(self._handed) > _HANDED_MAX:
            self._handed.popitem(last=False)
        if not addrs and path != "summary" and self.summaries is not None:
            # A direct neighbour is connected (or in the peerstore, which a dial uses):
            # no addresses needed, and reading them costs more than routing (every message).
            addrs = self.summaries.addrs_of(peer_id)
        if path != "summary":
            # Found by asking: the next message goes there without asking again (a not_here
            # invalidates it, as any cached location).
            self.learn(agent, peer_id, addrs)
        return Route(path, peer_id, addrs)

    async def _via_neighbours(self, agent: AgentId, deeper: list[tuple[str, int]]) -> Route | None:
        """Ask the neighbours whose levels match where the agent is: two (or three) hops."""
        assert self.summaries is not None
        asked: set[str] = set()
        queue = sorted(deeper, key=lambda item: item[1])[:4]  # a few queries at most
        while queue:
            peer_id, _ = queue.pop(0)
            if peer_id in asked:
                continue
            asked.add(peer_id)
            for found in await self.summaries.ask_locate(peer_id, agent):
                if found.peer in asked or self._is_excluded(agent, found.peer):
                    continue
                if found.level == 0:
                    return self._summary_route(agent, "summary-2hop", found.peer, found.addrs)
                if len(asked) < 4:
                    queue.append((found.peer, found.level))
        return None

    async def _ask_around(self, agent: AgentId) -> Route | None:
        """No summary names `agent`: ask the neighbours, whose views reach two hops further."""
        assert self.summaries is not None
        peers = [p for p in self.summaries.neighbours() if not self._is_excluded(agent, p)]
        if not peers:
            return None
        self.asked_around += 1
        asked = set(peers[:_AROUND_MAX])
        further: list[Located] = []
        for start in range(0, min(len(peers), _AROUND_MAX), _WAVE):
            for found in await self._ask_wave(peers[start : start + _WAVE], agent):
                if self._is_excluded(agent, found.peer):
                    continue
                if found.level == 0:  # a summary on its way to us would have named it
                    return self._summary_route(agent, "summary-3hop", found.peer, found.addrs)
                if found.peer not in asked and all(f.peer != found.peer for f in further):
                    further.append(found)
            if further:
                break  # a node next to the host is known: ask it rather than more neighbours
        for found in further[:_FURTHER_MAX]:
            self.around_queries += 1
            for host in await self.summaries.ask_locate(found.peer, agent):
                if host.level == 0 and not self._is_excluded(agent, host.peer):
                    return self._summary_route(agent, "summary-3hop", host.peer, host.addrs)
        return None

    async def _ask_wave(self, peers: list[str], agent: AgentId) -> list[Located]:
        """Ask `peers` at once where `agent` is; their answers together."""
        assert self.summaries is not None
        answers: list[Located] = []

        async def ask(peer_id: str) -> None:
            assert self.summaries is not None
            answers.extend(await self.summaries.ask_locate(peer_id, agent))

        async with trio.open_nursery() as nursery:
            for peer_id in peers:
                self.around_queries += 1
                nursery.start_soon(ask, peer_id)
        return answers

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
            "false_positives": dict(self.false_positives),
            "summary_probes": self.summary_probes,
            "summary_matches": self.summary_matches,
            "asked_around": self.asked_around,
            "around_queries": self.around_queries,
            "dht_lookups": self.dht_lookups,
            "dht_failures": self.dht_failures,
            "cache_size": len(self._cache),
        }
