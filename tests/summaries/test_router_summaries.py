"""The router's summary paths: a hit, a false positive falling through, and two hops."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import trio
import trio.testing

from meshd.router import Router
from protocol.ids import AgentId
from protocol.summary import Located


def agent(name: str) -> AgentId:
    return AgentId(hashlib.sha256(name.encode()).digest())


class FakeSummaries:
    """Summary matches and locate answers set by the test."""

    def __init__(self) -> None:
        self.matches: dict[bytes, list[tuple[str, int]]] = {}
        self.answers: dict[str, list[Located]] = {}
        self.asked: list[str] = []
        self.false_positives = 0
        self.peers: list[str] = []

    def candidates(self, target: AgentId) -> list[tuple[str, int]]:
        return list(self.matches.get(target.raw, []))

    def addrs_of(self, peer_id: str) -> tuple[str, ...]:
        return (f"/ip4/127.0.0.1/tcp/1/p2p/{peer_id}",)

    async def ask_locate(self, peer_id: str, target: AgentId) -> Sequence[Located]:
        self.asked.append(peer_id)
        return self.answers.get(peer_id, [])

    def count_false_positive(self) -> None:
        self.false_positives += 1

    def neighbours(self) -> list[str]:
        return list(self.peers)


async def test_summary_hit_then_false_positive_falls_through_to_the_dht() -> None:
    dht_keys: list[str] = []

    async def dht_get(key: str) -> bytes | None:
        dht_keys.append(key)
        return None

    summaries = FakeSummaries()
    router = Router(lambda a: False, dht_get, summaries=summaries)
    x = agent("x")
    summaries.matches[x.raw] = [("peerA", 0), ("peerB", 0)]
    route = await router.locate(x)
    assert route is not None
    assert (route.path, route.peer_id) == ("summary", "peerA")
    assert route.addrs == ()  # a direct neighbour is connected: no addresses to read
    # peerA answered not_here: the delivery layer invalidates and locates once more.
    router.invalidate(x, "peerA")
    route = await router.locate(x, use_cache=False)
    assert route is not None
    assert (route.path, route.peer_id) == ("summary", "peerB")
    router.invalidate(x, "peerB")
    assert await router.locate(x, use_cache=False) is None  # both false: the DHT was asked
    assert len(dht_keys) == 1
    stats = router.stats()
    assert stats["paths"] == {"summary": 2, "unknown": 1}
    assert stats["false_positives"] == {"summary": 2}
    assert summaries.false_positives == 2
    # A not_here from a peer that did not come from a summary is no false positive.
    router.invalidate(agent("y"), "peerC")
    assert router.stats()["false_positives"] == {"summary": 2}


async def test_level_match_asks_that_neighbour_for_the_host() -> None:
    summaries = FakeSummaries()
    router = Router(lambda a: False, lambda key: _none(), summaries=summaries)
    x = agent("x")
    summaries.matches[x.raw] = [("peerA", 1)]
    summaries.answers["peerA"] = [Located("peerD", ("/ip4/127.0.0.1/tcp/9",), 0)]
    route = await router.locate(x)
    assert route is not None
    assert (route.path, route.peer_id, route.addrs) == (
        "summary-2hop",
        "peerD",
        ("/ip4/127.0.0.1/tcp/9",),
    )
    assert summaries.asked == ["peerA"]
    # Three hops: peerB's level 2 matches; peerB points at peerE, which knows the host.
    z = agent("z")
    summaries.matches[z.raw] = [("peerB", 2)]
    summaries.answers["peerB"] = [Located("peerE", (), 1)]
    summaries.answers["peerE"] = [Located("peerF", (), 0)]
    route = await router.locate(z)
    assert route is not None
    assert (route.path, route.peer_id) == ("summary-2hop", "peerF")


async def test_local_agents_never_ask_summaries() -> None:
    summaries = FakeSummaries()
    x = agent("x")
    router = Router(lambda a: a == x, lambda key: _none(), summaries=summaries)
    summaries.matches[x.raw] = [("peerA", 0)]
    route = await router.locate(x)
    assert route is not None
    assert route.path == "local"
    assert router.stats()["summary_probes"] == 0


async def _none() -> bytes | None:
    return None


async def test_asking_around_is_bounded_like_a_dht_lookup(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Silent(FakeSummaries):
        async def ask_locate(self, peer_id: str, target: AgentId) -> Sequence[Located]:
            self.asked.append(peer_id)
            await trio.sleep_forever()
            raise AssertionError("unreachable")

    summaries = Silent()
    summaries.peers = [f"peer{i}" for i in range(12)]
    router = Router(lambda a: False, lambda key: _none(), summaries=summaries, lookup_timeout_s=3)
    started = trio.current_time()
    with trio.fail_after(60):
        assert await router.locate(agent("x")) is None  # then the DHT, which knows nothing
    # One bound for the whole ask-around (and one for the DHT), not one per wave.
    assert trio.current_time() - started == 3
    assert sorted(summaries.asked) == ["peer0", "peer1", "peer2", "peer3"]
    assert router.stats()["dht_lookups"] == 1
