"""Framing of `/meshd/msg/1.0.0`, the message stream between two nodes (sans-IO, like h11).

A stream carries frames in one direction and their answers in the other: the dialer sends MSG
frames, the listener sends back ACK frames. Each frame is an unsigned LEB128 length (minimal
encoding) followed by that many bytes holding one CBOR array:

    MSG  [0, seq uint, mode uint, envelope bstr]     mode 0 at-most-once, 1 at-least-once
    ACK  [1, [[seq uint, outcome tstr, ? detail tstr], ...]]

`seq` numbers the sender's MSG frames on one stream; an ACK answers any number of them in any
order. `outcome` is `delivered`, `queued`, `not_here`, `gone` or `rejected:<reason>`. Frame
types 2 and 3 are reserved (PING/PONG). Senders encode deterministically; receivers decode
strictly (`protocol.cbor.loads_strict`) and refuse any frame over `max_frame_size` as soon as
its length prefix says so, before buffering it. The envelope inside a MSG is checked later by
`protocol.envelope.open_envelope`, so a frame may hold an envelope slightly over the envelope
limit (it is then refused alone, `too_large`, and the stream carries on).

Bytes in (`FrameDecoder.feed`), frames out (`FrameDecoder.next_frame`); frames in
(`encode_msg`, `encode_ack`, `encode_frames`), bytes out. No I/O, no clock.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, NamedTuple

from protocol.cbor import DEFAULT_LIMITS, DecodeLimits, loads_strict
from protocol.errors import LocalProtocolError, RejectReason, RemoteProtocolError

__all__ = [
    "MAX_ACK_ENTRIES",
    "MAX_DETAIL_LEN",
    "MAX_FRAME_SIZE",
    "MSG_PROTOCOL_ID",
    "Ack",
    "AckEntry",
    "Frame",
    "FrameDecoder",
    "Mode",
    "Msg",
    "encode_ack",
    "encode_frames",
    "encode_msg",
    "is_outcome",
]

MSG_PROTOCOL_ID = "/meshd/msg/1.0.0"
# Room for the frame's own header around a maximal envelope, and a little more so that an
# envelope just over its limit is refused by itself rather than by killing the stream.
MAX_FRAME_SIZE = DEFAULT_LIMITS.max_size + 1024
MAX_ACK_ENTRIES = 4096
MAX_OUTCOME_LEN = 64
MAX_DETAIL_LEN = 256
_MAX_SEQ = 2**64 - 1
_MAX_VARINT_LEN = 10  # enough for any max_frame_size we accept (< 2^63)

_T_MSG, _T_ACK = 0, 1
_BASE_OUTCOMES = frozenset({"delivered", "queued", "not_here", "gone"})
# Reasons a later version may add are accepted; anything else is malformed.
_REJECTED = re.compile(r"rejected:[a-z0-9_]{1,32}")


class Mode(enum.IntEnum):
    """Delivery guarantee asked for by the sender of a MSG."""

    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1


_MODES = (Mode.AT_MOST_ONCE, Mode.AT_LEAST_ONCE)


class Msg(NamedTuple):
    """A MSG frame: one signed envelope, numbered `seq` on its stream."""

    seq: int
    mode: Mode
    envelope: bytes


class AckEntry(NamedTuple):
    """The receiver's answer to one MSG: its `seq`, the outcome and an optional detail."""

    seq: int
    outcome: str
    detail: str = ""


# Builds an AckEntry from a tuple without NamedTuple's keyword-handling constructor.
_new_entry = partial(tuple.__new__, AckEntry)


class Ack(NamedTuple):
    """An ACK frame: answers to any number of MSG frames."""

    entries: tuple[AckEntry, ...]


Frame = Msg | Ack


def is_outcome(text: str) -> bool:
    """Whether `text` is an outcome an ACK may carry."""
    return text in _BASE_OUTCOMES or _REJECTED.fullmatch(text) is not None


# -- encoding ---------------------------------------------------------------------------


_PACK_16 = struct.Struct(">BH").pack
_PACK_32 = struct.Struct(">BI").pack
_PACK_64 = struct.Struct(">BQ").pack


def _head(major: int, n: int) -> bytes:
    """A CBOR head in its shortest form (RFC 8949 section 4.2.1)."""
    base = major << 5
    if n < 24:
        return bytes((base | n,))
    if n < 0x100:
        return bytes((base | 24, n))
    if n < 0x10000:
        return _PACK_16(base | 25, n)
    if n < 0x100000000:
        return _PACK_32(base | 26, n)
    return _PACK_64(base | 27, n)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _text(value: str) -> bytes:
    data = value.encode("utf-8")
    return _head(3, len(data)) + data


def encode_msg(seq: int, mode: Mode, envelope: bytes) -> bytes:
    """One length-prefixed MSG frame."""
    # Once per message sent: comparisons, not an enum lookup, and the envelope copied once.
    if not 0 <= seq <= _MAX_SEQ or (mode != 0 and mode != 1):
        raise LocalProtocolError("seq must be a uint64 and mode 0 or 1")
    head = b"\x84\x00" + _head(0, seq) + (b"\x01" if mode else b"\x00") + _head(2, len(envelope))
    size = len(head) + len(envelope)
    if size > MAX_FRAME_SIZE:
        raise LocalProtocolError(f"MSG frame of {size} bytes is over {MAX_FRAME_SIZE}")
    if size < 0x80:
        prefix = bytes((size,))
    elif size < 0x4000:  # most envelopes: a two-byte prefix, without the general loop
        prefix = bytes(((size & 0x7F) | 0x80, size >> 7))
    else:
        prefix = _varint(size)
    return prefix + head + envelope


def encode_ack(entries: Sequence[AckEntry]) -> bytes:
    """One length-prefixed ACK frame answering `entries` (1..MAX_ACK_ENTRIES of them)."""
    if not 0 < len(entries) <= MAX_ACK_ENTRIES:
        raise LocalProtocolError(f"an ACK holds 1..{MAX_ACK_ENTRIES} entries")
    parts = [b"\x82\x01", _head(4, len(entries))]
    known = _OUTCOME_TEXT  # every message sent is answered here: the common outcomes ready-made
    for seq, outcome, detail in entries:
        text = known.get(outcome)
        if text is None:
            if not is_outcome(outcome):
                raise LocalProtocolError(f"bad ACK entry ({seq}, {outcome!r})")
            text = _text(outcome)
        if not 0 <= seq <= _MAX_SEQ:
            raise LocalProtocolError(f"bad ACK entry ({seq}, {outcome!r})")
        if detail:
            parts += (b"\x83", _head(0, seq), text, _text(detail[:MAX_DETAIL_LEN]))
        else:
            parts += (b"\x82", _head(0, seq), text)
    body = b"".join(parts)
    if len(body) > MAX_FRAME_SIZE:
        raise LocalProtocolError("ACK frame too large: send fewer entries per frame")
    return _varint(len(body)) + body


# The encoded text of every outcome this version sends (others are encoded as they come).
_OUTCOME_TEXT = {
    outcome: _text(outcome)
    for outcome in (*_BASE_OUTCOMES, *(f"rejected:{reason.value}" for reason in RejectReason))
}


def encode_frames(frames: Iterable[Frame]) -> bytes:
    """The bytes of many frames, ready for one write."""
    out = []
    for frame in frames:
        if isinstance(frame, Msg):
            out.append(encode_msg(frame.seq, frame.mode, frame.envelope))
        else:
            out.append(encode_ack(frame.entries))
    return b"".join(out)


# -- decoding ---------------------------------------------------------------------------


def _uint(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _MAX_SEQ


# The smallest value each CBOR head length may carry in shortest form (RFC 8949 4.2.1).
_HEAD_MIN = {24: (1, 24), 25: (2, 0x100), 26: (4, 0x10000), 27: (8, 0x100000000)}


def _msg_fast(body: bytes) -> Msg | None:
    """The MSG frame `body` is, if it is exactly `encode_msg`'s form; else None.

    Whatever this returns, `_parse(loads_strict(body))` returns too (tests/protocol check
    it on arbitrary and mutated bodies); everything else is left to that general path.
    """
    return _msg_fast_at(body, 0, len(body))


def _msg_fast_at(buf: bytes | bytearray, start: int, stop: int) -> Msg | None:
    """`_msg_fast` of the frame body at `buf[start:stop]`, read in place (no copy of it)."""
    # Every read is bounded by `stop`: the buffer may hold the next frames after it.
    if stop - start < 6 or buf[start] != 0x84 or buf[start + 1] != _T_MSG:
        return None  # [0, seq, mode, envelope], the envelope at least one byte
    p, b = start + 3, buf[start + 2]
    if b < 24:
        seq = b
    else:
        size, least = _HEAD_MIN.get(b, (0, 0))
        if not size or p + size > stop:
            return None
        seq = int.from_bytes(buf[p : p + size], "big")
        p += size
        if seq < least:
            return None
    if p + 2 > stop:
        return None
    mode = buf[p]
    b = buf[p + 1] - 0x40  # a byte string's head: major type 2
    p += 2
    if mode > 1 or not 0 <= b <= 26:
        return None
    if b < 24:
        n = b
    else:
        size, least = _HEAD_MIN[b]
        if p + size > stop:
            return None
        n = int.from_bytes(buf[p : p + size], "big")
        p += size
        if n < least:
            return None
    if n == 0 or p + n != stop:
        return None
    return Msg(seq, _MODES[mode], bytes(buf[p:stop]))


def _parse(obj: Any, max_ack_entries: int) -> Frame:
    """Check a decoded CBOR item against the frame grammar."""
    if type(obj) is not list or not obj:
        raise RemoteProtocolError(RejectReason.MALFORMED, "a frame is a non-empty CBOR array")
    kind = obj[0]
    if kind == _T_MSG and type(kind) is int:
        if len(obj) != 4:
            raise RemoteProtocolError(RejectReason.MALFORMED, "MSG has 4 items")
        _, seq, mode, envelope = obj
        if not _uint(seq):
            raise RemoteProtocolError(RejectReason.MALFORMED, "MSG seq must be a uint64")
        if type(mode) is not int or not 0 <= mode < len(_MODES):
            raise RemoteProtocolError(RejectReason.MALFORMED, "MSG mode must be 0 or 1")
        if type(envelope) is not bytes or not envelope:
            raise RemoteProtocolError(RejectReason.MALFORMED, "MSG envelope must be bytes")
        return Msg(seq, _MODES[mode], envelope)
    if kind == _T_ACK and type(kind) is int:
        if len(obj) != 2 or type(obj[1]) is not list:
            raise RemoteProtocolError(RejectReason.MALFORMED, "ACK is [1, [entries]]")
        raw_entries = obj[1]
        if not 0 < len(raw_entries) <= max_ack_entries:
            raise RemoteProtocolError(
                RejectReason.MALFORMED, f"ACK holds 1..{max_ack_entries} entries"
            )
        entries = []
        common = _BASE_OUTCOMES
        for entry in raw_entries:
            # The usual answer, [seq, "delivered"], checked in one line (the same rules).
            if type(entry) is list and len(entry) == 2:
                seq, outcome = entry
                if (
                    type(seq) is int
                    and 0 <= seq <= _MAX_SEQ
                    and type(outcome) is str
                    and outcome in common
                ):
                    entries.append(_new_entry((seq, outcome, "")))
                    continue
            if type(entry) is not list or not 2 <= len(entry) <= 3:
                raise RemoteProtocolError(RejectReason.MALFORMED, "ACK entry is [seq, outcome]")
            seq, outcome = entry[0], entry[1]
            detail = entry[2] if len(entry) == 3 else ""
            if not _uint(seq):
                raise RemoteProtocolError(RejectReason.MALFORMED, "ACK seq must be a uint64")
            if type(outcome) is not str or len(outcome) > MAX_OUTCOME_LEN:
                raise RemoteProtocolError(RejectReason.MALFORMED, "ACK outcome must be text")
            if not is_outcome(outcome):
                raise RemoteProtocolError(RejectReason.MALFORMED, f"unknown outcome {outcome!r}")
            if type(detail) is not str or len(detail) > MAX_DETAIL_LEN:
                raise RemoteProtocolError(RejectReason.MALFORMED, "ACK detail must be short text")
            entries.append(AckEntry(seq, outcome, detail))
        return Ack(tuple(entries))
    raise RemoteProtocolError(RejectReason.MALFORMED, f"unknown frame type {kind!r:.20}")


class FrameDecoder:
    """Turns the bytes of one direction of a message stream into frames.

    Buffering is bounded: once every complete frame has been taken out, at most one
    incomplete frame (under `max_frame_size`) plus its length prefix stays buffered. After a
    `RemoteProtocolError` the stream is unusable and every later call raises it again.
    """

    __slots__ = ("_buf", "_error", "_limits", "_max_ack_entries", "_max_frame", "_pos")

    def __init__(
        self, max_frame_size: int = MAX_FRAME_SIZE, max_ack_entries: int = MAX_ACK_ENTRIES
    ) -> None:
        if not 16 <= max_frame_size <= 16 * 1024 * 1024 or max_ack_entries < 1:
            raise LocalProtocolError("max_frame_size must be 16 B..16 MiB, max_ack_entries >= 1")
        self._max_frame = max_frame_size
        self._max_ack_entries = max_ack_entries
        # The frame array nests entries one level down; envelopes stay opaque bytes here.
        self._limits = DecodeLimits(max_size=max_frame_size, max_depth=4)
        self._buf = bytearray()
        self._pos = 0
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """How many received bytes are not yet part of a returned frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Add bytes received from the peer."""
        if self._error is not None:
            raise self._error
        if self._pos:
            # Dropping consumed bytes here (not per frame) keeps next_frame O(frame).
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes are fed."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except RemoteProtocolError as exc:
            self._error = exc
            self._buf = bytearray()
            self._pos = 0
            raise

    def frames(self) -> list[Frame]:
        """Every complete frame buffered now."""
        out = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out

    def _next(self) -> Frame | None:
        buf, start, end = self._buf, self._pos, len(self._buf)
        if start >= end:
            return None
        length, shift, i = 0, 0, start
        while True:
            if i >= end:
                return None  # the length prefix is incomplete
            byte = buf[i]
            i += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            # Every further byte multiplies the length by 128: refuse as soon as it must
            # exceed the limit, so a hostile prefix is never waited for or buffered.
            if length >= self._max_frame or (1 << shift) > self._max_frame:
                raise RemoteProtocolError(RejectReason.TOO_LARGE, "frame length over the limit")
            if i - start >= _MAX_VARINT_LEN:  # pragma: no cover - the check above fires first
                raise RemoteProtocolError(RejectReason.MALFORMED, "length prefix too long")
        if byte == 0 and i - start > 1:
            raise RemoteProtocolError(RejectReason.MALFORMED, "length prefix not minimal")
        if length > self._max_frame:
            raise RemoteProtocolError(
                RejectReason.TOO_LARGE, f"frame of {length} bytes > limit {self._max_frame}"
            )
        if length == 0:
            raise RemoteProtocolError(RejectReason.MALFORMED, "empty frame")
        if end - i < length:
            return None
        self._pos = stop = i + length
        # Nearly every frame is a MSG in the encoder's shortest form: read it in place. Any
        # other frame takes the general decoder, which also gives the reason for a bad one.
        msg = _msg_fast_at(buf, i, stop)
        if msg is not None:
            return msg
        return _parse(loads_strict(bytes(buf[i:stop]), self._limits), self._max_ack_entries)
