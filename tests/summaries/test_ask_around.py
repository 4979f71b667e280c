"""Asking around: an agent no summary names, three hops out, is found through the neighbours.

Real `Summaries` services and a real `Router` over the in-memory fake network of
`test_summary_service` (a request is the handler call of the peer it is for). Four nodes in
a line, a - b - c - d, without `summary.two_hop`: a's only neighbour b names what b and c
host, not d's agents. Asking b (whose neighbour c has d's agents at level 1), then c, finds
d. Mass-spawned agents have no DHT record, so without this they are unreachable from a.
"""

from __future__ import annotations

import itertools

import trio
import trio.testing

from meshd.router import Router, no_dht
from meshd.summaries import SummarySettings
from protocol.ids import AgentId
from tests.summaries.test_summary_service import Wire, connect, ids, node

LINE = SummarySettings(interval_s=5.0, tick_s=0.5, neighbour_bytes_per_s=2000.0, min_gap_s=1.0)


async def test_an_agent_three_hops_out_is_found_by_asking_around(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = Wire()
    nodes = [node(wire, name, 50) for name in "abcd"]
    for (_, _, left), (_, _, right) in itertools.pairwise(nodes):
        connect(left, right)
    a, _, _ = nodes[0]
    _, _, nb = nodes[1]
    _, _, nd = nodes[3]
    for summaries, _, _ in nodes:
        summaries.settings = LINE
    router = Router(lambda agent: False, no_dht, summaries=a)
    far = AgentId(ids(50, "d")[7])
    async with trio.open_nursery() as nursery:
        for summaries, _, _ in nodes:
            await nursery.start(summaries.serve)
        await trio.sleep(4 * LINE.interval_s)
        assert a.candidates(far) == []  # no summary a holds names it
        assert a.neighbours() == [nb.peer_id]
        route = await router.locate(far)
        assert route is not None
        assert (route.path, route.peer_id) == ("summary-3hop", nd.peer_id)
        stats = router.stats()
        assert stats["asked_around"] == 1
        assert stats["around_queries"] == 2  # b, then c (next to the host)
        assert nodes[1][0].stats()["locate_queries"] == 1
        assert nodes[2][0].stats()["locate_queries"] == 1
        # The answer is cached: the next message asks nobody.
        again = await router.locate(far)
        assert again is not None
        assert (again.path, again.peer_id) == ("cache", nd.peer_id)
        assert router.stats()["around_queries"] == 2
        # An agent nobody hosts costs one wave of questions and ends unknown.
        assert await router.locate(AgentId(ids(1, "nobody")[0])) is None
        assert router.paths["unknown"] == 1
        nursery.cancel_scope.cancel()
