"""Capability tags are announced once per change of the tag set, however busy the node.

A provider announcement is a DHT lookup and 20 stores, and can take many seconds. The tags
used to count as announced only once every announcement finished, so each rebuild of the
summary in the meantime (agents spawned, activated, deleted) woke the announcer again and
it re-announced the same tags back to back; and a new tag made it announce every tag again.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from meshd import summaries
from protocol.summary import capability_key
from tests.summaries.test_summary_service import SETTINGS, Wire, connect, ids, node


async def test_a_slow_announcement_is_not_repeated_by_rebuilds_meanwhile(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(summaries, "_PROVIDE_EVERY_S", 600.0)  # 6 h in the daemon
    service, runtime, _ = node(Wire(), "busy", 5)  # two agents tagged "translate"
    calls: list[str] = []

    async def provide(key: str) -> bool:
        calls.append(key)
        await trio.sleep(20.0)  # a lookup and 20 stores in a large mesh
        return True

    service._provide = provide
    async with trio.open_nursery() as nursery:
        await nursery.start(service.serve)
        for step, raw in enumerate(ids(10, "more")):
            await trio.sleep(3.0)  # the announcement is still running: the summary changes
            runtime.agents[raw] = ("translate",) if step % 2 else ()
            service.changed()
        await trio.sleep(60.0)
        assert len(calls) == 1
        # A new tag is announced, alone: the old one was announced a minute ago.
        runtime.agents[b"\x01" * 32] = ("summarise",)
        service.changed()
        await trio.sleep(60.0)
        assert len(calls) == 2
        assert calls[1] != calls[0]
        # Before provider records expire, every tag is announced again.
        await trio.sleep(600.0)
        nursery.cancel_scope.cancel()
    assert len(calls) == 4
    assert set(calls[2:]) == set(calls[:2])


async def test_a_tag_every_neighbour_has_is_announced_by_about_k_nodes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every provider record of a tag lands on the same 20 nodes; a common tag needs ~k."""
    wire = Wire()
    hub, runtime, net = node(wire, "hub", 5)  # "translate", as every node() here
    spokes = [node(wire, f"spoke{i}", 5) for i in range(6)]
    for i in range(53):  # the rest of a 60-node mesh, known from the routing table
        node(wire, f"elsewhere{i}", 1)
    for _, _, spoke_net in spokes:
        connect(net, spoke_net)
    runtime.agents[b"\x02" * 32] = ("rare",)
    provided: list[str] = []

    async def provide(key: str) -> bool:
        provided.append(key)
        return True

    hub._provide = provide
    hub._random = Half()
    async with trio.open_nursery() as nursery:
        for service, _, _ in [(hub, runtime, net), *spokes]:
            await nursery.start(service.serve)
        await trio.sleep(3 * SETTINGS.interval_s)
        # Six of six neighbours host "translate", and 60 nodes are known: 20 of 60 announce.
        assert hub.provide_share("translate") == pytest.approx(20 / 60)
        assert hub.provide_share("rare") == 1.0  # no neighbour has it
        nursery.cancel_scope.cancel()
    # Drawn 0.5: "rare" (share 1) is announced, "translate" (share 1/3) is left to others.
    assert provided == [capability_key("rare")]
    assert hub.stats()["provides_skipped"] == 1


class Half(random.Random):
    """Every draw is 0.5."""

    def random(self) -> float:
        return 0.5
