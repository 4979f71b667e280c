"""Build the py-libp2p host the way meshd needs it: Noise only, yamux, deliberate limits.

Workarounds for py-libp2p 0.8.1 live here (see ../shared/LIBP2P.md):
- the default host also accepts secio and plaintext: we pass a Noise-only `sec_opt`;
- `dial_peer` waits 250 ms for a second connection unless `max_connections_per_peer`
  is reached: we set it to 1 (a loopback dial drops to 7-20 ms);
- `enable_metrics=True` fills a 100-slot channel nobody reads: never enabled;
- the connection manager's watermarks are set from our config, not left at 50/100/300;
- a wildcard listen address (`/ip4/0.0.0.0/...`) is advertised as is, undialable: we
  advertise the interfaces' addresses (and loopback) instead;
- yamux sends a WINDOW_UPDATE after every other small read, Noise reads each message
  from the socket in two `recv` calls, and every free lock on the I/O path yields to the
  scheduler: `meshd.net.libp2p_io` credits once per half window read, as go-yamux does,
  buffers socket reads, and lets free locks be taken without a schedule point.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.utils.address_validation import expand_wildcard_address
from multiaddr import Multiaddr

from meshd.net import libp2p_io

__all__ = [
    "NOISE_PROTOCOL_ID",
    "HostLimits",
    "advertised_addrs",
    "build_host",
    "connection_config",
    "dial",
    "key_pair_from_seed",
    "multiaddrs",
    "noise_only_security",
]


@dataclass(frozen=True, slots=True)
class HostLimits:
    """Connection manager settings handed to py-libp2p."""

    low_watermark: int = 8
    high_watermark: int = 32
    max_connections: int = 64
    dial_timeout_s: float = 5.0
    auto_connect_interval_s: float = 30.0
    grace_period_s: float = 20.0


def key_pair_from_seed(seed: bytes) -> Any:
    """The libp2p Ed25519 key pair for a 32-byte seed (same public key as protocol.ids)."""
    if len(seed) != 32:
        raise ValueError("an Ed25519 seed is 32 bytes")
    return create_new_key_pair(seed)


def noise_only_security(key_pair: Any) -> dict[Any, Any]:
    """A `sec_opt` offering Noise and nothing else, so plaintext and secio peers are refused."""
    return {
        NOISE_PROTOCOL_ID: NoiseTransport(
            key_pair, noise_privkey=create_x25519_key_pair().private_key
        )
    }


def connection_config(limits: HostLimits) -> Any:
    """The py-libp2p `ConnectionConfig` for our limits: one connection per peer."""
    return ConnectionConfig(
        # One connection per peer: a second one only wastes a handshake, and with
        # the default of 3 every dial waits 250 ms for a "happy eyeballs" sibling.
        max_connections_per_peer=1,
        # No "critical" floor: below min_connections the auto-connector polls every
        # 10 s; our discovery service already dials up to the low watermark.
        min_connections=0,
        low_watermark=limits.low_watermark,
        high_watermark=limits.high_watermark,
        max_connections=limits.max_connections,
        dial_timeout=limits.dial_timeout_s,
        auto_connect_interval=limits.auto_connect_interval_s,
        grace_period=limits.grace_period_s,
    )


_WILDCARDS = {"/ip4/0.0.0.0": "/ip4/127.0.0.1", "/ip6/::": "/ip6/::1"}


@functools.lru_cache(maxsize=64)
def _expand(addr_text: str) -> tuple[Any, ...]:
    for wildcard, loopback in _WILDCARDS.items():
        if addr_text.startswith(wildcard + "/"):
            rest = addr_text[len(wildcard) :]
            concrete = expand_wildcard_address(Multiaddr(addr_text))
            texts = dict.fromkeys(
                [str(a) for a in concrete if not str(a).startswith(wildcard + "/")]
                + [loopback + rest]
            )
            return tuple(Multiaddr(text) for text in texts)
    return (Multiaddr(addr_text),)


def advertised_addrs(candidates: list[Any]) -> list[Any]:
    """What we tell peers: wildcard listen addresses replaced by the interfaces' addresses.

    py-libp2p advertises `/ip4/0.0.0.0/...` as is, which no peer can dial.
    """
    out: list[Any] = []
    for addr in candidates:
        out.extend(_expand(str(addr)))
    return out


def build_host(
    seed: bytes,
    limits: HostLimits | None,
    *,
    mdns: bool = False,
    psk: str | None = None,
    transport: Any = None,
    io_fixes: bool = True,
) -> Any:
    """A py-libp2p host for our node key: TCP, Noise only, yamux, our limits, no metrics.

    `limits=None` keeps py-libp2p's default `ConnectionConfig`, and `io_fixes=False` leaves
    py-libp2p's classes as they are (`meshd.net.libp2p_io`, process-wide): only benchmarks
    use those, to measure what our settings change. `psk` (64 hex digits) makes a private
    network: py-libp2p's pnet wraps every raw connection in a Salsa20 stream keyed by it,
    under Noise, so a node without the key fails the handshake. `transport` (an
    `ITransport`, e.g. simnet's `meshd.net.memory.MemoryTransport`) replaces TCP.
    """
    if io_fixes:
        libp2p_io.install()
    key_pair = key_pair_from_seed(seed)
    return new_host(
        key_pair=key_pair,
        sec_opt=noise_only_security(key_pair),
        muxer_preference="YAMUX",
        connection_config=None if limits is None else connection_config(limits),
        enable_mDNS=mdns,
        enable_metrics=False,
        addrs_factory=advertised_addrs,
        psk=psk,
        transports=None if transport is None else [transport],
    )


def multiaddrs(texts: Sequence[str]) -> list[Any]:
    """Parse multiaddr texts for `host.run(...)`."""
    return [Multiaddr(text) for text in texts]


async def dial(host: Any, addr: str) -> None:
    """Connect `host` to the peer at `addr` (a multiaddr ending in /p2p/<id>)."""
    await host.connect(info_from_p2p_addr(Multiaddr(addr)))
