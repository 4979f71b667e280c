"""Errors of the wire protocol: one reason enum shared by code, metrics and logs."""

from __future__ import annotations

import enum

__all__ = ["LocalProtocolError", "ProtocolError", "RejectReason", "RemoteProtocolError"]


class RejectReason(enum.Enum):
    """Why a frame, envelope or record was refused; the value is the wire and metric label."""

    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    FROM_FUTURE = "from_future"
    TTL_TOO_LONG = "ttl_too_long"
    REPLAYED = "replayed"
    WRONG_RECIPIENT = "wrong_recipient"
    UNKNOWN_VERSION = "unknown_version"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    DENIED = "denied"  # the recipient agent's allow/deny lists refuse the sender
    UNTRUSTED = "untrusted"  # the sender's provenance is not rooted in a trusted node


class ProtocolError(Exception):
    """Base class of every error that `protocol` raises on purpose."""


class LocalProtocolError(ProtocolError):
    """The caller asked for something the protocol does not allow (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """Bytes or a record from a peer were refused; `reason` says why."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
