"""Multiaddr checks shared by the config loader and the network (imports multiaddr only)."""

from __future__ import annotations

from dataclasses import dataclass

from multiaddr import Multiaddr

__all__ = ["BootstrapAddr", "parse_bootstrap_addr", "parse_listen_addr"]

_IP_PROTOCOLS = frozenset({"ip4", "ip6"})
_DNS_PROTOCOLS = frozenset({"dns", "dns4", "dns6"})


@dataclass(frozen=True, slots=True)
class BootstrapAddr:
    """A peer to join through: its full multiaddr and the peer id in its `/p2p/` part."""

    addr: str
    peer_id: str


def _parse(text: object) -> Multiaddr:
    if not isinstance(text, str) or not text:
        raise ValueError(f"not a multiaddr: {text!r}")
    try:
        return Multiaddr(text)
    except ValueError as exc:
        raise ValueError(f"not a multiaddr: {text!r}") from exc


def parse_listen_addr(text: object) -> str:
    """Check a listen multiaddr (`/ip4|ip6/<ip>/tcp/<port>`); return its canonical text."""
    maddr = _parse(text)
    names = [p.name for p in maddr.protocols()]
    if len(names) != 2 or names[0] not in _IP_PROTOCOLS or names[1] != "tcp":
        raise ValueError(f"not a TCP listen address (want /ip4/<ip>/tcp/<port>): {text!r}")
    return str(maddr)


def parse_bootstrap_addr(text: object) -> BootstrapAddr:
    """Check a bootstrap multiaddr (`/ip4/<ip>/tcp/<port>/p2p/<peer id>`)."""
    maddr = _parse(text)
    names = [p.name for p in maddr.protocols()]
    if (
        len(names) != 3
        or names[0] not in _IP_PROTOCOLS | _DNS_PROTOCOLS
        or names[1] != "tcp"
        or names[2] != "p2p"
    ):
        raise ValueError(f"not a bootstrap address (want /ip4/<ip>/tcp/<port>/p2p/<id>): {text!r}")
    peer_id = maddr.get_peer_id()
    if not peer_id:
        raise ValueError(f"bootstrap address has no peer id: {text!r}")
    return BootstrapAddr(addr=str(maddr), peer_id=str(peer_id))
