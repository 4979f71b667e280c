"""The replay window: detection, expiry, and bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from protocol.replay import ReplayWindow

S1, S2 = b"\x01" * 32, b"\x02" * 32


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def test_detects_replay_until_expiry() -> None:
    window = ReplayWindow(bucket_ms=100)
    window.check(S1, mid(1), expires_ms=5_000, now_ms=1_000)
    with pytest.raises(RemoteProtocolError) as info:
        window.check(S1, mid(1), expires_ms=5_000, now_ms=4_000)
    assert info.value.reason is RejectReason.REPLAYED
    window.check(S2, mid(1), expires_ms=5_000, now_ms=4_000)  # another sender, same id
    assert window.expire(5_100) == 2
    assert len(window) == 0
    assert window.next_expiry_ms() is None


def test_refuses_instead_of_forgetting_when_full() -> None:
    window = ReplayWindow(capacity=3, max_per_sender=2)
    window.check(S1, mid(1), 10_000, 0)
    window.check(S1, mid(2), 10_000, 0)
    with pytest.raises(RemoteProtocolError) as info:
        window.check(S1, mid(3), 10_000, 0)
    assert info.value.reason is RejectReason.RATE_LIMITED
    window.check(S2, mid(1), 10_000, 0)
    with pytest.raises(RemoteProtocolError) as info:
        window.check(S2, mid(2), 10_000, 0)
    assert info.value.reason is RejectReason.RATE_LIMITED
    # every remembered id is still refused: nothing was forgotten to make room
    for sender, n in ((S1, 1), (S1, 2), (S2, 1)):
        assert (sender, mid(n)) in window
    window.expire(11_000)
    window.check(S1, mid(3), 20_000, 11_000)


def test_expired_messages_are_refused() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        ReplayWindow().check(S1, mid(1), expires_ms=10, now_ms=10)
    assert info.value.reason is RejectReason.EXPIRED


def test_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        ReplayWindow(capacity=0)
    with pytest.raises(LocalProtocolError):
        ReplayWindow().check(S1, b"short", 10, 0)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50), st.integers(1, 5_000))))
@settings(max_examples=200)
def test_matches_a_simple_model(events: list[tuple[int, int, int]]) -> None:
    window = ReplayWindow(bucket_ms=7)
    model: dict[tuple[int, int], int] = {}
    now = 0
    for sender, n, life in events:
        now += 13
        # an entry is remembered until its expiry, rounded up to the end of its bucket
        model = {k: exp for k, exp in model.items() if (exp // 7 + 1) * 7 > now}
        key = (sender, n)
        reason = None
        try:
            window.check(bytes([sender]) * 32, mid(n), now + life, now)
        except RemoteProtocolError as exc:
            reason = exc.reason
        assert reason in (None, RejectReason.REPLAYED)
        accepted = reason is None
        assert accepted == (key not in model)
        if accepted:
            model[key] = now + life
        assert len(window) == len(model)
