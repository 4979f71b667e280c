"""Agent pub/sub: the GossipSub topic validator, durable subscriptions, three real daemons."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from meshd.api.client import ApiError
from meshd.clock import wall_ms
from meshd.localmesh import LocalDaemon, daemon_env, start_mesh, wait_until
from meshd.net.addrs import parse_bootstrap_addr
from meshd.net.discovery import DiscoverySettings
from meshd.net.gossip import TOPIC_PREFIX, GossipSettings
from meshd.net.host import HostLimits, build_host
from meshd.net.libp2p_net import Libp2pNetwork
from meshd.net.types import NetEvent, TopicHandler
from meshd.pubsub import Topics
from meshd.runtime.lifecycle import State
from meshd.runtime.runtime import Runtime
from meshd.store import Store
from protocol.envelope import Envelope
from protocol.ids import AgentId, SigningKey
from tests.runtime import kinds_for_tests as kinds

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
STEP_S = 15.0
REC = "tests.runtime.kinds_for_tests:Recorder"
NEWS = TOPIC_PREFIX + "news"


async def until(check: Callable[[], Any], what: str) -> None:
    """Poll `check` until true; fail after STEP_S (bounded, never a wall-clock assertion)."""
    with trio.move_on_after(STEP_S):
        while not check():  # noqa: ASYNC110 - polling keeps the tests off internals
            await trio.sleep(0.01)
        return
    pytest.fail(f"timed out waiting for {what}")


# --- the topic validator, against a raw py-libp2p peer ----------------------------------------


@asynccontextmanager
async def raw_peer(target: Libp2pNetwork) -> AsyncIterator[Pubsub]:
    """A bare py-libp2p host with GossipSub v1.1, connected to `target`, on `/meshd/topic/news`."""
    host = build_host(os.urandom(32), HostLimits())
    router = GossipSub(
        protocols=[PROTOCOL_ID_V11], degree=6, degree_low=4, degree_high=12, heartbeat_interval=1
    )
    pubsub = Pubsub(host, router, strict_signing=True)  # before connecting: it must see it
    async with (
        host.run([Multiaddr(LOOPBACK)]),
        background_trio_service(pubsub),
        background_trio_service(router),
    ):
        await pubsub.wait_until_ready()
        await host.connect(info_from_p2p_addr(Multiaddr(target.listen_addrs()[0])))
        target_id = ID.from_base58(target.peer_id)
        await pubsub.wait_for_peer(target_id, timeout=STEP_S)
        await pubsub.subscribe(NEWS)
        await pubsub.wait_for_subscription(target_id, NEWS, timeout=STEP_S)
        yield pubsub


def forged_signature(frame: bytes) -> bytes:
    """The envelope with one bit of its signature flipped (it starts at byte 4)."""
    out = bytearray(frame)
    out[10] ^= 1
    return bytes(out)


async def test_validator_refuses_forged_topic_messages_and_counts_them() -> None:
    events, _unread = trio.open_memory_channel[NetEvent](1000)
    quiet = DiscoverySettings(join_jitter_s=0.0)
    net = Libp2pNetwork(os.urandom(32), listen=[LOOPBACK], discovery=quiet)
    got: list[bytes] = []

    async def handler(topic: str, frame: bytes) -> None:
        assert topic == "news"
        got.append(frame)

    handle: TopicHandler = handler
    async with trio.open_nursery() as nursery:
        await nursery.start(net.serve, events)
        net.set_topic_handler(handle)
        await net.subscribe_topic("news")
        async with raw_peer(net) as pubsub:
            subscription = pubsub.subscribed_topics_receive[NEWS]
            alice, now = SigningKey(os.urandom(32)), wall_ms()
            # Our own publication reaches the raw peer; wrapped again by it, it is a replay.
            own = Envelope.create(alice, "news", "pub", {"n": 0}, now_ms=now)
            await net.publish_topic("news", own.frame)
            with trio.fail_after(STEP_S):
                echoed = await subscription.get()
            assert echoed.data == own.frame

            valid = Envelope.create(alice, "news", "pub", {"n": 1}, now_ms=now)
            refused = {
                "malformed": b"\x00 not an envelope",
                "bad_signature": forged_signature(
                    Envelope.create(alice, "news", "pub", {"n": 2}, now_ms=now).frame
                ),
                "wrong_recipient": Envelope.create(alice, "sports", "pub", {}, now_ms=now).frame,
                "expired": Envelope.create(
                    alice, "news", "pub", {}, now_ms=now - 120_000, ttl_ms=60_000
                ).frame,
            }
            for frame in (valid.frame, *refused.values(), valid.frame, own.frame):
                await pubsub.publish(NEWS, frame)

            def all_judged() -> bool:
                return len(got) == 1 and sum(net.topics.rejected.values()) == len(refused) + 2

            await until(all_judged, "the validator to judge every message")
            assert got == [valid.frame]  # once, and never our own publication
            expected = dict.fromkeys(refused, 1) | {"replayed": 2}
            assert net.stats()["pubsub"]["rejected"] == expected
        nursery.cancel_scope.cancel()


async def test_own_publications_are_paced_under_the_spam_limit_not_dropped() -> None:
    # py-libp2p silently drops a forwarder's messages beyond its per-second limit, our own
    # included: publishing faster than the limit must wait, and lose nothing.
    events, _unread = trio.open_memory_channel[NetEvent](1000)
    quiet = DiscoverySettings(join_jitter_s=0.0)
    limit = GossipSettings(max_msgs_per_topic_per_s=4)
    got: list[bytes] = []

    async def handler(topic: str, frame: bytes) -> None:
        got.append(frame)

    async with trio.open_nursery() as nursery:
        b = Libp2pNetwork(os.urandom(32), listen=[LOOPBACK], discovery=quiet, gossip=limit)
        await nursery.start(b.serve, events)
        b.set_topic_handler(handler)
        await b.subscribe_topic("news")
        seed = [parse_bootstrap_addr(b.listen_addrs()[0])]
        a = Libp2pNetwork(
            os.urandom(32), listen=[LOOPBACK], bootstrap=seed, discovery=quiet, gossip=limit
        )
        await nursery.start(a.serve, events)
        await until(lambda: a.topics.topic_peers("news")["peers"] == 1, "a to see b's subscription")
        key = SigningKey(os.urandom(32))
        frames = [
            Envelope.create(key, "news", "pub", {"n": n}, now_ms=wall_ms()).frame for n in range(6)
        ]
        for frame in frames:
            await a.publish_topic("news", frame)
        await until(lambda: len(got) == len(frames), "every publication")
        assert sorted(got) == sorted(frames)
        assert a.topics.counters["publish_paced"] >= 1
        nursery.cancel_scope.cancel()


# --- durable subscriptions, without a network --------------------------------------------------


class FakeTopics:
    """A `TopicNetwork` that records what pub/sub asks of it."""

    def __init__(self) -> None:
        self.subscribed: set[str] = set()
        self.published: list[tuple[str, bytes]] = []
        self.handler: TopicHandler | None = None

    def set_topic_handler(self, handler: TopicHandler | None) -> None:
        self.handler = handler

    async def subscribe_topic(self, topic: str) -> None:
        self.subscribed.add(topic)

    async def unsubscribe_topic(self, topic: str) -> None:
        self.subscribed.discard(topic)

    async def publish_topic(self, topic: str, envelope: bytes) -> None:
        self.published.append((topic, envelope))


@asynccontextmanager
async def node(store: Store, seed: bytes) -> AsyncIterator[tuple[Runtime, Topics, FakeTopics]]:
    """A runtime and its pub/sub over a fake network; stopped (agents evicted) on exit."""
    async with trio.open_nursery() as nursery:
        runtime = Runtime(store, SigningKey(seed))
        fake = FakeTopics()
        topics = Topics(runtime, fake)
        await nursery.start(runtime.serve)
        await nursery.start(topics.serve)
        yield runtime, topics, fake
        nursery.cancel_scope.cancel()


async def spawn(runtime: Runtime, kind: str) -> AgentId:
    (info,) = await runtime.spawn(kind)
    return AgentId.from_did(info["id"])


async def test_subscriptions_are_durable_and_wake_dormant_agents(tmp_path: Path) -> None:
    kinds.reset()
    seed = os.urandom(32)
    async with Store(tmp_path / "node.db") as store:
        async with node(store, seed) as (runtime, topics, fake):
            x, y, z = [await spawn(runtime, kind) for kind in (REC, REC, "external")]
            assert await topics.subscribe("news", x)
            assert not await topics.subscribe("news", x)  # already
            await topics.subscribe("news", z)
            await topics.subscribe("sports", y)
            assert fake.subscribed == {"news", "sports"}
            assert await topics.unsubscribe("sports", y)
            assert fake.subscribed == {"news"}  # left with its last subscriber
            assert topics.topics_of(x) == ["news"]
            await runtime.delete(z)

        # Restarted: the dormant subscriber keeps its topic; the deleted one is dropped.
        async with node(store, seed) as (runtime, topics, fake):
            assert fake.subscribed == {"news"}
            assert topics.subscribers("news") == [x]
            assert topics.topics_of(y) == []
            assert runtime.state_of(x) is State.DORMANT
            assert fake.handler is not None

            # A message from another node wakes the dormant subscriber.
            other = SigningKey(os.urandom(32))
            remote = Envelope.create(other, "news", "pub", {"n": 1}, now_ms=wall_ms())
            await fake.handler("news", remote.frame)
            await until(lambda: len(kinds.RECEIVED) == 1, "the remote message")

            # Our own publication: to the local subscriber once, and to the network once.
            own = Envelope.create(other, "news", "pub", {"n": 2}, now_ms=wall_ms())
            await topics.publish(own)
            await until(lambda: len(kinds.RECEIVED) == 2, "the own message")
            received = list(kinds.RECEIVED)
            assert received == [(x.did, "pub", {"n": 1}), (x.did, "pub", {"n": 2})]
            assert fake.published == [("news", own.frame)]
            assert topics.stats()["delivered"] == {"delivered": 2}


# --- three real daemons ------------------------------------------------------------------------


@pytest.fixture
def mesh_root() -> Iterator[Path]:
    """A short directory for data directories (Unix socket paths are limited to 107 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="meshd-ps-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def meshd(daemon: LocalDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one `meshd` command against `daemon` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "meshd", *args, "--data-dir", str(daemon.data_dir)],
        capture_output=True,
        text=True,
        env=daemon_env(),
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_one_publication_reaches_subscribers_on_three_daemons(mesh_root: Path) -> None:
    daemons: list[LocalDaemon] = []
    subscribers: list[subprocess.Popen[str]] = []
    try:
        daemons = start_mesh(mesh_root, ["a", "b", "c"])
        a, b, c = daemons
        # On a, a counter agent subscribed through the API (it stays dormant until then).
        counter = a.post("/v1/agents", {"kind": "counter"})["agents"][0]["id"]
        answer = a.post(f"/v1/agents/{counter}/subscribe", {"topic": "news"})
        assert answer == {"id": counter, "topic": "news", "changed": True, "topics": ["news"]}
        # On b and c, `meshd pubsub subscribe` processes.
        for daemon in (b, c):
            command = [sys.executable, "-m", "meshd", "pubsub", "subscribe", "news"]
            command += ["--count", "1", "--data-dir", str(daemon.data_dir)]
            subscribers.append(
                subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=daemon_env(),
                )
            )
        agents = []
        for process in subscribers:
            assert process.stderr is not None
            line = process.stderr.readline()  # blocks until subscribed (API calls time out)
            assert line.startswith("subscribed to 'news' as did:key:"), line
            agents.append(line.split()[-1])

        def meshed() -> bool:
            # GossipSub has heard of both remote subscriptions (heartbeat 1 s).
            mesh = a.get("/v1/status")["network"]["pubsub"]["mesh"].get("news", {})
            return bool(mesh.get("peers", 0) >= 2)

        wait_until(meshed, timeout=STEP_S, interval=0.1, what="a's news subscribers")

        published = meshd(a, "pubsub", "publish", "news", '{"n": 1}', "--json")
        assert published.returncode == 0, published.stderr
        sent = json.loads(published.stdout)
        assert sent["outcome"] == "published"

        for process in subscribers:
            out, err = process.communicate(timeout=STEP_S)
            assert process.returncode == 0, err
            (line,) = out.splitlines()
            message = json.loads(line)
            assert (message["id"], message["topic"], message["body"]) == (
                sent["id"],
                "news",
                {"n": 1},
            )
            assert message["from"] == sent["from"]

        # The counter on the publishing node counted it once: a request now makes two.
        asked = a.post("/v1/send", {"to": counter, "kind": "req", "body": {}, "wait": True})
        assert asked["reply"]["body"] == {"count": 2}

        # The subscriber processes unsubscribed and deleted their agents on the way out.
        for daemon, agent in zip((b, c), agents, strict=True):
            topics = daemon.get("/v1/status")["delivery"]["topics"]
            assert (topics["topics"], topics["subscriptions"]) == (0, 0)
            with pytest.raises(ApiError) as gone:
                daemon.get(f"/v1/agents/{agent}")
            assert gone.value.status == 404
        # A topic message is not also an agent message.
        with pytest.raises(ApiError, match="does not apply to a topic") as refused:
            a.post("/v1/send", {"topic": "news", "to": counter, "body": 1})
        assert refused.value.status == 400
    finally:
        for process in subscribers:
            if process.poll() is None:
                process.kill()
                process.wait()
        for daemon in daemons:
            daemon.terminate()
        for daemon in daemons:
            try:
                assert daemon.wait() == 0, daemon.log_tail()
            except subprocess.TimeoutExpired:
                daemon.kill()
