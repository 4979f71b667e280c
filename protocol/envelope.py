"""The envelope: one signed message from an agent to an agent or a topic.

Wire form (see SPEC.md): a CBOR map with small integer keys, signature first.

    0 signature  bstr .size 64      Ed25519 by `from` over ENVELOPE_DOMAIN + the rest
    1 version    uint               1
    2 from       bstr .size 32      sender agent id
    3 to         bstr .size 32 / tstr   recipient agent id, or a topic name
    4 id         bstr .size 16      message id, random
    5 created    uint               milliseconds since the Unix epoch
    6 expires    uint               milliseconds since the Unix epoch, > created
    7 kind       tstr               short application label ("msg", "req", "reply", ...)
    8 body       any                plain CBOR data
    9 reply_to   bstr .size 16      optional: the id of the request this answers
   10 trace      bstr .size 8       optional: a trace id; nodes log the message when present
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError, CryptoError

from protocol.cbor import DEFAULT_LIMITS, DecodeLimits, check_plain, decode_signed_map
from protocol.cbor import encode_signed_map as _encode_signed_map
from protocol.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from protocol.ids import AGENT_ID_LEN, AgentId, SigningKey, verify_signature
from protocol.replay import ReplayWindow
from protocol.sigbatch import open_many

__all__ = [
    "ENVELOPE_DOMAIN",
    "ENVELOPE_VERSION",
    "MSG_ID_LEN",
    "Envelope",
    "EnvelopePolicy",
    "open_envelope",
    "open_envelopes",
]

ENVELOPE_VERSION = 1
ENVELOPE_DOMAIN = b"meshd/envelope/v1\x00"
MSG_ID_LEN = 16
TRACE_ID_LEN = 8
MAX_KIND_LEN = 64
MAX_TOPIC_LEN = 256

_K_VERSION, _K_FROM, _K_TO, _K_ID, _K_CREATED, _K_EXPIRES = 1, 2, 3, 4, 5, 6
_K_KIND, _K_BODY, _K_REPLY_TO, _K_TRACE = 7, 8, 9, 10
_REQUIRED = frozenset({_K_VERSION, _K_FROM, _K_TO, _K_ID, _K_CREATED, _K_EXPIRES, _K_KIND, _K_BODY})
_KNOWN = _REQUIRED | {_K_REPLY_TO, _K_TRACE}
_N_REQUIRED = len(_REQUIRED)
# Every valid key sequence of an envelope map, signature (0) first.
_LAYOUTS = frozenset(
    (0, *sorted(_REQUIRED | optional))
    for optional in (set(), {_K_REPLY_TO}, {_K_TRACE}, {_K_REPLY_TO, _K_TRACE})
)
_MAX_MS = 2**53
_FLAT = (
    int,
    bool,
    type(None),
)  # timestamps beyond this are nonsense and would lose precision in JSON


@dataclass(frozen=True, slots=True)
class EnvelopePolicy:
    """What a receiver accepts: sizes, clock skew and the longest lifetime."""

    limits: DecodeLimits = DEFAULT_LIMITS
    max_skew_ms: int = 30_000
    max_ttl_ms: int = 300_000

    def __post_init__(self) -> None:
        if self.max_skew_ms < 0 or self.max_ttl_ms <= 0:
            raise LocalProtocolError("max_skew_ms must be >= 0 and max_ttl_ms > 0")


DEFAULT_POLICY = EnvelopePolicy()


class Envelope(NamedTuple):
    """A decoded (or freshly signed) envelope; `frame` holds its exact wire bytes."""

    # A NamedTuple rather than a frozen dataclass: it is built for every received message
    # and costs a fraction of a frozen dataclass's per-field setattr.

    sender: AgentId
    recipient: AgentId | str
    msg_id: bytes
    created_ms: int
    expires_ms: int
    kind: str
    body: Any
    reply_to: bytes | None
    trace: bytes | None
    signature: bytes
    frame: bytes
    signed_bytes: bytes

    @property
    def is_topic(self) -> bool:
        """Whether this envelope is addressed to a topic rather than an agent."""
        return isinstance(self.recipient, str)

    @classmethod
    def create(
        cls,
        key: SigningKey,
        to: AgentId | str,
        kind: str,
        body: Any,
        *,
        now_ms: int,
        ttl_ms: int = 60_000,
        reply_to: bytes | None = None,
        trace: bytes | None = None,
        msg_id: bytes | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> Envelope:
        """Build and sign an envelope from `key`'s agent."""
        if msg_id is None:
            msg_id = random_bytes(MSG_ID_LEN)
        fields: dict[int, Any] = {
            _K_VERSION: ENVELOPE_VERSION,
            _K_FROM: key.public_key,
            _K_TO: to.raw if isinstance(to, AgentId) else to,
            _K_ID: msg_id,
            _K_CREATED: now_ms,
            _K_EXPIRES: now_ms + ttl_ms,
            _K_KIND: kind,
            _K_BODY: body,
        }
        if reply_to is not None:
            fields[_K_REPLY_TO] = reply_to
        if trace is not None:
            fields[_K_TRACE] = trace
        try:
            _check_fields(fields, DEFAULT_LIMITS, None)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(f"invalid envelope: {exc}") from exc
        frame = _encode_signed_map(ENVELOPE_DOMAIN, fields, key)
        if len(frame) > DEFAULT_LIMITS.max_size:
            raise LocalProtocolError(f"envelope is {len(frame)} bytes, over the 64 KiB limit")
        return cls.decode(frame)

    @classmethod
    def decode(cls, frame: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> Envelope:
        """Parse and check the structure of a wire envelope (the signature is not checked)."""
        try:
            fields, signed, signature = decode_signed_map(frame, ENVELOPE_DOMAIN, limits, _LAYOUTS)
        except RemoteProtocolError as exc:
            # A later version may have other fields: say unknown_version, not malformed.
            if exc.reason is RejectReason.MALFORMED:
                version = _version_of(frame, limits)
                if version is not None and version != ENVELOPE_VERSION:
                    raise RemoteProtocolError(
                        RejectReason.UNKNOWN_VERSION, f"envelope version {version}"
                    ) from exc
            raise
        version = fields[_K_VERSION]  # present: the layouts require it
        if version != ENVELOPE_VERSION or type(version) is not int:
            if type(version) is not int:
                raise RemoteProtocolError(RejectReason.MALFORMED, "version must be an integer")
            raise RemoteProtocolError(RejectReason.UNKNOWN_VERSION, f"envelope version {version}")
        _check_fields(fields, limits, len(frame))
        to = fields[_K_TO]
        # tuple.__new__ with positions: this runs once per received message, and the
        # NamedTuple's keyword-handling constructor costs measurably more.
        return tuple.__new__(
            cls,
            (
                AgentId._checked(fields[_K_FROM]),
                AgentId._checked(to) if type(to) is bytes else to,
                fields[_K_ID],
                fields[_K_CREATED],
                fields[_K_EXPIRES],
                fields[_K_KIND],
                fields[_K_BODY],
                fields.get(_K_REPLY_TO),
                fields.get(_K_TRACE),
                signature,
                frame if type(frame) is bytes else bytes(frame),
                signed,
            ),
        )

    def signature_valid(self) -> bool:
        """Return whether the sender's signature over the envelope verifies."""
        return verify_signature(self.sender.raw, self.signed_bytes, self.signature)

    def check_signature(self) -> None:
        """Raise bad_signature unless the sender's signature verifies."""
        if not self.signature_valid():
            raise RemoteProtocolError(RejectReason.BAD_SIGNATURE, "envelope signature")

    def check_time(self, now_ms: int, policy: EnvelopePolicy = DEFAULT_POLICY) -> None:
        """Raise expired, from_future or ttl_too_long when the envelope is out of its time."""
        if self.expires_ms <= now_ms:
            raise RemoteProtocolError(
                RejectReason.EXPIRED, f"expired {now_ms - self.expires_ms} ms ago"
            )
        if self.created_ms > now_ms + policy.max_skew_ms:
            raise RemoteProtocolError(
                RejectReason.FROM_FUTURE, f"created {self.created_ms - now_ms} ms in the future"
            )
        if self.expires_ms - self.created_ms > policy.max_ttl_ms:
            raise RemoteProtocolError(
                RejectReason.TTL_TOO_LONG, f"lifetime over {policy.max_ttl_ms} ms"
            )

    def check_recipient(self, hosted: Callable[[AgentId], bool]) -> None:
        """Raise wrong_recipient unless the envelope is for an agent `hosted` accepts."""
        if isinstance(self.recipient, str) or not hosted(self.recipient):
            raise RemoteProtocolError(RejectReason.WRONG_RECIPIENT, "recipient not hosted here")

    def reply(
        self,
        key: SigningKey,
        body: Any,
        *,
        now_ms: int,
        kind: str = "reply",
        ttl_ms: int = 60_000,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> Envelope:
        """Build the signed reply to this envelope from `key`'s agent."""
        return Envelope.create(
            key,
            self.sender,
            kind,
            body,
            now_ms=now_ms,
            ttl_ms=ttl_ms,
            reply_to=self.msg_id,
            trace=self.trace,
            random_bytes=random_bytes,
        )


def _version_of(frame: bytes, limits: DecodeLimits) -> int | None:
    """The version field of a signed map whatever its other fields, or None."""
    try:
        fields = decode_signed_map(frame, ENVELOPE_DOMAIN, limits)[0]
    except RemoteProtocolError:
        return None
    version = fields.get(_K_VERSION)
    return version if type(version) is int else None


def _check_fields(fields: dict[int, Any], limits: DecodeLimits, size: int | None) -> None:
    # Straight-line checks with few lookups: this runs once per received message. Which
    # keys are present was settled by decode_signed_map's layouts (or Envelope.create).
    sender = fields[_K_FROM]
    if type(sender) is not bytes or len(sender) != AGENT_ID_LEN:
        raise RemoteProtocolError(RejectReason.MALFORMED, "from must be a 32-byte agent id")
    to = fields[_K_TO]
    to_type = type(to)
    if to_type is bytes:
        if len(to) != AGENT_ID_LEN:
            raise RemoteProtocolError(RejectReason.MALFORMED, "to must be a 32-byte agent id")
    elif to_type is str:
        if not 0 < len(to) <= MAX_TOPIC_LEN:
            raise RemoteProtocolError(RejectReason.MALFORMED, "topic must be 1..256 characters")
    else:
        raise RemoteProtocolError(RejectReason.MALFORMED, "to must be an agent id or a topic")
    msg_id = fields[_K_ID]
    if type(msg_id) is not bytes or len(msg_id) != MSG_ID_LEN:
        raise RemoteProtocolError(RejectReason.MALFORMED, "id must be 16 bytes")
    created, expires = fields[_K_CREATED], fields[_K_EXPIRES]
    if type(created) is not int or type(expires) is not int:
        raise RemoteProtocolError(RejectReason.MALFORMED, "created/expires must be integers")
    if not (0 <= created < expires <= _MAX_MS):
        raise RemoteProtocolError(RejectReason.MALFORMED, "need 0 <= created < expires <= 2^53")
    kind = fields[_K_KIND]
    if type(kind) is not str or not 0 < len(kind) <= MAX_KIND_LEN:
        raise RemoteProtocolError(RejectReason.MALFORMED, "kind must be 1..64 characters")
    if len(fields) > _N_REQUIRED:
        reply_to = fields.get(_K_REPLY_TO)
        if reply_to is not None and (type(reply_to) is not bytes or len(reply_to) != MSG_ID_LEN):
            raise RemoteProtocolError(RejectReason.MALFORMED, "reply_to must be 16 bytes")
        trace = fields.get(_K_TRACE)
        if trace is not None and (type(trace) is not bytes or len(trace) != TRACE_ID_LEN):
            raise RemoteProtocolError(RejectReason.MALFORMED, "trace must be 8 bytes")
    body = fields[_K_BODY]
    if type(body) not in _FLAT:  # flat bodies are common and need no walk
        check_plain(body, limits, size)


def _open_unsigned(
    frame: bytes,
    now_ms: int,
    policy: EnvelopePolicy,
    hosted: Callable[[AgentId], bool] | None,
) -> Envelope:
    """Decode `frame` and run every receive check but the signature and the replay window."""
    envelope = Envelope.decode(frame, policy.limits)
    # The checks of check_time and check_recipient, inlined because this is the receive
    # hot path; keep them in step with those methods.
    created, expires = envelope.created_ms, envelope.expires_ms
    if expires <= now_ms or created > now_ms + policy.max_skew_ms:
        envelope.check_time(now_ms, policy)
    if expires - created > policy.max_ttl_ms:
        envelope.check_time(now_ms, policy)
    if hosted is not None:
        envelope.check_recipient(hosted)
    return envelope


def open_envelope(
    frame: bytes,
    *,
    now_ms: int,
    policy: EnvelopePolicy = DEFAULT_POLICY,
    hosted: Callable[[AgentId], bool] | None = None,
    replay: ReplayWindow | None = None,
) -> Envelope:
    """Run every receive check in order (cheap first, replay last) and return the envelope."""
    envelope = _open_unsigned(frame, now_ms, policy, hosted)
    # verify_signature inlined: decode already fixed the key and signature lengths.
    try:
        crypto_sign_open(envelope.signature + envelope.signed_bytes, envelope.sender.raw)
    except (BadSignatureError, CryptoError, ValueError, TypeError):
        raise RemoteProtocolError(RejectReason.BAD_SIGNATURE, "envelope signature") from None
    if replay is not None:
        # Only verified envelopes enter the window, so forged ids cannot fill it.
        replay.check(envelope.sender.raw, envelope.msg_id, envelope.expires_ms, now_ms)
    return envelope


def open_envelopes(
    frames: Sequence[bytes],
    *,
    now_ms: int,
    policy: EnvelopePolicy = DEFAULT_POLICY,
    hosted: Callable[[AgentId], bool] | None = None,
) -> list[Envelope | RemoteProtocolError]:
    """`open_envelope`'s verdict on each frame (no replay window); signatures checked at once.

    The signatures go to libsodium in one call that releases the GIL once
    (`protocol.sigbatch`), so a worker thread checking a chunk does not wait for the GIL
    after every message.
    """
    results: list[Envelope | RemoteProtocolError] = []
    unsigned: list[int] = []  # indices of results still waiting for their signature check
    for frame in frames:
        try:
            results.append(_open_unsigned(frame, now_ms, policy, hosted))
        except RemoteProtocolError as exc:
            results.append(exc)
            continue
        unsigned.append(len(results) - 1)
    envelopes = [cast(Envelope, results[i]) for i in unsigned]
    verdicts = open_many([(e.signature, e.signed_bytes, e.sender.raw) for e in envelopes])
    for i, good in zip(unsigned, verdicts, strict=True):
        if not good:
            results[i] = RemoteProtocolError(RejectReason.BAD_SIGNATURE, "envelope signature")
    return results
