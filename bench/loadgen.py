"""Agent kinds that generate and absorb benchmark load inside real `meshd run` daemons.

Spawned as `bench.loadgen:LoadGen` and `bench.loadgen:Sink` (the daemon must be able to
import `bench`: run it from the repository root or with it on PYTHONPATH). The benchmark
process drives a `LoadGen` with requests through the control API; the agent does the work
inside the daemon and replies with its measurements, so no API round trip sits in the
measured path.

Operations (the request body's "op"):
- `prepare` {targets, count}: sign `count` messages to `targets` (round robin) and keep them;
- `blast` {concurrency, batch=1}: send the prepared messages with that many concurrent
  senders, each waiting for its delivery reports (the receiver's ACKs), one message per
  call (`ctx.send`'s path) or `batch` per call (`ctx.send_many`'s); reply with outcomes and
  timings;
- `latency` {target, count}: sign and send one message at a time; reply with each
  send -> delivery report time;
- `echo` {target, count}: `ctx.request` round trips to an echo agent; reply with each time.

`prepare` signs through the runtime's own signing path (`make_envelope`) but ahead of the
timed phase, so that `blast` measures delivery (routing, streams, verification, the
receiving agent, the ACK) and not signing, which bench/protocol.py measures on its own.
That reaches past the SDK into the runtime: acceptable for a benchmark tool, not for agents.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import trio
import trio.lowlevel

from meshd.runtime.sdk import Agent, Context, Message
from protocol.envelope import Envelope
from protocol.ids import AgentId

__all__ = ["LoadGen", "Sink"]

BODY = {"task": "translate", "text": "The quick brown fox jumps over the lazy dog.",
        "lang": "fr", "priority": 3}  # fmt: skip
MAX_PREPARED = 100_000
MAX_CONCURRENCY = 4096
MAX_BATCH = 1024
MAX_SAMPLES = 5_000  # float samples in one reply envelope (64 KiB)


class Sink(Agent):
    """Takes every message and does nothing with it."""

    capabilities = ("bench-sink",)

    async def on_message(self, ctx: Context, msg: Message) -> None:
        """Nothing: the benchmark measures delivery, not handlers."""


class LoadGen(Agent):
    """Generates benchmark traffic from inside the daemon and reports what happened."""

    capabilities = ("bench-loadgen",)

    def __init__(self) -> None:
        self._prepared: list[Envelope] = []

    async def on_message(self, ctx: Context, msg: Message) -> None:
        """Run the requested operation and reply with its figures (or an error)."""
        body = msg.body if isinstance(msg.body, dict) else {}
        try:
            result = await self._run(ctx, body)
        except (KeyError, TypeError, ValueError) as exc:
            result = {"error": f"bad request: {exc}"}
        await ctx.reply(msg, result)

    async def _run(self, ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
        op = body["op"]
        if op == "prepare":
            return await self._prepare(ctx, list(body["targets"]), int(body["count"]))
        if op == "blast":
            return await self._blast(ctx, int(body["concurrency"]), int(body.get("batch", 1)))
        if op == "latency":
            return await self._latency(ctx, str(body["target"]), int(body["count"]))
        if op == "echo":
            return await self._echo(ctx, str(body["target"]), int(body["count"]))
        raise ValueError(f"unknown op {op!r}")

    async def _prepare(self, ctx: Context, targets: list[str], count: int) -> dict[str, Any]:
        if not targets or not 0 < count <= MAX_PREPARED:
            raise ValueError(f"need targets and 1..{MAX_PREPARED} messages")
        runtime, activation = _internals(ctx)
        ids = [AgentId.from_did(target) for target in targets]
        began = trio.current_time()
        self._prepared = []
        for i in range(count):
            envelope = await runtime.make_envelope(activation, ids[i % len(ids)], "msg", BODY)
            self._prepared.append(envelope)
            if i % 256 == 255:
                await trio.lowlevel.checkpoint()  # let the daemon's other tasks run meanwhile
        return {"prepared": count, "sign_s": trio.current_time() - began}

    async def _blast(self, ctx: Context, concurrency: int, batch: int) -> dict[str, Any]:
        if not 0 < concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be 1..{MAX_CONCURRENCY}")
        if not 0 < batch <= MAX_BATCH:
            raise ValueError(f"batch must be 1..{MAX_BATCH}")
        runtime, _activation = _internals(ctx)
        messenger = runtime.messenger
        queue = iter(self._prepared)
        outcomes: Counter[str] = Counter()

        async def sender() -> None:
            if batch == 1:  # one message per call, as `ctx.send` does
                for envelope in queue:
                    outcomes[(await messenger.send(envelope, reliable=False)).outcome] += 1
                return
            while chunk := list(itertools.islice(queue, batch)):  # as `ctx.send_many` does
                for report in await messenger.send_many(chunk):
                    outcomes[report.outcome] += 1

        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(sender)
        elapsed = trio.current_time() - began
        self._prepared = []
        return {"outcomes": dict(outcomes), "elapsed_s": elapsed}

    async def _latency(self, ctx: Context, target: str, count: int) -> dict[str, Any]:
        samples: list[float] = []
        outcomes: Counter[str] = Counter()
        for _ in range(min(count, MAX_SAMPLES)):
            began = trio.current_time()
            report = await ctx.send(target, BODY)
            samples.append(trio.current_time() - began)
            outcomes[report.outcome] += 1
        return {"samples_s": samples, "outcomes": dict(outcomes)}

    async def _echo(self, ctx: Context, target: str, count: int) -> dict[str, Any]:
        samples: list[float] = []
        for i in range(min(count, MAX_SAMPLES)):
            began = trio.current_time()
            reply = await ctx.request(target, {"n": i}, timeout=5.0)
            if reply.body != {"n": i}:
                raise ValueError(f"echo answered {reply.body!r} to {i}")
            samples.append(trio.current_time() - began)
        return {"samples_s": samples}


def _internals(ctx: Context) -> tuple[Any, Any]:
    """The runtime and activation behind a context (see the module docstring for why)."""
    return ctx._rt, ctx._act  # type: ignore[attr-defined]
