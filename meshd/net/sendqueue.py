"""A peer's outbound messages: each one's state, and the bounded queue they wait in.

`meshd.net.streams` keeps one `SendQueue` per peer. A message is an `Outgoing` from the
moment it is queued until its ACK (or failure) resolves it; messages queued together by
`send_many` share a `Group`, so the sender wakes once for the lot.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import trio

from meshd.net.types import SendResult
from protocol.frames import Mode

__all__ = ["Group", "Outgoing", "SendQueue"]

_DELIVERED = SendResult("delivered")


class Group:
    """Messages queued together by `send_many`: one wake-up when the last is answered."""

    __slots__ = ("done", "remaining")

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.done = trio.Event()


class Outgoing:
    """One message on its way: queued, then sent and waiting for its ACK."""

    __slots__ = ("abandoned", "done", "envelope", "group", "mode", "result", "sent_at")

    def __init__(self, envelope: bytes, mode: Mode, group: Group | None = None) -> None:
        self.envelope = envelope
        self.mode = mode
        # A message sent alone has its own event; one of a group shares the group's.
        self.group = group
        self.done = trio.Event() if group is None else group.done
        self.result: SendResult | None = None
        self.abandoned = False  # the sender stopped waiting: do not send it any more
        self.sent_at = 0.0

    def resolve(self, outcome: str, detail: str = "") -> None:
        """Settle the message's outcome (the first one counts) and wake its sender."""
        if self.result is None:
            # Nearly every answer is a bare `delivered`: one shared result for those.
            self.result = (
                _DELIVERED if outcome == "delivered" and not detail else SendResult(outcome, detail)
            )
            group = self.group
            if group is None:
                self.done.set()
            else:
                group.remaining -= 1
                if not group.remaining:
                    group.done.set()


class _Waiter:
    """A sender waiting for room: its group, and how far into it the queue has taken."""

    __slots__ = ("items", "next", "task")

    def __init__(self, items: Sequence[Outgoing], start: int) -> None:
        self.items = items
        self.next = start
        self.task = trio.lowlevel.current_task()


class SendQueue:
    """A peer's messages waiting for its stream: bounded in messages, filled a group at a time.

    `send_many` queues its group with one call and, while the queue is full, waits once: as
    the stream's task takes messages, it moves the waiting groups' next messages in itself
    (oldest group first) and wakes a sender only when its whole group is queued. A memory
    channel would cost a put, a task switch and a take per message.
    """

    __slots__ = ("_getters", "_waiters", "closed", "items", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: deque[Outgoing] = deque()
        self.closed = False
        self._waiters: deque[_Waiter] = deque()
        self._getters = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self.items)

    async def put(self, items: Sequence[Outgoing], start: int = 0) -> int:
        """Queue `items[start:]` in order, waiting while the queue is full.

        Returns how many of `items` are queued: all of them, unless the queue retired first.
        No schedule point when everything fits at once.
        """
        if self.closed:
            return start
        queue = self.items
        end = start
        if not self._waiters:  # first come, first queued
            end = min(len(items), start + self.size - len(queue))
            if end > start:
                queue.extend(items[start:end])
                if self._getters:
                    self._getters.unpark()
            if end == len(items):
                return end
        waiter = _Waiter(items, end)
        self._waiters.append(waiter)

        def abort(_: object) -> trio.lowlevel.Abort:
            # Cancelled: what was moved in already stays queued (the sender marks it
            # abandoned, and the stream skips it); the rest never goes in.
            self._waiters.remove(waiter)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        return waiter.next

    def get_nowait(self) -> Outgoing:
        """The oldest queued message; trio.WouldBlock when there is none."""
        try:
            item = self.items.popleft()
        except IndexError:
            raise trio.WouldBlock from None
        waiters = self._waiters
        if waiters:  # room for one more: from the oldest waiting group
            waiter = waiters[0]
            self.items.append(waiter.items[waiter.next])
            waiter.next += 1
            if waiter.next == len(waiter.items):
                waiters.popleft()
                trio.lowlevel.reschedule(waiter.task)
        return item

    async def get(self) -> Outgoing:
        """Wait for a message and take it."""
        while not self.items:
            await self._getters.park()
        return self.get_nowait()

    def close(self) -> None:
        """Take no more messages; waiting senders return with the rest of their group unqueued."""
        self.closed = True
        while self._waiters:
            trio.lowlevel.reschedule(self._waiters.popleft().task)
