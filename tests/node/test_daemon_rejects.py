"""A real daemon refuses forged, replayed, expired, oversized and misaddressed envelopes
from a peer, counts each by reason, answers it, and keeps serving honest messages; and a
request nobody answers times out."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr

from meshd.clock import wall_ms
from meshd.net.discovery import DiscoverySettings
from meshd.net.libp2p_net import Libp2pNetwork
from meshd.net.types import NetEvent
from protocol.envelope import Envelope
from protocol.frames import MSG_PROTOCOL_ID, Mode, encode_msg
from protocol.ids import AgentId, SigningKey
from tests.delivery.test_delivery import oversized, read_acks

if TYPE_CHECKING:
    from tests.node.conftest import Daemons

pytestmark = pytest.mark.slow


async def test_a_daemon_rejects_bad_envelopes_and_keeps_serving(daemons: Daemons) -> None:
    node = daemons.init("target")
    node.start()
    node.wait_ready()
    counter = AgentId.from_did(node.post("/v1/agents", {"kind": "counter"})["agents"][0]["id"])
    key, now = SigningKey.generate(), wall_ms()
    honest = Envelope.create(key, counter, "msg", {"add": 1}, now_ms=now).frame
    forged = bytearray(Envelope.create(key, counter, "msg", {"add": 100}, now_ms=now).frame)
    forged[10] ^= 1  # inside the signature
    cases = [
        (honest, "delivered"),
        (bytes(forged), "rejected:bad_signature"),
        (honest, "rejected:replayed"),
        (Envelope.create(key, counter, "msg", {}, now_ms=now - 120_000).frame, "rejected:expired"),
        (oversized(key, counter, now), "rejected:too_large"),
        (
            Envelope.create(key, SigningKey.generate().agent_id, "msg", {}, now_ms=now).frame,
            "rejected:wrong_recipient",
        ),
        (Envelope.create(key, counter, "msg", {"add": 1}, now_ms=now).frame, "delivered"),
    ]
    events, _unread = trio.open_memory_channel[NetEvent](1_000)
    peer = Libp2pNetwork(
        os.urandom(32), listen=["/ip4/127.0.0.1/tcp/0"], discovery=DiscoverySettings()
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.serve, events)
        await peer.host.connect(info_from_p2p_addr(Multiaddr(node.addrs[0])))
        stream = await peer.host.new_stream(
            ID.from_base58(node.peer_id), [TProtocol(MSG_PROTOCOL_ID)]
        )
        frames = [encode_msg(seq, Mode.AT_MOST_ONCE, env) for seq, (env, _) in enumerate(cases)]
        await stream.write(b"".join(frames))
        acks = await read_acks(stream, len(cases))
        assert [acks[seq].outcome for seq in range(len(cases))] == [want for _, want in cases]
        await stream.close()
        nursery.cancel_scope.cancel()

    status: dict[str, Any] = node.get("/v1/status")
    rejected = status["delivery"]["rejected"]
    for reason in ("bad_signature", "replayed", "expired", "too_large", "wrong_recipient"):
        assert rejected.get(reason) == 1, (reason, rejected)
    # Only the two honest messages counted, and the daemon still answers requests.
    reply = node.post(
        "/v1/send", {"to": counter.did, "body": {"add": 0}, "kind": "req", "wait": True}
    )
    assert reply["reply"]["body"] == {"count": 2}
    # A request the agent never answers (a counter answers only kind "req") times out.
    quiet = node.post(
        "/v1/send", {"to": counter.did, "body": {}, "kind": "msg", "wait": True, "timeout": 0.5}
    )
    assert quiet["outcome"] == "timeout"
    assert node.stop() == 0
