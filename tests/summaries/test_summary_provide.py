"""Capability tags are announced once per change of the tag set, however busy the node.

A provider announcement is a DHT lookup and 20 stores, and can take many seconds. The tags
used to count as announced only once every announcement finished, so each rebuild of the
summary in the meantime (agents spawned, activated, deleted) woke the announcer again and
it re-announced the same tags back to back.
"""

from __future__ import annotations

import trio
import trio.testing

from tests.summaries.test_summary_service import Wire, ids, node


async def test_a_slow_announcement_is_not_repeated_by_rebuilds_meanwhile(
    autojump_clock: trio.testing.MockClock,
) -> None:
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
        # A new tag is announced (with the old ones: the set changed).
        runtime.agents[b"\x01" * 32] = ("summarise",)
        service.changed()
        await trio.sleep(60.0)
        nursery.cancel_scope.cancel()
    assert len(calls) == 3
    assert service.stats()["caps_provided"] == 3
