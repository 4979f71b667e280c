"""meshd wire protocol: identities, envelopes, records and Bloom filters, with no I/O."""

from protocol.errors import LocalProtocolError, ProtocolError, RejectReason, RemoteProtocolError

__all__ = ["LocalProtocolError", "ProtocolError", "RejectReason", "RemoteProtocolError"]
