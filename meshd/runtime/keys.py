"""Agent secret keys at rest: sealed with a key derived from the node key, never printed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import nacl.bindings
import nacl.exceptions
import nacl.secret

from protocol.ids import SigningKey

__all__ = ["KeyVault", "KeyVaultError", "generate_agent_keys"]

_NONCE = nacl.secret.SecretBox.NONCE_SIZE


class KeyVaultError(Exception):
    """A sealed agent key could not be opened (wrong node key or corrupt data)."""


class KeyVault:
    """Seals and opens 32-byte agent seeds with XSalsa20-Poly1305 (PyNaCl SecretBox)."""

    __slots__ = ("_box",)

    def __init__(self, node_key: SigningKey) -> None:
        # A separate key per purpose: the node's signing seed itself never encrypts anything.
        derived = hashlib.blake2b(
            node_key.seed, digest_size=32, person=b"meshd-agent-keys"
        ).digest()
        self._box = nacl.secret.SecretBox(derived)

    def seal(self, seed: bytes, nonce: bytes | None = None) -> bytes:
        """Encrypt one agent seed (nonce || ciphertext, 72 bytes)."""
        sealed: bytes = self._box.encrypt(seed, nonce if nonce is not None else os.urandom(_NONCE))
        return sealed

    def seal_many(self, seeds: Sequence[bytes]) -> list[bytes]:
        """Encrypt many seeds (one random read for all their nonces)."""
        nonces = os.urandom(_NONCE * len(seeds))
        return [
            self.seal(seed, nonces[i * _NONCE : (i + 1) * _NONCE]) for i, seed in enumerate(seeds)
        ]

    def open(self, sealed: bytes) -> SigningKey:
        """Decrypt a sealed seed back into the agent's signing key."""
        try:
            return SigningKey(bytes(self._box.decrypt(sealed)))
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise KeyVaultError("cannot open an agent key: wrong node key or corrupt data") from exc


def generate_agent_keys(count: int) -> list[tuple[bytes, bytes]]:
    """Make `count` fresh agent keys as (seed, public key) pairs (releases the GIL in libsodium)."""
    seeds = os.urandom(32 * count)
    pairs = []
    for i in range(count):
        seed = seeds[i * 32 : (i + 1) * 32]
        public, _secret = nacl.bindings.crypto_sign_seed_keypair(seed)
        pairs.append((seed, public))
    return pairs
