"""Who may message this node's agents: the node's trust policy and each agent's allow/deny lists.

Two independent checks, both applied by `Delivery` to every message for a hosted agent (from
a peer after the envelope verified and passed the replay window, or from a local agent before
`Runtime.deliver`):

- **Trust policy** (`trust.policy`): `open` admits any sender whose signature verifies;
  `trusted-roots` admits only senders whose provenance chain (birth certificates, see
  `protocol.records.Provenance`) is rooted in one of `trust.roots` or in this node. A local
  sender's chain comes from the store; a remote sender's from its agent record in the DHT
  (`/ma/<hash>`), whose signature, chain signatures and expiry are checked here. The verdict
  is cached per sender (bounded LRU, expiring; misses expire sooner, since a record may be
  published later), and concurrent first messages of one sender share one lookup.
  A sender with no record in the DHT is `untrusted`.
- **Per-agent lists** (`meshd agent allow|deny`): a sender on the recipient's deny list is
  refused; if its allow list is non-empty, only senders on it are admitted. Kept in the
  store's meta table (`acl` lists the agents that have lists, `acl/<hex id>` holds them), so
  they survive restarts; they do not travel with a migrating agent.

Refusals are reasons of `protocol.errors.RejectReason`: `untrusted` and `denied`. With policy
`open` and no lists anywhere, `admit` is two attribute reads: the hot path pays nothing.

Migrations are the only way a peer can make this node host an agent; `migration_policy` is the
migrator's hook: refused outright with `trust.accept_migrations = false`, else under
`trusted-roots` only agents rooted in a trusted node are taken.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cbor2
import trio

from meshd.clock import WallClock, wall_ms
from meshd.runtime.lifecycle import UnknownAgent
from meshd.runtime.quota import TokenBucket
from meshd.runtime.records import build_provenance
from meshd.trust_settings import OPEN, POLICIES, TRUSTED_ROOTS, TrustSettings
from protocol.envelope import Envelope
from protocol.errors import RejectReason, RemoteProtocolError
from protocol.ids import AgentId, NodeId
from protocol.records import AgentRecord, Provenance, agent_record_key

if TYPE_CHECKING:
    from meshd.runtime.runtime import Runtime

__all__ = [
    "MAX_ACL_ENTRIES",
    "OPEN",
    "POLICIES",
    "TRUSTED_ROOTS",
    "Acl",
    "Trust",
    "TrustSettings",
    "refusal_error",
]

log = logging.getLogger("meshd.trust")

MAX_ACL_ENTRIES = 1_000  # senders per list and agent
_META_INDEX = "acl"
_META_PREFIX = "acl/"
_DENIED = RejectReason.DENIED.value
_UNTRUSTED = RejectReason.UNTRUSTED.value
_BURST_S = 10.0  # a peer may spend this many seconds' worth of lookups at once
_MAX_PEER_BUDGETS = 4096

DhtGet = Callable[[str], Awaitable[bytes | None]]


@dataclass(frozen=True, slots=True)
class Acl:
    """One agent's lists of senders (raw agent ids); an empty allow list admits everyone."""

    allow: frozenset[bytes] = frozenset()
    deny: frozenset[bytes] = frozenset()

    def refuses(self, sender: bytes) -> bool:
        """Whether this list keeps `sender` out."""
        return sender in self.deny or (bool(self.allow) and sender not in self.allow)

    def to_json(self) -> dict[str, list[str]]:
        """The lists as did:key texts, sorted."""
        return {
            "allow": sorted(AgentId(raw).did for raw in self.allow),
            "deny": sorted(AgentId(raw).did for raw in self.deny),
        }


def refusal_error(reason: str) -> RemoteProtocolError:
    """The error (reason and detail) that answers a message `admit` refused for `reason`."""
    if reason == _DENIED:
        return RemoteProtocolError(RejectReason.DENIED, "the recipient's allow/deny list")
    return RemoteProtocolError(RejectReason(reason), "the recipient node's trust policy")


class Trust:
    """The admission checks for messages to hosted agents (see the module docstring)."""

    def __init__(
        self,
        settings: TrustSettings,
        runtime: Runtime,
        dht_get: DhtGet,
        *,
        clock: WallClock = wall_ms,
    ) -> None:
        self.settings = settings
        self._runtime = runtime
        self._dht_get = dht_get
        self._clock = clock
        # This node is always a trusted root: it signed its own agents' certificates.
        self._roots = frozenset(
            [NodeId.from_text(text).raw for text in settings.roots] + [runtime.node_key.node_id.raw]
        )
        self._check_roots = settings.policy == TRUSTED_ROOTS
        self._acls: dict[bytes, Acl] = {}
        self._verdicts: OrderedDict[bytes, tuple[str | None, float]] = OrderedDict()
        self._inflight: dict[bytes, trio.Event] = {}
        self._budgets: OrderedDict[str, TokenBucket] = OrderedDict()  # per peer, LRU-bounded
        self.counts: Counter[str] = Counter()  # refused:<reason>, lookups, cache hits...

    # -- admission ----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether `admit` can refuse anything (false: the open policy and no lists at all)."""
        return self._check_roots or bool(self._acls)

    async def admit(self, envelope: Envelope, peer: str | None = None) -> str | None:
        """None if `envelope` may reach its agent, else why not (`denied` or `untrusted`).

        `peer` is the node that handed the message over (None: a local sender): the DHT
        lookups its messages cause are paced per peer (`trust.peer_lookups_per_s`).
        """
        if not self._acls and not self._check_roots:
            return None  # the open mesh without lists: nothing to check
        recipient = envelope.recipient
        if not isinstance(recipient, AgentId):
            return None  # topic messages are not addressed to one agent
        sender = envelope.sender.raw
        acl = self._acls.get(recipient.raw)
        if acl is not None and acl.refuses(sender):
            self.counts["refused:" + _DENIED] += 1
            return _DENIED
        if self._check_roots and await self._verdict(sender, peer) is not None:
            self.counts["refused:" + _UNTRUSTED] += 1
            return _UNTRUSTED
        return None

    async def _verdict(self, sender: bytes, peer: str | None) -> str | None:
        """The cached verdict on `sender`'s provenance, looked up once per expiry."""
        while True:
            cached = self._verdicts.get(sender)
            now = trio.current_time()
            if cached is not None and cached[1] > now:
                self.counts["cache_hits"] += 1
                return cached[0]
            waiting = self._inflight.get(sender)
            if waiting is None:
                break
            await waiting.wait()  # another message of this sender is looking it up
        # Lookups run on the ordered delivery loop: a peer sending from ever new agent ids
        # would stall it for everyone. Over its budget: refused, and nothing is cached.
        if (
            peer is not None
            and not self._runtime.hosts(AgentId(sender))
            and not self._lookup_budget(peer).try_take(1, trio.current_time())
        ):
            self.counts["lookups_over_peer_budget"] += 1
            return "the peer's budget of record lookups is spent"
        done = self._inflight[sender] = trio.Event()
        try:
            problem = await self._check_sender(AgentId(sender))
            ttl = self.settings.cache_ttl_s if problem is None else self.settings.miss_ttl_s
            self._verdicts[sender] = (problem, trio.current_time() + ttl)
            self._verdicts.move_to_end(sender)
            while len(self._verdicts) > self.settings.cache_size:
                self._verdicts.popitem(last=False)
        finally:
            del self._inflight[sender]
            done.set()
        if problem is not None:
            log.info("untrusted sender %s: %s", AgentId(sender).did, problem)
        return problem

    def _lookup_budget(self, peer: str) -> TokenBucket:
        bucket = self._budgets.get(peer)
        if bucket is None:
            rate = self.settings.peer_lookups_per_s
            bucket = self._budgets[peer] = TokenBucket(rate, max(1.0, rate * _BURST_S))
            while len(self._budgets) > _MAX_PEER_BUDGETS:
                self._budgets.popitem(last=False)
        self._budgets.move_to_end(peer)
        return bucket

    async def _check_sender(self, sender: AgentId) -> str | None:
        """Why `sender`'s provenance is not rooted in a trusted node, or None if it is."""
        try:
            if self._runtime.hosts(sender):
                self.counts["local_checks"] += 1
                provenance = await build_provenance(self._runtime, sender)
            else:
                record = await self._lookup(sender)
                if record is None:
                    return "no agent record found"
                provenance = record.provenance
            # Records were verified whole in `_lookup`; a local chain is checked here.
            await trio.to_thread.run_sync(provenance.verify)
        except (RemoteProtocolError, UnknownAgent) as exc:
            return f"provenance does not verify: {exc}"
        if provenance.agent != sender:
            return "provenance is about another agent"
        if provenance.root_node.raw not in self._roots:
            return f"rooted in node {provenance.root_node.text}, not a trusted root"
        return None

    async def _lookup(self, sender: AgentId) -> AgentRecord | None:
        self.counts["lookups"] += 1
        value = None
        with trio.move_on_after(self.settings.lookup_timeout_s):
            value = await self._dht_get(agent_record_key(sender))
        if value is None:
            self.counts["lookup_misses"] += 1
            return None
        record = AgentRecord.decode(value)
        await trio.to_thread.run_sync(record.verify, self._clock())
        if record.agent != sender:
            raise RemoteProtocolError(RejectReason.MALFORMED, "record of another agent")
        return record

    # -- migrations ---------------------------------------------------------------------------

    def migration_policy(self, peer_id: str, provenance: Provenance) -> str | None:
        """The migrator's hook: None takes the agent, a text refuses it (see module docstring)."""
        if not self.settings.accept_migrations:
            reason = "this node accepts no migrations (trust.accept_migrations = false)"
        elif self._check_roots and provenance.root_node.raw not in self._roots:
            reason = f"agent rooted in node {provenance.root_node.text}, not a trusted root"
        else:
            return None
        self.counts["refused:migration"] += 1
        log.info("refused a migration from peer %s: %s", peer_id, reason)
        return reason

    # -- per-agent lists ----------------------------------------------------------------------

    async def load(self) -> None:
        """Read every agent's lists from the store (once, before the node serves)."""
        store = self._runtime.store
        for raw in _decode_ids(await store.get_meta(_META_INDEX), _META_INDEX):
            key = _META_PREFIX + raw.hex()
            data = await store.get_meta(key)
            try:
                fields = cbor2.loads(data) if data is not None else {}
                acl = Acl(
                    frozenset(_ids(fields.get("allow", []))),
                    frozenset(_ids(fields.get("deny", []))),
                )
            except (cbor2.CBORDecodeError, AttributeError, TypeError, ValueError) as exc:
                log.error("trust: meta %r is corrupt (%s); ignoring it", key, exc)
                continue
            if acl.allow or acl.deny:
                self._acls[raw] = acl
        if self._acls:
            log.info("trust: %d agents have allow/deny lists", len(self._acls))

    def acl_of(self, agent: AgentId) -> Acl:
        """The agent's lists (empty ones if it has none)."""
        return self._acls.get(agent.raw, Acl())

    async def update_acl(
        self, agent: AgentId, which: str, add: Iterable[AgentId], *, clear: bool = False
    ) -> Acl:
        """Add senders to the agent's `allow` or `deny` list (after emptying it, with `clear`)."""
        if which not in ("allow", "deny"):
            raise ValueError("the list is allow or deny")
        current = self.acl_of(agent)
        old = frozenset() if clear else getattr(current, which)
        new = old | {sender.raw for sender in add}
        if len(new) > MAX_ACL_ENTRIES:
            raise ValueError(f"a list holds at most {MAX_ACL_ENTRIES} senders")
        acl = Acl(new, current.deny) if which == "allow" else Acl(current.allow, new)
        store = self._runtime.store
        key = _META_PREFIX + agent.raw.hex()
        if acl.allow or acl.deny:
            await store.set_meta(
                key, cbor2.dumps({"allow": sorted(acl.allow), "deny": sorted(acl.deny)})
            )
            self._acls[agent.raw] = acl
        else:  # no lists: nothing kept, so a deletion has nothing to clean up
            await store.delete_meta(key)
            self._acls.pop(agent.raw, None)
        await store.set_meta(_META_INDEX, cbor2.dumps(sorted(self._acls)))
        return acl

    # -- the runtime's listener: a deleted agent's lists go with it ---------------------------

    def spawned(self, agents: Sequence[bytes]) -> None:
        """New agents have no lists."""

    def activated(self, agent: AgentId) -> None:
        """Activation changes no list."""

    def migrated(self, agent: AgentId, arrived: bool) -> None:
        """Lists are this node's admission policy: they stay here (and do not travel)."""

    async def deleting(self, agent: AgentId) -> None:
        """Forget the agent's lists: its id never comes back, so they would be kept for ever."""
        if self._acls.pop(agent.raw, None) is None:
            return
        store = self._runtime.store
        await store.delete_meta(_META_PREFIX + agent.raw.hex())
        await store.set_meta(_META_INDEX, cbor2.dumps(sorted(self._acls)))
        self.counts["lists_removed"] += 1

    def stats(self) -> dict[str, Any]:
        """Counters for status and metrics."""
        return {
            "policy": self.settings.policy,
            "roots": len(self._roots),
            "agents_with_lists": len(self._acls),
            "verdicts_cached": len(self._verdicts),
            **dict(sorted(self.counts.items())),
        }


def _ids(values: object) -> list[bytes]:
    if not isinstance(values, list) or not all(type(v) is bytes and len(v) == 32 for v in values):
        raise TypeError("expected a list of 32-byte agent ids")
    return list(values)


def _decode_ids(data: bytes | None, key: str) -> list[bytes]:
    if data is None:
        return []
    try:
        return _ids(cbor2.loads(data))
    except (cbor2.CBORDecodeError, TypeError, ValueError) as exc:
        log.error("trust: meta %r is corrupt (%s); treating it as empty", key, exc)
        return []
