"""Abuse resistance: token buckets, penalty scores, rate limits and timed bans of peers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from libp2p.peer.id import ID

from meshd.guard import GuardSettings, PeerGuard
from protocol.envelope import Envelope
from protocol.errors import LocalProtocolError
from protocol.frames import Mode, encode_msg
from protocol.ids import SigningKey
from protocol.ratelimit import DecayingScore, TokenBucket
from tests.delivery.test_delivery import (
    REC,
    raw_stream,
    read_acks,
    running_nodes,
    spawn,
    until,
)
from tests.runtime import kinds_for_tests as kinds

# -- the arithmetic (sans-IO) -------------------------------------------------------------


def test_token_bucket_grants_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=5.0)
    assert bucket.take_up_to(8, now=100.0) == 5  # the burst, no more
    assert bucket.take_up_to(8, now=100.0) == 0
    assert bucket.take_up_to(8, now=100.5) == 5  # 0.5 s at 10/s
    assert not bucket.full(100.5)
    assert bucket.full(101.0)
    with pytest.raises(LocalProtocolError):
        TokenBucket(rate=0.0, burst=1.0)


@given(
    st.floats(0.5, 1000.0),
    st.floats(1.0, 1000.0),
    st.lists(st.tuples(st.floats(0.0, 10.0), st.integers(0, 500)), max_size=50),
)
def test_token_bucket_never_grants_more_than_burst_plus_rate_times_time(
    rate: float, burst: float, steps: list[tuple[float, int]]
) -> None:
    bucket = TokenBucket(rate, burst)
    now, granted = 0.0, 0
    for gap, want in steps:
        now += gap
        got = bucket.take_up_to(want, now)
        assert 0 <= got <= want
        granted += got
    assert granted <= burst + rate * now + 1e-6


def test_decaying_score_halves_every_half_life() -> None:
    score = DecayingScore(half_life=10.0, now=0.0)
    assert score.add(0.0, 8.0) == 8.0
    assert score.at(10.0) == pytest.approx(4.0)
    assert score.add(20.0, 1.0) == pytest.approx(3.0)


def test_guard_bans_after_the_threshold_and_forgets_after_the_ban() -> None:
    guard = PeerGuard(GuardSettings(ban_threshold=30.0, ban_s=60.0, penalty_half_life_s=60.0))
    banned: list[str] = []
    guard.on_ban = banned.append
    assert not guard.penalise("peer", "rate_limited", 0.0)  # no weight: honest peers burst
    assert not guard.penalise("peer", "bad_signature", 1.0)
    assert not guard.penalise("peer", "bad_signature", 1.0)
    assert guard.penalise("peer", "bad_signature", 1.0)  # 30: banned now
    assert banned == ["peer"]
    assert guard.banned("peer", 30.0)
    assert not guard.banned("other", 30.0)
    assert not guard.penalise("peer", "bad_signature", 4.0)  # already banned: no second ban
    assert not guard.banned("peer", 63.5)  # the ban ran out
    stats = guard.stats(63.5)
    assert stats["bans"] == 1
    assert stats["banned"] == []
    assert stats["penalties"]["bad_signature"] == 3


def test_guard_scores_decay_so_rare_mistakes_never_ban() -> None:
    guard = PeerGuard(GuardSettings(ban_threshold=30.0, penalty_half_life_s=1.0))
    for minute in range(100):  # one malformed message a minute, for 100 minutes
        assert not guard.penalise("peer", "malformed", minute * 60.0)
    assert guard.score("peer", 6000.0) < 10.0


def test_token_bucket_borrow_shapes_with_bounded_debt() -> None:
    bucket = TokenBucket(rate=10.0, burst=5.0)
    assert bucket.borrow(5, now=0.0, max_debt=20.0) == 0.0  # within the burst: no wait
    assert bucket.borrow(10, now=0.0, max_debt=20.0) == pytest.approx(1.0)  # 10 owed at 10/s
    assert bucket.borrow(100, now=0.0, max_debt=20.0) == pytest.approx(2.0)  # debt capped


def test_guard_shapes_peers_and_limits_agents() -> None:
    guard = PeerGuard(
        GuardSettings(peer_msgs_per_s=10, peer_burst=20, agent_msgs_per_s=1, agent_burst=2)
    )
    assert guard.peer_delay("a", 15, 0.0) == 0.0
    assert guard.peer_delay("a", 15, 0.0) == pytest.approx(1.0)  # 10 over, at 10/s
    assert guard.peer_delay("b", 15, 0.0) == 0.0  # another peer has its own bucket
    assert [guard.admit_agent(b"x" * 32, 0.0) for _ in range(3)] == [True, True, False]
    assert guard.admit_agent(b"y" * 32, 0.0)
    stats = guard.stats(0.0)
    assert stats["throttled_batches"] == 1
    assert stats["rate_limited_agent"] == 1


# -- in-process nodes on loopback ---------------------------------------------------------


async def drain_until_closed(stream: Any) -> None:
    """Read (and drop ACKs) until the peer closes or resets the stream."""
    for _ in range(10_000):
        try:
            if not await stream.read(65536):
                return
        except Exception:  # reset: py-libp2p's stream errors have no common base
            return
    pytest.fail("the stream was never closed")


async def test_a_peer_over_its_rate_is_slowed_not_refused(tmp_path: Path) -> None:
    settings = GuardSettings(peer_msgs_per_s=100.0, peer_burst=20.0)
    async with running_nodes(tmp_path, limits=settings) as (a, b):
        rec = await spawn(b, REC)
        key = SigningKey.generate()
        now = a.runtime.clock()
        stream = await raw_stream(a, b)
        for batch in range(5):  # 5 writes of 30: the peer is over its burst after the first
            frames = [
                Envelope.create(key, rec, "msg", batch * 30 + i, now_ms=now).frame
                for i in range(30)
            ]
            await stream.write(
                b"".join(
                    encode_msg(batch * 30 + i, Mode.AT_MOST_ONCE, f) for i, f in enumerate(frames)
                )
            )
        acks = await read_acks(stream, 150)
        assert {acks[seq].outcome for seq in range(150)} == {"delivered"}
        await until(lambda: len(kinds.RECEIVED) == 150, "every message handled")
        guard = b.delivery.stats()["guard"]
        assert guard["throttled_batches"] >= 1  # its stream was read more slowly
        assert not guard["banned"]  # being fast is no misbehaviour


async def test_forging_peer_is_banned_disconnected_and_refused(tmp_path: Path) -> None:
    settings = GuardSettings(ban_threshold=50.0, ban_s=600.0)
    async with running_nodes(tmp_path, limits=settings) as (a, b):
        rec = await spawn(b, REC)
        key = SigningKey.generate()
        now = a.runtime.clock()
        forged = []
        for i in range(10):
            frame = bytearray(Envelope.create(key, rec, "msg", i, now_ms=now).frame)
            frame[10] ^= 1  # inside the signature
            forged.append(bytes(frame))
        stream = await raw_stream(a, b)
        await stream.write(
            b"".join(encode_msg(seq, Mode.AT_MOST_ONCE, f) for seq, f in enumerate(forged))
        )
        with trio.fail_after(15):
            await drain_until_closed(stream)  # banned after 5: the connection goes
        await until(lambda: a.net.peer_id in b.delivery.stats()["guard"]["banned"], "the ban")
        await until(lambda: not b.net.connected_peers(), "the disconnect")
        assert b.net.stats()["ban_disconnects"] >= 1
        assert not kinds.RECEIVED
        # While banned, a new connection is dropped and message streams are refused.
        with trio.move_on_after(5):  # a's side may still hold the dead connection: drop it
            await a.net.host.get_network().close_peer(ID.from_base58(b.net.peer_id))
        good = Envelope.create(key, rec, "msg", "honest now", now_ms=a.runtime.clock())
        with trio.fail_after(15):
            try:
                again = await raw_stream(a, b)
                await again.write(encode_msg(0, Mode.AT_MOST_ONCE, good.frame))
                await drain_until_closed(again)
            except Exception:  # refused at connect or at stream open: both fine
                pass
        assert not kinds.RECEIVED
        stats = b.net.stats()
        assert stats.get("banned_refused", 0) + stats["messages"].get("inbound_banned", 0) >= 1
