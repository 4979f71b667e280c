"""Agent migration: move an agent, with its key, state and inbox, to another node.

One request per agent on `/meshd/migrate/1.0.0` (`Network.request`, a stream of its own):
the offer is one CBOR map (below); the answer says `ok`, or why not.

Sender, `Migrator.migrate(agent, to_peer_id)`:
1. refuse early what cannot move: this node as target, an unknown peer (no address),
   the operator agent, agents spawned by agents (see "Limits");
2. `Runtime.begin_migration`: checks the `migrate` transition, lets the running handler
   finish and save its state, moves what waited in memory to the persistent inbox, and
   holds (in memory, bounded) every message that arrives from then on;
3. export the row and inbox in one snapshot, open the agent's seed, build its provenance
   (the birth certificate names and is signed by the node that spawned it, so it stays
   valid wherever the agent lives), and send the offer. The seed travels in plaintext
   inside the Noise-encrypted libp2p channel: each node seals agent keys with its own key;
4. on the peer's `ok`: `Runtime.forget_migrated` (a local tombstone row, and NO tombstone
   record: the agent is not gone), the router learns the new location (local senders go
   there; remote senders that still come here get `not_here` and re-resolve through the
   DHT, where the receiver publishes the new record first), and the held messages are
   forwarded to the new node;
5. on anything else (refusal, no answer within `timeout_s`, a local error, cancellation):
   `Runtime.abort_migration` restores the agent as it was and delivers what was held.

Receiver (the request handler), every check before any write, each refusal counted by code
and logged: the offer's structure and sizes, its version, the seed's public key equal to
the agent id, the provenance verifying and being about this agent (kind, creation time,
budget), every inbox frame a signed envelope for this agent or a topic, the state a CBOR
map; then the trust policy (`MigrationPolicy`, the hook for issue 9: today any peer may
move any agent here, and each arrival is counted and logged); then the kind must run here
without importing a module a peer names; then the agent must not be hosted here already (a
tombstone is fine). Then the seed is sealed with this node's vault, the agent stored with
its inbox and indexed (`Runtime.adopt`, shielded from cancellation), the publisher told
(`moved`: the new record goes first, its sequence number above the old one's), and `ok`
answered. Peers cannot push agents any other way.

Offer (CBOR map, deterministic encoding): 1 version (1), 2 agent id (32 bytes), 3 seed (32
bytes), 4 kind, 5 name (optional), 6 caps [text], 7 lifecycle ("dormant" | "suspended"), 8
created (ms), 9 expires (ms, optional), 10 budget, 11 state (CBOR bytes of a map), 12 state
version, 13 record sequence, 14 provenance [certificate bytes], 15 inbox [envelope bytes].
Answer: 1 ok (bool), 2 refusal code, 3 detail (both only when refused).

Limits: an offer is at most 16 MiB (state 4 MiB, inbox 1,000 frames and 8 MiB). Only root
agents (spawned by a node, provenance of one certificate) migrate for now: the receiver
could verify a longer chain, but could not republish it in the agent's records, because
`build_provenance` rebuilds chains from the ancestors' rows, which stay behind.
"""

from __future__ import annotations

import logging
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from meshd.net.types import Network, RequestError
from meshd.runtime.keys import KeyVaultError
from meshd.runtime.kinds import KindError, resolve_kind
from meshd.runtime.lifecycle import State, UnknownAgent
from meshd.runtime.quota import QuotaExceeded
from meshd.runtime.records import build_provenance
from meshd.runtime.runtime import OPERATOR_NAME, Runtime
from meshd.store import AgentExport, AgentRow, DuplicateAgent, InboxFull, StoreError
from protocol.cbor import DecodeLimits, check_plain, dumps_canonical, loads_strict
from protocol.envelope import Envelope
from protocol.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from protocol.ids import AgentId, NodeId, SigningKey
from protocol.records import MAX_CHAIN, Provenance

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = [
    "MIGRATE_PROTOCOL",
    "MigrationError",
    "MigrationOffer",
    "MigrationPolicy",
    "Migrator",
    "OfferRefused",
    "accept_any",
    "build_offer",
    "decode_answer",
    "decode_offer",
    "encode_answer",
]

log = logging.getLogger("meshd.migration")

MIGRATE_PROTOCOL = "/meshd/migrate/1.0.0"
OFFER_VERSION = 1
MAX_OFFER_BYTES = 16 * 1024 * 1024
MAX_STATE_BYTES = 4 * 1024 * 1024
MAX_INBOX_FRAMES = 1_000
MAX_INBOX_BYTES = 8 * 1024 * 1024
MAX_FRAME_BYTES = 64 * 1024
MAX_CAPS = 64
# The old node may still be signing one record for the agent as the move begins (its
# publisher passed the key check just before): leave room above it for the new node's.
SEQ_MARGIN = 1

# Refusal codes, shared by answers, counters and logs.
MALFORMED = "malformed"
TOO_LARGE = "too_large"
UNKNOWN_VERSION = "unknown_version"
BAD_KEY = "bad_key"
BAD_PROVENANCE = "bad_provenance"
BAD_INBOX = "bad_inbox"
UNSUPPORTED = "unsupported"
UNTRUSTED = "untrusted"
UNKNOWN_KIND = "unknown_kind"
ALREADY_HOSTED = "already_hosted"
NAME_TAKEN = "name_taken"
QUOTA = "quota"
UNAVAILABLE = "unavailable"

(
    _K_VERSION,
    _K_AGENT,
    _K_SEED,
    _K_KIND,
    _K_NAME,
    _K_CAPS,
    _K_LIFECYCLE,
    _K_CREATED,
    _K_EXPIRES,
    _K_BUDGET,
    _K_STATE,
    _K_STATE_VERSION,
    _K_RECORD_SEQ,
    _K_PROVENANCE,
    _K_INBOX,
) = range(1, 16)
_OPTIONAL = frozenset({_K_NAME, _K_EXPIRES})
_REQUIRED = frozenset(range(1, 16)) - _OPTIONAL
_LIFECYCLES = (State.DORMANT.value, State.SUSPENDED.value)
_OFFER_LIMITS = DecodeLimits(
    max_size=MAX_OFFER_BYTES, max_depth=3, max_str=MAX_STATE_BYTES, max_items=MAX_INBOX_FRAMES
)
_STATE_LIMITS = DecodeLimits(max_size=MAX_STATE_BYTES, max_depth=32, max_str=MAX_STATE_BYTES)
_ANSWER_LIMITS = DecodeLimits(max_size=4096, max_depth=2, max_str=1024, max_items=8)
_MAX_DETAIL = 300
_MAX_UINT = 2**63 - 1
# The rule the control API applies to names at spawn.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class MigrationError(Exception):
    """A migration did not happen; the agent stays here, as it was.

    `code`: `bad_peer` (no such peer id, or this node), `not_migratable` (this agent cannot
    move), `unreachable` (no answer, or a broken one) or `refused` (`reason` says why).
    """

    def __init__(self, code: str, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class OfferRefused(Exception):
    """A migration offer is refused; `code` is one of this module's refusal codes."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail[:_MAX_DETAIL]


# Whether this node takes an agent from a peer: None accepts, a text refuses with that reason.
# Issue 9's trust policy (only agents rooted in listed node keys, or only listed peers) goes
# here; it sees the sending peer and the verified provenance (`provenance.root_node`).
MigrationPolicy = Callable[[str, Provenance], str | None]


def accept_any(peer_id: str, provenance: Provenance) -> str | None:
    """The open mesh: any peer may move here any agent whose provenance verifies."""
    del peer_id, provenance
    return None


class LocationPublisher(Protocol):
    """What the migrator tells the record publisher (`meshd.publisher.Publisher`)."""

    def moved(self, agent: AgentId) -> None:
        """An agent arrived here by migration: publish its new location first."""
        ...


class Locations(Protocol):
    """Where agents live (`meshd.router.Router`)."""

    def learn(self, agent: AgentId, peer_id: str, addrs: tuple[str, ...] = ()) -> None:
        """Remember where an agent lives."""
        ...


# --- the offer -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MigrationOffer:
    """Everything of an agent that moves: identity, key, state, inbox, provenance."""

    agent: AgentId
    seed: bytes
    kind: str
    name: str | None
    caps: tuple[str, ...]
    lifecycle: str
    created_ms: int
    expires_ms: int | None
    budget: int
    state: bytes
    state_version: int
    record_seq: int
    provenance: Provenance
    inbox: tuple[bytes, ...]

    def encode(self) -> bytes:
        """The offer as deterministic CBOR."""
        fields: dict[int, Any] = {
            _K_VERSION: OFFER_VERSION,
            _K_AGENT: self.agent.raw,
            _K_SEED: self.seed,
            _K_KIND: self.kind,
            _K_CAPS: list(self.caps),
            _K_LIFECYCLE: self.lifecycle,
            _K_CREATED: self.created_ms,
            _K_BUDGET: self.budget,
            _K_STATE: self.state,
            _K_STATE_VERSION: self.state_version,
            _K_RECORD_SEQ: self.record_seq,
            _K_PROVENANCE: self.provenance.to_cbor_obj(),
            _K_INBOX: list(self.inbox),
        }
        if self.name is not None:
            fields[_K_NAME] = self.name
        if self.expires_ms is not None:
            fields[_K_EXPIRES] = self.expires_ms
        return dumps_canonical(fields)

    def to_export(self, sealed_seed: bytes, now_ms: int) -> AgentExport:
        """The row (with the seed sealed by this node) and inbox to store."""
        row = AgentRow(
            id=self.agent.raw,
            kind=self.kind,
            name=self.name,
            caps=self.caps,
            lifecycle="suspended" if self.lifecycle == State.SUSPENDED.value else "dormant",
            created_ms=self.created_ms,
            expires_ms=self.expires_ms,
            parent=None,
            budget=self.budget,
            secret=sealed_seed,
            # Pinned: this node could not sign it (the spawning node did), only keep it.
            birth_cert=self.provenance.certs[0].encoded,
            state=self.state,
            state_version=self.state_version,
            record_seq=self.record_seq,
            updated_ms=now_ms,
        )
        return AgentExport(row, self.inbox)


async def build_offer(runtime: Runtime, agent: AgentId) -> MigrationOffer:
    """The offer for a hosted agent, from one snapshot of its row and inbox."""
    export = await runtime.store.export_agent(agent.raw)
    row = export.row
    if len(row.state) > MAX_STATE_BYTES:
        raise MigrationError(
            "not_migratable", f"its state is {len(row.state)} bytes, over {MAX_STATE_BYTES}"
        )
    if len(export.inbox) > MAX_INBOX_FRAMES or sum(map(len, export.inbox)) > MAX_INBOX_BYTES:
        raise MigrationError("not_migratable", "its inbox is over the limit of a migration")
    try:
        seed = runtime.vault.open(row.secret).seed
    except KeyVaultError as exc:
        raise MigrationError("not_migratable", str(exc)) from None
    return MigrationOffer(
        agent=agent,
        seed=seed,
        kind=row.kind,
        name=row.name,
        caps=tuple(row.caps),
        lifecycle=row.lifecycle if row.lifecycle in _LIFECYCLES else State.DORMANT.value,
        created_ms=row.created_ms,
        expires_ms=row.expires_ms,
        budget=row.budget,
        state=row.state,
        state_version=row.state_version,
        record_seq=row.record_seq + SEQ_MARGIN,
        provenance=await build_provenance(runtime, agent),
        inbox=export.inbox,
    )


def _uint(fields: dict[int, Any], key: int, name: str) -> int:
    value = fields[key]
    if type(value) is not int or not 0 <= value <= _MAX_UINT:
        raise OfferRefused(MALFORMED, f"{name} must be an unsigned integer")
    return value


def _text(value: Any, name: str, max_len: int = 64) -> str:
    if type(value) is not str or not 0 < len(value) <= max_len:
        raise OfferRefused(MALFORMED, f"{name} must be text of 1..{max_len} characters")
    return value


def _bytes(fields: dict[int, Any], key: int, name: str, max_len: int) -> bytes:
    value = fields[key]
    if type(value) is not bytes:
        raise OfferRefused(MALFORMED, f"{name} must be a byte string")
    if len(value) > max_len:
        raise OfferRefused(TOO_LARGE, f"{name} is {len(value)} bytes, over {max_len}")
    return value


def decode_offer(data: bytes) -> MigrationOffer:
    """Parse and check an offer from a peer (CPU-bound: run it in a worker thread).

    Raises `OfferRefused` with the first problem found; never anything else.
    """
    try:
        return _decode_offer(data)
    except OfferRefused:
        raise
    except (ValueError, TypeError, LocalProtocolError, RemoteProtocolError) as exc:
        # The checks above are meant to catch everything first; this is the safety net.
        raise OfferRefused(MALFORMED, str(exc) or type(exc).__name__) from None


def _decode_offer(data: bytes) -> MigrationOffer:
    if len(data) > MAX_OFFER_BYTES:
        raise OfferRefused(TOO_LARGE, f"offer of {len(data)} bytes, over {MAX_OFFER_BYTES}")
    try:
        fields = loads_strict(data, _OFFER_LIMITS)
        check_plain(fields, _OFFER_LIMITS)
    except RemoteProtocolError as exc:
        code = TOO_LARGE if exc.reason is RejectReason.TOO_LARGE else MALFORMED
        raise OfferRefused(code, exc.detail or str(exc)) from None
    if type(fields) is not dict or any(type(key) is not int for key in fields):
        raise OfferRefused(MALFORMED, "an offer is a map with integer keys")
    if fields.get(_K_VERSION) != OFFER_VERSION or type(fields.get(_K_VERSION)) is not int:
        raise OfferRefused(UNKNOWN_VERSION, f"offer version {fields.get(_K_VERSION)!r:.20}")
    missing = _REQUIRED - fields.keys()
    extra = fields.keys() - _REQUIRED - _OPTIONAL
    if missing or extra:
        raise OfferRefused(MALFORMED, f"fields missing {sorted(missing)}, unknown {sorted(extra)}")
    try:
        agent = AgentId.from_bytes(fields[_K_AGENT])
    except RemoteProtocolError as exc:
        raise OfferRefused(MALFORMED, f"agent id: {exc}") from None
    seed = _bytes(fields, _K_SEED, "seed", 32)
    if len(seed) != 32 or SigningKey(seed).public_key != agent.raw:
        raise OfferRefused(BAD_KEY, "the key does not belong to the agent id")
    kind = _text(fields[_K_KIND], "kind")
    name = fields.get(_K_NAME)
    if name is not None and (type(name) is not str or not _NAME_RE.match(name)):
        raise OfferRefused(MALFORMED, "name must be 1..64 letters, digits, '.', '_' or '-'")
    if name == OPERATOR_NAME:
        raise OfferRefused(MALFORMED, f"the name {OPERATOR_NAME!r} belongs to a node's operator")
    raw_caps = fields[_K_CAPS]
    if type(raw_caps) is not list or len(raw_caps) > MAX_CAPS:
        raise OfferRefused(MALFORMED, f"caps must be a list of at most {MAX_CAPS} tags")
    caps = tuple(_text(tag, "a capability tag") for tag in raw_caps)
    lifecycle = fields[_K_LIFECYCLE]
    if lifecycle not in _LIFECYCLES or type(lifecycle) is not str:
        raise OfferRefused(MALFORMED, f"lifecycle must be one of {', '.join(_LIFECYCLES)}")
    created_ms = _uint(fields, _K_CREATED, "created")
    expires_ms = _uint(fields, _K_EXPIRES, "expires") if _K_EXPIRES in fields else None
    budget = _uint(fields, _K_BUDGET, "budget")
    state = _bytes(fields, _K_STATE, "state", MAX_STATE_BYTES)
    if state:
        try:
            decoded = loads_strict(state, _STATE_LIMITS)
            check_plain(decoded, _STATE_LIMITS)
        except RemoteProtocolError as exc:
            raise OfferRefused(MALFORMED, f"state: {exc}") from None
        if type(decoded) is not dict:
            raise OfferRefused(MALFORMED, "state must be a CBOR map")
    provenance = _provenance(fields[_K_PROVENANCE], agent, kind, created_ms, budget)
    inbox = _inbox(fields[_K_INBOX], agent)
    return MigrationOffer(
        agent=agent,
        seed=seed,
        kind=kind,
        name=name,
        caps=caps,
        lifecycle=lifecycle,
        created_ms=created_ms,
        expires_ms=expires_ms,
        budget=budget,
        state=state,
        state_version=_uint(fields, _K_STATE_VERSION, "state version"),
        record_seq=_uint(fields, _K_RECORD_SEQ, "record sequence"),
        provenance=provenance,
        inbox=inbox,
    )


def _provenance(obj: Any, agent: AgentId, kind: str, created_ms: int, budget: int) -> Provenance:
    try:
        provenance = Provenance.from_cbor_obj(obj)
        provenance.verify()
    except RemoteProtocolError as exc:
        raise OfferRefused(BAD_PROVENANCE, str(exc)) from None
    cert = provenance.certs[0]
    if cert.agent != agent:
        raise OfferRefused(BAD_PROVENANCE, "the provenance is about another agent")
    if cert.kind != kind or cert.created_ms != created_ms:
        raise OfferRefused(BAD_PROVENANCE, "kind or creation time differ from the certificate")
    if budget > cert.budget:
        raise OfferRefused(BAD_PROVENANCE, "the budget is above the certificate's")
    if len(provenance.certs) > 1:
        raise OfferRefused(
            UNSUPPORTED,
            f"agents spawned by agents cannot migrate yet (chain of {len(provenance.certs)} "
            f"of at most {MAX_CHAIN} certificates)",
        )
    return provenance


def _inbox(obj: Any, agent: AgentId) -> tuple[bytes, ...]:
    if type(obj) is not list or len(obj) > MAX_INBOX_FRAMES:
        raise OfferRefused(BAD_INBOX, f"inbox must be a list of at most {MAX_INBOX_FRAMES}")
    total = 0
    for frame in obj:
        if type(frame) is not bytes or len(frame) > MAX_FRAME_BYTES:
            raise OfferRefused(BAD_INBOX, "inbox frames are envelopes of at most 64 KiB")
        total += len(frame)
        if total > MAX_INBOX_BYTES:
            raise OfferRefused(TOO_LARGE, f"the inbox is over {MAX_INBOX_BYTES} bytes")
        try:
            envelope = Envelope.decode(frame)
        except RemoteProtocolError as exc:
            raise OfferRefused(BAD_INBOX, f"an inbox frame: {exc}") from None
        if envelope.recipient != agent and not isinstance(envelope.recipient, str):
            raise OfferRefused(BAD_INBOX, "an inbox message is for another agent")
        if not envelope.signature_valid():
            raise OfferRefused(BAD_INBOX, "an inbox message has a bad signature")
    return tuple(obj)


def encode_answer(ok: bool, code: str = "", detail: str = "") -> bytes:
    """The receiver's answer to an offer."""
    fields: dict[int, Any] = {1: ok}
    if not ok:
        fields[2] = code
        fields[3] = detail[:_MAX_DETAIL]
    return dumps_canonical(fields)


def decode_answer(data: bytes) -> tuple[bool, str, str]:
    """Parse an answer: (ok, refusal code, detail); `OfferRefused(malformed)` if garbled."""
    try:
        fields = loads_strict(data, _ANSWER_LIMITS)
        check_plain(fields, _ANSWER_LIMITS)
    except RemoteProtocolError as exc:
        raise OfferRefused(MALFORMED, f"answer: {exc}") from None
    if type(fields) is not dict or type(fields.get(1)) is not bool:
        raise OfferRefused(MALFORMED, "an answer is a map with a boolean under 1")
    if fields[1]:
        return True, "", ""
    code, detail = fields.get(2), fields.get(3, "")
    if type(code) is not str or type(detail) is not str:
        raise OfferRefused(MALFORMED, "a refusal has a code and a detail")
    return False, code[:64], detail[:_MAX_DETAIL]


def _kind_problem(kind: str) -> str | None:
    """Why this node cannot run `kind`, or None; a peer never makes us import a new module."""
    module, colon, _ = kind.partition(":")
    if colon and module not in sys.modules:
        return (
            f"kind {kind!r} names module {module!r}, which this node has not loaded "
            "(a peer cannot make it import one; register the kind as an entry point)"
        )
    try:
        resolve_kind(kind)
    except KindError as exc:
        return str(exc)
    return None


# --- the service -----------------------------------------------------------------------------


class Migrator:
    """Moves hosted agents to other nodes, and takes the agents peers move here."""

    def __init__(
        self,
        runtime: Runtime,
        network: Network,
        publisher: LocationPublisher | None,
        *,
        router: Locations | None = None,
        policy: MigrationPolicy = accept_any,
        timeout_s: float = 30.0,
        forward_timeout_s: float = 15.0,
        forward_parallel: int = 16,
    ) -> None:
        if timeout_s <= 0 or forward_timeout_s <= 0 or forward_parallel < 1:
            raise ValueError("timeouts must be positive and forward_parallel at least 1")
        self._runtime = runtime
        self._network = network
        self._publisher = publisher
        self._router = router
        self._policy = policy
        self._timeout_s = timeout_s
        self._forward_timeout_s = forward_timeout_s
        self._forward_limiter = trio.CapacityLimiter(forward_parallel)
        self.sent: Counter[str] = Counter()  # our migrations: migrated, refused:<code>, ...
        self.received: Counter[str] = Counter()  # offers from peers: accepted, refused:<code>
        self.forwarded: Counter[str] = Counter()  # held messages forwarded, by outcome

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take offers from peers until cancelled (start after the runtime and publisher)."""
        self._network.set_request_handler(MIGRATE_PROTOCOL, self._on_offer)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._network.set_request_handler(MIGRATE_PROTOCOL, None)

    def stats(self) -> dict[str, Any]:
        """Counters for status and metrics."""
        return {
            "sent": dict(sorted(self.sent.items())),
            "received": dict(sorted(self.received.items())),
            "forwarded": dict(sorted(self.forwarded.items())),
        }

    # -- sending --------------------------------------------------------------------------

    async def migrate(
        self, agent: AgentId, to_peer_id: str, addrs: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Move a hosted agent to `to_peer_id` (its addresses default to the peerstore's).

        Raises `UnknownAgent`, `LifecycleError` (not in a state that may migrate) or
        `MigrationError`; in every such case the agent stays here as it was.
        """
        runtime = self._runtime
        try:
            NodeId.from_text(to_peer_id)
        except ValueError as exc:
            raise MigrationError("bad_peer", str(exc)) from None
        if to_peer_id == self._network.peer_id:
            raise MigrationError("bad_peer", f"{to_peer_id} is this node: the agent is here")
        if not runtime.hosts(agent):
            raise UnknownAgent(f"no agent {agent.did} on this node")
        await self._check_movable(agent)
        known = tuple(addrs) if addrs else tuple(self._network.peer_addrs(to_peer_id))
        if not known:
            self.sent["unknown_peer"] += 1
            raise MigrationError(
                "unreachable",
                f"no address known for peer {to_peer_id}: it is not connected and not in the "
                "peerstore (meshd peers lists the connected ones)",
            )
        started = trio.current_time()
        previous = await runtime.begin_migration(agent)
        moved = False
        try:
            offer = await build_offer(self._runtime, agent)
            await self._send_offer(to_peer_id, known, offer)
            moved = True
        finally:
            if not moved:
                with trio.CancelScope(shield=True):
                    await runtime.abort_migration(agent, previous)
        # The peer hosts it now: whatever happens next, this node lets it go.
        with trio.CancelScope(shield=True):
            held = await runtime.forget_migrated(agent)
            if self._router is not None:
                self._router.learn(agent, to_peer_id, known)
        self.sent["migrated"] += 1
        log.info("agent %s migrated to %s", agent.did, to_peer_id)
        forwarded = await self._forward(held)
        return {
            "id": agent.did,
            "from": self._network.peer_id,
            "to": to_peer_id,
            "state": offer.lifecycle,
            "inbox": len(offer.inbox),
            "forwarded": forwarded,
            "elapsed_ms": round((trio.current_time() - started) * 1000, 1),
        }

    async def _check_movable(self, agent: AgentId) -> None:
        row = await self._runtime.store.get_agent(agent.raw)
        if row is None:
            raise UnknownAgent(f"no agent {agent.did} on this node")
        if row.parent is not None:
            raise MigrationError(
                "not_migratable",
                f"agent {agent.did} was spawned by agent {AgentId(row.parent).did}: agents "
                "spawned by agents cannot migrate yet",
            )
        if row.name == OPERATOR_NAME and self._runtime.is_external(agent):
            raise MigrationError("not_migratable", "the node's operator agent stays with its node")

    async def _send_offer(
        self, to_peer_id: str, addrs: Sequence[str], offer: MigrationOffer
    ) -> None:
        try:
            payload = offer.encode()
        except LocalProtocolError as exc:
            raise MigrationError("not_migratable", f"cannot encode the agent: {exc}") from None
        try:
            raw = await self._network.request(
                to_peer_id, addrs, MIGRATE_PROTOCOL, payload, timeout=self._timeout_s
            )
        except RequestError as exc:
            self.sent["unreachable"] += 1
            raise MigrationError(
                "unreachable", f"peer {to_peer_id} did not take the agent: {exc}"
            ) from None
        try:
            ok, code, detail = decode_answer(raw)
        except OfferRefused as exc:
            self.sent["bad_answer"] += 1
            raise MigrationError("unreachable", f"peer {to_peer_id} answered {exc}") from None
        if not ok:
            self.sent["refused:" + code] += 1
            raise MigrationError(
                "refused", f"peer {to_peer_id} refused the agent: {code}: {detail}", reason=code
            )

    async def _forward(self, held: list[tuple[Envelope, bool]]) -> int:
        """Send on the messages that came during the move (bounded in time); return how many."""
        if not held:
            return 0
        messenger = self._runtime.messenger
        done = failed = 0

        async def one(envelope: Envelope, reliable: bool) -> None:
            nonlocal done, failed
            async with self._forward_limiter:
                try:
                    report = await messenger.send(envelope, reliable=reliable)
                except Exception:  # the agent has moved: a lost message must not undo that
                    failed += 1
                    self.forwarded["error"] += 1
                    log.exception("forwarding a message to migrated agent failed")
                    return
            self.forwarded[report.outcome] += 1
            done += 1

        with trio.move_on_after(self._forward_timeout_s):
            async with trio.open_nursery() as nursery:
                for envelope, reliable in held:
                    nursery.start_soon(one, envelope, reliable)
        if len(held) - done - failed:
            self.forwarded["timeout"] += len(held) - done - failed
        if done < len(held):
            log.warning("%d messages held during a migration were not forwarded", len(held) - done)
        return done

    # -- receiving ------------------------------------------------------------------------

    async def _on_offer(self, peer_id: str, payload: bytes) -> bytes:
        """The request handler: take the offered agent, or say why not."""
        self.received["offers"] += 1
        try:
            offer = await trio.to_thread.run_sync(decode_offer, payload)
            await self._take(peer_id, offer)
        except OfferRefused as exc:
            self.received["refused:" + exc.code] += 1
            log.info("refused an agent from peer %s: %s: %s", peer_id, exc.code, exc.detail)
            return encode_answer(False, exc.code, exc.detail)
        self.received["accepted"] += 1
        log.info("agent %s arrived from peer %s", offer.agent.did, peer_id)
        return encode_answer(True)

    async def _take(self, peer_id: str, offer: MigrationOffer) -> None:
        runtime = self._runtime
        refusal = self._policy(peer_id, offer.provenance)
        if refusal is not None:
            raise OfferRefused(UNTRUSTED, refusal)
        problem = _kind_problem(offer.kind)
        if problem is not None:
            raise OfferRefused(UNKNOWN_KIND, problem)
        if runtime.hosts(offer.agent):
            raise OfferRefused(ALREADY_HOSTED, f"agent {offer.agent.did} already lives here")
        export = offer.to_export(runtime.vault.seal(offer.seed), runtime.clock())
        # Stored, indexed and announced together: a cancellation (shutdown, the request's
        # deadline) must not leave it stored but unknown to the runtime.
        with trio.CancelScope(shield=True):
            try:
                await runtime.adopt(export)
            except DuplicateAgent as exc:
                detail = str(exc).rsplit(": ", 1)[-1]
                code = NAME_TAKEN if detail.startswith("name") else ALREADY_HOSTED
                raise OfferRefused(code, detail) from None
            except QuotaExceeded as exc:
                raise OfferRefused(QUOTA, str(exc)) from None
            except InboxFull as exc:
                raise OfferRefused(TOO_LARGE, str(exc)) from None
            except StoreError as exc:
                log.error("storing agent %s from %s failed: %s", offer.agent.did, peer_id, exc)
                raise OfferRefused(UNAVAILABLE, "this node could not store the agent") from None
            if self._publisher is not None:
                self._publisher.moved(offer.agent)
