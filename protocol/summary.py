"""Node summaries on the wire: filter sizing, level unions, deltas and the summary messages.

No I/O and no clock: `meshd.summaries` drives this module and carries its bytes.

Summary filters use one parameter family so that filters of different nodes can be merged
into attenuated levels: seed 0, k fixed by the target false-positive rate, and m a power of
two times 64 bits. Two filters of that family whose sizes differ by a power of two map an
item to positions that agree modulo the smaller size, so a larger filter folds onto a smaller
one (OR of its slices) and a smaller one expands onto a larger one (copied into every slice)
without false negatives. See protocol/SPEC.md section 6.

Messages on `/meshd/summary/1.0.0` (CBOR maps, one request and one answer per stream):
    push   {0: 0, 1: node-summary bstr}  or  {0: 1, 1: summary-delta bstr}  -> {0: held seq}
    locate {0: 2, 1: agent id bstr32}   -> {0: [[peer id text, [addr text], level uint]]}
On `/meshd/find/1.0.0`:
    find   {0: tag text, 1: limit uint, 2: hops uint}
           -> {0: [[agent id bstr32, kind text, host peer id text]]}
A find is answered from the node's own agents and, while `hops` > 0, from its neighbours
whose capability filter matches the tag, asked in turn with `hops` - 1.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from protocol.bloom import MAX_BITS, BloomFilter
from protocol.cbor import DecodeLimits, dumps_canonical, loads_strict
from protocol.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from protocol.records import NodeSummary, SummaryDelta

__all__ = [
    "FIND_PROTOCOL",
    "LOCATE",
    "MAX_ANSWERS",
    "MAX_FIND_HOPS",
    "PUSH_DELTA",
    "PUSH_FULL",
    "SUMMARY_PROTOCOL",
    "Found",
    "Located",
    "SummaryHistory",
    "capability_key",
    "decode_ack",
    "decode_find",
    "decode_find_answer",
    "decode_locate_answer",
    "decode_request",
    "encode_ack",
    "encode_find",
    "encode_find_answer",
    "encode_locate",
    "encode_locate_answer",
    "encode_push",
    "family_problem",
    "hashes_for",
    "match_agent",
    "reshape",
    "sized_filter",
    "union_into",
]

SUMMARY_PROTOCOL: Final = "/meshd/summary/1.0.0"
FIND_PROTOCOL: Final = "/meshd/find/1.0.0"
PUSH_FULL: Final = 0
PUSH_DELTA: Final = 1
LOCATE: Final = 2
MIN_BITS: Final = 256  # smaller filters do worse than the formula (double hashing)
MAX_ANSWERS: Final = 64  # locate candidates, and agents per find answer
MAX_TAG_LEN: Final = 64
_SMALL_LIMITS: Final = DecodeLimits(max_size=64 * 1024, max_depth=4, max_str=4096, max_items=256)


def capability_key(tag: str) -> str:
    """The DHT provider key of a capability: hex sha2-256 multihash of "meshd/cap/" + tag."""
    return (b"\x12\x20" + hashlib.sha256(b"meshd/cap/" + tag.encode()).digest()).hex()


def hashes_for(fp_rate: float) -> int:
    """k for a target false-positive rate: the optimum, ceil(log2(1/fp))."""
    if not 0 < fp_rate < 1:
        raise LocalProtocolError(f"fp_rate must be in (0, 1), not {fp_rate}")
    return max(1, min(32, math.ceil(-math.log2(fp_rate))))


def _fp(bits: int, items: int, hashes: int) -> float:
    return float((1 - math.exp(-hashes * items / bits)) ** hashes)


def sized_filter(items: int, fp_rate: float, *, max_bits: int = MAX_BITS) -> BloomFilter:
    """The smallest filter of the summary family that holds `items` at about `fp_rate`."""
    hashes = hashes_for(fp_rate)
    bits = MIN_BITS
    while bits < max_bits and _fp(bits, max(items, 1), hashes) > fp_rate:
        bits *= 2
    return BloomFilter(min(bits, max_bits), hashes, 0)


def _pow2_words(bits: int) -> bool:
    words = bits // 64
    return bits % 64 == 0 and words & (words - 1) == 0


def match_agent(
    agent: bytes, summaries: Iterable[tuple[str, NodeSummary]]
) -> tuple[tuple[str, int], ...]:
    """Who may host `agent`, as (peer, level) by level: 0 hosts it, 1 is next to it, ..."""
    found: list[tuple[str, int]] = []
    for peer_id, summary in summaries:
        if agent in summary.agents:
            found.append((peer_id, 0))
            continue
        for level, bloom in enumerate(summary.levels, start=1):
            if agent in bloom:
                found.append((peer_id, level))
                break
    found.sort(key=lambda item: item[1])
    return tuple(found)


def family_problem(summary: NodeSummary, max_bits: int) -> str | None:
    """What puts the summary outside the family (or over `max_bits`), or None."""
    filters = [summary.agents, summary.caps, *summary.levels]
    for bloom in filters:
        if bloom.seed != 0 or not _pow2_words(bloom.bits):
            return f"filter {bloom!r} is not seed 0 with a power-of-two size"
        if bloom.bits > max_bits:
            return f"filter of {bloom.bits} bits exceeds {max_bits}"
    if any(level.hashes != summary.agents.hashes for level in summary.levels):
        return "level filters must use the agent filter's k"
    return None


def reshape(bloom: BloomFilter, bits: int) -> BloomFilter:
    """The filter at another power-of-two size (fold down or expand up); no false negatives."""
    if not (_pow2_words(bloom.bits) and _pow2_words(bits)) or bloom.seed != 0:
        raise LocalProtocolError("reshape needs seed-0 filters of power-of-two sizes")
    raw = bloom.to_cbor_obj()[3]
    if bits < bloom.bits:
        size = bits // 8
        value = 0
        for at in range(0, len(raw), size):
            value |= int.from_bytes(raw[at : at + size], "little")
        data = value.to_bytes(size, "little")
    else:
        data = raw * (bits // bloom.bits)
    return BloomFilter.from_cbor_obj({0: bits, 1: bloom.hashes, 2: 0, 3: data})


def union_into(target: BloomFilter, filters: Iterable[BloomFilter]) -> int:
    """OR each filter of matching k into `target`, reshaped to its size; return how many."""
    merged = 0
    for bloom in filters:
        if bloom.hashes != target.hashes or bloom.seed != 0:
            continue  # another family (another fp target): cannot share bit positions
        target.update(bloom if bloom.bits == target.bits else reshape(bloom, target.bits))
        merged += 1
    return merged


class SummaryHistory:
    """This node's recent summaries, to send each neighbour a delta against what it holds."""

    def __init__(self, keep: int = 8) -> None:
        self._keep = keep
        self._by_seq: OrderedDict[int, NodeSummary] = OrderedDict()

    @property
    def current(self) -> NodeSummary | None:
        """The newest summary, if any."""
        if not self._by_seq:
            return None
        return next(reversed(self._by_seq.values()))

    def add(self, summary: NodeSummary) -> None:
        """Record a new summary (its seq must exceed the previous one's)."""
        current = self.current
        if current is not None and summary.seq <= current.seq:
            raise LocalProtocolError("summary seqs must increase")
        self._by_seq[summary.seq] = summary
        while len(self._by_seq) > self._keep:
            self._by_seq.popitem(last=False)

    def payload_for(self, held_seq: int | None) -> tuple[int, bytes] | None:
        """What to push to a neighbour holding `held_seq`: (PUSH_*, bytes), or None if current."""
        current = self.current
        if current is None or held_seq == current.seq:
            return None
        base = self._by_seq.get(held_seq) if held_seq is not None else None
        if base is not None:
            delta = SummaryDelta.between(base, current)
            if delta is not None:
                encoded = delta.encode()
                if len(encoded) < len(current.encoded):
                    return PUSH_DELTA, encoded
        return PUSH_FULL, current.encoded


# -- messages ---------------------------------------------------------------------------


def _map(data: bytes, limits: DecodeLimits = _SMALL_LIMITS) -> dict[int, Any]:
    obj = loads_strict(data, limits)
    if type(obj) is not dict or any(type(key) is not int for key in obj):
        raise RemoteProtocolError(RejectReason.MALFORMED, "expected a map with integer keys")
    return obj


def encode_push(kind: int, payload: bytes) -> bytes:
    """A push request carrying an encoded summary (PUSH_FULL) or delta (PUSH_DELTA)."""
    return dumps_canonical({0: kind, 1: payload})


def encode_locate(agent: bytes) -> bytes:
    """A locate request: which of your neighbours may host `agent`?"""
    return dumps_canonical({0: LOCATE, 1: agent})


def decode_request(data: bytes, limits: DecodeLimits) -> tuple[int, bytes]:
    """(PUSH_FULL | PUSH_DELTA | LOCATE, payload) of a summary-protocol request."""
    obj = _map(data, limits)
    if obj.keys() != {0, 1} or obj[0] not in (PUSH_FULL, PUSH_DELTA, LOCATE):
        raise RemoteProtocolError(RejectReason.MALFORMED, "unknown summary request")
    if type(obj[0]) is not int or type(obj[1]) is not bytes:
        raise RemoteProtocolError(RejectReason.MALFORMED, "summary request fields")
    if obj[0] == LOCATE and len(obj[1]) != 32:
        raise RemoteProtocolError(RejectReason.MALFORMED, "locate needs a 32-byte agent id")
    return obj[0], obj[1]


def encode_ack(held_seq: int | None) -> bytes:
    """The answer to a push: the seq of the sender's summary now held (-1: none)."""
    return dumps_canonical({0: -1 if held_seq is None else held_seq})


def decode_ack(data: bytes) -> int | None:
    """The held seq of a push answer (None: the peer holds nothing)."""
    obj = _map(data)
    held = obj.get(0)
    if obj.keys() != {0} or type(held) is not int or held < -1:
        raise RemoteProtocolError(RejectReason.MALFORMED, "summary ack")
    return None if held == -1 else held


@dataclass(frozen=True, slots=True)
class Located:
    """A locate answer: `peer` may host the agent, `level` hops beyond it (0: itself)."""

    peer: str
    addrs: tuple[str, ...]
    level: int


def encode_locate_answer(found: Sequence[Located]) -> bytes:
    """The answer to a locate request."""
    return dumps_canonical({0: [[f.peer, list(f.addrs), f.level] for f in found[:MAX_ANSWERS]]})


def decode_locate_answer(data: bytes) -> list[Located]:
    """Parse a locate answer from untrusted bytes."""
    obj = _map(data)
    entries = obj.get(0)
    if obj.keys() != {0} or type(entries) is not list or len(entries) > MAX_ANSWERS:
        raise RemoteProtocolError(RejectReason.MALFORMED, "locate answer")
    found = []
    for entry in entries:
        if type(entry) is not list or len(entry) != 3:
            raise RemoteProtocolError(RejectReason.MALFORMED, "locate answer entry")
        peer, addrs, level = entry
        if type(peer) is not str or type(addrs) is not list or type(level) is not int:
            raise RemoteProtocolError(RejectReason.MALFORMED, "locate answer entry")
        if not 0 < len(peer) <= 128 or len(addrs) > 16 or not 0 <= level <= 3:
            raise RemoteProtocolError(RejectReason.MALFORMED, "locate answer entry")
        if any(type(a) is not str or not 0 < len(a) <= 256 for a in addrs):
            raise RemoteProtocolError(RejectReason.MALFORMED, "locate answer address")
        found.append(Located(peer, tuple(addrs), level))
    return found


MAX_FIND_HOPS: Final = 2


@dataclass(frozen=True, slots=True)
class Found:
    """An agent with the capability searched for, and the node hosting it."""

    agent: bytes
    kind: str
    node: str


def encode_find(tag: str, limit: int, hops: int) -> bytes:
    """A find request: up to `limit` agents with capability `tag`, from `hops` hops around."""
    return dumps_canonical({0: tag, 1: limit, 2: hops})


def decode_find(data: bytes) -> tuple[str, int, int]:
    """(tag, limit, hops) of a find request."""
    obj = _map(data)
    tag, limit, hops = obj.get(0), obj.get(1), obj.get(2)
    if obj.keys() != {0, 1, 2} or type(tag) is not str:
        raise RemoteProtocolError(RejectReason.MALFORMED, "find request")
    if type(limit) is not int or type(hops) is not int:
        raise RemoteProtocolError(RejectReason.MALFORMED, "find request")
    if not 0 < len(tag) <= MAX_TAG_LEN or not 0 < limit <= MAX_ANSWERS:
        raise RemoteProtocolError(RejectReason.MALFORMED, "find request bounds")
    if not 0 <= hops <= MAX_FIND_HOPS:
        raise RemoteProtocolError(RejectReason.MALFORMED, "find request hops")
    return tag, limit, hops


def encode_find_answer(agents: Sequence[Found]) -> bytes:
    """The answer to a find request."""
    return dumps_canonical({0: [[f.agent, f.kind, f.node] for f in agents[:MAX_ANSWERS]]})


def decode_find_answer(data: bytes) -> list[Found]:
    """Parse a find answer from untrusted bytes."""
    obj = _map(data)
    entries = obj.get(0)
    if obj.keys() != {0} or type(entries) is not list or len(entries) > MAX_ANSWERS:
        raise RemoteProtocolError(RejectReason.MALFORMED, "find answer")
    agents = []
    for entry in entries:
        if type(entry) is not list or len(entry) != 3:
            raise RemoteProtocolError(RejectReason.MALFORMED, "find answer entry")
        raw, kind, node = entry
        if type(raw) is not bytes or len(raw) != 32 or type(kind) is not str or len(kind) > 64:
            raise RemoteProtocolError(RejectReason.MALFORMED, "find answer entry")
        if type(node) is not str or not 0 < len(node) <= 128:
            raise RemoteProtocolError(RejectReason.MALFORMED, "find answer node")
        agents.append(Found(raw, kind, node))
    return agents
