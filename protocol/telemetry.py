"""Mesh telemetry: what nodes gossip so that any node can estimate the whole mesh (sans-IO).

A node sends its neighbours a `TelemetryReport`, signed by its node key
(`/meshd/telemetry/1.0.0`, one request and its answer, the answer being the peer's own report).
It carries mergeable state only, so a report reaching a node twice, by two paths, is never
counted twice:

- HyperLogLog sketches of hosted agent ids and of node ids, per epoch (`epoch =
  wall ms // epoch length`; the current and the previous one). Merging takes register maxima
  (idempotent). Estimates use the union of the two epochs, so what left the mesh is
  forgotten after two epochs at most.
- A table of per-node counter entries: each node's own totals and rates, keyed by node id,
  versioned by a sequence number the node raises each time (its wall clock in ms, so it
  keeps rising across restarts). Receivers keep the highest sequence per node and forward
  the table. Sums over the table are the mesh's totals and rates. Each entry carries its
  age (ms since its node made it), which every hop increases by the time it held it; an
  entry older than the table's TTL is dropped, and cannot come back, since its age only grows.
  The table is bounded: when full, the oldest entry makes room for a younger one.
  A report carries only part of the table (`MeshTable.pick`): the sender's own entry, then
  the entries it has forwarded the fewest times since they changed, so news spreads first
  and the rest take turns. A report's size and decoding cost stay bounded as the mesh grows
  (a 200-node table cost about 3 ms to decode and 3 to encode per report, and every
  exchange is two of each), while every entry still reaches every table well inside its TTL.

Report (a signed map, see `protocol.cbor`):
    1 version uint, 2 node PeerID bstr, 3 created uint ms,
    4 sketches [[epoch uint, agents HLL, nodes HLL]] (at most 2),
    5 entries [[node PeerID bstr, seq uint, age_ms uint, counters {tstr => uint},
                rates {tstr => uint (thousandths per second)}]] (at most MAX_ENTRIES)
Entries are trusted as their forwarder reports them: the report's signature says which
neighbour sent it, not who made each entry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from protocol.cbor import DecodeLimits, decode_signed_map, encode_signed_map
from protocol.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from protocol.ids import NodeId, SigningKey
from protocol.sketch import HyperLogLog

__all__ = [
    "AGENT_PRECISION",
    "MAX_ENTRIES",
    "NODE_PRECISION",
    "TELEMETRY_DOMAIN",
    "TELEMETRY_LIMITS",
    "EpochSketches",
    "MeshTable",
    "NodeEntry",
    "TelemetryReport",
]

TELEMETRY_VERSION: Final = 1
TELEMETRY_DOMAIN: Final = b"meshd/telemetry/v1\x00"
AGENT_PRECISION: Final = 12  # 4,096 registers: standard error 1.6%
NODE_PRECISION: Final = 10  # 1,024 registers: 3.3% (and exact-ish for small meshes)
MAX_ENTRIES: Final = 512
MAX_COUNTERS: Final = 16
MAX_NAME: Final = 32
MAX_EPOCHS: Final = 2
_MAX_UINT: Final = 2**63 - 1
TELEMETRY_LIMITS: Final = DecodeLimits(
    max_size=128 * 1024, max_depth=6, max_str=1 << 14, max_items=MAX_ENTRIES
)


def _fail(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(RejectReason.MALFORMED, detail)


def _uint(value: object, name: str) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_UINT:
        raise _fail(f"{name} must be an unsigned integer")
    return value


def _counts(value: object, name: str) -> dict[str, int]:
    if type(value) is not dict or len(value) > MAX_COUNTERS:
        raise _fail(f"{name} must be a map of at most {MAX_COUNTERS} entries")
    for key, number in value.items():
        if type(key) is not str or not 0 < len(key) <= MAX_NAME:
            raise _fail(f"{name} keys are text of 1..{MAX_NAME} characters")
        _uint(number, name)
    return dict(value)


@dataclass(frozen=True, slots=True)
class NodeEntry:
    """One node's counters as it made them: `seq` orders versions, `age_ms` grows per hop."""

    node: bytes  # the node's PeerID bytes
    seq: int
    age_ms: int
    counters: Mapping[str, int]
    rates: Mapping[str, int]  # thousandths per second

    def to_cbor_obj(self) -> list[Any]:
        """The CBOR array form."""
        return [self.node, self.seq, self.age_ms, dict(self.counters), dict(self.rates)]

    @classmethod
    def from_cbor_obj(cls, obj: object) -> NodeEntry:
        """Parse an untrusted entry."""
        if type(obj) is not list or len(obj) != 5:
            raise _fail("an entry is an array of 5 items")
        node = NodeId.from_bytes(obj[0]).raw
        return cls(
            node=node,
            seq=_uint(obj[1], "seq"),
            age_ms=_uint(obj[2], "age"),
            counters=_counts(obj[3], "counters"),
            rates=_counts(obj[4], "rates"),
        )


class EpochSketches:
    """HyperLogLogs of agents and nodes for the current and the previous epoch."""

    def __init__(self) -> None:
        self._by_epoch: dict[int, tuple[HyperLogLog, HyperLogLog]] = {}
        self.epoch = 0

    def rotate(self, epoch: int) -> None:
        """Make `epoch` current; keep only it and the one before."""
        if epoch > self.epoch:
            self.epoch = epoch
        for old in [e for e in self._by_epoch if e < self.epoch - 1]:
            del self._by_epoch[old]

    def _pair(self, epoch: int) -> tuple[HyperLogLog, HyperLogLog]:
        pair = self._by_epoch.get(epoch)
        if pair is None:
            pair = (HyperLogLog(AGENT_PRECISION), HyperLogLog(NODE_PRECISION))
            self._by_epoch[epoch] = pair
        return pair

    def add(self, agents: Iterable[bytes], nodes: Iterable[bytes]) -> None:
        """Add items to the current epoch's sketches."""
        agent_sketch, node_sketch = self._pair(self.epoch)
        agent_sketch.add_many(agents)
        node_sketch.add_many(nodes)

    def merge(self, epoch: int, agents: HyperLogLog, nodes: HyperLogLog) -> bool:
        """Merge a neighbour's sketches of `epoch`; False if that epoch is not kept here."""
        if not self.epoch - 1 <= epoch <= self.epoch:
            return False
        if (agents.precision, nodes.precision) != (AGENT_PRECISION, NODE_PRECISION):
            raise _fail("sketch precisions differ from this protocol's")
        mine = self._pair(epoch)
        try:
            mine[0].merge(agents)
            mine[1].merge(nodes)
        except LocalProtocolError as exc:  # a different seed
            raise _fail(str(exc)) from exc
        return True

    def items(self) -> list[tuple[int, HyperLogLog, HyperLogLog]]:
        """(epoch, agents, nodes), oldest first."""
        return [(e, a, n) for e, (a, n) in sorted(self._by_epoch.items())]

    def estimates(self) -> tuple[float, float]:
        """Estimated distinct agents and nodes over both epochs."""
        agents, nodes = HyperLogLog(AGENT_PRECISION), HyperLogLog(NODE_PRECISION)
        for _, a, n in self.items():
            agents.merge(a)
            nodes.merge(n)
        return agents.estimate(), nodes.estimate()


@dataclass(frozen=True, slots=True)
class TelemetryReport:
    """A node's telemetry as sent to a neighbour, signed by the node."""

    node: NodeId
    created_ms: int
    sketches: tuple[tuple[int, HyperLogLog, HyperLogLog], ...]
    entries: tuple[NodeEntry, ...]
    signature: bytes
    signed_bytes: bytes

    @staticmethod
    def encode(
        node_key: SigningKey,
        *,
        created_ms: int,
        sketches: Sequence[tuple[int, HyperLogLog, HyperLogLog]],
        entries: Sequence[NodeEntry],
    ) -> bytes:
        """Sign and encode a report."""
        if len(sketches) > MAX_EPOCHS or len(entries) > MAX_ENTRIES:
            raise LocalProtocolError("too many sketches or entries for one report")
        fields: dict[int, Any] = {
            1: TELEMETRY_VERSION,
            2: node_key.node_id.raw,
            3: created_ms,
            4: [[e, a.to_cbor_obj(), n.to_cbor_obj()] for e, a, n in sketches],
            5: [entry.to_cbor_obj() for entry in entries],
        }
        return encode_signed_map(TELEMETRY_DOMAIN, fields, node_key)

    @classmethod
    def decode(cls, data: bytes) -> TelemetryReport:
        """Parse an untrusted report (structure only; see `verify`)."""
        fields, signed, signature = decode_signed_map(
            data, TELEMETRY_DOMAIN, TELEMETRY_LIMITS, frozenset({(0, 1, 2, 3, 4, 5)})
        )
        if fields[1] != TELEMETRY_VERSION or type(fields[1]) is not int:
            raise RemoteProtocolError(RejectReason.UNKNOWN_VERSION, f"version {fields[1]!r}")
        raw_sketches, raw_entries = fields[4], fields[5]
        if type(raw_sketches) is not list or len(raw_sketches) > MAX_EPOCHS:
            raise _fail(f"sketches must be an array of at most {MAX_EPOCHS}")
        sketches = []
        for item in raw_sketches:
            if type(item) is not list or len(item) != 3:
                raise _fail("a sketch item is [epoch, agents, nodes]")
            sketches.append(
                (
                    _uint(item[0], "epoch"),
                    HyperLogLog.from_cbor_obj(item[1]),
                    HyperLogLog.from_cbor_obj(item[2]),
                )
            )
        if type(raw_entries) is not list or len(raw_entries) > MAX_ENTRIES:
            raise _fail(f"entries must be an array of at most {MAX_ENTRIES}")
        return cls(
            node=NodeId.from_bytes(fields[2]),
            created_ms=_uint(fields[3], "created"),
            sketches=tuple(sketches),
            entries=tuple(NodeEntry.from_cbor_obj(e) for e in raw_entries),
            signature=signature,
            signed_bytes=signed,
        )

    def verify(self) -> None:
        """Raise bad_signature unless the node named in the report signed it."""
        if not self.node.verify(self.signed_bytes, self.signature):
            raise RemoteProtocolError(RejectReason.BAD_SIGNATURE, "telemetry report")


class MeshTable:
    """Per-node counter entries: highest sequence wins, aged out after `ttl_s`, bounded."""

    def __init__(self, *, max_nodes: int = 256, ttl_s: float = 120.0) -> None:
        if max_nodes < 1 or ttl_s <= 0:
            raise LocalProtocolError("max_nodes must be >= 1 and ttl_s > 0")
        self._max = max_nodes
        self._ttl_ms = ttl_s * 1000.0
        # node -> (entry, local time in s when it arrived)
        self._entries: dict[bytes, tuple[NodeEntry, float]] = {}
        # node -> reports its current entry went into (`pick`): news is forwarded first
        self._sent: dict[bytes, int] = {}
        self.dropped_full = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _age_ms(self, item: tuple[NodeEntry, float], now: float) -> float:
        entry, arrived = item
        return entry.age_ms + max(0.0, now - arrived) * 1000.0

    def merge(self, entry: NodeEntry, now: float) -> bool:
        """Take `entry` if it is newer than what we hold of its node; True if taken."""
        if entry.age_ms > self._ttl_ms:
            return False
        held = self._entries.get(entry.node)
        if held is not None and held[0].seq >= entry.seq:
            return False
        if held is None and len(self._entries) >= self._max:
            self.expire(now)
        if held is None and len(self._entries) >= self._max:
            oldest = max(self._entries, key=lambda n: self._age_ms(self._entries[n], now))
            if self._age_ms(self._entries[oldest], now) <= entry.age_ms:
                self.dropped_full += 1
                return False
            del self._entries[oldest]
            self._sent.pop(oldest, None)
            self.dropped_full += 1
        self._entries[entry.node] = (entry, now)
        self._sent[entry.node] = 0
        return True

    def expire(self, now: float) -> int:
        """Drop entries older than the TTL; return how many."""
        old = [n for n, item in self._entries.items() if self._age_ms(item, now) > self._ttl_ms]
        for node in old:
            del self._entries[node]
            self._sent.pop(node, None)
        return len(old)

    def entries(self, now: float) -> list[NodeEntry]:
        """Live entries with their ages brought up to `now`, youngest first."""
        self.expire(now)
        out = [
            NodeEntry(e.node, e.seq, math.ceil(self._age_ms((e, t), now)), e.counters, e.rates)
            for e, t in self._entries.values()
        ]
        out.sort(key=lambda e: e.age_ms)
        return out

    def pick(self, now: float, limit: int, first: bytes | None = None) -> list[NodeEntry]:
        """Up to `limit` live entries for one report: `first`'s, then the least forwarded.

        Each entry picked counts as forwarded once more; a newer version of an entry starts
        again at zero, so it goes out before entries every neighbour has already had. Ties
        go to the youngest entry. The entries' ages are brought up to `now`.
        """
        if limit < 1:
            raise LocalProtocolError("a report carries at least one entry")
        entries = self.entries(now)  # youngest first; the sort below is stable
        entries.sort(key=lambda e: (e.node != first, self._sent.get(e.node, 0)))
        chosen = entries[:limit]
        for entry in chosen:
            self._sent[entry.node] = self._sent.get(entry.node, 0) + 1
        return chosen

    def get(self, node: bytes) -> NodeEntry | None:
        """The entry held for `node`, if any."""
        held = self._entries.get(node)
        return None if held is None else held[0]

    def sums(self) -> tuple[dict[str, int], dict[str, float]]:
        """Totals of counters, and of rates (per second), over every entry held."""
        counters: dict[str, int] = {}
        rates: dict[str, float] = {}
        for entry, _ in self._entries.values():
            for name, value in entry.counters.items():
                counters[name] = counters.get(name, 0) + value
            for name, value in entry.rates.items():
                rates[name] = rates.get(name, 0.0) + value / 1000.0
        return counters, rates
