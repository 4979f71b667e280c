"""Intake benchmark: the receiving node's own cost per message, without the network stack.

`bench/messaging.py` measures the whole path between two daemons, where py-libp2p's yamux
and Noise and the sending daemon share the two cores with our code. This one feeds batches
of MSG frames straight into a real `Delivery` (real runtime, store, verification threads,
sink agents) through the handler a network would call, and measures what the node spends
per message: CPU seconds of the whole process and of the event-loop thread alone.

Baseline, measured in the same run: `open_envelope` (decode and signature check) per
message in one thread, the floor every received message pays. The ratios say how much the
rest of intake (replay window, admission, routing bookkeeping, the runtime and the agent's
handler, the ACK) adds on top, and how much of it is left on the event loop.

With `--profile FILE` the event loop's part is written as a cProfile dump.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from bench.loadgen import BODY
from meshd.delivery import Delivery
from meshd.net.types import InboundBatch, MessageHandler, Network
from meshd.runtime.runtime import Runtime
from meshd.store import Store
from protocol.envelope import Envelope, open_envelope
from protocol.frames import AckEntry, Mode, Msg
from protocol.ids import AgentId, SigningKey

MESSAGES = 40_000
SENDERS = 8
SINKS = 16
BATCH = 64  # frames per inbound batch: what one 64 KiB read of small envelopes holds
IN_FLIGHT = 8  # batches handed over and not yet answered (the streams' max_unacked_batches)
PHASE_TIMEOUT_S = 300.0
SINK_KIND = "bench.loadgen:Sink"


class _Batch:
    """An inbound batch whose answers are counted."""

    def __init__(self, peer_id: str, msgs: list[Msg], done: trio.MemorySendChannel[int]) -> None:
        self.peer_id = peer_id
        self.msgs = msgs
        self._left = len(msgs)
        self._done = done
        self.outcomes: dict[str, int] = {}

    def ack(self, entries: Sequence[AckEntry]) -> None:
        """Count the answers; tell the feeder when the batch is fully answered."""
        for entry in entries:
            self.outcomes[entry.outcome] = self.outcomes.get(entry.outcome, 0) + 1
        self._left -= len(entries)
        if not self._left:
            self._done.send_nowait(len(self.msgs))


class _NoNetwork:
    """Just enough of a `Network` for `Delivery.serve`: it keeps the message handler."""

    def __init__(self) -> None:
        self.handler: MessageHandler | None = None

    def set_message_handler(self, handler: MessageHandler | None) -> None:
        self.handler = handler

    def set_topic_handler(self, handler: object) -> None:
        del handler

    async def subscribe_topic(self, topic: str) -> None:
        del topic


async def _feed(
    handler: MessageHandler, frames: list[bytes], first_seq: int
) -> dict[str, int]:
    """Hand `frames` over in batches, at most IN_FLIGHT unanswered; every batch's outcomes."""
    done_send, done_recv = trio.open_memory_channel[int](IN_FLIGHT + 1)
    outcomes: dict[str, int] = {}
    batches: list[_Batch] = []
    outstanding = 0
    with trio.fail_after(PHASE_TIMEOUT_S):
        for n, offset in enumerate(range(0, len(frames), BATCH)):
            while outstanding >= IN_FLIGHT:
                await done_recv.receive()
                outstanding -= 1
            msgs = [
                Msg(first_seq + offset + i, Mode.AT_MOST_ONCE, frame)
                for i, frame in enumerate(frames[offset : offset + BATCH])
            ]
            batch = _Batch(f"peer-{n % 4}", msgs, done_send)
            batches.append(batch)
            outstanding += 1
            await handler(cast(InboundBatch, batch))
        while outstanding:
            await done_recv.receive()
            outstanding -= 1
    for batch in batches:
        for outcome, count in batch.outcomes.items():
            outcomes[outcome] = outcomes.get(outcome, 0) + count
    return outcomes


async def _measure(root: Path, profile: cProfile.Profile | None) -> dict[str, Any]:
    network = _NoNetwork()
    async with Store(root / "node.db") as store:
        runtime = Runtime(store, SigningKey.generate())
        delivery = Delivery(runtime, cast(Network, network))
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.serve)
            await nursery.start(delivery.serve)
            assert network.handler is not None
            infos = await runtime.spawn(SINK_KIND, count=SINKS)
            sinks = [AgentId.from_did(info["id"]) for info in infos]
            keys = [SigningKey.generate() for _ in range(SENDERS)]
            now = int(time.time() * 1000)

            def signed(count: int) -> list[bytes]:
                return [
                    Envelope.create(
                        keys[i % SENDERS], sinks[i % SINKS], "msg", BODY, now_ms=now
                    ).frame
                    for i in range(count)
                ]

            # Warm up: activations, the replay window's senders, the verification threads.
            warm = await _feed(network.handler, signed(SINKS * 8), 0)
            frames = signed(MESSAGES)
            cpu0, loop0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
            if profile is not None:
                profile.enable()
            outcomes = await _feed(network.handler, frames, 1_000_000)
            if profile is not None:
                profile.disable()
            cpu = time.process_time() - cpu0
            loop = time.thread_time() - loop0
            wall = time.perf_counter() - wall0
            handled = runtime.stats.handled
            nursery.cancel_scope.cancel()
    return {
        "warmup_outcomes": warm,
        "outcomes": outcomes,
        "cpu_s": cpu,
        "loop_s": loop,
        "wall_s": wall,
        "handled": handled,
    }


def _verify_floor(count: int) -> float:
    """CPU seconds per message for decode + signature check alone, in one thread."""
    key, recipient = SigningKey.generate(), SigningKey.generate().agent_id
    now = int(time.time() * 1000)
    frames = [Envelope.create(key, recipient, "msg", BODY, now_ms=now).frame for _ in range(count)]
    start = time.process_time()
    for frame in frames:
        open_envelope(frame, now_ms=now)
    return (time.process_time() - start) / count


def main() -> int:
    """Measure and print; the last line is a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, help="write a cProfile dump of the event loop")
    args = parser.parse_args()
    floor_before = _verify_floor(5_000)
    profile = cProfile.Profile() if args.profile else None
    with tempfile.TemporaryDirectory(prefix="meshd-intake-") as tmp:
        got = _measure_sync(Path(tmp), profile)
    floor = min(floor_before, _verify_floor(5_000))  # the less disturbed of two samples
    if profile is not None:
        profile.dump_stats(str(args.profile))
    delivered = got["outcomes"].get("delivered", 0)
    per_msg = got["cpu_s"] / MESSAGES
    loop_per_msg = got["loop_s"] / MESSAGES
    figures = {
        "messages": MESSAGES,
        "outcomes": got["outcomes"],
        "cpu_us_per_msg": round(per_msg * 1e6, 1),
        "event_loop_us_per_msg": round(loop_per_msg * 1e6, 1),
        "verify_floor_us_per_msg": round(floor * 1e6, 1),
        "ratio_cpu_to_floor": round(per_msg / floor, 2),
        "ratio_event_loop_to_floor": round(loop_per_msg / floor, 2),
        "wall_msgs_per_s": round(MESSAGES / got["wall_s"]),
        "two_core_ceiling_msgs_per_s": round(2 / per_msg),
    }
    print(f"intake of {MESSAGES:,} messages in batches of {BATCH}: outcomes {got['outcomes']}")
    print(f"  CPU per message, whole node      {figures['cpu_us_per_msg']:>8.1f} us")
    print(f"  of it on the event loop          {figures['event_loop_us_per_msg']:>8.1f} us")
    print(f"  decode + verify alone (floor)    {figures['verify_floor_us_per_msg']:>8.1f} us")
    print(f"  ratio node / floor               {figures['ratio_cpu_to_floor']:>8.2f}")
    print(f"  ratio event loop / floor         {figures['ratio_event_loop_to_floor']:>8.2f}")
    print(f"  rate here {figures['wall_msgs_per_s']:,}/s; two cores at this cost: "
          f"{figures['two_core_ceiling_msgs_per_s']:,}/s")  # fmt: skip
    if delivered != MESSAGES:
        print(f"not every message was delivered: {got['outcomes']}", file=sys.stderr)
        return 1
    print(json.dumps(figures))
    return 0


def _measure_sync(root: Path, profile: cProfile.Profile | None) -> dict[str, Any]:
    return trio.run(_measure, root, profile)


if __name__ == "__main__":
    sys.exit(main())
