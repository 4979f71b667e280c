"""Capability tags are announced once per change of the tag set, however busy the node.

A provider announcement is a DHT lookup and 20 stores, and can take many seconds. The tags
used to count as announced only once every announcement finished, so each rebuild of the
summary in the meantime (agents spawned, activated, deleted) woke the announcer again and
it re-announced the same tags back to back; and a new tag made it announce every tag again.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshd import summaries
from tests.summaries.test_summary_service import Wire, ids, node


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
