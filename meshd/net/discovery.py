"""Joining and growing the mesh: bootstrap dials, routing-table upkeep, random walks.

py-libp2p's `KadDHT` answers queries but does little to join a mesh (LIBP2P.md):
connected peers are not added to its routing table, refresh runs every 10 minutes, and a
node serves at most 12 DHT streams at once, resetting the rest (the querier then drops
that peer from its table). So this service:

- waits a random jitter before the first bootstrap dial, so that many nodes started
  together do not all hit the seed within the same few milliseconds;
- adds each connected peer to the routing table once identify shows it speaks our
  Kademlia id (and re-adds connected peers the table lost after a reset stream);
- walks the DHT (our own id, then random peer ids) quickly while the table is small or
  still growing, backing off exponentially once a walk adds no peer the table never held
  (connected peers coming and going are not growth); a walk asks only the DHT peers we
  are connected to (one FIND_NODE round, no dials), except while the table is small, when
  it is a full lookup, which with a bounded degree dials most of the ~20 peers it asks;
- dials peers the walks found while we hold fewer connections than the low watermark,
  with a per-peer backoff, and drops unreachable peers from the routing table;
- redials the bootstrap peers while it has no connection at all (seeds not up yet, or
  everyone lost), backing off from 2 s to at most 15 s;
- if `trim_interval_s` > 0 (off by default: with fewer connections, agents that have no DHT
  record are reached only through summaries two hops out, which a 50-node simnet run showed
  is not yet enough), trims connections above the high watermark back to the middle of
  the watermarks (py-libp2p's auto-connector dials up to there after every disconnect).
  py-libp2p's own pruner skips every connection with an open stream, and GossipSub keeps
  one on each, so it never prunes: every peer a DHT lookup ever dialed stayed connected (a
  50-node simnet mesh was fully connected, 49 peers each, high watermark 32). We keep
  peers spread over the DHT's distance classes (the closest of each class in turn, as a
  Kademlia table would), plus every connection younger than the grace period and every
  connection that carried a message lately (`note_messages`).

At the connection cap (`make_room`), the connection closed to make way for a send or an
inbound dial is, in order: one we dialed for a DHT lookup or walk that no stream of ours
uses now and no message crossed lately (as go-libp2p's connection manager tags lookup
connections as the first to go), then one past its grace period, then (for our sends) a
young one; a connection that carried a message lately goes last, and only once it has been
quiet for a moment (`MESSAGE_QUIET_S`). Sends that make room at once each close a different
connection.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

import trio
from libp2p.kad_dht.routing_table import peer_id_to_key
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.peer.peerstore import PeerStoreError
from multiaddr import Multiaddr

from meshd.net.addrs import BootstrapAddr
from meshd.net.kad import KAD_PROTOCOL_ID
from meshd.net.settings import DiscoverySettings
from meshd.net.types import BootstrapDone, NetEvent, RoutingTableChanged

if TYPE_CHECKING:
    # trio 0.35 ships TaskStatus, but libp2p pulls in trio-typing whose trio-stubs (which
    # mypy prefers) lack it; trio_typing.TaskStatus is the same type for both.
    from trio_typing import TaskStatus

__all__ = ["Discovery", "DiscoverySettings", "trim_target"]

log = logging.getLogger("meshd.net.discovery")

# A random key shaped like an Ed25519 PeerID (identity multihash of a protobuf key), so
# that it passes py-libp2p's FIND_NODE key check (multihash, or at most 50 bytes).
_PEER_ID_PREFIX = b"\x00\x24\x08\x01\x12\x20"
_IDENTIFY_WAIT_S = 5.0
_IDENTIFY_POLL_S = 0.05
_ADMIT_WAIT_S = 2.0  # before the first walk, for a seed to enter the routing table
_MAX_ADMITTING = 16
_TABLE_POLL_S = 0.5
_MAX_DIAL_BACKOFF_S = 300.0
_CLOSE_TIMEOUT_S = 2.0
# Connected peers one walk asks (Kademlia's alpha): each answer carries 20 signed peer records.
_CONNECTED_WALK_PEERS = 3
_MAX_SEEN = 16_384  # peers remembered as seen (beyond it, unseen peers count as new)
# A connection that carried a message this recently is kept by trims and closed for room
# only when nothing else can go: under load, a message connection closed by a trim or
# replaced for a newcomer was redialed a moment later, or refused at the other side's cap.
MESSAGE_PROTECT_S = 30.0
# ... and when nothing else can go, one quiet for this long may (its ACKs are back).
MESSAGE_QUIET_S = 2.0
# A lookup's connection is at least this old before it may be closed for room: the lookup
# that dialed it has not opened its stream yet in the first instants.
_LOOKUP_MIN_AGE_S = 1.0
# Streams that stay open on every connection (GossipSub, identify push) say nothing of use.
_BACKGROUND_PROTOCOLS = ("/meshsub/", "/floodsub/", "/ipfs/id/")


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def trim_target(settings: DiscoverySettings) -> int:
    """Connections a trim keeps: py-libp2p's auto-connector target between the watermarks."""
    return (settings.low_watermark + settings.high_watermark) // 2


class Discovery:
    """Keeps a node joined to the mesh; one instance per network, run with `serve`."""

    def __init__(
        self,
        host: Any,
        dht: Any,
        bootstrap: Sequence[BootstrapAddr],
        settings: DiscoverySettings,
        emit: Callable[[NetEvent], None],
        counters: Counter[str],
        rng: random.Random | None = None,
    ) -> None:
        self._host = host
        self._dht = dht
        self._bootstrap = tuple(bootstrap)
        self._settings = settings
        self._emit = emit
        self._counters = counters
        self._rng = rng or random.Random(os.urandom(16))
        self._self_id = host.get_id()
        self._admit_send, self._admit_recv = trio.open_memory_channel[Any](256)
        # peer -> (consecutive failures, trio time before which we do not redial)
        self._backoff: dict[Any, tuple[int, float]] = {}
        # peer -> trio time it connected (the trim spares connections in their grace period)
        self._connected_at: dict[Any, float] = {}
        self._self_key = int.from_bytes(peer_id_to_key(self._self_id), "big")
        # Peers the routing table ever held: a walk that adds none of these is "nothing new".
        self._seen: set[Any] = set()
        # peer -> trio time a message last went to it or came from it (`note_messages`)
        self._message_at: dict[Any, float] = {}
        # Peers whose connection we dialed for a DHT lookup, walk or the auto-connector.
        self._lookup_dialed: set[Any] = set()
        # Peers being closed to make room: a concurrent `make_room` picks another.
        self._closing: set[Any] = set()

    # -- called by the network's notifee (synchronously, never blocks) ----------------

    def peer_connected(self, peer_id: Any) -> None:
        """Queue a newly connected peer for the routing table (dropped and counted if full)."""
        self._backoff.pop(peer_id, None)
        self._connected_at[peer_id] = trio.current_time()
        self._message_at.pop(peer_id, None)  # a new connection: its own history
        try:
            self._admit_send.send_nowait(peer_id)
        except trio.WouldBlock:
            # The upkeep loop re-adds connected peers, so a dropped admission only delays.
            self._counters["admissions_dropped"] += 1

    def peer_disconnected(self, peer_id: Any) -> None:
        """`peer_id` has no connection left: forget what we noted of its connection."""
        self._message_at.pop(peer_id, None)
        self._lookup_dialed.discard(peer_id)

    def note_messages(self, peer_id: Any) -> None:
        """Messages went to or came from `peer_id` now: keep its connection (see above)."""
        self._message_at[peer_id] = trio.current_time()

    def note_dialed(self, peer_id: Any, *, for_lookup: bool) -> None:
        """We dialed `peer_id`: for a lookup, walk or auto-connect, or for a send of ours."""
        if for_lookup:
            self._lookup_dialed.add(peer_id)
        else:
            self._lookup_dialed.discard(peer_id)

    def carries_messages(self, peer_id: Any, now: float, within: float) -> bool:
        """Whether a message crossed `peer_id`'s connection in the last `within` seconds."""
        return now - self._message_at.get(peer_id, -math.inf) < within

    # -- the service ----------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run discovery until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._admit_loop)
            nursery.start_soon(self._watch_table)
            if self._settings.trim_interval_s > 0:
                nursery.start_soon(self._trim_loop)
            task_status.started()
            await trio.sleep(self._rng.uniform(0.0, self._settings.join_jitter_s))
            await self.join()
            await self._walk_loop()

    async def join(self) -> BootstrapDone:
        """Dial every bootstrap peer (bounded in parallel and time) and report the result."""
        connected: list[str] = []
        failed: list[tuple[str, str]] = []
        limiter = trio.CapacityLimiter(self._settings.max_parallel_dials)

        async def dial_one(seed: BootstrapAddr) -> None:
            async with limiter:
                try:
                    info = info_from_p2p_addr(Multiaddr(seed.addr))
                    await self._dial(info)
                except Exception as exc:
                    failed.append((seed.addr, _short(exc)))
                else:
                    connected.append(seed.addr)

        async with trio.open_nursery() as nursery:
            for seed in self._bootstrap:
                nursery.start_soon(dial_one, seed)
        result = BootstrapDone(connected=tuple(connected), failed=tuple(failed))
        self._counters["bootstrap_rounds"] += 1
        self._emit(result)
        return result

    async def _dial(self, info: Any) -> None:
        if info.peer_id == self._self_id:
            raise ValueError("that is our own peer id")
        # py-libp2p refuses, for 60 s, to redial a peer whose addresses all failed once
        # (its "negative cache"): a seed that was not up yet when we started would stay
        # out of reach for a minute. We pace redials with our own backoff instead.
        self._host.get_network().unblock_peer(info.peer_id)
        with trio.fail_after(self._settings.dial_timeout_s):
            await self._host.connect(info)
        self._counters["dials_ok"] += 1

    # -- routing table admission -------------------------------------------------------

    async def _admit_loop(self) -> None:
        slots = trio.Semaphore(_MAX_ADMITTING)
        admitting: set[Any] = set()
        async with trio.open_nursery() as nursery:
            async for peer_id in self._admit_recv:
                if peer_id in admitting:
                    continue
                await slots.acquire()
                admitting.add(peer_id)
                nursery.start_soon(self._admit, peer_id, slots, admitting)

    async def _admit(self, peer_id: Any, slots: trio.Semaphore, admitting: set[Any]) -> None:
        try:
            protocols = await self._wait_identified(peer_id)
            if protocols is None:
                self._counters["identify_timeouts"] += 1
                return
            if KAD_PROTOCOL_ID not in protocols:
                # Not a meshd DHT server (a client, or another network): keep it off the table.
                self._counters["peers_without_kad"] += 1
                return
            if await self._dht.add_peer(peer_id):
                self._counters["table_admissions"] += 1
        finally:
            admitting.discard(peer_id)
            slots.release()

    async def _wait_identified(self, peer_id: Any) -> list[str] | None:
        peerstore = self._host.get_peerstore()
        with trio.move_on_after(_IDENTIFY_WAIT_S):
            while True:
                try:
                    protocols = peerstore.get_protocols(peer_id)
                except PeerStoreError:  # not in the peerstore yet
                    protocols = []
                if protocols:
                    return [str(p) for p in protocols]
                if peer_id not in self._host.get_connected_peers():
                    return None
                await trio.sleep(_IDENTIFY_POLL_S)
        return None

    def _readmit_connected(self) -> None:
        table = self._dht.routing_table
        for peer_id in self._host.get_connected_peers():
            if not table.peer_in_table(peer_id):
                self.peer_connected(peer_id)

    async def _watch_table(self) -> None:
        last = 0
        while True:
            size = int(self._dht.get_routing_table_size())
            if size != last:
                self._emit(RoutingTableChanged(size=size, previous=last))
                last = size
            await trio.sleep(_TABLE_POLL_S)

    # -- walks and dials ---------------------------------------------------------------

    def _newly_seen(self) -> int:
        """Peers in the routing table never seen there before (remembered, bounded)."""
        fresh = [p for p in self._dht.routing_table.get_peer_ids() if p not in self._seen]
        room = _MAX_SEEN - len(self._seen)
        self._seen.update(fresh[: max(room, 0)])
        return len(fresh)

    async def _walk_loop(self) -> None:
        settings = self._settings
        interval = settings.fast_walk_s
        next_join = trio.current_time() + settings.bootstrap_retry_s
        join_wait = settings.bootstrap_retry_s
        first = True
        while True:
            isolated = bool(self._bootstrap) and not self._host.get_connected_peers()
            if isolated and trio.current_time() >= next_join:
                # Alone (seeds not up yet, or we lost everyone): try the seeds again, with
                # a backoff capped low enough that a late seed is found within seconds.
                result = await self.join()
                join_wait = (
                    settings.bootstrap_retry_s
                    if result.connected
                    else min(join_wait * 2, settings.bootstrap_retry_max_s)
                )
                next_join = trio.current_time() + join_wait * self._rng.uniform(0.75, 1.25)
            self._readmit_connected()
            self._newly_seen()
            size_before = self._dht.get_routing_table_size()
            if first:
                # Our own id first, through the peers we joined (the seeds answer with the
                # peers they know closest to us, and learn of us); a full lookup if none of
                # them speaks our DHT. A joining node's full lookup dialed about 20 peers
                # at once, which made a mesh started all at once a storm of handshakes.
                await self._wait_admitted()
                await self._walk_connected(self._self_id.to_bytes())
            elif self._dht.get_routing_table_size() < settings.small_table:
                await self._walk(self._random_key())  # a full lookup: it dials whom it asks
            else:
                await self._walk_connected(self._random_key())
            first = False
            await self._dial_discovered()
            # Only peers the table never held count as growth: connected peers come and go
            # (other nodes' lookups dial us, the trim closes them), and a peer the table
            # lost to a reset stream and got back is not news. Counting those kept walks at
            # the fast interval for ever in a bounded-degree mesh. Once the table is not
            # small, growth must be a quarter of it: py-libp2p's table has no size bound,
            # so in a large mesh every walk of a random key learns someone new.
            fresh = self._newly_seen()
            small = self._dht.get_routing_table_size() < settings.small_table
            grew = fresh > 0 and (small or fresh * 4 >= size_before)
            if grew:
                interval = settings.fast_walk_s
            else:
                cap = settings.small_table_walk_s if small else settings.walk_interval_s
                interval = min(interval * 2, cap)
            delay = interval * self._rng.uniform(0.75, 1.25)
            if isolated:
                delay = min(delay, max(next_join - trio.current_time(), 0.0))
            await trio.sleep(delay)

    def _random_key(self) -> bytes:
        return _PEER_ID_PREFIX + self._rng.randbytes(32)

    async def _walk(self, key: bytes) -> None:
        self._counters["walks"] += 1
        try:
            with trio.move_on_after(self._settings.lookup_timeout_s) as scope:
                await self._dht.peer_routing.find_closest_peers_network(key)
            if scope.cancelled_caught:
                self._counters["walk_timeouts"] += 1
        except Exception as exc:
            self._counters["walk_errors"] += 1
            log.debug("DHT walk failed: %s", _short(exc))

    async def _wait_admitted(self) -> None:
        """Wait (bounded) until a connected peer is in the routing table (identify done)."""
        table = self._dht.routing_table
        # The whole bound even if our connections drop meanwhile: the fallback lookup would
        # redial at once a peer that just closed on us, before it even saw us leave.
        with trio.move_on_after(_ADMIT_WAIT_S):
            while True:
                if any(table.peer_in_table(p) for p in self._host.get_connected_peers()):
                    return
                await trio.sleep(_IDENTIFY_POLL_S)

    async def _walk_connected(self, key: bytes) -> None:
        """Ask the connected DHT peers (no dials) for their peers closest to `key`.

        Once the table is not small, a walk is there to learn peers of every distance
        class, not to find the closest peers of a key: one round over connections we hold
        does that. A full lookup asks about 20 peers and, with a bounded degree, dials most
        of them (each a Noise handshake, identify and GossipSub hello, closed again by the
        trim): at 50 nodes that was 1.7 dials per node per second at idle. py-libp2p's
        one-peer FIND_NODE query adds what it learns to the routing table and peerstore.
        """
        table = self._dht.routing_table
        peers = [p for p in self._host.get_connected_peers() if table.peer_in_table(p)]
        if not peers:
            await self._walk(key)
            return
        self._counters["walks"] += 1
        self._counters["walks_connected"] += 1  # of the walks, those over connections only
        self._rng.shuffle(peers)
        query = self._dht.peer_routing._query_peer_for_closest
        with trio.move_on_after(self._settings.lookup_timeout_s) as scope:
            async with trio.open_nursery() as nursery:
                for peer in peers[:_CONNECTED_WALK_PEERS]:
                    nursery.start_soon(query, peer, key)
        if scope.cancelled_caught:
            self._counters["walk_timeouts"] += 1

    async def _dial_discovered(self) -> None:
        need = self._settings.low_watermark - len(self._host.get_connected_peers())
        if need <= 0:
            return
        now = trio.current_time()
        connected = set(self._host.get_connected_peers())
        peerstore = self._host.get_peerstore()
        candidates = [
            peer_id
            for peer_id in dict.fromkeys(
                [*self._dht.routing_table.get_peer_ids(), *peerstore.peers_with_addrs()]
            )
            if peer_id != self._self_id
            and peer_id not in connected
            and self._backoff.get(peer_id, (0, 0.0))[1] <= now
        ]
        self._rng.shuffle(candidates)
        limiter = trio.CapacityLimiter(self._settings.max_parallel_dials)

        async def dial_one(peer_id: Any) -> None:
            async with limiter:
                try:
                    addrs = peerstore.addrs(peer_id)
                    await self._dial(PeerInfo(peer_id, addrs))
                except Exception as exc:
                    self._dial_failed(peer_id, exc)

        async with trio.open_nursery() as nursery:
            for peer_id in candidates[:need]:
                nursery.start_soon(dial_one, peer_id)

    def _dial_failed(self, peer_id: Any, exc: BaseException) -> None:
        self._counters["dials_failed"] += 1
        failures = self._backoff.get(peer_id, (0, 0.0))[0] + 1
        delay = min(5.0 * 2 ** (failures - 1), _MAX_DIAL_BACKOFF_S)
        self._backoff[peer_id] = (failures, trio.current_time() + delay)
        # Unreachable peers only slow every later lookup down: take them off the table.
        if self._dht.routing_table.remove_peer(peer_id):
            self._counters["table_evictions"] += 1
        log.debug("dial %s failed (%d in a row): %s", peer_id, failures, _short(exc))

    # -- trimming ----------------------------------------------------------------------

    def trim_choice(self, peers: Sequence[Any], now: float) -> list[Any]:
        """The connected `peers` to close now so that `trim_target` remain (see above)."""
        settings = self._settings
        if len(peers) <= settings.high_watermark:
            return []
        # Young connections and those that carried a message lately stay (and count).
        young = [
            p
            for p in peers
            if now - self._connected_at.get(p, now) < settings.trim_grace_s
            or self.carries_messages(p, now, MESSAGE_PROTECT_S)
        ]
        spared = set(young)
        old = [p for p in peers if p not in spared]
        # Down to py-libp2p's auto-connector target, (low + high) / 2, not to the low
        # watermark: every disconnect makes it dial up to that target at once, so a trim
        # to the low watermark redialed a third of what it closed (200-node simnet at idle:
        # 0.14 auto-connector dials and 0.1 trims per node per second, each new connection
        # also a whole summary each way).
        slots = trim_target(settings) - len(young)
        # Distance classes (bit length of the XOR distance, as Kademlia's buckets), closest
        # peer first within each; taking one per class in turn keeps near and far links.
        classes: dict[int, list[tuple[int, Any]]] = {}
        for peer in old:
            distance = int.from_bytes(peer_id_to_key(peer), "big") ^ self._self_key
            classes.setdefault(distance.bit_length(), []).append((distance, peer))
        queues = [sorted(members, key=lambda m: m[0]) for _, members in sorted(classes.items())]
        keep: set[Any] = set()
        while slots > 0 and any(queues):
            for queue in queues:
                if queue and slots > 0:
                    keep.add(queue.pop(0)[1])
                    slots -= 1
        return [p for p in old if p not in keep]

    def room_choice(
        self,
        peers: Sequence[Any],
        now: float,
        *,
        old_only: bool,
        in_use: Collection[Any] = (),
    ) -> Any | None:
        """The one connected peer to close to make room at our cap (see `make_room`).

        In order: a connection we dialed for a lookup that is not `in_use` (a stream of
        ours open on it) and carried no message lately; one past its grace period; (not
        `old_only`) a young one; then, quiet for `MESSAGE_QUIET_S`, the connection whose
        last message is the oldest. Among the first three, from the most crowded distance
        class, the farthest in it: the trim's order, so the peers a trim would keep stay.
        """
        grace = self._settings.trim_grace_s
        free = [p for p in peers if p not in self._closing]
        quiet = [p for p in free if not self.carries_messages(p, now, MESSAGE_PROTECT_S)]
        lookups = [
            p
            for p in quiet
            if p in self._lookup_dialed
            and p not in in_use
            and now - self._connected_at.get(p, now) >= _LOOKUP_MIN_AGE_S
        ]
        old = [p for p in quiet if now - self._connected_at.get(p, now) >= grace]
        for pool in (lookups, old, [] if old_only else quiet):
            if pool:
                return self._farthest_of_crowded(pool)
        # Only connections that carried messages lately: the one quiet the longest, if it
        # has been quiet for a moment (its ACKs are back). A node hosting busy agents is
        # dialed by many senders: 200-node simnet under load, 56 message dials refused by
        # receivers whose every connection had carried a message in the grace period.
        talked = [
            p
            for p in free
            if p in self._message_at and not self.carries_messages(p, now, MESSAGE_QUIET_S)
        ]
        if not talked:
            return None
        return min(talked, key=lambda p: self._message_at[p])

    def _farthest_of_crowded(self, pool: Sequence[Any]) -> Any:
        classes: dict[int, list[tuple[int, Any]]] = {}
        for peer in pool:
            distance = int.from_bytes(peer_id_to_key(peer), "big") ^ self._self_key
            classes.setdefault(distance.bit_length(), []).append((distance, peer))
        crowded = max(classes.values(), key=len)
        return max(crowded, key=lambda member: member[0])[1]

    def _in_use(self, peers: Sequence[Any]) -> set[Any]:
        """Of `peers`, those with a stream open that is not a background one (a lookup's)."""
        connections = self._host.get_network().connections
        busy = set()
        for peer in peers:
            for conn in connections.get(peer, ()):
                for stream in conn.get_streams():
                    protocol = stream.get_protocol()
                    if protocol is None or not str(protocol).startswith(_BACKGROUND_PROTOCOLS):
                        busy.add(peer)
                        break
        return busy

    async def make_room(self, keep: Any = None, *, old_only: bool = False) -> bool:
        """Close one connection (never `keep`'s) so that a new one fits under our cap."""
        peers = [p for p in self._host.get_connected_peers() if p != keep]
        victim = self.room_choice(
            peers, trio.current_time(), old_only=old_only, in_use=self._in_use(peers)
        )
        if victim is None:
            return False
        self._closing.add(victim)
        try:
            with trio.move_on_after(_CLOSE_TIMEOUT_S):
                try:
                    await self._host.get_network().close_peer(victim)
                except Exception as exc:  # already gone, or py-libp2p's teardown failed
                    log.debug("closing %s for room failed: %s", victim, _short(exc))
        finally:
            self._closing.discard(victim)
        self._counters["closed_for_room"] += 1
        return True

    async def trim(self) -> int:
        """Close the connections `trim_choice` picks (in parallel, bounded); how many."""
        peers = self._host.get_connected_peers()
        now = trio.current_time()
        for gone in set(self._connected_at) - set(peers):
            del self._connected_at[gone]
        for gone in set(self._message_at) - set(peers):
            del self._message_at[gone]
        self._lookup_dialed.intersection_update(peers)
        doomed = self.trim_choice(peers, now)
        if not doomed:
            return 0
        network = self._host.get_network()

        async def close_one(peer_id: Any) -> None:
            try:
                await network.close_peer(peer_id)
            except Exception as exc:  # already gone, or py-libp2p's teardown failed
                log.debug("trimming %s failed: %s", peer_id, _short(exc))

        # In parallel: py-libp2p sleeps 0.1 s in every connection's teardown.
        with trio.move_on_after(_CLOSE_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                for peer_id in doomed:
                    nursery.start_soon(close_one, peer_id)
        self._counters["trimmed"] += len(doomed)
        return len(doomed)

    async def _trim_loop(self) -> None:
        while True:
            await trio.sleep(self._settings.trim_interval_s * self._rng.uniform(0.75, 1.25))
            await self.trim()
