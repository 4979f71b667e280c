"""Regenerate protocol/vectors/*.json deterministically from fixed seeds.

Run `python -m scripts.gen_vectors` (or `make vectors`); the test suite checks that the
committed files equal what this produces, so a format change cannot slip through silently.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2

from protocol.bloom import BloomFilter
from protocol.cbor import encode_signed_map
from protocol.envelope import ENVELOPE_DOMAIN, Envelope
from protocol.ids import SigningKey
from protocol.records import (
    AGENT_RECORD_DOMAIN,
    AgentRecord,
    BirthCert,
    LifecycleState,
    NodeSummary,
    Provenance,
    SummaryDelta,
)
from protocol.summary import sized_filter

VECTOR_DIR = Path(__file__).resolve().parent.parent / "protocol" / "vectors"
NOW = 1_800_000_000_000  # 2027-01-15T08:00:00Z


def seed(label: str) -> bytes:
    """A 32-byte seed derived from a label, so every vector names its keys by label."""
    return hashlib.sha256(b"meshd test vector " + label.encode()).digest()


def key(label: str) -> SigningKey:
    """The signing key of a labelled seed."""
    return SigningKey.from_seed(seed(label))


def msg_id(label: str) -> bytes:
    """A 16-byte message id derived from a label."""
    return seed("id " + label)[:16]


ALICE, BOB, NODE, OTHER_NODE = key("alice"), key("bob"), key("node"), key("other-node")
SEEDS = {name: seed(name).hex() for name in ("alice", "bob", "node", "other-node")}


def _vector(
    name: str, kind: str, description: str, data: bytes, expect: str, **extra: Any
) -> dict[str, Any]:
    vec: dict[str, Any] = {
        "name": name,
        "type": kind,
        "description": description,
        "now_ms": NOW,
        "cbor": data.hex(),
        "expect": expect,
    }
    vec.update(extra)
    return vec


def _envelope(**kw: Any) -> Envelope:
    args: dict[str, Any] = {"to": BOB.agent_id, "kind": "msg", "body": {"text": "hello"}}
    args.update(kw)
    sender = args.pop("key", ALICE)
    return Envelope.create(
        sender, args.pop("to"), args.pop("kind"), args.pop("body"),
        now_ms=args.pop("now_ms", NOW - 1_000), msg_id=args.pop("msg_id", msg_id("m1")), **args,
    )  # fmt: skip


def _fields(env: Envelope) -> dict[int, Any]:
    fields: dict[int, Any] = cbor2.loads(env.frame)
    del fields[0]
    return fields


def _resigned(change: Callable[[dict[int, Any]], None], signer: SigningKey = ALICE) -> bytes:
    fields = _fields(_envelope())
    change(fields)
    return encode_signed_map(ENVELOPE_DOMAIN, fields, signer)


def _unsigned(change: Callable[[dict[int, Any]], None]) -> bytes:
    """A frame with a zero signature whose fields `change` broke (decoding must fail first)."""
    fields = _fields(_envelope())
    change(fields)
    body = cbor2.dumps(fields, canonical=True)
    return bytes((body[0] + 1,)) + b"\x00\x58\x40" + bytes(64) + body[1:]


def envelope_vectors() -> list[dict[str, Any]]:
    """Valid envelopes and one or more invalid ones for every reject reason."""
    bob_hosted = {"hosted": [BOB.agent_id.did]}
    good = _envelope()
    flipped = bytearray(good.frame)
    flipped[-1] ^= 1
    deep: Any = 0
    for _ in range(20):
        deep = [deep]
    v = [
        _vector(
            "env-valid-direct", "envelope", "a direct message", good.frame, "valid", **bob_hosted
        ),
        _vector(
            "env-valid-topic",
            "envelope",
            "a topic message",
            _envelope(to="weather/paris", kind="pub").frame,
            "valid",
        ),
        _vector(
            "env-valid-reply",
            "envelope",
            "a reply with reply_to and trace",
            _envelope(
                key=BOB,
                to=ALICE.agent_id,
                kind="reply",
                body=[1, 2.5, None, True],
                reply_to=msg_id("m0"),
                trace=b"\x01" * 8,
            ).frame,
            "valid",
            hosted=[ALICE.agent_id.did],
        ),
        _vector(
            "env-valid-nested",
            "envelope",
            "a nested body with every plain type",
            _envelope(
                body={
                    "a": [1, -1, 2**64 - 1, -(2**63)],
                    "b": b"\x00\xff",
                    "c": {"d": {"e": [False, None, 0.5, "é"]}},
                    7: "int key",
                }
            ).frame,
            "valid",
        ),
        _vector(
            "env-valid-near-expiry",
            "envelope",
            "expires 1 ms after now",
            _envelope(now_ms=NOW - 60_000, ttl_ms=60_001).frame,
            "valid",
        ),
        _vector("env-garbage", "envelope", "not CBOR", b"\xff\xfe\xfd", "malformed"),
        _vector("env-empty", "envelope", "no bytes", b"", "malformed"),
        _vector("env-not-map", "envelope", "an array", cbor2.dumps([1, 2, 3]), "malformed"),
        _vector(
            "env-trailing", "envelope", "one byte after the map", good.frame + b"\x00", "malformed"
        ),
        _vector(
            "env-indefinite",
            "envelope",
            "indefinite-length map",
            b"\xbf" + good.frame[1:] + b"\xff",
            "malformed",
        ),
        _vector(
            "env-sig-not-first",
            "envelope",
            "signature entry last",
            cbor2.dumps({**_fields(good), 0: good.signature}),
            "malformed",
        ),
        _vector(
            "env-keys-unsorted",
            "envelope",
            "fields 1 and 2 swapped",
            good.frame[:68] + _swap_first_two(good.frame[68:]),
            "malformed",
        ),
        _vector(
            "env-missing-kind",
            "envelope",
            "field 7 missing",
            _resigned(lambda f: f.pop(7)),
            "malformed",
        ),
        _vector(
            "env-unknown-field",
            "envelope",
            "field 11 present",
            _resigned(lambda f: f.update({11: 0})),
            "malformed",
        ),
        _vector(
            "env-short-from",
            "envelope",
            "from is 31 bytes",
            _resigned(lambda f: f.update({2: f[2][:31]})),
            "malformed",
        ),
        _vector(
            "env-short-id",
            "envelope",
            "id is 8 bytes",
            _resigned(lambda f: f.update({4: f[4][:8]})),
            "malformed",
        ),
        _vector(
            "env-created-after-expires",
            "envelope",
            "created == expires",
            _resigned(lambda f: f.update({6: f[5]})),
            "malformed",
        ),
        _vector(
            "env-tag-in-body",
            "envelope",
            "a bignum tag in the body",
            _unsigned(lambda f: f.update({8: cbor2.CBORTag(2, b"\x01")})),
            "malformed",
        ),
        _vector(
            "env-undefined-in-body",
            "envelope",
            "the undefined simple value",
            _unsigned(lambda f: f.update({8: cbor2.undefined})),
            "malformed",
        ),
        _vector(
            "env-too-deep",
            "envelope",
            "body nested 21 deep",
            _unsigned(lambda f: f.update({8: deep})),
            "malformed",
        ),
        _vector(
            "env-too-large",
            "envelope",
            "a 300-byte frame against a 256-byte limit",
            _envelope(body="x" * 120).frame,
            "too_large",
            policy={"max_size": 256},
        ),
        _vector(
            "env-unknown-version",
            "envelope",
            "version 2",
            _resigned(lambda f: f.update({1: 2})),
            "unknown_version",
        ),
        _vector(
            "env-expired",
            "envelope",
            "expired 1 ms ago",
            _envelope(now_ms=NOW - 60_001, ttl_ms=60_000).frame,
            "expired",
        ),
        _vector(
            "env-from-future",
            "envelope",
            "created 31 s ahead",
            _envelope(now_ms=NOW + 31_000).frame,
            "from_future",
        ),
        _vector(
            "env-ttl-too-long",
            "envelope",
            "lifetime 301 s",
            _envelope(ttl_ms=301_000).frame,
            "ttl_too_long",
        ),
        _vector(
            "env-wrong-recipient",
            "envelope",
            "for Bob, received where only Alice lives",
            good.frame,
            "wrong_recipient",
            hosted=[ALICE.agent_id.did],
        ),
        _vector(
            "env-bad-signature-forged",
            "envelope",
            "claims Alice, signed by Bob",
            _resigned(lambda f: None, signer=BOB),
            "bad_signature",
        ),
        _vector(
            "env-bad-signature-bitflip",
            "envelope",
            "last body byte flipped",
            bytes(flipped),
            "bad_signature",
        ),
        _vector(
            "env-replayed",
            "envelope",
            "the same frame a second time",
            good.frame,
            "replayed",
            seen_before=True,
        ),
    ]
    return v


def _swap_first_two(rest: bytes) -> bytes:
    """Swap the encoded entries 1 (version: 2 bytes) and 2 (from: 35 bytes)."""
    version, sender = rest[:2], rest[2:37]
    return sender + version + rest[37:]


def _root_cert(agent: SigningKey, budget: int = 10) -> BirthCert:
    return BirthCert.issue(
        NODE, agent=agent.agent_id, kind="echo", node=NODE.node_id, created_ms=NOW - 5_000,
        budget=budget,
    )  # fmt: skip


def _record(agent: SigningKey, provenance: Provenance, **kw: Any) -> AgentRecord:
    return AgentRecord.create(
        agent,
        node=kw.get("node", NODE.node_id),
        addrs=kw.get("addrs", ["/ip4/127.0.0.1/tcp/4001"]),
        seq=kw.get("seq", 1),
        expires_ms=kw.get("expires_ms", NOW + 3_600_000),
        state=kw.get("state", LifecycleState.ACTIVE),
        provenance=provenance,
    )


def record_vectors() -> list[dict[str, Any]]:
    """Birth certificates, provenance chains and agent records."""
    root = Provenance.root(_root_cert(ALICE))
    child_cert = BirthCert.issue(
        ALICE, agent=BOB.agent_id, kind="worker", node=NODE.node_id, created_ms=NOW - 1_000,
        budget=3, parent=ALICE.agent_id,
    )  # fmt: skip
    child = root.child(child_cert)
    greedy_cert = BirthCert.issue(
        ALICE, agent=BOB.agent_id, kind="worker", node=NODE.node_id, created_ms=NOW - 1_000,
        budget=10, parent=ALICE.agent_id,
    )  # fmt: skip
    greedy = Provenance((greedy_cert, *root.certs))
    forged_root = BirthCert.issue(
        OTHER_NODE, agent=ALICE.agent_id, kind="echo", node=OTHER_NODE.node_id,
        created_ms=NOW - 5_000, budget=10,
    )  # fmt: skip
    bad_sig_fields = cbor2.loads(forged_root.encoded)
    del bad_sig_fields[0]
    bad_sig_fields[4] = NODE.node_id.raw  # claims NODE, signed by OTHER_NODE
    forged_cert = BirthCert.decode(
        encode_signed_map(b"meshd/birth-cert/v1\x00", bad_sig_fields, OTHER_NODE)
    )
    good = _record(ALICE, root)
    unknown_version = cbor2.loads(good.encoded)
    del unknown_version[0]
    unknown_version[1] = 7
    return [
        _vector(
            "cert-valid-root",
            "birth_cert",
            "node-signed root certificate",
            root.certs[0].encoded,
            "valid",
        ),
        _vector(
            "cert-valid-child",
            "birth_cert",
            "signed by the parent agent",
            child_cert.encoded,
            "valid",
        ),
        _vector(
            "cert-forged-node",
            "birth_cert",
            "names NODE, signed by OTHER_NODE",
            forged_cert.encoded,
            "bad_signature",
        ),
        _vector("record-valid", "agent_record", "root agent, active", good.encoded, "valid"),
        _vector(
            "record-valid-child",
            "agent_record",
            "agent spawned by an agent, dormant",
            _record(BOB, child, state=LifecycleState.DORMANT, seq=4).encoded,
            "valid",
        ),
        _vector(
            "record-valid-tombstone",
            "agent_record",
            "state gone",
            _record(ALICE, root, state=LifecycleState.GONE, seq=9).encoded,
            "valid",
        ),
        _vector(
            "record-expired",
            "agent_record",
            "expired at now",
            _record(ALICE, root, expires_ms=NOW).encoded,
            "expired",
        ),
        _vector(
            "record-forged",
            "agent_record",
            "Alice's record signed by Bob",
            encode_signed_map(AGENT_RECORD_DOMAIN, _without_sig(good.encoded), BOB),
            "bad_signature",
        ),
        _vector(
            "record-wrong-provenance",
            "agent_record",
            "Bob's record with Alice's chain",
            encode_signed_map(
                AGENT_RECORD_DOMAIN, {**_without_sig(good.encoded), 2: BOB.public_key}, BOB
            ),
            "malformed",
        ),
        _vector(
            "record-budget-overrun",
            "agent_record",
            "child budget not below parent's",
            _record(BOB, greedy).encoded,
            "unauthorized",
        ),
        _vector(
            "record-forged-root",
            "agent_record",
            "root certificate forged",
            _record(ALICE, Provenance((forged_cert,))).encoded,
            "bad_signature",
        ),
        _vector(
            "record-unknown-version",
            "agent_record",
            "version 7",
            encode_signed_map(AGENT_RECORD_DOMAIN, unknown_version, ALICE),
            "unknown_version",
        ),
        _vector(
            "record-bad-state",
            "agent_record",
            "state 'sleeping'",
            encode_signed_map(
                AGENT_RECORD_DOMAIN, {**_without_sig(good.encoded), 7: "sleeping"}, ALICE
            ),
            "malformed",
        ),
    ]


def _without_sig(encoded: bytes) -> dict[int, Any]:
    fields: dict[int, Any] = cbor2.loads(encoded)
    del fields[0]
    return fields


def _ids(n: int) -> list[bytes]:
    return [SigningKey.from_seed(seed(f"agent {i}")).public_key for i in range(n)]


def bloom_summary_vectors() -> list[dict[str, Any]]:
    """Bloom filters (known answers) and node summaries."""
    present = _ids(20)
    absent = [hashlib.sha256(b"absent %d" % i).digest() for i in range(5)]
    bloom = BloomFilter.for_capacity(100, 0.01, seed=7)
    bloom.add_many(present)
    caps = BloomFilter.for_capacity(16, 0.01, seed=7)
    caps.add_many([b"echo", b"translate"])
    summary = NodeSummary.create(
        NODE, seq=3, created_ms=NOW - 2_000, agents=bloom, caps=caps,
        counts={"agents": 20, "active": 4},
    )  # fmt: skip
    forged = NodeSummary.create(
        OTHER_NODE, seq=3, created_ms=NOW - 2_000, agents=bloom, caps=caps, counts={},
    )  # fmt: skip
    forged_fields = _without_sig(forged.encoded)
    forged_fields[2] = NODE.node_id.raw
    bad_bloom = bloom.to_cbor_obj()
    bad_bloom[0] = bad_bloom[0] + 1  # m no longer a multiple of 64
    return [
        _vector(
            "bloom-known-answer",
            "bloom",
            "20 agent ids at m/k from (100, 1%)",
            bloom.encode(),
            "valid",
            contains=[i.hex() for i in present],
            lacks=[a.hex() for a in absent],
        ),
        _vector(
            "bloom-caps",
            "bloom",
            "capability tags",
            caps.encode(),
            "valid",
            contains=[b"echo".hex(), b"translate".hex()],
        ),
        _vector(
            "bloom-bad-m", "bloom", "m not a multiple of 64", cbor2.dumps(bad_bloom), "malformed"
        ),
        _vector(
            "bloom-short-bits",
            "bloom",
            "bit array shorter than m/8",
            cbor2.dumps({**bloom.to_cbor_obj(), 3: b"\x00" * 8}),
            "malformed",
        ),
        _vector(
            "summary-valid",
            "node_summary",
            "20 agents, two capability tags",
            summary.encoded,
            "valid",
        ),
        _vector(
            "summary-forged",
            "node_summary",
            "names NODE, signed by OTHER_NODE",
            encode_signed_map(b"meshd/node-summary/v1\x00", forged_fields, OTHER_NODE),
            "bad_signature",
        ),
        _vector(
            "summary-bad-bloom",
            "node_summary",
            "agents filter with a bad m",
            encode_signed_map(
                b"meshd/node-summary/v1\x00", {**_without_sig(summary.encoded), 5: bad_bloom}, NODE
            ),
            "malformed",
        ),
    ]


def summary_delta_vectors() -> list[dict[str, Any]]:
    """Summary deltas (issue 6): each applies to the base summary given in `base`."""
    agents = _ids(40)
    bloom = sized_filter(64, 0.01)
    bloom.add_many(agents[:30])
    caps = sized_filter(4, 0.01)
    caps.add_many([b"echo"])
    base = NodeSummary.create(
        NODE, seq=10, created_ms=NOW - 5_000, agents=bloom, caps=caps, counts={"agents": 30}
    )
    grown = sized_filter(64, 0.01)
    grown.add_many(agents[1:40])
    new = NodeSummary.create(
        NODE, seq=11, created_ms=NOW - 1_000, agents=grown, caps=caps, counts={"agents": 39}
    )
    delta = SummaryDelta.between(base, new)
    assert delta is not None
    forged = SummaryDelta(
        delta.node, delta.base_seq, delta.seq, delta.created_ms, delta.agents, delta.caps,
        {"agents": 1}, delta.levels, delta.signature,
    )  # fmt: skip
    late = SummaryDelta(
        delta.node, 9, delta.seq, delta.created_ms, delta.agents, delta.caps,
        delta.counts, delta.levels, delta.signature,
    )  # fmt: skip
    base_hex = base.encoded.hex()
    return [
        _vector(
            "summary-delta-valid",
            "summary_delta",
            "one agent gone, ten new; rebuilds the summary of seq 11",
            delta.encode(),
            "valid",
            base=base_hex,
            result=new.encoded.hex(),
        ),
        _vector(
            "summary-delta-forged-counts",
            "summary_delta",
            "counts changed after signing: the rebuilt summary fails its signature",
            forged.encode(),
            "bad_signature",
            base=base_hex,
        ),
        _vector(
            "summary-delta-wrong-base",
            "summary_delta",
            "made against seq 9, applied to seq 10",
            late.encode(),
            "malformed",
            base=base_hex,
        ),
    ]


def build() -> dict[str, dict[str, Any]]:
    """Every vector file's content, keyed by file name."""
    header = {
        "spec": "protocol/SPEC.md",
        "seeds": SEEDS,
        "keys": {
            name: {"agent_id": key(name).agent_id.did, "node_id": key(name).node_id.text}
            for name in SEEDS
        },
        "note": "seeds are Ed25519 seeds; 'now_ms' is the receiver's clock for every vector",
    }
    return {
        "envelope.json": {**header, "vectors": envelope_vectors()},
        "records.json": {**header, "vectors": record_vectors()},
        "bloom_summary.json": {
            **header,
            "vectors": bloom_summary_vectors() + summary_delta_vectors(),
        },
    }


def render(content: dict[str, Any]) -> str:
    """The exact text of a vector file."""
    return json.dumps(content, indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    """Write the vector files."""
    VECTOR_DIR.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, content in build().items():
        (VECTOR_DIR / name).write_text(render(content))
        total += len(content["vectors"])
    print(f"wrote {total} vectors to {VECTOR_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
