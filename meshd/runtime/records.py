"""Signed records of hosted agents: provenance chains and agent records, built on demand.

Birth certificates are not signed at spawn (signing would halve the spawn rate); Ed25519
signatures are deterministic, so building a certificate later from the stored fields gives
the very bytes signing at spawn would have given. A root agent's certificate is signed by
the node key; a child's by its parent agent's key, and its chain continues with the parent's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from meshd.runtime.lifecycle import State, UnknownAgent
from protocol.ids import AgentId
from protocol.records import MAX_CHAIN, AgentRecord, BirthCert, LifecycleState, Provenance

if TYPE_CHECKING:
    from meshd.runtime.runtime import Runtime

__all__ = ["RECORD_TTL_MS", "birth_cert", "build_provenance", "build_record"]

RECORD_TTL_MS = 24 * 3600 * 1000

_WIRE_STATE = {
    State.ACTIVE: LifecycleState.ACTIVE,
    State.DORMANT: LifecycleState.DORMANT,
    State.SUSPENDED: LifecycleState.SUSPENDED,
    State.MIGRATING: LifecycleState.SUSPENDED,
    State.GONE: LifecycleState.GONE,
}


async def birth_cert(runtime: Runtime, agent: AgentId) -> BirthCert:
    """The agent's birth certificate: the pinned one, else built from its stored fields."""
    row = await runtime.store.get_agent(agent.raw)
    if row is None:
        raise UnknownAgent(f"no agent {agent.did} on this node")
    if row.birth_cert:
        return BirthCert.decode(row.birth_cert)
    parent = AgentId(row.parent) if row.parent else None
    if parent is None:
        signer = runtime.node_key
    else:
        parent_row = await runtime.store.get_agent(parent.raw)
        if parent_row is None or not parent_row.secret:
            raise UnknownAgent(f"parent {parent.did} of {agent.did} has no key here")
        signer = runtime.vault.open(parent_row.secret)
    # Without a pinned certificate the budget was never lowered: it is the birth budget.
    return BirthCert.issue(
        signer,
        agent=agent,
        kind=row.kind,
        node=runtime.node_key.node_id,
        created_ms=row.created_ms,
        budget=row.budget,
        parent=parent,
    )


async def build_provenance(runtime: Runtime, agent: AgentId) -> Provenance:
    """The agent's provenance chain, from its own certificate up to its node-signed root."""
    chain: list[BirthCert] = []
    current: AgentId | None = agent
    while current is not None:
        if len(chain) >= MAX_CHAIN:
            raise UnknownAgent(f"provenance of {agent.did} is deeper than {MAX_CHAIN}")
        cert = await birth_cert(runtime, current)
        chain.append(cert)
        current = cert.parent
    return Provenance(tuple(chain))


async def build_record(
    runtime: Runtime,
    agent: AgentId,
    addrs: Sequence[str],
    *,
    now_ms: int,
    gone: bool = False,
    ttl_ms: int = RECORD_TTL_MS,
) -> AgentRecord:
    """A freshly signed record saying where `agent` lives (or, with `gone`, a tombstone)."""
    state = State.GONE if gone else (runtime.state_of(agent) or State.DORMANT)
    key = await runtime.signing_key(agent)
    seq = await runtime.store.bump_record_seq(agent.raw)
    return AgentRecord.create(
        key,
        node=runtime.node_key.node_id,
        addrs=list(addrs),
        seq=seq,
        expires_ms=now_ms + ttl_ms,
        state=_WIRE_STATE[state],
        provenance=await build_provenance(runtime, agent),
    )
