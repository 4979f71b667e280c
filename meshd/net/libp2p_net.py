"""`Libp2pNetwork`: the `Network` a daemon runs, over py-libp2p (TCP, Noise, yamux, Kademlia).

It owns the host, the DHT (server mode, `/meshd/kad/1.0.0`, `/ma/` validator, strict
namespaces), the discovery service, the message streams (`/meshd/msg/1.0.0`,
`meshd.net.streams`) and one-shot request streams (`meshd.net.rpc`, e.g. agent migration),
all inside the nursery of `serve`. Connection
events come from a swarm notifee; they update our own table of connected peers (with
the trio time each connected) and go to the node as `NetEvent`s over a bounded channel
with `send_nowait`, because a notifee runs inline in py-libp2p's connection path and
must never wait on us. Events that do not fit are counted, never silently lost.
Agent topics run on GossipSub (`meshd.net.gossip`), built with the host so that it sees
every connection, and started before discovery dials anyone.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
from collections import Counter
from collections.abc import Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import trio
from libp2p.abc import INotifee
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStoreError
from libp2p.rcmgr import Direction
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from meshd.clock import WallClock, wall_ms
from meshd.guard import PeerGuard
from meshd.net.addrs import BootstrapAddr
from meshd.net.discovery import Discovery, DiscoverySettings
from meshd.net.gossip import GossipSettings, TopicService
from meshd.net.host import HostLimits, build_host
from meshd.net.kad import install_kad_protocol_id
from meshd.net.rpc import RequestSettings, RequestStreams
from meshd.net.streams import MessageStreams, StreamSettings
from meshd.net.types import (
    InboundBatch,
    Listening,
    MessageHandler,
    NetEvent,
    NetworkError,
    PeerConnected,
    PeerDisconnected,
    PeerSnapshot,
    RequestHandler,
    SendResult,
    TopicHandler,
)
from meshd.net.validator import AGENT_RECORD_NAMESPACE, AgentRecordValidator
from protocol.frames import Mode
from protocol.ids import NodeId

if TYPE_CHECKING:
    # trio 0.35 ships TaskStatus, but libp2p pulls in trio-typing whose trio-stubs (which
    # mypy prefers) lack it; trio_typing.TaskStatus is the same type for both.
    from trio_typing import TaskStatus

__all__ = ["Libp2pNetwork"]

log = logging.getLogger("meshd.net")

_CLOSE_TIMEOUT_S = 2.0
_CLOSE_QUEUE = 64  # banned peers waiting to be disconnected
_RECONCILE_S = 1.0
# A DHT get stops at this many valid records (the validator picks the best of them) ...
GET_QUORUM = 3
# ... and asks at most this many peers for the value (Kademlia's k: the peers a put stores at).
GET_MAX_QUERIES = 20


class _GetBudget:
    """GET_VALUE queries one `dht_get` may still send (its tasks see it through a ContextVar)."""

    def __init__(self, left: int) -> None:
        self.left = left


_get_budget: ContextVar[_GetBudget | None] = ContextVar("meshd_dht_get_budget", default=None)


def _bound_gets(value_store: Any) -> None:
    """Bound py-libp2p's `get_value` on this DHT: GET_MAX_QUERIES peers, no entry correction.

    py-libp2p 0.8.1 asks every peer it hears of for the value until none is left, unless a
    quorum of records arrived; a key with no record (mass-spawned agents have none, by
    design) thus asked every peer near the key and beyond, each a dial in a bounded-degree
    mesh. After a get it also stores the record at every close peer that lacked it, more
    dials. Inside `dht_get` (the ContextVar is set), queries beyond the budget answer "no
    record" without touching the network, and those stores are skipped; the owner's puts
    and refreshes (`meshd.publisher`) keep records where they belong.
    """
    get_from_peer = value_store._get_from_peer
    store_at_peer = value_store._store_at_peer

    async def bounded_get(peer_id: Any, key: bytes, *args: Any, **kwargs: Any) -> Any:
        budget = _get_budget.get()
        if budget is not None:
            if budget.left <= 0:
                return None
            budget.left -= 1
        return await get_from_peer(peer_id, key, *args, **kwargs)

    async def store_unless_getting(peer_id: Any, key: bytes, *args: Any, **kwargs: Any) -> Any:
        if _get_budget.get() is not None:
            return False
        return await store_at_peer(peer_id, key, *args, **kwargs)

    value_store._get_from_peer = bounded_get
    value_store._store_at_peer = store_unless_getting


def _spare_blameless_peers(swarm: Any) -> None:
    """A dial that failed because *this* node was at its connection cap blames nobody.

    py-libp2p 0.8.1 puts a peer whose dial failed into a 60 s negative cache, whatever the
    cause; every later dial of it (messages to a summary neighbour, DHT queries) then fails
    at once. When the cause is our own `max_connections` (a burst of DHT lookups filled
    it), the peer did nothing wrong: a 50-node simnet run at a cap of 24 ended 32 of 122
    failed messages "Peer recently failed all addresses (negative cache)", each blocked
    after one such dial. meshd paces its own redials (message streams, discovery).
    """
    cache = swarm._negative_peer_cache
    mark_failed = cache.mark_failed

    def mark_unless_full(peer_id: str) -> None:
        if len(swarm.get_connections()) >= swarm.connection_config.max_connections:
            return
        mark_failed(peer_id)

    cache.mark_failed = mark_unless_full


def _release_inbound_slots(swarm: Any) -> None:
    """Lift py-libp2p's limiter of inbound connections: it counts them for ever.

    py-libp2p 0.8.1 takes a token of `_inbound_limiter` (max_connections - min_connections
    of them) for each inbound connection and gives it back when the listener's handler
    returns, but the handler waits for the whole swarm to stop: a node refused every inbound
    connection once it had accepted that many in its life, whatever it held now (simnet,
    cap 24: after the join, most nodes could dial out but no longer be dialed, and 306 of
    330 failed message dials under load at 50 nodes were refused that way). The cap on
    connections held is still enforced, at the upgrade and at registration.
    """
    swarm._inbound_limiter = trio.CapacityLimiter(math.inf)


# Set while a message or request of ours is sent: tasks started meanwhile (a peer's message
# stream task, the dial it makes) see it. Their dials may close a connection to fit under
# our cap; DHT lookups and walks, started elsewhere, may not.
_sending: ContextVar[bool] = ContextVar("meshd_sending", default=False)


# How often a peer's message traffic is noted for `Discovery.note_messages`, and how many
# peers' last notes are remembered.
_NOTE_INTERVAL_S = 1.0
_NOTED_MAX = 4096


def _make_room(swarm: Any, discovery: Discovery, counters: Counter[str]) -> None:
    """A message or request dial at our connection cap first closes another connection.

    py-libp2p refuses any dial while `max_connections` are open, and DHT lookups (each
    dialing most of the ~20 peers it asks) keep a bounded-degree node at its cap: in a
    50-node simnet at a cap of 24, 10 of the 12 messages that could not be sent failed at
    our own cap. A message is what the mesh is for; a lookup's connection is closed by the
    next trim anyway, so the message dial takes its place (`Discovery.make_room`). Closing
    one was not enough while lookups kept dialing (the freed slot went to one of theirs), so
    the last sixth of the slots is kept for our sends: other dials stop below it. A slot
    freed for a send stays reserved until its dial is done: inbound dials and lookups count
    it as taken (200-node simnet under load: about 90 message dials failed at our own cap,
    the freed slot taken by an inbound connection or another send).
    """
    dial_peer = swarm.dial_peer
    cap = swarm.connection_config.max_connections
    # Other dials stop this far below the cap: closing a connection for a send was not
    # enough while lookups dialed too (the slot went to one of theirs first).
    reserve = max(2, cap // 6) if cap > 4 else 0
    reserved = 0  # slots freed for sends whose dial is not done yet
    dialing = 0  # other dials of ours in flight: each may take a slot when it registers

    def held() -> int:
        # Slots taken or promised: a check at a dial's start let ten concurrent lookups
        # past the reserve at once, and py-libp2p's own check comes only at registration.
        return len(swarm.get_connections()) + reserved + dialing

    async def counted_dial(peer_id: Any) -> Any:
        nonlocal dialing
        dialing += 1
        try:
            return await dial_peer(peer_id)
        finally:
            dialing -= 1

    async def dial_for_send(peer_id: Any) -> Any:
        nonlocal reserved
        if held() < cap or not await discovery.make_room(peer_id):
            return await counted_dial(peer_id)
        reserved += 1
        try:
            try:
                return await dial_peer(peer_id)
            except SwarmException:
                # Another dial took the room first (a connection registered meanwhile):
                # once more, then the failure is the caller's.
                if len(swarm.get_connections()) < cap:
                    raise
                counters["room_retries"] += 1
                await discovery.make_room(peer_id)
            return await dial_peer(peer_id)
        finally:
            reserved -= 1

    async def dial_making_room(peer_id: Any) -> Any:
        if any(not c.is_closed for c in swarm.get_connections(peer_id)):
            return await dial_peer(peer_id)
        if _sending.get():
            conn = await dial_for_send(peer_id)
            discovery.note_dialed(peer_id, for_lookup=False)
            return conn
        if reserve and held() >= cap - reserve:
            counters["dials_kept_for_sends"] += 1
            # Before py-libp2p's dial: no negative-cache entry for the peer.
            raise SwarmException("connection slots kept for messages")
        conn = await counted_dial(peer_id)
        discovery.note_dialed(peer_id, for_lookup=True)
        return conn

    swarm.dial_peer = dial_making_room

    # The receiving side: py-libp2p refuses an inbound connection at the cap before its
    # handshake. Under load the nodes that host busy agents are dialed by many senders and
    # sit at their cap (same run: 388 message dials refused by the remote side, 94 by our
    # own); a lookup's idle connection, or one past its grace period, makes way for the
    # newcomer, which may be a sender (`Discovery.room_choice`). None (a join storm, every
    # connection young and busy): refused as before, a cheap refusal.
    upgrade_inbound = swarm.upgrade_inbound_raw_conn

    async def upgrade_making_room(raw_conn: Any, maddr: Any) -> Any:
        # Our lookups' dials in flight do not count here: they are refused at the cap.
        if len(swarm.get_connections()) + reserved >= cap:
            made = await discovery.make_room(old_only=True)
            if not made and len(swarm.get_connections()) + reserved >= cap:
                if len(swarm.get_connections()) < cap:
                    # The free slot is reserved for a send of ours being dialed.
                    counters["inbound_refused_for_sends"] += 1
                await raw_conn.close()
                raise SwarmException("Maximum connections limit reached")
        return await upgrade_inbound(raw_conn, maddr)

    swarm.upgrade_inbound_raw_conn = upgrade_making_room


class _Notifee(INotifee):
    """Forwards swarm connection events to the network (the rest is ignored)."""

    def __init__(self, network: Libp2pNetwork) -> None:
        self._network = network

    async def connected(self, network: Any, conn: Any) -> None:
        self._network._on_connected(conn)

    async def disconnected(self, network: Any, conn: Any) -> None:
        self._network._on_disconnected(conn)

    async def opened_stream(self, network: Any, stream: Any) -> None:
        return None

    async def closed_stream(self, network: Any, stream: Any) -> None:
        return None

    async def listen(self, network: Any, multiaddr: Any) -> None:
        return None

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        return None


def _bind_error(addr: str) -> str | None:
    """Try to bind `addr` ourselves (no SO_REUSEPORT); return why it failed, or None."""
    if "/tcp/" not in addr:
        return None  # not a socket (simnet's /memory/<n>): nothing to probe
    maddr = Multiaddr(addr)
    names = [p.name for p in maddr.protocols()]
    family = socket.AF_INET6 if "ip6" in names else socket.AF_INET
    host = maddr.value_for_protocol(names[0])
    port = int(maddr.value_for_protocol("tcp"))
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR only lets us past connections in TIME_WAIT; a live listener
        # still makes the bind fail, which is what we want to find out.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "address already in use (is another daemon listening there?)"
            return exc.strerror or str(exc)
    return None


def _check_listen_addrs(addrs: Sequence[str]) -> None:
    """Refuse listen addresses whose port is taken, before py-libp2p binds them.

    py-libp2p opens its TCP listeners with SO_REUSEPORT (for hole punching), so a
    second meshd daemon on the same port would *share* it with the first, the kernel
    splitting incoming connections between them, instead of failing. Our probe binds
    without SO_REUSEPORT, which fails against any listener, theirs included.
    """
    tcp = [addr for addr in addrs if "/tcp/" in addr and not addr.endswith("/tcp/0")]
    failures = [(addr, _bind_error(addr)) for addr in tcp]
    reasons = [f"{addr}: {error}" for addr, error in failures if error]
    if reasons:
        raise NetworkError(f"cannot listen on {'; '.join(reasons)}")


class Libp2pNetwork:
    """A meshd network over py-libp2p; see `meshd.net.types.Network`."""

    def __init__(
        self,
        seed: bytes,
        *,
        listen: Sequence[str],
        bootstrap: Sequence[BootstrapAddr] = (),
        mdns: bool = False,
        limits: HostLimits | None = None,
        discovery: DiscoverySettings | None = None,
        gossip: GossipSettings | None = None,
        wall_clock: WallClock = wall_ms,
        messages: StreamSettings | None = None,
        requests: RequestSettings | None = None,
        psk: str | None = None,
        guard: PeerGuard | None = None,
        transport: Any = None,
    ) -> None:
        install_kad_protocol_id()
        self._listen = [Multiaddr(addr) for addr in listen]
        self._limits = limits or HostLimits()
        # `transport`: an ITransport instead of TCP (simnet's in-memory one, meshd.net.memory).
        self._host = build_host(seed, self._limits, mdns=mdns, psk=psk, transport=transport)
        # Now, before any connection: Pubsub ignores connections made before it exists.
        self._topics = TopicService(self._host, gossip, wall_clock=wall_clock)
        self.validator = AgentRecordValidator(wall_clock)
        # Strict: a key outside /pk/, /ipns/ and /ma/ is refused, not stored unchecked.
        self._dht = KadDHT(self._host, DHTMode.SERVER, strict_validation=True)
        self._dht.register_validator(AGENT_RECORD_NAMESPACE, self.validator)
        _bound_gets(self._dht.value_store)
        _spare_blameless_peers(self._host.get_network())
        _release_inbound_slots(self._host.get_network())
        self._counters: Counter[str] = Counter()
        self._events: trio.MemorySendChannel[NetEvent] | None = None
        # peer -> trio time we first saw a live connection to it
        self._since: dict[Any, float] = {}
        # peer id text -> trio time its messages were last noted (see _note_messages)
        self._noted: dict[str, float] = {}
        self._discovery = Discovery(
            self._host,
            self._dht,
            bootstrap,
            discovery or DiscoverySettings(low_watermark=self._limits.low_watermark),
            self._emit,
            self._counters,
        )
        _make_room(self._host.get_network(), self._discovery, self._counters)
        self._notifee = _Notifee(self)
        # Bans: the guard (shared with delivery) decides, we disconnect and refuse.
        self._guard = guard
        self._to_close_send, self._to_close = trio.open_memory_channel[Any](_CLOSE_QUEUE)
        if guard is not None:
            guard.on_ban = self._disconnect_banned
        self._messages = MessageStreams(self._host, messages, guard)
        self._requests = RequestStreams(self._host, requests)

    # -- Network interface ------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        """This node's PeerID (base58 text)."""
        return str(self._host.get_id())

    @property
    def host(self) -> Any:
        """The py-libp2p host (for tests and benchmarks inside meshd.net only)."""
        return self._host

    @property
    def dht(self) -> Any:
        """The py-libp2p `KadDHT` (for later services in meshd.net: records, providers)."""
        return self._dht

    def listen_addrs(self) -> list[str]:
        """The addresses we listen on, each ending in `/p2p/<our id>`."""
        return [str(addr) for addr in self._host.get_addrs()]

    def connected_peers(self) -> list[PeerSnapshot]:
        """The peers we hold a connection to now."""
        peerstore = self._host.get_peerstore()
        snapshots = []
        for peer_id, since in self._since.items():
            if not self._is_live(peer_id):
                continue  # closed a moment ago; `_reconcile` will report it
            try:
                addrs = tuple(str(addr) for addr in peerstore.addrs(peer_id))
            except PeerStoreError:
                addrs = ()
            snapshots.append(PeerSnapshot(str(peer_id), addrs, since))
        return snapshots

    def routing_table_size(self) -> int:
        """How many peers the DHT routing table holds."""
        return int(self._dht.get_routing_table_size())

    def known_peers(self) -> int:
        """How many other peers we know an address for."""
        me = self._host.get_id()
        return sum(1 for p in self._host.get_peerstore().peers_with_addrs() if p != me)

    async def dht_put(self, key: str, value: bytes) -> None:
        """Store a validated record in the DHT (at the peers closest to `key`)."""
        self._counters["dht_puts"] += 1
        await self._dht.put_value(key, value)

    async def dht_provide(self, key: str) -> bool:
        """Announce this node as a provider of `key` (hex multihash) at the closest peers."""
        self._counters["dht_provides"] += 1
        try:
            return bool(await self._dht.provide(key))
        except Exception as exc:  # py-libp2p raises many kinds here; count and carry on
            self._counters["dht_provide_errors"] += 1
            log.debug("DHT provide %s failed: %s", key, exc)
            return False

    async def dht_find_providers(self, key: str, count: int = 20) -> list[str]:
        """Peer ids of up to `count` providers of `key` (hex multihash); [] on failure."""
        self._counters["dht_find_providers"] += 1
        try:
            found = await self._dht.find_providers(key, count)
        except Exception as exc:  # as for dht_get: a lookup that fails finds nothing
            self._counters["dht_find_providers_errors"] += 1
            log.debug("DHT find_providers %s failed: %s", key, exc)
            return []
        return [info.peer_id.to_base58() for info in found]

    async def dht_get(self, key: str) -> bytes | None:
        """The best record under `key` in the DHT, or None (failures count, never raise)."""
        self._counters["dht_gets"] += 1
        token = _get_budget.set(_GetBudget(GET_MAX_QUERIES))
        try:
            value = await self._dht.get_value(key, quorum=GET_QUORUM)
        except Exception as exc:  # py-libp2p raises many kinds here; a lookup just fails
            self._counters["dht_get_errors"] += 1
            log.debug("DHT get %s failed: %s", key, exc)
            return None
        finally:
            _get_budget.reset(token)
        return bytes(value) if value is not None else None

    def stats(self) -> dict[str, Any]:
        """Counters: dials, walks, table admissions, rejected records, dropped events."""
        out: dict[str, Any] = dict(sorted(self._counters.items()))
        out["records_rejected"] = dict(self.validator.rejected)
        out["messages"] = self._messages.stats()
        out["pubsub"] = self._topics.stats()
        out["requests"] = self._requests.stats()
        return out

    def set_message_handler(self, handler: MessageHandler | None) -> None:
        """Accept `/meshd/msg/1.0.0` streams and give their MSG frames to `handler`."""
        if handler is None:
            self._messages.set_handler(None)
            return

        async def noting(batch: InboundBatch) -> None:
            # A connection that carries messages is kept (`Discovery.note_messages`).
            self._note_messages(batch.peer_id)
            await handler(batch)

        self._messages.set_handler(noting)

    def _note_messages(self, peer_id: str) -> None:
        # Called for every message sent alone: a peer id's base58 costs about 20 us to parse,
        # and noting a peer once a second keeps its connection as well (the window is 30 s).
        now = trio.current_time()
        if now - self._noted.get(peer_id, -math.inf) < _NOTE_INTERVAL_S:
            return
        try:
            peer = ID.from_base58(peer_id)
        except ValueError:  # not a peer id we could be connected to
            return
        if self._is_live(peer):  # a failed dial leaves nothing to keep
            self._discovery.note_messages(peer)
            if len(self._noted) >= _NOTED_MAX:
                self._noted.clear()  # bounded; the cost is one more parse per peer
            self._noted[peer_id] = now

    @property
    def topics(self) -> TopicService:
        """The GossipSub topic service (for tests and benchmarks inside meshd.net only)."""
        return self._topics

    def set_topic_handler(self, handler: TopicHandler | None) -> None:
        """Give the messages of subscribed topics (from other nodes) to `handler`."""
        self._topics.set_handler(handler)

    async def subscribe_topic(self, topic: str) -> None:
        """Join the GossipSub mesh of `/meshd/topic/<topic>` (idempotent)."""
        await self._topics.subscribe(topic)

    async def unsubscribe_topic(self, topic: str) -> None:
        """Leave the GossipSub mesh of `/meshd/topic/<topic>` (idempotent)."""
        await self._topics.unsubscribe(topic)

    async def publish_topic(self, topic: str, envelope: bytes) -> None:
        """Publish an envelope addressed to `topic` on GossipSub (paced, best effort)."""
        await self._topics.publish(topic, envelope)

    async def send_message(
        self, peer_id: str, addrs: Sequence[str], envelope: bytes, *, mode: Mode
    ) -> SendResult:
        """Carry one envelope to `peer_id` on its message stream and await the ACK."""
        token = _sending.set(True)
        try:
            return await self._messages.send(peer_id, addrs, envelope, mode)
        finally:
            _sending.reset(token)
            self._note_messages(peer_id)

    async def send_messages(
        self,
        peer_id: str,
        addrs: Sequence[str],
        envelopes: Sequence[bytes],
        *,
        mode: Mode,
        timeout: float,
    ) -> list[SendResult | None]:
        """Carry several envelopes to `peer_id` and await their ACKs (None: none in time)."""
        token = _sending.set(True)
        try:
            return await self._messages.send_many(peer_id, addrs, envelopes, mode, timeout=timeout)
        finally:
            _sending.reset(token)
            self._note_messages(peer_id)

    def peer_addrs(self, peer_id: str) -> list[str]:
        """The addresses the peerstore holds for `peer_id` (connected or not), or []."""
        try:
            peer = ID(NodeId.from_text(peer_id).raw)
            return [str(addr) for addr in self._host.get_peerstore().addrs(peer)]
        except (ValueError, PeerStoreError):
            return []

    def set_request_handler(self, protocol: str, handler: RequestHandler | None) -> None:
        """Answer one-shot requests on `protocol` (`meshd.net.rpc`) with `handler`."""
        self._requests.set_handler(protocol, handler)

    async def request(
        self,
        peer_id: str,
        addrs: Sequence[str],
        protocol: str,
        payload: bytes,
        *,
        timeout: float,
    ) -> bytes:
        """Send one request on a stream of its own and return the answer (`meshd.net.rpc`)."""
        token = _sending.set(True)
        try:
            return await self._requests.request(
                peer_id, addrs, protocol, payload, timeout=timeout
            )
        finally:
            _sending.reset(token)

    async def serve(
        self,
        events: trio.MemorySendChannel[NetEvent],
        *,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen, start the DHT and discovery, report `started()`, run until cancelled."""
        self._events = events
        network = self._host.get_network()
        network.register_notifee(self._notifee)
        _check_listen_addrs([str(addr) for addr in self._listen])
        async with self._host.run(self._listen):
            # py-libp2p logs a failed listen and carries on; we refuse to run deaf.
            missing = [str(a) for a in self._listen if str(a) not in network.listeners]
            if missing:
                reasons = [f"{a}: {_bind_error(a) or 'refused by py-libp2p'}" for a in missing]
                raise NetworkError(f"cannot listen on {'; '.join(reasons)}")
            async with background_trio_service(self._dht), trio.open_nursery() as nursery:
                await nursery.start(self._topics.serve)
                await nursery.start(self._messages.serve)
                await nursery.start(self._discovery.serve)
                nursery.start_soon(self._reconcile)
                nursery.start_soon(self._close_banned)
                self._emit(Listening(tuple(self.listen_addrs())))
                task_status.started()
                await trio.sleep_forever()

    async def close(self) -> None:
        """Close every connection (bounded in time) so peers see us leave at once."""
        network = self._host.get_network()

        async def close_one(peer_id: Any) -> None:
            try:
                await network.close_peer(peer_id)
            except Exception as exc:
                self._counters["close_errors"] += 1
                log.debug("closing connection to %s failed: %s", peer_id, exc)

        # In parallel: py-libp2p sleeps 0.1 s in every connection's teardown.
        with trio.move_on_after(_CLOSE_TIMEOUT_S) as scope:
            async with trio.open_nursery() as nursery:
                for peer_id in list(network.connections):
                    nursery.start_soon(close_one, peer_id)
        if scope.cancelled_caught:
            self._counters["close_timeouts"] += 1

    # -- connection state -----------------------------------------------------------------
    #
    # The swarm's table of live connections is the truth; notifee calls only tell us to
    # look again. They can arrive out of order (a connection trimmed as a duplicate may
    # report "disconnected" before its "connected"), so each one is checked against the
    # table, and `_reconcile` rechecks everything every second in case a call was lost.

    def _emit(self, event: NetEvent) -> None:
        if self._events is None:
            return
        try:
            self._events.send_nowait(event)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self._counters["events_dropped"] += 1

    def _is_live(self, peer_id: Any) -> bool:
        connections = self._host.get_network().connections.get(peer_id, ())
        return any(not conn.is_closed for conn in connections)

    def _on_connected(self, conn: Any) -> None:
        peer_id = conn.muxed_conn.peer_id
        if conn.is_closed:
            return
        if self._guard is not None and self._guard.banned(str(peer_id), trio.current_time()):
            self._counters["banned_refused"] += 1
            self._queue_close(peer_id)
            return
        if peer_id in self._since:
            return
        self._since[peer_id] = trio.current_time()
        addrs = conn.get_transport_addresses()
        self._counters["peers_connected"] += 1
        self._emit(
            PeerConnected(
                peer_id=str(peer_id),
                addr=str(addrs[0]) if addrs else "",
                inbound=conn.direction == Direction.INBOUND,
            )
        )
        self._discovery.peer_connected(peer_id)

    def _disconnect_banned(self, peer_id: str) -> None:
        """The guard banned `peer_id`: close its connection (soon, from `_close_banned`)."""
        try:
            self._queue_close(ID.from_base58(peer_id))
        except ValueError:  # not a peer id we could be connected to
            return

    def _queue_close(self, peer_id: Any) -> None:
        try:
            self._to_close_send.send_nowait(peer_id)
        except trio.WouldBlock:  # many bans at once: the reconnect check catches the rest
            self._counters["ban_closes_dropped"] += 1

    async def _close_banned(self) -> None:
        network = self._host.get_network()
        async for peer_id in self._to_close:
            self._counters["ban_disconnects"] += 1
            with trio.move_on_after(_CLOSE_TIMEOUT_S):
                try:
                    await network.close_peer(peer_id)
                except Exception as exc:  # already gone, or py-libp2p's teardown failed
                    log.debug("closing banned peer %s failed: %s", peer_id, exc)

    def _on_disconnected(self, conn: Any) -> None:
        peer_id = conn.muxed_conn.peer_id
        if peer_id in self._since and not self._is_live(peer_id):
            self._peer_gone(peer_id)

    def _peer_gone(self, peer_id: Any) -> None:
        since = self._since.pop(peer_id)
        self._discovery.peer_disconnected(peer_id)
        self._counters["peers_disconnected"] += 1
        self._emit(
            PeerDisconnected(peer_id=str(peer_id), connected_for_s=trio.current_time() - since)
        )

    async def _reconcile(self) -> None:
        network = self._host.get_network()
        while True:
            await trio.sleep(_RECONCILE_S)
            for peer_id in [p for p in self._since if not self._is_live(p)]:
                self._counters["missed_disconnects"] += 1
                self._peer_gone(peer_id)
            for peer_id, connections in list(network.connections.items()):
                live = [conn for conn in connections if not conn.is_closed]
                if live and peer_id not in self._since:
                    self._counters["missed_connects"] += 1
                    self._on_connected(live[0])
