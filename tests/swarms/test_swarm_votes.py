"""Swarm decisions: signed proposals and ballots, the verdict they prove, forged ballots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshd.clock import wall_ms
from meshd.runtime.runtime import Runtime
from meshd.swarm_doc import SwarmDoc
from meshd.swarms import SwarmError
from protocol.envelope import Envelope
from protocol.ids import AgentId, SigningKey
from protocol.swarm_vote import (
    KIND_BALLOT,
    KIND_PROPOSAL,
    Proposal,
    ballot_body,
    open_ballot,
    open_proposal,
    proposal_body,
    verify_decision,
)
from tests.swarms import kinds
from tests.swarms.test_swarm_tasks import tell
from tests.swarms.test_swarms_service import Bus, swarm_node, until

KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(5)]


def proposal(keys: list[SigningKey], text: str = "ship it") -> Proposal:
    body = proposal_body("team", text, [k.agent_id for k in keys])
    return open_proposal(
        Envelope.create(keys[0], "swarm/team", KIND_PROPOSAL, body, now_ms=1).frame
    )


def ballot(key: SigningKey, prop: Proposal, yes: bool, swarm: str = "team") -> bytes:
    body = ballot_body(swarm, prop.id, yes)
    return Envelope.create(key, f"swarm/{swarm}", KIND_BALLOT, body, now_ms=2).frame


def test_quorum_rule_and_monotone_outcomes() -> None:
    prop = proposal(KEYS)  # five voters: quorum 3
    assert verify_decision(prop, []).outcome == "pending"
    two_yes = [ballot(k, prop, True) for k in KEYS[:2]]
    assert verify_decision(prop, two_yes).outcome == "pending"
    three_yes = [*two_yes, ballot(KEYS[2], prop, True)]
    decided = verify_decision(prop, three_yes)
    assert (decided.outcome, decided.yes, decided.no, decided.quorum) == ("accepted", 3, 0, 3)
    # More ballots never change a decided outcome.
    rest = [ballot(k, prop, False) for k in KEYS[3:]]
    assert verify_decision(prop, three_yes + rest).outcome == "accepted"
    # Three no: yes can no longer reach three.
    no = [ballot(k, prop, False) for k in KEYS[:3]]
    assert verify_decision(prop, no).outcome == "rejected"
    # Four voters: a 2-2 split is rejected only once yes cannot reach 3.
    four = proposal(KEYS[:4])
    split = [ballot(KEYS[0], four, True), ballot(KEYS[1], four, False)]
    assert verify_decision(four, split).outcome == "pending"
    assert verify_decision(four, [*split, ballot(KEYS[2], four, False)]).outcome == "rejected"


def test_forged_and_foreign_ballots_are_refused_and_counted() -> None:
    prop = proposal(KEYS[:3])
    good = ballot(KEYS[0], prop, True)
    flipped = bytearray(ballot(KEYS[1], prop, True))
    flipped[-1] ^= 1  # inside the signed bytes: the signature no longer verifies
    outsider = ballot(SigningKey(os.urandom(32)), prop, True)
    other = ballot(KEYS[2], proposal(KEYS[:3], "something else"), True)
    elsewhere = ballot(KEYS[2], prop, True, swarm="crew")
    both = [ballot(KEYS[2], prop, True), ballot(KEYS[2], prop, False)]
    verdict = verify_decision(
        prop, [good, bytes(flipped), outsider, other, elsewhere, *both, b"junk"]
    )
    assert verdict.outcome == "pending"
    assert verdict.voters == {KEYS[0].agent_id: True}
    assert verdict.rejected == {
        "bad_signature": 1,
        "equivocal": 1,
        "malformed": 1,
        "unauthorized": 1,
        "wrong_proposal": 2,
    }
    # With the forged ballot taken for real the vote would pass; it is not.
    assert verify_decision(prop, [good, ballot(KEYS[1], prop, True)]).outcome == "accepted"
    with pytest.raises(ValueError, match="electorate"):
        proposal_body("team", "x", [])
    assert open_ballot(good).voter == KEYS[0].agent_id


async def spawn_voter(runtime: Runtime) -> AgentId:
    (info,) = await runtime.spawn("tests.swarms.kinds:Voter")
    return AgentId.from_did(info["id"])


async def test_three_nodes_vote_and_a_forged_ballot_is_rejected(tmp_path: Path) -> None:
    kinds.DECIDED.clear()
    bus = Bus()
    async with (
        swarm_node(bus, tmp_path / "a.db", os.urandom(32)) as (rt_a, sw_a, _),
        swarm_node(bus, tmp_path / "b.db", os.urandom(32)) as (rt_b, sw_b, _),
        swarm_node(bus, tmp_path / "c.db", os.urandom(32)) as (rt_c, sw_c, _),
    ):
        nodes = [(rt_a, sw_a), (rt_b, sw_b), (rt_c, sw_c)]
        voters = []
        for rt, sw in nodes:
            voter = await spawn_voter(rt)
            await sw.join("team", voter)
            voters.append((rt, sw, voter))
        await until(lambda: all(len(sw.members("team")) == 3 for _, sw in nodes), "members")
        rt, _, first = voters[0]
        await tell(rt, first, {"propose": "team", "text": "adopt plan B"})
        await until(lambda: len(kinds.DECIDED) == 1, "the proposal")
        pid = str(kinds.DECIDED[0]["proposal"])
        await until(lambda: all(sw.shared.proposals("team") for _, sw in nodes), "its spread")
        # A forged ballot for B's voter, written straight into A's replica, spreads but never
        # counts: its signature is another key's.
        forger = SigningKey(os.urandom(32))
        body = ballot_body("team", bytes.fromhex(pid), True)
        forged = Envelope.create(forger, "swarm/team", KIND_BALLOT, body, now_ms=wall_ms())
        fake = bytearray(forged.frame)
        at = fake.find(forger.public_key)
        fake[at : at + 32] = voters[1][2].raw  # claims to be B's voter
        doc = sw_a.shared.doc("team")
        update = doc.change(
            lambda: doc.put_frame("ballots", SwarmDoc.frame_key(pid, bytes(fake)), bytes(fake))
        )
        await sw_a.shared._commit("team", update)
        with pytest.raises(SwarmError) as info:  # the API path refuses it outright
            await sw_b.shared.submit_ballot("team", bytes(fake))
        assert info.value.code == "bad_ballot"
        await until(
            lambda: all(
                sw.shared.decision("team", pid)["rejected"] == {"bad_signature": 1}
                for _, sw in nodes
            ),
            "every node refusing the forged ballot",
        )
        assert sw_c.shared.decision("team", pid)["outcome"] == "pending"
        # Two genuine yes ballots of three: accepted everywhere.
        for rt, _, voter in voters[:2]:
            await tell(rt, voter, {"vote": "team", "proposal": pid, "yes": True})
        await until(
            lambda: all(
                sw.shared.decision("team", pid)["outcome"] == "accepted" for _, sw in nodes
            ),
            "the decision on every node",
        )
        shown = sw_c.shared.decision("team", pid, ballots=True)
        assert (shown["yes"], shown["no"], shown["quorum"]) == (2, 0, 2)
        # The proof travels: anyone verifies the frames alone.
        frames = [bytes.fromhex(b) for b in shown["ballots"]]
        verdict = verify_decision(open_proposal(bytes.fromhex(shown["proposal"])), frames)
        assert verdict.outcome == "accepted"
        assert verdict.rejected == {"bad_signature": 1}
        with pytest.raises(SwarmError) as info:
            await sw_a.shared.vote("team", pid, voters[0][2], False)
        assert info.value.code == "already_voted"
