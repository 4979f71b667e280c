"""Envelopes: round trips, every reject reason, and hostile bytes."""

from __future__ import annotations

import contextlib
import tracemalloc
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.cbor import DecodeLimits, encode_signed_map, loads_strict
from protocol.envelope import (
    ENVELOPE_DOMAIN,
    Envelope,
    EnvelopePolicy,
    open_envelope,
)
from protocol.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from protocol.ids import AgentId, SigningKey
from protocol.replay import ReplayWindow
from tests.strategies import kinds, msg_ids, now_ms, plain_bodies, signing_keys, topics

NOW = 1_800_000_000_000
ALICE = SigningKey.from_seed(b"a" * 32)
BOB = SigningKey.from_seed(b"b" * 32)


def make(**overrides: Any) -> Envelope:
    args: dict[str, Any] = {"key": ALICE, "to": BOB.agent_id, "kind": "msg", "body": {"x": 1}}
    args.update(overrides)
    return Envelope.create(
        args.pop("key"), args.pop("to"), args.pop("kind"), args.pop("body"),
        now_ms=args.pop("now_ms", NOW), **args,
    )  # fmt: skip


def fields_of(env: Envelope) -> dict[int, Any]:
    fields: dict[int, Any] = cbor2.loads(env.frame)
    del fields[0]
    return fields


def resign(fields: dict[int, Any], key: SigningKey = ALICE) -> bytes:
    return encode_signed_map(ENVELOPE_DOMAIN, fields, key)


def reason_of(frame: bytes, **kwargs: Any) -> RejectReason:
    kwargs.setdefault("now_ms", NOW + 10)
    with pytest.raises(RemoteProtocolError) as info:
        open_envelope(frame, **kwargs)
    return info.value.reason


@given(signing_keys, signing_keys, kinds, plain_bodies, now_ms, st.none() | msg_ids)
@settings(max_examples=200)
def test_round_trip(
    sender: SigningKey, recipient: SigningKey, kind: str, body: Any, now: int, reply: bytes | None
) -> None:
    env = Envelope.create(sender, recipient.agent_id, kind, body, now_ms=now, reply_to=reply)
    got = open_envelope(env.frame, now_ms=now, hosted=lambda a: a == recipient.agent_id)
    assert got == env
    assert got.sender == sender.agent_id
    assert got.recipient == recipient.agent_id
    assert got.body == body
    assert got.reply_to == reply
    assert len(env.frame) < 64 * 1024


@given(signing_keys, topics, plain_bodies)
def test_topic_round_trip(sender: SigningKey, topic: str, body: Any) -> None:
    env = Envelope.create(sender, topic, "pub", body, now_ms=NOW)
    got = open_envelope(env.frame, now_ms=NOW)
    assert got.is_topic
    assert got.recipient == topic


def test_encoding_is_deterministic() -> None:
    a = make(body={"b": 1, "a": [1, 2]}, msg_id=b"\x01" * 16)
    b = make(body={"a": [1, 2], "b": 1}, msg_id=b"\x01" * 16)
    assert a.frame == b.frame


def test_reply_links_request() -> None:
    req = make(trace=b"\x09" * 8)
    rep = req.reply(BOB, {"ok": True}, now_ms=NOW + 1)
    assert rep.reply_to == req.msg_id
    assert rep.recipient == ALICE.agent_id
    assert rep.trace == req.trace


def test_bad_signature() -> None:
    env = make()
    fields = fields_of(env)
    forged = resign(fields, key=BOB)  # signed by Bob, claims to be from Alice
    assert reason_of(forged) is RejectReason.BAD_SIGNATURE
    # flip one bit of the body bytes: still decodes, signature no longer matches
    frame = bytearray(env.frame)
    frame[-1] ^= 0x01
    assert reason_of(bytes(frame)) is RejectReason.BAD_SIGNATURE


def test_time_checks() -> None:
    env = make(ttl_ms=1000)
    assert reason_of(env.frame, now_ms=NOW + 1000) is RejectReason.EXPIRED
    assert reason_of(env.frame, now_ms=NOW - 31_000) is RejectReason.FROM_FUTURE
    open_envelope(env.frame, now_ms=NOW - 29_000)  # within the skew
    long_lived = make(ttl_ms=301_000)
    assert reason_of(long_lived.frame) is RejectReason.TTL_TOO_LONG
    policy = EnvelopePolicy(max_ttl_ms=400_000)
    open_envelope(long_lived.frame, now_ms=NOW, policy=policy)


def test_replay_and_recipient() -> None:
    env = make()
    window = ReplayWindow()
    open_envelope(env.frame, now_ms=NOW, replay=window)
    assert reason_of(env.frame, replay=window) is RejectReason.REPLAYED
    assert reason_of(env.frame, hosted=lambda a: a == ALICE.agent_id) is (
        RejectReason.WRONG_RECIPIENT
    )
    topic = make(to="news")
    assert reason_of(topic.frame, hosted=lambda a: True) is RejectReason.WRONG_RECIPIENT


def test_unknown_version() -> None:
    fields = fields_of(make())
    fields[1] = 2
    assert reason_of(resign(fields)) is RejectReason.UNKNOWN_VERSION
    fields[11] = "a field of version 2"  # later versions may add fields: still the version
    assert reason_of(resign(fields)) is RejectReason.UNKNOWN_VERSION


def test_too_large() -> None:
    with pytest.raises(LocalProtocolError):
        make(body=b"x" * 70_000)
    big = make(body=[b"x" * 10_000] * 4)
    assert reason_of(big.frame, policy=EnvelopePolicy(limits=DecodeLimits(max_size=1024))) is (
        RejectReason.TOO_LARGE
    )


@pytest.mark.parametrize(
    ("mutate", "detail"),
    [
        (lambda f: f.update({11: 1}), "unknown fields"),
        (lambda f: f.pop(7), "missing fields"),
        (lambda f: f.update({2: b"short"}), "from must be"),
        (lambda f: f.update({3: 12}), "to must be"),
        (lambda f: f.update({3: ""}), "topic"),
        (lambda f: f.update({4: b"x"}), "id must be"),
        (lambda f: f.update({5: -1}), "created"),
        (lambda f: f.update({6: f[5]}), "created < expires"),
        (lambda f: f.update({7: ""}), "kind"),
        (lambda f: f.update({9: b"short"}), "reply_to"),
        (lambda f: f.update({10: b"short"}), "trace"),
        (lambda f: f.update({1: True}), "version"),
    ],
)
def test_malformed_fields(mutate: Any, detail: str) -> None:
    fields = fields_of(make())
    mutate(fields)
    frame = resign(fields) if fields and min(fields) >= 1 else b""
    with pytest.raises(RemoteProtocolError, match=detail) as info:
        open_envelope(frame, now_ms=NOW)
    assert info.value.reason is RejectReason.MALFORMED


DEEP: list[Any] = [1]
for _ in range(20):
    DEEP = [DEEP]


def _raw_frame(fields: dict[int, Any], sig: bytes = b"\x00" * 64) -> bytes:
    return cbor2.dumps({0: sig, **fields})


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xff",
        b"\x01",
        cbor2.dumps([1, 2, 3]),
        cbor2.dumps({1: 1}),
        make().frame + b"\x00",  # trailing byte
        b"\xbf\x00\x58\x40" + b"\x00" * 64 + b"\xff",  # indefinite-length map
        b"\xa2\x00\x58\x40" + b"\x00" * 64 + b"\x00\x01",  # duplicate key 0
        cbor2.dumps({1: 1, 0: b"\x00" * 64}),  # signature not first
    ],
)
def test_structurally_bad_frames(frame: bytes) -> None:
    assert reason_of(frame) is RejectReason.MALFORMED


def test_keys_must_ascend() -> None:
    fields = fields_of(make())
    shuffled = {0: b"\x00" * 64, 2: fields[2], 1: fields[1]}
    shuffled.update({k: v for k, v in fields.items() if k > 2})
    assert reason_of(cbor2.dumps(shuffled)) is RejectReason.MALFORMED


@pytest.mark.parametrize(
    "body",
    [
        cbor2.CBORTag(1, 0),  # datetime
        cbor2.CBORTag(2, b"\x01"),  # bignum
        cbor2.CBORTag(55799, 1),  # self-describe
        cbor2.CBORTag(9999, 1),  # unknown tag
        cbor2.CBORSimpleValue(16),
        cbor2.undefined,
        {(1, 2): 3},  # array as a map key
        DEEP,  # too deep
        "x" * 20_000,  # string over max_str
    ],
)
def test_bodies_outside_plain_cbor_are_refused(body: Any) -> None:
    fields = fields_of(make())
    fields[8] = body
    unsigned = cbor2.dumps(fields, canonical=True)
    frame = bytes((unsigned[0] + 1,)) + b"\x00\x58\x40" + b"\x00" * 64 + unsigned[1:]
    assert reason_of(frame) is RejectReason.MALFORMED


def test_every_cbor_tag_is_refused_whatever_cbor2_knows_of_it() -> None:
    # loads_strict lists the tags cbor2 decodes itself; a cbor2 that learns another one
    # (which would then be decoded, not refused) makes this fail.
    refused = 0
    for number in range(65536):
        with contextlib.suppress(RemoteProtocolError):
            loads_strict(cbor2.dumps(cbor2.CBORTag(number, 0)))
            continue
        refused += 1
    assert refused == 65536
    for number in (2**16, 2**32 - 1, 2**32, 2**64 - 1):
        with pytest.raises(RemoteProtocolError, match="tag"):
            loads_strict(cbor2.dumps(cbor2.CBORTag(number, 0)))


def test_trailing_bytes_are_refused_even_when_they_are_cbor() -> None:
    frame = make().frame
    for extra in (b"\x00", b"\xf6", frame, b"\xdb" + b"\xff" * 8 + b"\xf6"):
        with pytest.raises(RemoteProtocolError, match=r"trailing|bad CBOR"):
            loads_strict(frame + extra)
    with pytest.raises(RemoteProtocolError, match="bad CBOR"):
        loads_strict(frame[:-1])  # cut short: it cannot eat the trailer into a valid item


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_arbitrary_bytes_only_raise_remote_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        open_envelope(data, now_ms=NOW)


@given(st.data())
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_frames_only_raise_remote_errors(data: st.DataObject) -> None:
    frame = bytearray(make(body={"list": [1, 2, 3], "text": "hello"}, reply_to=b"r" * 16).frame)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(0, len(frame) - 1)))
        if op == "flip" and frame:
            frame[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            frame.insert(pos, data.draw(st.integers(0, 255)))
        elif op == "delete" and frame:
            del frame[pos]
        else:
            del frame[pos:]
    try:
        env = open_envelope(bytes(frame), now_ms=NOW)
    except RemoteProtocolError:
        return
    assert env.sender == ALICE.agent_id  # only an unchanged frame can verify


def _peak_bytes(frame: bytes) -> int:
    tracemalloc.start()
    with contextlib.suppress(RemoteProtocolError):
        open_envelope(frame, now_ms=NOW)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    "frame",
    [
        b"\xa9\x00\x58\x40" + b"\x00" * 64 + b"\x08\x99\xff\xff" + b"\x00" * 65000,  # many ints
        b"\xa9\x00\x58\x40" + b"\x00" * 64 + b"\x08" + b"\x81" * 65000,  # deep nesting
        b"\xa9\x00\x58\x40" + b"\x00" * 64 + b"\x08\x5b" + b"\xff" * 8,  # 2^64-byte string
        b"\xa9\x00\x58\x40" + b"\x00" * 64 + b"\x08\x9b" + b"\x7f" * 8,  # 2^63-item array
        b"\xa9\x00\x58\x40" + b"\x00" * 64 + b"\x08\xbb" + b"\x7f" * 8,  # 2^63-entry map
    ],
)
def test_memory_stays_proportional_to_the_frame(frame: bytes) -> None:
    assert _peak_bytes(frame) < 64 * 64 * 1024


def test_create_rejects_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        make(kind="")
    with pytest.raises(LocalProtocolError):
        make(msg_id=b"short")
    with pytest.raises(LocalProtocolError):
        make(body={1.5j: 1})


def test_agent_id_recipient_type() -> None:
    env = make()
    assert isinstance(env.recipient, AgentId)
    assert not env.is_topic
