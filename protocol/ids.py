"""Self-certifying identities: agent keys (the public key is the id) and libp2p node ids.

An agent id is the 32-byte Ed25519 public key itself; its text form is a standard
`did:key` (multicodec ed25519-pub 0xed01, base58btc, multibase prefix `z`).

A node id is a libp2p PeerID. For Ed25519 node keys it is an identity multihash of the
protobuf-encoded public key, so the key can be read back out of the id and a node's
signature checked with no lookup and no libp2p import.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import base58
import nacl.bindings
import nacl.exceptions

from protocol.errors import LocalProtocolError, RejectReason, RemoteProtocolError

__all__ = [
    "AGENT_ID_LEN",
    "SIGNATURE_LEN",
    "AgentId",
    "NodeId",
    "SigningKey",
    "verify_signature",
]

AGENT_ID_LEN = 32
SIGNATURE_LEN = 64
SEED_LEN = 32
_DID_PREFIX = "did:key:z"
_ED25519_PUB_MULTICODEC = b"\xed\x01"
# identity multihash (0x00), length 36, protobuf PublicKey{Type=Ed25519(1), Data=<32 bytes>}
_PEER_ID_ED25519_PREFIX = b"\x00\x24\x08\x01\x12\x20"
_MAX_PEER_ID_TEXT = 128
_MAX_INTERNED = 4096


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Return whether `signature` is a valid Ed25519 signature of `message` by `public_key`."""
    if len(signature) != SIGNATURE_LEN or len(public_key) != AGENT_ID_LEN:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class AgentId:
    """An agent's identity: its Ed25519 public key."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != AGENT_ID_LEN:
            raise LocalProtocolError("an agent id is exactly 32 bytes")

    @classmethod
    def from_bytes(cls, data: object) -> AgentId:
        """Parse an agent id received from a peer."""
        if not isinstance(data, bytes) or len(data) != AGENT_ID_LEN:
            raise RemoteProtocolError(RejectReason.MALFORMED, "agent id must be 32 bytes")
        return cls(data)

    @classmethod
    def _checked(cls, raw: bytes) -> AgentId:
        """Wrap 32 bytes the caller has already checked (the decoders' fast path)."""
        # Agents talk to the same few peers over and over: reusing their id objects saves
        # an allocation per received message. Bounded: cleared whole when full.
        agent = _INTERNED.get(raw)
        if agent is None:
            if len(_INTERNED) >= _MAX_INTERNED:
                _INTERNED.clear()
            agent = object.__new__(cls)
            object.__setattr__(agent, "raw", raw)
            _INTERNED[raw] = agent
        return agent

    @classmethod
    def from_did(cls, text: str) -> AgentId:
        """Parse a `did:key:z...` text form; raise ValueError with a clear reason otherwise."""
        if not isinstance(text, str) or not text.startswith(_DID_PREFIX):
            raise ValueError(f"not an agent id: expected 'did:key:z...', got {text!r:.80}")
        return cls(_did_key(text))

    @property
    def did(self) -> str:
        """The `did:key` text form."""
        return _did_text(self.raw)

    def short(self) -> str:
        """A short form for logs (not unique; never parse it)."""
        return self.did[-8:]

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Return whether this agent signed `message`."""
        return verify_signature(self.raw, message, signature)

    def __str__(self) -> str:
        return self.did


_INTERNED: dict[bytes, AgentId] = {}


@dataclass(frozen=True, slots=True)
class NodeId:
    """A node's libp2p PeerID (binary multihash form), Ed25519 keys only."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or not _is_ed25519_peer_id(self.raw):
            raise LocalProtocolError("a node id is an Ed25519 identity-multihash PeerID")

    @classmethod
    def from_bytes(cls, data: object) -> NodeId:
        """Parse a binary PeerID received from a peer."""
        if not isinstance(data, bytes) or not _is_ed25519_peer_id(data):
            raise RemoteProtocolError(RejectReason.MALFORMED, "node id is not an Ed25519 PeerID")
        return cls(data)

    @classmethod
    def from_text(cls, text: str) -> NodeId:
        """Parse a base58btc PeerID (`12D3KooW...`); raise ValueError with a clear reason."""
        if not isinstance(text, str) or not 0 < len(text) <= _MAX_PEER_ID_TEXT:
            raise ValueError(f"not a node id: {text!r:.80}")
        try:
            raw = base58.b58decode(text)
        except ValueError as exc:
            raise ValueError(f"not a node id: bad base58btc in {text!r:.80}") from exc
        if not _is_ed25519_peer_id(raw):
            raise ValueError(f"not a node id: {text!r:.80} is not an Ed25519 PeerID")
        return cls(raw)

    @classmethod
    def from_public_key(cls, public_key: bytes) -> NodeId:
        """Build the PeerID of an Ed25519 public key."""
        if len(public_key) != AGENT_ID_LEN:
            raise LocalProtocolError("an Ed25519 public key is 32 bytes")
        return cls(_PEER_ID_ED25519_PREFIX + public_key)

    @property
    def text(self) -> str:
        """The base58btc text form, as libp2p prints it."""
        return base58.b58encode(self.raw).decode("ascii")

    @property
    def public_key(self) -> bytes:
        """The node's Ed25519 public key, read out of the id."""
        return self.raw[len(_PEER_ID_ED25519_PREFIX) :]

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Return whether this node signed `message`."""
        return verify_signature(self.public_key, message, signature)

    def __str__(self) -> str:
        return self.text


@functools.lru_cache(maxsize=65_536)
def _did_text(raw: bytes) -> str:
    # Pure-Python base58 costs ~20 us a call, and busy agents are named on every message:
    # a bounded cache of the recently seen ones makes that nearly free.
    return _DID_PREFIX + base58.b58encode(_ED25519_PUB_MULTICODEC + raw).decode("ascii")


@functools.lru_cache(maxsize=65_536)
def _did_key(text: str) -> bytes:
    # The other way round from `_did_text`, cached for the same reason: agents address the
    # same few peers by their text ids on every send. (A ValueError is not cached.)
    try:
        decoded = base58.b58decode(text[len(_DID_PREFIX) :])
    except ValueError as exc:
        raise ValueError(f"not an agent id: bad base58btc in {text!r:.80}") from exc
    if not decoded.startswith(_ED25519_PUB_MULTICODEC):
        raise ValueError(f"not an agent id: {text!r:.80} is not an ed25519-pub did:key")
    key = decoded[len(_ED25519_PUB_MULTICODEC) :]
    if len(key) != AGENT_ID_LEN:
        raise ValueError(f"not an agent id: key in {text!r:.80} is {len(key)} bytes, not 32")
    return key


def _is_ed25519_peer_id(raw: bytes) -> bool:
    return len(raw) == len(_PEER_ID_ED25519_PREFIX) + 32 and raw.startswith(_PEER_ID_ED25519_PREFIX)


class SigningKey:
    """An Ed25519 secret key (agent or node); never printed."""

    __slots__ = ("_public", "_secret", "_seed")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != SEED_LEN:
            raise LocalProtocolError("an Ed25519 seed is exactly 32 bytes")
        self._seed = seed
        self._public, self._secret = nacl.bindings.crypto_sign_seed_keypair(seed)

    @classmethod
    def generate(cls) -> SigningKey:
        """Create a new random key."""
        return cls(os.urandom(SEED_LEN))

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """Rebuild a key from its 32-byte seed."""
        return cls(seed)

    @property
    def seed(self) -> bytes:
        """The 32-byte seed (secret: store it encrypted)."""
        return self._seed

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return self._public

    @property
    def agent_id(self) -> AgentId:
        """The agent id this key stands for."""
        return AgentId(self._public)

    @property
    def node_id(self) -> NodeId:
        """The libp2p PeerID this key stands for, when used as a node key."""
        return NodeId.from_public_key(self._public)

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte detached signature of `message`."""
        signed: bytes = nacl.bindings.crypto_sign(message, self._secret)
        return signed[:SIGNATURE_LEN]

    def __repr__(self) -> str:
        return f"SigningKey(public={self._public.hex()[:16]}..., secret=<hidden>)"
