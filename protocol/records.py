"""Signed records: birth certificates and provenance chains, agent records, node summaries.

All are signed maps (see `protocol.cbor`): signature under key 0, version under key 1.

Birth certificate (signed by the spawning node, or by the parent agent when there is one):
    1 version uint, 2 agent bstr32, 3 kind tstr, 4 node PeerID bstr, 5 parent bstr32 (optional),
    6 created uint ms, 7 budget uint (how many descendants this agent may still spawn)
Provenance: an array of encoded birth certificates, the agent's own first, its root last.
Agent record (signed by the agent; the DHT value under `agent_record_key`):
    1 version, 2 agent, 3 node PeerID, 4 addrs [tstr], 5 seq uint, 6 expires uint ms,
    7 state tstr, 8 provenance
Node summary (signed by the node):
    1 version, 2 node PeerID, 3 seq uint, 4 created uint ms, 5 agents Bloom, 6 caps Bloom,
    7 counts {tstr => uint}, 8 levels [Bloom] (optional: what neighbours host, by hop)
Summary delta (not signed itself: it carries the signature of the summary it rebuilds):
    1 version, 2 node PeerID, 3 base seq, 4 seq, 5 created, 6 agents BloomDelta,
    7 caps BloomDelta, 8 counts, 9 levels [BloomDelta] (optional), 10 signature bstr64
"""

from __future__ import annotations

import base64
import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protocol.bloom import BloomDelta, BloomFilter
from protocol.cbor import (
    DecodeLimits,
    decode_signed_map,
    dumps_canonical,
    encode_signed_map,
    loads_strict,
)
from protocol.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from protocol.ids import SIGNATURE_LEN, AgentId, NodeId, SigningKey, verify_signature

__all__ = [
    "AGENT_RECORD_DOMAIN",
    "AGENT_RECORD_NAMESPACE",
    "BIRTH_CERT_DOMAIN",
    "NODE_SUMMARY_DOMAIN",
    "SUMMARY_LIMITS",
    "AgentRecord",
    "BirthCert",
    "LifecycleState",
    "NodeSummary",
    "Provenance",
    "SummaryDelta",
    "agent_record_key",
    "select_newest",
]

RECORD_VERSION = 1
BIRTH_CERT_DOMAIN = b"meshd/birth-cert/v1\x00"
AGENT_RECORD_DOMAIN = b"meshd/agent-record/v1\x00"
NODE_SUMMARY_DOMAIN = b"meshd/node-summary/v1\x00"
AGENT_RECORD_NAMESPACE = "ma"
MAX_CHAIN = 16
MAX_ADDRS = 16
MAX_ADDR_LEN = 256
MAX_KIND_LEN = 64
MAX_COUNTS = 32
MAX_LEVELS = 3
RECORD_LIMITS = DecodeLimits(max_size=16 * 1024, max_depth=6, max_str=4096, max_items=64)
# A summary of a million agents at 1% false positives carries about 1.2 MB of filter.
SUMMARY_LIMITS = DecodeLimits(
    max_size=8 * 1024 * 1024, max_depth=6, max_str=8 * 1024 * 1024, max_items=64
)
_MAX_UINT = 2**63 - 1


class LifecycleState(enum.Enum):
    """An agent's lifecycle state, as published in its record."""

    ACTIVE = "active"
    DORMANT = "dormant"
    SUSPENDED = "suspended"
    GONE = "gone"


def _fail(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(RejectReason.MALFORMED, detail)


def _uint(fields: Mapping[int, Any], key: int, name: str) -> int:
    value = fields.get(key)
    if type(value) is not int or not 0 <= value <= _MAX_UINT:
        raise _fail(f"{name} must be an unsigned integer")
    return value


def _text(fields: Mapping[int, Any], key: int, name: str, max_len: int) -> str:
    value = fields.get(key)
    if type(value) is not str or not 0 < len(value) <= max_len:
        raise _fail(f"{name} must be text of 1..{max_len} characters")
    return value


def _exact_keys(fields: Mapping[int, Any], required: set[int], optional: set[int]) -> None:
    keys = set(fields)
    if not required <= keys:
        raise _fail(f"missing fields {sorted(required - keys)}")
    if keys - required - optional:
        raise _fail(f"unknown fields {sorted(keys - required - optional)}")


def _version(fields: Mapping[int, Any]) -> None:
    version = fields.get(1)
    if type(version) is not int:
        raise _fail("version missing")
    if version != RECORD_VERSION:
        raise RemoteProtocolError(RejectReason.UNKNOWN_VERSION, f"record version {version}")


@dataclass(frozen=True, slots=True)
class BirthCert:
    """Who created an agent, where, when, and with what spawn budget."""

    agent: AgentId
    kind: str
    node: NodeId
    parent: AgentId | None
    created_ms: int
    budget: int
    signature: bytes
    encoded: bytes
    signed_bytes: bytes

    @classmethod
    def issue(
        cls,
        signer: SigningKey,
        *,
        agent: AgentId,
        kind: str,
        node: NodeId,
        created_ms: int,
        budget: int,
        parent: AgentId | None = None,
    ) -> BirthCert:
        """Sign a birth certificate: by the node key for roots, by the parent agent's key else."""
        expected = parent.raw if parent is not None else node.public_key
        if signer.public_key != expected:
            raise LocalProtocolError("a birth certificate is signed by the parent, else the node")
        fields: dict[int, Any] = {
            1: RECORD_VERSION,
            2: agent.raw,
            3: kind,
            4: node.raw,
            6: created_ms,
            7: budget,
        }
        if parent is not None:
            fields[5] = parent.raw
        return cls.decode(encode_signed_map(BIRTH_CERT_DOMAIN, fields, signer))

    @classmethod
    def decode(cls, data: bytes, limits: DecodeLimits = RECORD_LIMITS) -> BirthCert:
        """Parse a birth certificate (the signature is checked by `Provenance.verify`)."""
        fields, signed, signature = decode_signed_map(data, BIRTH_CERT_DOMAIN, limits)
        _version(fields)
        _exact_keys(fields, {1, 2, 3, 4, 6, 7}, {5})
        parent = fields.get(5)
        return cls(
            agent=AgentId.from_bytes(fields[2]),
            kind=_text(fields, 3, "kind", MAX_KIND_LEN),
            node=NodeId.from_bytes(fields[4]),
            parent=None if parent is None else AgentId.from_bytes(parent),
            created_ms=_uint(fields, 6, "created"),
            budget=_uint(fields, 7, "budget"),
            signature=signature,
            encoded=bytes(data),
            signed_bytes=signed,
        )

    def signature_valid(self) -> bool:
        """Return whether the parent (or, for a root, the node) signed this certificate."""
        signer = self.parent.raw if self.parent is not None else self.node.public_key
        return verify_signature(signer, self.signed_bytes, self.signature)


@dataclass(frozen=True, slots=True)
class Provenance:
    """An agent's chain of birth certificates: its own first, the root's (node-signed) last."""

    certs: tuple[BirthCert, ...]

    @classmethod
    def root(cls, cert: BirthCert) -> Provenance:
        """The provenance of an agent spawned directly by a node."""
        if cert.parent is not None:
            raise LocalProtocolError("a root certificate has no parent")
        return cls((cert,))

    def child(self, cert: BirthCert) -> Provenance:
        """The provenance of an agent spawned by this provenance's agent."""
        if cert.parent != self.agent:
            raise LocalProtocolError("the child certificate must name this agent as parent")
        if cert.budget >= self.certs[0].budget:
            raise LocalProtocolError("a child's budget must be smaller than its parent's")
        if len(self.certs) >= MAX_CHAIN:
            raise LocalProtocolError(f"provenance chains hold at most {MAX_CHAIN} certificates")
        return Provenance((cert, *self.certs))

    @property
    def agent(self) -> AgentId:
        """The agent this provenance is about."""
        return self.certs[0].agent

    @property
    def root_node(self) -> NodeId:
        """The node that signed the root certificate (what trust policies check)."""
        return self.certs[-1].node

    def verify(self) -> None:
        """Raise unless every link is signed by its parent and the root by its node."""
        for index, cert in enumerate(self.certs):
            last = index == len(self.certs) - 1
            if last != (cert.parent is None):
                raise _fail("only the last certificate of a chain may lack a parent")
            if not last:
                above = self.certs[index + 1]
                if above.agent != cert.parent:
                    raise _fail("provenance chain is not linked parent to child")
                if cert.budget >= above.budget:
                    raise RemoteProtocolError(
                        RejectReason.UNAUTHORIZED, "child budget exceeds its parent's"
                    )
            if not cert.signature_valid():
                raise RemoteProtocolError(RejectReason.BAD_SIGNATURE, "birth certificate")

    def to_cbor_obj(self) -> list[bytes]:
        """The CBOR array of encoded certificates."""
        return [cert.encoded for cert in self.certs]

    @classmethod
    def from_cbor_obj(cls, obj: Any) -> Provenance:
        """Parse an untrusted CBOR array of encoded certificates."""
        if type(obj) is not list or not 0 < len(obj) <= MAX_CHAIN:
            raise _fail(f"provenance must be an array of 1..{MAX_CHAIN} certificates")
        certs = []
        for item in obj:
            if type(item) is not bytes:
                raise _fail("provenance entries are encoded certificates")
            certs.append(BirthCert.decode(item))
        return cls(tuple(certs))


def agent_record_key(agent: AgentId) -> str:
    """The DHT key of an agent's record: `/ma/` + base64url(sha256(id)), 47 bytes."""
    digest = hashlib.sha256(agent.raw).digest()
    return f"/{AGENT_RECORD_NAMESPACE}/" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """Where an agent lives now and in what state, signed by the agent itself."""

    agent: AgentId
    node: NodeId
    addrs: tuple[str, ...]
    seq: int
    expires_ms: int
    state: LifecycleState
    provenance: Provenance
    signature: bytes
    encoded: bytes
    signed_bytes: bytes

    @classmethod
    def create(
        cls,
        key: SigningKey,
        *,
        node: NodeId,
        addrs: Sequence[str],
        seq: int,
        expires_ms: int,
        state: LifecycleState,
        provenance: Provenance,
    ) -> AgentRecord:
        """Sign a record for `key`'s agent."""
        if provenance.agent != key.agent_id:
            raise LocalProtocolError("the provenance must be the signing agent's own")
        fields: dict[int, Any] = {
            1: RECORD_VERSION,
            2: key.public_key,
            3: node.raw,
            4: list(addrs),
            5: seq,
            6: expires_ms,
            7: state.value,
            8: provenance.to_cbor_obj(),
        }
        return cls.decode(encode_signed_map(AGENT_RECORD_DOMAIN, fields, key))

    @classmethod
    def decode(cls, data: bytes, limits: DecodeLimits = RECORD_LIMITS) -> AgentRecord:
        """Parse an agent record's structure (see `verify` for signatures)."""
        fields, signed, signature = decode_signed_map(data, AGENT_RECORD_DOMAIN, limits)
        _version(fields)
        _exact_keys(fields, {1, 2, 3, 4, 5, 6, 7, 8}, set())
        addrs = fields[4]
        if type(addrs) is not list or len(addrs) > MAX_ADDRS:
            raise _fail(f"addrs must be an array of at most {MAX_ADDRS}")
        for addr in addrs:
            if type(addr) is not str or not 0 < len(addr) <= MAX_ADDR_LEN:
                raise _fail("each addr is a multiaddr text of 1..256 characters")
        try:
            state = LifecycleState(fields[7])
        except ValueError as exc:
            raise _fail("state must be active, dormant, suspended or gone") from exc
        return cls(
            agent=AgentId.from_bytes(fields[2]),
            node=NodeId.from_bytes(fields[3]),
            addrs=tuple(addrs),
            seq=_uint(fields, 5, "seq"),
            expires_ms=_uint(fields, 6, "expires"),
            state=state,
            provenance=Provenance.from_cbor_obj(fields[8]),
            signature=signature,
            encoded=bytes(data),
            signed_bytes=signed,
        )

    def verify(self, now_ms: int | None = None) -> None:
        """Raise unless the agent signed it, its provenance holds and (given `now_ms`) it lives."""
        if self.provenance.agent != self.agent:
            raise _fail("provenance is about another agent")
        if not verify_signature(self.agent.raw, self.signed_bytes, self.signature):
            raise RemoteProtocolError(RejectReason.BAD_SIGNATURE, "agent record")
        self.provenance.verify()
        if now_ms is not None and self.expires_ms <= now_ms:
            raise RemoteProtocolError(RejectReason.EXPIRED, "agent record expired")


def select_newest(records: Sequence[AgentRecord]) -> int:
    """Index of the record to keep: highest seq, ties to the last one (so re-puts succeed)."""
    if not records:
        raise LocalProtocolError("select_newest needs at least one record")
    best = 0
    for index, record in enumerate(records):
        if record.seq >= records[best].seq:
            best = index
    return best


@dataclass(frozen=True, slots=True)
class NodeSummary:
    """What a node hosts, as Bloom filters of agent ids and capability tags, signed by it."""

    node: NodeId
    seq: int
    created_ms: int
    agents: BloomFilter
    caps: BloomFilter
    counts: Mapping[str, int]
    levels: tuple[BloomFilter, ...]
    signature: bytes
    encoded: bytes
    signed_bytes: bytes

    @classmethod
    def create(
        cls,
        node_key: SigningKey,
        *,
        seq: int,
        created_ms: int,
        agents: BloomFilter,
        caps: BloomFilter,
        counts: Mapping[str, int],
        levels: Sequence[BloomFilter] = (),
    ) -> NodeSummary:
        """Sign a summary with the node key."""
        fields = _summary_fields(node_key.node_id, seq, created_ms, agents, caps, counts, levels)
        return cls.decode(encode_signed_map(NODE_SUMMARY_DOMAIN, fields, node_key))

    @classmethod
    def decode(cls, data: bytes, limits: DecodeLimits = SUMMARY_LIMITS) -> NodeSummary:
        """Parse a node summary's structure (see `verify` for the signature)."""
        fields, signed, signature = decode_signed_map(data, NODE_SUMMARY_DOMAIN, limits)
        _version(fields)
        _exact_keys(fields, {1, 2, 3, 4, 5, 6, 7}, {8})
        counts = _counts(fields[7])
        raw_levels = fields.get(8, [])
        if type(raw_levels) is not list or len(raw_levels) > MAX_LEVELS:
            raise _fail(f"levels must be an array of at most {MAX_LEVELS} filters")
        return cls(
            node=NodeId.from_bytes(fields[2]),
            seq=_uint(fields, 3, "seq"),
            created_ms=_uint(fields, 4, "created"),
            agents=BloomFilter.from_cbor_obj(fields[5]),
            caps=BloomFilter.from_cbor_obj(fields[6]),
            counts=counts,
            levels=tuple(BloomFilter.from_cbor_obj(level) for level in raw_levels),
            signature=signature,
            encoded=bytes(data),
            signed_bytes=signed,
        )

    def verify(self) -> None:
        """Raise bad_signature unless the node named in the summary signed it."""
        if not self.node.verify(self.signed_bytes, self.signature):
            raise RemoteProtocolError(RejectReason.BAD_SIGNATURE, "node summary")


_SIG_ENTRY = b"\x00\x58\x40"  # key 0, byte string of 64: how every signed map starts


def _summary_fields(
    node: NodeId,
    seq: int,
    created_ms: int,
    agents: BloomFilter,
    caps: BloomFilter,
    counts: Mapping[str, int],
    levels: Sequence[BloomFilter],
) -> dict[int, Any]:
    fields: dict[int, Any] = {
        1: RECORD_VERSION,
        2: node.raw,
        3: seq,
        4: created_ms,
        5: agents.to_cbor_obj(),
        6: caps.to_cbor_obj(),
        7: dict(counts),
    }
    if levels:
        fields[8] = [level.to_cbor_obj() for level in levels]
    return fields


@dataclass(frozen=True, slots=True)
class SummaryDelta:
    """How summary `seq` differs from summary `base_seq` of the same node, Bloom words only.

    It carries the node's signature over the new summary instead of one of its own: the
    receiver rebuilds that summary from the base it holds and verifies it like any other, so
    a delta that was tampered with, or applied to the wrong base, fails as bad_signature.
    """

    node: NodeId
    base_seq: int
    seq: int
    created_ms: int
    agents: BloomDelta
    caps: BloomDelta
    counts: Mapping[str, int]
    levels: tuple[BloomDelta, ...]
    signature: bytes

    @classmethod
    def between(cls, base: NodeSummary, new: NodeSummary) -> SummaryDelta | None:
        """The delta from `base` to `new`, or None when only a whole summary will do."""
        if base.node != new.node or base.seq >= new.seq or len(base.levels) != len(new.levels):
            return None
        pairs = [(base.agents, new.agents), (base.caps, new.caps)]
        pairs += list(zip(base.levels, new.levels, strict=True))
        if any((a.bits, a.hashes, a.seed) != (b.bits, b.hashes, b.seed) for a, b in pairs):
            return None  # a filter was resized: its words mean other things now
        return cls(
            node=new.node,
            base_seq=base.seq,
            seq=new.seq,
            created_ms=new.created_ms,
            agents=new.agents.delta_since(base.agents),
            caps=new.caps.delta_since(base.caps),
            counts=dict(new.counts),
            levels=tuple(n.delta_since(b) for b, n in zip(base.levels, new.levels, strict=True)),
            signature=new.signature,
        )

    def encode(self) -> bytes:
        """Deterministic CBOR encoding."""
        fields: dict[int, Any] = {
            1: RECORD_VERSION,
            2: self.node.raw,
            3: self.base_seq,
            4: self.seq,
            5: self.created_ms,
            6: self.agents.to_cbor_obj(),
            7: self.caps.to_cbor_obj(),
            8: dict(self.counts),
            10: self.signature,
        }
        if self.levels:
            fields[9] = [level.to_cbor_obj() for level in self.levels]
        return dumps_canonical(fields)

    @classmethod
    def decode(cls, data: bytes, limits: DecodeLimits = SUMMARY_LIMITS) -> SummaryDelta:
        """Parse a delta from untrusted bytes (`apply` checks it against its base)."""
        fields = loads_strict(data, limits)
        if type(fields) is not dict or any(type(key) is not int for key in fields):
            raise _fail("a summary delta is a map with integer keys")
        _version(fields)
        _exact_keys(fields, {1, 2, 3, 4, 5, 6, 7, 8, 10}, {9})
        signature = fields[10]
        if type(signature) is not bytes or len(signature) != SIGNATURE_LEN:
            raise _fail("signature must be 64 bytes")
        raw_levels = fields.get(9, [])
        # Absent when there are no levels, so an empty array is not a second encoding.
        if 9 in fields and (type(raw_levels) is not list or not 0 < len(raw_levels) <= MAX_LEVELS):
            raise _fail(f"levels must be an array of 1..{MAX_LEVELS} deltas")
        delta = cls(
            node=NodeId.from_bytes(fields[2]),
            base_seq=_uint(fields, 3, "base seq"),
            seq=_uint(fields, 4, "seq"),
            created_ms=_uint(fields, 5, "created"),
            agents=BloomDelta.from_cbor_obj(fields[6]),
            caps=BloomDelta.from_cbor_obj(fields[7]),
            counts=_counts(fields[8]),
            levels=tuple(BloomDelta.from_cbor_obj(level) for level in raw_levels),
            signature=signature,
        )
        if delta.encode() != data:
            raise _fail("summary delta is not deterministic CBOR")
        return delta

    def apply(self, base: NodeSummary) -> NodeSummary:
        """The summary this delta rebuilds from `base`, signature verified."""
        if base.node != self.node or base.seq != self.base_seq or self.seq <= self.base_seq:
            raise _fail("summary delta does not follow the base summary held")
        if len(base.levels) != len(self.levels):
            raise _fail("summary delta changes the number of levels")
        fields = _summary_fields(
            self.node,
            self.seq,
            self.created_ms,
            base.agents.apply_delta(self.agents),
            base.caps.apply_delta(self.caps),
            self.counts,
            [level.apply_delta(d) for level, d in zip(base.levels, self.levels, strict=True)],
        )
        unsigned = dumps_canonical(fields)
        # Exactly what encode_signed_map writes, with the node's signature from the delta.
        summary = NodeSummary.decode(
            bytes((unsigned[0] + 1,)) + _SIG_ENTRY + self.signature + unsigned[1:]
        )
        summary.verify()
        return summary


def _counts(counts: object) -> dict[str, int]:
    if type(counts) is not dict or len(counts) > MAX_COUNTS:
        raise _fail(f"counts must be a map of at most {MAX_COUNTS} entries")
    for name, value in counts.items():
        if type(name) is not str or not 0 < len(name) <= MAX_KIND_LEN:
            raise _fail("count names are text of 1..64 characters")
        if type(value) is not int or not 0 <= value <= _MAX_UINT:
            raise _fail("counts are unsigned integers")
    return counts
