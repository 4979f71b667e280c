"""The `trust.*` settings, apart from `meshd.trust` so that the config loader stays light."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.ids import NodeId

__all__ = ["OPEN", "POLICIES", "TRUSTED_ROOTS", "TrustSettings"]

OPEN = "open"
TRUSTED_ROOTS = "trusted-roots"
POLICIES = (OPEN, TRUSTED_ROOTS)


@dataclass(frozen=True, slots=True)
class TrustSettings:
    """The `trust.*` keys: policy, trusted node ids, verdict cache, migrations."""

    policy: str = OPEN
    roots: tuple[str, ...] = ()  # node peer ids (text)
    accept_migrations: bool = True
    cache_size: int = 10_000
    cache_ttl_s: float = 600.0
    miss_ttl_s: float = 30.0
    lookup_timeout_s: float = 2.0
    peer_lookups_per_s: float = 5.0  # record lookups one peer's messages may cause

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"trust policy must be one of {', '.join(POLICIES)}")
        for root in self.roots:
            NodeId.from_text(root)  # raises ValueError naming the bad id
        if self.cache_size < 1 or self.cache_ttl_s <= 0 or self.miss_ttl_s <= 0:
            raise ValueError("trust cache size and lifetimes must be positive")
        if self.lookup_timeout_s <= 0 or self.peer_lookups_per_s <= 0:
            raise ValueError("lookup_timeout_s and peer_lookups_per_s must be positive")
