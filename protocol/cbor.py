"""Strict, bounded CBOR for untrusted input, and the one signing layout all our structures share.

Every signed structure is a CBOR map with small unsigned-integer keys whose first entry is
key 0 holding the 64-byte Ed25519 signature. The signed bytes are a per-structure domain
prefix followed by the map's encoding with that first entry removed (the header counting one
entry fewer). Senders encode deterministically (RFC 8949 section 4.2.1), so the signature
covers exactly the bytes on the wire and a receiver never re-encodes anything to verify.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2

from protocol.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from protocol.ids import SIGNATURE_LEN, SigningKey

__all__ = [
    "DecodeLimits",
    "check_plain",
    "decode_signed_map",
    "dumps_canonical",
    "encode_signed_map",
    "loads_strict",
]

_SIG_ENTRY = b"\x00\x58\x40"  # key 0, byte string of length 64
_MAX_SMALL_MAP = 23  # maps with more entries need a longer header; ours never do
_INT_ONLY = frozenset({int})
# The header of a small map with one entry fewer, by the original header byte.
_SHORTER_HEADER = {h: bytes((h - 1,)) for h in range(0xA1, 0xA0 + _MAX_SMALL_MAP + 1)}


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds applied to every untrusted CBOR input."""

    max_size: int = 64 * 1024
    max_depth: int = 16
    max_str: int = 16 * 1024
    max_items: int = 4096

    def __post_init__(self) -> None:
        if not (0 < self.max_size <= 16 * 1024 * 1024):
            raise LocalProtocolError("max_size must be in 1..16 MiB")
        if not (2 <= self.max_depth <= 64):
            raise LocalProtocolError("max_depth must be in 2..64")
        if self.max_str <= 0 or self.max_items <= 0:
            raise LocalProtocolError("max_str and max_items must be positive")


DEFAULT_LIMITS = DecodeLimits()


# How loads_strict finds trailing bytes without a stream position (cbor2.loads gives none):
# it decodes `[item, trailer]`, the trailer being a tag no input can know, drawn at random
# per process, that decodes to _END. Only input that is exactly one item leaves the trailer
# whole in second place; trailing bytes, or an item cut short, take its place or eat into it.
_TRAILER_TAG = int.from_bytes(os.urandom(8), "big") | (1 << 63)
_TRAILER = b"\xdb" + _TRAILER_TAG.to_bytes(8, "big") + b"\xf6"  # tag(64-bit) null
_END = object()


def _end(_decoder: Any, _value: Any = None) -> Any:
    return _END


def _refuse_tag(_decoder: Any, tag: Any = None) -> Any:
    number = f" {tag.tag}" if isinstance(tag, cbor2.CBORTag) else ""
    raise ValueError(f"CBOR tag{number} is not allowed")


# Our formats define no tags, so every tag is malformed input. cbor2 sends unknown tags to
# `tag_hook` and decodes the ones it knows (bignums, self-describe, shared references,
# dates...) itself unless `semantic_decoders` overrides them: these are the ones it knows
# (tests/protocol checks every 16-bit tag is refused), plus loads_strict's trailer. A plain
# dict: cbor2 takes it faster than any other mapping.
CBOR2_KNOWN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258,
                    260, 261, 1004, 43000, 55799)  # fmt: skip
_SEMANTIC: dict[int, Callable[..., Any]] = dict.fromkeys(CBOR2_KNOWN_TAGS, _refuse_tag)
_SEMANTIC[_TRAILER_TAG] = _end


def loads_strict(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> Any:
    """Decode exactly one definite-length CBOR item of at most `limits.max_size` bytes."""
    if type(data) is not bytes and not isinstance(data, bytearray | memoryview):
        raise RemoteProtocolError(RejectReason.MALFORMED, "input is not bytes")
    size = len(data)
    if size > limits.max_size:
        raise RemoteProtocolError(RejectReason.TOO_LARGE, f"{size} bytes > limit {limits.max_size}")
    if not size:
        raise RemoteProtocolError(RejectReason.MALFORMED, "empty input")
    try:
        both = cbor2.loads(
            b"\x82" + data + _TRAILER,
            semantic_decoders=_SEMANTIC,
            tag_hook=_refuse_tag,
            max_depth=limits.max_depth + 1,  # the wrapping array is one level more
            allow_indefinite=False,
            allow_duplicate_keys=False,
        )
    except RecursionError as exc:
        raise RemoteProtocolError(RejectReason.MALFORMED, "nested too deeply") from exc
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise RemoteProtocolError(RejectReason.MALFORMED, f"bad CBOR: {exc}"[:200]) from exc
    if both[1] is not _END:
        raise RemoteProtocolError(RejectReason.MALFORMED, "trailing bytes after the CBOR item")
    return both[0]


_SCALARS = frozenset({int, float, bool, type(None)})
_STRINGS = frozenset({str, bytes})


_LEAVES = _SCALARS | _STRINGS
_KEY_TYPES = frozenset({int, str})


def check_plain(obj: Any, limits: DecodeLimits = DEFAULT_LIMITS, size: int | None = None) -> None:
    """Refuse anything but plain CBOR data (no tags, no simple values, no odd keys), bounded.

    `size` is the length of the encoding `obj` was decoded from, when known.
    """
    if size is not None and size <= limits.max_str and size <= limits.max_items:
        # No string and no container decoded from `size` bytes can exceed these limits, and
        # the decoder already bounded the depth: only the types are left to check.
        _check_plain_types(obj)
        return
    max_str, max_items, max_depth = limits.max_str, limits.max_items, limits.max_depth
    # An explicit stack, scalars checked inline and containers only pushed: this runs on every
    # received message, whose bodies are mostly one flat map.
    stack: list[tuple[Any, int]] = []
    item, depth = obj, 0
    while True:
        kind = type(item)
        if kind is dict:
            if depth >= max_depth:
                raise RemoteProtocolError(RejectReason.MALFORMED, "nested too deeply")
            if len(item) > max_items:
                raise RemoteProtocolError(RejectReason.MALFORMED, "map too long")
            for key, value in item.items():
                key_kind = type(key)
                if key_kind is str:
                    if len(key) > max_str:
                        raise RemoteProtocolError(RejectReason.MALFORMED, "string too long")
                elif key_kind is not int:
                    raise RemoteProtocolError(
                        RejectReason.MALFORMED, "map keys must be text or int"
                    )
                value_kind = type(value)
                if value_kind in _STRINGS:
                    if len(value) > max_str:
                        raise RemoteProtocolError(RejectReason.MALFORMED, "string too long")
                elif value_kind not in _SCALARS:
                    stack.append((value, depth + 1))
        elif kind is list:
            if depth >= max_depth:
                raise RemoteProtocolError(RejectReason.MALFORMED, "nested too deeply")
            if len(item) > max_items:
                raise RemoteProtocolError(RejectReason.MALFORMED, "array too long")
            for value in item:
                value_kind = type(value)
                if value_kind in _STRINGS:
                    if len(value) > max_str:
                        raise RemoteProtocolError(RejectReason.MALFORMED, "string too long")
                elif value_kind not in _SCALARS:
                    stack.append((value, depth + 1))
        elif kind in _STRINGS:
            if len(item) > max_str:
                raise RemoteProtocolError(RejectReason.MALFORMED, "string too long")
        elif kind not in _SCALARS:
            raise RemoteProtocolError(RejectReason.MALFORMED, f"CBOR item of type {kind.__name__}")
        if not stack:
            return
        item, depth = stack.pop()


def _check_plain_types(obj: Any) -> None:
    # Whole containers are type-checked by C-level set operations; only nested containers
    # are visited one by one. Message bodies are mostly one flat map of text and numbers.
    stack = [obj]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            if not _KEY_TYPES.issuperset(map(type, item)):
                raise RemoteProtocolError(RejectReason.MALFORMED, "map keys must be text or int")
            values: Any = item.values()
        elif kind is list:
            values = item
        elif kind in _LEAVES:
            continue
        else:
            raise RemoteProtocolError(RejectReason.MALFORMED, f"CBOR item of type {kind.__name__}")
        if not _LEAVES.issuperset(map(type, values)):
            stack.extend(value for value in values if type(value) not in _LEAVES)


def dumps_canonical(obj: Any) -> bytes:
    """Encode deterministically (sorted keys, shortest forms, definite lengths)."""
    try:
        return cbor2.dumps(obj, canonical=True)
    except (cbor2.CBORError, ValueError, TypeError) as exc:
        raise LocalProtocolError(f"cannot encode as CBOR: {exc}") from exc


def encode_signed_map(domain: bytes, fields: dict[int, Any], key: SigningKey) -> bytes:
    """Encode `fields` (keys >= 1) as a signed map: signature under key 0, signed by `key`."""
    if not fields or len(fields) >= _MAX_SMALL_MAP or min(fields) < 1:
        raise LocalProtocolError("signed maps have 1..22 fields with integer keys >= 1")
    unsigned = dumps_canonical(fields)
    signature = key.sign(domain + unsigned)
    return bytes((unsigned[0] + 1,)) + _SIG_ENTRY + signature + unsigned[1:]


def decode_signed_map(
    data: bytes,
    domain: bytes,
    limits: DecodeLimits = DEFAULT_LIMITS,
    layouts: frozenset[tuple[int, ...]] | None = None,
) -> tuple[dict[int, Any], bytes, bytes]:
    """Decode a signed map; return (fields without key 0, signed bytes, signature).

    `layouts`, when given, lists every valid key sequence (0 first, ascending): a map with any
    other keys is refused here, so the caller need not check for missing or unknown fields.
    """
    obj = loads_strict(data, limits)
    if type(data) is not bytes:
        data = bytes(data)
    if type(obj) is not dict:
        raise RemoteProtocolError(RejectReason.MALFORMED, "expected a CBOR map")
    header = data[0]
    # Only the one-byte map header (up to 23 entries) is legal, so the signature entry
    # always starts at offset 1 and the slice below is exact.
    if not (0xA2 <= header <= 0xA0 + _MAX_SMALL_MAP) or data[1:4] != _SIG_ENTRY:
        raise RemoteProtocolError(
            RejectReason.MALFORMED, "signature must be the first entry of a small map"
        )
    keys = tuple(obj)
    if layouts is not None:
        # One lookup checks order, presence and absence at once; but bool and float keys
        # compare equal to ints, so the types are checked after it. Of a matching layout
        # (0, 1, ...) only key 1 can be a bool (True; False would duplicate key 0, which
        # the decoder refuses), and any float makes the sum a float.
        if keys not in layouts or type(keys[1]) is not int or type(sum(keys)) is not int:
            _refuse_keys(keys, layouts)
    elif not _INT_ONLY.issuperset(map(type, keys)) or keys != tuple(sorted(keys)):
        _refuse_keys(keys, None)
    signature = obj.pop(0)
    if type(signature) is not bytes or len(signature) != SIGNATURE_LEN:  # pragma: no cover
        raise RemoteProtocolError(RejectReason.MALFORMED, "signature must be 64 bytes")
    signed = domain + _SHORTER_HEADER[header] + data[4 + SIGNATURE_LEN :]
    return obj, signed, signature


def _refuse_keys(keys: tuple[Any, ...], layouts: frozenset[tuple[int, ...]] | None) -> None:
    """Raise the malformed error that says what is wrong with a signed map's keys."""
    # Types first: bool and float keys compare equal to ints, and mixed types do not sort.
    if not _INT_ONLY.issuperset(map(type, keys)):
        raise RemoteProtocolError(RejectReason.MALFORMED, "map keys must be unsigned integers")
    order = "" if keys == tuple(sorted(keys)) else "keys out of order"
    if layouts is None:
        raise RemoteProtocolError(RejectReason.MALFORMED, f"map {order}")
    shortest: tuple[int, ...] = min(layouts, key=len)
    missing = sorted(set(shortest) - set(keys))
    extra = sorted(set(keys) - set().union(*layouts))
    raise RemoteProtocolError(
        RejectReason.MALFORMED,
        f"missing fields {missing}, unknown fields {extra}{', ' + order if order else ''}",
    )
