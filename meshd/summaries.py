"""Node summaries: what this node hosts, pushed to its neighbours; what theirs host, held here.

The service keeps this node's summary (Bloom filters of hosted agent ids and capability tags,
plus attenuated levels: the union of the neighbours' agent filters, and optionally of their
levels, so one and two hops further) and pushes it on `/meshd/summary/1.0.0`: whole on first
contact, then as deltas against the seq each neighbour acknowledged. Nothing is sent while
nothing changes; changes are coalesced (a neighbour always gets the current summary against
what it holds) and each neighbour's pushes go through a byte allowance, so churn cannot raise
the traffic above `neighbour_bytes_per_s`.

Neighbours' summaries answer the router (`candidates`), locate queries from other nodes (the
second hop of a route) and capability searches (`find`, asking on `/meshd/find/1.0.0` the
nodes whose capability filter matches). Wire formats and sizing live in `protocol.summary`.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from meshd.clock import WallClock, wall_ms
from meshd.net.types import Network, RequestError
from meshd.summary_settings import SummarySettings
from protocol.bloom import BloomFilter
from protocol.cbor import DecodeLimits
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.ids import AgentId
from protocol.records import NodeSummary, SummaryDelta
from protocol.summary import (
    FIND_PROTOCOL,
    LOCATE,
    MAX_ANSWERS,
    PUSH_FULL,
    SUMMARY_PROTOCOL,
    Found,
    Located,
    SummaryHistory,
    capability_key,
    decode_ack,
    decode_find,
    decode_find_answer,
    decode_locate_answer,
    decode_request,
    encode_ack,
    encode_find,
    encode_find_answer,
    encode_locate,
    encode_locate_answer,
    encode_push,
    family_problem,
    match_agent,
    sized_filter,
    union_into,
)

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from meshd.runtime.runtime import Runtime

__all__ = ["Summaries", "SummarySettings"]

log = logging.getLogger("meshd.summaries")

_PAGE = 1000  # agents read from the store per page when collecting capability tags
_PARALLEL_PUSHES = 8
_QUERY_TIMEOUT_S = 5.0
_MAX_PROVIDED = 64  # capability tags announced in the DHT; a node with more announces the first
_PROVIDE_EVERY_S = 6 * 3600.0  # provider records live about a day in py-libp2p
_PROVIDERS_WANTED = 20  # a DHT find asks for this many providers (Kademlia's k)
_PROVIDE_JUDGE_AFTER = 3  # neighbour summaries needed to judge how common a tag is
_MATCHES_MAX = 4096  # agents whose candidates() answer is kept (all forgotten when full)

Provide = Callable[[str], Awaitable[bool]]
FindProviders = Callable[[str, int], Awaitable[list[str]]]


@dataclass
class _Neighbour:
    """What we know of one neighbour: its summary, what it holds of ours, its allowance."""

    peer_id: str
    allowance: float
    allowance_at: float
    summary: NodeSummary | None = None
    held: int | None = None  # our seq it acknowledged
    retry_at: float = 0.0  # no push before this (trio time), after a failure
    connected: bool = True
    gone_at: float = 0.0
    rejects: int = 0
    banned_until: float = 0.0
    in_flight: bool = False
    failures: int = 0  # pushes failed in a row
    last_push: float = -1e9
    inbound: float | None = None  # allowance for its pushes to us, in bytes
    inbound_at: float = 0.0
    hits: Counter[str] = field(default_factory=Counter)


class Summaries:
    """This node's summary and its neighbours'; also the runtime's (second) listener."""

    def __init__(
        self,
        runtime: Runtime,
        network: Network,
        settings: SummarySettings | None = None,
        *,
        clock: WallClock = wall_ms,
        provide: Provide | None = None,
        find_providers: FindProviders | None = None,
    ) -> None:
        self._runtime = runtime
        # Told the peer id of each invalid summary (the node's PeerGuard penalises it).
        self.on_invalid: Callable[[str], object] | None = None
        self._provide = provide
        self._find_providers = find_providers
        self._provided: tuple[str, ...] = ()
        self._provide_wake = trio.Event()
        self._network = network
        self.settings = settings or SummarySettings()
        self._clock = clock
        self._key = runtime.node_key
        # Rebuilds are spaced by a quarter of the push gap, so these versions span four gaps:
        # a neighbour's acknowledged seq is still here when its next delta is due.
        self._history = SummaryHistory(keep=16)
        self._last_rebuild = -1e9
        self._neighbours: dict[str, _Neighbour] = {}
        # candidates() by agent, until a neighbour's summary changes or it goes: the router
        # asks for every message sent, and each ask probes every neighbour's filters.
        self._matches: dict[bytes, tuple[tuple[str, int], ...]] = {}
        self._dirty = True
        self._levels_dirty = False
        self._wake = trio.Event()
        self._next_check = 0.0
        self._caps: tuple[str, ...] = ()
        self._leaving: dict[bytes, float] = {}
        # Jitter, and the draw of which common tags to announce: local policy, not protocol.
        self._random = random.Random()
        self._agent_count = -1
        self._limits = DecodeLimits(
            max_size=min(self.settings.max_bytes + 64, 16 * 1024 * 1024),
            max_depth=6,
            max_str=min(self.settings.max_bytes, 16 * 1024 * 1024),
            max_items=64,
        )
        self.bytes_out = 0
        self.bytes_in = 0
        self.full_sent = 0
        self.full_bytes_out = 0
        self.delta_bytes_out = 0
        self.deltas_sent = 0
        self.full_received = 0
        self.deltas_received = 0
        self.push_failures = 0
        self.rebuilds = 0
        self.rejected: Counter[str] = Counter()
        self.penalised = 0
        self.false_positives = 0
        self.locate_queries = 0
        self.find_queries = 0
        self.provided = 0
        self.provide_failures = 0
        self.provides_skipped = 0
        self.found_via: Counter[str] = Counter()

    # -- the runtime's listener: mark the summary stale, rebuild on the next tick --------

    def spawned(self, agents: Sequence[bytes]) -> None:
        """Agents were spawned."""
        del agents
        self.changed()

    def activated(self, agent: AgentId) -> None:
        """Activation changes nothing a summary says."""
        del agent

    async def deleting(self, agent: AgentId) -> None:
        """An agent is being deleted: leave it out of the next summary already."""
        # The runtime drops it from its index only after this returns and the store commits.
        self._leaving[agent.raw] = trio.current_time() + self.settings.interval_s
        self.changed()

    def migrated(self, agent: AgentId, arrived: bool) -> None:
        """An agent arrived or left by migration: rebuild and push soon."""
        del agent, arrived
        self.changed()

    def changed(self) -> None:
        """The hosted agents changed: rebuild and push soon."""
        self._dirty = True
        self._wake.set()

    # -- queries (router, API) -----------------------------------------------------------

    def candidates(self, agent: AgentId) -> list[tuple[str, int]]:
        """Neighbours whose summary matches `agent`, as (peer, level): 0 hosts it, 1 next to it."""
        found = self._matches.get(agent.raw)
        if found is None:
            if len(self._matches) >= _MATCHES_MAX:
                self._matches.clear()
            # No clock: a banned neighbour holds no summary (see _reject), so the answer
            # changes only when a summary does, and _summaries_changed forgets them all then.
            held = [(n.peer_id, n.summary) for n in self._neighbours.values() if n.summary]
            found = self._matches[agent.raw] = match_agent(agent.raw, held)
        return list(found)

    def _summaries_changed(self) -> None:
        """A neighbour's summary changed or went: the routing answers are stale."""
        self._matches.clear()
        self._levels_dirty = True

    def addrs_of(self, peer_id: str) -> tuple[str, ...]:
        """Known addresses of a peer (to dial a node found two hops away)."""
        return tuple(self._network.peer_addrs(peer_id))

    async def ask_locate(self, peer_id: str, agent: AgentId) -> list[Located]:
        """Ask a neighbour which of its neighbours may host `agent` ([] on any failure)."""
        try:
            answer = await self._network.request(
                peer_id,
                self.addrs_of(peer_id),
                SUMMARY_PROTOCOL,
                encode_locate(agent.raw),
                timeout=_QUERY_TIMEOUT_S,
            )
            return decode_locate_answer(answer)
        except (RequestError, RemoteProtocolError) as exc:
            log.info("locate %s at %s failed: %s", agent.did, peer_id, exc)
            return []

    def count_false_positive(self) -> None:
        """The router was told `not_here` by a node whose summary matched."""
        self.false_positives += 1

    def neighbours(self) -> list[str]:
        """Connected neighbours whose summary we hold (those a locate query can be sent to)."""
        now = trio.current_time()
        return [
            peer.peer_id
            for peer in self._neighbours.values()
            if peer.connected and peer.summary is not None and peer.banned_until <= now
        ]

    async def find(self, tag: str, limit: int, hops: int = 1) -> list[Found]:
        """Agents with capability `tag`: here, at nodes their summary names, then DHT providers."""
        found = await self._local_find(tag, limit)
        self.found_via["local"] += len(found)
        seen = {f.agent for f in found}
        asked = {self._network.peer_id}
        for peer in self._cap_matches(tag, exclude=""):
            if len(found) >= limit:
                break
            asked.add(peer)
            found += self._fresh(await self._ask_find(peer, tag, limit, hops), seen, "summary")
        if len(found) < limit and self._find_providers is not None:
            # Nodes no summary of ours reaches: those that announced the tag in the DHT.
            with trio.move_on_after(_QUERY_TIMEOUT_S * 2):
                providers = await self._find_providers(capability_key(tag), 20)
            for peer in providers:
                if len(found) >= limit:
                    break
                if peer not in asked:
                    asked.add(peer)
                    remote = await self._ask_find(peer, tag, limit, 0)
                    found += self._fresh(remote, seen, "dht")
        return found[:limit]

    def _fresh(self, items: list[Found], seen: set[bytes], via: str) -> list[Found]:
        new = [item for item in items if item.agent not in seen]
        seen.update(item.agent for item in new)
        self.found_via[via] += len(new)
        return new

    async def _ask_find(self, peer: str, tag: str, limit: int, hops: int) -> list[Found]:
        try:
            answer = await self._network.request(
                peer,
                self.addrs_of(peer),
                FIND_PROTOCOL,
                encode_find(tag, min(limit, MAX_ANSWERS), hops),
                timeout=_QUERY_TIMEOUT_S * (hops + 1),
            )
            return decode_find_answer(answer)
        except (RequestError, RemoteProtocolError) as exc:
            log.info("find %r at %s failed: %s", tag, peer, exc)
            return []

    def _cap_matches(self, tag: str, exclude: str) -> list[str]:
        now = trio.current_time()
        item = tag.encode()
        return [
            peer.peer_id
            for peer in self._neighbours.values()
            if peer.summary is not None
            and peer.banned_until <= now
            and peer.peer_id != exclude
            and item in peer.summary.caps
        ]

    async def _local_find(self, tag: str, limit: int) -> list[Found]:
        if tag not in self._caps:
            return []  # the caps list is rebuilt with every change of the hosted agents
        found: list[Found] = []
        me = self._network.peer_id
        cursor: bytes | None = None
        while len(found) < limit:
            rows = await self._runtime.store.list_agents(limit=_PAGE, after=cursor)
            for row in rows:
                if tag in row.caps and self._runtime.hosts(AgentId(row.id)):
                    found.append(Found(row.id, row.kind, me))
            if len(rows) < _PAGE:
                break
            cursor = rows[-1].id
        return found[:limit]

    # -- request handlers ------------------------------------------------------------------

    async def _on_summary_request(self, peer_id: str, payload: bytes) -> bytes:
        size = len(payload)
        self.bytes_in += size
        neighbour = self._neighbour(peer_id)
        now = trio.current_time()
        if size > self.settings.max_bytes:
            return self._reject(neighbour, "too_large", f"{size} bytes")
        try:
            kind, body = decode_request(payload, self._limits)
        except RemoteProtocolError as exc:
            return self._reject(neighbour, exc.reason.value, exc.detail)
        if kind == LOCATE:
            self.locate_queries += 1
            return encode_locate_answer(self._locate(AgentId(body), exclude=peer_id))
        if neighbour.banned_until > now:
            self.rejected["penalised"] += 1
            return encode_ack(None)
        if not self._inbound_allowed(neighbour, size, now):
            return self._reject(neighbour, "rate_limited", f"{size} bytes over its allowance")
        try:
            if kind == PUSH_FULL:
                summary = NodeSummary.decode(body, self._limits)
                summary.verify()
            else:
                delta = SummaryDelta.decode(body, self._limits)
                held = neighbour.summary
                if held is None or held.seq != delta.base_seq or held.node != delta.node:
                    # Not an offence: we lost or never had its base. The ack asks for a whole one.
                    return encode_ack(None if held is None else held.seq)
                summary = delta.apply(held)
        except RemoteProtocolError as exc:
            return self._reject(neighbour, exc.reason.value, exc.detail)
        if summary.node.text != peer_id:
            return self._reject(neighbour, "wrong_node", summary.node.text)
        problem = family_problem(summary, self._max_filter_bits(summary))
        if problem is not None:
            return self._reject(neighbour, "wrong_params", problem)
        held = neighbour.summary
        if held is not None and summary.seq <= held.seq:
            return encode_ack(held.seq)  # an old one arriving late: keep the newer
        neighbour.summary = summary
        if kind == PUSH_FULL:
            self.full_received += 1
        else:
            self.deltas_received += 1
        # Our levels are unions of the neighbours' filters: refresh them on the next tick.
        self._summaries_changed()
        self._wake.set()
        return encode_ack(summary.seq)

    def _inbound_allowed(self, neighbour: _Neighbour, size: int, now: float) -> bool:
        """Pushes from one neighbour may use four times our own per-neighbour budget."""
        rate = 4 * self.settings.neighbour_bytes_per_s
        burst = rate * self.settings.interval_s
        if neighbour.inbound is None:
            neighbour.inbound, neighbour.inbound_at = burst, now
        neighbour.inbound = min(burst, neighbour.inbound + (now - neighbour.inbound_at) * rate)
        neighbour.inbound_at = now
        if neighbour.inbound <= 0:
            return False
        neighbour.inbound -= size  # one push may overdraw it, as on the sending side
        return True

    def _max_filter_bits(self, summary: NodeSummary) -> int:
        """Filters far larger than the counts need are refused (a peer cannot make us hold MBs)."""
        claimed = max(summary.counts.get("agents", 0), summary.counts.get("level_agents", 0))
        need = sized_filter(max(claimed, 1), self.settings.fp_rate).bits
        return max(need * 8, self.settings.max_level_bits)

    def _reject(self, neighbour: _Neighbour, reason: str, detail: str) -> bytes:
        self.rejected[reason] += 1
        neighbour.rejects += 1
        if self.on_invalid is not None:
            self.on_invalid(neighbour.peer_id)  # the node's peer guard scores it too
        log.info("summary from %s rejected (%s): %s", neighbour.peer_id, reason, detail)
        if neighbour.rejects >= self.settings.penalty_after:
            # A peer that keeps sending bad summaries loses its say in our routing for a while.
            neighbour.banned_until = trio.current_time() + self.settings.penalty_s
            neighbour.summary = None
            neighbour.rejects = 0
            self.penalised += 1
            self._summaries_changed()
            log.warning("peer %s penalised: repeated invalid summaries", neighbour.peer_id)
        return encode_ack(None)

    def _locate(self, agent: AgentId, exclude: str) -> list[Located]:
        found = []
        if self._runtime.hosts(agent):
            found.append(Located(self._network.peer_id, tuple(self._network.listen_addrs()), 0))
        for peer_id, level in self.candidates(agent):
            if peer_id != exclude and level <= 1:
                found.append(Located(peer_id, self.addrs_of(peer_id), level))
        return found[:MAX_ANSWERS]

    async def _on_find_request(self, peer_id: str, payload: bytes) -> bytes:
        self.bytes_in += len(payload)
        self.find_queries += 1
        try:
            tag, limit, hops = decode_find(payload)
        except RemoteProtocolError as exc:
            self.rejected[exc.reason.value] += 1
            return encode_find_answer([])
        found = await self._local_find(tag, limit)
        if hops > 0:
            seen = {f.agent for f in found}
            for peer in self._cap_matches(tag, exclude=peer_id):
                if len(found) >= limit:
                    break
                try:
                    answer = await self._network.request(
                        peer,
                        self.addrs_of(peer),
                        FIND_PROTOCOL,
                        encode_find(tag, limit, hops - 1),
                        timeout=_QUERY_TIMEOUT_S,
                    )
                    remote = decode_find_answer(answer)
                except (RequestError, RemoteProtocolError):
                    continue
                found.extend(f for f in remote if f.agent not in seen)
                seen.update(f.agent for f in remote)
        return encode_find_answer(found[:limit])

    # -- building our summary --------------------------------------------------------------

    async def _rebuild(self) -> bool:
        """Rebuild our summary if what it says changed; return whether it did."""
        ids = list(self._runtime.agent_ids())
        if self._leaving:
            now = trio.current_time()
            self._leaving = {raw: t for raw, t in self._leaving.items() if t > now}
            ids = [raw for raw in ids if raw not in self._leaving]
        current = self._history.current
        fp = self.settings.fp_rate
        agents = sized_filter(len(ids), fp)
        if current is not None:
            bits = current.agents.bits
            # Hysteresis: keep the size while it is big enough and not over 4x too big.
            if agents.bits <= bits < agents.bits * 4:
                agents = BloomFilter(bits, agents.hashes, 0)
        agents.add_many(ids)
        if self._dirty or current is None or len(ids) != self._agent_count:
            self._caps = await self._collect_caps()
            self._agent_count = len(ids)
            if self._caps[:_MAX_PROVIDED] != self._provided:
                self._provide_wake.set()
        caps = sized_filter(len(self._caps), fp)
        caps.add_many([tag.encode() for tag in self._caps])
        levels, level_agents = self._levels(agents.hashes)
        counts = {"agents": len(ids), "caps": len(self._caps), "level_agents": level_agents}
        self._dirty = self._levels_dirty = False
        if (
            current is not None
            and current.agents == agents
            and current.caps == caps
            and list(current.levels) == levels
            and dict(current.counts) == counts
        ):
            return False
        # Seqs come from the wall clock, so they keep increasing across restarts.
        seq = max(self._clock(), current.seq + 1 if current is not None else 0)
        summary = NodeSummary.create(
            self._key,
            seq=seq,
            created_ms=self._clock(),
            agents=agents,
            caps=caps,
            counts=counts,
            levels=levels,
        )
        self._history.add(summary)
        self.rebuilds += 1
        return True

    def _levels(self, hashes: int) -> tuple[list[BloomFilter], int]:
        """Level 1: union of neighbours' agent filters; level 2: of their level-1 filters."""
        now = trio.current_time()
        held = [
            peer.summary
            for peer in self._neighbours.values()
            if peer.summary is not None and peer.banned_until <= now
        ]
        if not held:
            return [], 0
        total = sum(s.counts.get("agents", 0) for s in held)
        first = self._level_filter(0, total)
        if first.hashes != hashes:
            return [], 0
        union_into(first, (s.agents for s in held))
        levels = [first]
        if self.settings.two_hop:
            total2 = total + sum(s.counts.get("level_agents", 0) for s in held)
            second = self._level_filter(1, total2)
            union_into(second, (s.levels[0] for s in held if s.levels))
            union_into(second, (s.agents for s in held))
            levels.append(second)
        return levels, total

    def _level_filter(self, index: int, items: int) -> BloomFilter:
        """An empty level filter for `items`, keeping the current size when it still fits."""
        fp, cap = self.settings.fp_rate, self.settings.max_level_bits
        fresh = sized_filter(max(items, 1), fp, max_bits=cap)
        current = self._history.current
        if current is not None and len(current.levels) > index:
            bits = current.levels[index].bits
            # Same hysteresis as the agent filter: a resize costs every neighbour a whole push.
            if fresh.bits <= bits < fresh.bits * 4 and bits <= cap:
                return BloomFilter(bits, fresh.hashes, 0)
        return fresh

    async def _collect_caps(self) -> tuple[str, ...]:
        tags: dict[str, None] = {}
        cursor: bytes | None = None
        while True:
            rows = await self._runtime.store.list_agents(limit=_PAGE, after=cursor)
            for row in rows:
                if row.caps and self._runtime.hosts(AgentId(row.id)):
                    tags.update(dict.fromkeys(row.caps))
            if len(rows) < _PAGE:
                return tuple(sorted(tags))
            cursor = rows[-1].id

    # -- pushing ---------------------------------------------------------------------------

    def _neighbour(self, peer_id: str) -> _Neighbour:
        neighbour = self._neighbours.get(peer_id)
        if neighbour is None:
            rate = self.settings.neighbour_bytes_per_s
            neighbour = _Neighbour(peer_id, rate * self.settings.interval_s, trio.current_time())
            self._neighbours[peer_id] = neighbour
        return neighbour

    def _sync_neighbours(self, now: float) -> None:
        # A connection younger than `neighbour_after_s` is not a neighbour yet: connections a
        # DHT lookup made, and that the trim closes again, then never cost a whole summary.
        settled = now - self.settings.neighbour_after_s
        connected = {
            peer.peer_id for peer in self._network.connected_peers() if peer.connected_at <= settled
        }
        for peer_id in connected:
            neighbour = self._neighbour(peer_id)
            if not neighbour.connected:
                # First contact again: it may have restarted, so it gets a whole summary.
                neighbour.connected, neighbour.held, neighbour.retry_at = True, None, 0.0
        grace = 3 * self.settings.interval_s
        for peer_id, neighbour in list(self._neighbours.items()):
            if peer_id in connected:
                continue
            if neighbour.connected:
                neighbour.connected, neighbour.gone_at = False, now
            elif now - neighbour.gone_at > grace and neighbour.banned_until <= now:
                # Still routable for a while after a disconnect (we can dial it again).
                del self._neighbours[peer_id]
                self._summaries_changed()

    def _take_allowance(self, neighbour: _Neighbour, size: int, now: float) -> bool:
        """Spend `size` bytes of the neighbour's allowance; it may go into debt by one push."""
        rate = self.settings.neighbour_bytes_per_s
        burst = rate * self.settings.interval_s
        neighbour.allowance = min(
            burst, neighbour.allowance + (now - neighbour.allowance_at) * rate
        )
        neighbour.allowance_at = now
        if neighbour.allowance <= 0:
            return False
        neighbour.allowance -= size
        return True

    async def _push(self, neighbour: _Neighbour, kind: int, body: bytes) -> None:
        request = encode_push(kind, body)
        try:
            answer = await self._network.request(
                neighbour.peer_id,
                self.addrs_of(neighbour.peer_id),
                SUMMARY_PROTOCOL,
                request,
                timeout=self.settings.push_timeout_s,
            )
            neighbour.held = decode_ack(answer)
            neighbour.retry_at, neighbour.failures = 0.0, 0
        except (RequestError, RemoteProtocolError) as exc:
            self.push_failures += 1
            neighbour.failures += 1
            # Nodes serve few requests at once and answer `busy` beyond: neighbours that all
            # pushed together retry spread out, backing off up to the push interval.
            backoff = min(self.settings.interval_s, self.settings.tick_s * 2**neighbour.failures)
            neighbour.retry_at = trio.current_time() + backoff * self._random.uniform(0.5, 1.0)
            log.info("summary push to %s failed: %s", neighbour.peer_id, exc)
        finally:
            neighbour.in_flight = False
        self.bytes_out += len(request)
        if kind == PUSH_FULL:
            self.full_sent += 1
            self.full_bytes_out += len(request)
        else:
            self.deltas_sent += 1
            self.delta_bytes_out += len(request)

    async def _round(self, nursery: trio.Nursery, limiter: trio.CapacityLimiter) -> None:
        now = trio.current_time()
        self._sync_neighbours(now)
        spaced = now - self._last_rebuild >= self.settings.min_gap_s / 4
        if (spaced and (self._dirty or self._levels_dirty)) or now >= self._next_check:
            if now >= self._next_check:
                self._next_check = now + self.settings.interval_s
            self._last_rebuild = now
            await self._rebuild()
        for neighbour in self._neighbours.values():
            if not neighbour.connected or neighbour.in_flight or neighbour.retry_at > now:
                continue
            if neighbour.banned_until > now:
                continue
            if neighbour.held is not None and now - neighbour.last_push < self.settings.min_gap_s:
                continue  # changes coalesce into one delta per gap (first contact goes at once)
            payload = self._history.payload_for(neighbour.held)
            if payload is None:
                continue
            kind, body = payload
            if not self._take_allowance(neighbour, len(body), now):
                continue  # over budget: it gets the then-current summary on a later tick
            neighbour.in_flight, neighbour.last_push = True, now
            nursery.start_soon(self._limited_push, limiter, neighbour, kind, body)

    async def _limited_push(
        self, limiter: trio.CapacityLimiter, neighbour: _Neighbour, kind: int, body: bytes
    ) -> None:
        async with limiter:
            await self._push(neighbour, kind, body)

    def provide_share(self, tag: str) -> float:
        """The chance that this node announces `tag`: about k announcers in the whole mesh.

        Every provider record of a tag goes to the same 20 nodes, those closest to its key;
        when every node announces the tags every node has (a 200-node simnet: "counter" at
        start, "external" with each node's first send), those 20 take a dial and a store
        from each node and sit at their connection cap, refusing messages meanwhile. A find
        asks for k providers and first asks the neighbours whose summaries name the tag, so
        a common tag needs about k announcers: the neighbours' capability filters say what
        share of nodes host it, the routing table (a lower bound) how many nodes there are.
        """
        now = trio.current_time()
        held = [
            n.summary
            for n in self._neighbours.values()
            if n.summary is not None and n.banned_until <= now
        ]
        if len(held) < _PROVIDE_JUDGE_AFTER:
            return 1.0  # too few to judge: announce
        item = tag.encode()
        having = sum(1 for summary in held if item in summary.caps)
        nodes = max(self._network.routing_table_size(), len(held)) + 1
        hosts = (having + 1) / (len(held) + 1) * nodes  # we host it too
        return min(1.0, _PROVIDERS_WANTED / hosts)

    async def _wait_for_neighbours(self) -> None:
        """Until a few neighbours' summaries are in (bounded): what `provide_share` needs."""
        for _ in range(int(self.settings.interval_s / self.settings.tick_s) + 1):
            if sum(1 for n in self._neighbours.values() if n.summary) >= _PROVIDE_JUDGE_AFTER:
                return
            await trio.sleep(self.settings.tick_s)

    async def _provide_loop(self) -> None:
        """Announce our capability tags as DHT provider records: on change, and before expiry."""
        assert self._provide is not None
        await self._wait_for_neighbours()
        refresh_at = trio.current_time() + _PROVIDE_EVERY_S
        while True:
            with trio.move_on_after(max(refresh_at - trio.current_time(), 0.0)):
                await self._provide_wake.wait()
            self._provide_wake = trio.Event()
            tags = self._caps[:_MAX_PROVIDED]
            if trio.current_time() >= refresh_at:
                todo = tags  # the records are due to expire: announce every tag again
                refresh_at = trio.current_time() + _PROVIDE_EVERY_S
            else:
                # Only the new tags: announcing them all whenever one appeared made every
                # node of a simnet mesh re-announce "kind:counter" (a lookup and 20 stores
                # each) when its operator agent was spawned for the first send.
                todo = tuple(tag for tag in tags if tag not in self._provided)
            # Before announcing, not after: every rebuild while the announcements ran (each
            # a DHT lookup and 20 stores, up to 30 s) saw the tags as not yet provided and
            # woke this loop again, so a busy node re-announced back to back.
            self._provided = tags
            for tag in todo:
                if self._random.random() >= self.provide_share(tag):
                    self.provides_skipped += 1  # common: enough other nodes announce it
                    continue
                ok = False
                with trio.move_on_after(_QUERY_TIMEOUT_S * 6):
                    ok = await self._provide(capability_key(tag))
                if ok:
                    self.provided += 1
                else:
                    self.provide_failures += 1

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Answer summary requests and push our summary until cancelled."""
        self._network.set_request_handler(SUMMARY_PROTOCOL, self._on_summary_request)
        self._network.set_request_handler(FIND_PROTOCOL, self._on_find_request)
        limiter = trio.CapacityLimiter(_PARALLEL_PUSHES)
        try:
            async with trio.open_nursery() as nursery:
                await self._rebuild()
                if self._provide is not None:
                    nursery.start_soon(self._provide_loop)
                task_status.started()
                while True:
                    try:
                        await self._round(nursery, limiter)
                    except LocalProtocolError as exc:  # pragma: no cover - a bug of ours
                        log.error("summary round failed: %s", exc)
                    self._wake = trio.Event()
                    with trio.move_on_after(self.settings.tick_s):
                        await self._wake.wait()
                    # Coalesce a burst of changes (a mass spawn, many deletes) into one push.
                    await trio.sleep(self.settings.tick_s / 5)
        finally:
            self._network.set_request_handler(SUMMARY_PROTOCOL, None)
            self._network.set_request_handler(FIND_PROTOCOL, None)

    def _fp_estimate(self) -> float:
        """Mean false-positive rate the neighbours' agent filters predict from their fill."""
        rates = [
            n.summary.agents.estimate_fp_rate() for n in self._neighbours.values() if n.summary
        ]
        return round(sum(rates) / len(rates), 6) if rates else 0.0

    def stats(self) -> dict[str, Any]:
        """Counters for status and metrics."""
        current = self._history.current
        now = trio.current_time()
        return {
            "seq": current.seq if current is not None else None,
            "summary_bytes": len(current.encoded) if current is not None else 0,
            "agent_filter_bits": current.agents.bits if current is not None else 0,
            "levels": len(current.levels) if current is not None else 0,
            "neighbours": sum(1 for n in self._neighbours.values() if n.summary is not None),
            "neighbours_in_sync": sum(
                1
                for n in self._neighbours.values()
                if n.connected and current is not None and n.held == current.seq
            ),
            "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in,
            "full_sent": self.full_sent,
            "deltas_sent": self.deltas_sent,
            "full_bytes_out": self.full_bytes_out,
            "delta_bytes_out": self.delta_bytes_out,
            "full_received": self.full_received,
            "deltas_received": self.deltas_received,
            "push_failures": self.push_failures,
            "rebuilds": self.rebuilds,
            "rejected": dict(self.rejected),
            "penalised": self.penalised,
            "banned": sum(1 for n in self._neighbours.values() if n.banned_until > now),
            "false_positives": self.false_positives,
            "fp_estimate": self._fp_estimate(),
            "locate_queries": self.locate_queries,
            "find_queries": self.find_queries,
            "found_via": dict(self.found_via),
            "caps_provided": self.provided,
            "provide_failures": self.provide_failures,
            "provides_skipped": self.provides_skipped,
        }
