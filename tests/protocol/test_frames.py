"""Message stream framing: round trips, strict decoding, bounded buffering, hostile bytes."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from protocol.frames import (
    MAX_FRAME_SIZE,
    Ack,
    AckEntry,
    Frame,
    FrameDecoder,
    Mode,
    Msg,
    encode_ack,
    encode_frames,
    encode_msg,
    is_outcome,
)

seqs = st.integers(min_value=0, max_value=2**64 - 1)
outcomes = st.sampled_from(
    ["delivered", "queued", "not_here", "gone", "rejected:bad_signature", "rejected:x_1"]
)
msgs = st.builds(Msg, seqs, st.sampled_from(list(Mode)), st.binary(min_size=1, max_size=300))
entries = st.builds(AckEntry, seqs, outcomes, st.text(max_size=40))
acks = st.lists(entries, min_size=1, max_size=20).map(lambda e: Ack(tuple(e)))
frames = st.lists(msgs | acks, max_size=12)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split `data` at the given positions (taken modulo its length, sorted)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return pieces


def decode_all(pieces: list[bytes], decoder: FrameDecoder | None = None) -> list[Frame]:
    decoder = decoder or FrameDecoder()
    out: list[Frame] = []
    for piece in pieces:
        decoder.feed(piece)
        out.extend(decoder.frames())
    return out


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def framed(obj: object) -> bytes:
    body = cbor2.dumps(obj)
    return varint(len(body)) + body


@settings(max_examples=200)
@given(frames, st.lists(st.integers(min_value=0), max_size=30))
def test_round_trip_in_any_chunking(sent: list[Frame], cuts: list[int]) -> None:
    data = encode_frames(sent)
    assert decode_all(chunked(data, cuts)) == sent


@given(msgs)
def test_msg_encoding_is_canonical_cbor(msg: Msg) -> None:
    frame = encode_msg(*msg)
    body = cbor2.dumps([0, msg.seq, int(msg.mode), msg.envelope], canonical=True)
    assert frame == varint(len(body)) + body


@given(acks)
def test_ack_encoding_is_canonical_cbor(ack: Ack) -> None:
    items = [[e.seq, e.outcome, e.detail] if e.detail else [e.seq, e.outcome] for e in ack.entries]
    body = cbor2.dumps([1, items], canonical=True)
    assert encode_ack(ack.entries) == varint(len(body)) + body


@settings(max_examples=500)
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=20))
def test_arbitrary_bytes_yield_frames_or_remote_errors(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder()
    reason = None
    try:
        for piece in chunked(data, cuts):
            decoder.feed(piece)
            for frame in decoder.frames():
                assert isinstance(frame, Msg | Ack)
            # Bounded: only an incomplete frame (and its prefix) stays behind.
            assert decoder.buffered < MAX_FRAME_SIZE + 10
    except RemoteProtocolError as exc:
        reason = exc.reason
    assert reason is None or isinstance(reason, RejectReason)


@settings(max_examples=300)
@given(frames, st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=5))
def test_corrupted_streams_yield_frames_or_remote_errors(
    sent: list[Frame], flips: list[tuple[int, int]]
) -> None:
    data = bytearray(encode_frames(sent))
    for pos, value in flips:
        if data:
            data[pos % len(data)] = value
    reason = None
    try:
        for frame in decode_all([bytes(data)]):
            assert isinstance(frame, Msg | Ack)
    except RemoteProtocolError as exc:
        reason = exc.reason
    assert reason is None or isinstance(reason, RejectReason)


@given(st.integers(min_value=MAX_FRAME_SIZE + 1, max_value=2**63))
def test_oversized_length_prefix_is_refused_before_its_body(length: int) -> None:
    decoder = FrameDecoder()
    decoder.feed(varint(length))  # no body at all: the prefix alone must be enough
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.reason is RejectReason.TOO_LARGE
    assert decoder.buffered == 0


def test_hostile_prefix_is_refused_byte_by_byte() -> None:
    decoder = FrameDecoder()
    for _ in range(2):
        decoder.feed(b"\xff")
        assert decoder.next_frame() is None
    decoder.feed(b"\xff")  # a third continuation byte: the length is over 2^21
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.reason is RejectReason.TOO_LARGE


def test_errors_are_sticky() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x00")
    with pytest.raises(RemoteProtocolError, match="empty frame"):
        decoder.next_frame()
    with pytest.raises(RemoteProtocolError, match="empty frame"):
        decoder.feed(encode_msg(1, Mode.AT_MOST_ONCE, b"x"))
    with pytest.raises(RemoteProtocolError, match="empty frame"):
        decoder.next_frame()


@pytest.mark.parametrize(
    ("data", "reason", "match"),
    [
        (b"\x80\x00", RejectReason.MALFORMED, "not minimal"),
        (framed([0, 1, 0]), RejectReason.MALFORMED, "MSG has 4 items"),
        (framed([0, -1, 0, b"e"]), RejectReason.MALFORMED, "seq"),
        (framed([0, 1, 2, b"e"]), RejectReason.MALFORMED, "mode"),
        (framed([0, 1, True, b"e"]), RejectReason.MALFORMED, "mode"),
        (framed([0, 1, 0, "e"]), RejectReason.MALFORMED, "envelope"),
        (framed([0, 1, 0, b""]), RejectReason.MALFORMED, "envelope"),
        (framed([1, []]), RejectReason.MALFORMED, "entries"),
        (framed([1, [[1, "sure"]]]), RejectReason.MALFORMED, "unknown outcome"),
        (framed([1, [[1, "rejected:"]]]), RejectReason.MALFORMED, "unknown outcome"),
        (framed([1, [[1, "gone", 5]]]), RejectReason.MALFORMED, "detail"),
        (framed([1, [[1]]]), RejectReason.MALFORMED, "entry"),
        (framed([2, 7]), RejectReason.MALFORMED, "unknown frame type"),
        (framed([False, 1, 0, b"e"]), RejectReason.MALFORMED, "unknown frame type"),
        (framed({0: 1}), RejectReason.MALFORMED, "array"),
        (framed([]), RejectReason.MALFORMED, "array"),
        (varint(3) + b"\x81\x00\x00", RejectReason.MALFORMED, "trailing"),
        (varint(2) + b"\x9f\xff", RejectReason.MALFORMED, "bad CBOR"),
        (framed([0, 1, 0, cbor2.CBORTag(2, b"\x01")]), RejectReason.MALFORMED, "tag"),
    ],
)
def test_malformed_frames(data: bytes, reason: RejectReason, match: str) -> None:
    decoder = FrameDecoder()
    decoder.feed(data)
    with pytest.raises(RemoteProtocolError, match=match) as info:
        decoder.next_frame()
    assert info.value.reason is reason


def test_ack_entry_limit_is_a_constructor_argument() -> None:
    data = encode_ack([AckEntry(i, "delivered") for i in range(5)])
    small = FrameDecoder(max_ack_entries=4)
    small.feed(data)
    with pytest.raises(RemoteProtocolError, match="entries"):
        small.next_frame()
    big = FrameDecoder(max_ack_entries=5)
    big.feed(data)
    frame = big.next_frame()
    assert isinstance(frame, Ack)
    assert len(frame.entries) == 5


def test_envelope_just_over_its_limit_still_fits_a_frame() -> None:
    # The envelope check refuses it alone (too_large); the stream survives.
    envelope = b"e" * (64 * 1024 + 100)
    decoder = FrameDecoder()
    decoder.feed(encode_msg(9, Mode.AT_LEAST_ONCE, envelope))
    assert decoder.next_frame() == Msg(9, Mode.AT_LEAST_ONCE, envelope)


def test_long_details_are_truncated_on_encode() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_ack([AckEntry(1, "rejected:malformed", "x" * 1000)]))
    frame = decoder.next_frame()
    assert isinstance(frame, Ack)
    assert frame.entries[0].detail == "x" * 256


def test_local_misuse_raises_local_errors() -> None:
    with pytest.raises(LocalProtocolError):
        encode_msg(-1, Mode.AT_MOST_ONCE, b"e")
    with pytest.raises(LocalProtocolError):
        encode_msg(1, Mode.AT_MOST_ONCE, b"e" * MAX_FRAME_SIZE)
    with pytest.raises(LocalProtocolError):
        encode_ack([])
    with pytest.raises(LocalProtocolError):
        encode_ack([AckEntry(1, "timeout")])  # a local outcome never travels
    with pytest.raises(LocalProtocolError):
        FrameDecoder(max_frame_size=1)


def test_outcomes() -> None:
    assert is_outcome("delivered")
    assert is_outcome("rejected:replayed")
    assert not is_outcome("timeout")
    assert not is_outcome("rejected:Bad")


def _general(body: bytes) -> Frame | RemoteProtocolError:
    from protocol.cbor import DecodeLimits, loads_strict
    from protocol.frames import MAX_ACK_ENTRIES, _parse

    try:
        return _parse(loads_strict(body, DecodeLimits(max_depth=4)), MAX_ACK_ENTRIES)
    except RemoteProtocolError as exc:
        return exc


def _body(frame: bytes) -> bytes:
    """A frame without its length prefix."""
    length, shift, i = 0, 0, 0
    while True:
        byte = frame[i]
        i += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return frame[i : i + length]


@settings(max_examples=300)
@given(msgs)
def test_the_msg_fast_path_reads_every_encoded_msg(msg: Msg) -> None:
    from protocol.frames import _msg_fast

    body = _body(encode_msg(msg.seq, msg.mode, msg.envelope))
    assert _msg_fast(body) == msg == _general(body)


@settings(max_examples=500)
@given(st.data())
def test_the_msg_fast_path_never_accepts_what_the_general_decoder_would_not(
    data: st.DataObject,
) -> None:
    # Mutated MSG bodies (and arbitrary ones): the fast path answers None or exactly what
    # the general decoder answers, so it can never let through a frame that path refuses.
    from protocol.frames import _msg_fast, _msg_fast_at

    msg = data.draw(msgs)
    body = bytearray(_body(encode_msg(msg.seq, msg.mode, msg.envelope)))
    for _ in range(data.draw(st.integers(0, 3))):
        where = data.draw(st.integers(0, len(body)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and where < len(body):
            body[where] ^= data.draw(st.integers(1, 255))
        elif action == "insert":
            body.insert(where, data.draw(st.integers(0, 255)))
        elif action == "delete" and where < len(body):
            del body[where]
        elif action == "truncate":
            del body[where:]
    for candidate in (bytes(body), data.draw(st.binary(max_size=40))):
        fast = _msg_fast(candidate)
        if fast is not None:
            assert fast == _general(candidate)
        # Read in place from a buffer that holds more after the frame (the next frames):
        # the same answer, never a byte read from beyond the frame.
        before, after = data.draw(st.binary(max_size=8)), data.draw(st.binary(max_size=40))
        buffer = bytearray(before + candidate + after)
        assert _msg_fast_at(buffer, len(before), len(before) + len(candidate)) == fast


def test_the_msg_fast_path_leaves_longer_heads_to_the_general_decoder() -> None:
    from protocol.frames import _msg_fast

    # seq 5 in a one-byte-argument head (0x18 0x05): not the shortest form
    body = b"\x84\x00\x18\x05\x00\x41x"
    assert _msg_fast(body) is None
    assert _msg_fast(b"\x84\x00\x05\x00\x41x") == Msg(5, Mode.AT_MOST_ONCE, b"x")
    assert _msg_fast(b"\x84\x00\x05\x02\x41x") is None  # mode 2
    assert _msg_fast(b"\x84\x00\x05\x00\x40") is None  # empty envelope
    assert _msg_fast(b"\x84\x00\x05\x00\x42x") is None  # envelope cut short


_SLOT_VALUES = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.sampled_from(["delivered", "queued", "not_here", "gone", "rejected:replayed", "x", ""]),
    st.text(max_size=12),
    st.binary(max_size=12),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _entry_verdict(seq: object, outcome: object) -> AckEntry | None:
    """The grammar's verdict on one [seq, outcome] ACK entry, written out plainly."""
    if type(seq) is not int or not 0 <= seq < 2**64:
        return None
    if type(outcome) is not str or not is_outcome(outcome):
        return None
    return AckEntry(seq, outcome, "")


@settings(max_examples=400)
@given(st.lists(st.tuples(_SLOT_VALUES, _SLOT_VALUES), min_size=1, max_size=4))
def test_two_item_ack_entries_are_checked_by_the_grammar_whatever_their_values(
    pairs: list[tuple[object, object]],
) -> None:
    # The common [seq, outcome] entry has a shortcut in the decoder; whatever the values,
    # an entry is taken exactly when the grammar allows it, and nothing but a
    # RemoteProtocolError comes out (an unhashable outcome must not reach a set lookup).
    body = cbor2.dumps([1, [list(pair) for pair in pairs]])
    verdicts = [_entry_verdict(seq, outcome) for seq, outcome in pairs]
    got = _general(body)
    if all(verdict is not None for verdict in verdicts):
        assert got == Ack(tuple(v for v in verdicts if v is not None))
        assert all(type(entry) is AckEntry for entry in got.entries)
    else:
        assert isinstance(got, RemoteProtocolError)
        assert got.reason is RejectReason.MALFORMED


@pytest.mark.parametrize("size", [1, 100, 123, 124, 200, 16_370, 16_371, 16_383, 20_000, 65_000])
def test_msg_length_prefixes_are_minimal_at_every_width(size: int) -> None:
    # The encoder writes one- and two-byte prefixes without the general loop; the decoder
    # refuses any prefix that is not minimal, so a wrong width fails here.
    msg = Msg(2**40, Mode.AT_LEAST_ONCE, bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    data = encode_msg(msg.seq, msg.mode, msg.envelope)
    decoder = FrameDecoder()
    decoder.feed(data)
    assert decoder.next_frame() == msg
    assert decoder.buffered == 0
