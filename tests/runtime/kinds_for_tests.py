"""Agent kinds used by the runtime tests (loaded as `module:Class`, like users' kinds)."""

from __future__ import annotations

from typing import Any

from meshd.runtime.sdk import Agent, Context, Message

RECEIVED: list[tuple[str, str, Any]] = []
STARTED: list[str] = []
STOPPED: list[str] = []


class Recorder(Agent):
    """Records every message it gets (with the receiving agent's id)."""

    async def on_start(self, ctx: Context) -> None:
        STARTED.append(ctx.agent_id)

    async def on_message(self, ctx: Context, msg: Message) -> None:
        RECEIVED.append((ctx.agent_id, msg.kind, msg.body))
        if isinstance(msg.body, dict) and "ask" in msg.body:
            reply = await ctx.request(msg.body["ask"], msg.body.get("payload", {}), timeout=2.0)
            RECEIVED.append((ctx.agent_id, "answer", reply.body))
        if isinstance(msg.body, dict) and "fanout" in msg.body:
            reports = await ctx.send_many([(to, n) for n, to in enumerate(msg.body["fanout"])])
            RECEIVED.append((ctx.agent_id, "fanout", [report.outcome for report in reports]))
        if isinstance(msg.body, dict) and msg.body.get("finish"):
            ctx.done()

    async def on_stop(self, ctx: Context) -> None:
        STOPPED.append(ctx.agent_id)


class Crasher(Agent):
    """Raises in its handler: the runtime must count it and carry on."""

    async def on_message(self, ctx: Context, msg: Message) -> None:
        ctx.state["seen"] = ctx.state.get("seen", 0) + 1
        raise RuntimeError("agent bug")


class Spawner(Agent):
    """Spawns `n` children when asked, within its budget."""

    async def on_message(self, ctx: Context, msg: Message) -> None:
        children = []
        for _ in range(int(msg.body.get("n", 1))):
            children.append(await ctx.spawn("echo", budget=msg.body.get("budget")))
        ctx.state["children"] = children


def reset() -> None:
    """Forget what earlier tests recorded."""
    RECEIVED.clear()
    STARTED.clear()
    STOPPED.clear()


class Slow(Agent):
    """Takes a while in its handler and counts in state (to stop it mid-handler)."""

    async def on_message(self, ctx: Context, msg: Message) -> None:
        import trio

        await trio.sleep(0.2)
        ctx.state["n"] = ctx.state.get("n", 0) + 1
