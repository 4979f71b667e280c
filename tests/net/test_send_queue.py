"""A peer's send queue: bounded in messages, filled a group at a time, waiting groups moved in."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshd.net.sendqueue import Outgoing, SendQueue
from protocol.frames import Mode


def _items(tag: str, count: int) -> list[Outgoing]:
    return [Outgoing(f"{tag}{i}".encode(), Mode.AT_MOST_ONCE) for i in range(count)]


def _take(queue: SendQueue, count: int) -> list[bytes]:
    return [queue.get_nowait().envelope for _ in range(count)]


async def test_a_group_that_fits_is_queued_without_waiting() -> None:
    queue = SendQueue(4)
    with trio.testing.assert_no_checkpoints():
        assert await queue.put(_items("a", 3)) == 3
        assert await queue.put(_items("b", 1)) == 1
    assert _take(queue, 4) == [b"a0", b"a1", b"a2", b"b0"]
    with pytest.raises(trio.WouldBlock):
        queue.get_nowait()


async def test_groups_arrive_whole_and_in_order_and_the_bound_holds() -> None:
    queue = SendQueue(8)
    groups = {tag: _items(tag, 25) for tag in "abcde"}
    got: list[bytes] = []
    longest = 0
    async with trio.open_nursery() as nursery:
        for items in groups.values():
            nursery.start_soon(queue.put, items)
        with trio.fail_after(10):
            while len(got) < 125:
                longest = max(longest, len(queue))
                got.append((await queue.get()).envelope)
                if len(got) % 3 == 0:
                    await trio.lowlevel.checkpoint()
    assert longest <= 8
    for tag, items in groups.items():
        assert [e for e in got if e.startswith(tag.encode())] == [i.envelope for i in items]


async def test_taking_moves_the_oldest_waiting_group_in_and_wakes_it_once_done() -> None:
    queue = SendQueue(2)
    await queue.put(_items("x", 2))
    done: list[str] = []

    async def sender(tag: str, count: int) -> None:
        assert await queue.put(_items(tag, count)) == count
        done.append(tag)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, "a", 3)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(sender, "b", 1)
        await trio.testing.wait_all_tasks_blocked()
        # Each message taken is replaced at once by the oldest group's next one, with no
        # task switch; its sender wakes only when the whole group is in.
        assert _take(queue, 2) == [b"x0", b"x1"]
        assert len(queue) == 2
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        assert _take(queue, 1) == [b"a0"]
        await trio.testing.wait_all_tasks_blocked()
        assert done == ["a"]
        assert _take(queue, 3) == [b"a1", b"a2", b"b0"]
    assert done == ["a", "b"]


async def test_a_new_group_waits_behind_the_waiting_ones() -> None:
    queue = SendQueue(1)
    await queue.put(_items("x", 1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.put, _items("a", 1))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(queue.put, _items("b", 1))
        await trio.testing.wait_all_tasks_blocked()
        assert _take(queue, 2) == [b"x0", b"a0"]
        assert _take(queue, 1) == [b"b0"]


async def test_a_cancelled_sender_keeps_what_went_in_and_the_others_move_on() -> None:
    queue = SendQueue(1)
    await queue.put(_items("x", 1))
    async with trio.open_nursery() as nursery:
        doomed = trio.CancelScope()

        async def cancelled_sender() -> None:
            with doomed:
                await queue.put(_items("c", 3))

        nursery.start_soon(cancelled_sender)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(queue.put, _items("b", 1))
        await trio.testing.wait_all_tasks_blocked()
        assert _take(queue, 1) == [b"x0"]  # c0 moved in
        doomed.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert _take(queue, 2) == [b"c0", b"b0"]


async def test_closing_returns_waiting_senders_with_their_rest_unqueued() -> None:
    queue = SendQueue(1)
    await queue.put(_items("x", 1))
    reached: list[int] = []

    async def sender(count: int) -> None:
        reached.append(await queue.put(_items("w", count)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, 3)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(sender, 2)
        await trio.testing.wait_all_tasks_blocked()
        queue.get_nowait()  # the first group's w0 moves in
        queue.close()
    assert sorted(reached) == [0, 1]
    assert await queue.put(_items("y", 1)) == 0
