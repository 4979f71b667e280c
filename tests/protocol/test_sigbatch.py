"""Signatures checked many at a time give exactly the verdicts of one-by-one checks."""

from __future__ import annotations

from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import sigbatch
from protocol.cbor import encode_signed_map
from protocol.envelope import ENVELOPE_DOMAIN, Envelope, open_envelope, open_envelopes
from protocol.errors import RemoteProtocolError
from protocol.ids import SigningKey

NOW = 1_800_000_000_000
KEYS = [SigningKey.from_seed(bytes([i]) * 32) for i in range(1, 5)]


def test_the_batch_loop_was_compiled_at_install() -> None:
    # Without it every check still works, one by one, but the worker threads wait for the
    # GIL after each message: `make install` builds it (setup.py, cffi, the C compiler).
    assert sigbatch.COMPILED, "protocol._sigbatch is missing: reinstall with a C compiler"


_item = st.tuples(
    st.integers(0, len(KEYS) - 1),
    st.binary(max_size=300),
    st.sampled_from(["good", "signature", "message", "key", "short_signature", "short_key"]),
)


@given(st.lists(_item, max_size=80))
@settings(max_examples=150)
def test_batches_agree_with_one_by_one(spec: list[tuple[int, bytes, str]]) -> None:
    items: list[tuple[bytes, bytes, bytes]] = []
    expected = []
    for index, message, damage in spec:
        key = KEYS[index]
        signature = key.sign(message)
        public = key.agent_id.raw
        if damage == "signature":
            signature = bytes([signature[0] ^ 1]) + signature[1:]
        elif damage == "message":
            message += b"!"
        elif damage == "key":
            public = KEYS[(index + 1) % len(KEYS)].agent_id.raw
        elif damage == "short_signature":
            signature = signature[:63]
        elif damage == "short_key":
            public = public[:31]
        items.append((signature, message, public))
        expected.append(damage == "good")
    assert sigbatch.open_many(items) == expected
    assert sigbatch.open_many_pynacl(items) == expected


def _verdict(result: Envelope | RemoteProtocolError) -> str:
    return result.reason.value if isinstance(result, RemoteProtocolError) else "valid"


def _one_by_one(frame: bytes, **kwargs: Any) -> str:
    try:
        open_envelope(frame, **kwargs)
    except RemoteProtocolError as exc:
        return exc.reason.value
    return "valid"


def test_open_envelopes_gives_open_envelopes_verdicts_in_order() -> None:
    alice, bob = KEYS[0], KEYS[1]
    good = Envelope.create(alice, bob.agent_id, "msg", {"n": 1}, now_ms=NOW)
    fields = cbor2.loads(good.frame)
    del fields[0]
    forged = encode_signed_map(ENVELOPE_DOMAIN, fields, bob)  # Bob's signature, Alice's id
    tampered = bytearray(good.frame)
    tampered[-1] ^= 1
    expired = Envelope.create(alice, bob.agent_id, "msg", 1, now_ms=NOW - 10_000, ttl_ms=1_000)
    elsewhere = Envelope.create(alice, alice.agent_id, "msg", 1, now_ms=NOW)
    frames = [
        good.frame, forged, bytes(tampered), b"\xa0", expired.frame, elsewhere.frame,
        Envelope.create(bob, bob.agent_id, "msg", [1, 2], now_ms=NOW).frame,
    ]  # fmt: skip
    kwargs: dict[str, Any] = {"now_ms": NOW, "hosted": lambda agent: agent == bob.agent_id}
    verdicts = [_verdict(r) for r in open_envelopes(frames, **kwargs)]
    assert verdicts == [_one_by_one(frame, **kwargs) for frame in frames]
    assert verdicts == [
        "valid", "bad_signature", "bad_signature", "malformed", "expired",
        "wrong_recipient", "valid",
    ]  # fmt: skip
    opened = open_envelopes([good.frame], now_ms=NOW)
    assert isinstance(opened[0], Envelope)
    assert opened[0].msg_id == good.msg_id
    assert open_envelopes([], now_ms=NOW) == []
