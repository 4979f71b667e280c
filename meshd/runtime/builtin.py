"""Built-in agent kinds: echo, counter, relay, and the marker for external agents."""

from __future__ import annotations

from meshd.runtime.sdk import Agent, AgentError, Context, Message

__all__ = ["CounterAgent", "EchoAgent", "ExternalAgent", "RelayAgent"]


class EchoAgent(Agent):
    """Replies to every message with its body."""

    capabilities = ("echo",)

    async def on_message(self, ctx: Context, msg: Message) -> None:
        """Send the body back to the sender."""
        if msg.reply_to is None and msg.topic is None:
            await ctx.reply(msg, msg.body, kind="echo")


class CounterAgent(Agent):
    """Counts the messages it gets in persistent state; a request gets the count back."""

    capabilities = ("counter",)

    async def on_message(self, ctx: Context, msg: Message) -> None:
        """Add one (or `body["add"]`) to the count."""
        step = msg.body.get("add", 1) if isinstance(msg.body, dict) else 1
        if not isinstance(step, int) or isinstance(step, bool):
            step = 1
        ctx.state["count"] = int(ctx.state.get("count", 0)) + step
        if msg.kind == "req":
            await ctx.reply(msg, {"count": ctx.state["count"]})


class RelayAgent(Agent):
    """Forwards each request to its target agent and relays the answer back.

    The target comes from state `target` (set at spawn with `--state '{"target": ...}'`)
    or from the message body's `target`. Shows agent-to-agent cooperation: the original
    sender only knows the relay, and the reply it gets was produced by another agent,
    possibly on another node.
    """

    capabilities = ("relay",)

    async def on_message(self, ctx: Context, msg: Message) -> None:
        """Forward `body` to the target and reply with what came back."""
        if msg.reply_to is not None or msg.topic is not None:
            return
        body = msg.body
        target = body.get("target") if isinstance(body, dict) else None
        target = target or ctx.state.get("target")
        if not isinstance(target, str):
            await ctx.reply(msg, {"error": "relay has no target"})
            return
        payload = body.get("payload", body) if isinstance(body, dict) else body
        try:
            answer = await ctx.request(target, payload, timeout=5.0)
        except AgentError as exc:
            await ctx.reply(msg, {"error": str(exc)})
            return
        ctx.state["relayed"] = int(ctx.state.get("relayed", 0)) + 1
        await ctx.reply(msg, {"via": ctx.agent_id, "from": answer.sender, "body": answer.body})


class ExternalAgent(Agent):
    """An agent whose behaviour runs in another process attached through the control API.

    The runtime never activates it: its messages wait in its persistent inbox until a
    client attaches (`GET /v1/agents/{id}/inbox`) and reads them, and the client sends as
    this agent through `POST /v1/send`.
    """

    capabilities = ("external",)
